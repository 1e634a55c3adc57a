"""The Python interface to what the command lines do: simulate a particle stack, run an inference,
and read what it wrote (the notebooks in `notebooks/` use only this and the public subpackages).

Simulate (as `python -m atomicspi.simulate`):

- `interpolated_conformations`, `prior_conformations`: conformations with ground truth;
- `simulate_particles`: render them with random poses, CTFs and noise (`SimulatedParticles`);
- `write_simulated_dataset`: a RELION star file + `.mrcs`, `reference.pdb`, `truth.npz` and a
  `dataset.yaml` ready for `run_inference`;
- `example_structure_paths`, `ADENYLATE_KINASE_DOMAINS`, `write_example`: the bundled adenylate
  kinase example (`python -m atomicspi.infer --example FOLDER`).

Fit (as `python -m atomicspi.infer dataset.yaml`): `run_inference`.

Read the results: `load_posterior` (`posterior.nc`), `load_ensemble` (`ensemble_mean.dcd`,
`ensemble_samples.dcd` on `topology.pdb`), `load_run_record` (`run.json`) and `load_truth`
(`truth.npz` of a simulated dataset).

Importing this module does not import the models or the inference engine; `run_inference` does.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from atomicspi._errors import InputError
from atomicspi._example import ADENYLATE_KINASE_DOMAINS as ADENYLATE_KINASE_DOMAINS
from atomicspi._example import example_structure_paths as example_structure_paths
from atomicspi._example import write_example as write_example
from atomicspi._simulation import SimulatedParticles as SimulatedParticles
from atomicspi._simulation import interpolated_conformations as interpolated_conformations
from atomicspi._simulation import prior_conformations as prior_conformations
from atomicspi._simulation import simulate_particles as simulate_particles
from atomicspi._simulation import write_simulated_dataset as write_simulated_dataset
from atomicspi.io import DatasetConfig, load_config

if TYPE_CHECKING:
    import arviz
    import mdtraj

__all__ = [
    "ADENYLATE_KINASE_DOMAINS",
    "SimulatedParticles",
    "example_structure_paths",
    "interpolated_conformations",
    "load_ensemble",
    "load_posterior",
    "load_run_record",
    "load_truth",
    "prior_conformations",
    "run_inference",
    "simulate_particles",
    "write_example",
    "write_simulated_dataset",
]


def run_inference(
    config: DatasetConfig | str | os.PathLike, *, resume: bool = False, progress: bool = True
) -> pathlib.Path:
    """Fit the model a `dataset.yaml` describes and write its output folder, as
    `python -m atomicspi.infer dataset.yaml` does.

    **Arguments:**

    - `config`: the path of a `dataset.yaml`, or a `DatasetConfig` from `atomicspi.io.load_config`.
    - `resume`: continue from the last checkpoint in the output folder.
    - `progress`: show a progress bar on stderr.

    **Returns:** the output folder, holding `topology.pdb`, `ensemble_mean.dcd`,
    `ensemble_samples.dcd`, `posterior.nc`, `run.json`, `elbo.png`, `fits.png` and the landscape
    products (read them with `load_posterior`, `load_ensemble`, `load_run_record`). Raises
    `atomicspi.io.InputError` for bad input, before anything is written.
    """
    from atomicspi._pipeline import run_inference as _run_inference

    if not isinstance(config, DatasetConfig):
        config = load_config(config)
    return _run_inference(config, resume=resume, progress=progress)


def _output_file(folder: str | os.PathLike, name: str, what: str = "the output folder of a finished run") -> pathlib.Path:
    path = pathlib.Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: file not found (is {pathlib.Path(folder)} {what}?)")
    return path


def load_posterior(output: str | os.PathLike) -> arviz.InferenceData:
    """The posterior draws of a run (`posterior.nc`) as ArviZ `InferenceData`: per-particle
    variables with dims `(chain, draw, particle, ...)`, global ones `(chain, draw, ...)`; variables
    with physical units carry them in `attrs["units"]`.

    **Arguments:**

    - `output`: the output folder (`run_inference`'s return value).
    """
    import arviz as az

    return az.from_netcdf(str(_output_file(output, "posterior.nc")))


def load_ensemble(output: str | os.PathLike, *, samples: bool = False) -> mdtraj.Trajectory:
    """The structures of a run, on the atoms the model moves (`topology.pdb`): by default one
    frame per particle, its posterior mean (`ensemble_mean.dcd`); with `samples=True` every
    posterior draw, particle-major (`ensemble_samples.dcd`: the draws of particle 0 first).

    Positions are in nanometres, as always in mdtraj (`trajectory.xyz * 10` is in Å).
    """
    import mdtraj

    topology = _output_file(output, "topology.pdb")
    ensemble = _output_file(output, "ensemble_samples.dcd" if samples else "ensemble_mean.dcd")
    return mdtraj.load(str(ensemble), top=str(topology))


def load_run_record(output: str | os.PathLike) -> dict[str, Any]:
    """What a run recorded in `run.json`: its settings, package versions, machine, timings and
    diagnostics."""
    return json.loads(_output_file(output, "run.json").read_text())


def load_truth(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The ground truth `write_simulated_dataset` wrote beside a simulated stack (`truth.npz`):
    `calpha_positions_in_angstroms` `(n, n_calpha, 3)`, `rotations`, `shifts_in_angstroms`,
    `noise_std`, and the extra arrays given as `truth_extra` (e.g. `interpolation_fraction`).

    **Arguments:**

    - `folder`: the dataset folder (the one holding `dataset.yaml`).
    """
    with np.load(_output_file(folder, "truth.npz", "a dataset written by write_simulated_dataset"), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}
