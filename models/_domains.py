"""`domains`: rigid motions of protein domains composed with normal modes, under the elastic prior."""

from __future__ import annotations

import jax
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

__all__ = ["domains", "domain_positions", "domain_bead_positions"]

_ROTATION_SCALE_IN_RADIANS = 0.35  # ≈ 20°: weak base prior; the elastic energy does the real work
_TRANSLATION_SCALE_IN_ANGSTROMS = 5.0
_AMPLITUDE_SCALE_IN_ANGSTROMS = 5.0


def _split(context: ModelContext, motion):
    moving = context.n_domains - 1
    rotation_vectors = jnp.concatenate([jnp.zeros((*motion.shape[:-1], 1, 3)), motion[..., : 3 * moving].reshape(*motion.shape[:-1], moving, 3)], axis=-2)
    translations = jnp.concatenate([jnp.zeros((*motion.shape[:-1], 1, 3)), motion[..., 3 * moving :].reshape(*motion.shape[:-1], moving, 3)], axis=-2)
    return rotation_vectors, translations


def _move(context: ModelContext, points, point_domains, motion):
    from atomicspi.structure import apply_domain_motion, domain_centroids

    centroids = domain_centroids(context.bead_positions_in_angstroms, context.bead_domains, context.n_domains)
    rotation_vectors, translations = _split(context, motion)
    return apply_domain_motion(points, point_domains, rotation_vectors, translations, centroids)


def domain_bead_positions(
    context: ModelContext, motion: Float[Array, " n_motion"], amplitudes: Float[Array, " n_modes"]
) -> Float[Array, "n_beads 3"]:
    """Bead positions `(n_beads, 3)`: modes first, then each domain's rigid motion about its
    reference centroid. `motion` is `(6 (n_domains − 1),)`: rotation vectors (rad), then translations (Å)."""
    beads = context.bead_positions_in_angstroms + context.bead_displacements_from_amplitudes(amplitudes)
    return _move(context, beads, context.bead_domains, motion)


def domain_positions(
    context: ModelContext,
    motion: Float[Array | np.ndarray, "*batch n_motion"],
    amplitudes: Float[Array | np.ndarray, "*batch n_modes"],
) -> Float[Array, "*batch n_atoms 3"]:
    """Atom positions `(..., n_atoms, 3)` for domain motions `(..., 6 (n_domains − 1))` and mode
    amplitudes `(..., n_modes)`; every atom moves with its bead's domain."""

    def one(motion, amplitudes):
        atoms = context.atoms_from_bead_displacements(context.bead_displacements_from_amplitudes(amplitudes))
        return _move(context, atoms, context.bead_domains[context.atom_to_bead], motion)

    flat = jax.vmap(one)(motion.reshape(-1, motion.shape[-1]), amplitudes.reshape(-1, amplitudes.shape[-1]))
    return flat.reshape(*motion.shape[:-1], *flat.shape[-2:])


def domains(
    *,
    images: Float[Array | np.ndarray, "batch y x"] | None,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
    context: ModelContext,
    n_particles: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> None:
    """Domain motions composed with modes: large hinge motions as rigid-body motions of domains
    (e.g. adenylate kinase's NMP and LID relative to its CORE), with the elastic-network modes for
    what is left.

    **Random variables:** globals `spring_constant`, `noise_std`; in the `particle` plate:
    `domain_motion` (6 per moving domain: rotation vector in rad about the domain's centroid, then
    translation in Å; the largest domain is held fixed, its motion being the pose) with a learned
    population prior N(μ, WWᵀ + diag σ²) of rank `latent_dim` (μ, W, σ are parameters fitted to all
    particles), and `amplitudes` (mode amplitudes, Å) with a weak N(0, 5²) base prior; both times the factor
    `elastic_energy` = −γE(x)/kT + (k/2) log γ, the Boltzmann density of the springs *inside*
    domains (rigid domain motions cost nothing; the hinges between domains are free up to the base
    priors — a full network's hinge springs would price a 30° lid closure at hundreds of kT and pin
    every particle to the reference), normalised over the k modes in the harmonic approximation so
    that γ stays identifiable. Then optional pose corrections, `contrast`, observed `images`.
    """
    if context.n_domains < 2:
        raise ValueError("the domains model needs at least two domains (dataset.yaml key `domains`)")
    spring_constant, noise_std = sample_globals(context)
    ctf = sample_envelope(context, ctf)
    options = context.options
    moving = context.n_domains - 1
    base_scale = jnp.concatenate(
        [jnp.full(3 * moving, _ROTATION_SCALE_IN_RADIANS), jnp.full(3 * moving, _TRANSLATION_SCALE_IN_ANGSTROMS)]
    )
    n_dof = context.n_modes
    batch_size = rotations.shape[0]
    # A population prior learned from all particles (type-II maximum likelihood): a low-rank Gaussian
    # whose principal directions are the concerted motions the particles share. At low SNR each
    # particle alone says little; the population says along which few directions they move.
    rank = options.latent_dim
    population_mean = numpyro.param("domain_motion_population_mean", jnp.zeros(6 * moving))
    population_factor = numpyro.param(
        "domain_motion_population_factor", 0.1 * base_scale[:, None] * jnp.eye(6 * moving, rank)
    )
    population_variance = numpyro.param(
        "domain_motion_population_variance", 0.25 * base_scale**2, constraint=dist.constraints.positive
    )
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        motion = numpyro.sample(
            "domain_motion", dist.LowRankMultivariateNormal(population_mean, population_factor, population_variance)
        )
        amplitudes = numpyro.sample(
            "amplitudes", dist.Normal(0.0, _AMPLITUDE_SCALE_IN_ANGSTROMS).expand([context.n_modes]).to_event(1)
        )
        beads = jax.vmap(lambda m, a: domain_bead_positions(context, m, a))(motion, amplitudes)
        energy = jax.vmap(context.network.energy)(beads)
        numpyro.factor(
            "elastic_energy", -spring_constant * energy / options.temperature_factor + 0.5 * n_dof * jnp.log(spring_constant)
        )
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        positions = domain_positions(context, motion, amplitudes)
        predicted = render_images(image_model_of(context), positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images, indices)
