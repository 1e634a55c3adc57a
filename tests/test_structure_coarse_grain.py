"""Coarse graining (Cα and centroid beads), contact lists, and beads → atoms with geometry penalties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from atomicspi.structure import (
    ElasticNetwork,
    apply_domain_motion,
    bond_length_penalty,
    bonds_from_topology,
    calpha_beads,
    centroid_beads,
    clash_candidate_pairs,
    clash_penalty,
    contact_pairs,
    displace_atoms,
    domains_from_residue_ranges,
    load_structure,
    move_atoms_with_domains,
    normal_modes,
)


@pytest.fixture(scope="module")
def adk(example_structure_path):
    return load_structure(example_structure_path)


def test_calpha_and_centroid_beads(adk):
    beads = calpha_beads(adk)
    np.testing.assert_array_equal(beads.bead_positions_in_angstroms, adk.calpha().positions_in_angstroms)
    np.testing.assert_array_equal(beads.bead_residue_numbers, np.arange(1, 215))
    residues = list(adk.topology.residues)
    for atom in list(adk.topology.atoms)[::97]:
        bead = beads.atom_to_bead[atom.index]
        assert residues[beads.bead_residue_indices[bead]].index == atom.residue.index
    centroids = centroid_beads(adk)
    for residue in residues[::23]:
        indices = [atom.index for atom in residue.atoms]
        np.testing.assert_allclose(centroids.bead_positions_in_angstroms[residue.index], adk.positions_in_angstroms[indices].mean(0), atol=1e-12)
        assert np.all(centroids.atom_to_bead[indices] == residue.index)
    np.testing.assert_array_equal(np.bincount(centroids.atom_to_bead), [residue.n_atoms for residue in residues])


def test_contact_pairs_match_brute_force(adk):
    x = adk.calpha().positions_in_angstroms
    pairs = contact_pairs(x, 10.0)
    distances = squareform(pdist(x))
    i, j = np.nonzero(np.triu(distances <= 10.0, k=1))
    np.testing.assert_array_equal(pairs, np.stack([i, j], axis=1))


def test_atoms_follow_beads_without_breaking_residues(x64, adk):
    beads = calpha_beads(adk)
    network = ElasticNetwork.from_positions(beads.bead_positions_in_angstroms, 15.0)
    modes = normal_modes(network, 5)
    bead_displacement = modes.displacements(jnp.array([6.0, -4.0, 3.0, 2.0, -2.0]))
    atoms = np.asarray(displace_atoms(adk.positions_in_angstroms, beads.atom_to_bead, bead_displacement))
    calpha_indices = adk.topology.select("name CA")
    np.testing.assert_allclose(atoms[calpha_indices], beads.bead_positions_in_angstroms + np.asarray(bead_displacement), atol=1e-12)
    bonds = bonds_from_topology(adk)
    reference_lengths = np.linalg.norm(adk.positions_in_angstroms[bonds[:, 0]] - adk.positions_in_angstroms[bonds[:, 1]], axis=1)
    new_lengths = np.linalg.norm(atoms[bonds[:, 0]] - atoms[bonds[:, 1]], axis=1)
    same_residue = adk.residue_indices[bonds[:, 0]] == adk.residue_indices[bonds[:, 1]]
    np.testing.assert_allclose(new_lengths[same_residue], reference_lengths[same_residue], atol=1e-10)
    # Bonds between residues change length by at most the relative displacement of their beads.
    relative = np.linalg.norm(np.asarray(bead_displacement)[beads.atom_to_bead[bonds[:, 0]]] - np.asarray(bead_displacement)[beads.atom_to_bead[bonds[:, 1]]], axis=1)
    assert np.all(np.abs(new_lengths - reference_lengths) <= relative + 1e-12)
    assert np.any(~same_residue & (relative > 0.05))
    penalty = float(bond_length_penalty(atoms, bonds, reference_lengths))
    np.testing.assert_allclose(penalty, np.sum((new_lengths - reference_lengths) ** 2), rtol=1e-8)


def test_atoms_move_rigidly_with_their_domain(x64, adk):
    beads = calpha_beads(adk)
    assignment = domains_from_residue_ranges(beads.bead_residue_numbers, [[(1, 29), (60, 121), (160, 214)], [(30, 59)], [(122, 159)]])
    rng = np.random.default_rng(0)
    rotations, translations = 0.2 * rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    atoms = np.asarray(move_atoms_with_domains(adk.positions_in_angstroms, beads.atom_to_bead, beads.bead_positions_in_angstroms, assignment, rotations, translations))
    moved_beads = np.asarray(apply_domain_motion(beads.bead_positions_in_angstroms, assignment, rotations, translations))
    np.testing.assert_allclose(atoms[adk.topology.select("name CA")], moved_beads, atol=1e-10)
    atom_domain = assignment[beads.atom_to_bead]
    for domain in range(3):
        inside = np.flatnonzero(atom_domain == domain)[::5]
        np.testing.assert_allclose(pdist(atoms[inside]), pdist(adk.positions_in_angstroms[inside]), atol=1e-9)


def test_penalty_gradients_and_clashes(x64, adk):
    heavy = adk.heavy_atoms()
    x = heavy.positions_in_angstroms
    bonds = bonds_from_topology(heavy)
    lengths = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
    candidates = clash_candidate_pairs(x, bonds, 6.0)
    assert float(bond_length_penalty(x, bonds, lengths)) < 1e-15
    # Independent clash count at the reference: non-bonded heavy-atom pairs closer than 2.6 Å, excluding 1–2 and 1–3.
    adjacency = np.zeros((len(x), len(x)), bool)
    adjacency[bonds[:, 0], bonds[:, 1]] = adjacency[bonds[:, 1], bonds[:, 0]] = True
    within_two = adjacency | (adjacency.astype(float) @ adjacency.astype(float) > 0)
    distances = squareform(pdist(x))
    close = np.triu((distances < 2.6) & ~within_two, k=1)
    expected = np.sum((2.6 - distances[close]) ** 2)
    np.testing.assert_allclose(float(clash_penalty(x, candidates, 2.6)), expected, rtol=1e-9)
    # Push one atom onto another non-bonded atom: the penalty rises and its gradient matches finite differences.
    i, j = candidates[len(candidates) // 2]
    y = x.copy()
    y[i] = x[j] + np.array([0.5, 0.2, -0.3])
    def penalty(positions):
        return clash_penalty(positions, candidates, 2.6) + bond_length_penalty(positions, bonds, lengths)

    gradient = np.asarray(jax.grad(penalty)(jnp.asarray(y)))
    direction = np.random.default_rng(0).normal(size=y.shape)
    step = 1e-6
    finite = (float(penalty(y + step * direction)) - float(penalty(y - step * direction))) / (2 * step)
    np.testing.assert_allclose(np.sum(gradient * direction), finite, rtol=1e-6)
    assert float(clash_penalty(y, candidates, 2.6)) > expected + 3.0
