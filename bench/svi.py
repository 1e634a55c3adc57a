"""Training throughput (images/s) of our SVI against cryoDRGN's `train_vae`, on the same simulated stack.

One AdK stack (conformations interpolated between the bundled closed and open structures, D = 64,
1.5 Å/px, SNR 0.1, uniform random poses, defocus 0.8–2.5 µm) is written as a RELION 3.1 star file +
`.mrcs` by `atomicspi._simulation.write_simulated_dataset`. Then, in one run:

- cryoDRGN: `cryodrgn parse_pose_star` and `parse_ctf_star` read *our* star file (the parsed poses and
  CTF are checked against the simulation's truth, which tests our writer), and `cryodrgn train_vae`
  (given poses, `--zdim 4`, encoder and decoder MLPs of 2 × 128 like ours, batch size matched, no
  analysis) trains for `--epochs` epochs. Its images/s is particles / the epoch time cryoDRGN logs
  ("Epoch: k ... Finished in ..."), i.e. the training loop alone, without its start-up (imports,
  loading the stack) or the final pass that evaluates z. Optionally also cryoDRGN's default network
  (1024 × 3) on the first particles only (`--cryodrgn-default-particles`).
- ours: `atomicspi._pipeline.run_inference` on the same `dataset.yaml` for each model (`deformation`
  with latent_dim 4, `nma`). To time the training loop alone, `atomicspi.inference.fit` is wrapped
  for the run: the wrapper first calls the real `fit` for `--warmup-steps` steps on the same `svi`
  (this compiles the step; the compiled step is reused for the same `svi`), then the real `fit` for
  `--epochs` epochs of minibatches, whose `images_per_second` (initialisation excluded) is reported.
  Everything else in the run (setup, posterior draws, outputs, products) is the real pipeline's.

cryoDRGN runs with the Python given by `--cryodrgn-python` or `$CRYODRGN_PYTHON` (a separate
virtualenv with `pip install cryodrgn`); without one, its rows are skipped with a message.

    python bench/svi.py --cryodrgn-python /tmp/cryodrgn-venv/bin/python [--n-particles 1000] [--epochs 1]
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import atomicspi.inference
from atomicspi._example import example_structure_paths
from atomicspi._pipeline import run_inference
from atomicspi._simulation import interpolated_conformations, simulate_particles, write_simulated_dataset
from atomicspi.io import load_config
from atomicspi.structure import load_structure

_CRYODRGN_MAIN = "import sys; from cryodrgn.command_line import main_commands; sys.argv[0] = 'cryodrgn'; sys.exit(main_commands())"
_EPOCH_LINE = re.compile(r"=====> Epoch: (\d+) .*Finished in (\d+):(\d+):([\d.]+)")
_SMALL_NETWORK = ["--enc-dim", "128", "--enc-layers", "2", "--dec-dim", "128", "--dec-layers", "2"]


def simulate(folder: pathlib.Path, arguments) -> pathlib.Path:
    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    fractions = np.random.default_rng(arguments.seed).uniform(0.0, 0.8, size=arguments.n_particles)
    positions = interpolated_conformations(closed, load_structure(open_path), fractions)
    particles = simulate_particles(closed, positions, arguments.box_size, arguments.pixel_size, arguments.snr, seed=arguments.seed)
    truth_ctf = {f"ctf_{name}": np.asarray(value) for name, value in particles.ctf.items()}
    return write_simulated_dataset(folder, closed, particles, truth_extra=truth_ctf)


def run_cryodrgn(python: str, arguments: list[str], log: pathlib.Path) -> float:
    """Run a cryoDRGN command with its own Python; its output goes to `log`; returns the wall time."""
    started = time.perf_counter()
    with open(log, "w") as stream:
        completed = subprocess.run([python, "-c", _CRYODRGN_MAIN, *arguments], stdout=stream, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"cryodrgn {arguments[0]} failed (exit status {completed.returncode}); see {log}")
    return time.perf_counter() - started


def check_cryodrgn_parsing(python: str, folder: pathlib.Path, box_size: int, pixel_size: float) -> dict:
    """Largest deviations between what cryoDRGN parsed from our star file and the simulation's truth."""
    exported = folder / "cryodrgn_parsed.npz"
    script = (
        "import pickle, sys, numpy as np; "
        "rotations, translations = pickle.load(open(sys.argv[1], 'rb')); ctf = pickle.load(open(sys.argv[2], 'rb')); "
        "np.savez(sys.argv[3], rotations=rotations, translations=translations, ctf=ctf)"
    )
    subprocess.run([python, "-c", script, str(folder / "pose.pkl"), str(folder / "ctf.pkl"), str(exported)], check=True)
    parsed = np.load(exported)
    truth = np.load(folder / "truth.npz")
    ctf = parsed["ctf"]  # columns: D, Apix, defocus U, defocus V, angle, kV, Cs, w, phase shift
    expected_ctf = np.stack(
        [np.full(len(ctf), box_size), np.full(len(ctf), pixel_size)]
        + [truth[f"ctf_{name}"] for name in (
            "defocus_u_in_angstroms", "defocus_v_in_angstroms", "astigmatism_angle_in_degrees", "voltage_in_kilovolts",
            "spherical_aberration_in_millimeters", "amplitude_contrast_ratio", "phase_shift_in_degrees")],
        axis=1,
    )
    shifts = -parsed["translations"] * box_size * pixel_size  # atomicspi/microscope/_rotations.py docstring
    return {
        "rotations_max_abs_difference": float(np.abs(parsed["rotations"] - truth["rotations"]).max()),
        "shifts_max_abs_difference_in_angstroms": float(np.abs(shifts - truth["shifts_in_angstroms"]).max()),
        "ctf_max_relative_difference": float((np.abs(ctf - expected_ctf) / np.maximum(np.abs(expected_ctf), 1.0)).max()),
    }


