"""Mean first-passage times of the diffusion model on a landscape (an assumption-based kinetics).

For a target set B the mean first-passage time m_i from cell i solves Σ_j K_ij m_j = −1 for i ∉ B,
m_i = 0 for i ∈ B (K the rate matrix). Times are in the time unit of the diffusion coefficient
(D in (CV unit)² per time unit); they rest on the diffusion assumption, not on the images.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg

from ._basins import LandscapeBasins
from ._diffusion_model import DiffusionModel

__all__ = ["mean_first_passage_times", "state_mean_first_passage_times"]


def mean_first_passage_times(model: DiffusionModel, target_cells) -> np.ndarray:
    """Mean first-passage time from every active cell to the set of `target_cells`.

    **Arguments:**

    - `model`: a `DiffusionModel`.
    - `target_cells`: flat grid indices of the target set (all must be active cells).

    **Returns:** `(len(model.active_cells),)` times, 0 on the target, in D's time unit.
    """
    target_rows = np.array([model.row_of_cell(int(cell)) for cell in np.atleast_1d(target_cells)])
    others = np.setdiff1d(np.arange(len(model.active_cells)), target_rows)
    times = np.zeros(len(model.active_cells))
    if len(others):
        generator = model.rate_matrix[others][:, others].tocsc()
        times[others] = scipy.sparse.linalg.spsolve(generator, -np.ones(len(others)))
    return times


def state_mean_first_passage_times(model: DiffusionModel, basins: LandscapeBasins) -> np.ndarray:
    """`[a, b]`: mean first-passage time from state a's minimum cell to state b's minimum cell.

    **Arguments:**

    - `model`: the `DiffusionModel` of the landscape the basins were found on.
    - `basins`: its `LandscapeBasins`.

    **Returns:** `(n_states, n_states)` times in D's time unit (0 on the diagonal; NaN where a
    minimum lies outside the connected set).
    """
    n_states = basins.n_states
    times = np.full((n_states, n_states), np.nan)
    active = set(model.active_cells.tolist())
    for b in range(n_states):
        if int(basins.minimum_cells[b]) not in active:
            continue
        to_b = mean_first_passage_times(model, [basins.minimum_cells[b]])
        for a in range(n_states):
            if int(basins.minimum_cells[a]) in active:
                times[a, b] = to_b[model.row_of_cell(int(basins.minimum_cells[a]))]
    return times
