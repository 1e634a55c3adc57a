"""Orientations of X-ray diffraction patterns (XFEL single-particle imaging) of a known structure.

**Intensity volume.** A pattern of the molecule at pose `A` (`atomicspi.conventions`, atoms at
`A r_j`) has the Poisson means (`atomicspi.microscope.DiffractionModel`)

    λ_A(p) = Φ r_e² P(p) Ω(p) I(Aᵀ q(p)) + b(p),      I(k) = |Σ_j f_j(|k|) exp(2πi k · r_j)|²,

where `q(p)` is pixel `p`'s scattering vector on the Ewald sphere (lab frame, beam along `+z`) and
`I` the molecule's intensity in its own (model) frame: every pattern is a slice of one 3D function
(the molecule-frame vector `k = Aᵀ q`, as a row `qᵀ A`). `make_intensity_volume` computes `I`
once on the cubic grid `k = Δ · (i, j, l)`, `|i|, |j|, |l| ≤ J`, covering the detector's largest
`|q|`. `I` is the transform of the molecule's Patterson function (the autocorrelation of its
electron density), whose support is the ball of radius `d` (the molecule's diameter), so `I` is
band-limited and sampled without loss at `Δ = 1 / (2 d)` (Shannon); the grid uses
`Δ = 1 / (2 d · oversampling)`. `I` is evaluated exactly at the grid points from the atoms,
`F(k) = Σ_t f_t(|k|) S_t(k)` with each element's structure factor `S_t(k) = Σ_{j∈t} e^{2πi k_x x_j}
e^{2πi k_y y_j} e^{2πi k_z z_j}` separable in the three axes (one batched matrix product per chunk
of atoms, as `make_fourier_volume` does for cryo-EM), and sliced by trilinear interpolation
(`IntensityVolume.slice`, shared with `FourierVolume.slice`). Unlike an amplitude, an intensity
has no per-atom phase, so the sinc² pre-compensation of `make_fourier_volume` does not apply:
the interpolation's error is reduced by oversampling only, as its square: at the default 3,
slices of adenylate kinase correlate with `DiffractionModel.expected_photons` to 0.99997 with a
median relative error per pixel of 1.7 % (3.4 % at oversampling 2; tests). Friedel's law makes
the grid point-symmetric, so only its half `k_z ≥ 0` is computed.

**Search.** `search_diffraction_orientations` scores a rotation by the Poisson log-likelihood of a
pattern's counts `n(p)` (over the unmasked pixels) with the means `s λ_signal(p) + b(p)`, at the
maximum-likelihood value of an unknown per-pattern fluence scale `s` (the pulse's fluence at the
particle varies from shot to shot): without background `ŝ = Σ n / Σ λ_signal` exactly; with a
background, a few EM (fixed-point) steps `s ← Σ n s λ_signal / (s λ_signal + b) / Σ λ_signal` from
the moment estimate `(Σ n - Σ b) / Σ λ_signal` (each step raises the likelihood, which is concave
in `s`). The search is `search_poses`' coarse-to-fine machinery (`atomicspi.inference`'s
`_pose_search`: `rotation_grid`, `refinement_stages`, `refine_rotations_locally`,
`rotation_duplicates`): a near-uniform grid of rotations (about 15° apart) scored on the pixels
with `|q| ≤ q₀`, then local grids of rotation vectors whose step halves while the band `q₀`
doubles (up to all pixels; the stages see all unmasked pixels, those outside the band with weight
0, so that they share their compilations). The default `q₀ = 1 / (2 d · step)` keeps the shift of a pixel's
`k` under a grid step (`|q| · step`) within half a speckle (`1 / (2 d)`), so the likelihood of the
grid point nearest to the truth is not yet lost among the speckles. The posterior weights of the
surviving hypotheses are the softmax of their log-likelihoods (flat prior over rotations).

**Friedel ambiguity.** The atoms' form factors are real (no anomalous dispersion), so
`F(-k) = F(k)*` and `I(-k) = I(k)` (Friedel's law). Let `R = Rz(180°) = diag(-1, -1, 1)` (a
half-turn about the beam; the same matrix in the RELION convention) and `M = diag(1, 1, -1)` (the
mirror through the plane normal to the beam), so that `R = -M` and `Rᵀ = R`. For the pose `R A`,

    I((R A)ᵀ q) = I(Aᵀ R q) = I(-Aᵀ M q) = I(Aᵀ M q)      (exactly, at every pixel):

the half-turned pose samples the molecule's intensity on the mirror image `M S` of the Ewald
sphere `S` (the sphere through the origin curved the other way), and `P`, `Ω`, `b` do not
depend on the pose. Since `q = (u - ẑ) / λ` has `q_z = -λ |q|² / 2`, the two surfaces touch at
`q = 0` and part by `M q - q = λ |q|² ẑ`: on a flat (small-angle) Ewald sphere `A` and `R A` give
the same pattern, and the curvature separates them by `λ q_max²` (= `2 q_max sin θ_max`) at the
detector's edge, to be compared with the speckle size `~ 1 / d`. Equivalently, for a detector
centred on the beam (with `P`, `Ω` and `b` even under `(x, y) → (-x, -y)`, as for linear or no
polarization), the pattern of `R A` is the pattern of `A` point-reflected through the beam centre
(`q(-p) = R q(p)`), and only the curvature makes a pattern non-centrosymmetric. To first order
the difference `I(k + λ|q|² Aᵀẑ) - I(k)` is proportional to `λ`, so at a fixed coverage of `q`
the squared difference of the two patterns grows as `λ²`; the expected log-likelihood gap between
the true pose and its mate is the Poisson Kullback-Leibler divergence `Σ_p [λ_A log(λ_A / λ_RA)
- λ_A + λ_RA]`, which grows in proportion to the photon count (for AdK, `d` = 55 Å, on a
detector reaching 8.5 Å at 5 keV, 2θ_max = 16.8°, about 0.03 nats per photon: 1.9 at 70
photons, 20 at 700, 1,600 at 59,000; bench/xfel_orientations.py). For a molecule without a
symmetry of its own, another pose `B` gives `A`'s pattern on a flat sphere only if `Bᵀ q = ±Aᵀ q`
on the plane `q_z = 0`, i.e. `B = X A` with a rotation `X` equal to `±1` on that plane: `X = 1`
or `X = R`, so the half-turn is the only Friedel ambiguity of a pose. (A structure's mirror image,
`r → -r`, gives the same intensity at every `k` and is not told apart by any curvature; with a
known structure it does not arise.) The grid of `rotation_grid` is closed under `A → R A`
(RELION's `psi → psi + 180°` with an even number of in-plane angles), so both mates enter the
search. After refinement, the best rotation's mate `R A` is refined on all pixels by the same local
stages (steps from half the grid spacing down to the final step, so it may move by up to about
two grid steps: at 2θ_max = 19° its best fit lay 5-15° from `R A`, the patterns being no longer
alike); the better of the two is the best rotation, and the other is kept as a hypothesis when
their log-likelihoods differ by at most `friedel_threshold`. The result reports per pattern the
mate, its log-likelihood gap and its posterior weight.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jaxtyping import Array, ArrayLike, Float, Int, Real, Shaped

from atomicspi.microscope import (
    CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS,
    DetectorGeometry,
    geodesic_distance_in_degrees,
    pixel_geometry,
    xray_scattering_factor,
)

from ._pose_search import (
    refine_rotations_locally,
    refinement_stages,
    rotation_duplicates,
    rotation_grid,
    trilinear_interpolation,
)

__all__ = [
    "DiffractionSearchResult",
    "FRIEDEL_HALF_TURN",
    "IntensityVolume",
    "make_intensity_volume",
    "search_diffraction_orientations",
    "slice_expected_photons",
]

FRIEDEL_HALF_TURN = np.diag([-1.0, -1.0, 1.0])
FRIEDEL_HALF_TURN.setflags(write=False)
"""`R = Rz(180°)`, the half-turn about the beam: the poses `A` and `R @ A` give patterns that differ
only by the Ewald sphere's curvature (module docstring)."""

