"""Domain motions (rigid per domain) and per-domain modes; AdK closed → open by three rigid domains."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from atomicspi.io import InputError
from atomicspi.microscope import axis_angle_to_matrix
from atomicspi.structure import (
    ElasticNetwork,
    apply_domain_motion,
    calpha_beads,
    domain_normal_modes,
    domains_from_normal_modes,
    domains_from_residue_ranges,
    load_structure,
    superpose,
)

ADK_DOMAINS = [[(1, 29), (60, 121), (160, 214)], [(30, 59)], [(122, 159)]]  # CORE, NMP, LID


@pytest.fixture(scope="module")
def adk(example_structure_path):
    closed = calpha_beads(load_structure(example_structure_path))
    opened = load_structure(example_structure_path.parent / "adk_open.pdb.gz").calpha().positions_in_angstroms
    return closed, opened


def test_rotation_vectors_match_scipy(x64):
    vectors = np.random.default_rng(0).normal(size=(5, 3)) * 1.5
    vectors[0] = 0.0
    vectors[1] = [1e-6, -2e-6, 3e-6]
    np.testing.assert_allclose(np.asarray(axis_angle_to_matrix(vectors)), Rotation.from_rotvec(vectors).as_matrix(), atol=1e-12)
    # d/dv (R(v) p) at v = 0 is −[p]×, i.e. R p ≈ p + v × p.
    point = jnp.array([0.3, -1.0, 2.0])
    jacobian = jax.jacobian(lambda v: axis_angle_to_matrix(v) @ point)(jnp.zeros(3))
    p1, p2, p3 = np.asarray(point)
    minus_cross_matrix = -np.array([[0, -p3, p2], [p3, 0, -p1], [-p2, p1, 0]])
    np.testing.assert_allclose(np.asarray(jacobian), minus_cross_matrix, atol=1e-12)


def test_domain_assignment_from_ranges(adk):
    closed, _ = adk
    assignment = domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS)
    assert np.bincount(assignment).tolist() == [29 + 62 + 55, 30, 38]
    assert assignment[closed.bead_residue_numbers == 45][0] == 1 and assignment[closed.bead_residue_numbers == 140][0] == 2
    with pytest.raises(InputError, match="no domain"):
        domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS[:2])
    with pytest.raises(InputError, match="overlaps"):
        domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS + [[(100, 101)]])


def test_domain_motion_is_rigid_per_domain(x64, adk):
    closed, _ = adk
    x = closed.bead_positions_in_angstroms
    assignment = domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS)
    rng = np.random.default_rng(1)
    rotations, translations = rng.normal(size=(3, 3)), rng.normal(size=(3, 3)) * 5
    moved = np.asarray(eqx.filter_jit(apply_domain_motion)(x, assignment, rotations, translations))
    for domain in range(3):
        inside = assignment == domain
        np.testing.assert_allclose(pdist(moved[inside]), pdist(x[inside]), atol=1e-10)
        np.testing.assert_allclose(moved[inside].mean(0), x[inside].mean(0) + translations[domain], atol=1e-10)
        expected = (x[inside] - x[inside].mean(0)) @ Rotation.from_rotvec(rotations[domain]).as_matrix().T + x[inside].mean(0) + translations[domain]
        np.testing.assert_allclose(moved[inside], expected, atol=1e-10)
    np.testing.assert_allclose(np.asarray(apply_domain_motion(x, assignment, np.zeros((3, 3)), np.zeros((3, 3)))), x, atol=1e-12)


def test_three_rigid_domains_explain_adk_closed_to_open(x64, adk):
    """Fitting CORE/NMP/LID rigid motions from the closed toward the (superposed) open structure leaves
    < 2 Å Cα RMSD (literature: ≈1.75 Å), against 6.9 Å before: an end-to-end check of the domain code."""
    closed, opened = adk
    x = jnp.asarray(closed.bead_positions_in_angstroms)
    target = superpose(opened, x)
    assignment = domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS)

    def loss(parameters):
        moved = apply_domain_motion(x, assignment, parameters[:9].reshape(3, 3), parameters[9:].reshape(3, 3))
        return jnp.mean(jnp.sum((moved - target) ** 2, axis=1))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    result = scipy.optimize.minimize(lambda p: tuple(np.asarray(v, dtype=float) for v in value_and_grad(p)), np.zeros(18), jac=True, method="L-BFGS-B")
    before, after = np.sqrt(float(loss(jnp.zeros(18)))), np.sqrt(result.fun)
    print(f"AdK closed→open Cα RMSD {before:.2f} Å; after fitting three rigid domains {after:.2f} Å")
    assert before > 6.5
    assert after < 2.0


def test_domain_modes_are_sub_network_modes(x64, adk):
    prody = pytest.importorskip("prody")
    prody.confProDy(verbosity="none")
    closed, _ = adk
    x = closed.bead_positions_in_angstroms
    assignment = domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS)
    network = ElasticNetwork.from_positions(x, 15.0)
    modes = domain_normal_modes(network, assignment, 4)
    v = np.asarray(modes.vectors).reshape(12, -1)
    np.testing.assert_allclose(v @ v.T, np.eye(12), atol=1e-10)
    for domain in range(3):
        outside = np.repeat(assignment != domain, 3)
        assert np.all(v[4 * domain : 4 * domain + 4][:, outside] == 0)
        anm = prody.ANM()
        anm.buildHessian(x[assignment == domain], cutoff=15.0, gamma=1.0)
        anm.calcModes(4)
        np.testing.assert_allclose(np.asarray(modes.eigenvalues[4 * domain : 4 * domain + 4]), anm.getEigvals(), rtol=1e-6)


def test_domains_found_from_modes_match_adk_literature_domains(adk):
    """Spectral clustering of the mode-weighted contact graph finds AdK's LID and NMP as separate
    domains (the literature boundaries, CATH/Müller 1996, are the independent reference)."""
    closed, _ = adk
    network = ElasticNetwork.from_positions(closed.bead_positions_in_angstroms, 15.0)
    found = domains_from_normal_modes(network, 3)
    known = domains_from_residue_ranges(closed.bead_residue_numbers, ADK_DOMAINS)
    assert np.bincount(found).tolist() == sorted(np.bincount(found).tolist(), reverse=True)  # 0 is the largest
    agreement = max(np.mean(np.asarray(p)[found] == known) for p in __import__("itertools").permutations(range(3)))
    assert agreement > 0.75
    nmp, lid = found[known == 1], found[known == 2]
    nmp_label, lid_label = np.bincount(nmp).argmax(), np.bincount(lid).argmax()
    assert nmp_label != lid_label
    assert np.mean(nmp == nmp_label) > 0.85 and np.mean(lid == lid_label) > 0.85
    np.testing.assert_array_equal(found, domains_from_normal_modes(network, 3))  # deterministic
