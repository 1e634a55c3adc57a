"""Issue-19 benchmark family: adenylate kinase particles along closed → open paths whose physics the
fit does not share, rendered by an independent simulator, fitted with default settings.

The conformations lie on one of three paths (`atomicspi._transition_paths`), in a two-state
population (major state near closed, minor state near open, a share `--minor-fraction`):

- `hinge`: rigid domain arcs about fixed screw axes with local elastic relaxation at the hinges;
- `aanm`: an adaptive anisotropic network model morph (18 Å network, recomputed at every step);
- `linear`: linear interpolation of all atoms (the issue-5 benchmark's physics).

Images come from cryoJAX (`bench/_cryojax_simulation.py`) with per-particle contrast variation.
The dataset is fitted with `model: deformation` and the default settings (no domains, no tuning;
only `samples_per_particle: 20` for 90 % intervals), and the posterior is scored with
`bench/_path_metrics.py`: Cα RMSD of posterior means to the truth, Spearman of the estimated path
position with the true one, the minor state's inferred population, the Wasserstein-1 distance
between estimated and true path-position distributions, and the coverage of 90 % intervals.

    python bench/adk_paths.py --generator hinge --folder /tmp/adk-paths-hinge          # simulate, fit, score
    python bench/adk_paths.py --generator aanm --folder DIR --simulate-only             # the dataset only
    python bench/adk_paths.py --evaluate DIR/output                                     # score an existing run
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _path_metrics import path_recovery_metrics  # noqa: E402

GENERATORS = ("hinge", "aanm", "linear")
STATE_MEAN_PATH_POSITIONS = (0.15, 0.8)
N_PATH_NODES = 101


def centred_structures():
    """Closed adenylate kinase centred on its atoms' mean (as `bench/adk_interpolation.py`), and open as loaded."""
    from atomicspi._example import example_structure_paths
    from atomicspi.structure import load_structure

    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    return closed, load_structure(open_path)


def path_conformations(generator: str, closed, open_, path_positions) -> np.ndarray:
    """All-atom positions `(n, n_atoms, 3)` at path positions s on the chosen path, frame of `closed`."""
    from atomicspi._example import ADENYLATE_KINASE_DOMAINS
    from atomicspi._simulation import interpolated_conformations
    from atomicspi._transition_paths import adaptive_anm_path, hinge_path

    if generator == "hinge":
        return hinge_path(closed, open_, ADENYLATE_KINASE_DOMAINS, path_positions)
    if generator == "aanm":
        return adaptive_anm_path(closed, open_, path_positions, frame_residue_ranges=ADENYLATE_KINASE_DOMAINS[0])
    if generator == "linear":
        return interpolated_conformations(closed, open_, path_positions)
    raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")


def simulate(arguments) -> pathlib.Path:
    """Draw the population, build the path's structures, render with cryoJAX, write the dataset."""
    from _cryojax_simulation import simulate_particles_cryojax

    from atomicspi._simulation import write_simulated_dataset
    from atomicspi._transition_paths import two_state_path_positions

    started = time.perf_counter()
    closed, open_ = centred_structures()
    rng = np.random.default_rng(arguments.seed)
    path_positions, states = two_state_path_positions(
        arguments.n_particles, arguments.minor_fraction, rng,
        major_mean=STATE_MEAN_PATH_POSITIONS[0], minor_mean=STATE_MEAN_PATH_POSITIONS[1],
    )
    node_path_positions = np.linspace(0.0, 1.0, N_PATH_NODES)
    # One call: the particles' structures and the path's nodes come from the same path.
    positions = path_conformations(arguments.generator, closed, open_, np.concatenate([path_positions, node_path_positions]))
    node_positions, positions = positions[arguments.n_particles:], positions[: arguments.n_particles]
    path_seconds = time.perf_counter() - started
    particles = simulate_particles_cryojax(
        closed, positions, arguments.box_size, arguments.pixel_size, arguments.snr, seed=arguments.seed,
        contrast_log_std=arguments.contrast_log_std,
    )
    del positions
    calpha = closed.topology.select("name CA and protein")
    overrides = {"samples_per_particle": 20}
    if arguments.num_steps is not None:
        overrides["num_steps"] = arguments.num_steps  # smoke runs only: the benchmark uses the default
    path = write_simulated_dataset(
        arguments.folder, closed, particles,
        truth_extra={
            "path_position": path_positions,
            "state": states,
            "state_mean_path_positions": np.asarray(STATE_MEAN_PATH_POSITIONS),
            "contrast_factors": particles.contrast_factors,
            "path_calpha_nodes": node_positions[:, calpha],
            "generator": np.asarray(arguments.generator),
        },
        model="deformation",
        config_overrides=overrides,
    )
    seconds = time.perf_counter() - started
    (pathlib.Path(arguments.folder) / "simulation.json").write_text(json.dumps({
        "generator": arguments.generator, "n_particles": arguments.n_particles, "box_size": arguments.box_size,
        "pixel_size": arguments.pixel_size, "snr": arguments.snr, "minor_fraction": arguments.minor_fraction,
        "contrast_log_std": arguments.contrast_log_std, "seed": arguments.seed,
        "path_seconds": path_seconds, "simulation_seconds": seconds,
    }, indent=1) + "\n")
    print(f"wrote {path} ({arguments.generator} path, {arguments.n_particles} particles) in {seconds:.1f} s "
          f"(path {path_seconds:.1f} s)", file=sys.stderr)
    return path


