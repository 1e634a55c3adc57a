"""The exact posterior along a curve (`atomicspi.inference.path_posterior` and its parts): the
principal curve against a known arc, the grid likelihood against quadrature over the contrast, and
simulation-based calibration of the whole chain on a toy image family with a known path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from atomicspi.inference import (
    CurveImageStatistics,
    curve_explained_variance,
    curve_grid,
    curve_image_statistics,
    extend_curve_along_structure,
    fit_node_structures,
    grid_log_likelihoods,
    grid_posterior_weights,
    path_population,
    path_posterior,
    posterior_windows,
    principal_curve,
    refine_curve,
    residual_power_ratio,
    unfolded_curve_structures,
)


def test_principal_curve_follows_a_noisy_arc():
    rng = np.random.default_rng(0)
    angles = rng.uniform(0.0, np.pi, 2000)
    arc = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles), np.zeros_like(angles)], axis=1) * 3.0
    points = arc + 0.15 * rng.standard_normal(arc.shape)
    nodes = principal_curve(points, 41, extension=0.0)
    radius = np.linalg.norm(nodes[:, :2], axis=1)
    # On the arc (radius 3, in its plane), ordered from one end to the other, equally spaced.
    assert np.max(np.abs(radius[3:-3] - 3.0)) < 0.1
    assert np.max(np.abs(nodes[:, 2:])) < 0.05
    node_angles = np.arctan2(nodes[:, 1], nodes[:, 0])
    assert np.all(np.abs(np.diff(node_angles)) > 0) and abs(np.sign(np.diff(node_angles)).sum()) == 40
    steps = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    assert steps.std() / steps.mean() < 0.01
    # The straight start (first principal axis) is not the answer: the arc's middle is off it.
    assert abs(np.abs(node_angles[20]) - np.pi / 2) < 0.1


def test_running_lines_reach_the_ends_that_local_means_cut_short():
    """Points uniform along a segment from −5 to 5, scattered 0.3 off it. With a wide kernel (4 node
    spacings of 21 nodes), each end node of the local-mean curve is the mean of points on one side of
    it, ≈ 0.8 kernel widths inside the end, and respacing the shrunk curve shrinks it again at every
    iteration; the kernel-weighted line through the same points has no such bias: its end nodes lie
    on the segment's ends."""
    rng = np.random.default_rng(2)
    along = rng.uniform(-5.0, 5.0, 3000)
    points = np.concatenate([along[:, None], 0.3 * rng.standard_normal((3000, 3))], axis=1)
    means = principal_curve(points, 21, bandwidth_in_nodes=4.0, extension=0.0)
    lines = principal_curve(points, 21, bandwidth_in_nodes=4.0, extension=0.0, running_lines=True)
    assert np.all(np.abs(np.abs(lines[[0, -1], 0]) - 5.0) < 0.1)
    assert np.all(np.abs(means[[0, -1], 0]) < 4.0)
    assert np.max(np.abs(lines[:, 1:])) < 0.05  # on the segment
    steps = np.linalg.norm(np.diff(lines, axis=0), axis=1)
    assert steps.std() / steps.mean() < 0.01


def test_extension_along_the_structures_runs_on_where_a_straight_latent_extension_folds_back():
    """Decoder u(z) = z₀ − z₀³/3 + z₁ and a curve along z₀ ∈ [−0.9, 0.9] (z₁ = 0): u rises along it,
    but past z₀ = 1 it falls, so the straight extension in the latent (to z₀ = ±1.35) folds the
    structures back. Extended along the structures instead, u runs on monotonically to ±(0.657 +
    0.25 × 1.314): the least-squares steps turn into z₁, where u still grows."""
    def structure_of(z):
        return jnp.stack([z[0] - z[0] ** 3 / 3 + z[1], 0.0 * z[1]])

    def u(nodes):
        return nodes[:, 0] - nodes[:, 0] ** 3 / 3 + nodes[:, 1]

    nodes = np.stack([np.linspace(-0.9, 0.9, 19), np.zeros(19)], axis=1)
    end, length = u(nodes)[-1], u(nodes)[-1] - u(nodes)[0]
    straight = np.stack([np.linspace(-1.35, 1.35, 19), np.zeros(19)], axis=1)  # 0.25 of the length on at each end
    assert u(straight)[-1] < end - 0.05 and np.any(np.diff(u(straight)) < 0)  # the fold
    extended = extend_curve_along_structure(nodes, structure_of, 0.25)
    assert extended.shape == nodes.shape
    assert np.all(np.diff(u(extended)) > 0)
    assert u(extended)[-1] == pytest.approx(end + 0.25 * length, abs=0.01)
    assert u(extended)[0] == pytest.approx(-(end + 0.25 * length), abs=0.01)
    # A linear decoder: the same as the straight extension in the latent.
    matrix = np.random.default_rng(3).standard_normal((5, 2))
    linear = extend_curve_along_structure(nodes, lambda z: jnp.asarray(matrix, dtype=z.dtype) @ z, 0.25)
    assert np.allclose(linear, straight, atol=1e-4)


