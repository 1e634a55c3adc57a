"""X-ray diffraction of atoms (XFEL single-particle imaging): form factors, detector, photon counts.

**Scattering vector.** The beam travels along `+z` with wave vector `k_in = ẑ / λ` ("cycles"
convention, `|k| = 1 / λ`, no 2π). A photon scattered into the direction `u` (unit vector) has
`k_out = u / λ`, and the scattering vector is

    q = k_out - k_in = (u - ẑ) / λ,     |q| = 2 sin(θ) / λ,

in 1/Å, with `2θ` the scattering angle: every pixel's `q` lies on the Ewald sphere (the sphere of
radius `1 / λ` through the origin of reciprocal space, centred at `-k_in`).

**Detector.** A flat detector perpendicular to the beam at distance `D` from the sample; images
are `[y, x]` as everywhere in atomicspi, and pixel `(i, j)` sits at

    x = (j - c_x) · p,   y = (i - c_y) · p,   z = D,   r = √(x² + y² + D²),   u = (x, y, D) / r,

for pixel size `p` and beam centre `(c_x, c_y)` in pixels (default `(n_x // 2, n_y // 2)`, the box
centre of `atomicspi.conventions`, so that `q = 0` at that pixel). The solid angle of a pixel is
`Ω = p² D / r³` (its area `p²` seen at distance `r` under the obliquity `cos(2θ) = D / r`), and the
polarization factor, the fraction of the scattered intensity of a free electron relative to
forward scattering (Thomson), is

    P = 1 - u_x²                    (beam linearly polarized along x; 1 - u_y² along y),
    P = (1 + cos²(2θ)) / 2          (unpolarized),  cos(2θ) = u_z.

**Molecule.** Atoms at `r_j` (Å, model frame) are rotated by the pose `A` of
`atomicspi.conventions` (RELION's matrix, `r ↦ A r`, the frame in which the beam runs along `+z`
and the detector's x, y are the image axes); the molecular amplitude (in electrons) is

    F(q) = Σ_j f_j(|q|) exp(2πi q · (A r_j)) = Σ_j f_j(|q|) exp(2πi (Aᵀ q) · r_j),

with the atomic X-ray form factors of International Tables for Crystallography Vol. C,
Table 6.1.1.4 (four Gaussians and a constant, neutral atoms, `s = sin(θ) / λ = |q| / 2` in 1/Å):

    f(s) = Σ_{i=1..4} a_i exp(-b_i s²) + c,      f(0) = Σ a_i + c ≈ Z,

as gemmi distributes them (`gemmi.Element(Z).it92`; gemmi's `c4322` is the electron table used by
`_form_factors`). Atoms are summed in chunks (`lax.scan` with a rematerialised body), so memory is
about `pixels × atoms_per_chunk` numbers whatever the number of atoms (under `jax.grad`, plus two
numbers per pixel and chunk for the running sums).

**Photon counts.** With fluence `Φ` (photons/Å² of the pulse at the sample), classical electron
radius `r_e = 2.8179403262·10⁻⁵ Å` (CODATA 2018), the expected number of photons in a pixel is

    λ_pixel = Φ · r_e² · P · Ω · |F(q)|² + background,

and observed counts are Poisson, `log p(n | λ) = n log λ - λ - log(n!)`.

Not modelled: thermal motion (B-factors), anomalous dispersion (`f'`, `f''`), Compton (inelastic)
scattering, a hydration layer or solvent, beam incoherence and bandwidth, and the detector's own
response; `background` stands for whatever reaches a pixel besides the molecule's elastic signal.
Tests compare the model with a grid sphere's analytic form factor, Guinier's law, gemmi's form
factors and skopi (LCLS's simulator) for the same detector, beam and orientation.
"""

import functools
import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Int, PRNGKeyArray

from .._errors import InputError
from ._ctf import PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS

CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS = 2.8179403262e-5
"""`r_e = e² / (4π ε₀ m_e c²)` in Å (CODATA 2018); the Thomson cross-section is `r_e² · P` per sr."""

