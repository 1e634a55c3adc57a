"""`python -m atomicspi.infer dataset.yaml`: fit a model to a particle stack and write the posterior.

Bad input (a missing file, a malformed star file, an unknown key in the yaml…) is reported as one
line, `error: <file>: <field>: <what>`, with exit status 2 and nothing written.

Several processes (one per host, say) train together when each is started with the environment
variables `ATOMICSPI_COORDINATOR_ADDRESS` (`host:port` of process 0), `ATOMICSPI_NUM_PROCESSES` and
`ATOMICSPI_PROCESS_ID` (0, 1, …), and the same `PYTHONHASHSEED` (e.g. 0): they initialise
`jax.distributed`, split every minibatch over the devices of all processes, and process 0 alone
writes the results (`run_inference`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

__all__ = ["main"]

_PROCESS_VARIABLES = ("ATOMICSPI_COORDINATOR_ADDRESS", "ATOMICSPI_NUM_PROCESSES", "ATOMICSPI_PROCESS_ID")


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


def _process_settings(environment: Mapping[str, str]) -> tuple[str, int, int] | None:
    """The coordinator address, process count and process id of a multi-process run from the
    `ATOMICSPI_*` environment variables; `None` when none of them is set.

    **Raises:** `InputError` (one line naming the variable) for a missing or malformed value.
    """
    from atomicspi.io import InputError

    given = {name: environment[name].strip() for name in _PROCESS_VARIABLES if environment.get(name, "").strip()}
    if not given:
        return None
    for name in _PROCESS_VARIABLES:
        if name not in given:
            raise InputError(f"environment: {name}: not set (a multi-process run needs all of {', '.join(_PROCESS_VARIABLES)})")
    address = given["ATOMICSPI_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"environment: ATOMICSPI_COORDINATOR_ADDRESS: {address!r} is not host:port (process 0's host and a free port)")
    numbers = {}
    for name in ("ATOMICSPI_NUM_PROCESSES", "ATOMICSPI_PROCESS_ID"):
        try:
            numbers[name] = int(given[name])
        except ValueError:
            raise InputError(f"environment: {name}: {given[name]!r} is not an integer") from None
    count, identifier = numbers["ATOMICSPI_NUM_PROCESSES"], numbers["ATOMICSPI_PROCESS_ID"]
    if count < 1:
        raise InputError(f"environment: ATOMICSPI_NUM_PROCESSES: {count} is not a positive number of processes")
    if not 0 <= identifier < count:
        raise InputError(f"environment: ATOMICSPI_PROCESS_ID: {identifier} is not in 0..{count - 1} (ATOMICSPI_NUM_PROCESSES is {count})")
    if not environment.get("PYTHONHASHSEED", "").strip().isdigit():
        # numpyro's Trace_ELBO sums the ELBO's terms in the order of a set of site names: with
        # different hash seeds the processes compile different programs, whose collectives mismatch
        raise InputError(
            "environment: PYTHONHASHSEED: a multi-process run needs the same fixed hash seed in every process, "
            "e.g. PYTHONHASHSEED=0 (the processes must compile the same program)"
        )
    return address, count, identifier


def _initialize_processes(address: str, count: int, identifier: int) -> None:
    """`jax.distributed.initialize`, with cross-process collectives on CPU (gloo) too."""
    import jax

    from atomicspi.io import InputError

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=identifier)
    except RuntimeError as error:  # e.g. the coordinator was not reached within the initialisation timeout
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"environment: ATOMICSPI_COORDINATOR_ADDRESS: process {identifier} of {count} could not join {address} ({message})") from None


def main(argv: list[str] | None = None) -> int:
    from atomicspi.inference import TrainingInterrupted
    from atomicspi.io import InputError

    arguments = _parser().parse_args(argv)
    if (arguments.dataset is None) == (arguments.example is None):
        _parser().error("give either a dataset.yaml or --example FOLDER")
    try:
        processes = _process_settings(os.environ)
        if processes is not None:
            if arguments.example is not None:
                raise InputError("environment: ATOMICSPI_NUM_PROCESSES: --example runs in one process (unset the ATOMICSPI_* variables)")
            _initialize_processes(*processes)

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
    if processes is not None and processes[2] != 0:
        print(f"process {processes[2]} of {processes[1]}: training done; process 0 writes the results to {output}", file=sys.stderr)
    else:
        print(f"results written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
