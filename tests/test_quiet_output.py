"""mdtraj's DCD plugin prints `dcdplugin) ...` lines from C for every file it opens: none reach the user."""

import json
import os
import subprocess
import sys
import textwrap

import mdtraj
import numpy as np

from atomicspi._outputs import write_ensemble
from atomicspi.products._run_collective_variables import _load_samples, samples_layout
from atomicspi.structure import load_structure, load_trajectory_positions


def _small_ensemble(tmp_path, example_structure_path):
    structure = load_structure(example_structure_path).calpha()
    rng = np.random.default_rng(0)
    reference = structure.positions_in_angstroms
    mean = reference + rng.normal(scale=0.5, size=(3, *reference.shape))
    samples = mean[:, None] + rng.normal(scale=0.5, size=(3, 2, *reference.shape))
    write_ensemble(tmp_path, structure, mean, samples)
    (tmp_path / "run.json").write_text(json.dumps({"samples_per_particle": 2}))
    return structure, mean, samples


def test_bare_mdtraj_does_print_dcdplugin_lines(tmp_path, example_structure_path, capfd):
    """The control: capfd sees what the C plugin prints (so the test below can fail)."""
    _small_ensemble(tmp_path, example_structure_path)
    capfd.readouterr()
    mdtraj.load(str(tmp_path / "ensemble_mean.dcd"), top=str(tmp_path / "topology.pdb"))
    assert "dcdplugin)" in capfd.readouterr().out


def test_writing_and_reading_dcd_prints_nothing(tmp_path, example_structure_path, capfd):
    structure, mean, samples = _small_ensemble(tmp_path, example_structure_path)
    topology = str(tmp_path / "topology.pdb")
    read_mean = load_trajectory_positions(tmp_path / "ensemble_mean.dcd", topology=topology)
    np.testing.assert_allclose(read_mean, mean, atol=1e-3)
    frame = load_structure(tmp_path / "ensemble_samples.dcd", frame=3, topology=topology)
    np.testing.assert_allclose(frame.positions_in_angstroms, samples[1, 1], atol=1e-3)
    assert samples_layout(tmp_path) == (6, 2)
    read_samples = _load_samples(tmp_path, np.arange(structure.n_atoms))
    np.testing.assert_allclose(read_samples, samples.reshape(6, -1, 3), atol=1e-3)
    captured = capfd.readouterr()
    assert "dcdplugin" not in captured.out + captured.err


def test_quiet_c_stdout_drops_c_output_and_keeps_python_output():
    """In a fresh process with standard output a pipe (C's stdout fully buffered: PYTHONUNBUFFERED unset): what C code and
    raw writes to descriptor 1 put out inside the block is gone, also after exit; `print` is kept,
    in order; standard error is untouched."""
    code = textwrap.dedent(
        """
        import ctypes, os, sys
        from atomicspi._quiet import quiet_c_stdout

        libc = ctypes.CDLL(None)
        print("before")
        with quiet_c_stdout():
            print("python inside")
            libc.printf(b"c-level printf\\n")
            os.write(1, b"raw descriptor write\\n")
            print("to stderr", file=sys.stderr)
        print("after")
        libc.printf(b"c-level after\\n")
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    assert result.stdout.splitlines() == ["before", "python inside", "after", "c-level after"]
    assert result.stderr == "to stderr\n"
