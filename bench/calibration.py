"""Simulation-based calibration (SBC) of the `nma` model fitted with the semi-amortized guide.

Each dataset is one draw from the model's full prior predictive: the globals (`spring_constant`,
`noise_std`) from their hyperpriors, then per particle the mode amplitudes, the contrast and the image
(AdK Cα, uniform random poses, defocus 0.8–2.0 µm). Each dataset is fitted as a user would (SVI with
the `AmortizedGuide`, globals learned), then for every particle and mode the rank of the true
amplitude among L posterior draws is recorded. Under a calibrated posterior the ranks are uniform on
{0, …, L} and central q intervals cover the truth a fraction q of the time.

Prints the coverage of central 50/80/90/95 % intervals per dataset and mode and pooled, the global
posteriors against their true values, and saves the rank histograms per mode as a PNG.

    python bench/calibration.py [--datasets 3 --particles 500 --modes 5 --steps 4800 --rank 2 --output ranks.png]

4,800 steps of 64 images are ≈ 600 epochs over 500 particles: the per-particle offsets of the guide
see one minibatch per epoch, and with half as many steps the intervals of the most informative
dataset were too narrow (83 % instead of 86 % at 90 %). Results: `bench/RESULTS.md`, `## calibration`.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from atomicspi._families import FAMILIES
from atomicspi.inference import AmortizedGuide, draw_posterior, fit, make_epoch_minibatches, make_optimizer, make_svi
from atomicspi.microscope import CTFParameters, make_image_model, sample_uniform_rotations
from atomicspi.models import ModelOptions, build_model_context, nma
from atomicspi.structure import load_structure

BOX, PIXEL = 16, 5.0
MASSES = (0.5, 0.8, 0.9, 0.95)
N_RANK_DRAWS = 99  # L: ranks take the values 0..L


def _with_ctf(function):
    def with_ctf(*, defocus_in_angstroms, **batch):
        ctf = CTFParameters(defocus_u_in_angstroms=defocus_in_angstroms, defocus_v_in_angstroms=defocus_in_angstroms)
        return function(ctf=ctf, **batch)

    return with_ctf


def run_dataset(context, n_particles, batch_size, steps, seed, rank):
    key = jax.random.key(seed)
    rotations = np.asarray(sample_uniform_rotations(jax.random.fold_in(key, 0), n_particles))
    shifts = np.zeros((n_particles, 2), np.float32)
    defocus = np.random.default_rng(seed).uniform(8000.0, 20000.0, n_particles).astype(np.float32)
    simulated = Predictive(_with_ctf(nma), num_samples=1)(
        jax.random.fold_in(key, 1),
        images=None,
        rotations=jnp.asarray(rotations),
        shifts_in_angstroms=jnp.asarray(shifts),
        defocus_in_angstroms=jnp.asarray(defocus),
        context=context,
        n_particles=n_particles,
    )
    images = np.asarray(simulated["images"][0])
    truth = {name: np.asarray(simulated[name][0]) for name in ("amplitudes", "spring_constant", "noise_std")}

    def read_particles(indices):
        return {
            "images": images[indices],
            "rotations": rotations[indices],
            "shifts_in_angstroms": shifts[indices],
            "defocus_in_angstroms": defocus[indices],
        }

    guide = _with_ctf(AmortizedGuide(FAMILIES["nma"].local_sites(context), context, BOX, key=jax.random.fold_in(key, 2), rank=rank))
    model_arguments = {"context": context, "n_particles": n_particles}
    svi = make_svi(_with_ctf(nma), guide, make_optimizer(1e-2, 3e-2, decay_steps=steps), **model_arguments)
    start = time.perf_counter()
    result = fit(
        svi, make_epoch_minibatches(read_particles, n_particles, batch_size, seed), steps,
        seed=seed, steps_per_call=50, progress=False,
    )
    fit_seconds = time.perf_counter() - start
    in_order = []
    for first in range(0, n_particles, batch_size):
        indices = np.arange(first, min(first + batch_size, n_particles))
        in_order.append({**read_particles(indices), "indices": indices})
    local, global_ = draw_posterior(
        guide, result.parameters, in_order, 400,
        key=jax.random.fold_in(key, 3), model_arguments=model_arguments, local_sites=["amplitudes"],
    )
    return truth, local["amplitudes"], global_, fit_seconds


def coverage(truth, draws, mass):
    """Per mode: the fraction of particles whose truth lies in the central `mass` interval of the draws."""
    lower = np.quantile(draws, (1 - mass) / 2, axis=1)
    upper = np.quantile(draws, (1 + mass) / 2, axis=1)
    return np.mean((truth >= lower) & (truth <= upper), axis=0)


def ranks(truth, draws):
    """SBC ranks (particles, modes) of the truth among L thinned posterior draws."""
    thinned = draws[:, :: draws.shape[1] // N_RANK_DRAWS][:, :N_RANK_DRAWS]
    return np.sum(thinned < truth[:, None, :], axis=1)


def plot_ranks(all_ranks, path, n_bins=20):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    n, k = all_ranks.shape
    figure, axes = plt.subplots(1, k, figsize=(3 * k, 2.6), sharey=True, squeeze=False)
    expected = n / n_bins
    low, high = stats.binom.ppf([0.005, 0.995], n, 1 / n_bins)
    edges = np.linspace(-0.5, N_RANK_DRAWS + 0.5, n_bins + 1)
    for mode, axis in enumerate(axes[0]):
        axis.hist(all_ranks[:, mode], bins=edges, color="C0")
        axis.axhspan(low, high, color="0.8", zorder=0)
        axis.axhline(expected, color="0.4", lw=0.8)
        axis.set_title(f"mode {mode + 1}")
        axis.set_xlabel(f"rank of truth among {N_RANK_DRAWS} draws")
    axes[0][0].set_ylabel("particles")
    figure.suptitle("SBC ranks of nma mode amplitudes (grey: 99 % band of a uniform histogram)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--modes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--rank", type=int, default=2, help="rank of the guide's amplitude covariance factor")
    parser.add_argument("--first-seed", type=int, default=0, help="dataset d uses seed first_seed + d")
    parser.add_argument("--output", default="bench/calibration_ranks.png")
    arguments = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()}")

    structure = load_structure("atomicspi/data/adk_closed.pdb.gz").calpha()
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    options = ModelOptions(noise_std_guess=1.0, contrast_guess=1.0, spring_constant_guess=0.1)
    context = build_model_context(structure, image_model, n_modes=arguments.modes, options=options)

    header = "| dataset | γ true / post. mean | noise_std true / post. mean | mode | " + " | ".join(
        f"{int(100 * m)} %" for m in MASSES
    ) + " | corr(mean, truth) | fit s |"
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    all_truth, all_draws, all_ranks = [], [], []
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.datasets):
        truth, draws, global_, fit_seconds = run_dataset(
            context, arguments.particles, arguments.batch_size, arguments.steps, seed, arguments.rank
        )
        table = np.stack([coverage(truth["amplitudes"], draws, mass) for mass in MASSES], axis=1)  # (modes, masses)
        means = draws.mean(axis=1)
        for mode in range(arguments.modes):
            correlation = np.corrcoef(means[:, mode], truth["amplitudes"][:, mode])[0, 1]
            globals_text = (
                f"{truth['spring_constant']:.3g} / {global_['spring_constant'].mean():.3g} | "
                f"{truth['noise_std']:.3g} / {global_['noise_std'].mean():.3g}"
                if mode == 0 else " | "
            )
            rows.append(
                f"| {seed if mode == 0 else ''} | {globals_text} | {mode + 1} | "
                + " | ".join(f"{value:.3f}" for value in table[mode])
                + f" | {correlation:.2f} | {f'{fit_seconds:.0f}' if mode == 0 else ''} |"
            )
        rows.append(
            f"| {seed} all | | | | " + " | ".join(f"**{value:.3f}**" for value in table.mean(axis=0)) + " | | |"
        )
        print("\n".join(rows[-arguments.modes - 1 :]), flush=True)
        all_truth.append(truth["amplitudes"])
        all_draws.append(draws)
        all_ranks.append(ranks(truth["amplitudes"], draws))
    truth, draws = np.concatenate(all_truth), np.concatenate(all_draws)
    pooled = np.stack([coverage(truth, draws, mass) for mass in MASSES], axis=1)
    for mode in range(arguments.modes):
        rows.append(f"| pooled | | | {mode + 1} | " + " | ".join(f"{value:.3f}" for value in pooled[mode]) + " | | |")
    rows.append("| pooled all | | | | " + " | ".join(f"**{value:.3f}**" for value in pooled.mean(axis=0)) + " | | |")
    print(f"\n{truth.size} intervals per mass ({arguments.datasets} datasets × {arguments.particles} particles × "
          f"{arguments.modes} modes); binomial standard error at 90 %: {np.sqrt(0.09 / truth.size):.4f}")
    print("\n".join(rows))
    all_ranks = np.concatenate(all_ranks)
    plot_ranks(all_ranks, arguments.output)
    z = (np.mean(all_ranks, axis=0) - N_RANK_DRAWS / 2) / (N_RANK_DRAWS / np.sqrt(12) / np.sqrt(len(all_ranks)))
    print(f"rank histograms: {arguments.output}; mean rank z-score per mode (0 if unbiased): {np.round(z, 1)}")


if __name__ == "__main__":
    main()
