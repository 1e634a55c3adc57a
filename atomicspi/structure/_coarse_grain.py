"""Coarse graining: one bead per residue (Cα or residue centroid) and the contact graph between beads."""

from __future__ import annotations

import equinox as eqx
import numpy as np
from jaxtyping import Float, Int
from scipy.spatial import cKDTree

from .._errors import InputError
from ._atomic_model import AtomicModel

__all__ = ["CoarseGraining", "calpha_beads", "centroid_beads", "contact_pairs"]


class CoarseGraining(eqx.Module):
    """Beads standing for residues, and which bead every atom of the model belongs to.

    **Fields:**

    - `bead_positions_in_angstroms`: `(n_beads, 3)` bead coordinates in Å.
    - `atom_to_bead`: `(n_atoms,)` index of the bead each atom of the full model follows.
    - `bead_residue_indices`: `(n_beads,)` 0-based topology index of each bead's residue.
    - `bead_residue_numbers`: `(n_beads,)` residue numbers as written in the file (PDB resSeq).
    - `bead_chain_indices`: `(n_beads,)` 0-based chain index of each bead.

    Summing a per-atom quantity (mass, form factor) over the atoms of a bead is
    `jax.ops.segment_sum(values, atom_to_bead, n_beads)`.
    """

    bead_positions_in_angstroms: Float[np.ndarray, "n_beads 3"]
    atom_to_bead: Int[np.ndarray, " n_atoms"]
    bead_residue_indices: Int[np.ndarray, " n_beads"]
    bead_residue_numbers: Int[np.ndarray, " n_beads"]
    bead_chain_indices: Int[np.ndarray, " n_beads"]

    @property
    def n_beads(self) -> int:
        return int(self.bead_positions_in_angstroms.shape[0])


def _residue_numbers(model: AtomicModel) -> np.ndarray:
    return np.array([residue.resSeq for residue in model.topology.residues], dtype=int)


def _assign_atoms(model: AtomicModel, bead_residue_indices: np.ndarray, bead_positions: np.ndarray) -> np.ndarray:
    """Atoms of a bead's residue follow that bead; atoms of residues without a bead (ligands, water,
    residues without Cα) follow the nearest bead."""
    residue_to_bead = np.full(model.n_residues, -1, dtype=int)
    residue_to_bead[bead_residue_indices] = np.arange(bead_residue_indices.size)
    atom_to_bead = residue_to_bead[model.residue_indices]
    orphans = np.flatnonzero(atom_to_bead < 0)
    if orphans.size:
        _, nearest = cKDTree(bead_positions).query(model.positions_in_angstroms[orphans])
        atom_to_bead[orphans] = nearest
    return atom_to_bead


def calpha_beads(model: AtomicModel) -> CoarseGraining:
    """One bead at the Cα of every amino-acid residue.

    **Arguments:**

    - `model`: the all-atom (or heavy-atom) model.

    **Returns:** a `CoarseGraining` whose beads are the Cα atoms in file order.
    """
    calpha_indices = model.topology.select("name CA and protein")
    if calpha_indices.size == 0:
        raise InputError("model: no protein Cα atoms (atom name CA) to coarse-grain")
    bead_residue_indices = model.residue_indices[calpha_indices]
    bead_positions = model.positions_in_angstroms[calpha_indices]
    return CoarseGraining(
        bead_positions_in_angstroms=bead_positions,
        atom_to_bead=_assign_atoms(model, bead_residue_indices, bead_positions),
        bead_residue_indices=bead_residue_indices,
        bead_residue_numbers=_residue_numbers(model)[bead_residue_indices],
        bead_chain_indices=model.chain_indices[calpha_indices],
    )


def centroid_beads(model: AtomicModel, mass_weighted: bool = False) -> CoarseGraining:
    """One bead per residue at the centroid of its atoms (every residue of the model, ligands included).

    **Arguments:**

    - `model`: the atomic model.
    - `mass_weighted`: weight atoms by their atomic number (≈ mass/2) instead of equally.

    **Returns:** a `CoarseGraining` with one bead per residue, in residue order.
    """
    n_residues = model.n_residues
    weights = model.atomic_numbers.astype(float) if mass_weighted else np.ones(model.n_atoms)
    totals = np.bincount(model.residue_indices, weights=weights, minlength=n_residues)
    present = np.flatnonzero(totals > 0)
    sums = np.stack(
        [np.bincount(model.residue_indices, weights=weights * model.positions_in_angstroms[:, axis], minlength=n_residues) for axis in range(3)],
        axis=1,
    )
    bead_positions = sums[present] / totals[present, None]
    chain_of_residue = np.zeros(n_residues, dtype=int)
    chain_of_residue[model.residue_indices] = model.chain_indices
    return CoarseGraining(
        bead_positions_in_angstroms=bead_positions,
        atom_to_bead=_assign_atoms(model, present, bead_positions),
        bead_residue_indices=present,
        bead_residue_numbers=_residue_numbers(model)[present],
        bead_chain_indices=chain_of_residue[present],
    )


def contact_pairs(positions_in_angstroms: Float[np.ndarray, "n_beads 3"], cutoff_in_angstroms: float) -> Int[np.ndarray, "n_contacts 2"]:
    """All bead pairs closer than a cutoff (distance ≤ cutoff), from a k-d tree.

    **Arguments:**

    - `positions_in_angstroms`: `(n_beads, 3)` reference coordinates (a concrete array: contacts are
      fixed at the reference structure, not traced).
    - `cutoff_in_angstroms`: contact cutoff in Å.

    **Returns:** `(n_contacts, 2)` int array of pairs `(i, j)` with `i < j`, sorted lexicographically.
    """
    positions = np.asarray(positions_in_angstroms, dtype=float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions_in_angstroms: expected shape (n_beads, 3), got {positions.shape}")
    if not cutoff_in_angstroms > 0:
        raise InputError(f"cutoff_in_angstroms: must be positive, got {cutoff_in_angstroms}")
    pairs = cKDTree(positions).query_pairs(float(cutoff_in_angstroms), output_type="ndarray").astype(np.int64)
    pairs = np.sort(pairs, axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