POLARIZATIONS = ("x", "y", "unpolarized")
"""Allowed `DetectorGeometry.polarization` values: linear along the detector's x or y axis, or none."""

_LARGEST_ATOMIC_NUMBER = 118
_PIXEL_ATOM_PAIRS_PER_CHUNK = 2**22  # default chunk: about 16 MB per float32 (pixels × atoms) array


def photon_wavelength_in_angstroms(
    photon_energy_in_kiloelectronvolts: Float[ArrayLike, "..."],
) -> Float[Array, "..."]:
    """X-ray wavelength `λ = h c / E`.

    **Arguments:**

    - `photon_energy_in_kiloelectronvolts`: photon energy `E` in keV.

    **Returns:**

    The wavelength in Å (1.0 Å at 12.398 keV).
    """
    return PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS / jnp.asarray(
        photon_energy_in_kiloelectronvolts
    )


# --------------------------------------------------------------------------------------------
# Atomic form factors
# --------------------------------------------------------------------------------------------


@functools.cache
def _it92_table() -> Float[np.ndarray, "n_elements 9"]:
    """`[Z] -> (a_1 ... a_4, b_1 ... b_4, c)` from gemmi's `it92` coefficients (a, c in electrons,
    b in Å²; NaN rows where gemmi has none), read once on first use."""
    import gemmi

    rows = {}
    for atomic_number in range(1, _LARGEST_ATOMIC_NUMBER + 1):
        coefficients = gemmi.Element(atomic_number).it92
        if coefficients is not None and len(coefficients.a) == 4:
            rows[atomic_number] = (*coefficients.a, *coefficients.b, coefficients.c)
    table = np.full((max(rows) + 1, 9), np.nan)
    for atomic_number, parameters in rows.items():
        table[atomic_number] = parameters
    table.setflags(write=False)
    return table


def xray_form_factor_parameters(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
) -> tuple[Float[np.ndarray, "n_atoms 4"], Float[np.ndarray, "n_atoms 4"], Float[np.ndarray, " n_atoms"]]:
    """International Tables Vol. C Table 6.1.1.4 coefficients of each atom (neutral atoms).

    **Arguments:**

    - `atomic_numbers`: atomic numbers (1 = H upwards, as far as gemmi's `it92` table goes).

    **Returns:**

    `(a, b, c)`: amplitudes `(n_atoms, 4)` in electrons, widths `(n_atoms, 4)` in Å², constants
    `(n_atoms,)` in electrons, for `f(s) = Σ a_i exp(-b_i s²) + c`.

    Raises `InputError` for an atomic number outside the table.
    """
    atomic_numbers = np.asarray(atomic_numbers)
    table = _it92_table()
    outside = (atomic_numbers < 1) | (atomic_numbers >= len(table))
    missing = outside | np.isnan(table[np.where(outside, 0, atomic_numbers), 0])
    if missing.any():
        bad = sorted(set(atomic_numbers[missing].tolist()))
        raise InputError(f"atomic_numbers: no X-ray form factor (International Tables) for atomic number(s) {bad}")
    parameters = table[atomic_numbers]
    return parameters[..., :4], parameters[..., 4:8], parameters[..., 8]


def xray_scattering_factor(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
    s_in_inverse_angstroms: Float[np.ndarray, "..."],
) -> Float[np.ndarray, "n_atoms ..."]:
    """Atomic X-ray form factor `f(s) = Σ a_i exp(-b_i s²) + c` in electrons.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers.
    - `s_in_inverse_angstroms`: `s = sin(θ) / λ = |q| / 2`, any shape.

    **Returns:**

    `(n_atoms, *s.shape)` form factors in electrons (`f(0) ≈ Z`).
    """
    a, b, c = xray_form_factor_parameters(np.atleast_1d(atomic_numbers))
    s_squared = np.asarray(s_in_inverse_angstroms, dtype=float) ** 2
    shape = (len(a),) + (1,) * s_squared.ndim
    gaussians = np.sum(a.reshape(shape + (4,)) * np.exp(-b.reshape(shape + (4,)) * s_squared[..., None]), axis=-1)
    return gaussians + c.reshape(shape)


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


