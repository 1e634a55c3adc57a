"""States of a landscape: basins of attraction of F's minima (a watershed on the grid) and saddles.

Each populated cell flows by steepest descent (over its 2 or 8 neighbours) to a local minimum; the
cells that reach the same minimum form its basin. Between two face-adjacent basins the saddle is
the lowest crossing point, min over adjacent cell pairs (a, b) of max(F_a, F_b): the highest point
on the minimum-energy path from one basin to the other on the grid (a minimax path). A barrier
counts only if, seen from the shallower basin, it is at least `min_barrier_in_kT` high and
significant — the bootstrap band at the saddle lies wholly above the band at the minimum — and
basins holding less than `min_population` are merged too, each into its neighbour across the lowest
saddle, so that noise in F does not make states. (A landscape without a band uses F itself.)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from ._free_energy import FreeEnergyLandscape

__all__ = ["LandscapeBasins", "find_basins"]


@dataclasses.dataclass(frozen=True)
class LandscapeBasins:
    """Basins (states) of a landscape, ordered by their minimum's free energy (state 0 is lowest).

    **Fields:**

    - `labels`: state of each grid cell (grid shape); −1 for empty cells and for isolated
      islands of cells with less than `min_population` that touch no other basin.
    - `minimum_cells`: flat grid index of each state's minimum.
    - `minimum_positions`: `(n_states, n_dimensions)` CV values at those minima (cell centres).
    - `minimum_free_energies`: F at the minima.
    - `saddle_free_energies`: `(n_states, n_states)` F at the saddle between two adjacent states
      (+inf when they do not touch; diagonal +inf).
    - `saddle_cells`: `(n_states, n_states)` flat grid index of the saddle cell (−1 when none).
    - `populations`: probability of each state under the aggregated posterior.
    - `population_low`, `population_high`: bootstrap band at the landscape's confidence.
    - `population_standard_deviations`: bootstrap standard deviation of each population.
    """

    labels: np.ndarray
    minimum_cells: np.ndarray
    minimum_positions: np.ndarray
    minimum_free_energies: np.ndarray
    saddle_free_energies: np.ndarray
    saddle_cells: np.ndarray
    populations: np.ndarray
    population_low: np.ndarray
    population_high: np.ndarray
    population_standard_deviations: np.ndarray

    @property
    def n_states(self) -> int:
        return len(self.minimum_cells)

    @property
    def barriers_in_kT(self) -> np.ndarray:
        """`[a, b]`: saddle free energy minus state a's minimum (the barrier to leave a towards b)."""
        return self.saddle_free_energies - self.minimum_free_energies[:, None]


