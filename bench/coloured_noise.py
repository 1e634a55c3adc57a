"""Coloured noise (GitHub issue 14, part 2): the same particles with white noise and with coloured
noise of the same total power, fitted with the white and with the coloured (`noise: coloured`)
likelihood.

Particles: Cα adenylate kinase, conformations from the `nma` model's prior (the 5 softest modes of
the 15 Å Cα network, γ = 0.03 kT/Å², a value the model's hyperprior and this schedule reach), uniform random poses, defocus 0.8–2.5 µm, per-particle contrast uniform in
0.7–1.3, noise at the given SNR (signal variance over noise variance per pixel). The coloured noise
is the same white draws filtered to P(k) ∝ 1 / (1 + (k / k₀)²) and rescaled to the white noise's
variance per pixel (`atomicspi._simulation.simulate_particles`).

Fits (`model: nma` with the same 5 modes, the same schedule and seed; learning rates as in
`bench/calibration.py`: 1e-2, per-particle 3e-2, cosine decay):

- (a) white data, white likelihood;
- (b) coloured data, white likelihood;
- (c) coloured data, coloured likelihood.

Each fit's posterior pass is then rerun from its checkpoint with `importance_proposals`
(`--importance-proposals`, 512; 0 skips it): the draws of the model's own posterior of the
amplitudes given the fitted globals, importance-resampled from Laplace proposals, instead of the
guide's Gaussian.

Reported: median Cα RMSD (no superposition: poses are given) of the posterior means to the truth
(and of the reference, for scale), and the coverage of 90 % intervals: the range of each particle's
`samples_per_particle` = 20 draws (which holds the truth with probability 19/21 ≈ 0.905 when the
draws are calibrated: `bench/_path_metrics.py` draw_interval) for the amplitudes of the three
softest modes, computed from the Cα of `ensemble_samples.dcd` by projection on the model's modes.

    python bench/coloured_noise.py [--n-particles 384 --num-steps 3000 --importance-proposals 512 --output /tmp/coloured_noise]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/coloured_noise")
    parser.add_argument("--n-particles", type=int, default=384)
    parser.add_argument("--box-size", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=4.0)
    parser.add_argument("--snr", type=float, default=0.3)
    parser.add_argument("--spring-constant", type=float, default=0.03, help="γ of the conformations' prior, kT/Å²")
    parser.add_argument("--n-modes", type=int, default=5)
    parser.add_argument("--corner-shell", type=float, default=4.0, help="k₀ of the spectrum, in shells (1 / (D · pixel size))")
    parser.add_argument("--num-steps", type=int, default=3000)
    parser.add_argument("--importance-proposals", type=int, default=512, help="rerun each posterior pass with this many (0: not)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _simulate(arguments):
    from atomicspi._simulation import prior_conformations, simulate_particles
    from atomicspi.microscope import radial_shell_count
    from atomicspi.structure import load_structure

    structure = load_structure(pathlib.Path(__file__).resolve().parents[1] / "atomicspi" / "data" / "adk_closed.pdb.gz").calpha()
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    positions, truth = prior_conformations(structure, arguments.n_particles, arguments.n_modes, arguments.spring_constant, arguments.seed)
    spectrum = 1.0 / (1.0 + (np.arange(radial_shell_count(arguments.box_size)) / arguments.corner_shell) ** 2)
    common = dict(seed=arguments.seed, defocus_range_in_angstroms=(8000.0, 25000.0), contrast_range=(0.7, 1.3))
    white = simulate_particles(structure, positions, arguments.box_size, arguments.pixel_size, arguments.snr, **common)
    coloured = simulate_particles(
        structure, positions, arguments.box_size, arguments.pixel_size, arguments.snr, noise_power_spectrum=spectrum, **common
    )
    return structure, truth, white, coloured


def _metrics(output: pathlib.Path, structure, truth_positions, n_draws: int, n_modes: int) -> dict:
    import mdtraj

    from _path_metrics import calpha_rmsd, draw_interval
    from atomicspi.structure import ElasticNetwork, calpha_beads, normal_modes

    top = str(output / "topology.pdb")
    means = mdtraj.load(str(output / "ensemble_mean.dcd"), top=top).xyz * 10.0
    samples = (mdtraj.load(str(output / "ensemble_samples.dcd"), top=top).xyz * 10.0).reshape(means.shape[0], n_draws, -1, 3)
    reference = structure.positions_in_angstroms
    modes = normal_modes(ElasticNetwork.from_positions(calpha_beads(structure).bead_positions_in_angstroms, 15.0), n_modes)
    vectors = np.asarray(modes.vectors)[:3]  # the three softest modes (unit norm over the beads' coordinates)
    true_amplitudes = np.einsum("kbc,nbc->nk", vectors, truth_positions - reference)
    draw_amplitudes = np.einsum("kbc,ndbc->ndk", vectors, samples - reference)
    covered, expected = [], None
    for k in range(3):
        low, high, expected = draw_interval(draw_amplitudes[:, :, k], 0.9)
        covered.append(float(np.mean((true_amplitudes[:, k] >= low) & (true_amplitudes[:, k] <= high))))
    record = json.loads((output / "run.json").read_text())
    return {
        "median_calpha_rmsd_in_angstroms": float(np.median(calpha_rmsd(means, truth_positions))),
        "coverage_per_mode": covered,
        "coverage": float(np.mean(covered)),
        "expected_coverage": expected,
        "mean_interval_width_mode_1": float(np.mean(np.ptp(draw_amplitudes[:, :, 0], axis=1))),
        "noise_std": float(record["global_posterior_means"]["noise_std"]),
        "spring_constant": float(record["global_posterior_means"]["spring_constant"]),
        "final_elbo": record["final_elbo"],
        "training_seconds": record["timings"]["training_seconds"],
    }


def _resampled_pass(yaml_path: pathlib.Path, output: pathlib.Path, n_proposals: int) -> pathlib.Path:
    """The posterior pass of the fit in `output` again, from its checkpoint, with importance resampling."""
    import shutil

    import yaml

    from atomicspi.infer import main as infer

    config = yaml.safe_load(yaml_path.read_text())
    target = output.parent / f"{output.name}_importance_resampled"
    target.mkdir(exist_ok=True)
    for name in ("checkpoint.json", "checkpoint.npz"):
        shutil.copy2(output / name, target / name)
    config.update(output=target.name, importance_proposals=n_proposals)
    resampled_yaml = yaml_path.parent / "dataset_importance_resampled.yaml"
    resampled_yaml.write_text(yaml.safe_dump(config))
    if infer([str(resampled_yaml), "--resume", "--quiet"]) != 0:
        raise RuntimeError(f"the resampled posterior pass of {output} failed")
    return target


def main(argv=None) -> int:
    from _path_metrics import calpha_rmsd
    from atomicspi._pipeline import run_inference
    from atomicspi._simulation import write_simulated_dataset
    from atomicspi.io import load_config

    arguments = _parser().parse_args(argv)
    folder = pathlib.Path(arguments.output)
    started = time.perf_counter()
    structure, truth, white, coloured = _simulate(arguments)
    truth_positions = white.positions_in_angstroms
    n_draws = 20
    overrides = {"num_steps": arguments.num_steps, "batch_size": arguments.batch_size, "samples_per_particle": n_draws,
                 "seed": arguments.seed, "n_modes": arguments.n_modes, "learning_rate": 1e-2, "per_particle_learning_rate": 3e-2}
    results = {}
    for name, particles, noise in (("a_white_data_white_likelihood", white, "white"),
                                   ("b_coloured_data_white_likelihood", coloured, "white"),
                                   ("c_coloured_data_coloured_likelihood", coloured, "coloured")):
        path = write_simulated_dataset(folder / name, structure, particles, model="nma",
                                       truth_extra={"amplitudes": truth["amplitudes"]}, config_overrides={**overrides, "noise": noise})
        fit_started = time.perf_counter()
        output = run_inference(load_config(path), progress=False)
        results[name] = {**_metrics(output, structure, truth_positions, n_draws, arguments.n_modes), "seconds": time.perf_counter() - fit_started}
        print(name, json.dumps(results[name]), flush=True)
        if arguments.importance_proposals:
            pass_started = time.perf_counter()
            resampled = _resampled_pass(path, output, arguments.importance_proposals)
            record = json.loads((resampled / "run.json").read_text())
            results[f"{name}_importance_resampled"] = {
                **_metrics(resampled, structure, truth_positions, n_draws, arguments.n_modes),
                "importance_resampling": record["importance_resampling"], "seconds": time.perf_counter() - pass_started,
            }
            print(f"{name}_importance_resampled", json.dumps(results[f"{name}_importance_resampled"]), flush=True)
    reference_rmsd = float(np.median(calpha_rmsd(structure.positions_in_angstroms[None], truth_positions)))
    load = os.getloadavg()
    summary = {
        "settings": {**vars(arguments), "draws_per_particle": n_draws, "contrast_range": [0.7, 1.3]},
        "reference_median_calpha_rmsd_in_angstroms": reference_rmsd,
        "results": results,
        "rmsd_ratio_coloured_to_white": results["c_coloured_data_coloured_likelihood"]["median_calpha_rmsd_in_angstroms"]
        / results["a_white_data_white_likelihood"]["median_calpha_rmsd_in_angstroms"],
        "seconds": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "load_average": load},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