class DetectorGeometry(eqx.Module):
    """A flat pixel detector perpendicular to the beam, and the beam (module docstring).

    Build it directly or with `make_detector_geometry` (photon energy, default beam centre).
    The numbers are pytree leaves (a geometry can be traced and differentiated, e.g. to refine
    the beam centre); `shape` and `polarization` are static.

    **Fields:**

    - `wavelength_in_angstroms`: X-ray wavelength `λ`.
    - `detector_distance_in_millimetres`: `D`, sample to detector plane along the beam.
    - `pixel_size_in_millimetres`: `p`, side of the (square) pixels.
    - `beam_centre_x_in_pixels`, `beam_centre_y_in_pixels`: where the direct beam meets the
        detector, in pixel indices (column `j`, row `i`; may be fractional).
    - `shape`: `(n_y, n_x)`, pixels along y (rows) and x (columns).
    - `polarization`: `"x"` (linear along the detector's x axis, the usual horizontal XFEL
        polarization), `"y"` or `"unpolarized"`.
    """

    wavelength_in_angstroms: Float[ArrayLike, ""]
    detector_distance_in_millimetres: Float[ArrayLike, ""]
    pixel_size_in_millimetres: Float[ArrayLike, ""]
    beam_centre_x_in_pixels: Float[ArrayLike, ""]
    beam_centre_y_in_pixels: Float[ArrayLike, ""]
    shape: tuple[int, int] = eqx.field(static=True)
    polarization: Literal["x", "y", "unpolarized"] = eqx.field(static=True, default="x")

    def __check_init__(self):
        shape = tuple(self.shape)
        if len(shape) != 2 or not all(isinstance(n, int | np.integer) and n > 0 for n in shape):
            raise InputError(f"shape: must be two positive integers (n_y, n_x), got {self.shape!r}")
        if self.polarization not in POLARIZATIONS:
            raise InputError(f"polarization: {self.polarization!r} is not one of {', '.join(POLARIZATIONS)}")
        for name in ("wavelength_in_angstroms", "detector_distance_in_millimetres", "pixel_size_in_millimetres"):
            value = getattr(self, name)
            if _is_concrete(value):
                number = np.asarray(value, dtype=float)
                if number.shape != () or not np.isfinite(number) or number <= 0:
                    raise InputError(f"{name}: must be a positive finite number, got {value!r}")
        for name in ("beam_centre_x_in_pixels", "beam_centre_y_in_pixels"):
            value = getattr(self, name)
            if _is_concrete(value):
                number = np.asarray(value, dtype=float)
                if number.shape != () or not np.isfinite(number):
                    raise InputError(f"{name}: must be a finite number, got {value!r}")

    @property
    def photon_energy_in_kiloelectronvolts(self) -> Float[Array, ""]:
        """`E = h c / λ` in keV."""
        return PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS / jnp.asarray(
            self.wavelength_in_angstroms
        )


