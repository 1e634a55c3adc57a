"""PNG plots of a free-energy landscape: F with its bootstrap band, states and saddles marked."""

from __future__ import annotations

import pathlib

import numpy as np

from ._basins import LandscapeBasins
from ._free_energy import FreeEnergyLandscape

__all__ = ["plot_landscape"]


def plot_landscape(
    landscape: FreeEnergyLandscape, basins: LandscapeBasins, path: str | pathlib.Path, title: str | None = None
) -> None:
    """Write a PNG of the landscape (matplotlib, Agg backend).

    1-D: F against the CV with the bootstrap band shaded, minima marked with their state's
    population (and band), saddles marked. 2-D: filled contours of F with minima and saddles, next
    to the band's width (the uncertainty of F).

    **Arguments:**

    - `landscape`: the `FreeEnergyLandscape`.
    - `basins`: its `LandscapeBasins`.
    - `path`: the PNG to write.
    - `title`: optional title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if landscape.n_dimensions == 1:
        figure = _plot_one_dimension(plt, landscape, basins)
    else:
        figure = _plot_two_dimensions(plt, landscape, basins)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(str(path))
    plt.close(figure)


def _state_label(basins: LandscapeBasins, state: int) -> str:
    return (
        f"S{state}: {100 * basins.populations[state]:.1f}% "
        f"[{100 * basins.population_low[state]:.1f}, {100 * basins.population_high[state]:.1f}]"
    )


def _plot_one_dimension(plt, landscape, basins):
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=130)
    x = landscape.grid.centres[0]
    finite = np.isfinite(landscape.free_energy)
    top = float(np.nanmax(np.where(finite, landscape.free_energy, np.nan))) + 1.0
    high = np.minimum(landscape.free_energy_high, top + 5.0)
    low = np.where(np.isfinite(landscape.free_energy_low), landscape.free_energy_low, np.nan)
    axis.fill_between(
        x, low, high, where=np.isfinite(low), color="tab:blue", alpha=0.25, lw=0,
        label=f"{100 * landscape.confidence:.0f}% bootstrap band",
    )
    axis.plot(x[finite], landscape.free_energy[finite], color="tab:blue", lw=1.8, label="F = −kT ln p")
    for state in range(basins.n_states):
        position = basins.minimum_positions[state, 0]
        value = basins.minimum_free_energies[state]
        axis.plot(position, value, "v", color="tab:red", ms=8, zorder=3,
                  label="state minimum: population [band]" if state == 0 else None)
        axis.annotate(
            _state_label(basins, state), (position, value), textcoords="offset points", xytext=(0, -16),
            ha="center", va="top", fontsize=8, color="tab:red",
        )
    saddles = np.unique(basins.saddle_cells[basins.saddle_cells >= 0])
    if len(saddles):
        axis.plot(x[saddles], landscape.free_energy.ravel()[saddles], "^", color="k", ms=7, label="saddle")
    axis.set_xlabel(landscape.axis_label(0))
    axis.set_ylabel(landscape.energy_label)
    axis.set_ylim(-1.5, top + 0.5)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", fontsize=8, ncol=3, frameon=False)
    return figure


def _plot_two_dimensions(plt, landscape, basins):
    figure, (axis, band_axis) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=130)
    x, y = landscape.grid.centres
    free_energy = np.where(np.isfinite(landscape.free_energy), landscape.free_energy, np.nan)
    top = min(max(float(np.nanmax(free_energy)), 1.0), 12.0)
    step = 0.5 if top <= 8.0 else 1.0
    levels = np.arange(0.0, top + step, step)
    import matplotlib.colors

    norm = matplotlib.colors.BoundaryNorm(levels, plt.get_cmap("viridis").N, extend="max")
    cells = axis.pcolormesh(*landscape.grid.edges, free_energy.T, cmap="viridis", norm=norm, shading="flat")
    figure.colorbar(cells, ax=axis, label=landscape.energy_label)
    axis.set_title("free energy (empty cells white)", fontsize=10)
    bounded = np.isfinite(landscape.free_energy_high) & np.isfinite(landscape.free_energy_low)
    width = np.full(bounded.shape, np.nan)
    width[bounded] = landscape.free_energy_high[bounded] - landscape.free_energy_low[bounded]
    image = band_axis.pcolormesh(*landscape.grid.edges, width.T, cmap="magma_r", shading="flat")
    figure.colorbar(image, ax=band_axis, label=f"width of the {100 * landscape.confidence:.0f}% band of {landscape.energy_label}")
    band_axis.set_title("uncertainty of F", fontsize=10)
    centres = np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1).reshape(-1, 2)
    for target in (axis, band_axis):
        for state in range(basins.n_states):
            px, py = basins.minimum_positions[state]
            target.plot(px, py, "v", color="tab:red", ms=8, mec="w")
            target.annotate(_state_label(basins, state), (px, py), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=8, bbox=dict(boxstyle="round,pad=0.2", fc="w", alpha=0.7, lw=0))
        saddles = np.unique(basins.saddle_cells[basins.saddle_cells >= 0])
        if len(saddles):
            target.plot(centres[saddles, 0], centres[saddles, 1], "^", color="k", mec="w", ms=7)
        target.set_xlabel(landscape.axis_label(0))
        target.set_ylabel(landscape.axis_label(1))
    return figure