def find_basins(
    landscape: FreeEnergyLandscape, min_barrier_in_kT: float = 1.0, min_population: float = 0.01
) -> LandscapeBasins:
    """The states of a landscape: merged steepest-descent basins, their saddles and populations.

    **Arguments:**

    - `landscape`: a `FreeEnergyLandscape` (1-D or 2-D).
    - `min_barrier_in_kT`: basins whose barrier, seen from the shallower one, is lower than this
      (in units of kT), or whose saddle's band overlaps their minimum's band, are merged.
    - `min_population`: basins with a smaller population are merged into a neighbour.

    **Returns:** `LandscapeBasins`, state 0 the lowest minimum.
    """
    free_energy = np.asarray(landscape.free_energy, dtype=float)
    in_kT = free_energy / landscape.kT
    shape = free_energy.shape
    flat = in_kT.ravel()
    labels = _steepest_descent_labels(in_kT)
    low = np.ravel(landscape.free_energy_low) / landscape.kT
    high = np.ravel(landscape.free_energy_high) / landscape.kT
    probabilities = landscape.probabilities.ravel()

    def minimum_of(label):
        members = np.flatnonzero(labels == label)
        return members[np.argmin(flat[members])]

    while True:
        present = np.unique(labels[labels >= 0])
        minima = {label: minimum_of(label) for label in present}
        saddles = _saddles(flat, labels, shape)
        # 1) the shallowest barrier below the threshold.
        best = None
        for (a, b), (value, saddle) in saddles.items():
            shallow = minima[a] if flat[minima[a]] >= flat[minima[b]] else minima[b]
            barrier = value - flat[shallow]
            significant = low[saddle] > high[shallow]
            if (barrier < min_barrier_in_kT or not significant) and (best is None or barrier < best[0]):
                best = (barrier, a, b)
        # 2) otherwise the least populated basin below the population threshold.
        if best is None:
            population = {label: probabilities[labels == label].sum() for label in present}
            small = sorted((population[label], label) for label in present if population[label] < min_population)
            if small and len(present) > 1:
                _, label = small[0]
                neighbours = [(value, b if a == label else a) for (a, b), (value, _) in saddles.items() if label in (a, b)]
                if neighbours:
                    best = (None, label, min(neighbours)[1])
                else:
                    labels[labels == label] = -1
                    continue
        if best is None:
            break
        _, a, b = best
        shallow, deep = (a, b) if flat[minima[a]] >= flat[minima[b]] else (b, a)
        labels[labels == shallow] = deep

    present = np.unique(labels[labels >= 0])
    minimum_cells = np.array([minimum_of(label) for label in present], dtype=int)
    order = np.argsort(flat[minimum_cells], kind="stable")
    present, minimum_cells = present[order], minimum_cells[order]
    relabelled = np.full_like(labels, -1)
    for state, label in enumerate(present):
        relabelled[labels == label] = state
    labels = relabelled
    n_states = len(present)
    saddle_free_energies = np.full((n_states, n_states), np.inf)
    saddle_cells = np.full((n_states, n_states), -1, dtype=int)
    for (a, b), (value, cell) in _saddles(flat, labels, shape).items():
        saddle_free_energies[a, b] = saddle_free_energies[b, a] = value * landscape.kT
        saddle_cells[a, b] = saddle_cells[b, a] = cell
    one_hot = labels[None, :] == np.arange(n_states)[:, None]
    populations = one_hot.astype(float) @ probabilities
    replicates = landscape.bootstrap_probabilities.reshape(-1, labels.size) @ one_hot.T
    tail = 0.5 * (1.0 - landscape.confidence)
    low, high = np.quantile(replicates, [tail, 1.0 - tail], axis=0) if len(replicates) else (populations, populations)
    centres = np.stack(np.meshgrid(*landscape.grid.centres, indexing="ij"), axis=-1).reshape(-1, len(shape))
    return LandscapeBasins(
        labels=labels.reshape(shape),
        minimum_cells=minimum_cells,
        minimum_positions=centres[minimum_cells],
        minimum_free_energies=free_energy.ravel()[minimum_cells],
        saddle_free_energies=saddle_free_energies,
        saddle_cells=saddle_cells,
        populations=populations,
        population_low=np.asarray(low),
        population_high=np.asarray(high),
        population_standard_deviations=replicates.std(axis=0) if len(replicates) else np.zeros(n_states),
    )


def _steepest_descent_labels(in_kT: np.ndarray) -> np.ndarray:
    """Flat label (the flat index of the minimum reached) of each cell; −1 for empty cells."""
    shape = in_kT.shape
    flat = in_kT.ravel()
    indices = np.arange(flat.size).reshape(shape)
    padded = np.pad(in_kT, 1, constant_values=np.inf)
    padded_indices = np.pad(indices, 1, constant_values=-1)
    best_value = in_kT.copy()
    best_index = indices.copy()
    for offset in itertools.product((-1, 0, 1), repeat=len(shape)):
        if not any(offset):
            continue
        window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, shape))
        value, index = padded[window], padded_indices[window]
        lower = value < best_value
        best_value = np.where(lower, value, best_value)
        best_index = np.where(lower, index, best_index)
    pointer = best_index.ravel()
    while True:
        following = pointer[pointer]
        if np.array_equal(following, pointer):
            break
        pointer = following
    return np.where(np.isfinite(flat), pointer, -1)


def _saddles(flat: np.ndarray, labels: np.ndarray, shape: tuple[int, ...]) -> dict:
    """{(a, b) with a < b: (lowest max(F) over face-adjacent cell pairs, the higher cell of that pair)}."""
    grid_labels = labels.reshape(shape)
    values = flat.reshape(shape)
    indices = np.arange(flat.size).reshape(shape)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [], [])
    for axis in range(len(shape)):
        first = [slice(None)] * len(shape)
        second = [slice(None)] * len(shape)
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        la, lb = grid_labels[tuple(first)].ravel(), grid_labels[tuple(second)].ravel()
        va, vb = values[tuple(first)].ravel(), values[tuple(second)].ravel()
        ia, ib = indices[tuple(first)].ravel(), indices[tuple(second)].ravel()
        crossing = (la >= 0) & (lb >= 0) & (la != lb)
        parts[0].append(np.minimum(la, lb)[crossing])
        parts[1].append(np.maximum(la, lb)[crossing])
        parts[2].append(np.maximum(va, vb)[crossing])
        parts[3].append(np.where(va >= vb, ia, ib)[crossing])
    pairs_a, pairs_b, heights, cells = (np.concatenate(part) for part in parts)
    saddles: dict[tuple[int, int], tuple[float, int]] = {}
    for a, b, height, cell in zip(pairs_a, pairs_b, heights, cells):
        key = (int(a), int(b))
        if key not in saddles or height < saddles[key][0]:
            saddles[key] = (float(height), int(cell))
    return saddles
