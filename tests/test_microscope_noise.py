"""Noise, likelihood and masks against scipy densities and sample statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from atomicspi.microscope import (
    circular_mask,
    gaussian_log_likelihood_fourier,
    power_spectrum_on_grid,
    radial_average,
    radial_shell_indices,
    sample_gaussian_noise,
    scale_and_offset_fourier,
)


@pytest.mark.parametrize("box", [8, 9])
def test_white_noise_likelihood_equals_pixel_sum(x64, box):
    rng = np.random.default_rng(1)
    observed, predicted = rng.normal(size=(2, box, box))
    sigma = 0.7
    ours = gaussian_log_likelihood_fourier(jnp.fft.rfft2(observed), jnp.fft.rfft2(predicted), sigma**2)
    expected = np.sum(stats.norm.logpdf(observed, loc=predicted, scale=sigma))
    assert float(ours) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("box", [6, 7])
def test_coloured_noise_likelihood_equals_circulant_multivariate_normal(x64, box):
    spectrum = np.array([2.0, 1.5, 0.7, 0.4, 0.3])
    power = np.asarray(power_spectrum_on_grid(jnp.asarray(spectrum), box))
    # full-grid spectrum, then the circulant covariance C[p, q] = (1/N) Σ_k P(k) e^{2πi k·(p-q)}
    full = np.empty((box, box))
    half = box // 2 + 1
    full[:, :half] = power
    full[:, half:] = power[(-np.arange(box)) % box][:, (-np.arange(half, box)) % box]
    index = np.arange(box)
    y, x = np.meshgrid(index, index, indexing="ij")
    dy = (y.ravel()[:, None] - y.ravel()[None, :]) % box
    dx = (x.ravel()[:, None] - x.ravel()[None, :]) % box
    kernel = np.real(np.fft.ifft2(full))
    covariance = kernel[dy, dx]
    rng = np.random.default_rng(2)
    observed, predicted = rng.normal(size=(2, box, box))
    expected = stats.multivariate_normal(mean=predicted.ravel(), cov=covariance).logpdf(observed.ravel())
    ours = gaussian_log_likelihood_fourier(jnp.fft.rfft2(observed), jnp.fft.rfft2(predicted), jnp.asarray(power))
    assert float(ours) == pytest.approx(expected, rel=1e-9)


def test_coloured_noise_samples_have_requested_power_spectrum():
    box = 32
    spectrum = jnp.linspace(3.0, 0.2, box // 2 + 1)
    keys = jax.random.split(jax.random.key(0), 400)
    samples = jax.jit(jax.vmap(lambda key: sample_gaussian_noise(key, box, spectrum)))(keys)
    power = jnp.mean(jnp.abs(jnp.fft.rfft2(samples)) ** 2, axis=0) / box**2
    measured = np.asarray(jax.jit(radial_average)(power))
    # shells 1.. hold ≥ 4 frequencies × 400 samples: a few percent of noise
    np.testing.assert_allclose(measured[1:], np.asarray(spectrum)[1:], rtol=0.12)
    white = jax.jit(jax.vmap(lambda key: sample_gaussian_noise(key, box, 0.25)))(keys[:50])
    assert float(jnp.var(white)) == pytest.approx(0.25, rel=0.03)


def test_radial_shells_count_lattice_points():
    box = 16
    shells = np.asarray(radial_shell_indices(box))
    full_y, full_x = np.meshgrid(np.fft.fftfreq(box) * box, np.fft.fftfreq(box) * box, indexing="ij")
    assert np.sum(shells == 3) + np.sum(shells[:, 1 : box // 2] == 3) == np.sum(np.round(np.hypot(full_y, full_x)) == 3)


def test_scale_and_offset_in_fourier_space(x64):
    image = np.random.default_rng(3).normal(size=(10, 10))
    ours = scale_and_offset_fourier(jnp.fft.rfft2(image), 1.7, -0.4)
    np.testing.assert_allclose(np.asarray(ours), np.fft.rfft2(1.7 * image - 0.4), atol=1e-12)


def test_circular_mask_area_and_soft_edge():
    mask = np.asarray(circular_mask(128, 40.0))
    assert mask.sum() == pytest.approx(np.pi * 40.0**2, rel=0.01)
    assert mask[64, 64] == 1.0 and mask[64, 64 + 41] == 0.0
    soft = np.asarray(circular_mask(128, 30.0, soft_edge_in_pixels=10.0))
    profile = soft[64, 64:]
    assert profile[30] == 1.0 and profile[40] == 0.0 and np.all(np.diff(profile) <= 0)
    assert profile[35] == pytest.approx(0.5)
