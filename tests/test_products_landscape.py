"""Free-energy landscapes from per-particle posteriors, against a known double-well population.

Honest set-up. Each particle has a true conformation x_i ~ p_true ∝ exp(−F_true/kT) and a noisy
observation y_i = x_i + σ ε. Two kinds of per-particle posterior are simulated exactly (inverse
CDF on a fine grid):

- with the right prior, p(x | y_i) ∝ p_true(x) N(y_i | x, σ²): the mixture of these posteriors is
  p_true itself (∫ p(x|y) p(y) dy = p(x)), so the recovered F is compared with F_true directly;
- with a flat prior, p(x | y_i) = N(x | y_i, σ²): the mixture is p_true convolved with N(0, 2σ²),
  the right reference; we also check that it is *not* F_true (the comparison can fail).

The truth is compared as bin probabilities (p_true integrated over each bin), which is what a
histogram of draws estimates.
"""

import numpy as np
import pytest

from atomicspi import products

KT = 1.0
BARRIER = 3.0
FINE = np.linspace(-2.4, 2.4, 24001)


def true_free_energy(x):
    return KT * BARRIER * (x**2 - 1.0) ** 2


def sample_from_weights(rng, weights, n):
    cumulative = np.cumsum(weights)
    return np.interp(rng.random(n) * cumulative[-1], cumulative, FINE)


def simulate(n_particles, n_draws, sigma, prior, seed):
    rng = np.random.default_rng(seed)
    density = np.exp(-true_free_energy(FINE) / KT)
    truth = sample_from_weights(rng, density, n_particles)
    observed = truth + sigma * rng.normal(size=n_particles)
    draws = np.empty((n_particles, n_draws))
    for i, y in enumerate(observed):
        likelihood = np.exp(-0.5 * ((y - FINE) / sigma) ** 2)
        weights = density * likelihood if prior == "right" else likelihood
        draws[i] = sample_from_weights(rng, weights, n_draws)
    return draws


def bin_probabilities(density_on_fine, edges):
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density_on_fine[1:] + density_on_fine[:-1]) * np.diff(FINE))])
    return np.diff(np.interp(edges, FINE, cumulative)) / cumulative[-1]


def compare(landscape, reference_probabilities):
    reference = landscape.free_energy_from_probabilities(reference_probabilities)
    populated = reference_probabilities / reference_probabilities.max() > 0.01
    error = landscape.free_energy[populated] - reference[populated]
    rmse = float(np.sqrt(np.mean(error**2)))
    inside = (landscape.free_energy_low <= reference) & (reference <= landscape.free_energy_high)
    return rmse, float(np.mean(inside[populated])), int(populated.sum())


def test_double_well_recovered_with_right_prior():
    draws = simulate(n_particles=3000, n_draws=16, sigma=0.3, prior="right", seed=1)
    landscape = products.free_energy_landscape(draws, n_bins=40, kT=KT, n_bootstrap=150, seed=2)
    truth = bin_probabilities(np.exp(-true_free_energy(FINE) / KT), landscape.grid.edges[0])
    rmse, coverage, n_points = compare(landscape, truth)
    assert n_points > 20  # the barrier region (p/p_max ≈ e^-3) is included
    assert rmse < 0.5
    assert coverage >= 0.8
    basins = products.find_basins(landscape)
    assert basins.n_states == 2
    np.testing.assert_allclose(np.sort(basins.minimum_positions[:, 0]), [-1.0, 1.0], atol=2 * landscape.grid.spacings[0])
    # Symmetric well: each state holds half, inside its bootstrap band.
    assert np.all((basins.population_low <= 0.5) & (0.5 <= basins.population_high))
    barrier = basins.barriers_in_kT[0, 1]
    assert abs(barrier - BARRIER) < 0.6


def test_flat_prior_gives_truth_blurred_by_twice_the_noise():
    sigma = 0.3
    draws = simulate(n_particles=3000, n_draws=16, sigma=sigma, prior="flat", seed=3)
    landscape = products.free_energy_landscape(draws, n_bins=40, kT=KT, n_bootstrap=150, seed=4)
    density = np.exp(-true_free_energy(FINE) / KT)
    spacing = FINE[1] - FINE[0]
    kernel_x = np.arange(-int(6 * sigma / spacing), int(6 * sigma / spacing) + 1) * spacing
    kernel = np.exp(-0.5 * kernel_x**2 / (2 * sigma**2))
    blurred = np.convolve(density, kernel / kernel.sum(), mode="same")
    rmse, coverage, _ = compare(landscape, bin_probabilities(blurred, landscape.grid.edges[0]))
    assert rmse < 0.5
    assert coverage >= 0.8
    rmse_to_unblurred, _, _ = compare(landscape, bin_probabilities(density, landscape.grid.edges[0]))
    assert rmse_to_unblurred > 1.0


