"""The aggregated posterior over conformations: the equal-weight mixture of per-particle posteriors.

Each particle i has a posterior p(x | image_i) over the collective variable(s) x, represented by S
draws. The population of conformations is estimated by the mixture (1/N) Σ_i p(x | image_i), not by
a histogram of per-particle point estimates: a point-estimate histogram is the population convolved
with the estimation error, while the mixture of posteriors equals the population exactly when the
prior is right (∫ p(x | y) p(y) dy = p(x)), and is otherwise the population seen through the
prior. On a grid, the mixture's probability of a cell is the fraction of each particle's draws that
fall in the cell, averaged over particles.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from ._grid import CollectiveVariableGrid

__all__ = [
    "as_draws_array",
    "aggregated_posterior_probabilities",
    "bootstrap_aggregated_posterior_probabilities",
    "sample_aggregated_posterior",
]


def as_draws_array(draws) -> Float[np.ndarray, "n_particles n_draws n_dimensions"]:
    """Draws of shape `(n_particles, n_draws)` or `(n_particles, n_draws, n_dimensions)` as 3-D floats."""
    draws = np.asarray(draws, dtype=float)
    if draws.ndim == 2:
        draws = draws[..., None]
    if draws.ndim != 3 or draws.shape[0] < 1 or draws.shape[1] < 1:
        raise ValueError(f"draws must be (n_particles, n_draws[, n_dimensions]), got shape {draws.shape}")
    if not np.all(np.isfinite(draws)):
        raise ValueError("draws contain NaN or infinite values")
    return draws


def aggregated_posterior_probabilities(
    draws: Float[np.ndarray, "n_particles n_draws *n_dimensions"], grid: CollectiveVariableGrid
) -> Float[np.ndarray, "*grid_shape"]:
    """Probability of each grid cell under the equal-weight mixture of per-particle posteriors.

    **Arguments:**

    - `draws`: per-particle posterior draws of 1 or 2 collective variables.
    - `grid`: the cells.

    **Returns:** cell probabilities, shape `grid.shape`; they sum to the fraction of the mixture
    inside the grid (1 when the grid spans all draws). Divide by `grid.cell_volume` for a density.
    """
    draws = as_draws_array(draws)
    cells = grid.cell_indices(draws).reshape(draws.shape[:2])
    return _cell_probabilities(cells, grid)


def bootstrap_aggregated_posterior_probabilities(
    draws: Float[np.ndarray, "n_particles n_draws *n_dimensions"],
    grid: CollectiveVariableGrid,
    n_bootstrap: int,
    seed: int = 0,
) -> Float[np.ndarray, "n_bootstrap *grid_shape"]:  # noqa: F821 (a jaxtyping shape, not a name)
    """Cell probabilities of the mixture for bootstrap replicates of the particles and their draws.

    Each replicate resamples N particles with replacement (the sampling uncertainty of the
    population) and, for each, S of its draws with replacement (the Monte Carlo uncertainty of each
    posterior's representation).

    **Arguments:**

    - `draws`: per-particle posterior draws of 1 or 2 collective variables.
    - `grid`: the cells.
    - `n_bootstrap`: number of replicates.
    - `seed`: random seed.

    **Returns:** `(n_bootstrap, *grid.shape)` cell probabilities.
    """
    draws = as_draws_array(draws)
    n_particles, n_draws = draws.shape[:2]
    cells = grid.cell_indices(draws).reshape(n_particles, n_draws)
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_bootstrap, *grid.shape))
    for replicate in range(n_bootstrap):
        particles = rng.integers(n_particles, size=(n_particles,))
        chosen = rng.integers(n_draws, size=(n_particles, n_draws))
        replicates[replicate] = _cell_probabilities(cells[particles[:, None], chosen], grid)
    return replicates


def sample_aggregated_posterior(
    n_particles: int, n_draws_per_particle: int, n_samples: int, seed: int = 0
) -> tuple[Int[np.ndarray, " n_samples"], Int[np.ndarray, " n_samples"]]:
    """Exact samples of the mixture: a particle uniformly at random, then one of its draws.

    **Arguments:**

    - `n_particles`, `n_draws_per_particle`: how the draws are laid out.
    - `n_samples`: how many samples.
    - `seed`: random seed.

    **Returns:** `(particle_indices, draw_indices)`; with particle-major draws (as in
    `ensemble_samples.dcd`) the frame is `particle * n_draws_per_particle + draw`. Each sample has
    weight `1 / n_samples`.
    """
    rng = np.random.default_rng(seed)
    particles = rng.integers(n_particles, size=n_samples)
    draws = rng.integers(n_draws_per_particle, size=n_samples)
    return particles, draws


def _cell_probabilities(cells: Int[np.ndarray, "n_particles n_draws"], grid: CollectiveVariableGrid):
    n_particles, n_draws = cells.shape
    inside = cells[cells >= 0]
    counts = np.bincount(inside, minlength=int(np.prod(grid.shape)))
    return (counts / (n_particles * n_draws)).reshape(grid.shape)
