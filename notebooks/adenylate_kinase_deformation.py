# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # Adenylate kinase: a learned motion from images
#
# Adenylate kinase (AdK) opens and closes its NMP and LID domains around its CORE. We simulate
# particle images at conformations *interpolated* between the closed (1AKE) and open (4AKE)
# structures (a physics the fit does not share) and fit the `deformation` model: each particle has
# a 2-D latent z, and one decoder, learned from all particles, turns z into bead displacements.
# The elastic network is the prior on the decoded structures; with the CORE/NMP/LID domains given it
# counts only the springs inside domains, so the hinges are free to move.
#
# Open it with `jupytext --to notebook` or run it as a script. `ATOMICSPI_NOTEBOOK_TINY=1` makes
# it tiny (the tests run it that way).

# %%
import os
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from atomicspi.api import (
    ADENYLATE_KINASE_DOMAINS,
    example_structure_paths,
    interpolated_conformations,
    load_ensemble,
    load_posterior,
    load_truth,
    run_inference,
    simulate_particles,
    write_simulated_dataset,
)
from atomicspi.structure import load_structure

TINY = bool(os.environ.get("ATOMICSPI_NOTEBOOK_TINY"))
N_PARTICLES, BOX_SIZE, PIXEL_SIZE, SNR, STEPS = (16, 24, 4.0, 1.0, 4) if TINY else (1000, 48, 2.0, 0.1, 800)
folder = pathlib.Path(os.environ.get("ATOMICSPI_NOTEBOOK_FOLDER") or tempfile.mkdtemp(prefix="adk-deformation-"))

# %% [markdown]
# ## Simulate
# Fractions along the closed → open path are uniform in [0, 0.8]; poses uniform on SO(3); defocus
# 0.8–2.5 µm; white noise (SNR 0.1 in the full run).

# %%
closed_path, open_path = example_structure_paths()
closed = load_structure(closed_path)
closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
fractions = np.random.default_rng(0).uniform(0.0, 0.8, size=N_PARTICLES)
positions = interpolated_conformations(closed, load_structure(open_path), fractions)
particles = simulate_particles(closed, positions, BOX_SIZE, PIXEL_SIZE, signal_to_noise_ratio=SNR, seed=0)
dataset_yaml = write_simulated_dataset(
    folder, closed, particles, truth_extra={"interpolation_fraction": fractions}, model="deformation",
    config_overrides={"domains": ADENYLATE_KINASE_DOMAINS, "latent_dim": 2, "num_steps": STEPS,
                      "batch_size": min(64, N_PARTICLES), "learning_rate": 3e-3, "samples_per_particle": 4},
)
print(dataset_yaml.read_text())

# %% [markdown]
# ## Fit
# The same as `python -m atomicspi.infer dataset.yaml`.

# %%
output = run_inference(dataset_yaml, progress=not TINY)

# %% [markdown]
# ## Compare with the truth
# Cα RMSD of each particle's posterior mean to its true structure, against the reference's; and
# the latent coordinate against the true fraction along the path (the decoder's sign and scale are
# arbitrary, the ordering is not).

# %%
trajectory = load_ensemble(output)  # frame i: particle i's posterior mean (mdtraj, nm)
estimate = trajectory.xyz[:, trajectory.topology.select("name CA")] * 10.0
truth = load_truth(folder)["calpha_positions_in_angstroms"]
reference = closed.calpha().positions_in_angstroms
rmsd_fit = np.sqrt(((estimate - truth) ** 2).sum(-1).mean(-1))
rmsd_reference = np.sqrt(((reference[None] - truth) ** 2).sum(-1).mean(-1))
print(f"median Cα RMSD to the truth: posterior mean {np.median(rmsd_fit):.2f} Å, reference {np.median(rmsd_reference):.2f} Å")

z = load_posterior(output).posterior["z"]
z_mean = z.mean(dim=("chain", "draw")).values  # (particle, latent)
centred = z_mean - z_mean.mean(axis=0)
principal = np.linalg.svd(centred, full_matrices=False)[2][0]
coordinate = centred @ principal
z_sd = float(np.median(z.std(dim=("chain", "draw")).values @ np.abs(principal)))
print(f"|corr(z along its principal axis, true fraction)| = {abs(np.corrcoef(coordinate, fractions)[0, 1]):.3f}")

figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
axes[0].scatter(fractions, coordinate, s=4, alpha=0.5)
axes[0].set(xlabel="true fraction closed → open", ylabel="posterior mean of z (principal axis)",
            title=f"latent vs truth (median posterior s.d. {z_sd:.2f})")
axes[1].scatter(fractions, rmsd_fit, s=4, alpha=0.5, label="posterior mean")
axes[1].scatter(fractions, rmsd_reference, s=4, alpha=0.5, label="reference")
axes[1].set(xlabel="true fraction closed → open", ylabel="Cα RMSD to the truth (Å)")
axes[1].legend()
figure.savefig(output / "latent_vs_truth.png", dpi=120)

# %% [markdown]
# Full run on the project's 2-core CPU (1,000 particles, 48² of 2 Å, SNR 0.1, 800 steps × 64, 7.5
# min): median 0.72 Å against 2.92 Å for the reference, |corr(z, fraction)| = 0.91. The error that
# remains grows linearly with the fraction: the learned direction of motion is slightly off from the
# true one (details finer than the 4 Å Nyquist limit are not in the images).
#
# The free-energy profile along z's principal axis, with its bootstrap band, is in `landscape.png`;
# the fits of a few particles in `fits.png`; the loss in `elbo.png`.

# %%
print(sorted(path.name for path in output.iterdir()))