def _structures_along(positions, direction, offsets):
    """Structures `(K, n, 3)`: `positions` moved by `offset × direction` for each offset."""
    return positions[None] + np.asarray(offsets, dtype=float)[:, None, None] * direction[None]


def test_a_curve_whose_structures_fold_back_is_continued_straight_past_the_fold():
    """Structures moving along one field d with offsets 0, 1, …, 12 and then back 11, 10, 9, 8 (the
    last four nodes fold back): those four get targets 13, 14, 15, 16 on the same line (the step of
    the three spacings before the fold), every other node keeps its structure. The same at the
    first end when the curve is reversed, and nothing changes on a curve that runs on, however
    curved (a quarter circle in the plane of two fields), or whose fall is within the tolerance."""
    rng = np.random.default_rng(4)
    positions, direction, other = rng.normal(size=(3, 20, 3))
    offsets = np.r_[np.arange(13), [11, 10, 9, 8]]
    structures = _structures_along(positions, direction, offsets)
    targets, folded = unfolded_curve_structures(structures)
    assert folded.tolist() == [False] * 13 + [True] * 4
    np.testing.assert_allclose(targets, _structures_along(positions, direction, np.arange(17)), atol=1e-9)
    targets, folded = unfolded_curve_structures(structures[::-1])
    assert folded.tolist() == [True] * 4 + [False] * 13
    np.testing.assert_allclose(targets, _structures_along(positions, direction, np.arange(17))[::-1], atol=1e-9)
    angles = np.linspace(0.0, np.pi / 2, 17)
    arc = positions[None] + 5 * (np.sin(angles)[:, None, None] * direction + (1 - np.cos(angles))[:, None, None] * other)
    targets, folded = unfolded_curve_structures(arc)
    assert not folded.any() and np.array_equal(targets, arc)
    shallow = _structures_along(positions, direction, np.r_[np.arange(13), [11.5]])  # falls by half a step
    assert not unfolded_curve_structures(shallow)[1].any()


def test_node_structures_fitted_to_targets_move_only_the_trainable_parameters():
    """Node structures linear in two parameter arrays, `a · z_k + b` over latents z_k: with only `b`
    trainable the best fit is b = mean over nodes of (target − a · z_k), reached to 1e-3; with both,
    targets that are linear in z are met exactly."""
    rng = np.random.default_rng(5)
    latents = jnp.asarray(rng.normal(size=(9, 2)), dtype=jnp.float32)
    parameters = {"a": jnp.asarray(rng.normal(size=(2, 6, 3)), dtype=jnp.float32), "b": jnp.zeros((6, 3), jnp.float32)}

    def structures_of(p):
        return jnp.einsum("kd,dnc->knc", latents, p["a"]) + p["b"]

    targets = np.asarray(rng.normal(size=(9, 6, 3)))
    fitted, rms = fit_node_structures(parameters, structures_of, targets, trainable={"a": False, "b": True})
    assert np.array_equal(np.asarray(fitted["a"]), np.asarray(parameters["a"]))
    best = (targets - np.asarray(structures_of(parameters))).mean(axis=0)
    np.testing.assert_allclose(np.asarray(fitted["b"]), best, atol=1e-3)
    expected = np.sqrt(np.mean(np.sum((targets - np.asarray(structures_of(parameters)) - best) ** 2, axis=-1)))
    assert rms == pytest.approx(expected, rel=1e-3)
    linear_targets = np.asarray(structures_of({"a": parameters["a"] + 1.0, "b": parameters["b"] + 0.5}))
    _, rms = fit_node_structures(parameters, structures_of, linear_targets, n_steps=3000, learning_rate=3e-2)
    assert rms < 1e-2


