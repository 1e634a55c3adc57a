"""A representative particle per state: the one whose posterior mean lies nearest the state's minimum."""

from __future__ import annotations

import numpy as np

from ._basins import LandscapeBasins
from ._free_energy import FreeEnergyLandscape

__all__ = ["representative_particles"]


def representative_particles(
    draws: np.ndarray, landscape: FreeEnergyLandscape, basins: LandscapeBasins
) -> np.ndarray:
    """For each state, the particle whose posterior-mean CV lies in that state and nearest its minimum.

    Distances are measured in grid cells (each CV divided by its bin width), so two CVs in
    different units weigh alike. When no particle's mean falls in a state, the nearest particle
    overall is taken.

    **Arguments:**

    - `draws`: per-particle posterior draws, `(n_particles, n_draws[, n_dimensions])`.
    - `landscape`, `basins`: the landscape and its states.

    **Returns:** `(n_states,)` particle indices (frames of `ensemble_mean.dcd`).
    """
    draws = np.asarray(draws, dtype=float)
    means = draws.mean(axis=1).reshape(len(draws), -1)
    spacings = np.asarray(landscape.grid.spacings)
    cells = landscape.grid.cell_indices(means)
    labels = np.where(cells >= 0, basins.labels.ravel()[np.clip(cells, 0, None)], -1)
    chosen = np.empty(basins.n_states, dtype=int)
    for state in range(basins.n_states):
        distances = np.linalg.norm((means - basins.minimum_positions[state]) / spacings, axis=1)
        inside = labels == state
        chosen[state] = np.flatnonzero(inside)[np.argmin(distances[inside])] if inside.any() else np.argmin(distances)
    return chosen
