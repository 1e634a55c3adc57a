"""The diffusion (Smoluchowski) Markov state model on a landscape, against independent references:
detailed balance with the landscape's populations, deeptime's own stationary distribution, the
analytic 1-D mean first-passage time (numerical quadrature), and separability in 2-D."""

import numpy as np
import pytest
import scipy.integrate

from atomicspi import products

BARRIER = 3.0
TILT = 0.5


def tilted_double_well(x):
    return BARRIER * (x**2 - 1.0) ** 2 + TILT * x


def analytic_landscape(n_bins, low=-2.0, high=2.0):
    grid = products.make_grid(np.array([[low], [high]]), n_bins)
    edges = grid.edges[0]
    cells = [scipy.integrate.quad(lambda x: np.exp(-tilted_double_well(x)), a, b)[0] for a, b in zip(edges[:-1], edges[1:])]
    return products.landscape_from_probabilities(grid, np.array(cells), units=("Å",)), low, high


def analytic_first_passage_time(start, end, low, high, diffusion_coefficient):
    """τ = (1/D) ∫_start^end dy e^{F(y)} ∫_{reflecting wall}^{y} dz e^{−F(z)}, either direction."""
    if start < end:
        inner = lambda y: scipy.integrate.quad(lambda z: np.exp(-tilted_double_well(z)), low, y)[0]  # noqa: E731
        outer = scipy.integrate.quad(lambda y: np.exp(tilted_double_well(y)) * inner(y), start, end, limit=200)[0]
    else:
        inner = lambda y: scipy.integrate.quad(lambda z: np.exp(-tilted_double_well(z)), y, high)[0]  # noqa: E731
        outer = scipy.integrate.quad(lambda y: np.exp(tilted_double_well(y)) * inner(y), end, start, limit=200)[0]
    return outer / diffusion_coefficient


def test_stationary_distribution_is_the_landscape_populations():
    rng = np.random.default_rng(0)
    draws = np.where(rng.random((400, 1)) < 0.3, -1.0, 1.5) + 0.5 * rng.normal(size=(400, 6))
    landscape = products.free_energy_landscape(draws, n_bins=30, n_bootstrap=10)
    model = products.diffusion_model(landscape, diffusion_coefficient=2.0)
    populations = landscape.probabilities.ravel()[model.active_cells]
    populations = populations / populations.sum()
    # Detailed balance: π_i K_ij = π_j K_ji, and π K = 0.
    flux = model.rate_matrix.toarray() * populations[:, None]
    np.testing.assert_allclose(flux, flux.T, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(populations @ model.rate_matrix.toarray(), 0.0, atol=1e-10 * np.abs(flux).max())
    msm = products.markov_state_model(model, lag_time=0.05)
    # deeptime computes the stationary distribution itself, from T.
    np.testing.assert_allclose(msm.stationary_distribution, populations, atol=1e-6)
    assert msm.lagtime == 0.05
    np.testing.assert_allclose(msm.transition_matrix.sum(axis=1), 1.0, atol=1e-12)


def test_two_dimensional_stationary_distribution():
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(300, 5, 2)) * [1.0, 0.5] + np.where(rng.random((300, 1, 1)) < 0.5, [-1.5, 0], [1.5, 1])
    landscape = products.free_energy_landscape(draws, n_bins=(14, 12), n_bootstrap=10)
    model = products.diffusion_model(landscape)
    msm = products.markov_state_model(model, lag_time=0.1)
    populations = landscape.probabilities.ravel()[model.active_cells]
    np.testing.assert_allclose(msm.stationary_distribution, populations / populations.sum(), atol=1e-6)


