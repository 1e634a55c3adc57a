"""Tilt series: the images of a particle in every tilt image of a tilt series, from its atoms.

A particle with pose `A` (the rotation taking the model into the tomogram, atomicspi's /
RELION's convention) at position `p` (Å, relative to the tomogram's centre) is seen in tilt image
`f` of its tilt series, with view rotation `R_f` (`tilt_series_view_rotation`: RELION 5's
`Rz(rlnTomoZRot) · Ry(rlnTomoYTilt) · Rx(rlnTomoXTilt)`), pre-exposure `N_f` (e⁻/Å²,
`rlnMicrographPreExposure`) and CTF `CTF_f` at the tilt image's centre, as

    image_f = crop_D( F⁻¹[ CTF_f^{Δf_f}(k) · q(k, N_f) · exp(-2πi k·s_f) · F[ P_{D'}(R_f A r) ] ] ),
    Δf_f   = Δf_f^centre + hand · slope · (R_f p)_z,

i.e. the single-particle image (`ImageModel`) of pose `R_f · A` (`compose_tilt_rotations`), whose
defocus U and V are the tilt image's plus the particle's height offset in the tilted frame
(`tilt_defocus_offset_in_angstroms`, RELION's `Tomogram::getCtf`), with the exposure filter
`q(k, N_f) = exp(-N_f / (2 N_e(k)))` of Grant & Grigorieff (2015) (`exposure_filter_on_grid`, on the
padded grid) multiplied into the CTF in Fourier space (as RELION's `relion_tomo_subtomo` multiplies
the CTF by `Tomogram::computeDoseWeight`), and the per-tilt contrast scale in the CTF's `scale`
(RELION's per-tilt `rlnCtfScalefactor`). `s_f` is the particle centre's in-plane offset from the box
centre (0 for RELION's 2D stacks, which are extracted centred on the projected position).

Tilt series of different lengths (RELION's `rlnTomoVisibleFrames`, or tomograms with different
tilt counts) are padded to a common `n_tilts` with a mask: the masked tilts' inputs are replaced by
harmless values (the first unmasked tilt's CTF, the identity view, zero exposure and shift) before
rendering, so whatever the padding holds (e.g. NaN) neither their images (zero) nor the gradients
are affected.

All functions are JAX: jit-compilable, vmappable and differentiable in their array arguments
(positions, rotations, CTF values, exposures); `voltage_in_kilovolts` (of the exposure filter) and
`zero_beyond_optimal_exposure` are Python values.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from ._ctf import CTFParameters
from ._dose import compose_tilt_rotations, exposure_filter_on_grid, tilt_defocus_offset_in_angstroms
from ._image_model import ImageModel

_VECTOR_CTF_FIELDS = ("odd_zernike_coefficients", "even_zernike_coefficients")
"""`CTFParameters` fields whose value per image is a vector (its last axis)."""


def broadcast_ctf(ctf: CTFParameters, batch_shape: tuple[int, ...]) -> CTFParameters:
    """Every field of a `CTFParameters` broadcast to a leading batch shape.

    **Arguments:**

    - `ctf`: scalar fields of shape `()` (shared) or broadcastable to `batch_shape`; the Zernike
      coefficient fields of shape `(k,)` (shared) or `batch_shape + (k,)`; `None` fields stay `None`.
    - `batch_shape`: e.g. `(n_tilts,)` or `(n_particles, n_tilts)`.

    **Returns:**

    A `CTFParameters` whose array fields all have the leading `batch_shape` (for `jax.vmap` with
    `in_axes=0`).
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ctf):
        value = getattr(ctf, field.name)
        if value is None:
            values[field.name] = None
            continue
        value = jnp.asarray(value)
        if field.name in _VECTOR_CTF_FIELDS:
            values[field.name] = jnp.broadcast_to(value, tuple(batch_shape) + value.shape[-1:])
        else:
            values[field.name] = jnp.broadcast_to(value, tuple(batch_shape))
    return CTFParameters(**values)


