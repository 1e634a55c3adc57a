"""Closed → open adenylate kinase paths (`atomicspi._transition_paths`) and the cryoJAX particle
simulator of the path benchmarks (`bench/_cryojax_simulation.py`), checked against independent
geometry: endpoints, domain rigidity, chain connectivity, arc length, and our own image model."""

import functools
import importlib
import pathlib
import sys

import numpy as np
import pytest

from atomicspi._example import ADENYLATE_KINASE_DOMAINS, example_structure_paths
from atomicspi._transition_paths import adaptive_anm_path, hinge_path, path_positions_of, two_state_path_positions
from atomicspi.structure import load_structure

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str):
    """Import one of bench/'s modules (bench/ is not a package; its modules import each other by name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
RESIDUE_NUMBERS = np.arange(1, 215)  # 1AKE/4AKE numbering, one Cα per residue
BOUNDARY_RESIDUES = np.array([29, 30, 59, 60, 121, 122, 159, 160])  # last/first residue either side of CORE|NMP|CORE|LID|CORE
# Path positions at which the paths are evaluated once (module fixtures) for all the checks below.
GRID = np.linspace(0.0, 1.0, 201)


def _rmsd(a, b):
    return np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1), axis=-1))


def _in_ranges(ranges):
    return np.any([(RESIDUE_NUMBERS >= first) & (RESIDUE_NUMBERS <= last) for first, last in ranges], axis=0)


def _kabsch_superposed(mobile, target, mask):
    """`mobile` moved rigidly onto `target` by the best fit of the points in `mask` (independent of the module's Kabsch)."""
    mobile_centre, target_centre = mobile[mask].mean(axis=0), target[mask].mean(axis=0)
    u, _, vt = np.linalg.svd((mobile[mask] - mobile_centre).T @ (target[mask] - target_centre))
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return (mobile - mobile_centre) @ rotation + target_centre


@pytest.fixture(scope="module")
def structures():
    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    open_ = load_structure(open_path)
    calpha = closed.topology.select("name CA and protein")
    core = _in_ranges(ADENYLATE_KINASE_DOMAINS[0])
    # Open in closed's frame, on the CORE Cα: where both paths should end.
    open_calpha = _kabsch_superposed(open_.positions_in_angstroms[calpha], closed.positions_in_angstroms[calpha], core)
    return closed, open_, calpha, open_calpha


@pytest.fixture(scope="module")
def hinge(structures):
    closed, open_, _, _ = structures
    return hinge_path(closed, open_, ADENYLATE_KINASE_DOMAINS, GRID, return_nodes=True)


@pytest.fixture(scope="module")
def adaptive_anm(structures):
    closed, open_, _, _ = structures
    return adaptive_anm_path(closed, open_, GRID, frame_residue_ranges=ADENYLATE_KINASE_DOMAINS[0], return_nodes=True)


@pytest.fixture(scope="module", params=["hinge", "adaptive_anm"])
def path(request, hinge, adaptive_anm):
    return request.param, {"hinge": hinge, "adaptive_anm": adaptive_anm}[request.param]


def test_endpoints(structures, hinge, adaptive_anm):
    closed, _, calpha, open_calpha = structures
    for positions, _, _ in (hinge, adaptive_anm):
        np.testing.assert_array_equal(positions[0], closed.positions_in_angstroms)  # s = 0 is closed exactly
    # s = 1, in closed's CORE frame without any further superposition: measured 1.71 Å (the domains
    # are not exactly rigid between 1AKE and 4AKE) and 0.50 Å (aANM stops within 0.5 Å of open).
    assert _rmsd(hinge[0][-1, calpha], open_calpha) < 2.0
    assert _rmsd(adaptive_anm[0][-1, calpha], open_calpha) < 1.0
    # ... and the CORE stays put along both paths (the frame is closed's CORE).
    core = _in_ranges(ADENYLATE_KINASE_DOMAINS[0])
    far = np.min(np.abs(RESIDUE_NUMBERS[:, None] - BOUNDARY_RESIDUES[None]), axis=1) >= 4
    assert np.max(_rmsd(hinge[0][:, calpha][:, core & far], closed.positions_in_angstroms[calpha][core & far])) < 0.05


def test_hinge_domains_are_rigid_away_from_hinges(structures, hinge):
    _, _, calpha, _ = structures
    trace = hinge[0][:, calpha]
    far = np.min(np.abs(RESIDUE_NUMBERS[:, None] - BOUNDARY_RESIDUES[None]), axis=1) >= 4
    moved = []
    for ranges in ADENYLATE_KINASE_DOMAINS:
        members = trace[:, _in_ranges(ranges) & far]
        distances = np.linalg.norm(members[:, :, None] - members[:, None], axis=-1)
        assert np.max(np.abs(distances - distances[0])) < 0.1  # measured ≤ 0.05 Å
        moved.append(np.max(_rmsd(members, members[0])))
    # while NMP and LID do move (several Å)
    assert moved[1] > 3.0 and moved[2] > 5.0


def test_hinge_domains_move_by_screw_motions_about_fixed_axes(structures, hinge):
    closed, _, calpha, _ = structures
    trace = hinge[0][:, calpha]
    far = np.min(np.abs(RESIDUE_NUMBERS[:, None] - BOUNDARY_RESIDUES[None]), axis=1) >= 4
    for ranges in ADENYLATE_KINASE_DOMAINS[1:]:
        members = _in_ranges(ranges) & far
        start = trace[0, members]
        # the whole motion (s = 1): rotation axis a (eigenvector of eigenvalue 1), angle, and a point p on the axis
        end = trace[-1, members]
        start_centre, end_centre = start.mean(axis=0), end.mean(axis=0)
        u, _, vt = np.linalg.svd((start - start_centre).T @ (end - end_centre))
        rotation = (u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt).T
        translation = end_centre - rotation @ start_centre
        values, vectors = np.linalg.eig(rotation)
        axis = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        angle = np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))
        assert np.degrees(angle) > 10.0
        point = np.linalg.lstsq(np.eye(3) - rotation, translation - (translation @ axis) * axis, rcond=None)[0]
        for index in (40, 100, 160):
            moved = trace[index, members]
            moved_centre = moved.mean(axis=0)
            u, _, vt = np.linalg.svd((start - start_centre).T @ (moved - moved_centre))
            partial = (u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt).T
            partial_translation = moved_centre - partial @ start_centre
            # same axis, and the axis's points slide along it only
            partial_values, partial_vectors = np.linalg.eig(partial)
            partial_axis = np.real(partial_vectors[:, np.argmin(np.abs(partial_values - 1.0))])
            assert abs(partial_axis @ axis) > np.cos(np.radians(0.5))
            slide = partial @ point + partial_translation - point
            assert np.linalg.norm(slide - (slide @ axis) * axis) < 0.05


