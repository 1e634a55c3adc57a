"""Bounded output (GitHub issue 14, part 3): the output trajectories follow the settings and an output
budget, whatever the number of particles, and `posterior_ensemble.dcd` is a bounded sample of the
aggregated posterior whose draws are the ones `run.json` names."""

import json
import os

import mdtraj
import numpy as np
import pytest
from mdtraj.formats import DCDTrajectoryFile

from atomicspi._outputs import dcd_size_in_bytes, output_plan
from atomicspi._pipeline import run_inference
from atomicspi.io import load_config
from atomicspi.structure import load_structure

N_PARTICLES, SAMPLES, ENSEMBLE = 12, 5, 17


@pytest.mark.parametrize(("n_frames", "n_atoms"), [(1, 1), (7, 214), (300, 3341)])
def test_dcd_size_matches_the_files_mdtraj_writes(tmp_path, n_frames, n_atoms):
    path = tmp_path / "x.dcd"
    with DCDTrajectoryFile(str(path), "w") as handle:
        handle.write(np.zeros((n_frames, n_atoms, 3), np.float32))
    assert os.path.getsize(path) == dcd_size_in_bytes(n_frames, n_atoms)


def test_the_automatic_atoms_and_the_samples_follow_the_budget(example_structure_path):
    structure = load_structure(example_structure_path)  # AdK: 3,341 atoms, 1,656 heavy, 214 C-alpha
    n_heavy = int(np.sum(structure.atomic_numbers != 1))
    small = output_plan(structure, 2000, 8, output_atoms="auto", budget_in_gigabytes=4.0, ensemble_size=1000)
    assert (small.atom_selection, len(small.atom_indices), small.write_samples) == ("heavy", n_heavy, True)
    assert small.sizes_in_bytes["ensemble_samples.dcd"] == dcd_size_in_bytes(16000, n_heavy)
    # 200,000 particles: heavy atoms would be 36 GB, C-alpha draws 4.1 GB: only the means (0.5 GB) and
    # the bounded ensemble are written, and the plan says why.
    large = output_plan(structure, 200_000, 8, output_atoms="auto", budget_in_gigabytes=4.0, ensemble_size=1000)
    assert (large.atom_selection, len(large.atom_indices), large.write_samples) == ("calpha", 214, False)
    assert sum(large.sizes_in_bytes.values()) < 0.6e9
    assert "ensemble_samples.dcd not written" in large.note and "output_budget_in_gigabytes" in large.note
    # An explicit choice of atoms is kept; no budget writes every draw.
    explicit = output_plan(structure, 200_000, 8, output_atoms="all", budget_in_gigabytes=None, ensemble_size=1000)
    assert (explicit.atom_selection, len(explicit.atom_indices), explicit.write_samples, explicit.note) == ("all", 3341, True, None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, write_tiny_calpha_dataset):
    """The same tiny fit twice: within the budget, and with a budget too small for the draws."""
    overrides = {"num_steps": 4, "batch_size": 4, "samples_per_particle": SAMPLES, "n_modes": 3, "ensemble_size": ENSEMBLE}
    outputs = {}
    for name, budget in (("within", None), ("over", 1e-5)):
        yaml_path = write_tiny_calpha_dataset(
            tmp_path_factory.mktemp(name), N_PARTICLES, config_overrides={**overrides, "output_budget_in_gigabytes": budget}
        )
        outputs[name] = run_inference(load_config(yaml_path), progress=False)
    return outputs


def test_the_posterior_ensemble_holds_the_draws_run_json_names(runs):
    output = runs["within"]
    record = json.loads((output / "run.json").read_text())["outputs"]
    assert record["ensemble_samples_written"] and record["note"] is None
    particles = np.asarray(record["posterior_ensemble"]["particles"])
    draws = np.asarray(record["posterior_ensemble"]["draws"])
    assert len(particles) == len(draws) == ENSEMBLE
    top = str(output / "topology.pdb")
    ensemble = mdtraj.load(str(output / "posterior_ensemble.dcd"), top=top).xyz
    samples = mdtraj.load(str(output / "ensemble_samples.dcd"), top=top).xyz
    np.testing.assert_array_equal(ensemble, samples[particles * SAMPLES + draws])
    for name, size in record["expected_sizes_in_bytes"].items():
        assert os.path.getsize(output / name) == size, name


def test_over_the_budget_the_draws_are_left_out_and_the_products_still_run(runs):
    within, over = runs["within"], runs["over"]
    record = json.loads((over / "run.json").read_text())["outputs"]
    assert not record["ensemble_samples_written"] and "ensemble_samples.dcd not written" in record["note"]
    assert not (over / "ensemble_samples.dcd").exists()
    top = str(over / "topology.pdb")
    # Same seed, same fit: the means and the bounded ensemble are those of the run that wrote every draw.
    np.testing.assert_array_equal(
        mdtraj.load(str(over / "ensemble_mean.dcd"), top=top).xyz,
        mdtraj.load(str(within / "ensemble_mean.dcd"), top=str(within / "topology.pdb")).xyz,
    )
    np.testing.assert_array_equal(
        mdtraj.load(str(over / "posterior_ensemble.dcd"), top=top).xyz,
        mdtraj.load(str(within / "posterior_ensemble.dcd"), top=str(within / "topology.pdb")).xyz,
    )
    # The products fell back to the posterior's own coordinate and drew their structures from the
    # bounded ensemble.
    states = json.loads((over / "states.json").read_text())
    assert states["collective_variables"][0]["specification"] in ("mode:0", "pc:0")
    assert states["ensemble"]["n_structures"] == min(20, ENSEMBLE)
    assert (over / "ensemble.pdb").is_file() and (over / "particles.star").is_file()
