"""Per-particle posterior draws from a fitted amortized guide."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Bool, Float, PRNGKeyArray
from numpyro.infer import Predictive

__all__ = ["draw_posterior", "importance_resampled_draws", "latent_information", "relocated_modes"]
def draw_posterior(
    guide: Callable,
    params: Mapping[str, Any],
    batches: Iterable[Mapping[str, ArrayLike]],
    n_samples: int,
    *,
    key: PRNGKeyArray,
    model_arguments: Mapping[str, Any],
    local_sites: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Draw `n_samples` values of every local site for each particle, streaming over minibatches.

    **Arguments:**

    - `guide`: the fitted guide (called as `guide(**batch, **model_arguments)`).
    - `params`: its fitted parameters (`svi.get_params(state)`).
    - `batches`: iterable of minibatch dicts in particle order (each with `indices`).
    - `n_samples`: draws per particle.
    - `key`: PRNG key (keyword only, as are the arguments after it).
    - `model_arguments`: the keyword arguments the guide takes besides a batch.
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
        if jnp.ndim(log_probability) == 0:
            total = total + log_probability
        else:
            total = total + log_probability.reshape(batch_size, -1).sum(axis=-1)
    return total
def importance_resampled_draws(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    batches: Iterable[Mapping[str, ArrayLike]],
    n_samples: int,
    *,
    key: PRNGKeyArray,
    model_arguments: Mapping[str, Any],
    local_sites: Sequence[str],
    site: str = "z",
    n_proposals: int = 64,
    proposal_scale: float = 1.5,
    site_unit: Float[ArrayLike, "..."] = 1.0,
) -> tuple[dict[str, np.ndarray], Float[np.ndarray, " n_particles"]]:
    """Per-particle draws of the local sites from the model's posterior given the fitted global
    parameters, by importance resampling from a Laplace proposal.

    A mean-field guide fitted by maximising the ELBO understates posterior spread, most of all where
    latent dimensions are correlated. Here, for each particle, the guide's mean of `site` is moved
    by one damped Newton step on the model's log joint, and the proposal is the Gaussian there
    with the log joint's own curvature (a full covariance, the Laplace approximation) widened
    `proposal_scale` times. Every other site (global or local, e.g. the contrast) is held at its
    guide mean, so the draws are of p(site | image, other sites): the other sites are nuisance
    parameters plugged in, and drawing them too made the weights degenerate (median effective sample
    size 3 of 64 on tests/test_path_recovery.py's data). Each of `n_proposals` proposals gets the
    weight p(image, site | rest) / r(proposal), the per-particle log joint from a trace of the model,
    and `n_samples` draws are resampled with replacement by weight (self-normalised importance
    sampling: exact for that conditional as the number of proposals grows). The other local sites'
    draws are their guide means.

    **Arguments:**

    - `model`, `guide`: called as `f(**batch, **model_arguments)`; `site` must be a vector-valued
      normal in the guide (a diagonal `Normal(...).to_event(1)` or a multivariate normal), inside
      the `particle` plate.
    - `params`: the fitted parameters (guide and model).
    - `batches`: minibatch dicts in particle order.
    - `n_samples`: draws kept per particle.
    - `key`: PRNG key (keyword only, as are the arguments after it).
    - `local_sites`: the per-particle sites to return.
    - `site`: the site with the Laplace proposal.
    - `n_proposals`, `proposal_scale`: proposals per particle and the widening of the Laplace covariance.
    - `site_unit`: the unit (a scalar or one per dimension) in which the Newton step is capped at
      length 1: the prior's standard deviation of `site` (1 for a standard-normal latent).

    **Returns:** `(local, effective_sample_sizes)`: `local[name]` `(n_particles, n_samples, ...)`,
    and the Kish effective sample size of each particle's weights `(n_particles,)`.
    """
    from numpyro import handlers

    def guide_trace(key, batch):
        seeded = handlers.seed(handlers.substitute(guide, data=params), key)
        return handlers.trace(seeded).get_trace(**batch, **model_arguments)

    def log_joint(key, batch, data, batch_size):
        seeded = handlers.seed(handlers.substitute(handlers.substitute(model, data=params), data=data), key)
        return _site_log_probabilities(handlers.trace(seeded).get_trace(**batch, **model_arguments), batch_size)

    def laplace(key, batch):
        """Per-particle centre and Cholesky factor of the widened Laplace proposal for `site`."""
        trace = guide_trace(key, batch)
        loc = trace[site]["fn"].mean
        scale = jnp.sqrt(trace[site]["fn"].variance)
        batch_size, dimension = loc.shape
        # Every other site, global or local, at its guide mean: the proposals are for p(site | image, rest).
        others = {name: s["fn"].mean for name, s in trace.items() if s["type"] == "sample" and name != site}

        def total(z):  # particles are independent: the Hessian of the sum is block-diagonal
            return jnp.sum(log_joint(key, batch, {**others, site: z}, batch_size))

        gradient_function = jax.grad(total)
        gradient = gradient_function(loc)
        columns = [
            jax.jvp(gradient_function, (loc,), (jnp.zeros_like(loc).at[:, k].set(1.0),))[1] for k in range(dimension)
        ]
        precision = -jnp.stack(columns, axis=-1)  # (batch, d, d)
        precision = 0.5 * (precision + jnp.swapaxes(precision, -1, -2))
        # Where the log joint is not concave, fall back towards the guide's own precision.
        eigenvalues, eigenvectors = jnp.linalg.eigh(precision)
        floor = 1.0 / jnp.max(scale * scale, axis=-1, keepdims=True)
        eigenvalues = jnp.maximum(eigenvalues, 0.25 * floor)
        covariance = jnp.einsum("bij,bj,bkj->bik", eigenvectors, 1.0 / eigenvalues, eigenvectors)
        step = jnp.einsum("bij,bj->bi", covariance, gradient)
        length = jnp.linalg.norm(step / jnp.asarray(site_unit, step.dtype), axis=-1, keepdims=True)
        centre = loc + step * jnp.minimum(1.0, 1.0 / jnp.maximum(length, 1e-12))  # at most one prior sd
        return centre, jnp.linalg.cholesky(proposal_scale**2 * covariance), others

    def one_proposal(key, batch, centre, factor, others):
        proposal_key, model_key = jax.random.split(key)
        batch_size = centre.shape[0]
        noise = jax.random.normal(proposal_key, centre.shape, centre.dtype)
        value = centre + jnp.einsum("bij,bj->bi", factor, noise)
        log_determinant = jnp.sum(jnp.log(jnp.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
        log_proposal = -0.5 * jnp.sum(noise * noise, axis=-1) - log_determinant - 0.5 * centre.shape[-1] * jnp.log(2 * jnp.pi)
        data = {**others, site: value}
        log_weight = log_joint(model_key, batch, data, batch_size) - log_proposal
        return {name: jnp.broadcast_to(data[name], (batch_size, *jnp.shape(data[name])[1:])) for name in local_sites if name in data}, log_weight

    @jax.jit
    def resample(key, batch):
        keys = jax.random.split(key, n_proposals + 2)
        centre, factor, others = laplace(keys[0], batch)
        values, log_weights = jax.vmap(lambda k: one_proposal(k, batch, centre, factor, others))(keys[2:])  # (K, batch, ...)
        log_weights = jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf)
        log_weights = log_weights - jax.scipy.special.logsumexp(log_weights, axis=0, keepdims=True)
        weights = jnp.exp(log_weights)
        effective = 1.0 / jnp.sum(weights * weights, axis=0)
        choice = jax.random.categorical(keys[1], log_weights.T, axis=-1, shape=(n_samples, log_weights.shape[1]))
        chosen = {
            name: jnp.take_along_axis(
                jnp.moveaxis(v, 0, 1), choice.T.reshape(choice.shape[1], n_samples, *([1] * (v.ndim - 2))), axis=1
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


def latent_information(draws: Float[ArrayLike, "n_particles n_draws latent_dim"]) -> dict[str, Any]:
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


def _cluster_centres(points, n_centres: int, key: PRNGKeyArray, n_iterations: int = 20) -> np.ndarray:
    """k-means (Lloyd, k-means++ start) centres of `points` `(n, d)`."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1])
    points = np.asarray(points, dtype=float)
    chosen = [points[rng.integers(len(points))]]
    for _ in range(1, min(n_centres, len(points))):
        distances = np.min(((points[:, None] - np.asarray(chosen)[None]) ** 2).sum(-1), axis=1)
        chosen.append(points[rng.choice(len(points), p=distances / distances.sum())] if distances.sum() > 0 else points[0])
    centres = np.asarray(chosen)
    for _ in range(n_iterations):
        labels = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.stack([points[labels == k].mean(axis=0) if np.any(labels == k) else centres[k] for k in range(len(centres))])
    return centres
def relocated_modes(
    model: Callable,
    guide: Callable,
    params: Mapping[str, Any],
    batches: Callable[[], Iterable[tuple[int, Mapping[str, ArrayLike]]]],
    *,
    key: PRNGKeyArray,
    model_arguments: Mapping[str, Any],
    site: str = "z",
    n_candidates: int = 8,
    n_refinement_steps: int = 40,
    refinement_step_size: float = 0.05,
    mode_separation: float = 3.0,
) -> tuple[Float[np.ndarray, "n_particles d"], Bool[np.ndarray, " n_particles"], Float[np.ndarray, " n_particles"]]:
    """Per particle, move the guide's mean of `site` to a better mode of the model's posterior where
    it sits in the wrong one.

    A unimodal q(z | image) fitted by local gradient steps can stay in the basin it started in: on the
    issue-19 hinge benchmark 6.6 % of the open particles kept a closed-state latent (path-position
    errors up to −0.68), the largest loss of order along the path. After training, the guide means
    of all particles are clustered (k-means, `n_candidates` centres: the population's modes), the
    model's log joint p(image, z | rest) of each particle (every other site at its guide mean, as in
    `importance_resampled_draws`) is evaluated at its own mean and at every centre, and where a
    centre scores higher the particle's mean moves there and is refined by `n_refinement_steps` Adam
    steps on its log joint; the move is kept when the refined point is higher than the guide's mean
    and lies more than `mode_separation` of the guide's standard deviations away from it (another
    mode, not the same one refined). The guide's scale is kept.

    **Arguments:**

    - `model`, `guide`, `params`, `model_arguments`: as for `importance_resampled_draws`.
    - `batches`: a function returning a fresh iterable of minibatch dicts in particle order
      (it is read twice), each with the number of real (unpadded) particles: `(count, batch)`.
    - `key`: PRNG key (keyword only, as are the arguments after it).
    - `site`: a diagonal Normal site of the guide in the `particle` plate.

    **Returns:** `(shifts (n, d), relocated (n,) bool, gains (n,))`: how far each particle's mean
    moved (0 where it stayed; add it to the guide's draws), which particles moved, and the
    log-joint gain of the move in nats (0 where none).
    """
    import optax
    from numpyro import handlers

    def guide_site(batch):
        seeded = handlers.seed(handlers.substitute(guide, data=params), jax.random.key(0))
        trace = handlers.trace(seeded).get_trace(**batch, **model_arguments)
        others = {name: s["fn"].mean for name, s in trace.items() if s["type"] == "sample" and name != site}
        return trace[site]["fn"].base_dist.loc, trace[site]["fn"].base_dist.scale, others

    def log_joint(batch, others, value):
        seeded = handlers.seed(handlers.substitute(handlers.substitute(model, data=params), data={**others, site: value}), key)
        return _site_log_probabilities(handlers.trace(seeded).get_trace(**batch, **model_arguments), value.shape[0])

    @jax.jit
    def guide_statistics(batch):
        loc, scale, _ = guide_site(batch)
        return loc, jnp.broadcast_to(scale, loc.shape)

    @jax.jit
    def candidate_scores(batch, candidates):
        loc, _, others = guide_site(batch)
        own = log_joint(batch, others, loc)
        scores = jax.vmap(lambda c: log_joint(batch, others, jnp.broadcast_to(c, loc.shape)))(candidates)  # (K, B)
        return own, scores

    @jax.jit
    def refine(batch, start):
        _, _, others = guide_site(batch)
        optimizer = optax.adam(refinement_step_size)

        def negative(value):
            return -jnp.sum(log_joint(batch, others, value))

        def step(carry, _):
            value, state = carry
            updates, state = optimizer.update(jax.grad(negative)(value), state)
            return (value + updates, state), None

        (value, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=n_refinement_steps)
        return value, log_joint(batch, others, value)

    location_parts, scale_parts = [], []
    for count, batch in batches():
        loc, scale = guide_statistics(batch)
        location_parts.append(np.asarray(loc)[:count])
        scale_parts.append(np.asarray(scale)[:count])
    locations, scales = np.concatenate(location_parts), np.concatenate(scale_parts)
    original = locations.copy()
    candidates = jnp.asarray(_cluster_centres(locations, n_candidates, key), dtype=locations.dtype)
    relocated = np.zeros(len(locations), dtype=bool)
    gains = np.zeros(len(locations))
    # Score every particle at its own mean and at every centre; keep the rows that would move.
    rows, starts, own_scores = [], [], []
    for count, batch in batches():
        own, scores = candidate_scores(batch, candidates)
        own, scores = np.asarray(own)[:count], np.asarray(scores)[:, :count]
        best = np.argmax(scores, axis=0)
        for row in np.flatnonzero(scores[best, np.arange(count)] > own):
            rows.append({name: np.asarray(values)[row] for name, values in batch.items()})
            starts.append(np.asarray(candidates)[best[row]])
            own_scores.append(own[row])
    # Refine only those, gathered into full minibatches (the last padded by repetition).
    batch_size = len(np.asarray(next(iter(batches()))[1]["indices"]))
    for begin in range(0, len(rows), batch_size):
        chunk = list(range(begin, min(begin + batch_size, len(rows))))
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        batch = {name: jnp.asarray(np.stack([rows[i][name] for i in padded])) for name in rows[0]}
        refined, refined_score = refine(batch, jnp.asarray(np.stack([starts[i] for i in padded]), dtype=locations.dtype))
        refined, refined_score = np.asarray(refined), np.asarray(refined_score)
        for position, i in enumerate(chunk):
            particle = int(rows[i]["indices"])
            distance = np.max(np.abs(refined[position] - locations[particle]) / scales[particle])
            # A different mode: higher, and beyond `mode_separation` posterior sds (a refinement
            # within the same basin moves about one).
            if refined_score[position] > own_scores[i] and distance > mode_separation:
                locations[particle] = refined[position]
                relocated[particle] = True
                gains[particle] = refined_score[position] - own_scores[i]
    return locations - original, relocated, gains
