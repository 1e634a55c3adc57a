"""`model: nma`: per-particle normal-mode amplitudes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._family import FittedModel, ModelFamily

__all__ = ["NormalModes", "mode_scales"]


def mode_scales(context):
    """The prior standard deviation of each mode amplitude at the spring-constant guess, Å:
    √(kT / (γ λₖ)). The guide works in these units."""
    options = context.options
    return jnp.sqrt(options.temperature_factor / (options.spring_constant_guess * context.mode_eigenvalues))


class NormalModes(ModelFamily):
    """`nma`: amplitudes of the lowest elastic-network modes (`atomicspi.models.nma`)."""

    name = "nma"

    @property
    def model(self):
        from atomicspi.models import nma

        return nma

    def local_sites(self, context) -> dict:
        from atomicspi.inference import LocalSite

        return {"amplitudes": LocalSite(mode_scales(context))}

    def refined_draws(self, config, fitted: FittedModel, local: dict, global_: dict, *, key) -> tuple[dict, dict, FittedModel]:
        from ._resampling import importance_resampled

        diagnostics = {}
        if config.importance_proposals:
            local, diagnostics["importance_resampling"] = importance_resampled(
                fitted, local, key=jax.random.fold_in(key, 4), site="amplitudes", n_proposals=config.importance_proposals,
                site_unit=mode_scales(fitted.model_arguments["context"]),
            )
        return local, diagnostics, fitted

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        from atomicspi.models import nma_positions

        positions = jax.jit(functools.partial(nma_positions, fitted.model_arguments["context"]))

        def of(particles):
            samples = np.asarray(positions(jnp.asarray(local["amplitudes"][particles])))
            return samples.mean(axis=1), samples

        return of
