"""`python -m atomicspi.simulate OUTPUT`: write a synthetic dataset with ground truth.

Conformations come either from given structures (linear interpolation between two structures of the
same atoms, `--structures START END`, fractions uniform in `--fraction-range`) or from a model's prior
(`--prior nma --structures REFERENCE`: mode amplitudes drawn from the elastic-network Boltzmann prior).
Writes a RELION 3.1 star file + `.mrcs`, `reference.pdb`, `truth.npz` and a `dataset.yaml`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m atomicspi.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--structures", nargs="+", required=True, metavar="PDB", help="START [END] structures")
    parser.add_argument("--prior", choices=["nma"], help="draw conformations from this model's prior")
    parser.add_argument("--n-particles", type=int, default=2000)
    parser.add_argument("--box-size", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=1.5, help="Å per pixel")
    parser.add_argument("--snr", type=float, default=0.1, help="signal variance over noise variance")
    parser.add_argument("--fraction-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--n-modes", type=int, default=10)
    parser.add_argument("--spring-constant", type=float, default=1.0, help="γ of the prior, kT/Å²")
    parser.add_argument("--model", default="nma", help="model named in the written dataset.yaml")
    parser.add_argument("--seed", type=int, default=0)
    optics = parser.add_argument_group("optics (one optics group; written to the star file)")
    optics.add_argument("--beam-tilt", type=float, nargs=2, metavar=("X", "Y"), help="beam tilt in mrad (rlnBeamTiltX/Y)")
    optics.add_argument("--odd-zernike", type=float, nargs="+", metavar="C", help="RELION's odd Zernike coefficients (rlnOddZernike)")
    optics.add_argument("--even-zernike", type=float, nargs="+", metavar="C", help="RELION's even Zernike coefficients (rlnEvenZernike)")
    optics.add_argument("--b-factor", type=float, metavar="B", help="CTF envelope B-factor in Å² (rlnCtfBfactor)")
    return parser


def _optics(arguments) -> dict:
    """The `optics` of `simulate_particles` from the command line's optics options."""
    optics: dict = {}
    if arguments.beam_tilt is not None:
        optics["beam_tilt_x_in_milliradians"], optics["beam_tilt_y_in_milliradians"] = arguments.beam_tilt
    if arguments.odd_zernike is not None:
        optics["odd_zernike_coefficients"] = arguments.odd_zernike
    if arguments.even_zernike is not None:
        optics["even_zernike_coefficients"] = arguments.even_zernike
    if arguments.b_factor is not None:
        optics["b_factor_in_angstroms_squared"] = arguments.b_factor
    return optics


def main(argv: list[str] | None = None) -> int:
    from atomicspi._simulation import (
        interpolated_conformations,
        prior_conformations,
        simulate_particles,
        write_simulated_dataset,
    )
    from atomicspi.io import InputError
    from atomicspi.structure import load_structure

    arguments = _parser().parse_args(argv)
    try:
        start = load_structure(arguments.structures[0])
        start = start.with_positions(start.positions_in_angstroms - start.positions_in_angstroms.mean(axis=0))
        rng = np.random.default_rng(arguments.seed)
        if arguments.prior is not None:
            positions, truth = prior_conformations(
                start, arguments.n_particles, arguments.n_modes, arguments.spring_constant, arguments.seed
            )
        else:
            if len(arguments.structures) != 2:
                raise InputError("--structures: give START and END to interpolate between (or use --prior)")
            low, high = arguments.fraction_range
            fractions = rng.uniform(low, high, size=arguments.n_particles)
            positions = interpolated_conformations(start, load_structure(arguments.structures[1]), fractions)
            truth = {"interpolation_fraction": fractions}
        particles = simulate_particles(
            start, positions, arguments.box_size, arguments.pixel_size, arguments.snr, seed=arguments.seed,
            optics=_optics(arguments),
        )
        path = write_simulated_dataset(arguments.output, start, particles, truth_extra=truth, model=arguments.model)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