def make_detector_geometry(
    shape: tuple[int, int],
    pixel_size_in_millimetres: float,
    detector_distance_in_millimetres: float,
    *,
    wavelength_in_angstroms: float | None = None,
    photon_energy_in_kiloelectronvolts: float | None = None,
    beam_centre_in_pixels: tuple[float, float] | None = None,
    polarization: Literal["x", "y", "unpolarized"] = "x",
) -> DetectorGeometry:
    """A `DetectorGeometry` from the usual experimental numbers.

    **Arguments:**

    - `shape`: `(n_y, n_x)` pixels.
    - `pixel_size_in_millimetres`: pixel side.
    - `detector_distance_in_millimetres`: sample-detector distance.
    - `wavelength_in_angstroms`, `photon_energy_in_kiloelectronvolts`: exactly one of them.
    - `beam_centre_in_pixels`: `(c_x, c_y)` (column, row); default `(n_x // 2, n_y // 2)`.
    - `polarization`: `"x"` (default), `"y"` or `"unpolarized"`.

    **Returns:**

    The geometry. Raises `InputError` for non-positive or non-finite numbers, a wrong shape or
    both (or neither) of wavelength and photon energy.
    """
    if (wavelength_in_angstroms is None) == (photon_energy_in_kiloelectronvolts is None):
        raise InputError(
            "wavelength_in_angstroms, photon_energy_in_kiloelectronvolts: give exactly one of them"
        )
    if photon_energy_in_kiloelectronvolts is not None:
        energy = float(photon_energy_in_kiloelectronvolts)
        if not math.isfinite(energy) or energy <= 0:
            raise InputError(
                f"photon_energy_in_kiloelectronvolts: must be a positive finite number, got {photon_energy_in_kiloelectronvolts!r}"
            )
        wavelength = PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS / energy
    else:
        wavelength = wavelength_in_angstroms  # type: ignore[assignment]
    try:
        n_y, n_x = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape: must be two positive integers (n_y, n_x), got {shape!r}") from None
    if beam_centre_in_pixels is None:
        beam_centre_in_pixels = (float(n_x // 2), float(n_y // 2))
    if len(beam_centre_in_pixels) != 2:
        raise InputError(f"beam_centre_in_pixels: must be (c_x, c_y), got {beam_centre_in_pixels!r}")
    return DetectorGeometry(
        wavelength_in_angstroms=wavelength,
        detector_distance_in_millimetres=detector_distance_in_millimetres,
        pixel_size_in_millimetres=pixel_size_in_millimetres,
        beam_centre_x_in_pixels=beam_centre_in_pixels[0],
        beam_centre_y_in_pixels=beam_centre_in_pixels[1],
        shape=(n_y, n_x),
        polarization=polarization,
    )


class PixelGeometry(eqx.Module):
    """What each pixel of a detector sees (module docstring for the formulas).

    **Fields:**

    - `q_in_inverse_angstroms`: `(n_y, n_x, 3)` scattering vectors `q = k_out - k_in` in 1/Å
        (cycles; `|q| = 2 sin θ / λ`), in the lab frame (beam along `+z`).
    - `polarization_factor`: `(n_y, n_x)` `P`, between 0 and 1.
    - `solid_angle_in_steradians`: `(n_y, n_x)` `Ω = p² D / r³`.
    """

    q_in_inverse_angstroms: Float[Array, "n_y n_x 3"]
    polarization_factor: Float[Array, "n_y n_x"]
    solid_angle_in_steradians: Float[Array, "n_y n_x"]


@jax.jit
def pixel_geometry(geometry: DetectorGeometry) -> PixelGeometry:
    """Scattering vector, polarization factor and solid angle of every pixel.

    **Arguments:**

    - `geometry`: the detector and beam.

    **Returns:**

    A `PixelGeometry` with `[y, x]`-indexed arrays (differentiable w.r.t. the geometry's numbers).
    """
    n_y, n_x = geometry.shape
    pixel = jnp.asarray(geometry.pixel_size_in_millimetres)
    distance = jnp.asarray(geometry.detector_distance_in_millimetres)
    x = (jnp.arange(n_x) - jnp.asarray(geometry.beam_centre_x_in_pixels)) * pixel
    y = (jnp.arange(n_y) - jnp.asarray(geometry.beam_centre_y_in_pixels)) * pixel
    x, y = jnp.broadcast_arrays(x[None, :], y[:, None])
    radius = jnp.sqrt(x**2 + y**2 + distance**2)
    direction = jnp.stack([x / radius, y / radius, distance / radius], axis=-1)
    wavelength = jnp.asarray(geometry.wavelength_in_angstroms)
    # u - ẑ, with u_z - 1 = -(x² + y²) / (r (r + D)) to keep precision near the beam
    q = jnp.stack(
        [direction[..., 0], direction[..., 1], -(x**2 + y**2) / (radius * (radius + distance))], axis=-1
    ) / wavelength
    if geometry.polarization == "x":
        polarization = 1.0 - direction[..., 0] ** 2
    elif geometry.polarization == "y":
        polarization = 1.0 - direction[..., 1] ** 2
    else:
        polarization = 0.5 * (1.0 + direction[..., 2] ** 2)
    solid_angle = pixel**2 * distance / radius**3
    return PixelGeometry(
        q_in_inverse_angstroms=q, polarization_factor=polarization, solid_angle_in_steradians=solid_angle
    )


# --------------------------------------------------------------------------------------------
# Molecular amplitude
# --------------------------------------------------------------------------------------------


def default_atoms_per_chunk(n_pixels: int, n_atoms: int) -> int:
    """Atoms summed at once: about 4·10⁶ pixel-atom pairs (16 MB per float32 array), at least 1.

    **Arguments:**

    - `n_pixels`: pixels (scattering vectors) per pattern.
    - `n_atoms`: atoms of the molecule.

    **Returns:**

    The chunk size, at most `n_atoms`.
    """
    return int(max(1, min(n_atoms, _PIXEL_ATOM_PAIRS_PER_CHUNK // max(n_pixels, 1))))


@functools.partial(jax.jit, static_argnames=("atoms_per_chunk",))
def molecular_amplitude(
    positions_in_angstroms: Float[Array, "n_atoms 3"],
    rotation: Float[Array, "3 3"],
    q_in_inverse_angstroms: Float[Array, "*pixels 3"],
    form_factors: Float[Array, "*pixels n_types"],
    atom_types: Int[ArrayLike, " n_atoms"],
    *,
    atoms_per_chunk: int | None = None,
) -> Complex[Array, "*pixels"]:
    """Scattered amplitude `F(q) = Σ_j f_{t_j}(q) exp(2πi q · (A r_j))` in electrons.

    Atoms are grouped by type `t` (atoms of a type share one form factor), so the sum is
    `Σ_t f_t(q) S_t(q)` with the partial structure factors `S_t(q) = Σ_{j: t_j = t} exp(...)`,
    accumulated over chunks of atoms in a rematerialised `lax.scan` (memory: about `pixels ×
    atoms_per_chunk` numbers, also under `jax.grad`). Differentiable w.r.t. positions, rotation,
    `q` and form factors; `jax.vmap` it over rotations (memory grows with the batch: lower
    `atoms_per_chunk` for large batches).

    **Arguments:**

    - `positions_in_angstroms`: `(n_atoms, 3)` atom positions `r_j` in the model frame.
    - `rotation`: the pose `A` (`atomicspi.conventions`), applied as `A @ r_j`.
    - `q_in_inverse_angstroms`: scattering vectors, any leading shape, in 1/Å (cycles).
    - `form_factors`: `f_t(q)` per pixel and atom type (electrons), e.g. `xray_scattering_factor`
        of each type at `s = |q| / 2`; real form factors give Friedel's law `F(-q) = F(q)*`.
    - `atom_types`: `(n_atoms,)` type of each atom, in `[0, n_types)` (other values scatter
        nothing).
    - `atoms_per_chunk`: atoms per scan step (default `default_atoms_per_chunk`).

    **Returns:**

    The complex amplitude, shape `q.shape[:-1]`.
    """
    positions = jnp.asarray(positions_in_angstroms)
    q = jnp.asarray(q_in_inverse_angstroms)
    form_factors = jnp.asarray(form_factors)
    pixel_shape = q.shape[:-1]
    n_types = form_factors.shape[-1]
    q = q.reshape(-1, 3)
    form_factors = form_factors.reshape(-1, n_types)
    dtype = jnp.result_type(positions.dtype, q.dtype, jnp.asarray(rotation).dtype)
    n_atoms = positions.shape[0]
    chunk = atoms_per_chunk or default_atoms_per_chunk(q.shape[0], n_atoms)
    n_chunks = -(-n_atoms // chunk)
    padding = n_chunks * chunk - n_atoms
    # row p of q @ A is (Aᵀ q_p)ᵀ, so q_p · (A r) = (q @ A)_p · r
    q_model = (2.0 * jnp.pi) * (q.astype(dtype) @ jnp.asarray(rotation, dtype=dtype))
    positions = jnp.pad(positions.astype(dtype), ((0, padding), (0, 0))).reshape(n_chunks, chunk, 3)
    types = jnp.pad(jnp.asarray(atom_types), (0, padding), constant_values=-1)
    one_hot = jax.nn.one_hot(types, n_types, dtype=dtype).reshape(n_chunks, chunk, n_types)
    form_factors = form_factors.astype(dtype)

    @jax.checkpoint
    def add_chunk(totals, chunk_inputs):
        chunk_positions, chunk_one_hot = chunk_inputs
        # elementwise products, not a matmul: the phase needs full float precision on any device
        phase = (
            q_model[:, None, 0] * chunk_positions[None, :, 0]
            + q_model[:, None, 1] * chunk_positions[None, :, 1]
            + q_model[:, None, 2] * chunk_positions[None, :, 2]
        )
        real = jnp.matmul(jnp.cos(phase), chunk_one_hot, precision=jax.lax.Precision.HIGHEST)
        imaginary = jnp.matmul(jnp.sin(phase), chunk_one_hot, precision=jax.lax.Precision.HIGHEST)
        return (
            totals[0] + jnp.sum(form_factors * real, axis=-1),
            totals[1] + jnp.sum(form_factors * imaginary, axis=-1),
        ), None

    zeros = jnp.zeros(q.shape[0], dtype)
    (real, imaginary), _ = jax.lax.scan(add_chunk, (zeros, zeros), (positions, one_hot))
    return jax.lax.complex(real, imaginary).reshape(pixel_shape)


class DiffractionModel(eqx.Module):
    """Diffraction patterns of one molecule on one detector (positions and pose per call).

    Build it with `make_diffraction_model`; it holds each pixel's `q`, the atom types' form
    factors on the pixels and `r_e² P Ω`. Call its methods inside `jax.vmap` for batches of poses
    or conformations.
    """

    q_in_inverse_angstroms: Float[Array, "n_y n_x 3"]
    form_factors: Float[Array, "n_y n_x n_types"]
    atom_types: Int[Array, " n_atoms"]
    thomson_solid_angle_in_angstroms_squared: Float[Array, "n_y n_x"]
    atoms_per_chunk: int = eqx.field(static=True)

    def amplitude(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
    ) -> Complex[Array, "n_y n_x"]:
        """The molecular amplitude `F(q)` (electrons) on every pixel.

        **Arguments:**

        - `positions_in_angstroms`: `(n_atoms, 3)` atom positions in the model frame.
        - `rotation`: the pose `A`, `(3, 3)` (`atomicspi.conventions`).

        **Returns:**

        `(n_y, n_x)` complex amplitudes.
        """
        return molecular_amplitude(
            positions_in_angstroms,
            rotation,
            self.q_in_inverse_angstroms,
            self.form_factors,
            self.atom_types,
            atoms_per_chunk=self.atoms_per_chunk,
        )

    def intensity(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
    ) -> Float[Array, "n_y n_x"]:
        """`|F(q)|²` (electrons²) on every pixel (same arguments as `amplitude`)."""
        amplitude = self.amplitude(positions_in_angstroms, rotation)
        return jnp.real(amplitude) ** 2 + jnp.imag(amplitude) ** 2

    def expected_photons(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
        fluence_in_photons_per_angstrom_squared: Float[ArrayLike, ""],
        background_in_photons: Float[ArrayLike, ""] | Float[ArrayLike, "n_y n_x"] = 0.0,
    ) -> Float[Array, "n_y n_x"]:
        """Expected photons per pixel `Φ r_e² P Ω |F(q)|² + background`.

        **Arguments:**

        - `positions_in_angstroms`, `rotation`: as for `amplitude`.
        - `fluence_in_photons_per_angstrom_squared`: `Φ`, pulse photons per Å² at the sample.
        - `background_in_photons`: expected background photons per pixel (scalar or `(n_y, n_x)`).

        **Returns:**

        `(n_y, n_x)` Poisson means.
        """
        return (
            jnp.asarray(fluence_in_photons_per_angstrom_squared)
            * self.thomson_solid_angle_in_angstroms_squared
            * self.intensity(positions_in_angstroms, rotation)
            + jnp.asarray(background_in_photons)
        )


def make_diffraction_model(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
    geometry: DetectorGeometry,
    *,
    atoms_per_chunk: int | None = None,
) -> DiffractionModel:
    """Diffraction model for a molecule whose atoms' positions are given per pattern.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers (International Tables X-ray form factors of
        neutral atoms; no B-factors).
    - `geometry`: the detector and beam (`DetectorGeometry`).
    - `atoms_per_chunk`: atoms summed at once (default `default_atoms_per_chunk`).

    **Returns:**

    A `DiffractionModel`: `model.expected_photons(positions, rotation, fluence)`,
    `model.intensity(...)`, `model.amplitude(...)`.
    """
    atomic_numbers = np.asarray(atomic_numbers)
    if atomic_numbers.ndim != 1 or atomic_numbers.size == 0:
        raise InputError(f"atomic_numbers: must be a non-empty 1D array, got shape {atomic_numbers.shape}")
    if atoms_per_chunk is not None and (not isinstance(atoms_per_chunk, int | np.integer) or atoms_per_chunk < 1):
        raise InputError(f"atoms_per_chunk: must be a positive integer, got {atoms_per_chunk!r}")
    elements, atom_types = np.unique(atomic_numbers, return_inverse=True)
    pixels = pixel_geometry(geometry)
    dtype = jnp.result_type(float)
    q_length = np.linalg.norm(np.asarray(pixels.q_in_inverse_angstroms, dtype=float), axis=-1)
    form_factors = np.moveaxis(xray_scattering_factor(elements, q_length / 2.0), 0, -1)
    thomson = CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS**2 * pixels.polarization_factor * pixels.solid_angle_in_steradians
    n_pixels = geometry.shape[0] * geometry.shape[1]
    return DiffractionModel(
        q_in_inverse_angstroms=jnp.asarray(pixels.q_in_inverse_angstroms, dtype),
        form_factors=jnp.asarray(form_factors, dtype),
        atom_types=jnp.asarray(atom_types.reshape(-1), jnp.int32),
        thomson_solid_angle_in_angstroms_squared=jnp.asarray(thomson, dtype),
        atoms_per_chunk=int(atoms_per_chunk or default_atoms_per_chunk(n_pixels, len(atomic_numbers))),
    )


# --------------------------------------------------------------------------------------------
# Photon counts
# --------------------------------------------------------------------------------------------


def poisson_log_likelihood(
    counts: Float[ArrayLike, "*batch n_y n_x"],
    expected_photons: Float[ArrayLike, "*batch n_y n_x"],
    mask: Float[ArrayLike, "n_y n_x"] | None = None,
) -> Float[Array, "*batch"]:
    """Poisson log-likelihood `Σ_pixels [n log λ - λ - log(n!)]` of photon counts.

    **Arguments:**

    - `counts`: observed photons `n ≥ 0` per pixel (integers, any numeric dtype).
    - `expected_photons`: Poisson means `λ ≥ 0` (`λ = 0` with `n = 0` contributes 0, with
        `n > 0` gives `-inf`).
    - `mask`: `(n_y, n_x)` pixels to use (True or 1) or weights; default all.

    **Returns:**

    The sum over the last two (pixel) axes; leading batch axes are kept.
    """
    counts = jnp.asarray(counts)
    expected = jnp.asarray(expected_photons)
    counts = counts.astype(jnp.result_type(expected.dtype, float))
    per_pixel = jax.scipy.special.xlogy(counts, expected) - expected - jax.scipy.special.gammaln(counts + 1.0)
    if mask is not None:
        weights = jnp.asarray(mask).astype(per_pixel.dtype)
        per_pixel = jnp.where(weights != 0, weights * per_pixel, 0.0)
    return jnp.sum(per_pixel, axis=(-2, -1))


def sample_photon_counts(
    key: PRNGKeyArray,
    expected_photons: Float[ArrayLike, "*shape"],
) -> Int[Array, "*shape"]:
    """Poisson photon counts with the given means.

    **Arguments:**

    - `key`: JAX random key (explicit: the same key gives the same pattern).
    - `expected_photons`: Poisson means, any shape.

    **Returns:**

    Integer counts of the same shape.
    """
    return jax.random.poisson(key, jnp.asarray(expected_photons))
