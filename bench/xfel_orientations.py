"""Orientations of simulated XFEL diffraction patterns of adenylate kinase (issue 18), by fluence.

    python bench/xfel_orientations.py [--patterns 16] [--fluences 1e13 1e14 1e15 1e16]
        [--energy-kev 5.0] [--pixels 64] [--pixel-mm 1.0] [--distance-mm 150] [--background 0.0] [--seed 0]

Closed AdK (all 3,341 atoms, `atomicspi/data/adk_closed.pdb.gz`) at Haar-random orientations,
each pattern's fluence the nominal one times a random scale in [0.5, 1.5] (shot-to-shot jitter,
unknown to the search), simulated with `atomicspi.microscope.DiffractionModel` and Poisson counts
(`sample_photon_counts`), with the 3 × 3 pixels at the beam centre masked (beam stop). Each
fluence's patterns go to `atomicspi.inference.search_diffraction_orientations` (default settings)
against `make_intensity_volume` of the same structure. Fluences are given in photons/µm² (1 µm² =
10⁸ Å²); the table gives the resulting mean photon count per pattern.

Printed per fluence: the median angle (geodesic, degrees) between the found and the true rotation,
and between the found rotation and the nearer of the truth and its Friedel mate `R A` (half-turn
about the beam); the share of patterns found within 10° of the mate (the Friedel tie lost), and
within 10° of neither (orientation not found); the mean reported weight of the mate hypothesis; the median expected
log-likelihood gap between truth and mate (the Poisson KL divergence from the noiseless patterns:
how much the Ewald curvature breaks the tie at this photon count); the median local angular spread
reported; the median |fitted / true fluence scale − 1|; and the wall time per pattern (after a
compiling warm-up call on the first fluence's patterns, excluded).
"""

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from atomicspi.inference import FRIEDEL_HALF_TURN, make_intensity_volume, search_diffraction_orientations
from atomicspi.microscope import (
    geodesic_distance_in_degrees,
    make_detector_geometry,
    make_diffraction_model,
    pixel_geometry,
    sample_photon_counts,
    sample_uniform_rotations,
)
from atomicspi.structure import load_structure

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUARE_ANGSTROMS_PER_SQUARE_MICROMETRE = 1e8


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=16, help="patterns per fluence")
    parser.add_argument("--fluences", type=float, nargs="+", default=[1e13, 1e14, 1e15, 1e16], help="photons/µm²")
    parser.add_argument("--energy-kev", type=float, default=5.0)
    parser.add_argument("--pixels", type=int, default=64, help="detector side in pixels")
    parser.add_argument("--pixel-mm", type=float, default=1.0)
    parser.add_argument("--distance-mm", type=float, default=150.0)
    parser.add_argument("--background", type=float, default=0.0, help="expected background photons per pixel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    structure = load_structure(os.path.join(REPOSITORY, "atomicspi", "data", "adk_closed.pdb.gz"))
    positions = structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0)
    numbers = structure.atomic_numbers
    geometry = make_detector_geometry(
        (args.pixels, args.pixels), args.pixel_mm, args.distance_mm, photon_energy_in_kiloelectronvolts=args.energy_kev
    )
    wavelength = float(geometry.wavelength_in_angstroms)
    q = np.linalg.norm(np.asarray(pixel_geometry(geometry).q_in_inverse_angstroms), axis=-1)
    mask = np.ones(geometry.shape, bool)
    centre = args.pixels // 2
    mask[centre - 1 : centre + 2, centre - 1 : centre + 2] = False

    start = time.perf_counter()
    volume = make_intensity_volume(positions, numbers, geometry)
    jax.block_until_ready(volume.values)
    volume_seconds = time.perf_counter() - start
    diameter = volume.diameter_in_angstroms
    edge_q = float(q[centre, 0])
    print(f"AdK {len(numbers)} atoms, diameter {diameter:.1f} Å; {args.pixels}² pixels of {args.pixel_mm} mm at "
          f"{args.distance_mm} mm, {args.energy_kev} keV (λ {wavelength:.3f} Å)")
    print(f"|q| at the edge {edge_q:.4f} 1/Å ({1 / edge_q:.1f} Å), corner {q.max():.4f} 1/Å ({1 / q.max():.1f} Å), "
          f"2θ_max {math.degrees(2 * math.asin(q.max() * wavelength / 2)):.1f}°; Ewald sagitta λ q_max² "
          f"{wavelength * q.max() ** 2:.4f} 1/Å vs speckle 1/d {1 / diameter:.4f} 1/Å")
    print(f"intensity volume {volume.values.shape[0]}³ in {volume_seconds:.1f} s; background {args.background} "
          f"photons/pixel; {args.patterns} patterns per fluence; devices {jax.devices()}")

    model = make_diffraction_model(numbers, geometry)
    simulate = jax.jit(jax.vmap(lambda rotation, fluence: model.expected_photons(
        jnp.asarray(positions, jnp.float32), rotation, fluence, args.background)))
    half_turn = jnp.asarray(FRIEDEL_HALF_TURN, jnp.float32)
    header = (f"{'photons/µm²':>12} {'photons/Å²':>11} {'photons/pattern':>15} {'median err °':>12} "
              f"{'err vs mate-or-truth °':>22} {'mate chosen':>11} {'lost':>5} {'mate weight':>11} {'expected gap':>12} "
              f"{'spread °':>8} {'|scale err|':>11} {'s/pattern':>9}")
    rows = []
    warmed = False
    for index, fluence_per_square_micrometre in enumerate(args.fluences):
        fluence = fluence_per_square_micrometre / SQUARE_ANGSTROMS_PER_SQUARE_MICROMETRE
        rotations = sample_uniform_rotations(jax.random.key(args.seed + 10 * index), args.patterns)
        scales = np.random.default_rng(args.seed + index).uniform(0.5, 1.5, args.patterns)
        fluences = jnp.asarray(fluence * scales, jnp.float32)
        means = np.asarray(simulate(rotations, fluences), float)
        mate_means = np.asarray(simulate(half_turn @ rotations, fluences), float)
        divergence = np.sum(np.where(mask, means * np.log(means / mate_means) - means + mate_means, 0.0), axis=(1, 2))
        counts = sample_photon_counts(jax.random.key(args.seed + 10 * index + 1), jnp.asarray(means, jnp.float32))
        if not warmed:  # compile on the same shapes, excluded from the timing
            search_diffraction_orientations(volume, counts, geometry, fluence, args.background, mask)
            warmed = True
        start = time.perf_counter()
        result = search_diffraction_orientations(volume, counts, geometry, fluence, args.background, mask)
        seconds = (time.perf_counter() - start) / args.patterns
        found = jnp.asarray(result.rotations)
        errors = np.asarray(geodesic_distance_in_degrees(found, rotations))
        mate_errors = np.asarray(geodesic_distance_in_degrees(found, half_turn @ rotations))
        rows.append(
            f"{fluence_per_square_micrometre:12.3g} {fluence:11.3g} {float(np.mean(np.asarray(counts).sum(axis=(1, 2)))):15.1f} "
            f"{np.median(errors):12.2f} {np.median(np.minimum(errors, mate_errors)):22.2f} "
            f"{np.mean(mate_errors < 10.0):11.2f} {np.mean(np.minimum(errors, mate_errors) > 10.0):5.2f} "
            f"{np.mean(result.friedel_mate_weight):11.3f} "
            f"{np.median(divergence):12.3g} {np.median(result.angular_spread_in_degrees):8.2f} "
            f"{np.median(np.abs(result.fluence_scale / scales - 1.0)):11.4f} {seconds:9.3f}"
        )
        if index == 0:
            print(header)
        print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
