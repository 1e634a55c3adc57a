"""The bundled example: adenylate kinase particles between the closed and open states, simulated on
the fly from the structures shipped in `atomicspi/data` (1AKE/4AKE-derived, public domain)."""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["ADENYLATE_KINASE_DOMAINS", "example_structure_paths", "write_example"]

_DATA = pathlib.Path(__file__).resolve().parent / "data"

# CORE, NMP and LID of E. coli adenylate kinase, as residue-number ranges (1AKE/4AKE numbering).
ADENYLATE_KINASE_DOMAINS = [[[1, 29], [60, 121], [160, 214]], [[30, 59]], [[122, 159]]]


def example_structure_paths() -> tuple[pathlib.Path, pathlib.Path]:
    """Paths of the bundled closed and open adenylate kinase (all atoms, hydrogens included)."""
    return _DATA / "adk_closed.pdb.gz", _DATA / "adk_open.pdb.gz"


def write_example(
    folder,
    n_particles: int = 256,
    box_size: int = 48,
    pixel_size_in_angstroms: float = 2.0,
    signal_to_noise_ratio: float = 0.3,
    num_steps: int = 300,
    seed: int = 0,
) -> pathlib.Path:
    """Simulate a small AdK dataset (conformations interpolated closed → open, fractions uniform in
    [0, 0.8]) and write it with a `dataset.yaml` that fits the `deformation` model (a 2-D latent
    decoded into bead displacements, the elastic prior counting the springs inside CORE, NMP and
    LID); returns the yaml path."""
    from atomicspi._simulation import interpolated_conformations, simulate_particles, write_simulated_dataset
    from atomicspi.structure import load_structure

    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    fractions = np.random.default_rng(seed).uniform(0.0, 0.8, size=n_particles)
    positions = interpolated_conformations(closed, load_structure(open_path), fractions)
    particles = simulate_particles(
        closed, positions, box_size, pixel_size_in_angstroms, signal_to_noise_ratio, seed=seed
    )
    return write_simulated_dataset(
        folder, closed, particles, truth_extra={"interpolation_fraction": fractions}, model="deformation",
        config_overrides={"num_steps": num_steps, "batch_size": 32, "samples_per_particle": 4, "latent_dim": 2,
                          "learning_rate": 3e-3, "domains": ADENYLATE_KINASE_DOMAINS},
    )
