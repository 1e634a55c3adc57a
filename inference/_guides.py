"""Amortized guides: an image encoder gives q(local variables of particle i | image i); the global
variables get their own (non-amortized) variational distributions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module
from numpyro.distributions import constraints

from ._encoder import ImageEncoder

__all__ = ["AmortizedGuide", "encoder_context"]

_SCALE_OFFSET = 3.0  # softplus(x - 3) ≈ 0.05 at initialisation: start with narrow posteriors


N_CONTEXT = 12


def encoder_context(rotations, shifts_in_angstroms, ctf) -> jax.Array:
    """Per-image context for the encoder, shape `(batch, 12)`: the mean defocus in µm, the given
    rotation matrix (9 entries) and shift (in units of 10 Å). How a conformational change shows in
    an image depends on the viewing direction, so the encoder is told the pose."""
    defocus = 0.5 * (jnp.asarray(ctf.defocus_u_in_angstroms) + jnp.asarray(ctf.defocus_v_in_angstroms))
    batch_size = rotations.shape[0]
    return jnp.concatenate(
        [
            jnp.broadcast_to(defocus / 1e4, (batch_size,)).reshape(-1, 1),
            rotations.reshape(batch_size, 9),
            shifts_in_angstroms.reshape(batch_size, 2) / 10.0,
        ],
        axis=1,
    )


def _scale(raw):
    return jax.nn.softplus(raw - _SCALE_OFFSET) + 1e-4


class AmortizedGuide:
    """The guide for one of `atomicspi.models.MODELS`, with the model's call signature.

    Local sites (per particle, from the encoder):

    - `nma`: `amplitudes` ~ low-rank multivariate normal (rank `rank`), in units of the prior
      standard deviation at the spring-constant guess, so the encoder works with O(1) numbers;
    - `domains`: `domain_motion` (units 0.1 rad and 2 Å) and `amplitudes`, each low-rank normal;
    - `deformation`: `z` ~ diagonal normal;
    - every model: `contrast` ~ log-normal, and with pose refinement `rotation_correction` and
      `shift_correction` ~ diagonal normals.

    Global sites: `spring_constant` and `noise_std` ~ log-normal; `homogeneous`'s `displacement` ~
    diagonal normal.

    **Arguments:**

    - `model_name`: "nma", "deformation", "domains" or "homogeneous".
    - `context`: the model's `ModelContext`.
    - `box_size`: image side D.
    - `key`: PRNG key for the encoder's initial weights.
    - `rank`: rank of the covariance factor of the vector sites; a site no longer than `rank` gets a
      full covariance through its Cholesky factor (a diagonal + low-rank form of full rank is badly
      conditioned in float32 once the diagonal shrinks).
    - `per_particle_offsets`: semi-amortized inference: add a free parameter vector per particle
      (`local_offsets`, indexed by the minibatch's `indices`) to the encoder's output, so that each
      particle's posterior is refined beyond what the encoder generalises (the encoder alone still
      gives q(z | x) for images it has not seen).
    """

    def __init__(self, model_name: str, context, box_size: int, key, rank: int = 2, per_particle_offsets: bool = True):
        self.model_name = model_name
        options = context.options
        self.local_sizes: dict[str, int] = {}
        # Vector sites with a low-rank multivariate normal, in units of a typical scale per entry.
        self.vector_scales: dict[str, jax.Array] = {}
        mode_scale = jnp.sqrt(options.temperature_factor / (options.spring_constant_guess * context.mode_eigenvalues))
        if model_name == "nma":
            self.vector_scales["amplitudes"] = mode_scale
        elif model_name == "domains":
            moving = context.n_domains - 1
            self.vector_scales["domain_motion"] = jnp.concatenate([jnp.full(3 * moving, 0.1), jnp.full(3 * moving, 2.0)])
            self.vector_scales["amplitudes"] = mode_scale
        elif model_name == "deformation":
            # Diagonal: with a full covariance (Cholesky or low-rank form) the full-size benchmark's
            # training diverged (non-finite losses after 400–800 steps); the diagonal one did not.
            self.local_sizes["z"] = 2 * options.latent_dim
        elif model_name != "homogeneous":
            raise ValueError(f"unknown model {model_name!r}")
        self.rank = rank
        for name, scale in self.vector_scales.items():
            size = scale.shape[0]
            # Full covariance (a Cholesky factor) when the rank would reach the size, else diagonal + low rank.
            self.local_sizes[name] = 2 * size + (size * (size - 1) // 2 if size <= rank else size * rank)
        self.local_sizes["contrast"] = 2
        if options.refine_poses:
            self.local_sizes["rotation_correction"] = 6
            self.local_sizes["shift_correction"] = 4
        self.encoder = ImageEncoder(box_size, sum(self.local_sizes.values()), N_CONTEXT, key)
        self.per_particle_offsets = per_particle_offsets
        self.options = options

    def _globals(self, context):
        options = self.options
        for name, guess in (("spring_constant", options.spring_constant_guess), ("noise_std", options.noise_std_guess)):
            loc = numpyro.param(f"{name}_loc", jnp.log(guess))
            scale = numpyro.param(f"{name}_scale", 0.1, constraint=constraints.positive)
            numpyro.sample(name, dist.LogNormal(loc, scale))
        if self.model_name == "homogeneous":
            shape = (context.n_beads, 3)
            loc = numpyro.param("displacement_loc", jnp.zeros(shape))
            scale = numpyro.param("displacement_scale", jnp.full(shape, 0.05), constraint=constraints.positive)
            numpyro.sample("displacement", dist.Normal(loc, scale).to_event(2))

    def __call__(
        self, *, images, rotations, shifts_in_angstroms, ctf, context, n_particles: int, decoder=None, indices=None
    ):
        self._globals(context)
        net = eqx_module("encoder", self.encoder)
        batch_size = images.shape[0]
        out = jax.vmap(net)(images, encoder_context(rotations, shifts_in_angstroms, ctf))
        if self.per_particle_offsets:
            if indices is None:
                raise ValueError("per_particle_offsets needs the minibatch's particle indices")
            offsets = numpyro.param("local_offsets", jnp.zeros((n_particles, out.shape[-1])))
            out = out + offsets[indices]
        pieces = {}
        start = 0
        for name, size in self.local_sizes.items():
            pieces[name] = out[:, start : start + size]
            start += size
        with numpyro.plate("particle", n_particles, subsample_size=batch_size):
            for name, s in self.vector_scales.items():
                k = s.shape[0]
                raw = pieces[name]
                loc = raw[:, :k] * s
                if k <= self.rank:
                    rows, columns = jnp.tril_indices(k, -1)
                    lower = jnp.zeros((batch_size, k, k)).at[:, rows, columns].set(0.1 * raw[:, 2 * k :])
                    scale_tril = s[:, None] * (lower + jax.vmap(jnp.diag)(_scale(raw[:, k : 2 * k])))
                    numpyro.sample(name, dist.MultivariateNormal(loc, scale_tril=scale_tril))
                else:
                    diagonal = (_scale(raw[:, k : 2 * k]) * s) ** 2
                    factor = raw[:, 2 * k :].reshape(batch_size, k, self.rank) * 0.1 * s[:, None]
                    numpyro.sample(name, dist.LowRankMultivariateNormal(loc, factor, diagonal))
            if "z" in pieces:
                d = self.options.latent_dim
                raw = pieces["z"]
                numpyro.sample("z", dist.Normal(raw[:, :d], _scale(raw[:, d:] + 2.0)).to_event(1))
            raw = pieces["contrast"]
            log_contrast = jnp.log(self.options.contrast_guess) + 0.5 * raw[:, 0]
            numpyro.sample("contrast", dist.LogNormal(log_contrast, 0.5 * _scale(raw[:, 1] + 1.0)))
            if "rotation_correction" in pieces:
                raw = pieces["rotation_correction"]
                width = jnp.deg2rad(self.options.rotation_prior_in_degrees)
                numpyro.sample("rotation_correction", dist.Normal(width * raw[:, :3], width * _scale(raw[:, 3:])).to_event(1))
                raw = pieces["shift_correction"]
                width = self.options.shift_prior_in_angstroms
                numpyro.sample("shift_correction", dist.Normal(width * raw[:, :2], width * _scale(raw[:, 2:])).to_event(1))
