"""`nma`: per-particle normal-mode amplitudes with the elastic-network Boltzmann prior."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
from jaxtyping import Array, Float, Int

from atomicspi.microscope import CTFParameters
from atomicspi.structure import mode_amplitude_prior

from ._context import ModelContext
from ._likelihood import (
    image_model_of,
    observe_images,
    render_images,
    sample_envelope,
    sample_globals,
    sample_pose_corrections,
)

__all__ = ["nma", "nma_positions"]


def nma_positions(
    context: ModelContext, amplitudes: Float[Array | np.ndarray, "*batch n_modes"]
) -> Float[Array, "*batch n_atoms 3"]:
    """Atom positions `(..., n_atoms, 3)` for mode amplitudes `(..., n_modes)` (Å)."""
    displacements = jnp.einsum("...k,kbc->...bc", amplitudes, context.mode_vectors)
    return context.reference_positions_in_angstroms + displacements[..., context.atom_to_bead, :]


def nma(
    *,
    images: Float[Array | np.ndarray, "batch y x"] | None,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
    context: ModelContext,
    n_particles: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> None:
    """Normal-mode model (aNiMAte's idea, made Bayesian).

    **Random variables:** globals `spring_constant`, `noise_std` (see `sample_globals`); in the
    `particle` plate: `amplitudes` ~ N(0, kT/(γ λₖ)) over the `n_modes` lowest elastic-network modes
    (Å, as coefficients of unit-norm mode vectors), optional pose corrections, `contrast`, and the
    observed `images`.

    **Arguments:**

    - `images` `(B, D, D)` (None to simulate), `rotations` `(B, 3, 3)` (RELION A),
      `shifts_in_angstroms` `(B, 2)`, `ctf` (`CTFParameters` batched over B), `indices` `(B,)`:
      one minibatch, passed as keyword arguments (see `atomicspi.inference` on the plate).
    - `context`: `ModelContext`.
    - `n_particles`: size of the whole dataset (the plate scales the minibatch by n_particles/B).
    """
    spring_constant, noise_std = sample_globals(context)
    ctf = sample_envelope(context, ctf)
    batch_size = rotations.shape[0]
    prior = mode_amplitude_prior(context.mode_eigenvalues, spring_constant, context.options.temperature_factor)
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        amplitudes = numpyro.sample("amplitudes", prior)
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        positions = nma_positions(context, amplitudes)
        predicted = render_images(image_model_of(context), positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images, indices)
