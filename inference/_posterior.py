"""Per-particle posterior draws from a fitted amortized guide."""

from __future__ import annotations

import jax
import numpy as np
from numpyro.infer import Predictive

__all__ = ["draw_posterior", "importance_resampled_draws", "latent_information"]


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


def _site_log_probabilities(trace, batch_size: int):
    """Per-particle sum of the log-densities of a trace's sample sites (global sites add the same
    constant to every particle)."""
    total = 0.0
    for site in trace.values():
        if site["type"] != "sample":
            continue
        log_probability = site["fn"].log_prob(site["value"])
        if jax.numpy.ndim(log_probability) == 0:
            total = total + log_probability
        else:
            total = total + log_probability.reshape(batch_size, -1).sum(axis=-1)
    return total


def importance_resampled_draws(
    model,
    guide,
    params,
    batches,
    n_samples: int,
    key,
    model_arguments: dict,
    local_sites,
    site: str = "z",
    n_proposals: int = 64,
    proposal_scale: float = 2.0,
):
    """Per-particle draws of the local sites from the model's posterior given the fitted global
    parameters, by importance resampling from a widened guide.

    A mean-field guide fitted by maximising the ELBO is known to understate posterior spread. Here,
    for each particle, `n_proposals` proposals are drawn: `site` from the guide's Gaussian widened
    `proposal_scale` times about its mean, the other local sites from the guide as it is; each gets
    the weight p(image, locals | globals, decoder) / r(proposal), with the globals at the guide's
    draw and the per-particle log joint from a trace of the model; `n_samples` draws are then
    resampled with replacement by weight (self-normalised importance sampling; exact as the number
    of proposals grows, whatever the guide's spread).

    **Arguments:**

    - `model`, `guide`: called as `f(**batch, **model_arguments)`; `site` must be a diagonal
      Normal (`.to_event(1)`) in the guide.
    - `params`: the fitted parameters (guide and model).
    - `batches`: minibatch dicts in particle order.
    - `n_samples`: draws kept per particle.
    - `key`: PRNG key.
    - `local_sites`: the per-particle sites to return.
    - `site`: the site whose proposal is widened.
    - `n_proposals`, `proposal_scale`: proposals per particle and their widening.

    **Returns:** `(local, effective_sample_sizes)`: `local[name]` `(n_particles, n_samples, ...)`,
    and the Kish effective sample size of each particle's weights `(n_particles,)`.
    """
    from numpyro import handlers

    def one_proposal(key, batch):
        guide_key, proposal_key, model_key = jax.random.split(key, 3)
        seeded = handlers.seed(handlers.substitute(guide, data=params), guide_key)
        guide_trace = handlers.trace(seeded).get_trace(**batch, **model_arguments)
        batch_size = guide_trace[site]["value"].shape[0]
        base = guide_trace[site]["fn"].base_dist
        loc, scale = base.loc, base.scale * proposal_scale
        value = loc + scale * jax.random.normal(proposal_key, loc.shape, loc.dtype)
        log_proposal = jax.scipy.stats.norm.logpdf(value, loc, scale).sum(axis=-1)
        others = {name: s for name, s in guide_trace.items() if s["type"] == "sample" and name != site}
        log_others = 0.0
        for s in others.values():
            log_probability = s["fn"].log_prob(s["value"])
            if jax.numpy.ndim(log_probability) > 0:  # local sites: their guide density is part of the proposal
                log_others = log_others + log_probability.reshape(batch_size, -1).sum(axis=-1)
        data = {name: s["value"] for name, s in others.items()}
        data[site] = value
        model_seeded = handlers.seed(handlers.substitute(handlers.substitute(model, data=params), data=data), model_key)
        model_trace = handlers.trace(model_seeded).get_trace(**batch, **model_arguments)
        log_weight = _site_log_probabilities(model_trace, batch_size) - log_proposal - log_others
        values = {name: data[name] for name in local_sites if name in data}
        return values, log_weight

    @jax.jit
    def resample(key, batch):
        proposal_keys = jax.random.split(key, n_proposals + 1)
        values, log_weights = jax.vmap(lambda k: one_proposal(k, batch))(proposal_keys[1:])  # (K, batch, ...)
        log_weights = log_weights - jax.scipy.special.logsumexp(log_weights, axis=0, keepdims=True)
        weights = jax.numpy.exp(log_weights)
        effective = 1.0 / jax.numpy.sum(weights * weights, axis=0)
        choice = jax.random.categorical(proposal_keys[0], log_weights.T, axis=-1, shape=(n_samples, log_weights.shape[1]))
        chosen = {
            name: jax.numpy.take_along_axis(
                jax.numpy.moveaxis(v, 0, 1), choice.T.reshape(choice.shape[1], n_samples, *([1] * (v.ndim - 2))), axis=1
            )
            for name, v in values.items()
        }
        return chosen, effective

    local: dict[str, list] = {}
    sizes = []
    for step, batch in enumerate(batches):
        chosen, effective = resample(jax.random.fold_in(key, step), batch)
        for name, v in chosen.items():
            local.setdefault(name, []).append(np.asarray(v))
        sizes.append(np.asarray(effective))
    return {name: np.concatenate(parts) for name, parts in local.items()}, np.concatenate(sizes)


def latent_information(draws) -> dict:
    """How much each latent dimension says about the particles: a guard against posterior collapse.

    For draws `(n_particles, n_draws, latent_dim)` of per-particle posteriors, per dimension:

    - `variance_of_posterior_means`: Var over particles of E[z | image]; a dimension with less than
      0.01 (the prior's variance is 1) is inactive (the criterion of Burda et al. 2016);
    - `information_in_nats`: ½ log(Var z / E[Var(z | image)]), the mutual information between the
      image and z in a Gaussian approximation: 0 when every particle's posterior is the population's.

    **Returns:** a dict with those two lists and `active_dimensions` (a count).
    """
    draws = np.asarray(draws, dtype=float)
    means = draws.mean(axis=1)
    within = draws.var(axis=1, ddof=1).mean(axis=0)
    between = means.var(axis=0)
    information = 0.5 * np.log((between + within) / np.maximum(within, 1e-300))
    return {
        "variance_of_posterior_means": between.tolist(),
        "information_in_nats": information.tolist(),
        "active_dimensions": int(np.sum(between > 0.01)),
    }
