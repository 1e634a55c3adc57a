"""Elastic network (ANM): energy, gradient, Hessian and normal modes, against ProDy and finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from atomicspi.io import InputError
from atomicspi.structure import ElasticNetwork, load_structure, normal_modes, rigid_body_basis, superpose


@pytest.fixture(scope="module")
def adk_calpha(example_structure_path):
    closed = load_structure(example_structure_path).calpha().positions_in_angstroms
    opened = load_structure(example_structure_path.parent / "adk_open.pdb.gz").calpha().positions_in_angstroms
    return closed, opened


def _subspace_overlap(v, w):
    """Smallest singular value of Vᵀ W for column-orthonormal V, W: 1 when the subspaces coincide."""
    return np.linalg.svd(v.T @ w, compute_uv=False).min()


def test_modes_and_hessian_match_prody(x64, adk_calpha):
    prody = pytest.importorskip("prody")
    prody.confProDy(verbosity="none")
    closed, _ = adk_calpha
    network = ElasticNetwork.from_positions(closed, cutoff_in_angstroms=15.0)
    modes = normal_modes(network, 20)
    anm = prody.ANM()
    anm.buildHessian(closed, cutoff=15.0, gamma=1.0)
    anm.calcModes(20)
    np.testing.assert_allclose(np.asarray(network.hessian()), anm.getHessian(), atol=1e-10)
    np.testing.assert_allclose(np.asarray(modes.eigenvalues), anm.getEigvals(), rtol=1e-4)
    ours = np.asarray(modes.vectors).reshape(20, -1).T
    overlap = _subspace_overlap(ours, anm.getEigvecs())
    assert overlap >= 0.999
    # Each lowest mode is non-degenerate here, so the per-mode overlap is also ~1.
    assert np.min(np.abs(np.sum(ours * anm.getEigvecs(), axis=0))) >= 0.999


def test_modes_orthonormal_and_orthogonal_to_rigid_motions(x64, adk_calpha):
    closed, _ = adk_calpha
    network = ElasticNetwork.from_positions(closed, 15.0)
    modes = normal_modes(network, 30)
    v = np.asarray(modes.vectors).reshape(30, -1)
    np.testing.assert_allclose(v @ v.T, np.eye(30), atol=1e-10)
    rigid = np.asarray(rigid_body_basis(closed)).reshape(6, -1)
    np.testing.assert_allclose(rigid @ rigid.T, np.eye(6), atol=1e-10)
    assert np.max(np.abs(rigid @ v.T)) < 1e-8
    # Eigen-equation H v = λ v with the independently assembled sparse Hessian.
    hessian = network.sparse_hessian()
    np.testing.assert_allclose(hessian @ v.T, v.T * np.asarray(modes.eigenvalues), atol=1e-9)
    assert np.all(np.diff(np.asarray(modes.eigenvalues)) >= 0) and modes.eigenvalues[0] > 1e-3


def test_sparse_path_matches_dense(x64, adk_calpha):
    closed, _ = adk_calpha
    network = ElasticNetwork.from_positions(closed, 15.0)
    dense = normal_modes(network, 20, method="dense")
    for method, eigenvalue_tolerance, overlap_tolerance in (("sparse", 1e-8, 1e-8), ("lobpcg", 1e-8, 1e-6)):
        sparse = normal_modes(network, 20, method=method)
        np.testing.assert_allclose(np.asarray(sparse.eigenvalues), np.asarray(dense.eigenvalues), rtol=eigenvalue_tolerance)
        overlap = _subspace_overlap(np.asarray(dense.vectors).reshape(20, -1).T, np.asarray(sparse.vectors).reshape(20, -1).T)
        assert overlap > 1 - overlap_tolerance
        v = np.asarray(sparse.vectors).reshape(20, -1)
        np.testing.assert_allclose(v @ v.T, np.eye(20), atol=1e-8)
    np.testing.assert_allclose(network.sparse_hessian().toarray(), np.asarray(network.hessian()), atol=1e-12)


def test_closed_to_open_displacement_overlaps_lowest_modes(x64, adk_calpha):
    closed, opened = adk_calpha
    network = ElasticNetwork.from_positions(closed, 15.0)
    modes = normal_modes(network, 10)
    displacement = (np.asarray(superpose(opened, closed)) - closed).reshape(-1)
    rmsd = np.sqrt(np.mean(np.sum(displacement.reshape(-1, 3) ** 2, axis=1)))
    v = np.asarray(modes.vectors).reshape(10, -1)
    cumulative = np.sum((v @ displacement) ** 2) / np.sum(displacement**2)
    print(f"AdK closed→open: Cα RMSD {rmsd:.2f} Å, cumulative squared overlap with the lowest 10 modes {cumulative:.3f}")
    assert 6.5 < rmsd < 7.3
    assert cumulative > 0.5


def test_hessian_equals_autodiff_hessian_with_distance_dependent_springs(x64, adk_calpha):
    closed, _ = adk_calpha
    for exponent in (0.0, 2.0):
        network = ElasticNetwork.from_positions(closed[:40], 12.0, distance_exponent=exponent)
        gamma = 0.7
        autodiff = jax.hessian(lambda x: network.energy(x.reshape(-1, 3), gamma))(jnp.asarray(closed[:40]).reshape(-1))
        np.testing.assert_allclose(np.asarray(network.hessian(gamma)), np.asarray(autodiff), atol=1e-10)
    expected_weights = (np.asarray(network.rest_lengths_in_angstroms) / 3.8) ** -2.0
    np.testing.assert_allclose(np.asarray(network.spring_weights), expected_weights)


def test_energy_gradient_matches_finite_differences(x64, adk_calpha):
    closed, opened = adk_calpha
    network = ElasticNetwork.from_positions(closed, 15.0, distance_exponent=1.0)
    positions = jnp.asarray(closed + 0.3 * np.random.default_rng(0).normal(size=closed.shape))
    energy = eqx.filter_jit(network.energy)
    gradient = jax.grad(network.energy)(positions, 2.0)
    step = 1e-5
    for seed in range(3):
        direction = np.random.default_rng(seed + 1).normal(size=closed.shape)
        finite = (energy(positions + step * direction, 2.0) - energy(positions - step * direction, 2.0)) / (2 * step)
        np.testing.assert_allclose(float(jnp.sum(gradient * direction)), float(finite), rtol=1e-7)
    # Direct evaluation of the energy against an independent double loop over springs.
    x = np.asarray(positions)
    expected = sum(
        0.5 * 2.0 * w * (np.linalg.norm(x[i] - x[j]) - d0) ** 2
        for (i, j), d0, w in zip(network.pairs, np.asarray(network.rest_lengths_in_angstroms), np.asarray(network.spring_weights))
    )
    np.testing.assert_allclose(float(energy(positions, 2.0)), expected, rtol=1e-12)


def test_energy_invariant_under_rigid_motion(x64, adk_calpha):
    closed, opened = adk_calpha
    network = ElasticNetwork.from_positions(closed, 15.0)
    deformed = np.asarray(superpose(opened, closed))
    rotation = Rotation.from_rotvec([0.4, -1.1, 2.0]).as_matrix()
    moved = deformed @ rotation.T + np.array([12.0, -5.0, 30.0])
    e_deformed, e_moved = float(network.energy(deformed)), float(network.energy(moved))
    assert e_deformed > 10.0
    np.testing.assert_allclose(e_moved, e_deformed, rtol=1e-10)
    assert abs(float(network.energy(closed @ rotation.T + 3.0))) < 1e-18 + 1e-12


def test_disconnected_network_is_rejected(x64):
    two_blobs = np.concatenate([np.random.default_rng(0).normal(size=(20, 3)) * 3, 100 + np.random.default_rng(1).normal(size=(20, 3)) * 3])
    network = ElasticNetwork.from_positions(two_blobs, 15.0)
    with pytest.raises(InputError, match="disconnected"):
        normal_modes(network, 5)


def test_modes_are_double_precision_without_x64(adk_calpha):
    """With JAX in float32 mode the modes are still solved in float64 (only the returned arrays are float32)."""
    prody = pytest.importorskip("prody")
    prody.confProDy(verbosity="none")
    closed, _ = adk_calpha
    modes = normal_modes(ElasticNetwork.from_positions(closed, 15.0), 20)
    anm = prody.ANM()
    anm.buildHessian(closed, cutoff=15.0, gamma=1.0)
    anm.calcModes(20)
    np.testing.assert_allclose(np.asarray(modes.eigenvalues, dtype=float), anm.getEigvals(), rtol=1e-6)
    energy = eqx.filter_jit(ElasticNetwork.from_positions(closed, 15.0).energy)(jnp.asarray(closed) + 0.1)
    assert energy.dtype == jnp.float32 and float(energy) < 1e-3


def test_block_rigid_basis_spans_rigid_domain_motions(x64, adk_calpha):
    """Orthonormal, six fields a block (fewer for a block of one or two points), and it holds, to
    first order, a rigid rotation of any union of whole blocks about any point (a hinge motion):
    the infinitesimal rotation ω × (x − p) lies in the span to round-off. Against a motion of one
    bead inside a block (not rigid), the span misses most of it."""
    from atomicspi.structure import block_rigid_basis

    closed, opened = adk_calpha
    n = closed.shape[0]
    basis = block_rigid_basis(closed, 12).reshape(-1, 3 * n)
    n_blocks, last = divmod(n, 12)
    assert basis.shape[0] == 6 * n_blocks + {0: 0, 1: 3, 2: 5}.get(last, 6)
    np.testing.assert_allclose(basis @ basis.T, np.eye(basis.shape[0]), atol=1e-10)
    rng = np.random.default_rng(0)
    lid = np.zeros(n, dtype=bool)
    lid[120:156] = True  # blocks 10–12 (beads 120–155)
    omega, pivot = rng.normal(size=3), closed[120] + rng.normal(size=3)
    hinge = np.where(lid[:, None], np.cross(omega, closed - pivot), 0.0).ravel()
    np.testing.assert_allclose(basis.T @ (basis @ hinge), hinge, atol=1e-9 * np.linalg.norm(hinge))
    one_bead = np.zeros((n, 3))
    one_bead[125] = [1.0, 0.0, 0.0]
    assert np.linalg.norm(basis @ one_bead.ravel()) < 0.5
    # Blocks of one point: translations only.
    assert block_rigid_basis(closed[:5], 1).shape == (15, 5, 3)
    with pytest.raises(ValueError, match="points_per_block"):
        block_rigid_basis(closed, 0)
    # The closed → open difference of adenylate kinase (a hinge motion, far from linear) is mostly
    # in the span of 12-residue blocks, and far less in the lowest 30 elastic-network modes.
    difference = (opened - closed).ravel()
    block_share = np.sum((basis @ difference) ** 2) / np.sum(difference**2)
    modes = np.asarray(normal_modes(ElasticNetwork.from_positions(closed, 15.0), 30).vectors).reshape(30, -1)
    mode_share = np.sum((modes @ difference) ** 2) / np.sum(difference**2)
    print(f"closed → open squared norm in 12-residue blocks {block_share:.3f}, in 30 modes {mode_share:.3f}")
    assert block_share > 0.9 and mode_share < block_share


def test_block_rigid_motion_is_the_finite_rigid_motion_of_its_first_order_field(adk_calpha):
    """Given the first-order field t + ω × (r − c) of each block (large turns, up to ~70°),
    `BlockRigidMotion` moves every block by the finite motion c + t + R(ω)(r − c), R from scipy's
    rotation vectors; the linear field itself stretches the turned blocks by Å. Its derivative at
    zero is the identity on the blocks' span (to first order it is the field)."""
    from atomicspi.structure import BlockRigidMotion, block_rigid_basis

    closed, _ = adk_calpha
    n = closed.shape[0]
    blocks = BlockRigidMotion(closed, 12)
    block_of_point = np.asarray(blocks.block_of_point)
    assert blocks.n_blocks == -(-n // 12) and np.all(np.bincount(block_of_point)[:-1] == 12)
    rng = np.random.default_rng(3)
    omegas = rng.normal(size=(blocks.n_blocks, 3)) * 0.7
    translations = rng.normal(size=(blocks.n_blocks, 3)) * 3.0
    centroids = np.stack([closed[block_of_point == b].mean(axis=0) for b in range(blocks.n_blocks)])
    arms = closed - centroids[block_of_point]
    field = translations[block_of_point] + np.cross(omegas[block_of_point], arms)
    rotations, got_translations = blocks.transforms(jnp.asarray(field, dtype=jnp.float32))
    np.testing.assert_allclose(np.asarray(got_translations), translations, atol=1e-4)
    np.testing.assert_allclose(np.asarray(rotations), Rotation.from_rotvec(omegas).as_matrix(), atol=1e-5)
    moved = np.asarray(blocks.move(jnp.asarray(closed, dtype=jnp.float32), blocks.block_of_point, rotations, got_translations))
    expected = centroids[block_of_point] + translations[block_of_point] + np.einsum(
        "nij,nj->ni", Rotation.from_rotvec(omegas[block_of_point]).as_matrix(), arms
    )
    np.testing.assert_allclose(moved, expected, atol=1e-3)
    assert np.max(np.linalg.norm(closed + field - expected, axis=1)) > 2.0  # what the linear field would do

    def displacement(u):
        return blocks.move(blocks.positions_in_angstroms, blocks.block_of_point, *blocks.transforms(u)) - blocks.positions_in_angstroms

    direction = jnp.asarray(block_rigid_basis(closed, 12)[17], dtype=jnp.float32)
    tangent = jax.jvp(displacement, (jnp.zeros((n, 3)),), (direction,))[1]
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(direction), atol=1e-5)


