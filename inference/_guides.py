"""Amortized guides: an image encoder gives q(local variables of particle i | image i); the global
variables get their own (non-amortized) variational distributions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int, PRNGKeyArray
from numpyro.contrib.module import eqx_module
from numpyro.distributions import constraints

from ._encoder import ImageEncoder

__all__ = ["AmortizedGuide", "GlobalSite", "LocalSite", "encoder_context"]

_SCALE_OFFSET = 3.0  # softplus(x - 3) ≈ 0.05 at initialisation: start with narrow posteriors
_DIAGONAL_SCALE_SHIFT = 2.0  # diagonal sites start wider: softplus(x - 1) ≈ 0.31


N_CONTEXT = 12


def encoder_context(
    rotations: Float[Array | np.ndarray, "batch 3 3"], shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"], ctf
) -> Float[Array, "batch 12"]:
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


class LocalSite(NamedTuple):
    """A per-particle real vector site of a model, as its guide sees it.

    **Arguments:**

    - `scale`: `(size,)` typical size of each entry (the prior standard deviation, say): the encoder
      works in these units, so that it deals with O(1) numbers.
    - `covariance`: `"low_rank"` (a diagonal + low-rank normal, or a full one when the size is at
      most the guide's rank) or `"diagonal"` (a diagonal normal that starts wider, its standard
      deviation about 0.31 of `scale`).
    """

    scale: Float[Array, " size"]
    covariance: str = "low_rank"


_ENVELOPE_UNIT = 100.0  # Å² per unit of the envelope B-factor's guide parameters (Adam moves it ~0.1 Å² a step at 1e-3)


class GlobalSite(NamedTuple):
    """A global real array site, with a diagonal normal guide: mean `unit · NAME_loc` and standard
    deviation `unit · NAME_scale`, starting at zero and `initial_scale`.

    `unit` sets the step: Adam moves a parameter by about one learning rate per update, so the
    site's mean moves by about `unit` × the learning rate.
    """

    shape: tuple[int, ...]
    initial_scale: float = 0.05
    unit: float = 1.0


class AmortizedGuide:
    """The guide of a model, with the model's call signature.

    Local sites (per particle, from the encoder): the model's `local_sites`, each a `LocalSite`;
    on top of them, for every model, `contrast` ~ log-normal and, with pose refinement,
    `rotation_correction` and `shift_correction` ~ diagonal normals.

    Global sites: `spring_constant` and `noise_std` ~ log-normal, with a learned envelope
    `envelope_b_factor` ~ normal, and the model's `global_sites`
    (each a `GlobalSite`) ~ diagonal normals.

    **Arguments:**

    - `local_sites`: name → `LocalSite` for the model's per-particle sites (in the encoder's output
      order), e.g. `atomicspi._families.FAMILIES[name].local_sites(context)`.
    - `context`: the model's `ModelContext`.
    - `box_size`: image side D.
    - `key`: PRNG key for the encoder's initial weights.
    - `global_sites`: name → `GlobalSite` for the model's global array sites.
    - `rank`: rank of the covariance factor of the low-rank sites; a site no longer than `rank` gets a
      full covariance through its Cholesky factor (a diagonal + low-rank form of full rank is badly
      conditioned in float32 once the diagonal shrinks).
    - `per_particle_offsets`: semi-amortized inference: add a free parameter vector per particle
      (`local_offsets`, indexed by the minibatch's `indices`) to the encoder's output, so that each
      particle's posterior is refined beyond what the encoder generalises (the encoder alone still
      gives q(z | x) for images it has not seen).
    """

    def __init__(
        self,
        local_sites: Mapping[str, LocalSite],
        context,
        box_size: int,
        *,
        key: PRNGKeyArray,
        global_sites: Mapping[str, GlobalSite] | None = None,
        rank: int = 2,
        per_particle_offsets: bool = True,
    ):
        options = context.options
        self.sites = {name: LocalSite(jnp.asarray(site.scale), site.covariance) for name, site in local_sites.items()}
        for name, site in self.sites.items():
            if site.covariance not in ("low_rank", "diagonal"):
                raise ValueError(f"local site {name!r}: unknown covariance {site.covariance!r}")
        self.global_sites = dict(global_sites or {})
        if options.envelope_prior_in_angstroms_squared is not None:  # every model's, with `learn_envelope`
            self.global_sites["envelope_b_factor"] = GlobalSite((), initial_scale=1.0, unit=_ENVELOPE_UNIT)
        self.rank = rank
        self.local_sizes: dict[str, int] = {}
        for name, site in self.sites.items():
            size = site.scale.shape[0]
            if site.covariance == "diagonal":
                self.local_sizes[name] = 2 * size
            else:  # full covariance (a Cholesky factor) when the rank would reach the size, else diagonal + low rank
                self.local_sizes[name] = 2 * size + (size * (size - 1) // 2 if size <= rank else size * rank)
        self.local_sizes["contrast"] = 2
        if options.refine_poses:
            self.local_sizes["rotation_correction"] = 6
            self.local_sizes["shift_correction"] = 4
        self.encoder = ImageEncoder(box_size, sum(self.local_sizes.values()), N_CONTEXT, key=key)
        self.per_particle_offsets = per_particle_offsets
        self.options = options

    def _globals(self, context):
        options = self.options
        for name, guess in (("spring_constant", options.spring_constant_guess), ("noise_std", options.noise_std_guess)):
            loc = numpyro.param(f"{name}_loc", jnp.log(guess))
            scale = numpyro.param(f"{name}_scale", 0.1, constraint=constraints.positive)
            numpyro.sample(name, dist.LogNormal(loc, scale))
        for name, site in self.global_sites.items():
            loc = numpyro.param(f"{name}_loc", jnp.zeros(site.shape))
            scale = numpyro.param(
                f"{name}_scale", jnp.full(site.shape, site.initial_scale / site.unit), constraint=constraints.positive
            )
            numpyro.sample(name, dist.Normal(site.unit * loc, site.unit * scale).to_event(len(site.shape)))

    def __call__(
        self,
        *,
        images: Float[Array | np.ndarray, "batch y x"],
        rotations: Float[Array | np.ndarray, "batch 3 3"],
        shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
        ctf,
        context,
        n_particles: int,
        decoder=None,
        indices: Int[Array | np.ndarray, " batch"] | None = None,
    ) -> None:
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
            for name, site in self.sites.items():
                s = site.scale
                k = s.shape[0]
                raw = pieces[name]
                loc = raw[:, :k] * s
                if site.covariance == "diagonal":
                    numpyro.sample(name, dist.Normal(loc, s * _scale(raw[:, k:] + _DIAGONAL_SCALE_SHIFT)).to_event(1))
                elif k <= self.rank:
                    rows, columns = jnp.tril_indices(k, -1)
                    lower = jnp.zeros((batch_size, k, k)).at[:, rows, columns].set(0.1 * raw[:, 2 * k :])
                    scale_tril = s[:, None] * (lower + jax.vmap(jnp.diag)(_scale(raw[:, k : 2 * k])))
                    numpyro.sample(name, dist.MultivariateNormal(loc, scale_tril=scale_tril))
                else:
                    diagonal = (_scale(raw[:, k : 2 * k]) * s) ** 2
                    factor = raw[:, 2 * k :].reshape(batch_size, k, self.rank) * 0.1 * s[:, None]
                    numpyro.sample(name, dist.LowRankMultivariateNormal(loc, factor, diagonal))
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
