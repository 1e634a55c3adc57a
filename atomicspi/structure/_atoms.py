"""From beads back to atoms (every atom follows its residue's bead), and geometry penalties on atoms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jaxtyping import Array, Float, Int

from ._atomic_model import AtomicModel
from ._coarse_grain import contact_pairs
from ._domains import apply_domain_motion, domain_centroids

__all__ = [
    "displace_atoms",
    "move_atoms_with_domains",
    "bonds_from_topology",
    "bond_length_penalty",
    "clash_candidate_pairs",
    "clash_penalty",
]

_SAFE_SQUARED_DISTANCE_IN_ANGSTROMS_SQUARED = 1e-12


def _distances(positions, pairs):
    differences = positions[pairs[:, 0]] - positions[pairs[:, 1]]
    # The small offset keeps the gradient finite for coincident atoms (the worst clash).
    return jnp.sqrt(jnp.sum(differences * differences, axis=-1) + _SAFE_SQUARED_DISTANCE_IN_ANGSTROMS_SQUARED)


def displace_atoms(
    reference_atom_positions_in_angstroms: Float[Array, "n_atoms 3"],
    atom_to_bead: Int[Array, " n_atoms"],
    bead_displacements_in_angstroms: Float[Array, "n_beads 3"],
) -> Float[Array, "n_atoms 3"]:
    """Every atom moves with its bead: x_atom = x⁰_atom + u_bead(atom).

    Bonds within a residue keep their length exactly; bonds between residues stretch only by the
    difference of neighbouring bead displacements, which the elastic network keeps small.

    **Arguments:**

    - `reference_atom_positions_in_angstroms`: `(n_atoms, 3)` reference atom coordinates.
    - `atom_to_bead`: `(n_atoms,)` bead of every atom (`CoarseGraining.atom_to_bead`).
    - `bead_displacements_in_angstroms`: `(n_beads, 3)` bead displacements (e.g. `NormalModes.displacements`).

    **Returns:** `(n_atoms, 3)` displaced atom coordinates.
    """
    return jnp.asarray(reference_atom_positions_in_angstroms) + jnp.asarray(bead_displacements_in_angstroms)[atom_to_bead]


def move_atoms_with_domains(
    reference_atom_positions_in_angstroms: Float[Array, "n_atoms 3"],
    atom_to_bead: Int[Array, " n_atoms"],
    reference_bead_positions_in_angstroms: Float[Array, "n_beads 3"],
    bead_domain_assignment: Int[Array, " n_beads"],
    rotation_vectors: Float[Array, "n_domains 3"],
    translations_in_angstroms: Float[Array, "n_domains 3"],
) -> Float[Array, "n_atoms 3"]:
    """Atoms move rigidly with their bead's domain, about the same centre as the beads.

    **Arguments:**

    - `reference_atom_positions_in_angstroms`: `(n_atoms, 3)` reference atom coordinates.
    - `atom_to_bead`: `(n_atoms,)` bead of every atom.
    - `reference_bead_positions_in_angstroms`: `(n_beads, 3)` reference beads (define the centroids).
    - `bead_domain_assignment`: `(n_beads,)` domain of every bead.
    - `rotation_vectors`: `(n_domains, 3)` axis-angle rotations in radians.
    - `translations_in_angstroms`: `(n_domains, 3)` translations.

    **Returns:** `(n_atoms, 3)` moved atoms, consistent with `apply_domain_motion` on the beads.
    """
    centroids = domain_centroids(jnp.asarray(reference_bead_positions_in_angstroms), bead_domain_assignment, rotation_vectors.shape[0])
    atom_domains = jnp.asarray(bead_domain_assignment)[atom_to_bead]
    return apply_domain_motion(reference_atom_positions_in_angstroms, atom_domains, rotation_vectors, translations_in_angstroms, centroids)


def bonds_from_topology(model: AtomicModel) -> Int[np.ndarray, "n_bonds 2"]:
    """The covalent bonds of a model's topology (mdtraj's standard residue templates and CONECT records).

    **Arguments:**

    - `model`: the `AtomicModel`.

    **Returns:** `(n_bonds, 2)` atom index pairs.
    """
    return np.array([[a.index, b.index] for a, b in model.topology.bonds], dtype=np.int64).reshape(-1, 2)


def bond_length_penalty(
    positions_in_angstroms: Float[Array, "n_atoms 3"],
    bonds: Int[Array, "n_bonds 2"],
    reference_bond_lengths_in_angstroms: Float[Array, " n_bonds"],
) -> Float[Array, ""]:
    """Sum of squared bond-length deviations, Σ (|xᵢ − xⱼ| − b⁰)², in Å².

    **Arguments:**

    - `positions_in_angstroms`: `(n_atoms, 3)` coordinates.
    - `bonds`: `(n_bonds, 2)` bonded atom pairs (`bonds_from_topology`).
    - `reference_bond_lengths_in_angstroms`: `(n_bonds,)` ideal or reference lengths.

    **Returns:** the penalty in Å².
    """
    stretch = _distances(jnp.asarray(positions_in_angstroms), bonds) - reference_bond_lengths_in_angstroms
    return jnp.sum(stretch * stretch)


def clash_candidate_pairs(
    positions_in_angstroms: Float[np.ndarray, "n_atoms 3"],
    bonds: Int[np.ndarray, "n_bonds 2"],
    cutoff_in_angstroms: float = 6.0,
) -> Int[np.ndarray, "n_pairs 2"]:
    """Atom pairs within a cutoff at the given (reference) positions that are neither bonded nor
    share a bonded neighbour (1–2 and 1–3 pairs are excluded).

    **Arguments:**

    - `positions_in_angstroms`: `(n_atoms, 3)` reference coordinates (concrete).
    - `bonds`: `(n_bonds, 2)` bonds.
    - `cutoff_in_angstroms`: neighbour-list cutoff; choose it larger than the expected displacements.

    **Returns:** `(n_pairs, 2)` candidate pairs for `clash_penalty`.
    """
    positions = np.asarray(positions_in_angstroms, dtype=float)
    n = positions.shape[0]
    pairs = contact_pairs(positions, cutoff_in_angstroms)
    bonds = np.asarray(bonds)
    graph = scipy.sparse.coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n)).tocsr()
    graph = graph + graph.T
    within_two_bonds = (graph + graph @ graph).tocsr()
    excluded = np.asarray(within_two_bonds[pairs[:, 0], pairs[:, 1]]).ravel() > 0
    return pairs[~excluded]


def clash_penalty(
    positions_in_angstroms: Float[Array, "n_atoms 3"],
    candidate_pairs: Int[Array, "n_pairs 2"],
    minimum_distance_in_angstroms: float | Array = 3.0,
) -> Float[Array, ""]:
    """Sum of squared overlaps, Σ max(0, d_min − |xᵢ − xⱼ|)², over candidate non-bonded pairs, in Å².

    **Arguments:**

    - `positions_in_angstroms`: `(n_atoms, 3)` coordinates.
    - `candidate_pairs`: `(n_pairs, 2)` pairs to check (`clash_candidate_pairs`).
    - `minimum_distance_in_angstroms`: closest allowed approach (e.g. 3 Å for heavy atoms, 4 Å for Cα).

    **Returns:** the penalty in Å² (zero when no pair is closer than the minimum).
    """
    overlap = jnp.maximum(minimum_distance_in_angstroms - _distances(jnp.asarray(positions_in_angstroms), candidate_pairs), 0.0)
    return jnp.sum(overlap * overlap)
