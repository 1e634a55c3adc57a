"""A regular grid over one or two collective variables: bin edges, centres, cell volume."""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float, Int

__all__ = ["CollectiveVariableGrid", "make_grid"]


@dataclasses.dataclass(frozen=True)
class CollectiveVariableGrid:
    """Regular bins over one or two collective variables (CVs).

    **Fields:**

    - `edges`: one array of `n_bins_d + 1` increasing bin edges per CV.
    """

    edges: tuple[np.ndarray, ...]

    @property
    def n_dimensions(self) -> int:
        return len(self.edges)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(edges) - 1 for edges in self.edges)

    @property
    def centres(self) -> tuple[np.ndarray, ...]:
        return tuple(0.5 * (edges[1:] + edges[:-1]) for edges in self.edges)

    @property
    def spacings(self) -> tuple[float, ...]:
        return tuple(float(edges[1] - edges[0]) for edges in self.edges)

    @property
    def cell_volume(self) -> float:
        return float(np.prod(self.spacings))

    def cell_indices(self, values: Float[np.ndarray, "... n_dimensions"]) -> Int[np.ndarray, "..."]:
        """Flat (C-order) cell index of each point; −1 for points outside the grid."""
        values = np.asarray(values, dtype=float).reshape(-1, self.n_dimensions)
        inside = np.ones(len(values), dtype=bool)
        per_dimension = []
        for dimension, edges in enumerate(self.edges):
            index = np.searchsorted(edges, values[:, dimension], side="right") - 1
            # The last edge belongs to the last bin (numpy.histogram's convention).
            index[values[:, dimension] == edges[-1]] = len(edges) - 2
            inside &= (index >= 0) & (index < len(edges) - 1)
            per_dimension.append(np.clip(index, 0, len(edges) - 2))
        flat = np.ravel_multi_index(tuple(per_dimension), self.shape)
        return np.where(inside, flat, -1)


def make_grid(
    values: Float[np.ndarray, "... n_dimensions"],
    n_bins: int | tuple[int, ...],
    bounds: tuple[tuple[float, float], ...] | None = None,
) -> CollectiveVariableGrid:
    """A regular grid spanning all `values` (or the given `bounds`, one `(low, high)` per CV).

    **Arguments:**

    - `values`: points in CV space, last axis = CV (1 or 2).
    - `n_bins`: bins per CV (an int for all, or one per CV).
    - `bounds`: optional `(low, high)` per CV; default: the smallest and largest value.

    **Returns:** a `CollectiveVariableGrid`.
    """
    values = np.asarray(values, dtype=float)
    n_dimensions = values.shape[-1]
    values = values.reshape(-1, n_dimensions)
    n_bins = (int(n_bins),) * n_dimensions if isinstance(n_bins, int | np.integer) else tuple(n_bins)
    edges = []
    for dimension in range(n_dimensions):
        if bounds is None:
            low, high = float(values[:, dimension].min()), float(values[:, dimension].max())
        else:
            low, high = map(float, bounds[dimension])
        if not high > low:
            half = max(abs(low), 1.0) * 1e-3
            low, high = low - half, high + half
        edges.append(np.linspace(low, high, int(n_bins[dimension]) + 1))
    return CollectiveVariableGrid(edges=tuple(edges))
