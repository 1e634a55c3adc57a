"""`python -m atomicspi.landscape` and `run_products` on a tiny fake inference output folder.

The fake folder is the contract with `python -m atomicspi.infer`: `posterior.nc` (ArviZ, variable
`amplitudes` with dims (chain, draw, particle, amplitudes_dim_0)), `run.json` with
`samples_per_particle`, a 10-atom `topology.pdb`, `ensemble_samples.dcd` (S frames per particle,
particle-major, frame i·S + s = draw s of particle i) and `ensemble_mean.dcd` (frame i = mean of
particle i). Structural CVs are checked against numpy on the positions we wrote.
"""

import json
import subprocess
import sys

import mdtraj
import numpy as np
import pytest

from atomicspi import products
from atomicspi.io import InputError
from atomicspi.landscape import main

N_PARTICLES, N_SAMPLES, N_ATOMS = 200, 8, 10
OUTPUTS = ("landscape.png", "landscape.npz", "states.json", "ensemble.pdb", "ensemble.dcd")


def make_fake_run(folder, with_structures=True, seed=0):
    """Write a fake output folder; return (amplitude draws (particle, draw, mode), sample positions)."""
    import arviz

    rng = np.random.default_rng(seed)
    centre = np.where(rng.random(N_PARTICLES) < 0.6, -1.2, 1.2) + 0.5 * rng.normal(size=N_PARTICLES)
    amplitudes = np.stack(
        [centre[:, None] + 0.2 * rng.normal(size=(N_PARTICLES, N_SAMPLES)), 0.5 * rng.normal(size=(N_PARTICLES, N_SAMPLES))],
        axis=-1,
    )
    arviz.from_dict(
        posterior={"amplitudes": amplitudes.transpose(1, 0, 2)[None]}, dims={"amplitudes": ["particle", "amplitudes_dim_0"]}
    ).to_netcdf(str(folder / "posterior.nc"), engine="h5netcdf")
    (folder / "run.json").write_text(json.dumps({"samples_per_particle": N_SAMPLES}))
    base = np.stack([3.8 * np.arange(N_ATOMS), 1.0 * (np.arange(N_ATOMS) % 2), np.zeros(N_ATOMS)], axis=1)
    bend = np.stack([np.zeros(N_ATOMS), np.zeros(N_ATOMS), (np.arange(N_ATOMS) / (N_ATOMS - 1)) ** 2 * 3.0], axis=1)
    positions = base + amplitudes[..., 0, None, None] * bend  # (particle, draw, atom, 3)
    if with_structures:
        topology = mdtraj.Topology()
        chain = topology.add_chain()
        for _ in range(N_ATOMS):
            topology.add_atom("CA", mdtraj.element.carbon, topology.add_residue("ALA", chain))
        mdtraj.Trajectory(base[None] / 10.0, topology).save_pdb(str(folder / "topology.pdb"))
        flat = positions.reshape(-1, N_ATOMS, 3)
        mdtraj.Trajectory(flat / 10.0, topology).save_dcd(str(folder / "ensemble_samples.dcd"))
        mdtraj.Trajectory(positions.mean(axis=1) / 10.0, topology).save_dcd(str(folder / "ensemble_mean.dcd"))
    return amplitudes, positions, base


def kabsch_rmsd(a, b):
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return np.sqrt(max(np.sum(a**2) + np.sum(b**2) - 2 * s.sum(), 0.0) / len(a))


@pytest.fixture
def fake_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    amplitudes, positions, base = make_fake_run(folder)
    return folder, amplitudes, positions, base


def test_collective_variables_from_the_folder(fake_run):
    folder, amplitudes, positions, base = fake_run
    mode = products.load_run_collective_variables(folder, "mode:0")
    np.testing.assert_allclose(mode.draws, amplitudes[..., 0])
    assert not mode.frames_are_samples
    distance = products.load_run_collective_variables(folder, "distance:0,9")
    expected = np.linalg.norm(positions[:, :, 9] - positions[:, :, 0], axis=-1)
    np.testing.assert_allclose(distance.draws, expected, atol=1e-3)
    assert distance.units == ("Å",) and distance.frames_are_samples
    angle = products.load_run_collective_variables(folder, "angle:0,5,9")
    u, v = positions[:, :, 0] - positions[:, :, 5], positions[:, :, 9] - positions[:, :, 5]
    cosine = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
    np.testing.assert_allclose(angle.draws, np.degrees(np.arccos(cosine)), atol=1e-2)
    rmsd = products.load_run_collective_variables(folder, f"rmsd:{folder / 'topology.pdb'}")
    expected = np.array([[kabsch_rmsd(frame, base) for frame in particle] for particle in positions])
    np.testing.assert_allclose(rmsd.draws, expected, atol=2e-4)  # float32 DCD, 3-decimal PDB
    samples = mdtraj.load(str(folder / "ensemble_samples.dcd"), top=str(folder / "topology.pdb"))
    peer = 10 * mdtraj.rmsd(samples, mdtraj.load(str(folder / "topology.pdb")), 0)
    # mdtraj computes in float32: its squared RMSD is off by ~1e-6 of Σ|r|² (≈ 4000 Å² here), large near 0 after the sqrt.
    np.testing.assert_allclose(rmsd.draws.ravel() ** 2, peer**2, atol=1e-2)
    pc = products.load_run_collective_variables(folder, ["pc:0", "pc:1"])
    flat = amplitudes.reshape(-1, 2)
    eigenvalues = np.linalg.eigvalsh(np.cov(flat.T, bias=True))[::-1]
    np.testing.assert_allclose(pc.draws.reshape(-1, 2).var(axis=0), eigenvalues, rtol=1e-10)