def test_bead_turn_basis_turns_each_residue_about_its_calpha(x64, example_structure_path):
    """`bead_turn_basis`: orthonormal, at most three fields a residue, zero on every Cα and on every
    other residue's atoms; it holds the infinitesimal rotation of any residue's atoms about its Cα to
    round-off, and finite per-residue rotations (a different one for every residue, as when the
    backbone bends inside a rigid block) to second order in the angle."""
    from scipy.spatial.transform import Rotation

    from atomicspi.structure import bead_turn_basis

    structure = load_structure(example_structure_path)
    atoms = structure.positions_in_angstroms
    owner = np.asarray(structure.residue_indices)
    calpha = np.array([a.index for a in structure.topology.atoms if a.name == "CA"])
    beads = atoms[calpha]
    basis = bead_turn_basis(beads, atoms, owner)
    n_residues = beads.shape[0]
    assert n_residues * 2 <= basis.shape[0] <= n_residues * 3
    flat = basis.reshape(basis.shape[0], -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(basis.shape[0]), atol=1e-10)
    assert np.abs(basis[:, calpha]).max() == 0.0
    supports = [np.unique(owner[np.any(np.abs(field) > 0, axis=1)]) for field in basis]
    assert all(len(residues) == 1 for residues in supports)

    rng = np.random.default_rng(3)
    residue = 57
    omega = rng.normal(size=3)
    members = owner == residue
    turn = np.zeros_like(atoms)
    turn[members] = np.cross(omega, atoms[members] - beads[residue])
    np.testing.assert_allclose(flat.T @ (flat @ turn.ravel()), turn.ravel(), atol=1e-9 * np.linalg.norm(turn))

    angles = rng.normal(scale=0.05, size=(n_residues, 3))  # about 5° each
    rotations = Rotation.from_rotvec(angles).as_matrix()
    arms = atoms - beads[owner]
    finite = np.einsum("aij,aj->ai", rotations[owner], arms) - arms
    residual = finite.ravel() - flat.T @ (flat @ finite.ravel())
    print(f"per-residue 5° turns: {np.linalg.norm(residual) / np.linalg.norm(finite):.4f} of the field outside the span")
    assert np.linalg.norm(residual) < 0.06 * np.linalg.norm(finite)
    # With the bead fixed a turn keeps every atom's distance to its Cα to first order.
    np.testing.assert_allclose(np.sum(basis * arms[None], axis=-1), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="atom_to_bead"):
        bead_turn_basis(beads, atoms, owner[:-1])
