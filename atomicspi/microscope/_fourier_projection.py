"""Projection of Gaussian atoms computed in Fourier space (a type-1 non-uniform FFT).

`project_atoms_fourier` returns `jnp.fft.rfft2(project_atoms_dense(...))` (the pixel-averaged
projected potential of `_projection`, seen as one period of a periodic image) without making the
image. With `p` the pixel size, `u_a = (x_a, y_a) / p + D // 2` atom `a`'s position in pixels from
pixel `(0, 0)` and `k(n', m') = (n', m') / (D p)`, Poisson's summation formula gives

    F[m, n] = Σ_{n' ≡ n, m' ≡ m (mod D)} H(n', m'),
    H(n', m') = p⁻² sinc(n' / D) sinc(m' / D) Σ_a FF_a(|k(n', m')|) exp(-2πi (n' u_{a,x} + m' u_{a,y}) / D),

with the projected form factor of each atom `FF_a(q) = Σ_i amplitude_i exp(-2π² variance_i q²)`
(the transform of its projected Gaussians) and the pixel average's box filter `sinc` (`np.sinc`).
The terms with `|n'|` or `|m'| > D / 2` are the aliases that make pixel averages differ from
samples of a band-limited image. The sum is truncated to `|n'|, |m'| ≤ K = ⌊alias_reach · D⌋`
(`fold_aliases`). Because the box filter decays only as `1 / n'`, the truncation is the main error:
`alias_reach = 0.75` leaves a relative error `‖F - F_dense‖ / ‖F_dense‖` of about 0.1 % at 1 Å
pixels and 0.5 % at 1.5 Å for AdK's atoms with B ≥ 20 Å², but 0.9-1.4 % and 1.6-2.4 % (image
correlation ≥ 0.9994) with its PDB file's B = 0 hydrogens: their narrowest Gaussian (σ = 0.08 Å)
has pixel averages with aliases far beyond any band-limited grid, and these fold onto all
frequencies (tests/test_fourier_projection.py, bench/RESULTS.md). The image is that of a periodic
box: atoms near an edge wrap around.

Atoms with different tables (elements, B-factors, beads) have different `FF_a`; they are written
in a small radial basis, `FF_a(q) ≈ Σ_c weight_{a c} basis_c(q)` (`form_factor_basis`, a weighted
SVD of the distinct table rows; exact when there are no more distinct rows than channels), so that

    H = p⁻² sinc sinc Σ_c basis_c(|k|) · NUFFT[weight_{· c}](n', m'),

one non-uniform FFT per basis channel, all channels spread together. `nonuniform_fft` computes
`Σ_a w_{a c} exp(-2πi (n' u_x + m' u_y) / D)` by spreading every point with a tapered
exponential-of-semicircle kernel (`semicircle_kernel`; Barnett, Magland & af Klinteberg 2019)
onto an oversampled periodic `G × G` grid (one windowed scatter-add per point for all channels),
an `rfft2` of the channel stack, and division by the kernel's Fourier transform. The division,
the box filter, `p⁻²` and the basis functions depend only on the tables and the grid, so
`make_fourier_projector` multiplies them into one factor per channel, once.
"""

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._errors import InputError


def oversampled_grid_size(box_size: int, oversampling: float) -> int:
    """Smallest even 2-3-5-smooth integer `≥ oversampling · box_size` (a fast FFT length).

    **Arguments:**

    - `box_size`: `D`, pixels per side of the target grid.
    - `oversampling`: `σ`, ratio of the spreading grid to `D`.

    **Returns:**

    The spreading grid's size `G`.
    """
    size = max(int(math.ceil(oversampling * box_size)), 2)
    while True:
        remainder = size
        for factor in (2, 3, 5):
            while remainder % factor == 0:
                remainder //= factor
        if remainder == 1 and size % 2 == 0:
            return size
        size += 1