def test_sequence_neighbours_stay_connected(structures, path):
    _, _, calpha, _ = structures
    name, (positions, _, _) = path
    bonds = np.linalg.norm(np.diff(positions[:, calpha], axis=1), axis=-1)
    closed_bonds = bonds[0]
    trans = closed_bonds > 3.5  # all but the cis peptide (2.98 Å in both states)
    assert np.all(np.abs(bonds[:, trans] - 3.8) <= 0.2), name
    assert np.max(np.abs(bonds - closed_bonds)) < 0.2, name  # measured 0.05 Å (hinge), 0.08 Å (aANM)


def test_paths_differ_from_each_other_and_from_linear_interpolation(structures, hinge, adaptive_anm):
    closed, _, calpha, open_calpha = structures
    middle = np.searchsorted(GRID, 0.5)
    hinge_middle, anm_middle = hinge[0][middle, calpha], adaptive_anm[0][middle, calpha]
    linear_middle = 0.5 * closed.positions_in_angstroms[calpha] + 0.5 * open_calpha
    everything = np.ones(calpha.size, dtype=bool)

    def shape_rmsd(a, b):
        return _rmsd(_kabsch_superposed(a, b, everything), b)

    # Shape differences at s = 0.5 after optimal superposition, measured 2.8, 1.1 and 2.5 Å.
    assert shape_rmsd(hinge_middle, anm_middle) > 2.0
    assert shape_rmsd(hinge_middle, linear_middle) > 0.8
    assert shape_rmsd(anm_middle, linear_middle) > 2.0


def test_arc_length_parameterisation(structures, path):
    _, _, calpha, _ = structures
    name, (positions, nodes, node_path_positions) = path
    steps = _rmsd(nodes[1:, calpha], nodes[:-1, calpha])
    length = steps.sum()
    np.testing.assert_allclose(node_path_positions, np.concatenate([[0.0], np.cumsum(steps)]) / length, atol=1e-12)
    trace = positions[:, calpha]
    for offset in (2, 10):  # Δ = 0.01 and 0.05
        ratio = _rmsd(trace[offset:], trace[:-offset]) / (GRID[offset] * length)
        assert np.max(ratio) <= 1.0 + 1e-6, name  # a chord is never longer than the arc
        # the hinge path is smooth; the aANM's iterates turn by ≈ 20° per step (measured ≥ 0.92, ≥ 0.85)
        assert np.min(ratio) > (0.99 if name == "hinge" else (0.9 if offset == 2 else 0.8)), name