@pytest.mark.parametrize("direction", ["left_to_right", "right_to_left"])
def test_first_passage_times_match_the_analytic_diffusion_result(direction):
    diffusion_coefficient = 0.7
    landscape, low, high = analytic_landscape(n_bins=400)
    basins = products.find_basins(landscape)
    assert basins.n_states == 2
    model = products.diffusion_model(landscape, diffusion_coefficient)
    times = products.state_mean_first_passage_times(model, basins)
    positions = basins.minimum_positions[:, 0]
    a, b = (np.argmin(positions), np.argmax(positions))
    if direction == "right_to_left":
        a, b = b, a
    reference = analytic_first_passage_time(positions[a], positions[b], low, high, diffusion_coefficient)
    assert times[a, b] == pytest.approx(reference, rel=0.05)
    # And the 5 % is not slack: the discretisation error at 400 bins is far smaller.
    assert times[a, b] == pytest.approx(reference, rel=0.01)


def test_first_passage_times_match_deeptime_at_short_lag():
    # Peer: deeptime's discrete-time MFPT on T = expm(K τ) (in units of the lag time) tends to the
    # continuous-time MFPT from the generator as τ → 0 (error O(τ / MFPT)).
    landscape, _, _ = analytic_landscape(n_bins=60)
    basins = products.find_basins(landscape)
    model = products.diffusion_model(landscape, 0.7)
    ours = products.state_mean_first_passage_times(model, basins)
    msm = products.markov_state_model(model, lag_time=1e-3)
    rows = [model.row_of_cell(cell) for cell in basins.minimum_cells]
    assert msm.mfpt([rows[0]], [rows[1]]) == pytest.approx(ours[0, 1], rel=5e-3)
    assert msm.mfpt([rows[1]], [rows[0]]) == pytest.approx(ours[1, 0], rel=5e-3)


def test_first_passage_times_in_two_dimensions_reduce_to_one_dimension_when_separable():
    # F(x, y) = F1(x) + F2(y): motion along x does not depend on y, so the time to first reach
    # a column x = x_b from (x_a, any y) is the 1-D time from x_a to x_b.
    landscape_1d, _, _ = analytic_landscape(n_bins=40)
    p_x = landscape_1d.probabilities
    y = np.linspace(-1.5, 1.5, 11)
    p_y = np.exp(-2.0 * y**2)
    grid = products.make_grid(np.array([[-2.0, -1.65], [2.0, 1.65]]), (40, 11))
    landscape_2d = products.landscape_from_probabilities(grid, np.outer(p_x, p_y / p_y.sum()))
    model_1d = products.diffusion_model(landscape_1d, 1.3)
    model_2d = products.diffusion_model(landscape_2d, 1.3)
    start, target = 8, 30
    times_1d = products.mean_first_passage_times(model_1d, [target])
    column = np.ravel_multi_index((np.full(11, target), np.arange(11)), (40, 11))
    times_2d = products.mean_first_passage_times(model_2d, column)
    for row in range(11):
        cell = np.ravel_multi_index((start, row), (40, 11))
        assert times_2d[model_2d.row_of_cell(cell)] == pytest.approx(times_1d[model_1d.row_of_cell(start)], rel=1e-8)


def test_transition_matrix_is_the_exponential_of_the_generator():
    landscape, _, _ = analytic_landscape(n_bins=30)
    model = products.diffusion_model(landscape, 1.0)
    lag = 0.02
    msm_short = products.markov_state_model(model, lag)
    msm_double = products.markov_state_model(model, 2 * lag)
    # Chapman–Kolmogorov: T(2τ) = T(τ)², a property of expm(Kτ).
    np.testing.assert_allclose(msm_double.transition_matrix, msm_short.transition_matrix @ msm_short.transition_matrix, atol=1e-10)
    # Short-lag limit: (T − I)/τ → K.
    msm_tiny = products.markov_state_model(model, 1e-7)
    generator = (msm_tiny.transition_matrix - np.eye(len(model.active_cells))) / 1e-7
    np.testing.assert_allclose(generator, model.rate_matrix.toarray(), rtol=1e-3, atol=1e-3 * np.abs(generator).max())