def shift_defocus(ctf: CTFParameters, defocus_offset_in_angstroms: Float[ArrayLike, "*batch"]) -> CTFParameters:
    """The CTF with `defocus_offset_in_angstroms` added to both defocus U and defocus V.

    **Arguments:**

    - `ctf`: a `CTFParameters` (e.g. of a tilt image's centre).
    - `defocus_offset_in_angstroms`: the offset (positive = more underfocus), broadcastable
      against the defocus fields (e.g. `tilt_defocus_offset_in_angstroms`).

    **Returns:**

    The shifted `CTFParameters` (other fields unchanged).
    """
    offset = jnp.asarray(defocus_offset_in_angstroms)
    return dataclasses.replace(
        ctf,
        defocus_u_in_angstroms=jnp.asarray(ctf.defocus_u_in_angstroms) + offset,
        defocus_v_in_angstroms=jnp.asarray(ctf.defocus_v_in_angstroms) + offset,
    )


def _first_valid(values: Array, mask: Array) -> Array:
    """`values` (leading axis n_tilts) with the masked entries replaced by the first unmasked one."""
    first = values[jnp.argmax(mask)]
    keep = jnp.reshape(mask, mask.shape + (1,) * (values.ndim - 1))
    return jnp.where(keep, values, first)


def render_tilt_series(
    image_model: ImageModel,
    positions_in_angstroms: Float[Array, "n_atoms 3"],
    particle_rotation: Float[Array, "3 3"],
    particle_position_in_angstroms: Float[Array, "3"],
    view_rotations: Float[Array, "n_tilts 3 3"],
    ctf: CTFParameters,
    pre_exposure_in_electrons_per_square_angstrom: Float[Array, " n_tilts"],
    *,
    shifts_in_angstroms: Float[Array, "n_tilts 2"] | None = None,
    mask: Bool[Array, " n_tilts"] | None = None,
    handedness: Float[ArrayLike, ""] = 1.0,
    defocus_slope: Float[ArrayLike, ""] = 1.0,
    voltage_in_kilovolts: float = 300.0,
    zero_beyond_optimal_exposure: bool = False,
) -> Float[Array, "n_tilts box_size box_size"]:
    """The images of one particle in the tilt images of its tilt series (module docstring).

    **Arguments:**

    - `image_model`: the molecule's `ImageModel` (box, pixel size, padding, projection method).
    - `positions_in_angstroms`: `(n_atoms, 3)` the particle's conformation (model frame).
    - `particle_rotation`: its pose `A` in the tomogram, `(3, 3)`.
    - `particle_position_in_angstroms`: its position `p` relative to the tomogram's centre, `(3,)`
      (only its height in each tilted frame matters here: the defocus offset).
    - `view_rotations`: `R_f` of each tilt image, `(n_tilts, 3, 3)`.
    - `ctf`: `CTFParameters` of each tilt image *at the tilt image's centre*: fields `()` (shared)
      or `(n_tilts,)` (Zernike coefficients `(k,)` or `(n_tilts, k)`); `scale` is the per-tilt
      contrast scale. The height offset is added here.
    - `pre_exposure_in_electrons_per_square_angstrom`: `N_f`, `(n_tilts,)`, ≥ 0.
    - `shifts_in_angstroms`: `(n_tilts, 2)` in-plane `(x, y)` offsets of the particle centre from
      the box centre (default zeros).
    - `mask`: `(n_tilts,)` True for real tilt images, False for padding (default all True).
    - `handedness`, `defocus_slope`: RELION's `rlnTomoHand` and `rlnTomoDefocusSlope`.
    - `voltage_in_kilovolts`: of the exposure filter (a Python number: 300 or 200); the CTF uses
      `ctf.voltage_in_kilovolts`.
    - `zero_beyond_optimal_exposure`: as in `exposure_filter`.

    **Returns:**

    `(n_tilts, D, D)` images `[y, x]` (V·Å times the contrast scale); zero for masked tilts.
    """
    views = jnp.asarray(view_rotations)
    n_tilts = views.shape[0]
    if mask is None:
        mask = jnp.ones((n_tilts,), dtype=bool)
    mask = jnp.asarray(mask, dtype=bool)
    identity = jnp.broadcast_to(jnp.eye(3, dtype=views.dtype), views.shape)
    views = jnp.where(mask[:, None, None], views, identity)
    exposure = jnp.where(mask, jnp.asarray(pre_exposure_in_electrons_per_square_angstrom), 0.0)
    if shifts_in_angstroms is None:
        shifts = jnp.zeros((n_tilts, 2), dtype=views.dtype)
    else:
        shifts = jnp.where(mask[:, None], jnp.asarray(shifts_in_angstroms), 0.0)
    per_tilt = broadcast_ctf(ctf, (n_tilts,))
    per_tilt = jax.tree_util.tree_map(lambda leaf: _first_valid(leaf, mask), per_tilt)

    rotations = compose_tilt_rotations(particle_rotation, views)
    offsets = tilt_defocus_offset_in_angstroms(
        jnp.asarray(particle_position_in_angstroms), views, 1.0, 1.0
    ) * (jnp.asarray(handedness) * jnp.asarray(defocus_slope))
    per_tilt = shift_defocus(per_tilt, offsets)
    filters = exposure_filter_on_grid(
        image_model.padded_box_size,
        image_model.pixel_size_in_angstroms,
        exposure,
        voltage_in_kilovolts,
        zero_beyond_optimal_exposure,
    )

    def one_tilt(rotation, shift, tilt_ctf, fourier_filter):
        return image_model(positions_in_angstroms, rotation, shift, tilt_ctf, fourier_filter)

    images = jax.vmap(one_tilt)(rotations, shifts, per_tilt, filters)
    return jnp.where(mask[:, None, None], images, 0.0)