def test_curve_explained_variance_against_the_variances_of_a_cloud():
    """Points uniform along a line (variance L²/12) with isotropic Gaussian scatter σ² in the other
    d − 1 directions: the curve explains L²/12 / (L²/12 + (d − 1) σ²). (It is a report, not a test
    of one-dimensionality: a curve of 32 nodes snakes through a uniform square and explains 0.92.)"""
    rng = np.random.default_rng(1)
    length, sigma, d = 6.0, 0.4, 4
    along = rng.uniform(-length / 2, length / 2, 20000)
    points = np.concatenate([along[:, None], sigma * rng.standard_normal((20000, d - 1))], axis=1)
    nodes = principal_curve(points, 32)
    expected = (length**2 / 12) / (length**2 / 12 + (d - 1) * sigma**2)
    assert curve_explained_variance(points, nodes) == pytest.approx(expected, abs=0.02)


def test_grid_log_likelihoods_match_quadrature_over_the_contrast():
    rng = np.random.default_rng(1)
    n, n_nodes, substeps, noise_std = 5, 4, 3, 1.7
    nodes = rng.standard_normal((n_nodes, 30))
    images = rng.standard_normal((n, 30)) * noise_std + 0.8 * nodes[1]
    statistics = CurveImageStatistics(
        images @ nodes.T, np.tile(np.sum(nodes**2, axis=1), (n, 1)),
        np.tile(np.sum(nodes[:-1] * nodes[1:], axis=1), (n, 1)), np.zeros(n, dtype=int), n_nodes,
    )
    log_mean, log_std = np.log(0.9), 0.4
    values = grid_log_likelihoods(statistics, substeps=substeps, noise_std=noise_std, contrast_log_mean=log_mean,
                                  contrast_log_std=log_std, n_contrasts=401)
    assert values.shape == (n, (n_nodes - 1) * substeps + 1)
    for i in range(n):
        for g in (0, 4, 9):  # a node, a point between nodes, the last node
            k, t = min(g // substeps, n_nodes - 2), (g - min(g // substeps, n_nodes - 2) * substeps) / substeps
            m = (1 - t) * nodes[k] + t * nodes[k + 1]
            prior = scipy.stats.lognorm(s=log_std, scale=np.exp(log_mean))
            exact = np.log(scipy.integrate.quad(
                lambda c: prior.pdf(c) * np.exp((c * images[i] @ m - 0.5 * c**2 * m @ m) / noise_std**2), 0, 10, limit=200)[0])
            assert values[i, g] == pytest.approx(exact, abs=0.02)


def _blob_images(positions, box_size=16):
    """A Gaussian spot at x = 4 + 8 s (pixels), y = 8: a nonlinear image family along s ∈ [0, 1]."""
    y, x = np.mgrid[:box_size, :box_size]
    centres = 4.0 + 8.0 * np.asarray(positions)
    return 3.0 * np.exp(-0.5 * (((x[None] - centres[:, None, None]) ** 2 + (y[None] - 8.0) ** 2) / 1.5**2))


def _render_blobs(nodes, batch):
    """`_blob_images` in JAX for `curve_image_statistics`: a "structure" is one point whose first
    coordinate is s, `(B, 1, 3)`."""
    y, x = jnp.mgrid[:16, :16]
    s = nodes[:, 0, 0][:, None, None]
    return 3.0 * jnp.exp(-0.5 * (((x - (4.0 + 8.0 * s)) ** 2 + (y - 8.0) ** 2) / 1.5**2))


# rfft2 weights that make <a, b> the pixel sum of a · b for 16² images (white noise of unit variance)
_WHITE_WEIGHTS = np.broadcast_to(np.asarray([1.0] + [2.0] * 7 + [1.0])[None], (16, 9)) / 256.0


def _batches_of(images, size=500):
    n = len(images)
    return ((min(size, n - start), {"images": images[start : start + size].astype(np.float32), "indices": np.arange(start, start + size)})
            for start in range(0, n, size))


@pytest.mark.parametrize("seed", [2])
def test_path_posterior_is_calibrated_on_a_known_image_family(seed):
    rng = np.random.default_rng(seed)
    n, n_nodes = 3000, 41
    minor = rng.random(n) < 0.2
    truth = np.clip(np.where(minor, rng.normal(0.75, 0.07, n), rng.normal(0.25, 0.07, n)), 0.0, 1.0)
    contrast = np.exp(0.3 * rng.standard_normal(n))
    images = contrast[:, None, None] * _blob_images(truth) + rng.standard_normal((n, 16, 16))
    node_s = np.linspace(0.0, 1.0, n_nodes)

    render, weights = _render_blobs, jnp.asarray(_WHITE_WEIGHTS)

    def batches():
        return _batches_of(images)

    node_positions = np.zeros((n_nodes, 1, 3))
    node_positions[:, 0, 0] = node_s
    statistics = curve_image_statistics(render, lambda batch: weights, node_positions, batches())
    # The weights make <a, b> the pixel sum of a · b.
    direct = np.einsum("nyx,yx->n", images[:4], _blob_images(node_s[7:8])[0])
    np.testing.assert_allclose(statistics.cross[:4, 7], direct, rtol=1e-4)
    log_likelihood = grid_log_likelihoods(statistics, substeps=4, noise_std=1.0, contrast_log_mean=0.0, contrast_log_std=0.3)
    population = path_population(log_likelihood)
    grid_s = np.linspace(0.0, 1.0, log_likelihood.shape[1])
    result = path_posterior(log_likelihood, node_s[:, None], grid_s, 20, key=jax.random.key(0), population=population)
    covered = (truth >= result.low_in_angstroms) & (truth <= result.high_in_angstroms)
    print(f"coverage {covered.mean():.3f}")
    assert 0.86 <= covered.mean() <= 0.94, covered.mean()
    assert scipy.stats.spearmanr(result.mean_in_angstroms, truth).statistic > 0.9
    assert abs(population[grid_s > 0.5].sum() - minor.mean()) < 0.03
    # Draws: 20 per particle, continuous, and the range of calibrated draws holds the truth ≈ 19/21.
    assert result.draws_in_angstroms.shape == (n, 20) and result.draw_latents.shape == (n, 20, 1)
    in_range = (truth >= result.draws_in_angstroms.min(axis=1)) & (truth <= result.draws_in_angstroms.max(axis=1))
    assert 0.86 <= in_range.mean() <= 0.95, in_range.mean()
    np.testing.assert_allclose(result.draw_latents[..., 0], result.draws_in_angstroms, atol=1e-9)
    # A second pass on windows about each posterior (10 of the 41 nodes or more, enough for 99.9 % of
    # the mass of 99 % of the particles): the same inner products there, and the same posteriors.
    starts, window = posterior_windows(grid_posterior_weights(log_likelihood, population), n_nodes, 10)
    assert 10 <= window < n_nodes
    windowed = curve_image_statistics(render, lambda batch: weights, node_positions, batches(), starts=starts, window=window)
    rows, columns = np.arange(n)[:, None], starts[:, None] + np.arange(window)
    np.testing.assert_allclose(windowed.cross, statistics.cross[rows, columns], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(windowed.neighbour, statistics.neighbour[rows, columns[:, :-1]], rtol=1e-5, atol=1e-4)
    windowed_likelihood = grid_log_likelihoods(windowed, substeps=4, noise_std=1.0, contrast_log_mean=0.0, contrast_log_std=0.3)
    assert np.isinf(windowed_likelihood).any()
    full_weights, windowed_weights = (grid_posterior_weights(values, population) for values in (log_likelihood, windowed_likelihood))
    assert np.mean(np.abs(windowed_weights @ grid_s - full_weights @ grid_s) < 1e-3) > 0.98


def test_residual_power_ratio_recovers_a_coloured_noise_spectrum_and_restores_calibration():
    """Images of the blob family with noise whose power falls from 4 to 1 with frequency, fitted
    under a white-noise model: the residual power per shell recovers the noise's spectrum (its
    average over each shell's entries), and dividing the weights by it turns the over-confident
    white-noise posteriors into calibrated ones."""
    rng = np.random.default_rng(5)
    n, n_nodes, box_size = 3000, 41, 16
    truth = np.clip(rng.normal(0.4, 0.15, n), 0.0, 1.0)
    contrast = np.exp(0.3 * rng.standard_normal(n))
    ky, kx = np.fft.fftfreq(box_size)[:, None] * box_size, np.fft.rfftfreq(box_size)[None, :] * box_size
    spectrum = 1.0 + 3.0 * np.exp(-0.5 * (ky**2 + kx**2) / 2.0**2)  # noise power per entry, in units of white noise's
    noise = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, box_size, box_size))) * np.sqrt(spectrum), s=(box_size, box_size))
    images = contrast[:, None, None] * _blob_images(truth) + noise
    node_s = np.linspace(0.0, 1.0, n_nodes)
    node_positions = np.zeros((n_nodes, 1, 3))
    node_positions[:, 0, 0] = node_s

    render, white = _render_blobs, jnp.asarray(_WHITE_WEIGHTS)

    def batches():
        return _batches_of(images)

    def posterior(weights):
        statistics = curve_image_statistics(render, lambda batch: weights, node_positions, batches())
        log_likelihood = grid_log_likelihoods(statistics, substeps=4, noise_std=1.0, contrast_log_mean=0.0, contrast_log_std=0.3)
        population = path_population(log_likelihood)
        grid_s = np.linspace(0.0, 1.0, log_likelihood.shape[1])
        return log_likelihood, population, path_posterior(log_likelihood, node_s[:, None], grid_s, 20, key=jax.random.key(0), population=population)

    log_likelihood, population, white_result = posterior(white)
    best = np.argmax(grid_posterior_weights(log_likelihood, population), axis=1)
    ratio = residual_power_ratio(render, lambda batch: white, node_positions, batches(), best, substeps=4, noise_std=1.0)
    assert ratio.shape == (16, 9)
    shells = np.rint(np.sqrt(ky**2 + kx**2)).astype(int)
    multiplicity = np.where((np.arange(9) == 0) | (np.arange(9) == 8), 1.0, 2.0)[None] * np.ones((16, 1))
    expected = np.bincount(shells.ravel(), (multiplicity * spectrum).ravel()) / np.bincount(shells.ravel(), multiplicity.ravel())
    np.testing.assert_allclose(ratio, expected[shells], rtol=0.08)
    _, _, result = posterior(white / jnp.asarray(ratio, dtype=jnp.float32))

    def coverage(result):
        return float(np.mean((truth >= result.low_in_angstroms) & (truth <= result.high_in_angstroms)))

    print(f"coverage of central 90 % intervals: white {coverage(white_result):.3f}, residual spectrum {coverage(result):.3f}")
    assert coverage(white_result) < 0.8
    assert 0.86 <= coverage(result) <= 0.94


