"""`deformation`: a per-particle latent z decoded by a neural network into bead displacements, with
the elastic-network energy as a physics prior on the decoded structures."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int, PRNGKeyArray
from numpyro.contrib.module import eqx_module

from atomicspi.microscope import CTFParameters
from atomicspi.structure import BlockRigidMotion

from ._context import ModelContext
from ._likelihood import (
    image_model_of,
    observe_images,
    render_images,
    sample_envelope,
    sample_globals,
    sample_pose_corrections,
)

__all__ = [
    "Decoder",
    "decoded_structure",
    "decoder_along_motions",
    "deformation",
    "deformation_positions",
    "fluctuation_field",
    "fluctuation_scale",
    "latent_elastic_log_normaliser",
    "spring_constant_for_spread",
]


def _combination_of_fields(
    coefficients: Float[Array, "*batch n_fields"], fields: Float[Array, "n_fields n_beads 3"]
) -> Float[Array, "*batch n_beads 3"]:
    """Σ_k c_k · fields_k over fixed displacement fields (no gradient reaches the fields)."""
    return jnp.einsum("...k,kbc->...bc", coefficients, jax.lax.stop_gradient(fields))


class Decoder(eqx.Module):
    """From a latent vector to bead displacements (Å): a linear map (the population's principal
    displacements, as in a probabilistic PCA) plus an MLP for the curvature of large motions.

    With a `basis`, both give coefficients of fixed displacement fields (the rigid motions of
    blocks of consecutive beads, `atomicspi.structure.block_rigid_basis`): hinge and domain
    motions lie in that span, and the distortions within blocks that images barely constrain do
    not. Without one, every bead moves freely.

    With `rigid_blocks` as well (the same blocks as the basis), each block then moves by the finite
    rigid motion whose first-order field the coefficients give (`BlockRigidMotion`): large domain
    rotations are not stretched, and the atoms of each bead's residue turn with its block
    (`decoded_structure`).

    Both start near zero, so the initial decoder gives the reference structure.

    `with_fine_fields` adds a third part after training: an MLP of z giving coefficients of finer
    fields (the rigid motions of smaller blocks), added to the beads and carried to their atoms;
    the path posterior refines it along the curve.

    **Arguments:**

    - `latent_dim`: length of z.
    - `n_beads`: number of beads displaced.
    - `key`: PRNG key for the initial weights (keyword only).
    - `hidden_size`: width of the MLP's two hidden layers.
    - `basis`: `(n_basis, n_beads, 3)` orthonormal displacement fields, or `None`.
    - `rigid_blocks`: the `BlockRigidMotion` of the basis's blocks, or `None` (displacements are
      then the linear combination of the basis fields).
    """

    linear: eqx.nn.Linear
    mlp: eqx.nn.MLP
    basis: Float[Array, "n_basis n_beads 3"] | None
    rigid_blocks: BlockRigidMotion | None
    fine_basis: Float[Array, "n_fine n_beads 3"] | None
    fine_map: eqx.nn.MLP | None
    fine_atom_basis: Float[Array, "n_atom_fields n_atoms 3"] | None
    n_beads: int = eqx.field(static=True)

    def __init__(
        self,
        latent_dim: int,
        n_beads: int,
        *,
        key: PRNGKeyArray,
        hidden_size: int = 128,
        basis: Float[Array | np.ndarray, "n_basis n_beads 3"] | None = None,
        rigid_blocks: BlockRigidMotion | None = None,
    ):
        if rigid_blocks is not None and basis is None:
            raise ValueError("rigid_blocks needs the blocks' basis")
        linear_key, mlp_key = jax.random.split(key)
        size = 3 * n_beads if basis is None else basis.shape[0]
        linear = eqx.nn.Linear(latent_dim, size, use_bias=False, key=linear_key)
        self.linear = eqx.tree_at(lambda m: m.weight, linear, linear.weight * 1e-2)
        mlp = eqx.nn.MLP(latent_dim, size, hidden_size, depth=2, activation=jax.nn.gelu, key=mlp_key)
        last = mlp.layers[-1]
        assert last.bias is not None  # eqx.nn.MLP's layers have biases by default
        self.mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (last.weight * 1e-2, jnp.zeros_like(last.bias))
        )
        self.basis = None if basis is None else jnp.asarray(basis, dtype=jnp.float32)
        self.rigid_blocks = rigid_blocks
        self.fine_basis = None
        self.fine_map = None
        self.fine_atom_basis = None
        self.n_beads = n_beads

    def with_fine_fields(
        self,
        basis: Float[Array | np.ndarray, "n_fine n_beads 3"],
        *,
        key: PRNGKeyArray,
        hidden_size: int = 64,
        atom_basis: Float[Array | np.ndarray, "n_atom_fields n_atoms 3"] | None = None,
    ) -> "Decoder":
        """The same decoder plus a finer displacement on top of its structures: an MLP of z gives
        coefficients of `basis` (orthonormal fields, e.g. the rigid motions of smaller blocks), each
        coefficient in Å root-mean-square over the beads. It starts at exactly zero (the decoded
        structures are unchanged). The atoms move by the same coefficients of `atom_basis`, the
        fields at the atoms (`carried_block_rigid_basis`: each atom turns with its block), or without
        it follow their beads' fine displacement. `atom_basis` may hold more fields than `basis`:
        the first `basis.shape[0]` are the beads' fields at the atoms, the rest move atoms only
        (`bead_turn_basis`: each residue turning about its Cα)."""
        latent_dim = self.linear.in_features
        if atom_basis is not None and atom_basis.shape[0] < basis.shape[0]:
            raise ValueError(f"atom_basis has {atom_basis.shape[0]} fields, fewer than the basis's {basis.shape[0]}")
        n_outputs = basis.shape[0] if atom_basis is None else atom_basis.shape[0]
        mlp = eqx.nn.MLP(latent_dim, n_outputs, hidden_size, depth=2, activation=jax.nn.gelu, key=key)
        last = mlp.layers[-1]
        assert last.bias is not None
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        atoms = None if atom_basis is None else jnp.asarray(atom_basis, dtype=jnp.float32)
        return eqx.tree_at(
            lambda d: (d.fine_basis, d.fine_map, d.fine_atom_basis), self, (jnp.asarray(basis, dtype=jnp.float32), mlp, atoms),
            is_leaf=lambda x: x is None,
        )

    def fine_coefficients(self, z: Float[Array, " latent_dim"]) -> Float[Array, " n_atom_fields"] | None:
        """The coefficients of the fine fields (`with_fine_fields`), in Å summed over the beads, or
        `None` without them."""
        if self.fine_map is None or self.fine_basis is None:
            return None
        return self.fine_map(z) * jnp.sqrt(float(self.n_beads))

    def fine_field(self, z: Float[Array, " latent_dim"]) -> Float[Array, "n_beads 3"] | None:
        """The finer displacement of `with_fine_fields` (Å), or `None` without one."""
        coefficients = self.fine_coefficients(z)
        if coefficients is None or self.fine_basis is None:
            return None
        return _combination_of_fields(coefficients[: self.fine_basis.shape[0]], self.fine_basis)

    def linear_field(self, z: Float[Array, " latent_dim"]) -> Float[Array, "n_beads 3"]:
        """The bead displacements as a linear combination of the basis fields (every bead free without one)."""
        output = self.linear(z) + self.mlp(z)
        if self.basis is None:
            return output.reshape(self.n_beads, 3)
        # The basis is fixed: it reaches the optimiser as a parameter with zero gradient.
        return _combination_of_fields(output, self.basis)

    def block_transforms(self, z: Float[Array, " latent_dim"]) -> tuple[Float[Array, "n_blocks 3 3"], Float[Array, "n_blocks 3"]]:
        """Per block, the rotation and translation (Å) of its finite rigid motion (needs `rigid_blocks`)."""
        if self.rigid_blocks is None:
            raise ValueError("block_transforms needs a decoder with rigid_blocks")
        blocks = jax.lax.stop_gradient(self.rigid_blocks)
        return blocks.transforms(self.linear_field(z))

    def __call__(self, z: Float[Array, " latent_dim"]) -> Float[Array, "n_beads 3"]:
        if self.rigid_blocks is None:
            displacements = self.linear_field(z)
        else:
            blocks = jax.lax.stop_gradient(self.rigid_blocks)
            rotations, translations = self.block_transforms(z)
            moved = blocks.move(blocks.positions_in_angstroms, blocks.block_of_point, rotations, translations)
            displacements = moved - blocks.positions_in_angstroms
        fine = self.fine_field(z)
        return displacements if fine is None else displacements + fine


def decoded_structure(
    context: ModelContext, decoder: Decoder, z: Float[Array, " latent_dim"]
) -> tuple[Float[Array, "n_beads 3"], Float[Array, "n_atoms 3"]]:
    """The bead displacements and the atom positions decoded from one latent: with rigid blocks,
    every atom moves rigidly with its bead's block; otherwise it is carried by its bead's displacement."""
    if decoder.rigid_blocks is None:
        displacements = decoder(z)
        return displacements, context.atoms_from_bead_displacements(displacements)
    blocks = jax.lax.stop_gradient(decoder.rigid_blocks)
    rotations, translations = decoder.block_transforms(z)
    beads = blocks.move(context.bead_positions_in_angstroms, blocks.block_of_point, rotations, translations)
    atoms = blocks.move(
        context.reference_positions_in_angstroms, blocks.block_of_point[context.atom_to_bead], rotations, translations
    )
    coefficients = decoder.fine_coefficients(z)  # the fine fields' MLP, once for beads and atoms
    if coefficients is not None and decoder.fine_basis is not None:
        fine = _combination_of_fields(coefficients[: decoder.fine_basis.shape[0]], decoder.fine_basis)
        if decoder.fine_atom_basis is None:  # each atom by its bead's displacement
            fine_atoms = fine[context.atom_to_bead]
        else:  # each atom with its fine block's rigid motion
            fine_atoms = _combination_of_fields(coefficients, decoder.fine_atom_basis)
        beads, atoms = beads + fine, atoms + fine_atoms
    return beads - context.bead_positions_in_angstroms, atoms


def _network_hessian_times(context: ModelContext, displacement: Float[Array, "n_beads 3"]) -> Float[Array, "n_beads 3"]:
    """K·u: the prior network's Hessian at the reference (γ = 1) times a bead displacement, by
    forward-over-reverse differentiation of its energy (no dense Hessian)."""
    return jax.jvp(jax.grad(context.network.energy), (context.bead_positions_in_angstroms,), (displacement,))[1]


def decoder_along_motions(
    decoder: Decoder,
    directions: Float[Array | np.ndarray, "n_directions n_beads 3"],
    variances_in_angstroms_squared: Float[Array | np.ndarray, " n_directions"],
) -> Decoder:
    """The decoder whose linear map starts along given motions: column j of the linear map is
    direction j times its standard deviation, so z ~ N(0, I) spreads the decoded structures as the
    population spreads (`atomicspi.inference.principal_motions` estimates both from the images).
    With a basis, the directions enter as their projections on it. Latent dimensions beyond the
    given directions keep their small random start.

    **Arguments:**

    - `decoder`: a freshly initialised `Decoder`.
    - `directions`: `(n_directions, n_beads, 3)` orthonormal bead displacements.
    - `variances_in_angstroms_squared`: `(n_directions,)` the population's variance along each.

    **Returns:** the `Decoder` with its linear map replaced in the first n_directions columns.
    """
    count = min(decoder.linear.in_features, directions.shape[0])
    directions = jnp.asarray(directions[:count], dtype=jnp.float32)
    if decoder.basis is not None:  # the directions' coefficients (their projection on the basis)
        columns = jnp.einsum("dbc,kbc->kd", directions, decoder.basis)
    else:
        columns = directions.reshape(count, -1).T
    columns = columns * jnp.sqrt(jnp.asarray(variances_in_angstroms_squared[:count], dtype=jnp.float32))
    weight = decoder.linear.weight.at[:, :count].set(columns.astype(decoder.linear.weight.dtype))
    return eqx.tree_at(lambda m: m.linear.weight, decoder, weight)


def spring_constant_for_spread(
    context: ModelContext, direction: Float[Array | np.ndarray, "n_beads 3"], variance_in_angstroms_squared: float
) -> float:
    """The spring constant γ whose Boltzmann spread along a unit bead displacement v is the given
    variance: kT / (γ vᵀKv) = variance, K the prior network's Hessian at the reference for γ = 1.

    A prior centred there neither pins the population's main motion (a stiffer γ would: a hinge
    motion strains many springs) nor is left without a scale."""
    v = jnp.asarray(direction, dtype=jnp.float32)
    curvature = float(jnp.sum(v * _network_hessian_times(context, v)))
    return float(context.options.temperature_factor / (max(curvature, 1e-12) * variance_in_angstroms_squared))


def deformation_positions(
    context: ModelContext, decoder: Decoder, z: Float[Array | np.ndarray, "*batch latent_dim"]
) -> Float[Array, "*batch n_atoms 3"]:
    """Atom positions `(..., n_atoms, 3)` for latents `(..., latent_dim)`."""
    flat = jnp.asarray(z).reshape(-1, z.shape[-1])
    _, positions = jax.vmap(functools.partial(decoded_structure, context, decoder))(flat)
    return positions.reshape(*z.shape[:-1], *positions.shape[-2:])


def fluctuation_scale(context: ModelContext, decoder: Decoder) -> float:
    """The prior median τ₀ of the fluctuation coefficients' standard deviation: with `n_basis`
    orthonormal block fields over `n_beads` beads, coefficients of standard deviation τ move the beads
    by a root-mean-square τ·√(n_basis / n_beads), so τ₀ = `particle_fluctuation_in_angstroms` ·
    √(n_beads / n_basis)."""
    if decoder.basis is None or context.options.particle_fluctuation_in_angstroms is None:
        raise ValueError("particle fluctuations need a decoder with a block basis and particle_fluctuation_in_angstroms")
    return float(context.options.particle_fluctuation_in_angstroms * np.sqrt(decoder.n_beads / decoder.basis.shape[0]))


def fluctuation_field(
    context: ModelContext,
    decoder: Decoder,
    coefficients_in_angstroms: Float[Array | np.ndarray, "*batch n_basis"],
) -> Float[Array, "*batch n_atoms 3"]:
    """Atom displacements `(..., n_atoms, 3)` of a particle's own fluctuation about its decoded
    structure: the first-order field Σ_k c_k · basis_k of the decoder's block rigid motions at the
    beads, carried to every atom by its bead.

    Particles are not exactly on the decoder's low-dimensional manifold (thermal motion, and a
    decoder that cannot follow every hinge's relaxation): without this freedom each image pulls its
    latent to where the decoded structure's projection best matches, an error that depends on the
    view and that q(z) cannot see (issue 19: path-position errors twice the posterior's spread)."""
    if decoder.basis is None:
        raise ValueError("fluctuation_field needs a decoder with a block basis")
    beads = _combination_of_fields(jnp.asarray(coefficients_in_angstroms), decoder.basis)
    return beads[..., context.atom_to_bead, :]


def latent_elastic_log_normaliser(
    context: ModelContext, decoder: Decoder, spring_constant: float | Float[Array, ""]
) -> Float[Array, ""]:
    """log Z of the prior p(z) ∝ N(z; 0, I) · exp(−γ E(x(z))/kT) in the Laplace approximation about
    z = 0: with J = ∂x/∂z at 0 and K the network's Hessian at the reference (unit γ),
    log Z ≈ −½ log det(I + γ JᵀKJ / kT). Exact for a linear decoder through the reference.

    Along a decoded direction v the marginal spread of the structures is then at most the Boltzmann
    spread kT/(γ vᵀKv): the elastic network caps how far the population moves along stiff directions,
    and γ stays identifiable from the data (it is not pulled by a count of 3n − 6 degrees of freedom
    that the decoder does not use)."""
    latent_dim = decoder.linear.in_features
    jacobian = jax.jacfwd(decoder)(jnp.zeros(latent_dim))  # (n_beads, 3, latent_dim)
    columns = jnp.moveaxis(jacobian, -1, 0)
    curvature = jnp.einsum("kbc,lbc->kl", columns, jax.vmap(functools.partial(_network_hessian_times, context))(columns))
    matrix = jnp.eye(latent_dim) + spring_constant * curvature / context.options.temperature_factor
    return -0.5 * jnp.linalg.slogdet(matrix)[1]


def deformation(
    *,
    images: Float[Array | np.ndarray, "batch y x"] | None,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
    context: ModelContext,
    n_particles: int,
    decoder: Decoder,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> None:
    """Neural deformation model (atomic cryoDRGN/cryoSTAR-like, with a physics prior).

    **Random variables:** globals `spring_constant`, `noise_std`; the decoder weights are global
    parameters (point estimates); in the `particle` plate the latent `z` of size `latent_dim` with the
    prior p(z) ∝ N(z; 0, I) · exp(−γE(x(z))/kT): the Gaussian `z` site times the factor
    `elastic_energy` = −γE(x(z))/kT − log Z(γ, decoder), E the elastic network's energy of the decoded
    bead positions (with `domains`, only the springs inside domains; with
    `options.spring_yield_in_angstroms`, springs that yield: `ModelContext.prior_energy`) and Z the normaliser of
    `latent_elastic_log_normaliser` (so that γ can be learned); with `options.fluctuation_fields`
    (and `particle_fluctuation_in_angstroms`), the global
    `fluctuation_log_scale` ~ N(0, 1) and per particle `fluctuation` ~ N(0, I): the particle's own
    block field `fluctuation_field` with coefficients τ₀·exp(fluctuation_log_scale)·fluctuation is added
    to the decoded atoms (`fluctuation_scale` gives τ₀); optional pose corrections, `contrast`,
    observed `images`.
    """
    spring_constant, noise_std = sample_globals(context)
    ctf = sample_envelope(context, ctf)
    options = context.options
    net = eqx_module("decoder", decoder)
    log_normaliser = latent_elastic_log_normaliser(context, net, spring_constant)
    fluctuation_size = None
    if options.fluctuation_fields:
        if decoder.basis is None or decoder.basis.shape[0] != options.fluctuation_fields:
            raise ValueError(f"options.fluctuation_fields {options.fluctuation_fields} needs a decoder basis of that many fields")
        fluctuation_size = options.fluctuation_fields
        # τ = τ₀ · exp(offset): the spread of the particles about the decoded manifold, learned
        fluctuation_sd = fluctuation_scale(context, decoder) * jnp.exp(numpyro.sample("fluctuation_log_scale", dist.Normal(0.0, 1.0)))
    batch_size = rotations.shape[0]
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([options.latent_dim]).to_event(1))
        displacements, positions = jax.vmap(functools.partial(decoded_structure, context, net))(z)
        if fluctuation_size is not None:
            standardised = numpyro.sample("fluctuation", dist.Normal(0.0, 1.0).expand([fluctuation_size]).to_event(1))
            positions = positions + fluctuation_field(context, net, fluctuation_sd[..., None] * standardised)
        energy = jax.vmap(context.prior_energy)(context.bead_positions_in_angstroms + displacements)
        numpyro.factor("elastic_energy", -spring_constant * energy / options.temperature_factor - log_normaliser)
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        predicted = render_images(image_model_of(context), positions, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images, indices)
