"""`model: domains`: rigid domain motions composed with normal modes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._family import FittedModel, ModelFamily
from ._nma import mode_scales

__all__ = ["DomainMotions"]

_ROTATION_SCALE_IN_RADIANS = 0.1  # the guide's units for the domains' rotation vectors
_TRANSLATION_SCALE_IN_ANGSTROMS = 2.0  # and for their translations


class DomainMotions(ModelFamily):
    """`domains`: each domain's rigid motion and the modes for the rest (`atomicspi.models.domains`)."""

    name = "domains"
    uses_domains = True

    @property
    def model(self):
        from atomicspi.models import domains

        return domains

    def local_sites(self, context) -> dict:
        from atomicspi.inference import LocalSite

        moving = context.n_domains - 1
        scale = jnp.concatenate([jnp.full(3 * moving, _ROTATION_SCALE_IN_RADIANS), jnp.full(3 * moving, _TRANSLATION_SCALE_IN_ANGSTROMS)])
        return {"domain_motion": LocalSite(scale), "amplitudes": LocalSite(mode_scales(context))}

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        from atomicspi.models import domain_positions

        positions = jax.jit(functools.partial(domain_positions, fitted.model_arguments["context"]))

        def of(particles):
            samples = np.asarray(positions(jnp.asarray(local["domain_motion"][particles]), jnp.asarray(local["amplitudes"][particles])))
            return samples.mean(axis=1), samples

        return of