def semicircle_kernel(offsets_in_grid_units: Array, width: int, beta: float) -> Array:
    """Tapered exponential-of-semicircle kernel `(1 - z²) exp(β (√(1 - z²) - 1))`, `z = 2 x / width`.

    Zero for `|z| ≥ 1`. The taper `1 - z²` makes the kernel vanish continuously at the edge of
    its support with a bounded derivative (`-2z e^{-β}` there): the plain exponential of a
    semicircle jumps by `e^{-β}` (5·10⁻⁴ for width 4) where a grid point enters or leaves a
    point's window and its derivative diverges like `1 / √(1 - z²)`, both of which reach the
    gradients with respect to the positions. For the same width it is about as accurate (the
    aliasing bound of `semicircle_kernel_beta` is 1.4·10⁻² against 1.2·10⁻² for width 4 at
    `ξ_max = 0.375`).

    **Arguments:**

    - `offsets_in_grid_units`: `x`, offsets of grid points from the point, in grid spacings.
    - `width`: the kernel's support in grid points.
    - `beta`: `β`, its shape parameter.

    **Returns:**

    The kernel values, shape of `offsets_in_grid_units`.
    """
    z = offsets_in_grid_units * (2.0 / width)
    inside = 1.0 - z * z
    positive = inside > 0
    safe = jnp.where(positive, inside, 1.0)  # no NaN in the derivative of √ outside the support
    return jnp.where(positive, safe * jnp.exp(beta * (jnp.sqrt(safe) - 1.0)), 0.0)


@functools.cache
def _quadrature() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(256)


def semicircle_kernel_fourier_transform(
    frequencies_in_cycles_per_grid_point: Float[np.ndarray, "..."], width: int, beta: float
) -> Float[np.ndarray, "..."]:
    """Continuous Fourier transform `∫ φ(x) exp(-2πi ξ x) dx` of `semicircle_kernel` (real, even).

    With `z = sin θ` the integrand `cos³θ exp(β (cos θ - 1)) cos(π ξ w sin θ)` is smooth and
    periodic, so Gauss-Legendre quadrature in `θ` (256 nodes) is exact to rounding for the widths,
    shapes and frequencies used here (`w |ξ| ≲ 60`).

    **Arguments:**

    - `frequencies_in_cycles_per_grid_point`: `ξ`.
    - `width`, `beta`: the kernel's parameters.

    **Returns:**

    `φ̂(ξ)`, shape of the frequencies, float64.
    """
    nodes, node_weights = _quadrature()
    angles = 0.5 * np.pi * nodes
    cosines = np.cos(angles)
    integrand = cosines**3 * np.exp(beta * (cosines - 1.0))
    xi = np.asarray(frequencies_in_cycles_per_grid_point, dtype=float)
    phases = np.cos(np.pi * width * xi[..., None] * np.sin(angles))
    return 0.25 * np.pi * width * np.sum(node_weights * integrand * phases, axis=-1)


def _aliasing_bound(beta: float, width: int, max_frequency_ratio: float) -> float:
    """`max_{|ξ| ≤ ξ_max} Σ_{l ≠ 0} |φ̂(ξ + l)| / φ̂(ξ)`: the relative spreading error bound per point."""
    frequencies = np.linspace(0.0, max_frequency_ratio, 48)
    shifts = np.concatenate([np.arange(-6, 0), np.arange(1, 7)])
    main = semicircle_kernel_fourier_transform(frequencies, width, beta)
    aliases = np.abs(semicircle_kernel_fourier_transform(frequencies[:, None] + shifts, width, beta)).sum(axis=1)
    return float(np.max(aliases / np.maximum(main, 1e-300)))


@functools.cache
def semicircle_kernel_beta(kernel_width: int, max_frequency_ratio: float) -> float:
    """Shape parameter `β` of `semicircle_kernel` that minimises its aliasing bound up to `ξ_max`.

    The bound is `max_{0 ≤ ξ ≤ ξ_max} Σ_{l ≠ 0} |φ̂(ξ + l)| / φ̂(ξ)`, the largest relative error of
    one spread point at a kept frequency (`ξ_max = K / G`). For width 4 at `ξ_max = 0.375`
    (`alias_reach = 0.75`, oversampling 2): `β ≈ 5.4`, bound `1.4·10⁻²`; width 6: `β ≈ 10.2`,
    `1.3·10⁻³`. The errors of an image, a sum over many atoms and weighted by the decaying
    spectrum, are much smaller (about `5·10⁻⁴` relative for width 4, see the tests).

    **Arguments:**

    - `kernel_width`: support in grid points.
    - `max_frequency_ratio`: `ξ_max = K / G < 1 / 2`.

    **Returns:**

    `β`.
    """
    import scipy.optimize  # here: importing atomicspi.microscope stays light

    candidates = np.arange(0.4, 3.01, 0.05) * kernel_width
    bounds = [_aliasing_bound(beta, kernel_width, max_frequency_ratio) for beta in candidates]
    best = int(np.argmin(bounds))
    low, high = candidates[max(best - 1, 0)], candidates[min(best + 1, len(candidates) - 1)]
    result = scipy.optimize.minimize_scalar(
        lambda beta: math.log(_aliasing_bound(beta, kernel_width, max_frequency_ratio)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-3 * kernel_width},
    )
    return float(result.x)


