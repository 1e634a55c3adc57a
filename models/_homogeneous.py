"""`homogeneous`: one atomic model refined against all images under the elastic prior."""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from ._context import ModelContext
from ._likelihood import observe_images, render_images, sample_globals, sample_pose_corrections

__all__ = ["homogeneous"]


def homogeneous(*, images, rotations, shifts_in_angstroms, ctf, context: ModelContext, n_particles: int, indices=None):
    """One structure for all particles, fitted to the images directly (not to a map).

    **Random variables:** globals `spring_constant`, `noise_std`, `displacement` (n_beads, 3) Å with
    density ∝ exp(−γE(x)/kT) (with a weak rigid-body restraint; written as an improper flat sample plus
    the factor `elastic_energy`); in the `particle` plate:
    optional pose corrections, `contrast`, observed `images`.
    """
    spring_constant, noise_std = sample_globals(context)
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
        predicted = render_images(context.image_model, atom_positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images)
