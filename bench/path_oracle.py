"""The information ceiling of a path benchmark: the exact posterior of each particle's path position
when everything but the position is known (issue 19).

An oracle that knows the true path (every conformation along it), each particle's pose, shift and
CTF, the noise level (unit, as simulated) and the distribution of the contrast factors computes, for
every particle, the posterior over path nodes

    p(s_k | image) ∝ prior(s_k) ∫ N(image; c·a·m_k, 1) LogNormal(c) dc,

m_k the noise-free image of node k (our renderer; it agrees with cryoJAX's at correlation 0.99997),
a the clean-image scale, c the contrast factor (marginalised on a grid). Two priors:

- `population`: the true two-state population (the Bayes oracle: its 90 % intervals are calibrated
  by construction, up to the renderer mismatch);
- `uniform`: flat on [0, 1] (what the images alone say).

No fit can order particles better than the population oracle on average, so its Spearman is the
ceiling for any method on this stack, and its interval widths are what calibrated intervals look
like.

    python bench/path_oracle.py DATASET_FOLDER          # folder written by bench/adk_paths.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import scipy.special
import scipy.stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

N_NODES = 201
N_CONTRAST = 41


def node_image_statistics(dataset, structure, node_positions, batch_size: int = 64):
    """For every particle i and node k: y_i·m_ik and |m_ik|², m_ik the noise-free image of node k
    at particle i's pose, shift and CTF, in the microscope's units.

    **Returns:** `(cross (n, K), energy (n, K))`."""
    import jax
    import jax.numpy as jnp

    from atomicspi._batches import ctf_parameters as _ctf_parameters
    from atomicspi._batches import ordered_batches as _ordered_batches
    from atomicspi.microscope import make_image_model
    from atomicspi.models import render_images

    image_model = make_image_model(
        structure.atomic_numbers, structure.b_factors_in_angstroms_squared, dataset.box_size, dataset.pixel_size_in_angstroms
    )
    nodes = jnp.asarray(node_positions, dtype=jnp.float32)

    @jax.jit
    def statistics(images, rotations, shifts, ctf):
        def one_node(node):
            positions = jnp.broadcast_to(node, (images.shape[0], *node.shape))
            rendered = render_images(image_model, positions, rotations, shifts, ctf)
            return jnp.sum(rendered * images, axis=(1, 2)), jnp.sum(rendered * rendered, axis=(1, 2))

        cross, energy = jax.lax.map(one_node, nodes)
        return cross.T, energy.T

    n = len(dataset)
    cross, energy = np.empty((n, len(nodes))), np.empty((n, len(nodes)))
    start = 0
    for count, batch in _ordered_batches(dataset, batch_size):
        c, e = statistics(jnp.asarray(batch["images"]), jnp.asarray(batch["rotations"]),
                          jnp.asarray(batch["shifts_in_angstroms"]), _ctf_parameters(batch))
        cross[start : start + count], energy[start : start + count] = np.asarray(c)[:count], np.asarray(e)[:count]
        start += count
    return cross, energy


def node_log_likelihoods(cross, energy, clean_scale: float, contrast_log_std: float, noise_std: float = 1.0):
    """log p(image_i | node k) `(n, K)` up to a per-particle constant, the contrast factor c ~
    LogNormal(0, σ²) marginalised on a grid: image = c · clean_scale · m_k + N(0, noise_std²)."""
    if contrast_log_std > 0:
        quantiles = (np.arange(N_CONTRAST) + 0.5) / N_CONTRAST
        contrasts = np.exp(contrast_log_std * scipy.stats.norm.ppf(quantiles))  # equal-mass grid
    else:
        contrasts = np.ones(1)
    scale = contrasts * clean_scale
    # -|y - a m|²/2σ² = (a y·m - a²|m|²/2)/σ² + const
    terms = (scale[None, None] * cross[..., None] - 0.5 * scale[None, None] ** 2 * energy[..., None]) / noise_std**2
    return scipy.special.logsumexp(terms, axis=-1) - np.log(len(contrasts))


def posterior_summaries(log_likelihood, node_path_positions, log_prior, true_s, interval_mass: float = 0.9):
    """Posterior mean, central interval and their scores against the truth."""
    log_posterior = log_likelihood + log_prior[None]
    log_posterior -= log_posterior.max(axis=1, keepdims=True)
    weights = np.exp(log_posterior)
    weights /= weights.sum(axis=1, keepdims=True)
    mean = weights @ node_path_positions
    cdf = np.cumsum(weights, axis=1)
    tail = 0.5 * (1 - interval_mass)
    low = np.array([np.interp(tail, c, node_path_positions) for c in cdf])
    high = np.array([np.interp(1 - tail, c, node_path_positions) for c in cdf])
    standard_deviation = np.sqrt(np.maximum(weights @ node_path_positions**2 - mean**2, 0.0))
    return {
        "spearman_posterior_mean": float(scipy.stats.spearmanr(mean, true_s).statistic),
        "median_absolute_error": float(np.median(np.abs(mean - true_s))),
        "coverage": float(np.mean((true_s >= low) & (true_s <= high))),
        "median_interval_width": float(np.median(high - low)),
        "median_posterior_standard_deviation": float(np.median(standard_deviation)),
    }, mean


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="dataset folder written by bench/adk_paths.py (truth.npz, simulation.json)")
    arguments = parser.parse_args()
    folder = pathlib.Path(arguments.folder)

    from adk_paths import STATE_MEAN_PATH_POSITIONS, centred_structures, path_conformations

    from atomicspi.io import load_config, load_particles

    started = time.perf_counter()
    truth = dict(np.load(folder / "truth.npz"))
    simulation = json.loads((folder / "simulation.json").read_text())
    config = load_config(folder / "dataset.yaml")
    dataset = load_particles(config.particles)
    closed, open_ = centred_structures()
    node_s = np.linspace(0.0, 1.0, N_NODES)
    node_positions = path_conformations(simulation["generator"], closed, open_, node_s)
    cross, energy = node_image_statistics(dataset, closed, node_positions)
    # The clean-image scale: the simulator divided clean images by noise_scale (its ratio to ours
    # is fitted here by least squares at the true nodes, so the oracle does not depend on it).
    true_s = truth["path_position"]
    nearest = np.abs(node_s[None] - true_s[:, None]).argmin(axis=1)
    rows = np.arange(len(true_s))
    clean_scale = float(np.sum(cross[rows, nearest]) / np.sum(energy[rows, nearest]))
    contrast_log_std = simulation["contrast_log_std"]
    log_likelihood = node_log_likelihoods(cross, energy, clean_scale, contrast_log_std)

    width = 0.08  # two_state_path_positions' default
    minor = simulation["minor_fraction"]
    population = ((1 - minor) * scipy.stats.norm.pdf(node_s, STATE_MEAN_PATH_POSITIONS[0], width)
                  + minor * scipy.stats.norm.pdf(node_s, STATE_MEAN_PATH_POSITIONS[1], width))
    midpoint = float(np.mean(STATE_MEAN_PATH_POSITIONS))
    result = {"n_particles": len(true_s), "generator": simulation["generator"], "snr": simulation["snr"],
              "clean_scale": clean_scale, "n_nodes": N_NODES}
    for name, log_prior in (("population", np.log(population + 1e-300)), ("uniform", np.zeros(N_NODES))):
        scores, mean = posterior_summaries(log_likelihood, node_s, log_prior, true_s)
        scores["minor_population_inferred"] = float(np.mean(mean > midpoint))
        result[name] = scores
    result["minor_population_true_above_midpoint"] = float(np.mean(true_s > midpoint))
    result["seconds"] = time.perf_counter() - started
    (folder / "path_oracle.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