def render_tilt_series_batch(
    image_model: ImageModel,
    positions_in_angstroms: Float[Array, "n_particles n_atoms 3"],
    particle_rotations: Float[Array, "n_particles 3 3"],
    particle_positions_in_angstroms: Float[Array, "n_particles 3"],
    view_rotations: Float[Array, "n_particles n_tilts 3 3"],
    ctf: CTFParameters,
    pre_exposure_in_electrons_per_square_angstrom: Float[Array, "n_particles n_tilts"],
    *,
    shifts_in_angstroms: Float[Array, "n_particles n_tilts 2"] | None = None,
    mask: Bool[Array, "n_particles n_tilts"] | None = None,
    handedness: Float[ArrayLike, "*n_particles"] = 1.0,
    defocus_slope: Float[ArrayLike, "*n_particles"] = 1.0,
    voltage_in_kilovolts: float = 300.0,
    zero_beyond_optimal_exposure: bool = False,
) -> Float[Array, "n_particles n_tilts box_size box_size"]:
    """`render_tilt_series` for a batch of particles, each with its (padded) tilt series.

    **Arguments:**

    As `render_tilt_series`, with a leading particle axis: `ctf` fields `()`, `(n_particles,)`
    or `(n_particles, n_tilts)` (Zernike coefficients `(k,)` or `(n_particles, n_tilts, k)`),
    `handedness` and `defocus_slope` scalars or `(n_particles,)` (per tomogram). Padded tilts
    (e.g. from `TiltSeriesParticles.padded`) are marked False in `mask`.

    **Returns:**

    `(n_particles, n_tilts, D, D)` images, zero where `mask` is False.
    """
    views = jnp.asarray(view_rotations)
    n_particles, n_tilts = views.shape[:2]
    if mask is None:
        mask = jnp.ones((n_particles, n_tilts), dtype=bool)
    if shifts_in_angstroms is None:
        shifts_in_angstroms = jnp.zeros((n_particles, n_tilts, 2), dtype=views.dtype)
    values = {}
    for field in dataclasses.fields(ctf):
        value = getattr(ctf, field.name)
        if value is not None and field.name not in _VECTOR_CTF_FIELDS:
            value = jnp.asarray(value)
            value = jnp.reshape(value, value.shape + (1,) * (2 - value.ndim)) if value.ndim == 1 else value
        values[field.name] = value
    per_particle = broadcast_ctf(CTFParameters(**values), (n_particles, n_tilts))
    hands = jnp.broadcast_to(jnp.asarray(handedness), (n_particles,))
    slopes = jnp.broadcast_to(jnp.asarray(defocus_slope), (n_particles,))

    def one_particle(positions, rotation, position, particle_views, particle_ctf, exposure, shifts, particle_mask,
                     hand, slope):
        return render_tilt_series(
            image_model, positions, rotation, position, particle_views, particle_ctf, exposure,
            shifts_in_angstroms=shifts, mask=particle_mask, handedness=hand, defocus_slope=slope,
            voltage_in_kilovolts=voltage_in_kilovolts, zero_beyond_optimal_exposure=zero_beyond_optimal_exposure,
        )

    return jax.vmap(one_particle)(
        jnp.asarray(positions_in_angstroms), jnp.asarray(particle_rotations),
        jnp.asarray(particle_positions_in_angstroms), views, per_particle,
        jnp.asarray(pre_exposure_in_electrons_per_square_angstrom), jnp.asarray(shifts_in_angstroms),
        jnp.asarray(mask, dtype=bool), hands, slopes,
    )
