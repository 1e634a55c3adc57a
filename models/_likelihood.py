"""What the models share: global noise and stiffness, pose corrections, and the image likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float

from atomicspi.microscope import CTFParameters, ImageModel

from ._context import ModelContext

__all__ = ["sample_globals", "sample_pose_corrections", "observe_images", "render_images", "image_model_of"]


def sample_globals(context: ModelContext) -> tuple[float | Float[Array, ""], float | Float[Array, ""]]:
    """Global random variables of every model.

    - `spring_constant` ~ LogNormal(log γ₀, 1.5): γ of the elastic network, kT/Å². Broad: a Cα
      network's stiffness in units of kT is known only to an order of magnitude, and large
      functional motions need a soft network.
    - `noise_std` ~ LogNormal(log σ₀, 1): per-pixel standard deviation of the white noise.
    """
    options = context.options
    spring_constant = numpyro.sample("spring_constant", dist.LogNormal(jnp.log(options.spring_constant_guess), 1.5))
    noise_std = numpyro.sample("noise_std", dist.LogNormal(jnp.log(options.noise_std_guess), 1.0))
    return spring_constant, noise_std


def sample_pose_corrections(
    context: ModelContext,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
) -> tuple[Float[Array | np.ndarray, "batch 3 3"], Float[Array | np.ndarray, "batch 2"]]:
    """Inside the particle plate: optional local pose refinement.

    - `rotation_correction` ~ N(0, σ_rot² I₃) (rotation vector, radians), applied as exp(δ)·A.
    - `shift_correction` ~ N(0, σ_shift² I₂) (Å), added to the given shift.
    """
    options = context.options
    if not options.refine_poses:
        return rotations, shifts_in_angstroms
    from atomicspi.microscope import axis_angle_to_matrix

    delta = numpyro.sample(
        "rotation_correction", dist.Normal(0.0, jnp.deg2rad(options.rotation_prior_in_degrees)).expand([3]).to_event(1)
    )
    shift_delta = numpyro.sample(
        "shift_correction", dist.Normal(0.0, options.shift_prior_in_angstroms).expand([2]).to_event(1)
    )
    return axis_angle_to_matrix(delta) @ rotations, shifts_in_angstroms + shift_delta


def render_images(
    image_model: ImageModel,
    atom_positions: Float[Array | np.ndarray, "batch n_atoms 3"],
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
) -> Float[Array, "batch y x"]:
    """Noise-free images `(batch, y, x)` of per-particle atom positions `(batch, n_atoms, 3)`; CTF
    fields without the batch axis (scalars such as the voltage) are shared by all images."""
    batch_size = rotations.shape[0]
    ctf_axes = jax.tree_util.tree_map(lambda v: 0 if jnp.ndim(v) >= 1 and jnp.shape(v)[0] == batch_size else None, ctf)
    return jax.vmap(image_model, in_axes=(0, 0, 0, ctf_axes))(
        jnp.asarray(atom_positions), jnp.asarray(rotations), jnp.asarray(shifts_in_angstroms), ctf
    )


def image_model_of(context: ModelContext) -> ImageModel:
    """The context's microscope; a model that renders images cannot do without one."""
    if context.image_model is None:
        raise ValueError("the model renders images, but its ModelContext has no image_model")
    return context.image_model


def observe_images(
    context: ModelContext,
    predicted: Float[Array, "batch y x"],
    noise_std: float | Float[Array, ""],
    images: Float[Array | np.ndarray, "batch y x"] | None,
) -> None:
    """Inside the particle plate: per-image contrast and the Gaussian white-noise likelihood.

    - `contrast` ~ LogNormal(log c₀, 0.5): per-image scale from V·Å to image units.
    - `images` ~ N(contrast · predicted, noise_std²) per pixel (observed).
    """
    contrast = numpyro.sample("contrast", dist.LogNormal(jnp.log(context.options.contrast_guess), 0.5))
    numpyro.sample("images", dist.Normal(contrast[..., None, None] * predicted, noise_std).to_event(2), obs=images)
