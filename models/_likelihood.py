"""What the models share: global noise and stiffness, pose corrections, and the image likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int, PRNGKeyArray

from atomicspi.microscope import CTFParameters, ImageModel, ctf_batch_axes

from ._context import ModelContext

__all__ = [
    "StationaryGaussianImages", "image_model_of", "inverse_noise_power", "noise_power_on_grid", "observe_images", "render_images", "sample_envelope", "sample_globals",
    "with_envelope",
    "sample_pose_corrections",
]


def sample_globals(context: ModelContext) -> tuple[float | Float[Array, ""], float | Float[Array, ""]]:
    """Global random variables of every model.

    - `spring_constant` ~ LogNormal(log γ₀, 1.5): γ of the elastic network, kT/Å². Broad: a Cα
      network's stiffness in units of kT is known only to an order of magnitude, and large
      functional motions need a soft network.
    - `noise_std` ~ LogNormal(log σ₀, 1): per-pixel standard deviation of the white noise; with
      coloured noise (`context.noise_power_spectrum`), the square root of the factor on that
      spectrum (σ₀ then being the root-mean-square noise per pixel of the estimated spectrum, the
      spectrum's shape is fixed and its level learned).
    """
    options = context.options
    spring_constant = numpyro.sample("spring_constant", dist.LogNormal(jnp.log(options.spring_constant_guess), 1.5))
    noise_std = numpyro.sample("noise_std", dist.LogNormal(jnp.log(options.noise_std_guess), 1.0))
    return spring_constant, noise_std


def sample_envelope(context: ModelContext, ctf: CTFParameters) -> CTFParameters:
    """Global: with `options.envelope_prior_in_angstroms_squared`, `envelope_b_factor` ~ N(0, that²)
    (Å²), the images' envelope exp(−B |k|²/4) beyond the reference's atomic B-factors, added to
    every particle's CTF B-factor; the CTF unchanged otherwise.

    The data's high-frequency falloff is not the reference's: a model without B-factors (a
    prediction, or a file that lost them), or crystallographic ones, against images blurred by
    motion, drift and the particles' own fluctuations. Rendered too sharp, the images' highest
    frequencies carry signal the data do not have, and the posteriors are too narrow by as much
    (issue 19: an envelope of ≈ 26 Å² missing from the benchmark's reference)."""
    prior = context.options.envelope_prior_in_angstroms_squared
    if prior is None:
        return ctf
    return with_envelope(ctf, numpyro.sample("envelope_b_factor", dist.Normal(0.0, prior)))


def with_envelope(ctf: CTFParameters, envelope_b_factor_in_angstroms_squared: float | Float[Array, ""]) -> CTFParameters:
    """The CTF with an envelope exp(−B |k|²/4) of `B` Å² more, shared by every image (added to each
    particle's CTF B-factor)."""
    import equinox as eqx

    return eqx.tree_at(
        lambda c: c.b_factor_in_angstroms_squared, ctf, ctf.b_factor_in_angstroms_squared + envelope_b_factor_in_angstroms_squared
    )


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
    return jax.vmap(image_model, in_axes=(0, 0, 0, ctf_batch_axes(ctf, rotations.shape[0])))(
        jnp.asarray(atom_positions), jnp.asarray(rotations), jnp.asarray(shifts_in_angstroms), ctf
    )


def image_model_of(context: ModelContext) -> ImageModel:
    """The context's microscope; a model that renders images cannot do without one."""
    if context.image_model is None:
        raise ValueError("the model renders images, but its ModelContext has no image_model")
    return context.image_model


class StationaryGaussianImages(dist.Distribution):
    """Images `loc + noise` with stationary Gaussian noise of power spectrum `P(k)` on the `rfft2`
    grid (`atomicspi.microscope` normalisation): the exact density of
    `atomicspi.microscope.gaussian_log_likelihood_fourier`, one event per image.

    **Arguments:**

    - `loc`: `(..., D, D)` the noise-free images.
    - `power_spectrum`: `(..., D, D // 2 + 1)` `P(k)` (`atomicspi.microscope.power_spectrum_on_grid`),
      broadcast against `loc`'s batch.
    - `frequency_mask`: optional `(D, D // 2 + 1)` 0/1 weights: the density of the components it
      keeps only (`atomicspi.microscope.resolution_mask`; sampling ignores it).
    """

    arg_constraints = {"loc": dist.constraints.independent(dist.constraints.real, 2),
                       "power_spectrum": dist.constraints.independent(dist.constraints.positive, 2)}
    support = dist.constraints.independent(dist.constraints.real, 2)
    reparametrized_params = ["loc", "power_spectrum"]

    def __init__(
        self,
        loc: Float[Array, "*batch box_size box_size"],
        power_spectrum: Float[Array, "*spectrum_batch box_size half_box_size"],
        frequency_mask: Float[Array, "box_size half_box_size"] | None = None,
        *,
        validate_args: bool | None = None,
    ):
        self.frequency_mask = frequency_mask
        box_size = loc.shape[-1]
        if power_spectrum.shape[-2:] != (box_size, box_size // 2 + 1):
            raise ValueError(f"power_spectrum {power_spectrum.shape} is not on the rfft2 grid of {box_size}² images")
        batch_shape = jnp.broadcast_shapes(loc.shape[:-2], power_spectrum.shape[:-2])
        self.loc = jnp.broadcast_to(loc, batch_shape + loc.shape[-2:])
        self.power_spectrum = jnp.broadcast_to(power_spectrum, batch_shape + power_spectrum.shape[-2:])
        super().__init__(batch_shape=batch_shape, event_shape=loc.shape[-2:], validate_args=validate_args)

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Float[Array, "..."]:
        box_size = self.event_shape[-1]
        white = jax.random.normal(key, sample_shape + self.batch_shape + self.event_shape)
        coloured = jnp.fft.irfft2(jnp.sqrt(self.power_spectrum) * jnp.fft.rfft2(white), s=(box_size, box_size))
        return self.loc + coloured

    def log_prob(self, value: Float[Array, "..."]) -> Float[Array, "..."]:
        from atomicspi.microscope import gaussian_log_likelihood_fourier

        residual = jnp.fft.rfft2(value - self.loc)
        power = jnp.broadcast_to(self.power_spectrum, residual.shape)
        per_image = jnp.vectorize(
            lambda r, p: gaussian_log_likelihood_fourier(r, jnp.zeros_like(r), p, self.frequency_mask), signature="(y,x),(y,x)->()"
        )
        return per_image(residual, power)

    @property
    def mean(self) -> Float[Array, "..."]:
        return self.loc


def noise_power_on_grid(
    context: ModelContext,
    box_size: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> Float[Array, "*batch box_size half_box_size"]:
    """The context's coloured-noise spectrum (units of `noise_std²`) on the `rfft2` grid: `(D, D // 2 + 1)`
    with one noise group, `(B, D, D // 2 + 1)` for the particles `indices` with several."""
    from atomicspi.microscope import radial_shell_indices

    spectra = context.noise_power_spectrum
    if spectra is None:
        raise ValueError("the context has no noise_power_spectrum (white noise)")
    shells = jnp.minimum(radial_shell_indices(box_size), spectra.shape[-1] - 1)
    if context.particle_noise_groups is None:
        return spectra[0][shells]
    if indices is None:
        raise ValueError("several noise groups (particle_noise_groups) need the minibatch's particle indices")
    return spectra[context.particle_noise_groups[jnp.asarray(indices)]][:, shells]


def inverse_noise_power(
    context: ModelContext,
    box_size: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> Float[Array, "*batch box_size half_box_size"]:
    """The weights `W` on the `rfft2` grid that make `observe_images`'s log-likelihood, for images
    of `noise_std = 1`, equal to `−½ Σ W |ŷ − ĉ m̂|²` + const: the half-plane multiplicity of each
    entry, times the frequency mask of `likelihood_resolution_in_angstroms`, over `D²` times the noise
    power (1 for white noise; the particles' group spectrum with coloured noise, then `(B, D, D // 2 + 1)`).
    For white noise over all frequencies `Σ W â b̂*` is the pixel sum of `a · b`."""
    from atomicspi.microscope import half_plane_weights, resolution_mask

    weights = jnp.broadcast_to(half_plane_weights(box_size)[None, :], (box_size, box_size // 2 + 1)) / (box_size * box_size)
    resolution = context.options.likelihood_resolution_in_angstroms
    if resolution is not None:
        weights = weights * resolution_mask(box_size, image_model_of(context).pixel_size_in_angstroms, resolution)
    if context.noise_power_spectrum is not None:
        weights = weights / noise_power_on_grid(context, box_size, indices)
    return weights


def observe_images(
    context: ModelContext,
    predicted: Float[Array, "batch y x"],
    noise_std: float | Float[Array, ""],
    images: Float[Array | np.ndarray, "batch y x"] | None,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
) -> None:
    """Inside the particle plate: per-image contrast and the Gaussian noise likelihood.

    - `contrast` ~ LogNormal(log c₀, 0.5): per-image scale from V·Å to image units.
    - `images` ~ N(contrast · predicted, noise_std²) per pixel (observed) for white noise; with
      `context.noise_power_spectrum`, stationary Gaussian noise of power spectrum
      `noise_std² · spectrum` of the particle's noise group (`StationaryGaussianImages`, evaluated
      in Fourier space), the group looked up by the minibatch's particle `indices` when there are
      several. With `options.likelihood_resolution_in_angstroms`, only the Fourier components up to
      that resolution are observed (white noise then as a flat spectrum).
    """
    from atomicspi.microscope import resolution_mask

    contrast = numpyro.sample("contrast", dist.LogNormal(jnp.log(context.options.contrast_guess), 0.5))
    mean = contrast[..., None, None] * predicted
    resolution = context.options.likelihood_resolution_in_angstroms
    if context.noise_power_spectrum is None and resolution is None:
        numpyro.sample("images", dist.Normal(mean, noise_std).to_event(2), obs=images)
        return
    box_size = predicted.shape[-1]
    if context.noise_power_spectrum is None:
        spectrum = jnp.ones((box_size, box_size // 2 + 1), dtype=mean.dtype)
    else:
        spectrum = noise_power_on_grid(context, box_size, indices)
    mask = None
    if resolution is not None:
        mask = resolution_mask(box_size, image_model_of(context).pixel_size_in_angstroms, resolution)
    numpyro.sample("images", StationaryGaussianImages(mean, jnp.square(noise_std) * spectrum, mask), obs=images)
