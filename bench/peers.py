"""Peer heterogeneity methods on our simulated stacks: does their 1-D latent order the particles?

A stack written by `atomicspi._simulation.write_simulated_dataset` (a folder with `particles.star`
(RELION 3.1), `particles.mrcs` and `truth.npz`) is given, with its poses and CTF, to a peer tool,
which runs in its own virtualenv (`bash bench/peers_setup.sh` makes both):

- `cryodrgn`: `cryodrgn parse_pose_star` + `parse_ctf_star` read our star file, then `cryodrgn train_vae`
  with the given poses, `--zdim 1`, encoder and decoder MLPs `--layers` × `--width` (default 3 × 256),
  `--epochs` epochs (default 20), cryoDRGN's default batch size (16) and data sign (it inverts the
  images; `cryodrgn backproject_voxel` on our stacks gives a positive map that way and a negative one
  with `--uninvert-data`), no mixed precision, no analysis. z = the final `z.pkl`.
- `recovar`: `recovar pipeline particles.star --mask from_halfmaps --zdim 1,2,4 --accept-cpu`; poses and
  CTF are read from the star file by RECOVAR itself. z = `model/zdim_<smallest>/latent_coords.npy`
  (the regularised embedding in the span of the leading principal components; in the file's order).

Reported (JSON on stdout and in `<output>/result.json`): |Spearman| of the first latent coordinate
with `truth[--truth-key]` (default `path_position` if the truth has it, else `interpolation_fraction`),
the wall time of the whole peer run (every peer command, start-up included), epochs and per-epoch
seconds (cryoDRGN), the command lines, versions, how far the poses the peer parsed from our star file
are from the truth, and, when the truth has `--state-key` (default `state`), the minor-state
population: a two-component 1-D Gaussian mixture fitted by EM to z, its smaller weight next to the
true fraction of the rarer state, and the fraction of particles whose more responsible component
matches their state.

    python bench/peers.py cryodrgn FOLDER [--epochs 20 --zdim 1 --width 256 --layers 3] [--truth-key path_position]
    python bench/peers.py recovar FOLDER [--zdim 1,2,4] [--mask from_halfmaps] [--extra="--gpu-budget-gb 8"]

The peer's Python: `--python`, else `$CRYODRGN_PYTHON` / `$RECOVAR_PYTHON`, else
`bench/.venv-cryodrgn/bin/python` / `bench/.venv-recovar/bin/python`. Outputs go to
`--output` (default `FOLDER/peers/<peer>`; the peer's own run folder in it is replaced).
This script itself needs only numpy (the project's venv is fine).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

_BENCH = pathlib.Path(__file__).resolve().parent
_DEFAULT_PYTHON = {"cryodrgn": _BENCH / ".venv-cryodrgn/bin/python", "recovar": _BENCH / ".venv-recovar/bin/python"}
_ENVIRONMENT_VARIABLE = {"cryodrgn": "CRYODRGN_PYTHON", "recovar": "RECOVAR_PYTHON"}
_MAIN = {
    "cryodrgn": "import sys; from cryodrgn.command_line import main_commands; sys.argv[0] = 'cryodrgn'; sys.exit(main_commands())",
    "recovar": "import sys; from recovar.command_line import main_commands; sys.argv[0] = 'recovar'; sys.exit(main_commands())",
}
_EPOCH_LINE = re.compile(r"=====> Epoch: (\d+) .*Finished in (\d+):(\d+):([\d.]+)")


class PeerFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# metrics (numpy only)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1)
        start = stop
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def two_component_mixture(z: np.ndarray, iterations: int = 1000) -> dict:
    """EM for a two-component 1-D Gaussian mixture, started from 2-means (Lloyd) on quartile centres."""
    z = np.asarray(z, dtype=float)
    centres = np.quantile(z, [0.25, 0.75])
    for _ in range(100):
        labels = np.abs(z[:, None] - centres[None]).argmin(axis=1)
        new = np.array([z[labels == k].mean() if np.any(labels == k) else centres[k] for k in range(2)])
        if np.allclose(new, centres):
            break
        centres = new
    floor = 1e-6 * max(z.var(), 1e-30)
    weights = np.array([np.mean(labels == k) for k in range(2)]).clip(1e-3, None)
    weights /= weights.sum()
    means = centres.copy()
    variances = np.array([z[labels == k].var() if np.sum(labels == k) > 1 else z.var() for k in range(2)]).clip(floor, None)
    previous = -np.inf
    for _ in range(iterations):
        log_density = -0.5 * ((z[:, None] - means) ** 2 / variances + np.log(2 * np.pi * variances)) + np.log(weights)
        top = log_density.max(axis=1, keepdims=True)
        log_likelihood = float(np.sum(top[:, 0] + np.log(np.exp(log_density - top).sum(axis=1))))
        responsibilities = np.exp(log_density - top)
        responsibilities /= responsibilities.sum(axis=1, keepdims=True)
        counts = responsibilities.sum(axis=0).clip(1e-12, None)
        weights = counts / len(z)
        means = (responsibilities * z[:, None]).sum(axis=0) / counts
        variances = ((responsibilities * (z[:, None] - means) ** 2).sum(axis=0) / counts).clip(floor, None)
        if log_likelihood - previous < 1e-9 * abs(log_likelihood):
            break
        previous = log_likelihood
    return {"weights": weights, "means": means, "standard_deviations": np.sqrt(variances),
            "responsibilities": responsibilities, "log_likelihood": log_likelihood}


def evaluate(z: np.ndarray, truth: dict, truth_key: str, state_key: str, minor_label=None) -> dict:
    """Metrics of the first latent coordinate against the simulation's truth."""
    z = np.asarray(z, dtype=float)
    if z.ndim == 1:
        z = z[:, None]
    first = z[:, 0]
    values = np.asarray(truth[truth_key], dtype=float)
    if len(values) != len(first):
        raise ValueError(f"{len(first)} latent coordinates but {len(values)} truth values")
    if not np.all(np.isfinite(first)):
        raise ValueError(f"{np.sum(~np.isfinite(first))} latent coordinates are not finite")
    rho = spearman(first, values)
    result = {
        "n_particles": int(len(first)), "latent_shape": list(z.shape), "truth_key": truth_key,
        "abs_spearman": abs(rho), "spearman": rho,
    }
    if state_key in truth:
        states = np.asarray(truth[state_key]).reshape(-1)
        labels, counts = np.unique(states, return_counts=True)
        if minor_label is None:
            minor_label = labels[np.argmin(counts)]  # the rarer state
        else:
            minor_label = np.asarray(minor_label).astype(states.dtype)
        mixture = two_component_mixture(first)
        minor_component = int(np.argmin(mixture["weights"]))
        assigned_minor = mixture["responsibilities"].argmax(axis=1) == minor_component
        result["minor_state"] = {
            "state_key": state_key, "state_labels": labels.tolist(), "state_counts": counts.tolist(),
            "minor_label": minor_label.item(), "true_minor_fraction": float(np.mean(states == minor_label)),
            "mixture_minor_weight": float(mixture["weights"][minor_component]),
            "mixture_means": mixture["means"].tolist(), "mixture_standard_deviations": mixture["standard_deviations"].tolist(),
            # fraction of particles whose more responsible component is their state's (minor <-> rarer label)
            "assignment_agreement": float(np.mean(assigned_minor == (states == minor_label))) if len(labels) == 2 else None,
        }
    return result