_SMALLEST_MEAN = 1e-30  # floor of a Poisson mean inside the logarithm (λ = 0 with n > 0 would be -inf)


class IntensityVolume(eqx.Module):
    """A molecule's diffraction intensity `I(k) = |F(k)|²` (electrons²) in its model frame, on the
    grid `k = Δ · (i, j, l)`, `-J ≤ i, j, l ≤ J` (`make_intensity_volume`).

    **Fields:**

    - `values`: `(2J + 1,)³` intensities, indexed `[i + J, j + J, l + J]`.
    - `spacing_in_inverse_angstroms`: `Δ`.
    - `diameter_in_angstroms`: the diameter `d` of the ball (about the atoms' centroid) holding the
        molecule; `Δ = 1 / (2 d · oversampling)`.
    - `oversampling`: of the grid relative to the intensity's Shannon spacing `1 / (2 d)`.
    """

    values: Float[Array, "n n n"]
    spacing_in_inverse_angstroms: float = eqx.field(static=True)
    diameter_in_angstroms: float = eqx.field(static=True)
    oversampling: float = eqx.field(static=True)

    @property
    def half_width(self) -> int:
        """`J`."""
        return (self.values.shape[0] - 1) // 2

    @property
    def max_q_in_inverse_angstroms(self) -> float:
        """The largest `|k|` at which the volume can be sliced, `(J - 1) Δ`."""
        return (self.half_width - 1) * self.spacing_in_inverse_angstroms

    def slice(
        self, rotation: Float[Array, "3 3"], q_in_inverse_angstroms: Float[Array, "n_points 3"]
    ) -> Float[Array, " n_points"]:
        """`I(Aᵀ q)` at lab-frame scattering vectors `q` (1/Å, e.g. a detector's pixels) for the pose
        `A`: the intensity of the molecule rotated by `A` (trilinear interpolation).

        **Arguments:**

        - `rotation`: the pose `A`, `(3, 3)`.
        - `q_in_inverse_angstroms`: `(n_points, 3)` scattering vectors, `|q|` at most
            `max_q_in_inverse_angstroms`.

        **Returns:**

        `(n_points,)` intensities in electrons².
        """
        q = jnp.asarray(q_in_inverse_angstroms)
        coordinates = (q @ rotation.astype(q.dtype)) / self.spacing_in_inverse_angstroms + self.half_width  # (Aᵀq)ᵀ
        return trilinear_interpolation(self.values, coordinates)


