"""Issue-5 benchmark: per-particle conformations of adenylate kinase from images simulated with a
*different* physics than the fit (linear interpolation closed → open, not elastic-network modes).

Simulates the stack with `python -m atomicspi.simulate`-equivalent code, runs the full
`atomicspi.infer` pipeline, and prints the median Cα RMSD of each particle's posterior mean to its
true structure, next to the reference's.

    python bench/adk_interpolation.py   # the issue's setting: 2,000 particles, 64², 1.5 Å/px, SNR 0.1,
                                        # deformation model, latent_dim 2, 1,200 steps × 64, Adam 3e-3
"""

import argparse
import json
import pathlib
import tempfile
import time

import mdtraj
import numpy as np
import yaml

from atomicspi._example import ADENYLATE_KINASE_DOMAINS, example_structure_paths
from atomicspi._pipeline import run_inference
from atomicspi._simulation import interpolated_conformations, simulate_particles, write_simulated_dataset
from atomicspi.io import load_config
from atomicspi.structure import load_structure


def calpha_rmsd(a, b):
    return np.sqrt(((a - b) ** 2).sum(-1).mean(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-particles", type=int, default=2000)
    parser.add_argument("--box-size", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--model", default="deformation")
    parser.add_argument("--num-steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--n-modes", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--fraction-range", type=float, nargs=2, default=(0.0, 0.8))
    parser.add_argument("--folder", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-domains", action="store_true", help="deformation without the CORE/NMP/LID domains: the whole network's springs")
    parser.add_argument("--auto-domains", type=int, default=None, help="instead of CORE/NMP/LID, find this many domains from the modes")
    arguments = parser.parse_args()

    folder = pathlib.Path(arguments.folder or tempfile.mkdtemp(prefix="adk-bench-"))
    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    fractions = np.random.default_rng(arguments.seed).uniform(*arguments.fraction_range, size=arguments.n_particles)
    started = time.perf_counter()
    positions = interpolated_conformations(closed, load_structure(open_path), fractions)
    particles = simulate_particles(closed, positions, arguments.box_size, arguments.pixel_size, arguments.snr, seed=arguments.seed)
    path = write_simulated_dataset(
        folder, closed, particles, truth_extra={"interpolation_fraction": fractions}, model=arguments.model,
        config_overrides={"num_steps": arguments.num_steps, "batch_size": arguments.batch_size,
                          "learning_rate": arguments.learning_rate, "n_modes": arguments.n_modes,
                          "latent_dim": arguments.latent_dim,
                          "samples_per_particle": 4, "checkpoint_every": 500,
                          **({"domains": arguments.auto_domains or ADENYLATE_KINASE_DOMAINS} if arguments.model == "domains" or (arguments.model == "deformation" and not arguments.no_domains) else {})},
    )
    simulated = time.perf_counter() - started
    started = time.perf_counter()
    output = run_inference(load_config(path), progress=False)
    elapsed = time.perf_counter() - started

    trajectory = mdtraj.load(str(output / "ensemble_mean.dcd"), top=str(output / "topology.pdb"))
    estimate = trajectory.xyz[:, trajectory.topology.select("name CA")] * 10.0
    truth = np.load(folder / "truth.npz")["calpha_positions_in_angstroms"]
    reference = closed.calpha().positions_in_angstroms
    result = {
        "n_particles": arguments.n_particles, "box_size": arguments.box_size, "pixel_size": arguments.pixel_size,
        "snr": arguments.snr, "model": arguments.model, "num_steps": arguments.num_steps,
        "latent_dim": arguments.latent_dim, "n_modes": arguments.n_modes, "domains": "none" if arguments.no_domains else (arguments.auto_domains or "CORE/NMP/LID"), "seed": arguments.seed,
        "median_rmsd_posterior_mean": float(np.median(calpha_rmsd(estimate, truth))),
        "percentile_90_rmsd_posterior_mean": float(np.percentile(calpha_rmsd(estimate, truth), 90)),
        "median_rmsd_by_fraction": {
            f"[{low:.1f}, {low + 0.2:.1f})": float(np.median(calpha_rmsd(estimate, truth)[(fractions >= low) & (fractions < low + 0.2)]))
            for low in np.arange(arguments.fraction_range[0], arguments.fraction_range[1] - 1e-9, 0.2)
        },
        "median_rmsd_reference": float(np.median(calpha_rmsd(reference[None], truth))),
        "correlation_estimated_vs_true_fraction": float(np.corrcoef(calpha_rmsd(reference[None], estimate), fractions)[0, 1]),
        "simulation_seconds": simulated, "inference_seconds": elapsed,
        "run": json.loads((output / "run.json").read_text())["timings"],
        "global_posterior_means": json.loads((output / "run.json").read_text())["global_posterior_means"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