def _read_calpha(trajectory_path: pathlib.Path, topology_path: pathlib.Path) -> np.ndarray:
    """Cα positions in Å of every frame, read in chunks (sample trajectories are large)."""
    import mdtraj

    from atomicspi._quiet import quiet_c_stdout

    calpha = mdtraj.load_topology(str(topology_path)).select("name CA")
    with quiet_c_stdout():  # mdtraj's DCD reader prints two lines per file
        chunks = [chunk.xyz * 10.0 for chunk in mdtraj.iterload(str(trajectory_path), top=str(topology_path), atom_indices=calpha, chunk=2000)]
    return np.concatenate(chunks).astype(np.float64)


def evaluate(output: pathlib.Path, folder: pathlib.Path | None = None) -> dict:
    """Score a finished run: the output folder's `ensemble_mean.dcd` and `ensemble_samples.dcd`
    against the dataset folder's `truth.npz` (default: the output folder's parent)."""
    from atomicspi.structure import load_structure

    output = pathlib.Path(output)
    folder = output.parent if folder is None else pathlib.Path(folder)
    truth = dict(np.load(folder / "truth.npz"))
    topology = output / "topology.pdb"
    means = _read_calpha(output / "ensemble_mean.dcd", topology)
    n = means.shape[0]
    samples = _read_calpha(output / "ensemble_samples.dcd", topology)
    samples = samples.reshape(n, samples.shape[0] // n, *samples.shape[1:])  # particle-major
    reference = load_structure(folder / "reference.pdb").calpha().positions_in_angstroms
    metrics = path_recovery_metrics(truth, calpha_positions=means, calpha_samples=samples, reference_calpha=reference)
    metrics["n_draws_per_particle"] = int(samples.shape[1])
    metrics["generator"] = str(truth.get("generator", "unknown"))
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", choices=GENERATORS, default="hinge")
    parser.add_argument("--folder", default=None, help="dataset folder (simulated into, or holding truth.npz with --evaluate)")
    parser.add_argument("--n-particles", type=int, default=2000)
    parser.add_argument("--box-size", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--minor-fraction", type=float, default=0.25)
    parser.add_argument("--contrast-log-std", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulate-only", action="store_true", help="write the dataset and stop")
    parser.add_argument("--evaluate", default=None, metavar="OUTPUT_FOLDER", help="only score an existing run's output folder")
    parser.add_argument("--num-steps", type=int, default=None, help="smoke runs only (default: the fit's default)")
    arguments = parser.parse_args()

    if arguments.evaluate is not None:
        metrics = evaluate(pathlib.Path(arguments.evaluate), arguments.folder)
        (pathlib.Path(arguments.evaluate) / "path_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print(json.dumps(metrics, indent=1))
        return
    if arguments.folder is None:
        parser.error("--folder is required to simulate")
    path = simulate(arguments)
    if arguments.simulate_only:
        return

    from atomicspi._pipeline import run_inference
    from atomicspi.io import load_config

    started = time.perf_counter()
    output = run_inference(load_config(path), progress=False)
    inference_seconds = time.perf_counter() - started
    metrics = evaluate(output, pathlib.Path(arguments.folder))
    run = json.loads((output / "run.json").read_text())
    simulation = json.loads((pathlib.Path(arguments.folder) / "simulation.json").read_text())
    result = {**simulation, **metrics, "inference_seconds": inference_seconds, "run": run.get("timings")}
    (output / "path_metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
