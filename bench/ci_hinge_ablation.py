"""Ablation on the CI-sized hinge stack of `tests/test_path_recovery.py` (256 Cα particles, 24² at
4 Å/px, SNR 1, 25 % open, ±20 % contrast, 300 steps): which of the reference's B-factors, the learned
envelope (`learn_envelope`) and the curve posterior (`path_nodes`) calibrates the intervals.

    python bench/ci_hinge_ablation.py --folder /tmp/ci-hinge              # every variant
    python bench/ci_hinge_ablation.py --folder /tmp/ci-hinge --variants defaults,no_path

Each variant prints Spearman, the minor state's population, the open state's median Cα RMSD and
the coverage of the range of 20 draws (0.905 when calibrated), as the test computes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import mdtraj
import numpy as np
import scipy.stats

N_PARTICLES, BOX_SIZE, PIXEL_SIZE, SNR, MINOR_FRACTION, SEED = 256, 24, 4.0, 1.0, 0.25, 11

VARIANTS = {
    "defaults": {},
    "no_path": {"path_nodes": 0},
    "no_envelope": {"learn_envelope": False},
    "neither": {"path_nodes": 0, "learn_envelope": False},
    "neither_b0_reference": {"path_nodes": 0, "learn_envelope": False, "_b0": True},
    "defaults_b0_reference": {"_b0": True},
}


def main() -> None:
    from atomicspi._example import ADENYLATE_KINASE_DOMAINS, example_structure_paths
    from atomicspi._pipeline import run_inference
    from atomicspi._simulation import simulate_particles, write_simulated_dataset
    from atomicspi._transition_paths import hinge_path, path_positions_of, two_state_path_positions
    from atomicspi.io import load_config
    from atomicspi.structure import load_structure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=pathlib.Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    arguments = parser.parse_args()

    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path).calpha()
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    opened = load_structure(open_path).calpha()
    rng = np.random.default_rng(SEED)
    truth_s, states = two_state_path_positions(N_PARTICLES, MINOR_FRACTION, rng)
    truth = hinge_path(closed, opened, ADENYLATE_KINASE_DOMAINS, truth_s)
    nodes = hinge_path(closed, opened, ADENYLATE_KINASE_DOMAINS, np.linspace(0.0, 1.0, 101))
    clean = simulate_particles(closed, truth, BOX_SIZE, PIXEL_SIZE, 1e12, seed=SEED).images.astype(float)
    clean /= np.sqrt(np.mean(np.var(clean, axis=(1, 2))) / SNR)
    contrast = np.exp(0.2 * rng.standard_normal(N_PARTICLES))
    particles = simulate_particles(closed, truth, BOX_SIZE, PIXEL_SIZE, SNR, seed=SEED)
    particles = dataclasses.replace(
        particles, images=(contrast[:, None, None] * clean + rng.standard_normal(clean.shape)).astype(np.float32)
    )
    for name in arguments.variants.split(","):
        overrides = dict(VARIANTS[name])
        reference = closed
        if overrides.pop("_b0", False):  # the reference as mdtraj wrote it before: no B-factors
            reference = dataclasses.replace(closed, b_factors_in_angstroms_squared=np.zeros(closed.n_atoms))
        folder = arguments.folder / name
        path = write_simulated_dataset(
            folder, reference, particles, model="deformation",
            config_overrides={"num_steps": 300, "batch_size": 32, "samples_per_particle": 20, "seed": SEED,
                              "importance_proposals": 16, **overrides},
        )
        started = time.perf_counter()
        output = run_inference(load_config(path), progress=False)
        seconds = time.perf_counter() - started
        top = str(output / "topology.pdb")
        means = mdtraj.load(str(output / "ensemble_mean.dcd"), top=top).xyz * 10.0
        samples = (mdtraj.load(str(output / "ensemble_samples.dcd"), top=top).xyz * 10.0).reshape(N_PARTICLES, 20, -1, 3)
        estimated = path_positions_of(means, nodes)
        draws = path_positions_of(samples.reshape(-1, *samples.shape[2:]), nodes).reshape(N_PARTICLES, 20)
        midpoint = 0.5 * (0.15 + 0.8)
        open_fit = np.median(np.sqrt(((means - truth) ** 2).sum(-1).mean(-1))[states == 1])
        record = json.loads((output / "run.json").read_text())
        result = {
            "variant": name,
            "spearman": float(scipy.stats.spearmanr(estimated, truth_s).statistic),
            "minor": float(np.mean(estimated > midpoint)),
            "minor_true": float(np.mean(truth_s > midpoint)),
            "open_state_rmsd_in_angstroms": float(open_fit),
            "coverage": float(np.mean((truth_s >= draws.min(axis=1)) & (truth_s <= draws.max(axis=1)))),
            "envelope_b_factor": record["global_posterior_means"].get("envelope_b_factor"),
            "seconds": seconds,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
