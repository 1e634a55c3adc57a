# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # Adenylate kinase: domain motions from images
#
# Adenylate kinase (AdK) opens and closes its NMP and LID domains around a rigid CORE. Here we
# simulate particle images of AdK at conformations *interpolated* between the closed (1AKE) and
# open (4AKE) structures — a physics the fit does not share — and infer each particle's
# conformation with the `domains` model: rigid motions of NMP and LID composed with elastic-network
# modes, fitted to the images directly through the microscope.
#
# Open it with `jupytext --to notebook` or run it as a script. `ATOMICSPI_NOTEBOOK_TINY=1` makes
# it tiny (the tests run it that way).

# %%
import os
import pathlib
import tempfile

import numpy as np

from atomicspi.api import (
    ADENYLATE_KINASE_DOMAINS,
    example_structure_paths,
    interpolated_conformations,
    load_ensemble,
    load_truth,
    run_inference,
    simulate_particles,
    write_simulated_dataset,
)
from atomicspi.structure import load_structure

TINY = bool(os.environ.get("ATOMICSPI_NOTEBOOK_TINY"))
N_PARTICLES, BOX_SIZE, PIXEL_SIZE, STEPS = (16, 24, 4.0, 4) if TINY else (512, 32, 3.0, 1200)
folder = pathlib.Path(os.environ.get("ATOMICSPI_NOTEBOOK_FOLDER") or tempfile.mkdtemp(prefix="adk-domains-"))

# %% [markdown]
# ## Simulate
# Fractions along the closed → open path are uniform in [0, 0.8]; poses are uniform on SO(3);
# defocus 0.8–2.5 µm; white noise at SNR 1.

# %%
closed_path, open_path = example_structure_paths()
closed = load_structure(closed_path)
closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
fractions = np.random.default_rng(0).uniform(0.0, 0.8, size=N_PARTICLES)
positions = interpolated_conformations(closed, load_structure(open_path), fractions)
particles = simulate_particles(closed, positions, BOX_SIZE, PIXEL_SIZE, signal_to_noise_ratio=1.0, seed=0)
dataset_yaml = write_simulated_dataset(
    folder, closed, particles, truth_extra={"interpolation_fraction": fractions}, model="domains",
    config_overrides={"domains": ADENYLATE_KINASE_DOMAINS, "num_steps": STEPS, "batch_size": min(32, N_PARTICLES),
                      "learning_rate": 3e-3, "samples_per_particle": 4, "n_modes": 5},
)
print(dataset_yaml.read_text())

# %% [markdown]
# ## Fit
# The same as `python -m atomicspi.infer dataset.yaml`.

# %%
output = run_inference(dataset_yaml, progress=not TINY)

# %% [markdown]
# ## Compare with the truth
# Cα RMSD of each particle's posterior mean to its true structure, against the reference's.

# %%
trajectory = load_ensemble(output)  # frame i: particle i's posterior mean (mdtraj, nm)
estimate = trajectory.xyz[:, trajectory.topology.select("name CA")] * 10.0
truth = load_truth(folder)["calpha_positions_in_angstroms"]
reference = closed.calpha().positions_in_angstroms
rmsd_fit = np.sqrt(((estimate - truth) ** 2).sum(-1).mean(-1))
rmsd_reference = np.sqrt(((reference[None] - truth) ** 2).sum(-1).mean(-1))
print(f"median Cα RMSD to the truth: posterior mean {np.median(rmsd_fit):.2f} Å, reference {np.median(rmsd_reference):.2f} Å")

# %% [markdown]
# The landscape along the Cα RMSD to the reference, with its bootstrap band, is in
# `landscape.png`; the fits of a few particles in `fits.png`; the loss in `elbo.png`.

# %%
print(sorted(path.name for path in output.iterdir()))