def test_path_positions_of_recovers_known_positions(structures, path):
    _, _, calpha, _ = structures
    name, (positions, _, _) = path
    nodes = positions[::2, calpha]  # 101 evenly spaced path positions
    rng = np.random.default_rng(0)
    picked = rng.choice(GRID.size, size=40, replace=False)
    estimated = path_positions_of(positions[picked][:, calpha], nodes)
    assert estimated.shape == (40,)
    assert np.max(np.abs(estimated - GRID[picked])) < 0.01, name
    assert path_positions_of(positions[0, calpha], nodes) == pytest.approx(0.0, abs=1e-9)
    assert path_positions_of(positions[-1, calpha], nodes) == pytest.approx(1.0, abs=1e-9)
    # off the nodes' grid too: positions between two nodes, with uneven node spacing given explicitly
    uneven = np.concatenate([GRID[:100:4], GRID[100:]])
    estimated = path_positions_of(positions[picked][:, calpha], positions[np.searchsorted(GRID, uneven)][:, calpha], uneven)
    assert np.max(np.abs(estimated - GRID[picked])) < 0.01, name


def test_two_state_path_positions():
    path_positions, states = two_state_path_positions(4000, 0.25, np.random.default_rng(1))
    assert path_positions.shape == states.shape == (4000,)
    assert np.all((path_positions >= 0) & (path_positions <= 1))
    assert np.mean(states == 1) == 0.25
    assert np.mean(path_positions[states == 0]) == pytest.approx(0.16, abs=0.01)  # truncated at 0: slightly above 0.15
    assert np.mean(path_positions[states == 1]) == pytest.approx(0.8, abs=0.01)
    assert np.std(path_positions[states == 1]) == pytest.approx(0.08, abs=0.01)


@pytest.fixture(scope="module")
def cryojax_simulation():
    pytest.importorskip("cryojax")
    return _bench_module("_cryojax_simulation")


def test_cryojax_render_matches_our_image_model(structures, hinge, cryojax_simulation):
    import jax
    import jax.numpy as jnp

    from atomicspi._simulation import simulate_particles
    from atomicspi.microscope import CTFParameters, make_image_model
    from atomicspi.models import render_images

    closed, _, _, _ = structures
    box, pixel = 32, 3.0
    positions = hinge[0][[20, 100, 180]].astype(np.float32)  # s = 0.1, 0.5, 0.9
    particles = cryojax_simulation.simulate_particles_cryojax(closed, positions, box, pixel, 0.1, seed=3, batch_size=3)
    # the same poses, shifts and CTFs as our own simulate_particles draws for the seed
    ours = simulate_particles(closed, positions, box, pixel, 0.1, seed=3)
    np.testing.assert_array_equal(particles.rotations, ours.rotations)
    np.testing.assert_array_equal(particles.shifts_in_angstroms, ours.shifts_in_angstroms)
    for key, value in ours.ctf.items():
        np.testing.assert_array_equal(particles.ctf[key], value)
    theirs = cryojax_simulation.render_particles_cryojax(
        closed, positions, particles.rotations, particles.shifts_in_angstroms, particles.ctf, box, pixel, batch_size=3
    )
    image_model = make_image_model(closed.atomic_numbers, closed.b_factors_in_angstroms_squared, box, pixel)
    ctf = CTFParameters(**{key: jnp.asarray(value, dtype=jnp.float32) for key, value in particles.ctf.items()})
    clean = np.asarray(jax.jit(functools.partial(render_images, image_model))(
        jnp.asarray(positions), jnp.asarray(particles.rotations), jnp.asarray(particles.shifts_in_angstroms), ctf
    ))
    for ours_image, their_image in zip(clean, theirs):
        assert np.corrcoef(ours_image.ravel(), their_image.ravel())[0, 1] >= 0.99  # measured ≥ 0.9999
        # same units and sign once cryoJAX's conventions are mapped (its CTF is −RELION's, potential / 47.878)
        assert np.sum(ours_image * their_image) / np.sum(their_image**2) == pytest.approx(1.0, rel=0.02)


