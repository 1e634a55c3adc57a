"""Importance resampling of a family's per-particle draws against the model's own posterior."""

from __future__ import annotations

import numpy as np

from ._family import FittedModel

__all__ = ["importance_resampled"]


def importance_resampled(
    fitted: FittedModel, local: dict, *, key, site: str, n_proposals: int, site_unit=1.0
) -> tuple[dict, dict]:
    """`local` with each particle's draws replaced by importance-resampled draws of
    p(`site` | image, the rest at their guide means) (`atomicspi.inference.importance_resampled_draws`)
    where the weights are reliable (a Kish effective sample size of at least half the draws), and
    the diagnostics for `run.json`."""
    from atomicspi.inference import importance_resampled_draws

    samples_per_particle = local[site].shape[1]
    resampled, effective_sample_sizes = importance_resampled_draws(
        fitted.model, fitted.guide, fitted.parameters, (batch for _, batch in fitted.ordered()), samples_per_particle,
        key=key, model_arguments=fitted.model_arguments, local_sites=list(local), site=site,
        n_proposals=n_proposals, site_unit=site_unit,
    )
    effective_sample_sizes = effective_sample_sizes[fitted.keep]
    chosen = effective_sample_sizes >= 0.5 * samples_per_particle
    local = dict(local)
    for name, values in resampled.items():
        values = values[fitted.keep]
        local[name] = np.where(chosen.reshape(-1, *([1] * (values.ndim - 1))), values, local[name])
    diagnostics = {
        "site": site,
        "proposals_per_particle": n_proposals,
        "effective_sample_size_median": float(np.median(effective_sample_sizes)),
        "effective_sample_size_10th_percentile": float(np.percentile(effective_sample_sizes, 10)),
        "share_of_particles_resampled": float(np.mean(chosen)),
    }
    return local, diagnostics