def pose_deviation(rotations: np.ndarray, translations: np.ndarray, truth: dict, box_size: int, pixel_size: float) -> dict:
    """How far the poses a peer parsed from our star file are from the truth (cryoDRGN conventions:
    translations in fractions of the box, shift = -translation · D · Å/px, as in bench/svi.py)."""
    deviation = {}
    if "rotations" in truth:
        deviation["rotations_max_abs_difference"] = float(np.abs(np.asarray(rotations) - truth["rotations"]).max())
    if "shifts_in_angstroms" in truth:
        shifts = -np.asarray(translations) * box_size * pixel_size
        deviation["shifts_max_abs_difference_in_angstroms"] = float(np.abs(shifts - truth["shifts_in_angstroms"]).max())
    return deviation


# --------------------------------------------------------------------------------------------------
# running the peers


def peer_python(peer: str, given: str | None) -> str:
    python = given or os.environ.get(_ENVIRONMENT_VARIABLE[peer]) or str(_DEFAULT_PYTHON[peer])
    if not pathlib.Path(python).exists() and shutil.which(python) is None:
        raise PeerFailed(f"no Python for {peer} at {python}: run `bash bench/peers_setup.sh {peer}` or give --python")
    return python


def run_peer(python: str, peer: str, arguments: list[str], log: pathlib.Path, commands: list[str]) -> float:
    """Run one peer command with its Python, its output to `log`; returns the wall time."""
    commands.append(shlex.join([peer, *arguments]))
    started = time.perf_counter()
    with open(log, "w") as stream:
        completed = subprocess.run([python, "-c", _MAIN[peer], *arguments], stdout=stream, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise PeerFailed(f"`{commands[-1]}` exited with status {completed.returncode} after {wall:.0f} s; log {log}:\n{tail}")
    return wall


def peer_script(python: str, script: str, *arguments: str) -> str:
    completed = subprocess.run([python, "-c", script, *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise PeerFailed(f"{python} -c {script!r} failed:\n{completed.stderr[-4000:]}")
    return completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""


def optics(star: pathlib.Path) -> tuple[int, float]:
    """Box size and pixel size from the optics table of our star file (one optics group)."""
    lines = [line.strip() for line in star.read_text().splitlines()]
    start = lines.index("data_optics")
    columns, row = [], None
    for line in lines[start + 1:]:
        if line.startswith("_rln"):
            columns.append(line.split()[0])
        elif columns and line and not line.startswith(("#", "loop_")):
            row = line.split()
            break
    values = dict(zip(columns, row))
    return int(float(values["_rlnImageSize"])), float(values["_rlnImagePixelSize"])


def prepare(folder: pathlib.Path, output: pathlib.Path | None, peer: str, truth_key: str | None) -> tuple[pathlib.Path, dict, str]:
    star = folder / "particles.star"
    if not star.exists():
        raise PeerFailed(f"{star} not found: FOLDER must be a stack written by write_simulated_dataset")
    with np.load(folder / "truth.npz") as stored:
        truth = {key: stored[key] for key in stored.files}
    if truth_key is None:
        truth_key = next((key for key in ("path_position", "interpolation_fraction") if key in truth), None)
        if truth_key is None:
            raise PeerFailed(f"truth.npz has neither path_position nor interpolation_fraction ({sorted(truth)}): give --truth-key")
    elif truth_key not in truth:
        raise PeerFailed(f"truth.npz has no {truth_key!r} ({sorted(truth)})")
    output = output or folder / "peers" / peer
    output.mkdir(parents=True, exist_ok=True)
    return output, truth, truth_key


def cryodrgn(arguments) -> dict:
    folder = arguments.folder.resolve()
    output, truth, truth_key = prepare(folder, arguments.output, "cryodrgn", arguments.truth_key)
    python = peer_python("cryodrgn", arguments.python)
    versions = json.loads(peer_script(python, (
        "import json, cryodrgn, torch, numpy; print(json.dumps({'cryodrgn': cryodrgn.__version__, 'torch': torch.__version__, "
        "'numpy': numpy.__version__, 'torch_threads': torch.get_num_threads()}))")))
    star = str(folder / "particles.star")
    run = output / "train_vae"
    shutil.rmtree(run, ignore_errors=True)
    network = ["--enc-dim", str(arguments.width), "--enc-layers", str(arguments.layers),
               "--dec-dim", str(arguments.width), "--dec-layers", str(arguments.layers)]
    commands = []
    started = time.perf_counter()
    run_peer(python, "cryodrgn", ["parse_pose_star", star, "-o", str(output / "pose.pkl")], output / "parse_pose_star.log", commands)
    run_peer(python, "cryodrgn", ["parse_ctf_star", star, "-o", str(output / "ctf.pkl")], output / "parse_ctf_star.log", commands)
    training_wall = run_peer(python, "cryodrgn", [
        "train_vae", star, "--poses", str(output / "pose.pkl"), "--ctf", str(output / "ctf.pkl"),
        "--zdim", str(arguments.zdim), "-n", str(arguments.epochs), "-b", str(arguments.batch_size), *network,
        "--seed", str(arguments.seed), "--no-amp", "--no-analysis", *shlex.split(arguments.extra), "-o", str(run),
    ], output / "train_vae.log", commands)
    wall = time.perf_counter() - started
    # z.pkl and pose.pkl are this run's own outputs: unpickled in the peer's environment, passed on as .npy
    peer_script(python, (
        "import pickle, sys, numpy as np; z = pickle.load(open(sys.argv[1], 'rb')); rotations, translations = pickle.load(open(sys.argv[2], 'rb'))[:2]; "
        "np.savez(sys.argv[3], z=np.asarray(z, dtype=np.float64), rotations=rotations, translations=translations)"),
        str(run / "z.pkl"), str(output / "pose.pkl"), str(output / "z_and_poses.npz"))
    with np.load(output / "z_and_poses.npz") as parsed:
        z, rotations, translations = parsed["z"], parsed["rotations"], parsed["translations"]
    np.save(output / "z.npy", z)
    epochs = []
    for line in (output / "train_vae.log").read_text(errors="replace").splitlines():
        match = _EPOCH_LINE.search(line)
        if match:
            hours, minutes, seconds = match.group(2, 3, 4)
            epochs.append(3600 * int(hours) + 60 * int(minutes) + float(seconds))
    box_size, pixel_size = optics(folder / "particles.star")
    return {
        "peer": "cryodrgn", "folder": str(folder), **evaluate(z, truth, truth_key, arguments.state_key, arguments.minor_label),
        "wall_seconds": wall, "train_vae_wall_seconds": training_wall,
        "epochs": arguments.epochs, "epoch_seconds": epochs, "mean_epoch_seconds": float(np.mean(epochs)) if epochs else None,
        "settings": {"zdim": arguments.zdim, "width": arguments.width, "layers": arguments.layers,
                     "batch_size": arguments.batch_size, "seed": arguments.seed},
        "parsed_pose_deviation_from_truth": pose_deviation(rotations, translations, truth, box_size, pixel_size),
        "commands": commands, "versions": versions,
    }


def recovar(arguments) -> dict:
    folder = arguments.folder.resolve()
    output, truth, truth_key = prepare(folder, arguments.output, "recovar", arguments.truth_key)
    python = peer_python("recovar", arguments.python)
    versions = json.loads(peer_script(python, (
        "import json, importlib.metadata as m, jax, numpy; print(json.dumps({'recovar': m.version('recovar'), 'jax': jax.__version__, "
        "'numpy': numpy.__version__, 'jax_devices': [str(d) for d in jax.devices()]}))")))
    zdims = sorted({int(value) for value in arguments.zdim.split(",")})
    star = str(folder / "particles.star")
    run = output / "pipeline"
    shutil.rmtree(run, ignore_errors=True)
    commands = []
    started = time.perf_counter()
    run_peer(python, "recovar", [
        "pipeline", star, "--mask", arguments.mask, "--zdim", ",".join(map(str, zdims)), "--accept-cpu",
        *shlex.split(arguments.extra), "-o", str(run),
    ], output / "pipeline.log", commands)
    wall = time.perf_counter() - started
    embeddings = {zdim: np.load(run / "model" / f"zdim_{zdim}" / "latent_coords.npy") for zdim in zdims
                  if (run / "model" / f"zdim_{zdim}" / "latent_coords.npy").exists()}
    if not embeddings:
        raise PeerFailed(f"no {run}/model/zdim_*/latent_coords.npy for zdims {zdims}")
    lowest = min(embeddings)
    np.save(output / "z.npy", embeddings[lowest])
    # the poses RECOVAR itself read from our star file (recovar.data_io.metadata_readers)
    box_size, pixel_size = optics(folder / "particles.star")
    peer_script(python, (
        "import sys, numpy as np; from recovar.data_io.metadata_readers import parse_poses_from_star; "
        "rotations, translations = parse_poses_from_star(sys.argv[1], int(sys.argv[2])); "
        "np.savez(sys.argv[3], rotations=rotations, translations=translations)"), star, str(box_size), str(output / "poses.npz"))
    with np.load(output / "poses.npz") as parsed:
        deviation = pose_deviation(parsed["rotations"], parsed["translations"], truth, box_size, pixel_size)
    log = (output / "pipeline.log").read_text(errors="replace")
    return {
        "peer": "recovar", "folder": str(folder), "zdim_used": lowest, **evaluate(embeddings[lowest], truth, truth_key, arguments.state_key, arguments.minor_label),
        "wall_seconds": wall,
        "first_coordinate_abs_spearman_by_zdim": {str(zdim): abs(spearman(np.asarray(value)[:, 0], truth[truth_key])) for zdim, value in embeddings.items()},
        "data_sign_flipped_by_recovar": "Swapping sign of data" in log,
        "settings": {"zdim": zdims, "mask": arguments.mask, "extra": arguments.extra},
        "parsed_pose_deviation_from_truth": deviation,
        "commands": commands, "versions": versions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    peers = parser.add_subparsers(dest="peer", required=True)
    for name, default_zdim in (("cryodrgn", "1"), ("recovar", "1,2,4")):
        sub = peers.add_parser(name)
        sub.add_argument("folder", type=pathlib.Path, help="stack written by write_simulated_dataset")
        sub.add_argument("--python", help=f"Python of the {name} virtualenv (default ${_ENVIRONMENT_VARIABLE[name]}, else {_DEFAULT_PYTHON[name].relative_to(_BENCH.parent)})")
        sub.add_argument("--output", type=pathlib.Path, help=f"output folder (default FOLDER/peers/{name})")
        sub.add_argument("--truth-key", help="truth.npz array to correlate with (default path_position, else interpolation_fraction)")
        sub.add_argument("--state-key", default="state", help="truth.npz array of discrete states for the minor population (skipped if absent)")
        sub.add_argument("--minor-label", type=int, help="the minor state's label in --state-key (default: the rarer label; "
                         "atomicspi._transition_paths.two_state_path_positions writes 1)")
        sub.add_argument("--extra", default="", help=f"further {name} arguments, one shell-quoted string: --extra=\"--flag value\"")
        sub.add_argument("--json", type=pathlib.Path, help="also write the result here")
        if name == "cryodrgn":
            sub.add_argument("--epochs", type=int, default=20)
            sub.add_argument("--zdim", type=int, default=1)
            sub.add_argument("--width", type=int, default=256, help="encoder and decoder hidden width")
            sub.add_argument("--layers", type=int, default=3, help="encoder and decoder hidden layers")
            sub.add_argument("--batch-size", type=int, default=16, help="cryoDRGN's default: 16")
            sub.add_argument("--seed", type=int, default=0)
        else:
            sub.add_argument("--zdim", default=default_zdim, help="comma-separated zdims for RECOVAR; the smallest is scored")
            sub.add_argument("--mask", default="from_halfmaps", help="RECOVAR --mask: from_halfmaps, sphere, none or an .mrc")
    arguments = parser.parse_args()
    output = arguments.output or arguments.folder.resolve() / "peers" / arguments.peer
    header = {"command": shlex.join([sys.executable, *sys.argv]), "host": platform.node(), "cpu_count": os.cpu_count()}
    try:
        result = {**(cryodrgn(arguments) if arguments.peer == "cryodrgn" else recovar(arguments)), **header}
        status = 0
    except PeerFailed as error:
        result = {"peer": arguments.peer, "folder": str(arguments.folder), "error": str(error), **header}
        status = 1
    text = json.dumps(result, indent=2)
    output.mkdir(parents=True, exist_ok=True)
    (output / "result.json").write_text(text + "\n")
    if arguments.json:
        arguments.json.write_text(text + "\n")
    print(text)
    sys.exit(status)


if __name__ == "__main__":
    main()
