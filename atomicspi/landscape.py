"""`python -m atomicspi.landscape OUTPUT --cv SPEC [--cv SPEC]`: landscape, states and kinetics of a run.

Writes landscape.png, landscape.npz, states.json (and ensemble.pdb/.dcd, state_K.pdb when the run
has structures) into OUTPUT. Images give thermodynamics (populations); the kinetics (MSM, mean
first-passage times) assume diffusion on the landscape with the diffusion coefficient --diffusion.
Bad input: `error: <one line>` on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys

from .io import InputError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atomicspi.landscape", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="an inference output folder (posterior.nc, run.json, topology.pdb, *.dcd)")
    parser.add_argument(
        "--cv", action="append",
        help="collective variable, once or twice for 2-D: mode:K, latent:K, pc:K, distance:I,J, angle:I,J,K, "
        "rmsd:PATH (0-based indices; default mode:0, or pc:0 for a latent model)",
    )
    parser.add_argument("--kT", type=float, default=1.0, help="thermal energy (default 1: F in kT)")
    parser.add_argument("--bins", type=int, default=None, help="bins per CV (default: sqrt(N particles) in 1-D, 10 to 50; 2*N^(1/4) in 2-D, 8 to 30; fewer if needed to keep the populated cells connected)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates (default 200)")
    parser.add_argument("--min-barrier", type=float, default=1.0, help="merge basins with lower barriers, in kT")
    parser.add_argument(
        "--diffusion", type=float, default=1.0,
        help="diffusion coefficient D in (CV unit)^2 per time unit, an assumption for the kinetics (default 1)",
    )
    parser.add_argument("--lag", type=float, default=None, help="MSM lag time in D's time unit")
    parser.add_argument("--structures", type=int, default=20, help="structures in the sampled ensemble")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    from .products import run_products

    try:
        for name, value, low in (("--bins", arguments.bins, 2), ("--bootstrap", arguments.bootstrap, 1),
                                 ("--structures", arguments.structures, 1)):
            if value is not None and value < low:
                raise InputError(f"{name}: must be at least {low}, got {value}")
        for name, value in (("--kT", arguments.kT), ("--diffusion", arguments.diffusion), ("--lag", arguments.lag)):
            if value is not None and not value > 0:
                raise InputError(f"{name}: must be positive, got {value}")
        record = run_products(
            arguments.output, cv=arguments.cv, kT=arguments.kT, n_bins=arguments.bins,
            n_bootstrap=arguments.bootstrap, min_barrier_in_kT=arguments.min_barrier,
            diffusion_coefficient=arguments.diffusion, lag_time=arguments.lag,
            n_structures=arguments.structures, seed=arguments.seed,
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for state in record["states"]:
        print(
            f"state {state['state']}: minimum at {state['minimum']}, population {state['population']:.3f} "
            f"[{state['population_low']:.3f}, {state['population_high']:.3f}]"
        )
    print(f"wrote landscape.png, landscape.npz, states.json in {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
