"""`deformation`: a per-particle latent z decoded by a neural network into bead displacements, with
the elastic-network energy as a physics prior factor."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.contrib.module import eqx_module

from ._context import ModelContext
from ._likelihood import observe_images, render_images, sample_globals, sample_pose_corrections

__all__ = ["Decoder", "deformation", "deformation_positions"]


class Decoder(eqx.Module):
    """MLP from a latent vector to bead displacements (Å); starts as the zero map (the reference)."""

    mlp: eqx.nn.MLP
    n_beads: int = eqx.field(static=True)

    def __init__(self, latent_dim: int, n_beads: int, key: PRNGKeyArray, hidden_size: int = 128):
        mlp = eqx.nn.MLP(latent_dim, 3 * n_beads, hidden_size, depth=2, activation=jax.nn.gelu, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (last.weight * 1e-2, jnp.zeros_like(last.bias)))
        self.mlp = mlp
        self.n_beads = n_beads

    def __call__(self, z: Float[Array, " latent_dim"]) -> Float[Array, "n_beads 3"]:
        return self.mlp(z).reshape(self.n_beads, 3)


def deformation_positions(context: ModelContext, decoder: Decoder, z):
    """Atom positions `(..., n_atoms, 3)` for latents `(..., latent_dim)`."""
    flat = z.reshape(-1, z.shape[-1])
    displacements = jax.vmap(decoder)(flat)
    positions = jax.vmap(context.atoms_from_bead_displacements)(displacements)
    return positions.reshape(*z.shape[:-1], *positions.shape[-2:])


def deformation(
    *, images, rotations, shifts_in_angstroms, ctf, context: ModelContext, n_particles: int, decoder: Decoder, indices=None
):
    """Neural deformation model (atomic cryoDRGN/cryoSTAR-like, with a physics prior).

    **Random variables:** globals `spring_constant`, `noise_std`; the decoder weights are global
    parameters (point estimates); in the `particle` plate: `z` ~ N(0, I) of size `latent_dim`, the factor
    `elastic_energy` = log of the Boltzmann density exp(−γE(x(z))/kT) of the decoded bead positions,
    normalised in γ in the harmonic approximation (which keeps γ identifiable), with a weak restraint
    on rigid-body displacements; optional pose corrections, `contrast`, observed `images`.
    """
    spring_constant, noise_std = sample_globals(context)
    options = context.options
    net = eqx_module("decoder", decoder)
    batch_size = rotations.shape[0]
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([options.latent_dim]).to_event(1))
        displacements = jax.vmap(net)(z)
        bead_positions = context.bead_positions_in_angstroms + displacements
        log_prior = jax.vmap(context.elastic_log_prior, in_axes=(0, None))(bead_positions, spring_constant)
        numpyro.factor("elastic_energy", log_prior)
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        positions = jax.vmap(context.atoms_from_bead_displacements)(displacements)
        predicted = render_images(context.image_model, positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images)