def make_intensity_volume(
    positions_in_angstroms: Float[ArrayLike, "n_atoms 3"],
    atomic_numbers: Int[ArrayLike, " n_atoms"],
    geometry: DetectorGeometry,
    *,
    oversampling: float = 3.0,
    max_q_in_inverse_angstroms: float | None = None,
    atoms_per_chunk: int = 128,
) -> IntensityVolume:
    """The molecule's intensity `|F(k)|²` on a cubic grid covering a detector (module docstring).

    `F(k) = Σ_t f_t(|k|) Σ_{j: t_j = t} exp(2πi k · r_j)` with the International Tables X-ray form
    factors of `atomicspi.microscope.xray_scattering_factor` (neutral atoms, no B-factors), the
    same sum as `atomicspi.microscope.molecular_amplitude` at the identity pose, evaluated
    separably in the three axes, `atoms_per_chunk` atoms at a time (memory about
    `atoms_per_chunk · (2J + 1)²` complex numbers besides the grid).

    **Arguments:**

    - `positions_in_angstroms`: `(n_atoms, 3)` atom positions in the model frame (the intensity
        does not depend on where the molecule sits; they are centred for precision).
    - `atomic_numbers`: `(n_atoms,)` atomic numbers.
    - `geometry`: the detector whose patterns will be sliced (`make_detector_geometry`): the grid
        reaches its largest `|q|`.
    - `oversampling`: the grid spacing is `1 / (2 d · oversampling)` for a molecule of diameter
        `d` (1: Shannon sampling of the intensity; the trilinear slices' error falls as the
        square of the spacing).
    - `max_q_in_inverse_angstroms`: reach at least this `|k|` instead of the detector's largest.
    - `atoms_per_chunk`: atoms summed at once.

    **Returns:**

    An `IntensityVolume` (float32).
    """
    positions = np.asarray(positions_in_angstroms, dtype=float)
    atomic_numbers = np.asarray(atomic_numbers)
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) == 0 or len(atomic_numbers) != len(positions):
        raise ValueError(
            f"positions_in_angstroms {positions.shape} and atomic_numbers {atomic_numbers.shape} must be (n, 3) and (n,)"
        )
    if not oversampling > 0:
        raise ValueError(f"oversampling must be positive, got {oversampling}")
    positions = positions - positions.mean(axis=0)
    diameter = max(2.0 * float(np.linalg.norm(positions, axis=1).max()), 1.0)
    if max_q_in_inverse_angstroms is None:
        q = np.asarray(pixel_geometry(geometry).q_in_inverse_angstroms, dtype=float)
        max_q_in_inverse_angstroms = float(np.linalg.norm(q, axis=-1).max())
    spacing = 1.0 / (2.0 * diameter * oversampling)
    half = int(math.ceil(max_q_in_inverse_angstroms / spacing)) + 2
    axis = np.arange(-half, half + 1) * spacing
    # Friedel's law, I(-k) = I(k): only k_z ≥ 0 is computed, the rest is its point reflection
    gx, gy, gz = np.meshgrid(axis, axis, axis[half:], indexing="ij")
    magnitude = np.sqrt(gx**2 + gy**2 + gz**2)
    del gx, gy, gz
    elements, types = np.unique(atomic_numbers, return_inverse=True)
    types = types.reshape(-1)
    # f_t(|k|) through a fine radial table (the form factors are smooth on the scale of Δ)
    nodes = np.linspace(0.0, magnitude.max() * (1.0 + 1e-6), 2049)
    tables = xray_scattering_factor(elements, nodes / 2.0)  # (n_types, n_nodes)
    axis_jax = jnp.asarray(axis, dtype=jnp.float32)
    axis_z = jnp.asarray(axis[half:], dtype=jnp.float32)

    @jax.jit
    def structure_factor(total, chunk_positions, chunk_weights):
        phase = 2.0 * jnp.pi * chunk_positions[:, :2, None] * axis_jax[None, None, :]  # (c, 2, n)
        factors = jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
        phase_z = 2.0 * jnp.pi * chunk_positions[:, 2, None] * axis_z[None, :]  # (c, J + 1)
        xy = chunk_weights[:, None, None] * factors[:, 0, :, None] * factors[:, 1, None, :]  # (c, n, n)
        z = jax.lax.complex(jnp.cos(phase_z), jnp.sin(phase_z))
        return total + jnp.einsum("axy,az->xyz", xy, z, precision=jax.lax.Precision.HIGHEST)

    amplitude = jnp.zeros(magnitude.shape, dtype=jnp.complex64)
    for element_index in range(len(elements)):
        chosen = positions[types == element_index]
        padding = -len(chosen) % atoms_per_chunk
        chosen_positions = np.pad(chosen, ((0, padding), (0, 0)))
        weights = np.pad(np.ones(len(chosen)), (0, padding))
        partial = jnp.zeros(magnitude.shape, dtype=jnp.complex64)
        for start in range(0, len(chosen_positions), atoms_per_chunk):
            partial = structure_factor(
                partial,
                jnp.asarray(chosen_positions[start : start + atoms_per_chunk], dtype=jnp.float32),
                jnp.asarray(weights[start : start + atoms_per_chunk], dtype=jnp.complex64),
            )
        form_factor = jnp.asarray(np.interp(magnitude, nodes, tables[element_index]), dtype=jnp.float32)
        amplitude = amplitude + form_factor * partial
    upper = jnp.real(amplitude) ** 2 + jnp.imag(amplitude) ** 2  # k_z = 0 … J Δ
    intensity = jnp.concatenate([upper[::-1, ::-1, :0:-1], upper], axis=2)  # I[i, j, -l] = I[-i, -j, l]
    return IntensityVolume(intensity, float(spacing), float(diameter), float(oversampling))


