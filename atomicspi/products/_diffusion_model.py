"""Smoluchowski diffusion on a free-energy landscape, discretised on the landscape's grid.

**This is an assumption, not a measurement.** Images give populations (thermodynamics); they carry
no time. Kinetics here follow from assuming overdamped diffusion with a constant, user-set
diffusion coefficient D on the landscape F (or come from MD, not from this module). Between
face-adjacent grid cells i → j (spacing Δ along that CV) the rate is

    k_ij = (D / Δ²) · exp(−(F_j − F_i) / (2 kT)),

the standard symmetric discretisation of ∂p/∂t = ∇·D(∇p + p ∇F/kT); it satisfies detailed balance
with p_i ∝ exp(−F_i/kT) exactly and converges to the continuous equation as Δ → 0. Time is in the
unit in which D is given: with D in (CV unit)² per time unit (Å² per ns for distances in Å, say),
times are in that time unit; with the default D = 1, in units of (CV unit)² / D.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from ._free_energy import FreeEnergyLandscape

__all__ = ["DiffusionModel", "diffusion_model"]


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
    """The rate matrix of diffusion on a landscape, over its largest connected set of populated cells.

    **Fields:**

    - `rate_matrix`: `(n_cells, n_cells)` sparse generator K (rows sum to 0; K_ij the rate i → j).
    - `active_cells`: flat grid index of each row's cell.
    - `stationary_distribution`: the landscape's cell populations on `active_cells`, renormalised
      (equal to exp(−F/kT) normalised; K's stationary distribution by detailed balance).
    - `diffusion_coefficient`: D, in (CV unit)² per time unit.
    - `grid_shape`: the landscape's grid shape.
    """

    rate_matrix: scipy.sparse.csr_matrix
    active_cells: np.ndarray
    stationary_distribution: np.ndarray
    diffusion_coefficient: float
    grid_shape: tuple[int, ...]

    def row_of_cell(self, flat_cell: int) -> int:
        """Row of K for a flat grid cell index (ValueError if the cell is not in the active set)."""
        rows = np.flatnonzero(self.active_cells == flat_cell)
        if len(rows) != 1:
            raise ValueError(f"grid cell {flat_cell} is not in the connected set of populated cells")
        return int(rows[0])


def diffusion_model(landscape: FreeEnergyLandscape, diffusion_coefficient: float = 1.0) -> DiffusionModel:
    """The discretised Smoluchowski generator on `landscape` (see the module docstring).

    **Arguments:**

    - `landscape`: a 1-D or 2-D `FreeEnergyLandscape`.
    - `diffusion_coefficient`: D in (CV unit)² per time unit, the same for every CV.

    **Returns:** a `DiffusionModel` over the largest face-connected set of populated cells (cells
    with no population have F = +inf and are unreachable).
    """
    shape = landscape.free_energy.shape
    in_kT = np.ravel(landscape.free_energy / landscape.kT)
    populated = np.isfinite(in_kT)
    indices = np.arange(in_kT.size).reshape(shape)
    source_parts, target_parts, rate_parts = [], [], []
    for axis, spacing in enumerate(landscape.grid.spacings):
        first = [slice(None)] * len(shape)
        second = [slice(None)] * len(shape)
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        i, j = indices[tuple(first)].ravel(), indices[tuple(second)].ravel()
        keep = populated[i] & populated[j]
        i, j = i[keep], j[keep]
        scale = diffusion_coefficient / spacing**2
        difference = in_kT[j] - in_kT[i]
        source_parts += [i, j]
        target_parts += [j, i]
        rate_parts += [scale * np.exp(-0.5 * difference), scale * np.exp(0.5 * difference)]
    sources, targets, rates = np.concatenate(source_parts), np.concatenate(target_parts), np.concatenate(rate_parts)
    adjacency = scipy.sparse.coo_matrix((np.ones_like(rates), (sources, targets)), shape=(in_kT.size,) * 2)
    _, component = scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    sizes = np.bincount(component[populated])
    largest = np.argmax(sizes)
    active_cells = np.flatnonzero(populated & (component == largest))
    row = np.full(in_kT.size, -1)
    row[active_cells] = np.arange(len(active_cells))
    keep = (row[sources] >= 0) & (row[targets] >= 0)
    off_diagonal = scipy.sparse.coo_matrix(
        (rates[keep], (row[sources[keep]], row[targets[keep]])), shape=(len(active_cells),) * 2
    ).tocsr()
    generator = off_diagonal - scipy.sparse.diags(np.asarray(off_diagonal.sum(axis=1)).ravel())
    populations = landscape.probabilities.ravel()[active_cells]
    return DiffusionModel(
        rate_matrix=generator.tocsr(),
        active_cells=active_cells,
        stationary_distribution=populations / populations.sum(),
        diffusion_coefficient=float(diffusion_coefficient),
        grid_shape=tuple(shape),
    )
