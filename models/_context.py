"""What every model needs to know besides the data: the atoms it moves, their beads and modes, the
elastic network of the prior, the microscope, and the model options."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from atomicspi.microscope import ImageModel
from atomicspi.structure import AtomicModel, ElasticNetwork

__all__ = ["ModelContext", "ModelOptions", "build_model_context"]


class ModelOptions(eqx.Module):
    """Options shared by the models (all static).

    - `temperature_factor`: kT in the units of the elastic energy (springs in kT/Å² when it is 1).
    - `spring_constant_guess`: prior median of the spring constant γ (kT/Å²).
    - `noise_std_guess`: prior median of the per-pixel noise standard deviation (image units).
    - `contrast_guess`: prior median of the per-image contrast, the factor from the microscope's
      physical units (V·Å) to the image's units.
    - `refine_poses`: add per-particle rotation (radians) and shift (Å) corrections as latent variables.
    - `rotation_prior_in_degrees`, `shift_prior_in_angstroms`: prior widths of those corrections.
    - `latent_dim`: dimension of z for the `deformation` model.
    - `rigid_body_spring_constant`: κ (kT/Å²) of the weak restraint that makes free-form displacement
      priors proper along the six zero-energy rigid-body directions.
    - `spring_yield_in_angstroms`: when given, the `deformation` prior's springs yield beyond this
      stretch (`ElasticNetwork.yielding_energy`) instead of staying harmonic.
    - `particle_fluctuation_in_angstroms`: when given (and the `deformation` decoder has a block
      basis), each particle's beads also move by its own small rigid-block field beyond the decoded
      structure, whose root-mean-square bead displacement has this prior median
      (`atomicspi.models.fluctuation_field`).
    - `likelihood_resolution_in_angstroms`: when given, the images' likelihood counts only their
      Fourier components up to this resolution (`observe_images`).
    - `envelope_prior_in_angstroms_squared`: when given, every model learns the global
      `envelope_b_factor` (Å²), an envelope exp(−B |k|²/4) on every image beyond the reference's
      atomic B-factors, with a N(0, this²) prior (`sample_envelope`); None: no envelope.
    - `fluctuation_fields`: how many block fields those fluctuations have (the deformation family
      sets it from its decoder's basis; 0 = no fluctuations).
    """

    temperature_factor: float = eqx.field(static=True, default=1.0)
    spring_constant_guess: float = eqx.field(static=True, default=0.1)
    noise_std_guess: float = eqx.field(static=True, default=1.0)
    contrast_guess: float = eqx.field(static=True, default=1.0)
    refine_poses: bool = eqx.field(static=True, default=False)
    rotation_prior_in_degrees: float = eqx.field(static=True, default=2.0)
    shift_prior_in_angstroms: float = eqx.field(static=True, default=1.0)
    latent_dim: int = eqx.field(static=True, default=4)
    rigid_body_spring_constant: float = eqx.field(static=True, default=1e-2)
    spring_yield_in_angstroms: float | None = eqx.field(static=True, default=None)
    particle_fluctuation_in_angstroms: float | None = eqx.field(static=True, default=None)
    fluctuation_fields: int = eqx.field(static=True, default=0)
    likelihood_resolution_in_angstroms: float | None = eqx.field(static=True, default=None)
    envelope_prior_in_angstroms_squared: float | None = eqx.field(static=True, default=None)


class ModelContext(eqx.Module):
    """The fixed (non-random) ingredients of a model.

    **Fields:**

    - `reference_positions_in_angstroms`: `(n_atoms, 3)` the reference atoms, centred at the origin
      of the pose frame.
    - `atom_to_bead`: `(n_atoms,)` index of the bead each atom follows.
    - `bead_positions_in_angstroms`: `(n_beads, 3)` reference bead positions.
    - `mode_vectors`: `(n_modes, n_beads, 3)` orthonormal elastic-network modes (rigid-body removed).
    - `mode_eigenvalues`: `(n_modes,)` their eigenvalues for unit spring constant (1/Å² · kT units).
    - `network`: the elastic network (energy of bead positions for a unit spring constant); with
      domains, only the springs inside domains.
    - `image_model`: the microscope, `(positions, rotation, shift, ctf) -> image [y, x]`, or `None`
      for a context used for its prior alone (nothing is rendered).
    - `options`: `ModelOptions`.
    - `bead_domains`: `(n_beads,)` rigid domain of every bead (all 0 when no domains are given);
      domain 0 holds most beads and does not move (its motion is the particle's pose).
    - `n_domains`: number of domains (static).
    - `noise_power_spectrum`: `None` for white noise (per-pixel `noise_std`), or `(n_noise_groups,
      n_shells)` the radial power spectrum of the coloured noise of each optics group
      (`atomicspi.microscope` normalisation, shells `radial_shell_indices`) in units of
      `noise_std²`: the images' noise power at shell n of group g is `noise_std² · spectrum[g, n]`.
    - `particle_noise_groups`: with several noise groups, `(n_particles,)` the row of
      `noise_power_spectrum` of each particle (the models look it up by the minibatch's `indices`);
      `None` when there is one row.
    """

    reference_positions_in_angstroms: Float[Array, "n_atoms 3"]
    atom_to_bead: Int[Array, " n_atoms"]
    bead_positions_in_angstroms: Float[Array, "n_beads 3"]
    mode_vectors: Float[Array, "n_modes n_beads 3"]
    mode_eigenvalues: Float[Array, " n_modes"]
    network: ElasticNetwork
    image_model: ImageModel | None
    options: ModelOptions
    bead_domains: Int[Array, " n_beads"]
    n_domains: int = eqx.field(static=True, default=1)
    noise_power_spectrum: Float[Array, "n_noise_groups n_shells"] | None = None
    particle_noise_groups: Int[Array, " n_particles"] | None = None

    @property
    def n_beads(self) -> int:
        return self.bead_positions_in_angstroms.shape[0]

    @property
    def n_modes(self) -> int:
        return self.mode_eigenvalues.shape[0]

    def atoms_from_bead_displacements(
        self, bead_displacements_in_angstroms: Float[Array | np.ndarray, "n_beads 3"]
    ) -> Float[Array, "n_atoms 3"]:
        """Every atom follows its bead: no bond inside a residue is stretched."""
        return self.reference_positions_in_angstroms + bead_displacements_in_angstroms[self.atom_to_bead]

    def prior_energy(self, bead_positions_in_angstroms: Float[Array | np.ndarray, "n_beads 3"]) -> Float[Array, ""]:
        """The prior's elastic energy for a unit spring constant: harmonic, or with yielding springs
        when `options.spring_yield_in_angstroms` is set."""
        if self.options.spring_yield_in_angstroms is None:
            return self.network.energy(bead_positions_in_angstroms)
        return self.network.yielding_energy(bead_positions_in_angstroms, 1.0, self.options.spring_yield_in_angstroms)

    def bead_displacements_from_amplitudes(self, amplitudes: Float[Array | np.ndarray, " n_modes"]) -> Float[Array, "n_beads 3"]:
        return jnp.einsum("k,kbc->bc", amplitudes, self.mode_vectors)

    def elastic_log_prior(
        self, bead_positions_in_angstroms: Float[Array | np.ndarray, "n_beads 3"], spring_constant: float | Float[Array, ""]
    ) -> Float[Array, ""]:
        """log exp(−γE/kT), normalised in γ, with the weak rigid-body restraint (see
        `atomicspi.structure.elastic_network_log_prior`)."""
        from atomicspi.structure import elastic_network_log_prior

        return elastic_network_log_prior(
            self.network, bead_positions_in_angstroms, spring_constant,
            self.options.temperature_factor, self.options.rigid_body_spring_constant,
        )


def build_model_context(
    structure: AtomicModel,
    image_model: ImageModel | None,
    n_modes: int = 10,
    cutoff_in_angstroms: float = 15.0,
    options: ModelOptions | None = None,
    coarse_grain: str = "calpha",
    domain_residue_ranges: int | Sequence[Sequence[Sequence[int]]] | None = None,
) -> ModelContext:
    """The common case: Cα beads, an ANM with a cutoff, its lowest modes, atoms following their residue's bead.

    **Arguments:**

    - `structure`: an `atomicspi.structure.AtomicModel` (already in the frame of the poses).
    - `image_model`: the microscope for these atoms (`atomicspi.microscope.make_image_model`), or
      `None` for a context used for its prior alone.
    - `n_modes`: number of lowest non-rigid modes kept.
    - `cutoff_in_angstroms`: contact cutoff of the elastic network.
    - `coarse_grain`: beads at the Cα (`"calpha"`) or at residue centroids (`"centroid"`).
    - `domain_residue_ranges`: each domain's list of `(first, last)` residue numbers (inclusive), or
      a number of domains to find from the network's lowest modes; the domain with most beads is
      renumbered 0 (the `domains` model holds it fixed).

    **Returns:** a `ModelContext`.
    """
    from atomicspi import structure as structure_module

    beads = {"calpha": structure_module.calpha_beads, "centroid": structure_module.centroid_beads}[coarse_grain](structure)
    network = structure_module.ElasticNetwork.from_positions(beads.bead_positions_in_angstroms, cutoff_in_angstroms)
    modes = structure_module.normal_modes(network, n_modes)
    if domain_residue_ranges:
        if isinstance(domain_residue_ranges, int):
            domains = structure_module.domains_from_normal_modes(network, domain_residue_ranges)
        else:
            domains = structure_module.domains_from_residue_ranges(beads.bead_residue_numbers, domain_residue_ranges)
        largest = int(np.argmax(np.bincount(domains)))
        domains = np.where(domains == largest, 0, np.where(domains == 0, largest, domains))
        n_domains = int(domains.max()) + 1
        # Domains move rigidly and their hinges are free: the prior's energy counts the springs
        # inside domains only (the modes above still come from the whole network).
        inside = domains[network.pairs[:, 0]] == domains[network.pairs[:, 1]]
        network = structure_module.ElasticNetwork(
            reference_positions_in_angstroms=network.reference_positions_in_angstroms,
            pairs=network.pairs[inside],
            rest_lengths_in_angstroms=network.rest_lengths_in_angstroms[inside],
            spring_weights=network.spring_weights[inside],
        )
    else:
        domains, n_domains = np.zeros(beads.n_beads, dtype=int), 1
    return ModelContext(
        reference_positions_in_angstroms=jnp.asarray(structure.positions_in_angstroms),
        atom_to_bead=jnp.asarray(beads.atom_to_bead),
        bead_positions_in_angstroms=jnp.asarray(beads.bead_positions_in_angstroms),
        mode_vectors=jnp.asarray(modes.vectors),
        mode_eigenvalues=jnp.asarray(modes.eigenvalues),
        network=network,
        image_model=image_model,
        options=options or ModelOptions(),
        bead_domains=jnp.asarray(domains),
        n_domains=n_domains,
    )