def _pixel_terms(geometry: DetectorGeometry):
    """`(q (P, 3), r_e² P Ω (P,))` of a detector's pixels, flattened row-major."""
    pixels = pixel_geometry(geometry)
    q = jnp.asarray(pixels.q_in_inverse_angstroms, jnp.float32).reshape(-1, 3)
    thomson = CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS**2 * pixels.polarization_factor * pixels.solid_angle_in_steradians
    return q, jnp.asarray(thomson, jnp.float32).reshape(-1)


def slice_expected_photons(
    volume: IntensityVolume,
    geometry: DetectorGeometry,
    rotation: Float[ArrayLike, "3 3"],
    fluence_in_photons_per_angstrom_squared: float,
    background_in_photons: Real[ArrayLike, ""] | Real[ArrayLike, "n_y n_x"] = 0.0,
) -> Float[Array, "n_y n_x"]:
    """Expected photons per pixel `Φ r_e² P Ω I(Aᵀ q) + b` from the intensity volume: the volume's
    counterpart of `DiffractionModel.expected_photons` (same pose convention).

    **Arguments:**

    - `volume`: `make_intensity_volume` of the molecule, reaching the detector's largest `|q|`.
    - `geometry`: the detector and beam.
    - `rotation`: the pose `A`, `(3, 3)`.
    - `fluence_in_photons_per_angstrom_squared`: `Φ`.
    - `background_in_photons`: expected background photons per pixel (scalar or `(n_y, n_x)`).

    **Returns:**

    `(n_y, n_x)` Poisson means.
    """
    q, thomson = _pixel_terms(geometry)
    intensity = volume.slice(jnp.asarray(rotation, jnp.float32), q)
    signal = float(fluence_in_photons_per_angstrom_squared) * thomson * intensity
    return signal.reshape(geometry.shape) + jnp.asarray(background_in_photons, jnp.float32)


