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
    "no_fine_blocks": {"_CURVE_FINE_BEADS_PER_BLOCK": 0},  # the path pass without the finer blocks (twelfth session's defaults)
}


def main() -> None:
    import atomicspi._families._deformation as deformation
    from atomicspi._example import ADENYLATE_KINASE_DOMAINS, example_structure_paths
    from atomicspi._pipeline import run_inference
    from atomicspi._simulation import write_simulated_dataset
    from atomicspi._transition_paths import path_positions_of, small_hinge_stack
    from atomicspi.io import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=pathlib.Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    arguments = parser.parse_args()

    closed_path, open_path = example_structure_paths()
    stack = small_hinge_stack(
        closed_path, open_path, ADENYLATE_KINASE_DOMAINS, n=N_PARTICLES, box_size=BOX_SIZE, pixel_size_in_angstroms=PIXEL_SIZE,
        snr=SNR, minor_fraction=MINOR_FRACTION, seed=SEED,
    )
    closed, particles, truth_s, states = stack.closed, stack.particles, stack.path_positions, stack.states
    truth, nodes = stack.calpha_positions_in_angstroms, stack.path_calpha_nodes
    defaults = {name: getattr(deformation, name) for name in dir(deformation) if name.startswith("_CURVE")}
    for name in arguments.variants.split(","):
        overrides = dict(VARIANTS[name])
        for constant, value in defaults.items():  # the path pass's constants: the variant's, else the module's
            setattr(deformation, constant, overrides.pop(constant, value))
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
