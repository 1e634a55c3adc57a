"""Boltzmann priors from an elastic network: on normal-mode amplitudes and on free-form displacements.

Units: with the Hessian eigenvalues λₖ of the network built with γ = 1 (1/Å²·[γ]), a spring constant γ
in kT/Å² and a temperature factor τ (kT in units of the reference kT, 1 by default), the energy of the
displacement Σₖ aₖ vₖ is γ/2 Σₖ λₖ aₖ² kT, so p(a) ∝ exp(−E/τ) makes every amplitude an independent
N(0, τ/(γ λₖ)) in Å. γ and τ enter as (possibly traced) arguments, so they can be latent variables
or learned hyperparameters in a NumPyro model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, Float

from ._elastic_network import ElasticNetwork
from ._rigid_motion import rigid_body_basis

__all__ = ["mode_amplitude_prior", "elastic_network_log_prior"]


def mode_amplitude_prior(
    eigenvalues: Float[Array, " n_modes"],
    spring_constant: float | Array = 1.0,
    temperature_factor: float | Array = 1.0,
) -> dist.Distribution:
    """The Boltzmann distribution of normal-mode amplitudes: aₖ ~ N(0, τ/(γ λₖ)) independently.

    **Arguments:**

    - `eigenvalues`: `(n_modes,)` non-trivial Hessian eigenvalues λₖ of the network built with γ = 1
      (`normal_modes(network, n_modes).eigenvalues`).
    - `spring_constant`: γ in kT/Å² (may be a sampled or learned value).
    - `temperature_factor`: τ, the temperature in units of the reference kT (may be sampled).

    **Returns:** a NumPyro `Normal(0, σ).to_event(1)` over `(n_modes,)` amplitudes in Å, with
    σₖ = sqrt(τ/(γ λₖ)); use it as `numpyro.sample("amplitudes", mode_amplitude_prior(...))`.
    """
    variances = temperature_factor / (spring_constant * jnp.asarray(eigenvalues))
    return dist.Normal(jnp.zeros_like(variances), jnp.sqrt(variances)).to_event(1)


def elastic_network_log_prior(
    network: ElasticNetwork,
    positions_in_angstroms: Float[Array | np.ndarray, "n_beads 3"],
    spring_constant: float | Array = 1.0,
    temperature_factor: float | Array = 1.0,
    rigid_body_spring_constant: float | Array = 1e-3,
) -> Float[Array, ""]:
    """Log-density of free-form bead positions under exp(−E/kT), normalised in γ and τ.

    The elastic energy does not change under rigid motions, so exp(−E/kT) alone is improper along
    the six rigid-body directions. Here those directions get a weak harmonic restraint: the
    displacement u = x − x⁰ is projected onto the orthonormal basis B of infinitesimal rigid-body
    motions at the reference, and κ/2 |Bᵀu|² (kT) is added to the energy. Poses are fitted
    separately (rotations and shifts of the whole particle), so the restraint only keeps the density
    proper; it is exact for small rotations (large rotations are only partly seen by the linear
    projection, which is harmless for a weak κ).

    The returned value includes the γ- and τ-dependent normalising constant of the harmonic (small
    displacement) approximation, (3n − 6)/2 · log(γ/(2πτ)) + 6/2 · log(κ/(2πτ)), so that γ and τ can
    be sampled or learned; the remaining constant −½ Σ log λₖ does not depend on γ, τ or the positions
    and is left out.

    **Arguments:**

    - `network`: the `ElasticNetwork` (reference positions x⁰).
    - `positions_in_angstroms`: `(n_beads, 3)` bead positions (traced).
    - `spring_constant`: γ in kT/Å².
    - `temperature_factor`: τ, kT in units of the reference kT.
    - `rigid_body_spring_constant`: κ in kT/Å² for the rigid-body restraint.

    **Returns:** the scalar log-density; use as `numpyro.factor("elastic_energy", value)`.
    """
    x = jnp.asarray(positions_in_angstroms)
    reference = network.reference_positions_in_angstroms
    displacement = (x - reference).reshape(-1)
    basis = rigid_body_basis(reference).reshape(6, -1)
    rigid_components = basis @ displacement
    energy = network.energy(x, spring_constant) + 0.5 * rigid_body_spring_constant * jnp.sum(rigid_components**2)
    n_internal = 3 * network.n_beads - 6
    log_normaliser = 0.5 * n_internal * jnp.log(spring_constant / (2 * jnp.pi * temperature_factor)) + 3.0 * jnp.log(
        rigid_body_spring_constant / (2 * jnp.pi * temperature_factor)
    )
    return -energy / temperature_factor + log_normaliser