@pytest.mark.slow  # a tiny deformation fit end to end
def test_run_with_path_posterior_and_learned_envelope(tmp_path, example_structure_path):
    """`path_nodes` and `learn_envelope` through `run_inference`: the draws lie on the curve, their
    positions along it reach posterior.nc, run.json and particles.star, and the envelope is learned."""
    import json

    import arviz as az
    import starfile

    from atomicspi._pipeline import run_inference
    from atomicspi._simulation import interpolated_conformations, simulate_particles, write_simulated_dataset
    from atomicspi.io import load_config
    from atomicspi.structure import load_structure

    closed = load_structure(example_structure_path).calpha()
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    opened = load_structure(example_structure_path.with_name("adk_open.pdb.gz")).calpha()
    n = 48
    truth = np.random.default_rng(5).uniform(0.0, 1.0, n)
    particles = simulate_particles(closed, interpolated_conformations(closed, opened, truth), 24, 4.0, 1.0, seed=5)
    path = write_simulated_dataset(tmp_path, closed, particles, model="deformation", config_overrides={
        "num_steps": 30, "batch_size": 16, "samples_per_particle": 6, "path_nodes": 6, "learn_envelope": True,
        "mode_candidates": 0,
    })
    output = run_inference(load_config(path), progress=False)
    record = json.loads((output / "run.json").read_text())
    summary = record["path_posterior"]
    assert summary["nodes"] == 6 and len(summary["population"]) == 5 * summary["substeps"] + 1
    assert np.isclose(sum(summary["population"]), 1.0) and summary["length_in_angstroms"] > 0
    assert "envelope_b_factor" in record["global_posterior_means"]
    # topology.pdb keeps the reference's B-factors
    np.testing.assert_allclose(load_structure(output / "topology.pdb").b_factors_in_angstroms_squared,
                               closed.b_factors_in_angstroms_squared, atol=0.01)
    assert closed.b_factors_in_angstroms_squared.std() > 1.0
    # the residual power measured per frequency shell
    assert len(summary["residual_power_ratio_by_shell"]) == 24 // 2 + 1 and all(r > 0 for r in summary["residual_power_ratio_by_shell"])
    posterior = az.from_netcdf(output / "posterior.nc").posterior
    positions = posterior["path_position_in_angstroms"].values[0]  # (draw, particle)
    assert positions.shape == (6, n)
    assert np.all((positions >= 0.0) & (positions <= summary["length_in_angstroms"] + 1e-4))
    # Every draw's latent lies on the curve: it is the curve's latent at the draw's arc length.
    arc = np.asarray(summary["arc_length_in_angstroms"])
    nodes = np.asarray(summary["node_latents"])
    grid = curve_grid(nodes, summary["substeps"])
    z = posterior["z"].values[0]  # (draw, particle, latent)
    on_curve = np.stack([np.interp(positions, arc, grid[:, j]) for j in range(grid.shape[1])], axis=-1)
    np.testing.assert_allclose(z, on_curve, atol=1e-4)
    star = starfile.read(output / "particles.star")["particles"]
    assert np.allclose(star["atomicspiPathPositionInAngstroms1"], positions.mean(axis=0), atol=1e-3)
    assert arc[-1] == pytest.approx(summary["length_in_angstroms"])
    # The landscape is on the path coordinate, in Å.
    from atomicspi.products import default_collective_variable

    assert default_collective_variable(output) == "path:0"
    with np.load(output / "landscape.npz") as landscape:
        assert np.allclose(landscape["particle_coordinate_mean"][:, 0], positions.mean(axis=0), atol=1e-3)