@functools.cache
def _inverse_kernel_transform(max_frequency: int, grid_size: int, width: int, beta: float) -> np.ndarray:
    frequencies = np.arange(-max_frequency, max_frequency + 1) / grid_size
    inverse = 1.0 / semicircle_kernel_fourier_transform(frequencies, width, beta)
    inverse.setflags(write=False)
    return inverse


def nonuniform_fft_deconvolution(
    max_frequency: int, grid_size: int, kernel_width: int, kernel_beta: float
) -> Float[np.ndarray, "2*max_frequency+1 max_frequency+1"]:
    """`1 / (φ̂(m / G) φ̂(n / G))` on `nonuniform_fft`'s output layout (float64).

    **Arguments:**

    - `max_frequency`, `grid_size`, `kernel_width`, `kernel_beta`: as for `nonuniform_fft`.

    **Returns:**

    `(2K + 1, K + 1)` array, row `K + m`, column `n`.
    """
    inverse = _inverse_kernel_transform(int(max_frequency), int(grid_size), int(kernel_width), float(kernel_beta))
    return inverse[:, None] * inverse[None, max_frequency:]


def nonuniform_fft(
    positions_in_pixels: Float[Array, "n_points 2"],
    weights: Float[Array, "n_points n_channels"],
    box_size: int,
    max_frequency: int,
    grid_size: int,
    kernel_width: int,
    kernel_beta: float,
    deconvolve: bool = True,
) -> Complex[Array, "n_channels 2*max_frequency+1 max_frequency+1"]:
    """Type-1 non-uniform FFT of weighted points on a periodic `D × D` grid, all channels at once.

        result[c, K + m, n] = Σ_a weights[a, c] · exp(-2πi (n u_{a,x} + m u_{a,y}) / D)

    for `m = -K ... K`, `n = 0 ... K` (`K = max_frequency < G / 2`). Each point is spread with
    `semicircle_kernel` onto the `kernel_width²` nearest points of a periodic `G × G` grid
    (`G = grid_size`, spacing `D / G` pixels), every channel in one windowed scatter-add per
    point (its transpose, for gradients, is a windowed gather); then one batched `rfft2` of the
    `(n_channels, G, G)` stack and division by the kernel's Fourier transform at `n / G`. The
    relative error per point and frequency is at most the kernel's aliasing bound at
    `ξ = K / G` (`semicircle_kernel_beta`: `1.4·10⁻²` for width 4, `1.3·10⁻³` for width 6 at
    `K / G = 0.375`), largest at the highest kept frequencies.

    **Arguments:**

    - `positions_in_pixels`: `(n_points, 2)` coordinates `(u_x, u_y)` in pixels (any real
        values; the grid is periodic with period `D`).
    - `weights`: `(n_points, n_channels)` real weights.
    - `box_size`: `D`.
    - `max_frequency`: `K`, the largest frequency index kept (per axis).
    - `grid_size`: `G`, the spreading grid (e.g. `oversampled_grid_size(D, 2.0)`).
    - `kernel_width`: support of the kernel in grid points.
    - `kernel_beta`: its shape parameter `β`.
    - `deconvolve`: `False` leaves out the division by the kernel's transform (the caller
        multiplies by `nonuniform_fft_deconvolution` itself, e.g. folded into other factors).

    **Returns:**

    `(n_channels, 2K + 1, K + 1)` complex array (row `K + m` is frequency `m`).
    """
    if not 0 < max_frequency < grid_size // 2:
        raise ValueError(f"max_frequency {max_frequency} is not in (0, grid_size / 2 = {grid_size // 2})")
    width = kernel_width
    dtype = weights.dtype
    grid_positions = positions_in_pixels * (grid_size / box_size)
    first = jax.lax.stop_gradient(jnp.ceil(grid_positions - 0.5 * width))  # (n, 2) first window point
    steps = jnp.arange(width, dtype=grid_positions.dtype)
    offsets = first[:, :, None] + steps - grid_positions[:, :, None]  # (n, 2, w) grid point - position
    kernel = semicircle_kernel(offsets, width, kernel_beta).astype(dtype)
    patches = weights[:, :, None, None] * (kernel[:, 1, None, :, None] * kernel[:, 0, None, None, :])
    starts = jnp.mod(first.astype(jnp.int32), grid_size)[:, ::-1]  # (row, column)
    n_channels = weights.shape[1]
    padded_size = grid_size + width - 1
    padded = jax.lax.scatter_add(
        jnp.zeros((n_channels, padded_size, padded_size), dtype),
        starts,
        patches,
        jax.lax.ScatterDimensionNumbers(
            update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(1, 2)
        ),
        indices_are_sorted=False,
        unique_indices=False,
        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    # wrap the windows' overhang back onto the periodic grid
    rows = padded[:, :grid_size, :].at[:, : width - 1, :].add(padded[:, grid_size:, :])
    grid = rows[:, :, :grid_size].at[:, :, : width - 1].add(rows[:, :, grid_size:])
    transform = jnp.fft.rfft2(grid)
    kept = jnp.concatenate(
        [transform[:, grid_size - max_frequency :, : max_frequency + 1], transform[:, : max_frequency + 1, : max_frequency + 1]],
        axis=1,
    )
    if not deconvolve:
        return kept
    return kept * jnp.asarray(nonuniform_fft_deconvolution(max_frequency, grid_size, width, kernel_beta), dtype=dtype)


def fold_aliases(
    spectrum: Complex[Array, "2*max_frequency+1 max_frequency+1"], box_size: int
) -> Complex[Array, "box_size box_size//2+1"]:
    """Fold a spectrum over `|n|, |m| ≤ K` onto the `rfft2` layout of a `D × D` grid.

    `result[m mod D, n] = Σ spectrum[m', n']` over `m' ≡ m`, `n' ≡ n (mod D)`, where the
    negative `n'` are the conjugates of the rows' mirror images (the spectrum of a real image).

    **Arguments:**

    - `spectrum`: `(2K + 1, K + 1)`, row `K + m` is frequency `m` (as from `nonuniform_fft`),
        `D / 2 ≤ K < D`.
    - `box_size`: `D`.

    **Returns:**

    `(D, D // 2 + 1)` complex array.
    """
    max_frequency = spectrum.shape[1] - 1
    if not box_size // 2 <= max_frequency < box_size:
        raise ValueError(f"max_frequency {max_frequency} is not in [box_size / 2, box_size) for box_size {box_size}")
    # columns n' = -K ... K: the negative ones are conj(spectrum[-m', -n'])
    negative = jnp.conj(spectrum[::-1, :0:-1])
    full = jnp.concatenate([negative, spectrum], axis=1)  # (2K + 1, 2K + 1), index K + n'
    margin = box_size - max_frequency
    full = jnp.pad(full, ((margin, margin - 1), (margin, margin - 1)))  # (2D, 2D), index D + m'
    folded = full.reshape(2, box_size, 2, box_size).sum(axis=(0, 2))
    return folded[:, : box_size // 2 + 1]


def form_factor_basis(
    amplitudes: Float[np.ndarray, "n_atoms n_gaussians"],
    variances_in_angstroms_squared: Float[np.ndarray, "n_atoms n_gaussians"],
    frequency_magnitudes_in_inverse_angstroms: Float[np.ndarray, " n_frequencies"],
    frequency_weights: Float[np.ndarray, " n_frequencies"],
    tolerance: float,
    max_channels: int,
    evaluation_frequency_magnitudes_in_inverse_angstroms: Float[np.ndarray, " n_evaluations"] | None = None,
) -> tuple[Float[np.ndarray, "n_atoms n_channels"], Float[np.ndarray, "n_channels n_evaluations"]]:
    """Low-rank radial basis of the atoms' projected form factors, `FF_a(q) ≈ Σ_c weight_{a c} basis_c(q)`.

    `FF_a(q) = Σ_i amplitude_{a i} exp(-2π² variance_{a i} q²)`. The distinct table rows `r`
    (with multiplicities `count_r`) give the matrix `M[r, j] = √count_r · FF_r(q_j) · √frequency_weights_j`
    whose truncated SVD `U S Vᵀ` minimises `Σ_a Σ_j frequency_weights_j |FF_a(q_j) - approximation|²`;
    the basis functions are the combinations `basis_c = Σ_r √count_r U[r, c] FF_r / S[c]` of the
    rows themselves (so they are defined at every `q`, not only at the nodes), and the weights
    `weight_{a c} = U[r(a), c] S[c] / √count_r`. The rank is the smallest for which the discarded
    singular values hold at most `tolerance²` of `Σ S²` (a relative error `≤ tolerance` of the
    weighted form factors), at most `max_channels`. With no more distinct rows than that, the
    approximation is exact up to rounding.

    **Arguments:**

    - `amplitudes`: `(n_atoms, n_gaussians)` Gaussian weights (V·Å³).
    - `variances_in_angstroms_squared`: `(n_atoms, n_gaussians)` per-axis variances (Å²).
    - `frequency_magnitudes_in_inverse_angstroms`: `(n_frequencies,)` nodes `q_j` (1/Å).
    - `frequency_weights`: `(n_frequencies,)` non-negative weights of the nodes in the error.
    - `tolerance`: relative error of the truncation.
    - `max_channels`: the largest rank.
    - `evaluation_frequency_magnitudes_in_inverse_angstroms`: where to evaluate the basis
        functions (default: the nodes).

    **Returns:**

    `(weights, basis)`: `(n_atoms, n_channels)` per-atom weights and `(n_channels, n_evaluations)`
    basis functions at the evaluation frequencies, float64.
    """
    table = np.concatenate([np.asarray(amplitudes, float), np.asarray(variances_in_angstroms_squared, float)], axis=1)
    rows, inverse, counts = np.unique(table, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    n_gaussians = table.shape[1] // 2

    def row_form_factors(frequency_magnitudes):
        q_squared = np.asarray(frequency_magnitudes, float) ** 2
        return np.einsum(
            "ri,rij->rj", rows[:, :n_gaussians], np.exp(-2.0 * np.pi**2 * rows[:, n_gaussians:, None] * q_squared)
        )

    form_factors = row_form_factors(frequency_magnitudes_in_inverse_angstroms)
    root_counts = np.sqrt(counts.astype(float))
    matrix = root_counts[:, None] * form_factors * np.sqrt(np.asarray(frequency_weights, float))
    left, singular_values, _ = np.linalg.svd(matrix, full_matrices=False)
    # discarded[r] = Σ_{c ≥ r} S², the squared error of keeping r channels (r = 0 ... len(S))
    discarded = np.append(np.cumsum(singular_values[::-1] ** 2)[::-1], 0.0)
    sufficient = int(np.argmax(discarded <= tolerance**2 * discarded[0]))
    numerical_rank = int(np.count_nonzero(singular_values > 1e-12 * singular_values[0]))
    rank = max(1, min(sufficient, max_channels, numerical_rank))
    left, singular_values = left[:, :rank], singular_values[:rank]
    row_weights = left * singular_values / root_counts[:, None]
    if evaluation_frequency_magnitudes_in_inverse_angstroms is not None:
        form_factors = row_form_factors(evaluation_frequency_magnitudes_in_inverse_angstroms)
    basis = (root_counts[:, None] * left / singular_values).T @ form_factors
    return row_weights[inverse], basis


class FourierProjector(eqx.Module):
    """`rfft2` of the pixel-averaged projected potential of a fixed set of atoms (positions per call).

    Build it with `make_fourier_projector`; everything that depends only on the atoms' tables
    (form-factor basis, per-atom weights, and the product of the kernel deconvolution, the pixel
    box filter, `p⁻²` and the basis functions at every kept frequency) is computed there once.
    A call spreads the atoms (one scatter-add for all channels), takes one `rfft2` of the
    `(n_channels, G, G)` stack, multiplies by the precomputed factors, sums the channels and
    folds the aliases onto the `(D, D // 2 + 1)` layout.
    """

    weights: Float[Array, "n_atoms n_channels"]
    factors: Float[Array, "n_channels 2*max_frequency+1 max_frequency+1"]
    box_size: int = eqx.field(static=True)
    pixel_size_in_angstroms: float = eqx.field(static=True)
    max_frequency: int = eqx.field(static=True)
    grid_size: int = eqx.field(static=True)
    kernel_width: int = eqx.field(static=True)
    kernel_beta: float = eqx.field(static=True)

    def __call__(
        self, positions_2d_in_angstroms: Float[Array, "n_atoms 2"]
    ) -> Complex[Array, "box_size box_size//2+1"]:
        """`jnp.fft.rfft2` of `project_atoms_dense` of the atoms at these positions (periodic box).

        **Arguments:**

        - `positions_2d_in_angstroms`: `(n_atoms, 2)` `(x, y)` relative to the box centre, in Å
            (in the order of the tables given to `make_fourier_projector`).

        **Returns:**

        `(D, D // 2 + 1)` complex array (V·Å per pixel, numpy's unnormalised `rfft2`).
        """
        positions_in_pixels = positions_2d_in_angstroms / self.pixel_size_in_angstroms + self.box_size // 2
        spectra = nonuniform_fft(
            positions_in_pixels,
            self.weights.astype(positions_in_pixels.dtype),
            self.box_size,
            self.max_frequency,
            self.grid_size,
            self.kernel_width,
            self.kernel_beta,
            deconvolve=False,
        )
        spectrum = jnp.sum(spectra * self.factors.astype(positions_in_pixels.dtype), axis=0)
        return fold_aliases(spectrum, self.box_size)


def make_fourier_projector(
    amplitudes: Float[np.ndarray, "n_atoms n_gaussians"],
    variances_in_angstroms_squared: Float[np.ndarray, "n_atoms n_gaussians"],
    box_size: int,
    pixel_size_in_angstroms: float,
    *,
    oversampling: float = 2.0,
    kernel_width: int = 4,
    kernel_beta: float | None = None,
    alias_reach: float = 0.75,
    basis_tolerance: float = 1e-3,
    max_channels: int = 12,
) -> FourierProjector:
    """Precompute the table-dependent parts of `project_atoms_fourier` (see the module docstring).

    **Arguments:**

    - `amplitudes`: `(n_atoms, n_gaussians)` Gaussian weights in V·Å³ (concrete values).
    - `variances_in_angstroms_squared`: `(n_atoms, n_gaussians)` per-axis variances in Å².
    - `box_size`: `D`, pixels per side (at least 4).
    - `pixel_size_in_angstroms`: pixel size `p`.
    - `oversampling`: spreading grid `G ≈ oversampling · D` (`oversampled_grid_size`); must
        leave `K < G / 2`.
    - `kernel_width`: spreading kernel support in grid points.
    - `kernel_beta`: its shape parameter (default `semicircle_kernel_beta(kernel_width, K / G)`).
    - `alias_reach`: `K = max(⌊alias_reach · D⌋, D // 2)`, frequencies `|n|, |m| ≤ K` are kept
        (`0.5`: no aliases beyond Nyquist; at most `(D - 1) / D`).
    - `basis_tolerance`, `max_channels`: truncation of the form-factor basis
        (`form_factor_basis`).

    **Returns:**

    A `FourierProjector`.
    """
    box_size = int(box_size)
    if box_size < 4:
        raise InputError(f"box_size: {box_size} is smaller than 4")
    max_frequency = min(max(int(math.floor(alias_reach * box_size)), box_size // 2), box_size - 1)
    grid_size = oversampled_grid_size(box_size, oversampling)
    if not max_frequency < grid_size // 2:
        raise InputError(
            f"oversampling: {oversampling}: grid {grid_size} cannot hold frequency {max_frequency} "
            f"(alias_reach {alias_reach}); need oversampling > 2 · alias_reach"
        )
    beta = (
        semicircle_kernel_beta(int(kernel_width), max_frequency / grid_size) if kernel_beta is None else float(kernel_beta)
    )
    pixel = float(pixel_size_in_angstroms)
    frequencies = np.arange(-max_frequency, max_frequency + 1)
    column_frequencies = frequencies[max_frequency:]
    # |k| of every kept frequency (rows m = -K ... K, columns n = 0 ... K), in 1/Å
    magnitudes = np.hypot(column_frequencies[None, :], frequencies[:, None]) / (box_size * pixel)
    box_filter = np.sinc(frequencies / box_size)[:, None] * np.sinc(column_frequencies / box_size)[None, :]
    # 129 radial nodes for the SVD; the weight of a node is Σ sinc² over the kept frequencies nearest to it
    largest = float(magnitudes.max())
    n_nodes = 129
    nodes = np.linspace(0.0, largest, n_nodes)
    nearest = np.rint(magnitudes / largest * (n_nodes - 1)).astype(int).ravel()
    node_weights = np.bincount(nearest, weights=(box_filter**2).ravel(), minlength=n_nodes)
    # the basis functions, evaluated on 1,025 nodes and interpolated linearly onto |k|: they are sums of
    # Gaussians in q of width 1 / (2π √variance) (≥ 0.1 / Å for b + B ≤ 175 Å²), so the interpolation
    # error is below (largest / 1024)² / (8 width²) ≈ 10⁻⁵ / p² of their scale
    fine_nodes = np.linspace(0.0, largest, 1025)
    weights, basis_at_nodes = form_factor_basis(
        amplitudes, variances_in_angstroms_squared, nodes, node_weights, basis_tolerance, max_channels, fine_nodes
    )
    basis = np.stack([np.interp(magnitudes, fine_nodes, channel) for channel in basis_at_nodes])
    deconvolution = nonuniform_fft_deconvolution(max_frequency, grid_size, kernel_width, beta)
    factors = basis * (box_filter * deconvolution / pixel**2)[None]
    dtype = jnp.result_type(float)
    return FourierProjector(
        weights=jnp.asarray(weights, dtype=dtype),
        factors=jnp.asarray(factors, dtype=dtype),
        box_size=box_size,
        pixel_size_in_angstroms=pixel,
        max_frequency=max_frequency,
        grid_size=grid_size,
        kernel_width=int(kernel_width),
        kernel_beta=beta,
    )


def project_atoms_fourier(
    positions_2d_in_angstroms: Float[Array, "n_atoms 2"],
    amplitudes: Float[np.ndarray, "n_atoms n_gaussians"],
    variances_in_angstroms_squared: Float[np.ndarray, "n_atoms n_gaussians"],
    box_size: int,
    pixel_size_in_angstroms: float,
    **options: Any,
) -> Complex[Array, "box_size box_size//2+1"]:
    """`jnp.fft.rfft2(project_atoms_dense(...))`, computed in Fourier space (non-uniform FFT).

    The image is that of a periodic box: atoms near an edge also appear, as in `rfft2`'s
    periodic view, across the opposite edge (`project_atoms_dense` drops what falls outside).
    For many images of the same atoms build the `FourierProjector` once with
    `make_fourier_projector` (what this function does on every call) and call it per image.

    **Arguments:**

    - `positions_2d_in_angstroms`: `(x, y)` of each atom relative to the box centre, in Å.
    - `amplitudes`: Gaussian weights in V·Å³ (`47.878 a_i`), concrete values (not traced).
    - `variances_in_angstroms_squared`: per-axis variances `(b_i + B) / (8π²)`, concrete.
    - `box_size`: `D`, pixels per side.
    - `pixel_size_in_angstroms`: pixel size `p`.
    - `options`: keyword arguments of `make_fourier_projector` (oversampling, kernel,
        `alias_reach`, basis truncation).

    **Returns:**

    `(D, D // 2 + 1)` complex array, the `rfft2` of the `(D, D)` image `[y, x]` in V·Å.
    """
    projector = make_fourier_projector(
        np.asarray(amplitudes), np.asarray(variances_in_angstroms_squared), box_size, pixel_size_in_angstroms, **options
    )
    return projector(positions_2d_in_angstroms)
