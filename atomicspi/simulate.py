"""`python -m atomicspi.simulate OUTPUT`: write a synthetic dataset with ground truth.

Conformations come either from given structures (linear interpolation between two structures of the
same atoms, `--structures START END`, fractions uniform in `--fraction-range`) or from a model's prior
(`--prior nma --structures REFERENCE`: mode amplitudes drawn from the elastic-network Boltzmann prior).
Writes a RELION 3.1 star file + `.mrcs`, `reference.pdb`, `truth.npz` and a `dataset.yaml`.

With `--tilt-series` (cryo-ET), each particle is seen in a tilt series instead (dose-symmetric or
sequential, ±`--max-tilt` in `--tilt-step` steps, `--dose-per-tilt` e⁻/Å² each, defocus from the
particle's height, exposure filter), written as a RELION 5 project: `tomograms.star`,
`tilt_series/*.star`, `particles.star` and one 2D stack of tilt images per particle
(`Subtomograms/<particle>_stack2d.mrcs`), with `reference.pdb` and `truth.npz`
(`atomicspi._tilt_series_simulation`; no `dataset.yaml`: the pipeline does not fit tilt series yet).
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
    tilts = parser.add_argument_group("tilt series (cryo-ET; written as a RELION 5 project)")
    tilts.add_argument("--tilt-series", action="store_true", help="see each particle in a tilt series")
    tilts.add_argument("--n-tomograms", type=int, default=1, help="particles are spread over this many tilt series")
    tilts.add_argument("--max-tilt", type=float, default=60.0, help="largest stage tilt in degrees")
    tilts.add_argument("--tilt-step", type=float, default=3.0, help="tilt increment in degrees")
    tilts.add_argument("--tilt-order", choices=["dose-symmetric", "sequential"], default="dose-symmetric")
    tilts.add_argument("--dose-per-tilt", type=float, default=3.0, help="exposure of each tilt image in e/Å²")
    tilts.add_argument("--max-dose", type=float, help="leave out tilt images with more pre-exposure (e/Å²)")
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


def _simulate_tilt_series(arguments, structure, positions, truth):
    """`--tilt-series`: simulate and write a RELION 5 project; returns the particle file's path."""
    from atomicspi._tilt_series_simulation import simulate_tilt_series, write_tilt_series_dataset
    from atomicspi.io import InputError

    if _optics(arguments):
        raise InputError("--tilt-series: the optics options (--beam-tilt, --odd-zernike, --even-zernike, --b-factor) are not simulated for tilt series")
    try:
        simulated = simulate_tilt_series(
            structure, positions, arguments.box_size, arguments.pixel_size, arguments.snr, seed=arguments.seed,
            n_tomograms=arguments.n_tomograms, max_tilt_in_degrees=arguments.max_tilt,
            tilt_step_in_degrees=arguments.tilt_step, tilt_order=arguments.tilt_order,
            dose_per_tilt_in_electrons_per_square_angstrom=arguments.dose_per_tilt,
            max_dose_in_electrons_per_square_angstrom=arguments.max_dose,
        )
    except ValueError as error:
        raise InputError(f"--tilt-series: {error}") from None
    return write_tilt_series_dataset(arguments.output, structure, simulated, truth_extra=truth)


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
        if arguments.tilt_series:
            path = _simulate_tilt_series(arguments, start, positions, truth)
        else:
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
