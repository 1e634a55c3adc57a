"""Gaussian noise, contrast, masks and the Fourier-space log-likelihood.

Normalisation (numpy's unnormalised `rfft2` of a `D × D` image, `N = D²` pixels). Stationary
Gaussian noise has a power spectrum `P(k)` defined by `E|X_k|² = N · P(k)` for its transform
`X = rfft2(noise)`, so white noise of variance `σ²` per pixel has `P = σ²`. Its covariance is
circulant with eigenvalues `P(k)`, and the exact log-density of a residual `r` is

    log p(r) = -1/2 Σ_k |R_k|² / (N P(k)) - 1/2 Σ_k log(2π P(k)),

summed over the full `D × D` frequency grid; on the `rfft2` half-grid the columns `k_x = 0` (and
`k_x = D / 2` for even `D`) count once and the others twice. For white noise this equals
`Σ_pixels log N(r; 0, σ²)` exactly (Parseval). Coloured noise is given as a radially binned
spectrum: shell `n` holds the frequencies with `round(|k| · D · pixel_size) = n`, i.e.
`round(√(i_x² + i_y²)) = n` in index units, and frequencies beyond the last shell use the last.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int, PRNGKeyArray


def radial_shell_indices(box_size: int) -> Int[Array, "box_size box_size//2+1"]:
    """Shell index `round(√(i_x² + i_y²))` of each `rfft2` entry of a `D × D` image.

    **Arguments:**

    - `box_size`: `D`.

    **Returns:**

    `(D, D // 2 + 1)` integers (shell `n` is the frequency `n / (D · pixel_size)`).
    """
    index_y = jnp.fft.fftfreq(box_size) * box_size
    index_x = jnp.fft.rfftfreq(box_size) * box_size
    radius = jnp.sqrt(index_y[:, None] ** 2 + index_x[None, :] ** 2)
    return jnp.round(radius).astype(jnp.int32)


def radial_shell_count(box_size: int) -> int:
    """Number of radial shells on the `rfft2` grid of a `D × D` image, corners included
    (`radial_shell_indices(D).max() + 1`, about `D / √2 + 1`).

    **Arguments:**

    - `box_size`: `D`.

    **Returns:**

    The shell count.
    """
    return round(math.hypot(box_size // 2, box_size // 2)) + 1


def half_plane_weights(box_size: int) -> Float[Array, " box_size//2+1"]:
    """How many full-grid frequencies each `rfft2` column stands for (1 or 2)."""
    weights = jnp.full(box_size // 2 + 1, 2.0)
    weights = weights.at[0].set(1.0)
    if box_size % 2 == 0:
        weights = weights.at[-1].set(1.0)
    return weights


def radial_average(
    values: Float[Array, "box_size box_size//2+1"],
    n_shells: int | None = None,
) -> Float[Array, " n_shells"]:
    """Average of a real function on the `rfft2` grid over each radial shell (full-plane mean).

    **Arguments:**

    - `values`: e.g. `|rfft2(image)|² / D²` for a power spectrum.
    - `n_shells`: number of shells (default `D // 2 + 1`); farther frequencies are ignored.

    **Returns:**

    `(n_shells,)` shell means (0 for empty shells).
    """
    box_size = values.shape[0]
    n_shells = box_size // 2 + 1 if n_shells is None else n_shells
    shells = radial_shell_indices(box_size).ravel()
    weights = jnp.broadcast_to(half_plane_weights(box_size)[None, :], values.shape).ravel()
    totals = jnp.zeros(n_shells).at[shells].add(weights * values.ravel(), mode="drop")
    counts = jnp.zeros(n_shells).at[shells].add(weights, mode="drop")
    return jnp.where(counts > 0, totals / jnp.where(counts > 0, counts, 1.0), 0.0)


def power_spectrum_on_grid(
    power_spectrum: Float[Array, " n_shells"],
    box_size: int,
) -> Float[Array, "box_size box_size//2+1"]:
    """Spread a radially binned power spectrum onto the `rfft2` grid (last shell beyond the end).

    **Arguments:**

    - `power_spectrum`: `(n_shells,)` `P` per shell (variance units per pixel, see module).
    - `box_size`: `D`.

    **Returns:**

    `(D, D // 2 + 1)` array of `P(k)`.
    """
    power_spectrum = jnp.asarray(power_spectrum)
    shells = jnp.minimum(radial_shell_indices(box_size), power_spectrum.shape[0] - 1)
    return power_spectrum[shells]


def sample_gaussian_noise(
    key: PRNGKeyArray,
    box_size: int,
    power_spectrum: Float[Array, ""] | Float[Array, " n_shells"],
) -> Float[Array, "box_size box_size"]:
    """Stationary Gaussian noise: white (scalar variance) or coloured (radial spectrum).

    **Arguments:**

    - `key`: JAX random key.
    - `box_size`: `D`.
    - `power_spectrum`: scalar `σ²` (white) or `(n_shells,)` spectrum (see module docstring).

    **Returns:**

    `(D, D)` noise image.
    """
    power_spectrum = jnp.asarray(power_spectrum)
    white = jax.random.normal(key, (box_size, box_size))
    if power_spectrum.ndim == 0:
        return jnp.sqrt(power_spectrum) * white
    amplitude = jnp.sqrt(power_spectrum_on_grid(power_spectrum, box_size))
    return jnp.fft.irfft2(amplitude * jnp.fft.rfft2(white), s=(box_size, box_size))


def gaussian_log_likelihood_fourier(
    observed_fourier: Complex[Array, "box_size box_size//2+1"],
    predicted_fourier: Complex[Array, "box_size box_size//2+1"],
    power_spectrum: Float[Array, ""] | Float[Array, "box_size box_size//2+1"],
    frequency_mask: Float[Array, "box_size box_size//2+1"] | None = None,
) -> Float[Array, ""]:
    """Exact Gaussian log-likelihood of an image from `rfft2` transforms.

    **Arguments:**

    - `observed_fourier`: `rfft2` of the observed `D × D` image.
    - `predicted_fourier`: `rfft2` of the predicted image (e.g. `ImageModel.fourier`, after
        `scale_and_offset_fourier`).
    - `power_spectrum`: scalar `σ²` (white) or `P(k)` on the `rfft2` grid
        (`power_spectrum_on_grid`).
    - `frequency_mask`: optional 0/1 weights on the `rfft2` grid, symmetric under `k → -k`: the
        log-likelihood of the components it keeps only (independent under stationary noise, so this
        is the exact density of the image filtered to them), e.g. `resolution_mask`.

    **Returns:**

    `log p(observed | predicted)`, the module docstring's formula (including constants).
    """
    box_size = observed_fourier.shape[0]
    n_pixels = box_size * box_size
    residual = observed_fourier - predicted_fourier
    squared = residual.real**2 + residual.imag**2
    power = jnp.broadcast_to(jnp.asarray(power_spectrum), squared.shape)
    weights = half_plane_weights(box_size)[None, :]
    if frequency_mask is not None:
        weights = weights * frequency_mask
    return -0.5 * jnp.sum(weights * (squared / (n_pixels * power) + jnp.log(2.0 * jnp.pi * power)))


def resolution_mask(
    box_size: int, pixel_size_in_angstroms: float, resolution_in_angstroms: float
) -> Float[Array, "box_size box_size//2+1"]:
    """1 on the `rfft2` entries of a `D × D` image with `|k| ≤ 1 / resolution`, 0 beyond.

    **Arguments:**

    - `box_size`: `D`.
    - `pixel_size_in_angstroms`: pixel size.
    - `resolution_in_angstroms`: the finest period kept.

    **Returns:**

    `(D, D // 2 + 1)` array of 0 and 1.
    """
    k_y = np.fft.fftfreq(box_size, pixel_size_in_angstroms)
    k_x = np.fft.rfftfreq(box_size, pixel_size_in_angstroms)
    kept = np.hypot(k_y[:, None], k_x[None, :]) <= 1.0 / resolution_in_angstroms
    return jnp.asarray(kept, dtype=jnp.result_type(float))


def scale_and_offset_fourier(
    fourier_image: Complex[Array, "box_size box_size//2+1"],
    scale: Float[Array, ""],
    offset: Float[Array, ""],
) -> Complex[Array, "box_size box_size//2+1"]:
    """`rfft2` of `scale · image + offset` given `rfft2(image)` (the offset lands on `k = 0`).

    **Arguments:**

    - `fourier_image`: `rfft2` of a `D × D` image.
    - `scale`: per-image contrast scale.
    - `offset`: per-image constant added to every pixel.

    **Returns:**

    The transformed image.
    """
    box_size = fourier_image.shape[0]
    return (scale * fourier_image).at[0, 0].add(offset * box_size * box_size)


def circular_mask(
    box_size: int,
    radius_in_pixels: float,
    soft_edge_in_pixels: float = 0.0,
) -> Float[Array, "box_size box_size"]:
    """Circular mask around the box centre (pixel `D // 2`), with an optional cosine edge.

    **Arguments:**

    - `box_size`: `D`.
    - `radius_in_pixels`: 1 inside this radius.
    - `soft_edge_in_pixels`: width of a raised-cosine fall-off to 0 beyond the radius
        (0 gives a hard edge).

    **Returns:**

    `(D, D)` mask in [0, 1].
    """
    index = jnp.arange(box_size) - box_size // 2
    radius = jnp.sqrt(index[:, None] ** 2 + index[None, :] ** 2)
    if soft_edge_in_pixels <= 0:
        return (radius <= radius_in_pixels).astype(jnp.result_type(float))
    fraction = jnp.clip((radius - radius_in_pixels) / soft_edge_in_pixels, 0.0, 1.0)
    return 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))


def smoothed_power_spectrum(
    power_spectrum: Float[Array, " n_shells"],
    floor_fraction: float = 1e-3,
) -> Float[Array, " n_shells"]:
    """A radial noise power spectrum estimate smoothed across shells and floored.

    Smoothing: each shell from 2 to the last but one has its logarithm averaged with its
    neighbours' with weights 1/4, 1/2, 1/4 (unbiased where the log-spectrum is locally straight; a
    curvature c of the log-spectrum per shell² biases it by c/4). Shell 0 (`k = 0`: the images'
    offsets), shell 1 (8 frequencies, the steepest part of a falling spectrum) and the last (a
    one-sided average would be biased by the slope) are left as they are. Floor: no shell below
    `floor_fraction` × the median of shells 1 and beyond, so that noise-free frequencies (or images)
    neither divide by zero nor dominate the likelihood; shells that are not finite take the floor.

    **Arguments:**

    - `power_spectrum`: `(n_shells,)` the raw estimate per shell (the module's normalisation).
    - `floor_fraction`: the floor relative to the median shell.

    **Returns:**

    `(n_shells,)` power per shell, positive and finite when the median is positive (else the floor
    is 0).
    """
    raw = jnp.asarray(power_spectrum)
    floor = floor_fraction * jnp.median(jnp.where(jnp.isfinite(raw[1:]), raw[1:], 0.0))
    raw = jnp.where(jnp.isfinite(raw), jnp.maximum(raw, floor), floor)
    if raw.shape[0] > 3:
        logarithm = jnp.log(jnp.maximum(raw, jnp.finfo(raw.dtype).tiny))
        inner = 0.25 * logarithm[1:-2] + 0.5 * logarithm[2:-1] + 0.25 * logarithm[3:]
        smoothed = jnp.concatenate([logarithm[:2], inner, logarithm[-1:]])
        raw = jnp.where(raw > 0, jnp.exp(smoothed), raw)
    return jnp.maximum(raw, floor)