def test_refine_curve_takes_one_learning_rate_per_array():
    """`refine_curve` with a pytree of rates shaped like the parameters (an equinox module, which is
    itself callable) runs Adam with each array's own rate: under a constant gradient every Adam step
    moves a parameter by its rate, so two steps move the arrays by twice their rates; with a cosine
    decay (`final_learning_rate_share`) the second step is the cosine's share of the first."""
    import equinox as eqx

    class Pair(eqx.Module):
        slow: jax.Array
        fast: jax.Array

        def __call__(self, x):
            return x

    def node_log_likelihoods(parameters, batch, nodes):
        return (jnp.sum(parameters.slow) + 2.0 * jnp.sum(parameters.fast)) * jnp.ones(nodes.shape)

    def batches():
        yield 4, {"indices": np.arange(4)}

    start = Pair(jnp.ones(3), jnp.zeros(2))
    responsibilities = np.full((4, 3), 1.0 / 3.0)
    refined, history = refine_curve(start, node_log_likelihoods, responsibilities, batches, n_epochs=2, learning_rate=Pair(1e-2, 1e-1))
    np.testing.assert_allclose(np.asarray(refined.slow), 1.0 + 2e-2, atol=1e-5)
    np.testing.assert_allclose(np.asarray(refined.fast), 0.2, atol=1e-5)
    assert history[1] < history[0]
    same, _ = refine_curve(start, node_log_likelihoods, responsibilities, batches, n_epochs=2, learning_rate=1e-2)
    np.testing.assert_allclose(np.asarray(same.fast), 2e-2, atol=1e-6)
    # A cosine decay over the call's two steps to 3 %: the second step is (0.03 + 0.97 / 2) of the first.
    decayed, _ = refine_curve(start, node_log_likelihoods, responsibilities, batches, n_epochs=2, learning_rate=Pair(1e-2, 1e-1),
                              final_learning_rate_share=0.03)
    np.testing.assert_allclose(np.asarray(decayed.fast), 0.1 * (1.0 + 0.03 + 0.97 / 2), atol=1e-5)