def test_cli_writes_landscape_states_and_structures(fake_run, capsys):
    folder, amplitudes, _, _ = fake_run
    assert main([str(folder), "--cv", "mode:0", "--bootstrap", "30", "--structures", "7"]) == 0
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    record = json.loads((folder / "states.json").read_text())
    assert len(record["states"]) == 2
    states = sorted(record["states"], key=lambda state: state["minimum"][0])
    # Two groups of particles, about 60 % near −1.2 and 40 % near +1.2: the left state holds the
    # draws left of the saddle (to within the bin holding the saddle).
    saddle = record["saddles"][0]["position"][0]
    left = np.mean(amplitudes[..., 0] < saddle)
    assert states[0]["population"] == pytest.approx(left, abs=0.06)
    assert states[0]["population_low"] <= states[0]["population"] <= states[0]["population_high"]
    for state in states:
        assert (folder / state["representative_structure"]).is_file()
        mean_amplitude = amplitudes[state["representative_particle"], :, 0].mean()
        assert np.sign(mean_amplitude) == np.sign(state["minimum"][0])
    times = np.array(record["kinetics"]["mean_first_passage_times"], dtype=float)
    assert times.shape == (2, 2) and np.all(times[~np.eye(2, dtype=bool)] > 0)
    assert "diffusion" in record["kinetics"]["note"]
    ensemble = mdtraj.load(str(folder / "ensemble.dcd"), top=str(folder / "topology.pdb"))
    assert ensemble.n_frames == 7
    data = np.load(folder / "landscape.npz")
    assert data["free_energy"].shape == (record["bins"][0],) and np.nanmin(data["free_energy"]) == 0.0
    assert record["kinetics"]["connected"]
    assert np.all(data["free_energy_low"] <= data["free_energy"] + 1e-12)
    np.testing.assert_allclose(data["probabilities"].sum(), 1.0)


def test_two_structural_collective_variables(fake_run):
    folder, _, positions, _ = fake_run
    assert main([str(folder), "--cv", "distance:0,9", "--cv", "angle:0,5,9", "--bootstrap", "20", "--structures", "5"]) == 0
    record = json.loads((folder / "states.json").read_text())
    assert [v["unit"] for v in record["collective_variables"]] == ["Å", "°"]
    data = np.load(folder / "landscape.npz")
    assert data["free_energy"].ndim == 2
    # Sampled structures are frames of ensemble_samples.dcd; each one's state is that of its distance and angle.
    ensemble = mdtraj.load(str(folder / "ensemble.dcd"), top=str(folder / "topology.pdb"))
    frames = np.array(record["ensemble"]["frames_of_ensemble_samples"])
    np.testing.assert_allclose(ensemble.xyz * 10, positions.reshape(-1, N_ATOMS, 3)[frames], atol=1e-3)
    distances = 10 * mdtraj.compute_distances(ensemble, [[0, 9]])[:, 0]
    edges = data["edges_0"]
    column = np.clip(np.searchsorted(edges, distances, side="right") - 1, 0, len(edges) - 2)
    angles = np.degrees(mdtraj.compute_angles(ensemble, [[0, 5, 9]])[:, 0])
    row = np.clip(np.searchsorted(data["edges_1"], angles, side="right") - 1, 0, len(data["edges_1"]) - 2)
    np.testing.assert_array_equal(record["ensemble"]["states_of_structures"], data["state_labels"][column, row])


def test_two_collective_variables_and_posterior_only_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    make_fake_run(folder, with_structures=False)
    record = products.run_products(folder, cv=["mode:0", "mode:1"], n_bins=12, n_bootstrap=20)
    assert record["collective_variables"][1]["specification"] == "mode:1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["landscape.png", "landscape.npz", "states.json", "posterior.nc", "run.json"]
    )
    # Default CV for a normal-mode run: mode 0.
    assert products.run_products(folder, n_bins=12, n_bootstrap=20)["collective_variables"][0]["specification"] == "mode:0"


@pytest.mark.parametrize(
    "arguments",
    [["--cv", "mode:7"], ["--cv", "foo:1"], ["--cv", "distance:0,99"], ["--cv", "distance:0"], ["--cv", "rmsd:/nonexistent.pdb"],
     ["--cv", "mode:0", "--cv", "distance:0,1"], ["--bins", "1"]],
)
def test_cli_bad_input_writes_nothing(fake_run, capsys, arguments):
    folder = fake_run[0]
    before = sorted(p.name for p in folder.iterdir())
    assert main([str(folder), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == before


def test_cli_missing_folder_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "atomicspi.landscape", str(tmp_path / "absent"), "--cv", "mode:0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "absent").exists()


def test_missing_folder_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="absent"):
        products.load_run_collective_variables(tmp_path / "absent", "mode:0")
