"""Atomic models read through mdtraj: positions in Å, atomic numbers, residues, chains, B-factors."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float, Int

from .._errors import InputError
from .._quiet import quiet_c_stdout

if TYPE_CHECKING:
    import mdtraj

__all__ = ["AtomicModel", "load_structure", "load_trajectory_positions"]

_STANDARD_ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16}
_PROTEIN_NUCLEIC = {
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "HSD", "HSE", "HSP", "HIE",
    "HID", "HIP", "ILE", "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
    "CYX", "ASH", "GLH", "LYN", "A", "C", "G", "U", "T", "DA", "DC", "DG", "DT", "DU", "ADE",
    "CYT", "GUA", "URA", "THY", "HOH", "WAT", "TIP3", "SOL",
}


@dataclasses.dataclass(frozen=True)
class AtomicModel:
    """An atomic model: coordinates and per-atom physical attributes, plus the mdtraj topology.

    **Fields:**

    - `positions_in_angstroms`: `(n_atoms, 3)` Cartesian coordinates in Å (mdtraj stores nm).
    - `atomic_numbers`: `(n_atoms,)` element numbers Z (hydrogen = 1).
    - `b_factors_in_angstroms_squared`: `(n_atoms,)` isotropic B-factors (0 where the file has none).
    - `residue_indices`: `(n_atoms,)` 0-based index of each atom's residue in the topology.
    - `chain_indices`: `(n_atoms,)` 0-based index of each atom's chain.
    - `topology`: the `mdtraj.Topology` of these atoms.
    """

    positions_in_angstroms: Float[np.ndarray, "n_atoms 3"]
    atomic_numbers: Int[np.ndarray, " n_atoms"]
    b_factors_in_angstroms_squared: Float[np.ndarray, " n_atoms"]
    residue_indices: Int[np.ndarray, " n_atoms"]
    chain_indices: Int[np.ndarray, " n_atoms"]
    topology: mdtraj.Topology

    @property
    def n_atoms(self) -> int:
        return int(self.positions_in_angstroms.shape[0])

    @property
    def n_residues(self) -> int:
        return int(self.residue_indices.max()) + 1 if self.n_atoms else 0

    def select(self, selection: str) -> "AtomicModel":
        """A sub-model from an mdtraj selection string (`"name CA"`, `"backbone"`, `"not element H"`)."""
        indices = self.topology.select(selection)
        return self.take(indices)

    def take(self, atom_indices) -> "AtomicModel":
        """A sub-model with the given atoms, in the given order; residue and chain indices renumbered."""
        atom_indices = np.asarray(atom_indices, dtype=int)
        topology = self.topology.subset(atom_indices)
        _, residue_indices = np.unique(self.residue_indices[atom_indices], return_inverse=True)
        _, chain_indices = np.unique(self.chain_indices[atom_indices], return_inverse=True)
        return AtomicModel(
            positions_in_angstroms=self.positions_in_angstroms[atom_indices],
            atomic_numbers=self.atomic_numbers[atom_indices],
            b_factors_in_angstroms_squared=self.b_factors_in_angstroms_squared[atom_indices],
            residue_indices=residue_indices.astype(int),
            chain_indices=chain_indices.astype(int),
            topology=topology,
        )

    def calpha(self) -> "AtomicModel":
        """The Cα atoms (one bead per amino-acid residue)."""
        return self.select("name CA and protein")

    def heavy_atoms(self) -> "AtomicModel":
        """All atoms but hydrogens."""
        return self.take(np.flatnonzero(self.atomic_numbers != 1))

    def backbone(self) -> "AtomicModel":
        """Protein backbone atoms N, CA, C, O."""
        return self.select("backbone")

    def with_positions(self, positions_in_angstroms) -> "AtomicModel":
        """The same atoms at new positions (Å)."""
        positions = np.asarray(positions_in_angstroms, dtype=float)
        if positions.shape != self.positions_in_angstroms.shape:
            raise ValueError(
                f"positions have shape {positions.shape}, expected {self.positions_in_angstroms.shape}"
            )
        return dataclasses.replace(self, positions_in_angstroms=positions)

    def to_mdtraj(self, positions_in_angstroms=None):
        """An `mdtraj.Trajectory`; `positions_in_angstroms` may be `(n_atoms, 3)` or `(n_frames, n_atoms, 3)`."""
        import mdtraj

        xyz = self.positions_in_angstroms if positions_in_angstroms is None else positions_in_angstroms
        xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, self.n_atoms, 3) / 10.0
        return mdtraj.Trajectory(xyz, self.topology)

    def save_pdb(self, path: str | os.PathLike) -> None:
        """Write a PDB file with the B-factors (`load_structure` reads them back).

        mdtraj writes the atoms but refuses B-factors of 100 Å² or more (crystal structures have
        them), so its file is written first and the B-factor columns (61-66) are filled in after.
        """
        self.to_mdtraj().save_pdb(str(path))
        values = iter(np.clip(self.b_factors_in_angstroms_squared, -99.99, 999.99))
        lines = pathlib.Path(path).read_text().splitlines(keepends=True)
        for index, line in enumerate(lines):
            if line.startswith(("ATOM  ", "HETATM")):
                lines[index] = f"{line[:60].ljust(60)}{next(values):6.2f}{line[66:]}"
        pathlib.Path(path).write_text("".join(lines))


def _element_number(atom) -> int:
    """Atomic number; for standard residues, taken from the atom name (PDB files written by CHARMM
    and MD tools often lack the element column, and mdtraj then guesses `HG1` as mercury)."""
    if atom.residue.name.upper() in _PROTEIN_NUCLEIC:
        letters = re.sub(r"[^A-Za-z]", "", atom.name)
        if letters and letters[0].upper() in _STANDARD_ELEMENTS:
            return _STANDARD_ELEMENTS[letters[0].upper()]
    if atom.element is None or atom.element.atomic_number in (None, 0):
        raise InputError(f"cannot tell the element of atom {atom.name} in residue {atom.residue}")
    return int(atom.element.atomic_number)


def _read_b_factors(path: str, n_atoms: int) -> np.ndarray:
    lower = path.lower()
    if not any(lower.endswith(ext) for ext in (".pdb", ".pdb.gz", ".ent", ".cif", ".cif.gz", ".mmcif")):
        return np.zeros(n_atoms)
    import gemmi

    structure = gemmi.read_structure(path)
    values = [atom.b_iso for chain in structure[0] for residue in chain for atom in residue]
    if len(values) != n_atoms:
        return np.zeros(n_atoms)
    return np.asarray(values, dtype=float)


def load_structure(path: str | os.PathLike, frame: int = 0, topology: str | None = None) -> AtomicModel:
    """Read an atomic model with mdtraj (PDB, mmCIF, GRO, or one frame of a trajectory).

    **Arguments:**

    - `path`: structure or trajectory file.
    - `frame`: which frame of a multi-frame file.
    - `topology`: topology file for trajectory formats without one (DCD, XTC).

    **Returns:** an `AtomicModel` with positions in Å and B-factors from the file where it has them.
    """
    import mdtraj

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: structure file not found")
    try:
        kwargs = {"top": topology} if topology is not None else {}
        with quiet_c_stdout():  # mdtraj's DCD reader prints two lines per file
            trajectory = mdtraj.load_frame(path, frame, **kwargs) if frame else mdtraj.load(path, **kwargs)[0]
    except InputError:
        raise
    except Exception as error:  # mdtraj raises many types for bad files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot read structure ({first_line})") from None
    top = trajectory.topology
    if top.n_atoms == 0:
        raise InputError(f"{path}: structure has no atoms")
    atomic_numbers = np.array([_element_number(atom) for atom in top.atoms], dtype=int)
    residue_indices = np.array([atom.residue.index for atom in top.atoms], dtype=int)
    chain_indices = np.array([atom.residue.chain.index for atom in top.atoms], dtype=int)
    return AtomicModel(
        positions_in_angstroms=trajectory.xyz[0].astype(float) * 10.0,
        atomic_numbers=atomic_numbers,
        b_factors_in_angstroms_squared=_read_b_factors(path, top.n_atoms),
        residue_indices=residue_indices,
        chain_indices=chain_indices,
        topology=top,
    )


def load_trajectory_positions(path: str | os.PathLike, topology: str | None = None) -> Float[np.ndarray, "n_frames n_atoms 3"]:
    """All frames of a trajectory (DCD, XTC, multi-model PDB) as positions in Å."""
    import mdtraj

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: trajectory file not found")
    kwargs = {"top": topology} if topology is not None else {}
    with quiet_c_stdout():  # mdtraj's DCD reader prints two lines per file
        return mdtraj.load(path, **kwargs).xyz.astype(float) * 10.0
