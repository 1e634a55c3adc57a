"""Products of an inference run's output folder: landscape.png, landscape.npz, states.json, structures.

Thermodynamics (F, states, populations with bootstrap bands) come from the images through the
aggregated posterior. Kinetics (the Markov state model's transition matrix, mean first-passage
times) rest on the assumption of diffusion on F with a user-set coefficient D, not on the images.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from ..io._errors import InputError
from ._aggregated_posterior import aggregated_posterior_probabilities, as_draws_array, sample_aggregated_posterior
from ._basins import find_basins
from ._diffusion_model import diffusion_model
from ._first_passage import state_mean_first_passage_times
from ._free_energy import free_energy_landscape
from ._grid import make_grid
from ._markov_state_model import markov_state_model
from ._plot import plot_landscape
from ._representatives import representative_particles
from ._run_collective_variables import (
    _samples_per_particle,
    default_collective_variable,
    load_run_collective_variables,
    samples_layout,
)

__all__ = ["run_products"]

_KINETICS_NOTE = (
    "Images give thermodynamics (populations, free energies). These kinetics are NOT measured: they "
    "assume overdamped diffusion on F with the given diffusion coefficient D (or must come from MD)."
)


def _per_particle_summaries(draws, landscape, basins) -> dict[str, np.ndarray]:
    """Per particle, from its posterior draws of the coordinates `(n_particles, n_draws[, n_dims])`:
    their mean and standard deviation, the share of its draws in each state's cells, and its most
    probable state (−1 when no draw falls in any state)."""
    n_particles, n_draws = draws.shape[:2]
    draws = np.asarray(draws, dtype=float).reshape(n_particles, n_draws, -1)  # (particle, draw) in 1-D
    n_dimensions = draws.shape[-1]
    labels = basins.labels.ravel()
    cells = landscape.grid.cell_indices(draws.reshape(-1, n_dimensions)).reshape(n_particles, n_draws)
    states = np.where(cells >= 0, labels[np.maximum(cells, 0)], -1)
    probabilities = np.stack([np.mean(states == state, axis=1) for state in range(basins.n_states)], axis=1)
    most_probable = np.where(probabilities.max(axis=1) > 0, probabilities.argmax(axis=1), -1)
    return {
        "particle_coordinate_mean": draws.mean(axis=1),
        "particle_coordinate_standard_deviation": draws.std(axis=1, ddof=1) if n_draws > 1 else np.zeros((n_particles, n_dimensions)),
        "particle_state_probabilities": probabilities.reshape(n_particles, basins.n_states),
        "particle_state": most_probable,
    }


def run_products(
    output_dir: str | pathlib.Path,
    cv: str | list[str] | tuple[str, ...] | None = None,
    kT: float = 1.0,
    n_bins: int | tuple[int, ...] | None = None,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    min_barrier_in_kT: float = 1.0,
    min_population: float = 0.01,
    diffusion_coefficient: float = 1.0,
    lag_time: float | None = None,
    n_structures: int = 20,
    seed: int = 0,
) -> dict:
    """Landscape, states, kinetics and structures of an inference run, written into its folder.

    Writes `landscape.png`, `landscape.npz` (grid, F, band, populations, state labels, the MSM's
    transition and rate matrices; per particle, in input order, the mean and standard deviation of
    its coordinates over its draws, the share of its draws in each state and its most probable state,
    as `particle_*`) and `states.json` (states with populations and bootstrap bands,
    saddles, mean first-passage times). When `topology.pdb` and the ensembles are present it also
    writes `ensemble.pdb` + `ensemble.dcd` (`n_structures` structures sampled from the aggregated
    posterior, equal weights) and `state_K.pdb` (a representative per state). Everything is
    computed before anything is written: on bad input nothing is written.

    **Arguments:**

    - `output_dir`: the run's output folder (needs `posterior.nc` and `run.json`; structural CVs
      also `topology.pdb` and `ensemble_samples.dcd`).
    - `cv`: one or two specifications (`mode:K`, `latent:K`, `pc:K`, `distance:I,J`,
      `angle:I,J,K`, `rmsd:PATH`); default `mode:0`, or `pc:0` for a latent-variable model.
    - `kT`: thermal energy (1 → F in kT).
    - `n_bins`: bins per CV; default: √N in 1-D (10 to 50) and 2·N^¼ in 2-D (8 to 30) for N
      particles, reduced until the populated cells are connected (no empty cell splits the
      landscape, so the diffusion model reaches every state).
    - `n_bootstrap`, `confidence`: the bootstrap over particles and draws.
    - `min_barrier_in_kT`, `min_population`: when basins are merged into one state.
    - `diffusion_coefficient`: D in (CV unit)² per time unit, for the kinetics (an assumption).
    - `lag_time`: the MSM's lag in D's time unit (default: the time to diffuse one grid cell,
      Δ²/D, with Δ the smallest bin width).
    - `n_structures`: structures in the sampled ensemble.
    - `seed`: random seed.

    **Returns:** the contents of `states.json` as a dict. Raises `atomicspi.io.InputError` on bad input.
    """
    output_dir = pathlib.Path(output_dir)
    if cv is None:
        cv = default_collective_variable(output_dir)
    variables = load_run_collective_variables(output_dir, cv)
    if n_bins is None:
        n_bins = _connected_number_of_bins(variables.draws)
    landscape = free_energy_landscape(
        variables.draws, n_bins=n_bins, kT=kT, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
        names=variables.names, units=variables.units,
    )
    basins = find_basins(landscape, min_barrier_in_kT=min_barrier_in_kT, min_population=min_population)
    model = diffusion_model(landscape, diffusion_coefficient)
    if lag_time is None:
        lag_time = min(landscape.grid.spacings) ** 2 / diffusion_coefficient
    msm = markov_state_model(model, lag_time)
    passage_times = state_mean_first_passage_times(model, basins)
    representatives = representative_particles(variables.draws, landscape, basins)
    n_particles, n_draws = variables.draws.shape[:2]
    structures = _structures(output_dir, representatives, n_particles, n_structures, seed)

    unit = variables.units[0] if len(set(variables.units)) == 1 else "CV unit"
    unit = unit or "CV unit"
    centres = np.stack(np.meshgrid(*landscape.grid.centres, indexing="ij"), axis=-1).reshape(-1, landscape.n_dimensions)
    states = [
        {
            "state": state,
            "minimum": basins.minimum_positions[state].tolist(),
            "free_energy_at_minimum": float(basins.minimum_free_energies[state]),
            "population": float(basins.populations[state]),
            "population_low": float(basins.population_low[state]),
            "population_high": float(basins.population_high[state]),
            "population_standard_deviation": float(basins.population_standard_deviations[state]),
            "representative_particle": int(representatives[state]),
            "representative_structure": f"state_{state}.pdb" if structures else None,
        }
        for state in range(basins.n_states)
    ]
    saddles = [
        {
            "states": [a, b],
            "position": centres[basins.saddle_cells[a, b]].tolist(),
            "free_energy": float(basins.saddle_free_energies[a, b]),
            "barrier_from_first": float(basins.barriers_in_kT[a, b]),
            "barrier_from_second": float(basins.barriers_in_kT[b, a]),
        }
        for a in range(basins.n_states)
        for b in range(a + 1, basins.n_states)
        if basins.saddle_cells[a, b] >= 0
    ]
    record: dict[str, Any] = {
        "collective_variables": [
            {"specification": s, "name": n, "unit": u}
            for s, n, u in zip(variables.specifications, variables.names, variables.units)
        ],
        "n_particles": int(n_particles),
        "n_draws_per_particle": int(n_draws),
        "kT": float(kT),
        "free_energy_unit": "kT" if kT == 1.0 else f"energy unit of kT = {kT:g}",
        "confidence": float(confidence),
        "n_bootstrap": int(n_bootstrap),
        "bins": list(landscape.grid.shape),
        "note": "Populations are the aggregated posterior (the mixture of per-particle posteriors); "
        "bands are bootstrap intervals over particles and posterior draws.",
        "states": states,
        "saddles": saddles,
        "kinetics": {
            "note": _KINETICS_NOTE,
            "diffusion_coefficient": float(diffusion_coefficient),
            "time_unit": f"the time unit of D, with D in {unit}² per time unit (with D = 1: {unit}²/D)",
            "lag_time": float(lag_time),
            "connected": bool(len(model.active_cells) == np.count_nonzero(landscape.probabilities)),
            "connected_note": "the Markov model covers the largest connected set of populated cells; "
            "first-passage times to or from a state outside it are null (use fewer bins)",
            "mean_first_passage_times": [[_finite_or_none(t) for t in row] for row in passage_times],
            "mean_first_passage_time_definition": "[a][b]: from the grid cell at state a's minimum until first "
            "reaching the grid cell at state b's minimum, by the discretised Smoluchowski model",
        },
    }
    if structures:
        record["ensemble"] = {
            "pdb": "ensemble.pdb",
            "dcd": "ensemble.dcd",
            "n_structures": len(structures["frames"]),
            "frames_of_ensemble_samples": structures["frames"].tolist(),
            "weights": "equal (1/n_structures): exact samples of the aggregated posterior",
        }
        if variables.frames_are_samples:
            n_dimensions = landscape.n_dimensions
            sampled = variables.draws.reshape(n_particles * n_draws, n_dimensions)[structures["frames"]]
            cells = landscape.grid.cell_indices(sampled)
            record["ensemble"]["states_of_structures"] = [
                int(basins.labels.ravel()[cell]) if cell >= 0 else -1 for cell in cells
            ]

    plot_landscape(landscape, basins, output_dir / "landscape.png", title=_title(variables, n_particles))
    arrays = {
        "free_energy": landscape.free_energy,
        "free_energy_low": landscape.free_energy_low,
        "free_energy_high": landscape.free_energy_high,
        "probabilities": landscape.probabilities,
        "state_labels": basins.labels,
        "state_populations": basins.populations,
        "state_population_low": basins.population_low,
        "state_population_high": basins.population_high,
        "minimum_positions": basins.minimum_positions,
        "saddle_free_energies": basins.saddle_free_energies,
        "mean_first_passage_times": passage_times,
        "rate_matrix": model.rate_matrix.toarray(),
        "transition_matrix": msm.transition_matrix,
        "msm_active_cells": model.active_cells,
        "lag_time": np.float64(lag_time),
        "kT": np.float64(kT),
        "names": np.array(variables.names),
        "units": np.array(variables.units),
    }
    arrays.update(_per_particle_summaries(variables.draws, landscape, basins))
    for dimension in range(landscape.n_dimensions):
        arrays[f"edges_{dimension}"] = landscape.grid.edges[dimension]
        arrays[f"centres_{dimension}"] = landscape.grid.centres[dimension]
    _atomic_write(output_dir / "landscape.npz", lambda path: np.savez(path, **arrays))
    _atomic_write(output_dir / "states.json", lambda path: pathlib.Path(path).write_text(json.dumps(record, indent=1)))
    if structures:
        structures["ensemble"].save_pdb(str(output_dir / "ensemble.pdb"))
        structures["ensemble"].save_dcd(str(output_dir / "ensemble.dcd"))
        for state, frame in enumerate(structures["representatives"]):
            frame.save_pdb(str(output_dir / f"state_{state}.pdb"))
    return record


def _connected_number_of_bins(draws: np.ndarray) -> int:
    """Bins per CV: √N in 1-D (10 to 50), 2·N^¼ per CV in 2-D (8 to 30), N the number of particles
    (draws of one particle are not independent); fewer if needed for the populated cells to form
    one connected set."""
    import scipy.ndimage

    draws = as_draws_array(draws)
    n_particles = len(draws)
    if draws.shape[-1] == 1:
        largest = int(np.clip(round(np.sqrt(n_particles)), 10, 50))
    else:
        largest = int(np.clip(round(2 * n_particles**0.25), 8, 30))
    for n_bins in range(largest, 8, -1):
        populated = aggregated_posterior_probabilities(draws, make_grid(draws, n_bins)) > 0
        if scipy.ndimage.label(populated)[1] == 1:
            return n_bins
    return 8


def _structures(output_dir, representatives, n_particles, n_structures, seed):
    """Sampled ensemble and per-state representatives (only those frames are read), or None when
    the structure files are absent."""
    import mdtraj

    names = ("topology.pdb", "ensemble_samples.dcd", "ensemble_mean.dcd")
    if not all((output_dir / name).is_file() for name in names):
        return _structures_from_posterior_ensemble(output_dir, representatives, n_particles, n_structures)
    n_frames, n_draws = samples_layout(output_dir)
    with mdtraj.formats.DCDTrajectoryFile(str(output_dir / "ensemble_mean.dcd")) as handle:
        n_means = len(handle)
    if n_frames != n_particles * n_draws or n_means != n_particles:
        raise InputError(
            f"{output_dir / 'ensemble_samples.dcd'}: {n_frames} frames and ensemble_mean.dcd "
            f"{n_means} frames do not match {n_particles} particles × {n_draws} samples"
        )
    topology = str(output_dir / "topology.pdb")
    particles, draws = sample_aggregated_posterior(n_particles, n_draws, n_structures, seed)
    frames = particles * n_draws + draws
    samples = str(output_dir / "ensemble_samples.dcd")
    means = str(output_dir / "ensemble_mean.dcd")
    return {
        "frames": frames,
        "ensemble": mdtraj.join([mdtraj.load_frame(samples, int(frame), top=topology) for frame in frames]),
        "representatives": [mdtraj.load_frame(means, int(particle), top=topology) for particle in representatives],
    }


def _structures_from_posterior_ensemble(output_dir, representatives, n_particles, n_structures):
    """Without `ensemble_samples.dcd` (a run over its output budget): the first structures of
    `posterior_ensemble.dcd` (already samples of the aggregated posterior, in random order; which
    draws they are is in `run.json`), or None when that is absent too."""
    import mdtraj

    names = ("topology.pdb", "posterior_ensemble.dcd", "ensemble_mean.dcd", "run.json")
    if not all((output_dir / name).is_file() for name in names):
        return None
    try:
        sampled = json.loads((output_dir / "run.json").read_text())["outputs"]["posterior_ensemble"]
        particles, draws = (np.asarray(sampled[key], dtype=int) for key in ("particles", "draws"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{output_dir / 'run.json'}: field outputs.posterior_ensemble missing or malformed") from None
    n_draws = _samples_per_particle(output_dir)
    if np.any(particles >= n_particles) or np.any(draws >= n_draws) or len(particles) != len(draws):
        raise InputError(f"{output_dir / 'run.json'}: field outputs.posterior_ensemble does not match {n_particles} particles")
    topology = str(output_dir / "topology.pdb")
    count = min(n_structures, len(particles))
    ensemble = str(output_dir / "posterior_ensemble.dcd")
    means = str(output_dir / "ensemble_mean.dcd")
    return {
        "frames": particles[:count] * n_draws + draws[:count],
        "ensemble": mdtraj.join([mdtraj.load_frame(ensemble, frame, top=topology) for frame in range(count)]),
        "representatives": [mdtraj.load_frame(means, int(particle), top=topology) for particle in representatives],
    }


def _title(variables, n_particles: int) -> str:
    return f"Aggregated posterior of {n_particles} particles: {', '.join(variables.names)}"


def _finite_or_none(value: float):
    return float(value) if np.isfinite(value) else None


def _atomic_write(path: pathlib.Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp" + path.suffix)
    write(str(temporary))
    os.replace(temporary, path)
