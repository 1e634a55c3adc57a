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

import jax
import jax.numpy as jnp
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


def _half_plane_weights(box_size: int) -> Float[Array, " box_size//2+1"]:
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
    weights = jnp.broadcast_to(_half_plane_weights(box_size)[None, :], values.shape).ravel()
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
) -> Float[Array, ""]:
    """Exact Gaussian log-likelihood of an image from `rfft2` transforms.

    **Arguments:**

    - `observed_fourier`: `rfft2` of the observed `D × D` image.
    - `predicted_fourier`: `rfft2` of the predicted image (e.g. `ImageModel.fourier`, after
        `scale_and_offset_fourier`).
    - `power_spectrum`: scalar `σ²` (white) or `P(k)` on the `rfft2` grid
        (`power_spectrum_on_grid`).

    **Returns:**

    `log p(observed | predicted)`, the module docstring's formula (including constants).
    """
    box_size = observed_fourier.shape[0]
    n_pixels = box_size * box_size
    residual = observed_fourier - predicted_fourier
    squared = residual.real**2 + residual.imag**2
    power = jnp.broadcast_to(jnp.asarray(power_spectrum), squared.shape)
    weights = _half_plane_weights(box_size)[None, :]
    return -0.5 * jnp.sum(weights * (squared / (n_pixels * power) + jnp.log(2.0 * jnp.pi * power)))


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
