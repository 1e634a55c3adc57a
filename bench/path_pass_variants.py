"""The curve posterior's cost against its accuracy: rerun only the posterior pass of a finished
`deformation` fit (its checkpoint, through `--resume`) with other schedules of the path pass
(`atomicspi/_families/_deformation.py`: its refinement rounds, how far the curve runs past the means, the
finer blocks added to the decoder, the curve's smoother; a variant leaves the others at the module's defaults, which
move between sessions: `fifteenth_session_defaults` pins the previous ones), each in a copy of the output folder, then score with `bench/adk_paths.py --evaluate`.

    python bench/path_pass_variants.py --folder /tmp/bench/aanm --variant one_round
    python bench/adk_paths.py --evaluate /tmp/bench/aanm/output_one_round --folder /tmp/bench/aanm
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

VARIANTS = {
    "two_rounds": {"_CURVE_REFINEMENTS": 2},
    "one_round": {"_CURVE_REFINEMENTS": 1},
    "no_refinement": {"_CURVE_REFINEMENTS": 0},
    "one_round_longer_curve": {"_CURVE_REFINEMENTS": 1, "_CURVE_EXTENSION": 0.25},
    "two_rounds_longer_curve": {"_CURVE_REFINEMENTS": 2, "_CURVE_EXTENSION": 0.25, "_CURVE_FINE_BEADS_PER_BLOCK": 0},
    "fine_blocks_4": {"_CURVE_FINE_BEADS_PER_BLOCK": 4},
    "fine_blocks_6": {"_CURVE_FINE_BEADS_PER_BLOCK": 6},
    "fine_blocks_4_three_rounds": {"_CURVE_FINE_BEADS_PER_BLOCK": 4, "_CURVE_REFINEMENTS": 3},
    "residual_noise": {"_CURVE_RESIDUAL_NOISE": True},
    "no_residual_noise": {"_CURVE_RESIDUAL_NOISE": False},
    "learning_rate_1e-2": {"_CURVE_LEARNING_RATE": 1e-2},
    "fine_atoms_turn": {"_CURVE_FINE_ATOMS_TURN": True},
    "fine_atoms_follow_beads": {"_CURVE_FINE_ATOMS_TURN": False},
    "residue_turns": {"_CURVE_RESIDUE_TURNS": True},
    "fine_learning_rate_1e-2": {"_CURVE_FINE_LEARNING_RATE": 1e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 1.0},
    "fine_learning_rate_3e-2": {"_CURVE_FINE_LEARNING_RATE": 3e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 1.0},
    "fine_learning_rate_3e-2_cosine": {"_CURVE_FINE_LEARNING_RATE": 3e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 0.03},
    "fine_learning_rate_1e-2_cosine": {"_CURVE_FINE_LEARNING_RATE": 1e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 0.03},
    "fine_learning_rate_1e-1_cosine": {"_CURVE_FINE_LEARNING_RATE": 1e-1, "_CURVE_FINAL_LEARNING_RATE_SHARE": 0.03},
    "kernel_means_4": {"_CURVE_RUNNING_LINES": False, "_CURVE_BANDWIDTH_IN_NODES": 4.0, "_CURVE_FINE_LEARNING_RATE": 1e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 0.03},
    "running_lines_4": {"_CURVE_RUNNING_LINES": True, "_CURVE_BANDWIDTH_IN_NODES": 4.0, "_CURVE_FINE_LEARNING_RATE": 1e-2, "_CURVE_FINAL_LEARNING_RATE_SHARE": 0.03},
    "running_lines_8": {"_CURVE_RUNNING_LINES": True, "_CURVE_BANDWIDTH_IN_NODES": 8.0},
    "structure_extension": {"_CURVE_EXTEND_ALONG_STRUCTURE": True},
    "structure_extension_no_refinement": {"_CURVE_EXTEND_ALONG_STRUCTURE": True, "_CURVE_REFINEMENTS": 0},
    "kernel_means_2": {"_CURVE_RUNNING_LINES": False, "_CURVE_BANDWIDTH_IN_NODES": 2.0},
    "fifteenth_session_defaults": {"_CURVE_RUNNING_LINES": False, "_CURVE_BANDWIDTH_IN_NODES": 2.0, "_CURVE_FINE_LEARNING_RATE": 3e-3,
                                   "_CURVE_FINAL_LEARNING_RATE_SHARE": 1.0},
    "unfold_ends": {"_CURVE_UNFOLD_ENDS": True},
    "constant_learning_rate_3e-3": {"_CURVE_FINE_LEARNING_RATE": 3e-3, "_CURVE_FINAL_LEARNING_RATE_SHARE": 1.0},
}


def main() -> None:
    import yaml

    import atomicspi._families._deformation as deformation
    from atomicspi.infer import main as infer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=pathlib.Path, required=True, help="the dataset folder (dataset.yaml, output/)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--source", help="the output folder whose checkpoint is resumed (default: the yaml's output)")
    arguments = parser.parse_args()
    for name, value in VARIANTS[arguments.variant].items():
        setattr(deformation, name, value)
    config = yaml.safe_load((arguments.folder / "dataset.yaml").read_text())
    source = arguments.folder / (arguments.source or config.get("output", "output"))
    target = arguments.folder / f"output_{arguments.variant}"
    target.mkdir(exist_ok=True)
    for checkpoint in ("checkpoint.json", "checkpoint.npz"):
        shutil.copy2(source / checkpoint, target / checkpoint)
    config["output"] = target.name
    yaml_path = arguments.folder / f"dataset_{arguments.variant}.yaml"
    yaml_path.write_text(yaml.safe_dump(config))
    raise SystemExit(infer([str(yaml_path), "--resume"]))


if __name__ == "__main__":
    main()
