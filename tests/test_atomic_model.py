import gzip

import numpy as np
import pytest

from atomicspi.io import InputError
from atomicspi.structure import load_structure


def _parse_pdb_columns(path):
    """Independent fixed-column PDB parse: coordinates (Å), names, B-factors."""
    rows = [line for line in gzip.open(path, "rt") if line.startswith(("ATOM", "HETATM"))]
    xyz = np.array([[float(r[30:38]), float(r[38:46]), float(r[46:54])] for r in rows])
    names = [r[12:16].strip() for r in rows]
    b = np.array([float(r[60:66]) for r in rows])
    return xyz, names, b


def test_positions_b_factors_and_elements_match_the_file(example_structure_path):
    model = load_structure(example_structure_path)
    xyz, names, b = _parse_pdb_columns(example_structure_path)
    np.testing.assert_allclose(model.positions_in_angstroms, xyz, atol=2e-3)
    np.testing.assert_allclose(model.b_factors_in_angstroms_squared, b, atol=1e-3)
    # The file has no element column: CHARMM names like HG1, CD, NE must not become Hg, Cd, Ne.
    expected = np.array([{"H": 1, "C": 6, "N": 7, "O": 8, "S": 16}[n.lstrip("0123456789")[0]] for n in names])
    np.testing.assert_array_equal(model.atomic_numbers, expected)
    assert set(np.unique(model.atomic_numbers)) == {1, 6, 7, 8, 16}


def test_save_pdb_keeps_b_factors_mdtraj_would_drop_or_refuse(example_structure_path, tmp_path):
    """`AtomicModel.save_pdb` round-trips positions, elements and B-factors, including the
    crystal B-factors of 100 Å² or more that mdtraj's writer refuses (4AKE has them)."""
    model = load_structure(example_structure_path)
    assert model.b_factors_in_angstroms_squared.max() >= 100.0
    model.save_pdb(tmp_path / "saved.pdb")
    rows = [line for line in (tmp_path / "saved.pdb").read_text().splitlines() if line.startswith(("ATOM", "HETATM"))]
    np.testing.assert_allclose([float(r[60:66]) for r in rows], model.b_factors_in_angstroms_squared, atol=5e-3)
    again = load_structure(tmp_path / "saved.pdb")
    np.testing.assert_allclose(again.b_factors_in_angstroms_squared, model.b_factors_in_angstroms_squared, atol=5e-3)
    np.testing.assert_allclose(again.positions_in_angstroms, model.positions_in_angstroms, atol=2e-3)
    np.testing.assert_array_equal(again.atomic_numbers, model.atomic_numbers)


def test_selections(example_structure_path):
    model = load_structure(example_structure_path)
    ca = model.calpha()
    assert ca.n_atoms == model.n_residues == 214
    assert np.all(ca.atomic_numbers == 6)
    heavy = model.heavy_atoms()
    assert heavy.n_atoms == np.count_nonzero(model.atomic_numbers != 1)
    names = [atom.name for atom in model.topology.atoms]
    assert model.backbone().n_atoms == sum(name in ("N", "CA", "C", "O") for name in names)
    np.testing.assert_array_equal(np.unique(ca.residue_indices), np.arange(214))


def test_round_trip_through_mdtraj(example_structure_path, tmp_path):
    model = load_structure(example_structure_path).calpha()
    out = tmp_path / "ca.pdb"
    model.to_mdtraj().save_pdb(str(out))
    again = load_structure(out)
    np.testing.assert_allclose(again.positions_in_angstroms, model.positions_in_angstroms, atol=2e-3)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_structure(tmp_path / "nope.pdb")
