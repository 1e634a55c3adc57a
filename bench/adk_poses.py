"""Issue-15 benchmark: orientations from the images. A stack simulated by bench/adk_paths.py
(cryoJAX images of AdK on a closed → open path, 2,000 particles, 64², 1.5 Å/px, SNR 0.1) is given
to `poses: search` as a star file without angles or origins, with default settings otherwise; the
run's poses are scored against the simulation's, and its conformations as adk_paths.py scores them
(to compare with the same stack's run with the true poses given).

    python bench/adk_paths.py --generator hinge --folder DIR --simulate-only
    python bench/adk_poses.py --prepare --folder DIR        # DIR/particles_without_poses.star, DIR/search.yaml
    python -m atomicspi.infer DIR/search.yaml               # output in DIR/output_search
    python bench/adk_poses.py --evaluate DIR/output_search --folder DIR

Scores: the geodesic angle between inferred and true rotations and the shift error (median, 90th
percentile, fraction within 5°), for the search alone (`pose_search.npz`) and after refinement
(`particles.star`, the posterior mean pose); the fraction of particles whose true rotation lies
within the reported 90 % angular spread (`posterior.nc` `pose_summary`), and the conformation
scores of adk_paths.py.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def prepare(folder: pathlib.Path) -> pathlib.Path:
    import starfile
    import yaml

    tables = starfile.read(folder / "particles.star", always_dict=True)
    particles = tables["particles"]
    tables["particles"] = particles.drop(columns=[c for c in particles.columns if c.startswith(("rlnAngle", "rlnOrigin"))])
    starfile.write(tables, folder / "particles_without_poses.star", overwrite=True)
    config = yaml.safe_load((folder / "dataset.yaml").read_text())
    config.update(particles="particles_without_poses.star", poses="search", output="output_search")
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _pose_errors(rotations, shifts, truth) -> dict:
    import jax.numpy as jnp

    from atomicspi.conventions import geodesic_distance_in_degrees

    angles = np.asarray(geodesic_distance_in_degrees(jnp.asarray(rotations), jnp.asarray(truth["rotations"])))
    shift_errors = np.linalg.norm(np.asarray(shifts) - truth["shifts_in_angstroms"], axis=1)
    return {
        "median_angle_error_in_degrees": float(np.median(angles)),
        "percentile_90_angle_error_in_degrees": float(np.quantile(angles, 0.9)),
        "fraction_within_5_degrees": float(np.mean(angles <= 5.0)),
        "median_shift_error_in_angstroms": float(np.median(shift_errors)),
    }, angles


def evaluate(output: pathlib.Path, folder: pathlib.Path) -> dict:
    import adk_paths

    from atomicspi.api import load_posterior, load_run_record
    from atomicspi.io import load_particles

    with np.load(folder / "truth.npz") as stored:
        truth = {name: stored[name] for name in ("rotations", "shifts_in_angstroms", "state")}
    with np.load(output / "pose_search.npz") as stored:
        searched, searched_angles = _pose_errors(stored["rotations"], stored["shifts_in_angstroms"], truth)
    back = load_particles(output / "particles.star")
    refined, angles = _pose_errors(back.rotations, back.shifts_in_angstroms, truth)
    for errors, scores in ((searched_angles, searched), (angles, refined)):
        for state in (0, 1):  # the major (near closed, the reference) and the minor (near open) state
            scores[f"median_angle_error_in_degrees_state_{state}"] = float(np.median(errors[truth["state"] == state]))
    spread = load_posterior(output).pose_summary.angular_spread_in_degrees.values
    refined["coverage_of_90_percent_angular_spread"] = float(np.mean(angles <= spread))
    refined["median_angular_spread_in_degrees"] = float(np.median(spread))
    record = load_run_record(output)
    return {
        "search": searched, "refined": refined, "timings": record["timings"],
        "conformations": adk_paths.evaluate(output, folder),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="a dataset folder written by bench/adk_paths.py")
    parser.add_argument("--prepare", action="store_true", help="write the star file without poses and search.yaml")
    parser.add_argument("--evaluate", default=None, metavar="OUTPUT_FOLDER", help="score a finished poses: search run")
    args = parser.parse_args()
    folder = pathlib.Path(args.folder)
    if args.prepare:
        print(f"wrote {prepare(folder)}")
    if args.evaluate:
        print(json.dumps(evaluate(pathlib.Path(args.evaluate), folder), indent=1))


if __name__ == "__main__":
    main()
