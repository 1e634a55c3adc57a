"""Global pose search: each image's rotation and shift against projections of a structure.

The images of a fixed structure at every rotation are central slices of one 3D Fourier transform
(the projection-slice theorem), so the structure's transform is computed once on an oversampled
grid (`make_fourier_volume`) and sliced by trilinear interpolation for each rotation tried. A
hypothesis (rotation `A`, shift `s`) of image `x` with CTF `c(k)` is scored by the white-noise
Gaussian log-likelihood maximised over the image's contrast `a ≥ 0`, on the Fourier components
`0 < |k| ≤ K` of a band:

    gain(A, s) = max(Σ_k w_k Re[conj(c V(Aᵀk) e^{-2πi k·s}) X(k)], 0)² / (2 σ² D² Σ_k w_k |c V(Aᵀk)|²)

(`w_k` counts the half-plane of `rfft2`; `σ` the per-pixel noise; `D²` numpy's unnormalised FFT),
the log-likelihood ratio of the best-scaled projection against no particle.

The search works coarse to fine (`search_poses`): a near-uniform grid of rotations (Fibonacci
directions × in-plane angles, about 15° apart) and a shift grid at a low band; the best
hypotheses of each image are then refined by local grids of rotation vectors and shifts whose
steps halve while the band doubles, up to the band limit. The surviving hypotheses keep their
scores, so their softmax is the posterior weight of each (pose uncertainty between distinct
hypotheses), and the curvature of the score at the best one gives the local spread.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, Int, Shaped

from atomicspi.microscope import (
    CTFParameters,
    ImageModel,
    axis_angle_to_matrix,
    compute_ctf,
    ctf_batch_axes,
    euler_angles_to_matrix,
    form_factor_basis,
    geodesic_distance_in_degrees,
)

__all__ = ["FourierVolume", "PoseSearchResult", "make_fourier_volume", "rotation_grid", "search_poses"]


class FourierVolume(eqx.Module):
    """The 3D Fourier transform of a structure's projected potential, on the grid
    `q = j / (oversampling · D · p)`, `j = -J … J` per axis, `J = ⌈oversampling · K⌉ + 1`
    (`make_fourier_volume`); its central slices, times the pixel box filter and the centre
    phase, are the `rfft2` of the structure's images (`ImageModel`, before the CTF).

    - `values`: `(2J + 1,)³` complex, indexed `[j_x + J, j_y + J, j_z + J]`.
    """

    values: Complex[Array, "n n n"]
    box_size: int = eqx.field(static=True)
    pixel_size_in_angstroms: float = eqx.field(static=True)
    max_frequency: int = eqx.field(static=True)
    oversampling: float = eqx.field(static=True)

    @property
    def half_width(self) -> int:
        return (self.values.shape[0] - 1) // 2

    def slice(
        self, rotation: Float[Array, "3 3"], band: Int[Array, "n_points 2"]
    ) -> Complex[Array, " n_points"]:
        """The `rfft2` entries `(n, m)` (column `n ≥ 0` = x frequency, row `m` = y frequency, in
        units of `1 / (D p)`) of the structure's image at `rotation` (no shift, no CTF)."""
        d = self.box_size
        frequencies = jnp.stack([band[:, 0], band[:, 1], jnp.zeros_like(band[:, 0])], axis=-1).astype(rotation.dtype)
        coordinates = self.oversampling * frequencies @ rotation + self.half_width  # (Aᵀ k)ᵀ = kᵀ A
        total = trilinear_interpolation(self.values, coordinates)
        box_filter = jnp.sinc(band[:, 0] / d) * jnp.sinc(band[:, 1] / d)
        centre = -2.0 * jnp.pi * (band[:, 0] + band[:, 1]) * (d // 2) / d
        return total * box_filter * jax.lax.complex(jnp.cos(centre), jnp.sin(centre))


def trilinear_interpolation(
    values: Shaped[Array, "n_x n_y n_z"], coordinates: Float[Array, "n_points 3"]
) -> Shaped[Array, " n_points"]:
    """Trilinear interpolation of a grid `values[i, j, k]` at fractional indices `coordinates`
    (`(i, j, k)` per row; they must lie inside the grid, at least one step from its far edges).
    Shared by the slicing of `FourierVolume` and of the diffraction search's intensity volume."""
    lower = jnp.floor(coordinates)
    fraction = coordinates - lower
    lower = lower.astype(jnp.int32)
    total = jnp.zeros(coordinates.shape[0], dtype=values.dtype)
    for corner in range(8):
        offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        weight = jnp.prod(jnp.where(offset == 1, fraction, 1.0 - fraction), axis=-1)
        index = lower + offset
        total = total + weight * values[index[:, 0], index[:, 1], index[:, 2]]
    return total


def make_fourier_volume(
    image_model: ImageModel,
    positions_in_angstroms: Float[np.ndarray, "n_atoms 3"],
    max_frequency: int,
    *,
    oversampling: float = 2.0,
    basis_tolerance: float = 1e-2,
    max_channels: int = 6,
) -> FourierVolume:
    """The structure's 3D transform for slicing, up to `max_frequency` (`K`, in units of `1/(D p)`).

    `V(q) = p⁻² Σ_a FF_a(|q|) exp(-2πi q·r_a) / Π_axes sinc²(r_a,axis / L)` with the atoms' projected
    form factors `FF_a` (the image model's Gaussian tables, through the low-rank radial basis of
    `form_factor_basis`) and `L = oversampling · D · p`: dividing by the transform of the
    trilinear interpolation kernel (a sinc² apodisation of the molecule in real space) removes
    most of the interpolation's error, as the deconvolution of a non-uniform FFT does. The sum is
    separable in the three axes, one matrix product per basis channel.

    **Arguments:**

    - `image_model`: its tables (`amplitudes`, `variances_in_angstroms_squared`, in its `order`),
        box and pixel size.
    - `positions_in_angstroms`: `(n_atoms, 3)` the structure, centred in the pose frame.
    - `max_frequency`: the largest `|k|` the slices will be taken at.
    - `oversampling`: the grid's spacing is `1 / oversampling` of the images' frequency spacing.
    - `basis_tolerance`, `max_channels`: truncation of the form-factor basis.

    **Returns:**

    A `FourierVolume`.
    """
    d, pixel = image_model.box_size, image_model.pixel_size_in_angstroms
    if not 0 < max_frequency < d // 2:
        raise ValueError(f"max_frequency {max_frequency} is not between 0 and {d // 2} (Nyquist) for {d}² images")
    half = int(math.ceil(oversampling * max_frequency)) + 1
    period = oversampling * d * pixel
    grid = np.arange(-half, half + 1) / period
    amplitudes = np.asarray(image_model.amplitudes, float)
    variances = np.asarray(image_model.variances_in_angstroms_squared, float)
    positions = np.asarray(positions_in_angstroms, float)[np.asarray(image_model.order)]
    largest = math.sqrt(3.0) * half / period
    nodes = np.linspace(0.0, largest, 129)
    weights, basis = form_factor_basis(amplitudes, variances, nodes, np.ones_like(nodes), basis_tolerance, max_channels)
    apodisation = np.prod(np.sinc(positions / period) ** 2, axis=1)
    weights = weights / apodisation[:, None] / pixel**2
    gx, gy, gz = np.meshgrid(grid, grid, grid, indexing="ij")
    magnitude = np.sqrt(gx**2 + gy**2 + gz**2)

    @jax.jit
    def channel_sum(weight):
        phase = -2.0 * jnp.pi * jnp.asarray(positions)[:, :, None] * jnp.asarray(grid)[None, None, :]  # (atoms, 3, n)
        factors = jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
        xy = (weight[:, None, None] * factors[:, 0, :, None] * factors[:, 1, None, :])
        return jnp.einsum("axy,az->xyz", xy, factors[:, 2])

    values = jnp.zeros(magnitude.shape, dtype=jnp.complex64)
    for channel in range(weights.shape[1]):
        radial = jnp.asarray(np.interp(magnitude, nodes, basis[channel]), dtype=jnp.float32)
        values = values + radial * channel_sum(jnp.asarray(weights[:, channel], dtype=jnp.float32))
    return FourierVolume(values, int(d), float(pixel), int(max_frequency), float(oversampling))


def half_plane_band(max_frequency: int) -> tuple[np.ndarray, np.ndarray]:
    """The `rfft2` entries `(n, m)` with `0 < n² + m² ≤ K²`, `n ≥ 0` (and `m > 0` on `n = 0`: the
    rest of that column is their conjugate), with the weights (2) that make their sum over the
    half plane the sum over the full plane (the DC term is left out: background offsets)."""
    n, m = np.meshgrid(np.arange(0, max_frequency + 1), np.arange(-max_frequency, max_frequency + 1), indexing="ij")
    keep = (n**2 + m**2 <= max_frequency**2) & ((n > 0) | (m > 0))
    band = np.stack([n[keep], m[keep]], axis=-1)
    return band, np.full(len(band), 2.0)


def rotation_grid(n_directions: int, n_in_plane: int) -> Float[np.ndarray, "n 3 3"]:
    """A near-uniform grid of `n_directions · n_in_plane` rotations (RELION's `A`): Fibonacci
    points on the sphere as `(rot, tilt)` times evenly spaced `psi` (uniform in Haar measure, since
    `d(Haar) ∝ sin(tilt) d rot d tilt d psi`). Neighbours are about `√(4π / n_directions)` rad apart."""
    index = np.arange(n_directions) + 0.5
    tilt = np.degrees(np.arccos(1.0 - 2.0 * index / n_directions))
    rot = np.degrees(np.pi * (1.0 + math.sqrt(5.0)) * index) % 360.0
    psi = np.arange(n_in_plane) * 360.0 / n_in_plane
    angles = np.stack(np.broadcast_arrays(rot[:, None], tilt[:, None], psi[None, :]), axis=-1).reshape(-1, 3)
    return np.asarray(euler_angles_to_matrix(angles), dtype=np.float32)


def _cube_offsets(step: float) -> np.ndarray:
    """`(27, 3)` rotation vectors `step · {-1, 0, 1}³`."""
    axis = np.array([-1.0, 0.0, 1.0]) * step
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def refinement_stages(step: float, n_hypotheses: int, final_hypotheses: int, final_step_in_degrees: float):
    """The coarse-to-fine schedule after a global grid of spacing `step` (radians): yields, per
    refinement stage, `(step, hypotheses)`: the stage's rotation step (halved every stage) and how
    many hypotheses survive it (halved every stage, down to `final_hypotheses`); the last stage is
    the first whose step is at most `final_step_in_degrees`. The caller widens its band (doubles
    it) at each stage. Shared by `search_poses` and the diffraction search."""
    hypotheses = n_hypotheses
    while True:
        step = step / 2.0
        hypotheses = max(final_hypotheses, hypotheses // 2)
        yield step, hypotheses
        if math.degrees(step) <= final_step_in_degrees:
            return


def refine_rotations_locally(score, rotations: Float[Array, "n_hypotheses 3 3"], step: Float[ArrayLike, ""], keep: int):
    """One rotation-only refinement stage for one image: every hypothesis `A` moves to the best of
    the 27 rotations `exp(δ) A`, `δ ∈ step · {-1, 0, 1}³` (`_cube_offsets`, the same local grid as
    `search_poses`' stages), and the best `keep` survive, best first.

    `score(candidates (27, 3, 3)) -> (values (27,), aux)` is a traceable function (higher is
    better; `aux` a pytree of `(27, ...)` arrays, e.g. fitted scales). Returns `(rotations (keep,
    3, 3), values (keep,), aux of the kept (keep, ...), spread (3,))`, with `spread` the local
    standard deviation of the rotation vector at the best hypothesis along each axis, from the
    curvature of the score (`_curvature_spread`; `inf` where it is flat). `step` (radians) may be
    traced, so that stages with different steps share one compilation."""
    step = jnp.asarray(step, dtype=rotations.dtype)
    offsets = jax.vmap(axis_angle_to_matrix)(jnp.asarray(_cube_offsets(1.0), dtype=rotations.dtype) * step)  # (27, 3, 3)

    def hypothesis(rotation):
        candidates = offsets @ rotation
        values, aux = score(candidates)
        best = jnp.argmax(values)
        grid = values.reshape(3, 3, 3)  # rotation vector x, y, z
        spread = jnp.stack([
            _curvature_spread(grid[:, 1, 1], step), _curvature_spread(grid[1, :, 1], step),
            _curvature_spread(grid[1, 1, :], step),
        ])
        return candidates[best], values[best], jax.tree_util.tree_map(lambda a: a[best], aux), spread

    new_rotations, values, aux, spreads = jax.vmap(hypothesis)(rotations)
    top, order = jax.lax.top_k(values, keep)
    return new_rotations[order], top, jax.tree_util.tree_map(lambda a: a[order], aux), spreads[order[0]]


class PoseSearchResult(NamedTuple):
    """Per image, the best pose and the hypotheses that survived the search.

    - `rotations`: `(B, 3, 3)` the best rotation (RELION's `A`); `shifts_in_angstroms`: `(B, 2)`.
    - `hypothesis_rotations`: `(B, H, 3, 3)`, `hypothesis_shifts_in_angstroms`: `(B, H, 2)`,
      `hypothesis_log_weights`: `(B, H)` normalised log posterior weights (softmax of the gains),
      best first; a hypothesis that refinement brought to within a few final steps of a better one
      has weight 0 (log −inf).
    - `rotation_spread_in_radians`: `(B, 3)` the local standard deviation of the rotation vector
      at the best hypothesis along each axis (from the score's curvature; `inf` where it is flat).
    - `shift_spread_in_angstroms`: `(B, 2)` the same for the shift.
    - `contrast`: `(B,)` the best scale of the structure's image (image units per V·Å).
    - `gain`: `(B,)` the best hypothesis's log-likelihood ratio.
    """

    rotations: np.ndarray
    shifts_in_angstroms: np.ndarray
    hypothesis_rotations: np.ndarray
    hypothesis_shifts_in_angstroms: np.ndarray
    hypothesis_log_weights: np.ndarray
    rotation_spread_in_radians: np.ndarray
    shift_spread_in_angstroms: np.ndarray
    contrast: np.ndarray
    gain: np.ndarray


class _Band(NamedTuple):
    """The `half_plane_band` of a stage: its entries `(M, 2)` and weights `(M,)`, their frequencies
    `(k_x, k_y)` in 1/Å `(M, 2)`, and the images' entries there `(B, M)` with their CTF `(B, M)`."""

    band: Int[Array, "n_points 2"]
    weights: Float[Array, " n_points"]
    frequencies: Float[Array, "n_points 2"]
    data: Complex[Array, "batch n_points"]
    ctf_values: Float[Array, "batch n_points"]


def _band(max_frequency, images_fourier, ctf, box_size, pixel_size) -> _Band:
    band, weights = half_plane_band(max_frequency)
    data = images_fourier[:, np.mod(band[:, 1], box_size), band[:, 0]]
    frequencies = jnp.asarray(band, dtype=jnp.float32) / (box_size * pixel_size)
    axes = ctf_batch_axes(ctf, data.shape[0])
    ctf_values = jax.vmap(lambda parameters: compute_ctf(frequencies, parameters), in_axes=(axes,))(ctf)
    return _Band(jnp.asarray(band), jnp.asarray(weights, dtype=jnp.float32), frequencies, data, ctf_values)


def _shift_grid(axis: np.ndarray) -> Float[Array, "n 2"]:
    """`(x, y)` shifts on the square grid `axis × axis`, row-major in `(y, x)`."""
    return jnp.asarray(np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1).reshape(-1, 2), dtype=jnp.float32)


def _gains(slices, data, ctf_values, weights, shifts, frequencies, noise_variance):
    """Scores `(R, S)` of one image `data (M,)` for slices `(R, M)` and shifts `(S, 2)` (Å);
    also the best contrast `(R, S)`."""
    correlation = weights * ctf_values * data  # (M,)
    phase = 2.0 * jnp.pi * shifts @ frequencies.T  # (S, M): conj(e^{-2πi k·s}) = e^{+2πi k·s}
    shifted = jax.lax.complex(jnp.cos(phase), jnp.sin(phase)) * correlation  # (S, M)
    cross = jnp.real(jnp.conj(slices) @ shifted.T)  # (R, S)
    norm = (jnp.abs(slices) ** 2) @ (weights * ctf_values**2)  # (R,)
    gain = jnp.maximum(cross, 0.0) ** 2 / (2.0 * noise_variance * norm[:, None])
    return gain, cross / norm[:, None]


def search_poses(
    volume: FourierVolume,
    images: Float[np.ndarray, "batch y x"],
    ctf: CTFParameters,
    noise_std: float,
    *,
    max_shift_in_angstroms: float,
    initial_max_frequency: int = 6,
    n_directions: int = 192,
    n_in_plane: int = 24,
    n_hypotheses: int = 16,
    final_hypotheses: int = 4,
    final_step_in_degrees: float = 0.5,
    chunk_size: int = 8,
) -> PoseSearchResult:
    """Coarse-to-fine global search of each image's pose (module docstring).

    **Arguments:**

    - `volume`: `make_fourier_volume` of the structure, up to the finest band `K`.
    - `images`: `(B, D, D)` images `[y, x]`.
    - `ctf`: their `CTFParameters`, batched over `B`.
    - `noise_std`: per-pixel noise standard deviation (white noise).
    - `max_shift_in_angstroms`: the initial shift grid covers `|s_x|, |s_y| ≤` this.
    - `initial_max_frequency`: the band of the global grid (`K₀`); each refinement doubles it,
        up to the volume's.
    - `n_directions`, `n_in_plane`: the global grid (`rotation_grid`).
    - `n_hypotheses`: hypotheses kept from the global grid (the best over shifts of each
        rotation); `final_hypotheses`: how many survive the refinement (halved every stage).
    - `final_step_in_degrees`: the refinement stops when its rotation step reaches this.
    - `chunk_size`: images scored at once.

    **Returns:**

    A `PoseSearchResult` (numpy arrays).
    """
    d, pixel = volume.box_size, volume.pixel_size_in_angstroms
    images = np.asarray(images, dtype=np.float32)
    images_fourier = jnp.fft.rfft2(jnp.asarray(images))
    noise_variance = float(noise_std) ** 2 * d * d
    grid = jnp.asarray(rotation_grid(n_directions, n_in_plane))
    step = math.sqrt(4.0 * math.pi / n_directions)  # rad, the grid's spacing
    max_frequency = min(initial_max_frequency, volume.max_frequency)
    shift_step = 0.25 * d * pixel / max_frequency  # a quarter of the band's resolution
    count = int(math.floor(max_shift_in_angstroms / shift_step))
    shift_grid = _shift_grid(np.arange(-count, count + 1) * shift_step)
    band = _band(max_frequency, images_fourier, ctf, d, pixel)
    slices = jax.jit(jax.vmap(lambda rotation: volume.slice(rotation, band.band)))(grid)  # (R, M)

    @jax.jit
    def global_stage(data, ctf_values):
        def one(image_data, image_ctf):
            gain, _ = _gains(slices, image_data, image_ctf, band.weights, shift_grid, band.frequencies, noise_variance)
            best_shift = jnp.argmax(gain, axis=1)
            best = jnp.take_along_axis(gain, best_shift[:, None], axis=1)[:, 0]
            top, chosen = jax.lax.top_k(best, n_hypotheses)
            return chosen, shift_grid[best_shift[chosen]], top

        return jax.lax.map(lambda pair: one(*pair), (data, ctf_values), batch_size=chunk_size)

    chosen, shifts, gains = global_stage(band.data, band.ctf_values)
    rotations = grid[chosen]  # (B, H, 3, 3)

    grid_step = step
    for step, hypotheses in refinement_stages(grid_step, n_hypotheses, final_hypotheses, final_step_in_degrees):
        shift_step = shift_step / 2.0
        max_frequency = min(2 * max_frequency, volume.max_frequency)
        rotations, shifts, gains, spreads, contrast = _refine(
            volume, images_fourier, ctf, rotations, shifts, max_frequency, step, shift_step, hypotheses, noise_variance,
            chunk_size,
        )
    gains = jnp.where(_duplicates(rotations, shifts, 4.0 * step, 4.0 * shift_step), -jnp.inf, gains)
    log_weights = gains - jax.scipy.special.logsumexp(gains, axis=1, keepdims=True)
    rotation_spread, shift_spread = spreads
    return PoseSearchResult(
        rotations=np.asarray(rotations[:, 0]), shifts_in_angstroms=np.asarray(shifts[:, 0]),
        hypothesis_rotations=np.asarray(rotations), hypothesis_shifts_in_angstroms=np.asarray(shifts),
        hypothesis_log_weights=np.asarray(log_weights), rotation_spread_in_radians=np.asarray(rotation_spread),
        shift_spread_in_angstroms=np.asarray(shift_spread), contrast=np.asarray(contrast), gain=np.asarray(gains[:, 0]),
    )


def _duplicates(rotations, shifts, angle_in_radians, distance_in_angstroms):
    """`(B, H)`: hypotheses within `angle` and `distance` of a better one (lower index) of the same
    image, which refinement brought to the same pose: left out of the posterior weights."""
    distances = jnp.linalg.norm(shifts[:, :, None] - shifts[:, None, :], axis=-1)
    return rotation_duplicates(rotations, angle_in_radians, distances < distance_in_angstroms)


def rotation_duplicates(rotations: Float[Array, "batch n_hypotheses 3 3"], angle_in_radians: Float[ArrayLike, ""], also=None):
    """`(B, H)`: hypotheses whose rotation is within `angle` of a better one (lower index) of the
    same image, and (where given) for which `also (B, H, H)` holds too, e.g. a near shift."""
    angles = jnp.deg2rad(geodesic_distance_in_degrees(rotations[:, :, None], rotations[:, None, :]))  # (B, H, H)
    near = angles < angle_in_radians
    if also is not None:
        near = near & also
    earlier = jnp.tril(jnp.ones(near.shape[1:], dtype=bool), k=-1)  # [j, i]: i < j
    return jnp.any(near & earlier, axis=2)


def _curvature_spread(values, step):
    """Standard deviation `1 / √(-g'')` from a score's values at `-step, 0, +step` (`(…, 3)`)."""
    second = (values[..., 0] - 2.0 * values[..., 1] + values[..., 2]) / step**2
    return jnp.where(second < 0, 1.0 / jnp.sqrt(jnp.maximum(-second, 1e-30)), jnp.inf)


def _refine(volume, images_fourier, ctf, rotations, shifts, max_frequency, step, shift_step, keep, noise_variance,
            chunk_size):
    """One refinement stage: every hypothesis `(A, s)` moves to the best of `exp(δ) A`, `s + ε` over
    the 27 × 9 local grid; the best `keep` hypotheses of each image survive, best first."""
    band = _band(max_frequency, images_fourier, ctf, volume.box_size, volume.pixel_size_in_angstroms)
    offsets = jax.vmap(axis_angle_to_matrix)(jnp.asarray(_cube_offsets(step), dtype=jnp.float32))  # (27, 3, 3)
    shift_offsets = _shift_grid(np.array([-1.0, 0.0, 1.0]) * shift_step)

    @jax.jit
    def stage(data, ctf_values, rotations, shifts):
        def one(image_data, image_ctf, image_rotations, image_shifts):
            def hypothesis(rotation, shift):
                candidates = offsets @ rotation  # (27, 3, 3)
                slices = jax.vmap(lambda r: volume.slice(r, band.band))(candidates)
                gain, contrast = _gains(slices, image_data, image_ctf, band.weights, shift + shift_offsets, band.frequencies,
                                        noise_variance)  # (27, 9)
                best = jnp.argmax(gain)
                r_best, s_best = best // 9, best % 9
                grid = gain.reshape(3, 3, 3, 3, 3)  # rotation x, y, z; shift y, x
                spread_rotation = jnp.stack([
                    _curvature_spread(grid[:, 1, 1, 1, 1], step), _curvature_spread(grid[1, :, 1, 1, 1], step),
                    _curvature_spread(grid[1, 1, :, 1, 1], step),
                ])
                spread_shift = jnp.stack([
                    _curvature_spread(grid[1, 1, 1, 1, :], shift_step), _curvature_spread(grid[1, 1, 1, :, 1], shift_step),
                ])
                return candidates[r_best], shift + shift_offsets[s_best], gain[r_best, s_best], contrast[r_best, s_best], \
                    spread_rotation, spread_shift

            new_rotations, new_shifts, gains, contrast, spread_rotation, spread_shift = jax.vmap(hypothesis)(
                image_rotations, image_shifts
            )
            top, order = jax.lax.top_k(gains, keep)
            return (new_rotations[order], new_shifts[order], top, contrast[order[0]], spread_rotation[order[0]],
                    spread_shift[order[0]])

        return jax.lax.map(lambda args: one(*args), (data, ctf_values, rotations, shifts), batch_size=chunk_size)

    new_rotations, new_shifts, gains, contrast, spread_rotation, spread_shift = stage(band.data, band.ctf_values, rotations, shifts)
    return new_rotations, new_shifts, gains, (spread_rotation, spread_shift), contrast
