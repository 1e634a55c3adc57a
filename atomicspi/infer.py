"""`python -m atomicspi.infer dataset.yaml`: fit a model to a particle stack and write the posterior.

Bad input (a missing file, a malformed star file, an unknown key in the yaml…) is reported as one
line, `error: <file>: <field>: <what>`, with exit status 2 and nothing written.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomicspi",
        description="Bayesian inference of per-particle conformations from single-particle images.",
    )
    parser.add_argument("dataset", nargs="?", help="dataset.yaml (see atomicspi.io.DatasetConfig for the keys)")
    parser.add_argument(
        "--example", metavar="FOLDER",
        help="simulate the bundled adenylate-kinase example into FOLDER, then fit it",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from atomicspi.inference import TrainingInterrupted
    from atomicspi.io import InputError

    arguments = _parser().parse_args(argv)
    if (arguments.dataset is None) == (arguments.example is None):
        _parser().error("give either a dataset.yaml or --example FOLDER")
    try:
        from atomicspi._pipeline import run_inference
        from atomicspi.io import load_config

        if arguments.example is not None:
            from atomicspi._example import write_example

            path = write_example(arguments.example)
            print(f"example dataset written to {path}", file=sys.stderr)
        else:
            path = arguments.dataset
        config = load_config(path)
        output = run_inference(config, resume=arguments.resume, progress=not arguments.quiet)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"stopped at step {interrupted.step}; checkpoint written, continue with --resume", file=sys.stderr)
        return interrupted.exit_status
    print(f"results written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