def _profile_log_likelihood(signal, counts, background, iterations, weights=None):
    """Poisson log-likelihood (without `-log n!`) of `counts (P,)` for the means `s · signal (…, P)
    + background (P,)` at the maximum-likelihood scale `s` (module docstring), over the pixels with
    `weights (P,)` 1 (default all; 0 leaves a pixel out); returns `(log_likelihood (…,), s (…,))`."""
    if weights is not None:
        counts, background = weights * counts, weights * background
        signal = weights * signal
    total_counts = jnp.sum(counts)
    total_signal = jnp.maximum(jnp.sum(signal, axis=-1), 1e-30)
    excess = total_counts - jnp.sum(background)
    scale = jnp.maximum(excess, 1e-3 * total_counts) / total_signal
    for _ in range(iterations):
        scaled = scale[..., None] * signal
        share = scaled / jnp.maximum(scaled + background, _SMALLEST_MEAN)
        scale = jnp.sum(counts * share, axis=-1) / total_signal
    mean = scale[..., None] * signal + background
    # a left-out pixel has n = 0 and mean 0: it contributes 0
    per_pixel = counts * jnp.log(jnp.maximum(mean, _SMALLEST_MEAN)) - mean
    return jnp.sum(per_pixel, axis=-1), scale


@functools.partial(jax.jit, static_argnums=(6, 7, 8))
def _global_stage(volume, grid, pixels_q, pixels_signal, counts, background, n_hypotheses, iterations, chunk_size):
    """Indices `(B, n_hypotheses)` of the best rotations of the `grid (R, 3, 3)` for each pattern's
    `counts (B, P)` on the pixels given (as `_refine_stage`); the slices are shared by all patterns."""
    slices = jax.vmap(lambda rotation: volume.slice(rotation, pixels_q))(grid) * pixels_signal  # (R, P)

    def one(pattern):
        values, _ = _profile_log_likelihood(slices, pattern, background, iterations)
        return jax.lax.top_k(values, n_hypotheses)[1]

    return jax.lax.map(one, counts, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("keep", "iterations", "chunk_size"))
def _refine_stage(volume, counts, rotations, pixels_q, pixels_signal, pixels_background, weights, step, *, keep,
                  iterations, chunk_size):
    """One local refinement stage (`refine_rotations_locally`) of every pattern's hypotheses
    `rotations (B, H, 3, 3)` on the pixels given (`q (P, 3)`, signal per unit intensity `(P,)`,
    background `(P,)`, `counts (B, P)`) with `weights (P,)` 1 in the stage's band and 0 outside
    (all stages have the same shapes, and share compilations); returns the kept rotations,
    log-likelihoods, scales and the best one's spread."""

    def one(pattern, hypotheses):
        def score(candidates):
            signal = jax.vmap(lambda rotation: volume.slice(rotation, pixels_q))(candidates) * pixels_signal
            return _profile_log_likelihood(signal, pattern, pixels_background, iterations, weights)

        return refine_rotations_locally(score, hypotheses, step, keep)

    return jax.lax.map(lambda pair: one(*pair), (counts, rotations), batch_size=chunk_size)