def test_two_dimensional_states_populations_and_saddle():
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    n_particles, n_draws, spread, noise = 2000, 10, 0.5, 0.2
    centres = np.array([[-1.5, 0.0], [1.5, 0.5]])
    weights = np.array([0.7, 0.3])
    component = rng.choice(2, size=n_particles, p=weights)
    truth = centres[component] + spread * rng.normal(size=(n_particles, 2))
    draws = truth[:, None, :] + noise * rng.normal(size=(n_particles, n_draws, 2))
    landscape = products.free_energy_landscape(draws, n_bins=(30, 24), n_bootstrap=100, seed=6, units=("Å", "Å"))
    basins = products.find_basins(landscape, min_barrier_in_kT=1.0)
    assert basins.n_states == 2
    assert np.all(np.abs(basins.minimum_positions - centres) < 2.5 * np.array(landscape.grid.spacings))
    # Reference: the mixture of these posteriors (Gaussian wells blurred by the draw noise),
    # integrated over each recovered basin's cells.
    width = np.hypot(spread, noise)
    x_edges, y_edges = landscape.grid.edges
    cells = sum(
        weight * np.outer(np.diff(norm.cdf(x_edges, cx, width)), np.diff(norm.cdf(y_edges, cy, width)))
        for weight, (cx, cy) in zip(weights, centres)
    )
    expected = np.array([cells[basins.labels == state].sum() for state in range(2)])
    np.testing.assert_allclose(expected, weights, atol=0.05)
    np.testing.assert_allclose(basins.populations, expected, atol=3 * basins.population_standard_deviations.max())
    assert np.all((basins.population_low <= expected) & (expected <= basins.population_high))
    # The saddle is the lowest pass between the wells: between them along x, above both minima.
    grid_centres = np.stack(np.meshgrid(*landscape.grid.centres, indexing="ij"), -1).reshape(-1, 2)
    saddle = grid_centres[basins.saddle_cells[0, 1]]
    assert -1.0 < saddle[0] < 1.0
    assert basins.saddle_free_energies[0, 1] > basins.minimum_free_energies.max() + 1.0


def test_bootstrap_band_narrows_with_more_particles():
    widths = []
    for n_particles in (300, 3000):
        draws = simulate(n_particles=n_particles, n_draws=8, sigma=0.3, prior="right", seed=7)
        landscape = products.free_energy_landscape(draws, grid=products.make_grid(draws[..., None], 20, ((-1.6, 1.6),)),
                                                   n_bootstrap=100, seed=8)
        widths.append(np.median(landscape.free_energy_high - landscape.free_energy_low))
    # Sampling error of a histogram scales like 1/sqrt(N): 10× the particles, ≈ 3.2× narrower.
    assert 2.2 < widths[0] / widths[1] < 4.5


@pytest.mark.parametrize("n_dimensions", [1, 2])
def test_plot_is_written(tmp_path, n_dimensions):
    rng = np.random.default_rng(9)
    draws = rng.normal(size=(200, 5, n_dimensions)) + np.where(rng.random((200, 1, 1)) < 0.5, -2.0, 2.0)
    landscape = products.free_energy_landscape(draws, n_bins=20, n_bootstrap=20, names=("d1", "d2")[:n_dimensions],
                                               units=("Å",) * n_dimensions)
    basins = products.find_basins(landscape)
    path = tmp_path / f"landscape_{n_dimensions}d.png"
    products.plot_landscape(landscape, basins, path, title="test")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_samples_of_the_aggregated_posterior_follow_its_probabilities():
    from scipy.stats import chisquare

    rng = np.random.default_rng(10)
    # Particles with very different posterior widths: a draw-pooling sampler that weighted particles
    # unequally, or by their number of draws, would be caught.
    draws = rng.normal(size=(50, 40)) * rng.uniform(0.1, 2.0, size=(50, 1)) + rng.normal(size=(50, 1))
    grid = products.make_grid(draws[..., None], 12)
    expected = products.aggregated_posterior_probabilities(draws, grid)
    particles, chosen = products.sample_aggregated_posterior(50, 40, 20000, seed=11)
    observed = np.bincount(grid.cell_indices(draws[particles, chosen][:, None]), minlength=12)
    keep = expected > 0
    assert chisquare(observed[keep], expected[keep] * 20000).pvalue > 1e-3
    assert np.all(observed[~keep] == 0)


def test_free_energy_scales_with_kT():
    draws = simulate(n_particles=500, n_draws=8, sigma=0.3, prior="right", seed=12)
    unit = products.free_energy_landscape(draws, n_bins=20, kT=1.0, n_bootstrap=20, seed=1)
    scaled = products.free_energy_landscape(draws, n_bins=20, kT=2.5, n_bootstrap=20, seed=1)
    finite = np.isfinite(unit.free_energy)
    np.testing.assert_allclose(scaled.free_energy[finite], 2.5 * unit.free_energy[finite], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(products.find_basins(scaled).labels, products.find_basins(unit).labels)
