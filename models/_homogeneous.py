"""`homogeneous`: one atomic model refined against all images under the elastic prior."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int

from atomicspi.microscope import CTFParameters

from ._context import ModelContext
from ._likelihood import (
    image_model_of,
    observe_images,
    render_images,
    sample_envelope,
    sample_globals,
    sample_pose_corrections,
)

__all__ = ["homogeneous"]


def homogeneous(
    *,
    images: Float[Array | np.ndarray, "batch y x"] | None,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
    context: ModelContext,
    n_particles: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> None:
    """One structure for all particles, fitted to the images directly (not to a map).

    **Random variables:** globals `spring_constant`, `noise_std`, `displacement` (n_beads, 3) Å with
    density ∝ exp(−γE(x)/kT) (with a weak rigid-body restraint; written as an improper flat sample plus
    the factor `elastic_energy`); in the `particle` plate:
    optional pose corrections, `contrast`, observed `images`.
    """
    spring_constant, noise_std = sample_globals(context)
    ctf = sample_envelope(context, ctf)
    displacement = numpyro.sample(
        "displacement", dist.ImproperUniform(dist.constraints.real, (), event_shape=(context.n_beads, 3))
    )
    bead_positions = context.bead_positions_in_angstroms + displacement
    numpyro.factor("elastic_energy", context.elastic_log_prior(bead_positions, spring_constant))
    positions = context.atoms_from_bead_displacements(displacement)
    batch_size = rotations.shape[0]
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        atom_positions = jnp.broadcast_to(positions, (batch_size, *positions.shape))
        predicted = render_images(image_model_of(context), atom_positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images, indices)