class DiffractionSearchResult(NamedTuple):
    """Per pattern, the best rotation and the hypotheses that survived the search (numpy arrays).

    - `rotations`: `(B, 3, 3)` the best rotation `A` (RELION's convention).
    - `hypothesis_rotations`: `(B, H, 3, 3)`; `hypothesis_log_likelihoods`: `(B, H)` Poisson
        log-likelihoods (at each one's fitted fluence scale, `-log n!` included, as
        `atomicspi.microscope.poisson_log_likelihood`); `hypothesis_log_weights`: `(B, H)` their
        normalised log posterior weights (softmax), best first, the Friedel mate of the best
        second; a hypothesis brought to the pose of a better one (or a mate beyond the threshold)
        has weight 0 (log −inf). `H = final_hypotheses + 1`.
    - `rotation_spread_in_radians`: `(B, 3)` the local standard deviation of the rotation vector
        (`exp(δ) A`, lab frame) at the best rotation along each axis, from the log-likelihood's
        curvature at the final step (`inf` where it is flat); `angular_spread_in_degrees`: `(B,)`
        the root of their sum of squares.
    - `fluence_scale`: `(B,)` the best rotation's maximum-likelihood scale of the given fluence.
    - `log_likelihood`: `(B,)` the best rotation's log-likelihood.
    - `friedel_mate_rotations`: `(B, 3, 3)` the refined mate (near `R A`, `R = FRIEDEL_HALF_TURN`);
        `friedel_log_likelihood_gap`: `(B,)` best minus mate (≥ 0); `friedel_mate_weight`: `(B,)`
        the mate's posterior weight (among the hypotheses and the mate, whether or not it was kept).
    """

    rotations: np.ndarray
    hypothesis_rotations: np.ndarray
    hypothesis_log_likelihoods: np.ndarray
    hypothesis_log_weights: np.ndarray
    rotation_spread_in_radians: np.ndarray
    angular_spread_in_degrees: np.ndarray
    fluence_scale: np.ndarray
    log_likelihood: np.ndarray
    friedel_mate_rotations: np.ndarray
    friedel_log_likelihood_gap: np.ndarray
    friedel_mate_weight: np.ndarray


