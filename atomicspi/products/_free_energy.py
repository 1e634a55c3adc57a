"""Free-energy landscapes F = −kT ln p of the aggregated posterior, with bootstrap bands.

What images give: single-particle images are snapshots of an equilibrium ensemble, so the
aggregated posterior estimates *populations* — thermodynamics. F = −kT ln p (p the probability
density of the collective variables, averaged over a grid cell) is a free energy up to an additive
constant, fixed here so that the lowest cell has F = 0. Images carry no time information: rates
and first-passage times computed from F (`atomicspi.products.markov_state_model`) rest on an
assumed dynamics (diffusion on F), not on the data.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float

from ._aggregated_posterior import (
    aggregated_posterior_probabilities,
    as_draws_array,
    bootstrap_aggregated_posterior_probabilities,
)
from ._grid import CollectiveVariableGrid, make_grid

__all__ = ["FreeEnergyLandscape", "free_energy_landscape", "landscape_from_probabilities"]


@dataclasses.dataclass(frozen=True)
class FreeEnergyLandscape:
    """A free-energy landscape on a grid over 1 or 2 collective variables (CVs).

    **Fields:**

    - `grid`: the cells.
    - `names`, `units`: one name and one unit string per CV (unit `""` for dimensionless).
    - `kT`: the thermal energy in the energy unit of `free_energy` (1 → F in kT).
    - `probabilities`: population of each cell under the aggregated posterior (sums to 1 over the
      grid when the grid spans all draws).
    - `free_energy`: −kT ln(probability / cell volume), shifted so its minimum is 0; +inf in
      empty cells.
    - `free_energy_low`, `free_energy_high`: the bootstrap band (same shift): the central
      `confidence` interval of F over bootstrap replicates of particles and draws.
    - `bootstrap_probabilities`: `(n_bootstrap, *grid shape)` cell populations of the replicates.
    - `confidence`: the band's coverage level.
    - `offset`: the constant subtracted from −kT ln(density) (the same for estimate and band).
    """

    grid: CollectiveVariableGrid
    names: tuple[str, ...]
    units: tuple[str, ...]
    kT: float
    probabilities: np.ndarray
    free_energy: np.ndarray
    free_energy_low: np.ndarray
    free_energy_high: np.ndarray
    bootstrap_probabilities: np.ndarray
    confidence: float
    offset: float

    @property
    def n_dimensions(self) -> int:
        return self.grid.n_dimensions

    def free_energy_from_probabilities(self, probabilities) -> np.ndarray:
        """−kT ln(probability / cell volume) − offset: F of any cell populations, in this landscape's gauge."""
        with np.errstate(divide="ignore"):
            return -self.kT * np.log(np.asarray(probabilities) / self.grid.cell_volume) - self.offset

    def axis_label(self, dimension: int) -> str:
        """`"name (unit)"` for plots."""
        unit = self.units[dimension]
        return f"{self.names[dimension]} ({unit})" if unit else self.names[dimension]

    @property
    def energy_label(self) -> str:
        return "F (kT)" if self.kT == 1.0 else f"F (energy units; kT = {self.kT:g})"


def free_energy_landscape(
    draws: Float[np.ndarray, "n_particles n_draws *n_dimensions"],
    grid: CollectiveVariableGrid | None = None,
    n_bins: int | tuple[int, ...] | None = None,
    kT: float = 1.0,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    names: tuple[str, ...] | None = None,
    units: tuple[str, ...] | None = None,
) -> FreeEnergyLandscape:
    """F = −kT ln p of the aggregated posterior on a grid, with a bootstrap band.

    **Arguments:**

    - `draws`: per-particle posterior draws, `(n_particles, n_draws)` for one CV or
      `(n_particles, n_draws, 2)` for two.
    - `grid`: the cells; default: `n_bins` regular bins spanning all draws.
    - `n_bins`: bins per CV when `grid` is not given (default 50 in 1-D, 30 × 30 in 2-D).
    - `kT`: thermal energy (1 → F in units of kT).
    - `n_bootstrap`: bootstrap replicates (particles and, within each, draws resampled with replacement).
    - `confidence`: coverage of the band (central interval of the replicates).
    - `seed`: random seed of the bootstrap.
    - `names`, `units`: per CV, for labels (default `"cv0"`, `""`).

    **Returns:** a `FreeEnergyLandscape`.
    """
    draws = as_draws_array(draws)
    n_dimensions = draws.shape[-1]
    if n_dimensions not in (1, 2):
        raise ValueError(f"landscapes are on 1 or 2 collective variables, got {n_dimensions}")
    if grid is None:
        grid = make_grid(draws, n_bins if n_bins is not None else (50 if n_dimensions == 1 else 30))
    probabilities = aggregated_posterior_probabilities(draws, grid)
    replicates = bootstrap_aggregated_posterior_probabilities(draws, grid, n_bootstrap, seed)
    with np.errstate(divide="ignore"):
        raw = -kT * np.log(probabilities / grid.cell_volume)
    offset = float(np.min(raw))
    tail = 0.5 * (1.0 - confidence)
    # Quantiles of the probabilities map to quantiles of F (a decreasing function of p).
    probability_low, probability_high = np.quantile(replicates, [tail, 1.0 - tail], axis=0)
    with np.errstate(divide="ignore"):
        free_energy_low = -kT * np.log(probability_high / grid.cell_volume) - offset
        free_energy_high = -kT * np.log(probability_low / grid.cell_volume) - offset
    return FreeEnergyLandscape(
        grid=grid,
        names=tuple(names) if names is not None else tuple(f"cv{d}" for d in range(n_dimensions)),
        units=tuple(units) if units is not None else ("",) * n_dimensions,
        kT=float(kT),
        probabilities=probabilities,
        free_energy=raw - offset,
        free_energy_low=free_energy_low,
        free_energy_high=free_energy_high,
        bootstrap_probabilities=replicates,
        confidence=float(confidence),
        offset=offset,
    )


def landscape_from_probabilities(
    grid: CollectiveVariableGrid,
    probabilities: Float[np.ndarray, "*grid_shape"],
    kT: float = 1.0,
    names: tuple[str, ...] | None = None,
    units: tuple[str, ...] | None = None,
) -> FreeEnergyLandscape:
    """A landscape from known cell populations (e.g. from MD or an analytic model), without a band.

    **Arguments:**

    - `grid`: the cells.
    - `probabilities`: population of each cell (grid shape; normalised here to sum to 1).
    - `kT`, `names`, `units`: as in `free_energy_landscape`.

    **Returns:** a `FreeEnergyLandscape` whose band is the estimate itself and which has no
    bootstrap replicates.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape != grid.shape or np.any(probabilities < 0) or not probabilities.sum() > 0:
        raise ValueError(f"probabilities must be non-negative with the grid's shape {grid.shape}")
    probabilities = probabilities / probabilities.sum()
    with np.errstate(divide="ignore"):
        raw = -kT * np.log(probabilities / grid.cell_volume)
    offset = float(np.min(raw))
    free_energy = raw - offset
    return FreeEnergyLandscape(
        grid=grid,
        names=tuple(names) if names is not None else tuple(f"cv{d}" for d in range(grid.n_dimensions)),
        units=tuple(units) if units is not None else ("",) * grid.n_dimensions,
        kT=float(kT),
        probabilities=probabilities,
        free_energy=free_energy,
        free_energy_low=free_energy.copy(),
        free_energy_high=free_energy.copy(),
        bootstrap_probabilities=np.empty((0, *grid.shape)),
        confidence=0.0,
        offset=offset,
    )
