"""How far a fit of an issue-19 path stack is from what its images support: per particle, the
log-likelihood of three structures under one image model, with each particle's true pose, shift and
CTF, the contrast marginalised under its true log-normal spread:

- `truth`: the particle's true conformation (the fit's atoms, e.g. heavy atoms only);
- `fit`: the fit's posterior-mean structure (`ensemble_mean.dcd`);
- `block_limit`: the best block-rigid structure, each block of `--block` consecutive residues moved
  by the rigid transform that superposes its reference Cα on the true Cα (Kabsch), atoms carried.

If the truth is much more likely than the fit, the data say the fit has not reached what the images
hold (not a noise limit); if the block limit is no more likely than the fit, the block family's Cα
accuracy is not what the likelihood rewards. The clean-image scale of each structure is fitted by
least squares across the particles, and the likelihood is `bench/path_oracle.py`'s.

    python bench/path_likelihood_gap.py /tmp/bench/aanm output --low 0.75 --high 1.01
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def block_limit_structures(reference_atoms, residue_of_atom, is_calpha, true_atoms, residues_per_block: int) -> np.ndarray:
    """`(n, n_atoms, 3)`: per structure, each block of consecutive residues moved rigidly by the
    Kabsch superposition of its reference Cα onto the true Cα."""
    from atomicspi._transition_paths import _kabsch

    limit = np.empty_like(true_atoms)
    for first in range(0, int(residue_of_atom.max()) + 1, residues_per_block):
        atoms = (residue_of_atom >= first) & (residue_of_atom < first + residues_per_block)
        anchors = atoms & is_calpha
        rotations, translations = _kabsch(reference_atoms[anchors][None], true_atoms[:, anchors])  # one per structure
        limit[:, atoms] = np.einsum("nij,aj->nai", rotations, reference_atoms[atoms]) + translations[:, None]
    return limit


def main() -> None:
    import jax
    import jax.numpy as jnp
    import mdtraj

    from adk_paths import centred_structures, path_conformations
    from path_oracle import node_log_likelihoods
    from atomicspi._batches import ctf_parameters, ordered_batches
    from atomicspi.io import load_config, load_particles
    from atomicspi.microscope import make_image_model
    from atomicspi.models import render_images
    from atomicspi.structure import load_structure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=pathlib.Path, help="dataset folder written by bench/adk_paths.py")
    parser.add_argument("output", help="the fit's output folder inside it")
    parser.add_argument("--low", type=float, default=0.0, help="particles with true path position ≥ this")
    parser.add_argument("--high", type=float, default=1.01, help="and < this")
    parser.add_argument("--block", type=int, default=4, help="residues per block of the block-rigid limit")
    arguments = parser.parse_args()
    folder, out = arguments.folder, arguments.folder / arguments.output

    truth = dict(np.load(folder / "truth.npz"))
    simulation = json.loads((folder / "simulation.json").read_text())
    dataset = load_particles(load_config(folder / "dataset.yaml").particles)
    path_position = truth["path_position"]
    chosen = np.flatnonzero((path_position >= arguments.low) & (path_position < arguments.high))
    fitted = load_structure(out / "topology.pdb")
    topology = fitted.topology
    means = mdtraj.load(out / "ensemble_mean.dcd", top=str(out / "topology.pdb")).xyz * 10.0  # nm → Å
    closed, open_ = centred_structures()
    full_index = {(atom.residue.index, atom.name): i for i, atom in enumerate(closed.topology.atoms)}
    index = np.array([full_index[(atom.residue.index, atom.name)] for atom in topology.atoms])
    true_atoms = path_conformations(simulation["generator"], closed, open_, path_position[chosen])[:, index]
    residue_of_atom = np.array([atom.residue.index for atom in topology.atoms])
    is_calpha = np.array([atom.name == "CA" for atom in topology.atoms])
    limit = block_limit_structures(closed.positions_in_angstroms[index], residue_of_atom, is_calpha, true_atoms, arguments.block)
    candidates = {"truth": true_atoms, "fit": means[chosen], "block_limit": limit}

    image_model = make_image_model(fitted.atomic_numbers, None, dataset.box_size, dataset.pixel_size_in_angstroms)

    @jax.jit
    def inner_products(images, positions, rotations, shifts, ctf):
        rendered = render_images(image_model, positions, rotations, shifts, ctf)
        return jnp.sum(rendered * images, axis=(1, 2)), jnp.sum(rendered * rendered, axis=(1, 2))

    row_of = {int(particle): row for row, particle in enumerate(chosen)}
    cross = {name: np.zeros(len(chosen)) for name in candidates}
    energy = {name: np.zeros(len(chosen)) for name in candidates}
    start = 0
    for count, batch in ordered_batches(dataset, 64):
        particles = np.arange(start, start + count)
        start += count
        take = np.array([j for j, particle in enumerate(particles) if int(particle) in row_of], dtype=int)
        if take.size == 0:
            continue
        rows = [row_of[int(particles[j])] for j in take]
        ctf = jax.tree_util.tree_map(lambda value: value[take] if np.ndim(value) else value, ctf_parameters(batch))
        for name, structures in candidates.items():
            c, e = inner_products(jnp.asarray(batch["images"][take]), jnp.asarray(structures[rows], dtype=jnp.float32),
                                  jnp.asarray(batch["rotations"][take]), jnp.asarray(batch["shifts_in_angstroms"][take]), ctf)
            cross[name][rows], energy[name][rows] = np.asarray(c), np.asarray(e)

    log_likelihood, rmsd = {}, {}
    for name in candidates:
        scale = np.sum(cross[name]) / np.sum(energy[name])  # noise is unit, as simulated
        log_likelihood[name] = node_log_likelihoods(cross[name][:, None], energy[name][:, None], scale, simulation["contrast_log_std"])[:, 0]
        difference = candidates[name] - true_atoms
        rmsd[name] = {"calpha": float(np.median(np.sqrt(np.mean(np.sum(difference[:, is_calpha] ** 2, -1), -1)))),
                      "all_atoms": float(np.median(np.sqrt(np.mean(np.sum(difference**2, -1), -1))))}
    result = {
        "particles": int(len(chosen)), "path_positions": [arguments.low, arguments.high], "block": arguments.block,
        "median_rmsd_to_truth_in_angstroms": rmsd,
        "mean_log_likelihood_over_fit": {name: float(np.mean(log_likelihood[name] - log_likelihood["fit"])) for name in candidates},
        "share_of_particles_more_likely_than_fit": {name: float(np.mean(log_likelihood[name] > log_likelihood["fit"])) for name in candidates},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