def search_diffraction_orientations(
    volume: IntensityVolume,
    patterns: Real[ArrayLike, "batch n_y n_x"],
    geometry: DetectorGeometry,
    fluence_in_photons_per_angstrom_squared: float,
    background_in_photons: Real[ArrayLike, ""] | Real[ArrayLike, "n_y n_x"] = 0.0,
    mask: Shaped[ArrayLike, "n_y n_x"] | None = None,
    *,
    n_directions: int = 192,
    n_in_plane: int = 24,
    n_hypotheses: int = 16,
    final_hypotheses: int = 4,
    final_step_in_degrees: float = 0.5,
    initial_max_q_in_inverse_angstroms: float | None = None,
    scale_iterations: int = 4,
    friedel_threshold: float = 10.0,
    friedel_stages: int | None = None,
    chunk_size: int = 2,
) -> DiffractionSearchResult:
    """Coarse-to-fine search of each pattern's orientation against a known structure (module
    docstring), with an unknown per-pattern fluence scale and the Friedel mate made explicit.

    **Arguments:**

    - `volume`: `make_intensity_volume` of the structure, reaching the detector's largest `|q|`.
    - `patterns`: `(B, n_y, n_x)` photon counts.
    - `geometry`: their detector and beam.
    - `fluence_in_photons_per_angstrom_squared`: the nominal fluence `Φ` (each pattern's scale of
        it is fitted).
    - `background_in_photons`: known expected background photons per pixel (scalar or
        `(n_y, n_x)`; not scaled with the fluence).
    - `mask`: `(n_y, n_x)` pixels to use (nonzero) or not (0, e.g. the beam stop); default all.
    - `n_directions`, `n_in_plane`: the global grid (`rotation_grid`; keep `n_in_plane` even so
        that the grid is closed under the Friedel half-turn).
    - `n_hypotheses`: hypotheses kept from the global grid; `final_hypotheses`: how many survive the
        refinement (halved every stage).
    - `final_step_in_degrees`: the refinement stops when its rotation step reaches this.
    - `initial_max_q_in_inverse_angstroms`: `q₀`, the band of the global grid (default
        `1 / (2 d · step)`, `d` the volume's diameter, `step` the grid spacing); each stage
        doubles it.
    - `scale_iterations`: EM steps for the fluence scale when there is a background (none without).
    - `friedel_threshold`: the mate is kept as a hypothesis when its log-likelihood is at most
        this below the best.
    - `friedel_stages`: local refinement stages of the mate, with steps `2^(stages-1)`, …, 1 times
        the final step (default: as many as the search's refinement, which reaches about 2 grid
        steps: at large scattering angles the mate's best fit lies a few degrees from `R A`).
    - `chunk_size`: patterns scored at once (memory: about `chunk_size · 4,608 · pixels` numbers
        in the global stage).

    **Returns:**

    A `DiffractionSearchResult`.
    """
    counts_all = np.asarray(patterns, dtype=np.float32)
    n_y, n_x = geometry.shape
    if counts_all.ndim != 3 or counts_all.shape[1:] != (n_y, n_x):
        raise ValueError(f"patterns of shape {counts_all.shape} do not match the detector's {geometry.shape}")
    counts_all = counts_all.reshape(len(counts_all), -1)
    q, thomson = (np.asarray(value) for value in _pixel_terms(geometry))
    signal_per_intensity = (float(fluence_in_photons_per_angstrom_squared) * thomson).astype(np.float32)  # (P,)
    background = np.broadcast_to(np.asarray(background_in_photons, np.float32), (n_y, n_x)).reshape(-1)
    iterations = scale_iterations if bool(np.any(background != 0)) else 0
    used = np.ones(n_y * n_x, bool) if mask is None else np.asarray(mask).reshape(-1) != 0
    q_length = np.linalg.norm(q, axis=-1)
    if not used.any():
        raise ValueError("mask: no pixel is used")
    full_max_q = float(q_length[used].max())
    if full_max_q > volume.max_q_in_inverse_angstroms:
        raise ValueError(
            f"the volume reaches |q| = {volume.max_q_in_inverse_angstroms:.4g} 1/Å, the detector's pixels "
            f"{full_max_q:.4g} 1/Å: make it with this geometry"
        )
    log_factorials = np.sum(scipy.special.gammaln(counts_all[:, used].astype(float) + 1.0), axis=1)

    def band(max_q):
        """The unmasked pixels with `|q| ≤ max_q`: `(q, signal per intensity, background, counts (B, P'))`."""
        index = np.flatnonzero(used & (q_length <= max_q))
        return q[index], signal_per_intensity[index], background[index], counts_all[:, index]

    pixels = band(np.inf)  # all unmasked pixels

    def refine(rotations, max_q, step, keep):
        pixels_q, pixels_signal, pixels_background, pixels_counts = pixels
        weights = (np.linalg.norm(pixels_q, axis=-1) <= max_q).astype(np.float32)
        return _refine_stage(
            volume, pixels_counts, rotations, pixels_q, pixels_signal, pixels_background, weights, np.float32(step),
            keep=keep, iterations=iterations, chunk_size=chunk_size,
        )

    grid_step = step = math.sqrt(4.0 * math.pi / n_directions)  # rad, the grid's spacing
    max_q = initial_max_q_in_inverse_angstroms or 1.0 / (2.0 * volume.diameter_in_angstroms * grid_step)
    grid = jnp.asarray(rotation_grid(n_directions, n_in_plane))
    band_q, band_signal, band_background, band_counts = band(max_q)
    chosen = _global_stage(volume, grid, band_q, band_signal, band_counts, band_background, n_hypotheses, iterations,
                           chunk_size)
    rotations = grid[chosen]  # (B, H, 3, 3)
    for step, hypotheses in refinement_stages(grid_step, n_hypotheses, final_hypotheses, final_step_in_degrees):
        max_q = 2.0 * max_q
        rotations, log_likelihoods, scales, spread = refine(rotations, max_q, step, hypotheses)
    if max_q < full_max_q:  # the schedule ended before the band reached the whole detector: one more pass
        rotations, log_likelihoods, scales, spread = refine(rotations, np.inf, step, final_hypotheses)
    if friedel_stages is None:
        friedel_stages = len(list(refinement_stages(grid_step, n_hypotheses, final_hypotheses, final_step_in_degrees)))

    # the Friedel mate of the best rotation, refined on all pixels
    mates = (jnp.asarray(FRIEDEL_HALF_TURN, jnp.float32) @ rotations[:, 0])[:, None]  # (B, 1, 3, 3)
    for stage_index in reversed(range(friedel_stages)):
        mates, mate_log_likelihoods, mate_scales, mate_spread = refine(mates, np.inf, step * 2.0**stage_index, 1)
    found = _with_friedel_mates(
        rotations, log_likelihoods, scales, spread, mates[:, 0], mate_log_likelihoods[:, 0], mate_scales[:, 0],
        mate_spread, np.float32(4.0 * step), np.float32(friedel_threshold),
    )
    (first, hypothesis_rotations, values, log_weights, best_spread, best_scale, best_value, second, gap,
     mate_weight) = (np.asarray(value) for value in found)
    return DiffractionSearchResult(
        rotations=first,
        hypothesis_rotations=hypothesis_rotations,
        hypothesis_log_likelihoods=values - log_factorials[:, None],
        hypothesis_log_weights=log_weights,
        rotation_spread_in_radians=best_spread,
        angular_spread_in_degrees=np.degrees(np.sqrt(np.sum(best_spread.astype(float) ** 2, axis=1))),
        fluence_scale=best_scale,
        log_likelihood=best_value - log_factorials,
        friedel_mate_rotations=second,
        friedel_log_likelihood_gap=gap,
        friedel_mate_weight=mate_weight,
    )