def epoch_seconds(log: pathlib.Path) -> list[float]:
    """Per-epoch training times that `train_vae` logs."""
    times = []
    for line in log.read_text().splitlines():
        match = _EPOCH_LINE.search(line)
        if match:
            hours, minutes, seconds = match.group(2, 3, 4)
            times.append(3600 * int(hours) + 60 * int(minutes) + float(seconds))
    if not times:
        raise RuntimeError(f"{log}: no epoch timing line found")
    return times


def cryodrgn_versions(python: str) -> dict:
    script = "import json, cryodrgn, torch, numpy; print(json.dumps({'cryodrgn': cryodrgn.__version__, 'torch': torch.__version__, 'numpy': numpy.__version__, 'torch_threads': torch.get_num_threads()}))"
    return json.loads(subprocess.run([python, "-c", script], check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def benchmark_cryodrgn(python: str, folder: pathlib.Path, arguments) -> list[dict]:
    n = arguments.n_particles
    star = str(folder / "particles.star")
    run_cryodrgn(python, ["parse_pose_star", star, "-o", str(folder / "pose.pkl")], folder / "parse_pose_star.log")
    run_cryodrgn(python, ["parse_ctf_star", star, "-o", str(folder / "ctf.pkl")], folder / "parse_ctf_star.log")
    print("cryoDRGN parsed our star file; deviation from the truth:", json.dumps(check_cryodrgn_parsing(python, folder, arguments.box_size, arguments.pixel_size)))
    common = [
        "train_vae", star, "--poses", str(folder / "pose.pkl"), "--ctf", str(folder / "ctf.pkl"), "--zdim", "4",
        "-b", str(arguments.batch_size), "--no-amp", "--no-analysis", "--uninvert-data", "--seed", str(arguments.seed),
    ]
    runs = [("cryoDRGN train_vae, 2x128 MLPs", n, arguments.epochs, _SMALL_NETWORK, [])]
    if arguments.cryodrgn_default_particles:
        subset = min(arguments.cryodrgn_default_particles, n)
        indices = folder / "first_particles.pkl"
        subprocess.run([python, "-c", f"import pickle, numpy as np; pickle.dump(np.arange({subset}), open({str(indices)!r}, 'wb'))"], check=True)
        runs.append((f"cryoDRGN train_vae, default 1024x3 (first {subset})", subset, 1, [], ["--ind", str(indices)]))
    rows = []
    for label, count, epochs, network, extra in runs:
        log = folder / f"train_vae_{len(rows)}.log"
        wall = run_cryodrgn(python, [*common, "-o", str(folder / f"cryodrgn_{len(rows)}"), "-n", str(epochs), *network, *extra], log)
        times = epoch_seconds(log)
        rows.append({
            "method": label, "images": count * epochs, "training_seconds": sum(times),
            "images_per_second": count * epochs / sum(times), "wall_seconds": wall,
        })
        print(json.dumps(rows[-1]))
    return rows


def benchmark_ours(path: pathlib.Path, model: str, arguments) -> dict:
    """One `run_inference` whose `fit` first compiles on a warm-up, then trains `epochs` epochs."""
    real_fit = atomicspi.inference.fit
    measured = {}

    def warmed_fit(svi, batches, num_steps, **options):
        started = time.perf_counter()
        real_fit(svi, batches, arguments.warmup_steps, **{**options, "checkpoint_path": None, "resume": False})
        measured["warmup_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        result = real_fit(svi, batches, num_steps, **options)
        measured["training_seconds"] = time.perf_counter() - started
        measured["images_per_second"] = result.images_per_second
        return result

    steps = arguments.epochs * math.ceil(arguments.n_particles / arguments.batch_size)
    config = load_config(path)
    config = dataclasses.replace(config, model=model, num_steps=steps, checkpoint_every=steps, output=path.parent / f"output_{model}")
    atomicspi.inference.fit = warmed_fit
    try:
        started = time.perf_counter()
        output = run_inference(config, progress=False)
        wall = time.perf_counter() - started
    finally:
        atomicspi.inference.fit = real_fit
    record = json.loads((output / "run.json").read_text())
    row = {
        "method": f"atomicspi {model}" + (f" (latent_dim {config.latent_dim})" if model == "deformation" else f" ({config.n_modes} modes)"),
        "images": steps * arguments.batch_size, "training_seconds": measured["training_seconds"],
        "images_per_second": measured["images_per_second"], "wall_seconds": wall,
        "warmup_seconds": measured["warmup_seconds"], "timings": record["timings"],
    }
    print(json.dumps(row))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cryodrgn-python", default=os.environ.get("CRYODRGN_PYTHON"),
                        help="Python of a virtualenv with cryodrgn installed (default: $CRYODRGN_PYTHON)")
    parser.add_argument("--n-particles", type=int, default=1000)
    parser.add_argument("--box-size", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["deformation", "nma"])
    parser.add_argument("--cryodrgn-default-particles", type=int, default=128,
                        help="also time cryoDRGN's default network on this many particles (0: skip)")
    parser.add_argument("--folder", default=None)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()

    folder = pathlib.Path(arguments.folder or tempfile.mkdtemp(prefix="svi-bench-"))
    started = time.perf_counter()
    path = simulate(folder, arguments)
    print(f"simulated {arguments.n_particles} particles, D = {arguments.box_size}, in {time.perf_counter() - started:.1f} s: {folder}")

    rows = []
    versions = {"jax": jax.__version__, "python": platform.python_version()}
    python = arguments.cryodrgn_python
    if python and pathlib.Path(python).exists():
        versions["cryodrgn_environment"] = cryodrgn_versions(python)
        rows += benchmark_cryodrgn(python, folder, arguments)
    else:
        print("cryoDRGN skipped: give --cryodrgn-python or $CRYODRGN_PYTHON (a virtualenv with `pip install cryodrgn`)"
              + (f"; {python} does not exist" if python else ""))
    for model in arguments.models:
        rows.append(benchmark_ours(path, model, arguments))

    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs; versions: {json.dumps(versions)}")
    print(f"{arguments.n_particles} particles, D = {arguments.box_size}, {arguments.pixel_size} A/px, SNR {arguments.snr}, "
          f"batch size {arguments.batch_size}, {arguments.epochs} epoch(s)\n")
    reference = next((row for row in rows if row["method"].startswith("cryoDRGN train_vae, 2x128")), None)
    print(f"{'method':52s} {'images':>7s} {'train s':>8s} {'images/s':>9s} {'wall s':>7s} {'vs cryoDRGN 2x128':>18s}")
    for row in rows:
        ratio = f"{row['images_per_second'] / reference['images_per_second']:.2f}x" if reference else "-"
        print(f"{row['method']:52s} {row['images']:7d} {row['training_seconds']:8.1f} {row['images_per_second']:9.1f} "
              f"{row['wall_seconds']:7.1f} {ratio:>18s}")


if __name__ == "__main__":
    main()
