# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # Adenylate kinase: orientations and conformations from images without poses
#
# A particle file fresh from picking has no angles and no origins. With `poses: search`, atomicspi
# first finds every particle's rotation and shift by a global search against the reference's
# projections (central slices of its 3D Fourier transform, a 4,608-rotation grid refined by local
# grids), then refines them during training together with the conformations, and writes the
# inferred poses to `particles.star` in RELION's conventions.
#
# We simulate AdK particles along the closed → open interpolation with uniform random poses, write a
# star file *without* angles or origins, and fit the `deformation` model. Open it with
# `jupytext --to notebook` or run it as a script; `ATOMICSPI_NOTEBOOK_TINY=1` makes it tiny (the
# tests run it that way).

# %%
import os
import pathlib
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import starfile

from atomicspi.api import (
    example_structure_paths,
    interpolated_conformations,
    load_posterior,
    load_truth,
    run_inference,
    simulate_particles,
    write_simulated_dataset,
)
from atomicspi.io import load_particles
from atomicspi.microscope import geodesic_distance_in_degrees
from atomicspi.structure import load_structure

TINY = bool(os.environ.get("ATOMICSPI_NOTEBOOK_TINY"))
N_PARTICLES, BOX_SIZE, PIXEL_SIZE, SNR, STEPS = (16, 32, 3.0, 1.0, 4) if TINY else (1000, 48, 2.0, 0.1, 800)
folder = pathlib.Path(os.environ.get("ATOMICSPI_NOTEBOOK_FOLDER") or tempfile.mkdtemp(prefix="adk-poses-"))

# %% [markdown]
# ## Simulate, then forget the poses

# %%
closed_path, open_path = example_structure_paths()
closed = load_structure(closed_path)
if TINY:
    closed = closed.calpha()
closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
opened = load_structure(open_path)
fractions = np.random.default_rng(0).uniform(0.0, 0.8, size=N_PARTICLES)
positions = interpolated_conformations(closed, opened.calpha() if TINY else opened, fractions)
particles = simulate_particles(closed, positions, BOX_SIZE, PIXEL_SIZE, signal_to_noise_ratio=SNR, seed=0)
dataset_yaml = write_simulated_dataset(
    folder, closed, particles, truth_extra={"interpolation_fraction": fractions}, model="deformation",
    config_overrides={"poses": "search", "latent_dim": 1, "num_steps": STEPS, "batch_size": min(64, N_PARTICLES),
                      "samples_per_particle": 4},
)
tables = starfile.read(folder / "particles.star", always_dict=True)
tables["particles"] = tables["particles"].drop(
    columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
)
starfile.write(tables, folder / "particles.star", overwrite=True)
print(dataset_yaml.read_text())

# %% [markdown]
# ## Fit: search, then refine with the conformations
# The same as `python -m atomicspi.infer dataset.yaml`.

# %%
output = run_inference(dataset_yaml, progress=not TINY)

# %% [markdown]
# ## The poses against the truth
# The angle between inferred and true rotations, the shift error, and how often the truth lies
# within the reported 90 % angular spread (`posterior.nc`, group `pose_summary`).

# %%
truth = load_truth(folder)
inferred = load_particles(output / "particles.star")  # RELION's conventions, read back
angles = np.asarray(geodesic_distance_in_degrees(inferred.rotations, truth["rotations"]))
shift_errors = np.linalg.norm(inferred.shifts_in_angstroms - truth["shifts_in_angstroms"], axis=1)
spread = load_posterior(output).pose_summary.angular_spread_in_degrees.values
print(f"median angle error {np.median(angles):.2f}°, {np.mean(angles <= 5):.0%} within 5°; "
      f"median shift error {np.median(shift_errors):.2f} Å; truth within the 90 % spread for {np.mean(angles <= spread):.0%}")
searched = np.load(output / "pose_search.npz")  # the search alone, before refinement
searched_angles = np.asarray(geodesic_distance_in_degrees(searched["rotations"], truth["rotations"]))
print(f"search alone: median angle error {np.median(searched_angles):.2f}°")

z = load_posterior(output).posterior["z"].mean(dim=("chain", "draw")).values[:, 0]
figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
axes[0].hist(angles, bins=30)
axes[0].set(xlabel="angle between inferred and true rotation (°)", ylabel="particles")
axes[1].scatter(fractions, z, s=4, alpha=0.5)
axes[1].set(xlabel="true fraction closed → open", ylabel="posterior mean of z")
figure.savefig(output / "poses_vs_truth.png", dpi=120)

# %%
print(sorted(path.name for path in output.iterdir()))