@jax.jit
def _with_friedel_mates(rotations, log_likelihoods, scales, spread, mates, mate_log_likelihoods, mate_scales,
                        mate_spread, merge_angle, threshold):
    """The refined survivors `(B, H)` and the refined mates of the best ones `(B,)` into the result:
    the better of best and mate first, the other second (dropped beyond `threshold`), then the
    other survivors unless refinement brought them within `merge_angle` (radians) of a better one
    or of either; log posterior weights, and the mate's weight whether or not it was kept."""
    log_likelihoods = jnp.where(rotation_duplicates(rotations, merge_angle), -jnp.inf, log_likelihoods)
    best_log_likelihood = log_likelihoods[:, 0]
    swap = mate_log_likelihoods > best_log_likelihood
    first = jnp.where(swap[:, None, None], mates, rotations[:, 0])
    second = jnp.where(swap[:, None, None], rotations[:, 0], mates)
    first_value = jnp.maximum(best_log_likelihood, mate_log_likelihoods)
    second_value = jnp.minimum(best_log_likelihood, mate_log_likelihoods)
    best_scale = jnp.where(swap, mate_scales, scales[:, 0])
    best_spread = jnp.where(swap[:, None], mate_spread, spread)
    others, other_values = rotations[:, 1:], log_likelihoods[:, 1:]
    near = (jnp.deg2rad(geodesic_distance_in_degrees(others, first[:, None])) < merge_angle) | (
        jnp.deg2rad(geodesic_distance_in_degrees(others, second[:, None])) < merge_angle
    )
    other_values = jnp.where(near, -jnp.inf, other_values)
    gap = first_value - second_value
    kept_second = jnp.where(gap <= threshold, second_value, -jnp.inf)
    hypothesis_rotations = jnp.concatenate([first[:, None], second[:, None], others], axis=1)
    values = jnp.concatenate([first_value[:, None], kept_second[:, None], other_values], axis=1)
    log_weights = values - jax.scipy.special.logsumexp(values, axis=1, keepdims=True)
    with_mate = jnp.concatenate([first_value[:, None], second_value[:, None], other_values], axis=1)
    mate_weight = jnp.exp(second_value - jax.scipy.special.logsumexp(with_mate, axis=1))
    return (first, hypothesis_rotations, values, log_weights, best_spread, best_scale, first_value, second, gap,
            mate_weight)