def test_cryojax_images_have_the_requested_snr_and_contrast(structures, hinge, cryojax_simulation):
    closed, _, _, _ = structures
    box, pixel, snr, n = 32, 3.0, 0.5, 48
    positions = hinge[0][np.linspace(0, 200, n).astype(int)].astype(np.float32)
    particles = cryojax_simulation.simulate_particles_cryojax(
        closed, positions, box, pixel, snr, seed=5, contrast_log_std=0.2, batch_size=16
    )
    assert particles.images.shape == (n, box, box) and particles.noise_std == 1.0
    clean = cryojax_simulation.render_particles_cryojax(
        closed, positions, particles.rotations, particles.shifts_in_angstroms, particles.ctf, box, pixel, batch_size=16
    )
    # Regress every image on its clean render: the slopes follow the recorded contrast factors, the
    # residual is unit white noise, and the signal variance over the noise variance is the SNR.
    flat_clean, flat_images = clean.reshape(n, -1), particles.images.reshape(n, -1)
    slopes = np.sum(flat_clean * flat_images, axis=1) / np.sum(flat_clean**2, axis=1)
    residual = flat_images - slopes[:, None] * flat_clean
    assert np.std(residual) == pytest.approx(1.0, rel=0.02)
    assert abs(np.mean(residual)) < 0.02
    normalised = slopes * particles.noise_scale / particles.contrast_factors
    assert np.std(normalised) / np.mean(normalised) < 0.1  # slope ∝ contrast factor (noise ≈ 4 % per image)
    assert np.mean(normalised) == pytest.approx(1.0, rel=0.03)
    assert np.std(np.log(particles.contrast_factors)) == pytest.approx(0.2, abs=0.06)
    signal_variance = np.mean(np.var(slopes[:, None] * flat_clean, axis=1))
    assert signal_variance / np.var(residual) == pytest.approx(snr, rel=0.1)


def test_draw_interval_holds_the_truth_as_often_as_the_rank_statistic_says():
    """Calibrated draws (truth and draws from the same posterior, a different one per particle):
    the interval of `draw_interval` holds the truth with the stated probability, (n + 1 − 2k)/(n + 1)
    (0.905 for 20 draws, 0.901 for 100), where sample quantiles of 20 draws fall short (≈ 0.82).
    Draws twice too narrow fail it."""
    draw_interval = _bench_module("_path_metrics").draw_interval
    rng = np.random.default_rng(0)
    n = 40000
    centres, widths = rng.normal(size=n), rng.uniform(0.1, 2.0, size=n)
    truth = centres + widths * rng.normal(size=n)
    for n_draws, expected in ((20, 19 / 21), (100, 91 / 101)):
        draws = centres[:, None] + widths[:, None] * rng.normal(size=(n, n_draws))
        low, high, stated = draw_interval(draws, 0.9)
        assert stated == pytest.approx(expected)
        assert np.mean((truth >= low) & (truth <= high)) == pytest.approx(expected, abs=0.006)  # 4 binomial sd
    draws = centres[:, None] + widths[:, None] * rng.normal(size=(n, 20))
    quantiles = np.quantile(draws, [0.05, 0.95], axis=1)
    assert np.mean((truth >= quantiles[0]) & (truth <= quantiles[1])) < 0.84
    low, high, _ = draw_interval(centres[:, None] + 0.5 * widths[:, None] * rng.normal(size=(n, 20)), 0.9)
    assert np.mean((truth >= low) & (truth <= high)) < 0.7


def test_path_oracle_marginalises_the_contrast_like_quadrature():
    """The oracle's per-node log-likelihood, image = c·a·m_k + N(0, 1) with c ~ LogNormal(0, σ²)
    marginalised on an equal-mass grid, against adaptive quadrature over c (differences between
    nodes, which are all the posterior uses)."""
    import scipy.stats
    from scipy import integrate

    node_log_likelihoods = _bench_module("path_oracle").node_log_likelihoods
    rng = np.random.default_rng(2)
    # Neighbouring nodes of a path (their images differ by a little): the regime the posterior lives in.
    nodes = rng.normal(size=40)[None] + 0.15 * np.arange(5)[:, None] * rng.normal(size=40)[None]
    image = 1.1 * 0.8 * nodes[2] + rng.normal(size=40)
    cross, energy = (nodes @ image)[None], np.sum(nodes**2, axis=1)[None]
    got = node_log_likelihoods(cross, energy, clean_scale=0.8, contrast_log_std=0.2)[0]

    def marginal(k):
        def integrand(c):
            return scipy.stats.lognorm.pdf(c, 0.2) * np.exp(-0.5 * np.sum((image - c * 0.8 * nodes[k]) ** 2) + 0.5 * np.sum(image**2))
        return np.log(integrate.quad(integrand, 1e-3, 5.0, limit=200)[0])

    expected = np.array([marginal(k) for k in range(5)])
    # measured 0.001; a fixed contrast (σ = 0) is off by 0.38, σ = 0.5 instead of 0.2 by 0.15
    np.testing.assert_allclose(got - got[2], expected - expected[2], atol=0.01)
    assert np.argmax(got) == 2
