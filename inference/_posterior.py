"""Per-particle posterior draws from a fitted amortized guide."""

from __future__ import annotations

import jax
import numpy as np
from numpyro.infer import Predictive

__all__ = ["draw_posterior"]


def draw_posterior(guide, params, batches, n_samples: int, key, model_arguments: dict, local_sites):
    """Draw `n_samples` values of every local site for each particle, streaming over minibatches.

    **Arguments:**

    - `guide`: the fitted guide (called as `guide(**batch, **model_arguments)`).
    - `params`: its fitted parameters (`svi.get_params(state)`).
    - `batches`: iterable of minibatch dicts in particle order (each with `indices`).
    - `n_samples`: draws per particle.
    - `key`: PRNG key.
    - `local_sites`: names of the per-particle sites to keep.

    **Returns:** `(local, global_)`: `local[name]` has shape `(n_particles, n_samples, ...)` in
    input order; `global_[name]` has shape `(n_samples, ...)` (drawn with the first batch).
    """
    predictive = Predictive(guide, params=params, num_samples=n_samples)
    sample = jax.jit(lambda key, batch: predictive(key, **batch, **model_arguments))
    local: dict[str, list] = {name: [] for name in local_sites}
    global_: dict[str, np.ndarray] = {}
    for step, batch in enumerate(batches):
        draws = sample(jax.random.fold_in(key, step), batch)
        for name, values in draws.items():
            if name in local:
                local[name].append(np.moveaxis(np.asarray(values), 0, 1))  # (batch, sample, ...)
            elif name not in global_:
                global_[name] = np.asarray(values)
    return {name: np.concatenate(parts) for name, parts in local.items() if parts}, global_
