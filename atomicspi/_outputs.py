"""Writing an inference run's output folder: structures, ensembles, the ArviZ posterior, plots."""

from __future__ import annotations

import json
import os
import pathlib
from typing import NamedTuple

import numpy as np

from atomicspi._quiet import quiet_c_stdout

__all__ = ["OutputPlan", "output_plan", "dcd_size_in_bytes", "EnsembleWriter", "write_ensemble", "write_posterior", "write_run_record", "plot_elbo", "plot_fits"]


def dcd_size_in_bytes(n_frames: int, n_atoms: int) -> int:
    """Size of a DCD file of `n_frames` frames of `n_atoms` atoms: per frame three Fortran records
    (x, y, z) of `4 n_atoms` bytes with 8 bytes of record markers each, plus a header."""
    return 276 + n_frames * 3 * (4 * n_atoms + 8)


class OutputPlan(NamedTuple):
    """What a run writes: the atoms of its trajectories (`atom_selection`, their indices), whether
    `ensemble_samples.dcd` is written, the expected sizes and a note on what was left out."""

    atom_selection: str
    atom_indices: np.ndarray
    write_samples: bool
    sizes_in_bytes: dict
    note: str | None


def output_plan(structure, n_particles: int, samples_per_particle: int, *, output_atoms: str,
                budget_in_gigabytes: float | None, ensemble_size: int) -> OutputPlan:
    """Decide the output trajectories' atoms and files so that they follow the settings and stay
    within the budget (see `DatasetConfig.output_atoms`, `output_budget_in_gigabytes`).

    **Arguments:**

    - `structure`: the reference `atomicspi.structure.Structure`.
    - `n_particles`, `samples_per_particle`: the posterior's layout.
    - `output_atoms`: `"auto"`, `"heavy"`, `"all"` or `"calpha"`.
    - `budget_in_gigabytes`: bound on the per-particle ensembles (None: none).
    - `ensemble_size`: structures in `posterior_ensemble.dcd`.

    **Returns:** an `OutputPlan`.
    """
    selections = {
        "heavy": lambda: np.flatnonzero(structure.atomic_numbers != 1),
        "all": lambda: np.arange(structure.n_atoms),
        "calpha": lambda: structure.topology.select("name CA and protein"),
    }
    budget = np.inf if budget_in_gigabytes is None else budget_in_gigabytes * 1e9

    def per_particle_bytes(indices):
        n_atoms = len(indices)
        return dcd_size_in_bytes(n_particles, n_atoms), dcd_size_in_bytes(n_particles * samples_per_particle, n_atoms)

    selection = output_atoms
    if output_atoms == "auto":
        heavy = selections["heavy"]()
        selection = "heavy" if sum(per_particle_bytes(heavy)) <= budget else "calpha"
    indices = np.asarray(selections[selection](), dtype=int)
    if len(indices) == 0:  # a structure without protein C-alpha (auto falls back to heavy atoms)
        selection, indices = "heavy", selections["heavy"]()
    means, samples = per_particle_bytes(indices)
    write_samples = means + samples <= budget
    sizes = {
        "ensemble_mean.dcd": means,
        "ensemble_samples.dcd": samples if write_samples else 0,
        "posterior_ensemble.dcd": dcd_size_in_bytes(min(ensemble_size, n_particles * samples_per_particle), len(indices)),
    }
    note = None
    if not write_samples:
        note = (
            f"ensemble_samples.dcd not written: {n_particles} particles x {samples_per_particle} draws of "
            f"{len(indices)} atoms ({selection}) would take {samples / 1e9:.1f} GB, over output_budget_in_gigabytes = "
            f"{budget_in_gigabytes:g}; posterior_ensemble.dcd holds {min(ensemble_size, n_particles * samples_per_particle)} "
            "draws of the aggregated posterior (raise the budget, or set it to null, to write every draw)"
        )
    return OutputPlan(selection, indices, write_samples, sizes, note)


class EnsembleWriter:
    """`topology.pdb` (the atoms the model moves, with their B-factors), `ensemble_mean.dcd` (frame i = posterior mean of
    particle i) and `ensemble_samples.dcd` (S draws per particle, particle-major; unless
    `write_samples` is false), written a chunk of particles at a time, so that memory does not grow
    with the number of particles; with `ensemble_draws = (particles, draws)`, also
    `posterior_ensemble.dcd`, those draws in that order (kept in memory: a bounded ensemble).

    Use as a context manager: `with EnsembleWriter(folder, structure) as writer: writer.append(...)`.
    """

    def __init__(self, folder: pathlib.Path, structure, *, write_samples: bool = True,
                 ensemble_draws: tuple[np.ndarray, np.ndarray] | None = None):
        self.folder = pathlib.Path(folder)
        self.structure = structure
        self.write_samples = write_samples
        self.ensemble_draws = ensemble_draws
        self._files: dict = {}
        self._particles_written = 0
        self._ensemble: np.ndarray | None = None

    def __enter__(self) -> "EnsembleWriter":
        from mdtraj.formats import DCDTrajectoryFile

        self.structure.save_pdb(self.folder / "topology.pdb")  # with the reference's B-factors
        names = ["ensemble_mean.dcd"] + (["ensemble_samples.dcd"] if self.write_samples else [])
        with quiet_c_stdout():  # mdtraj's DCD plugin (VMD's dcdplugin) prints to standard output
            self._files = {name: DCDTrajectoryFile(str(self.folder / name), "w", force_overwrite=True) for name in names}
        if self.ensemble_draws is not None:
            self._ensemble = np.zeros((len(self.ensemble_draws[0]), self.structure.n_atoms, 3), np.float32)
        return self

    def append(self, mean_positions, sample_positions) -> None:
        """Append particles: means `(n, n_atoms, 3)` and draws `(n, S, n_atoms, 3)`, in Å (DCD's unit)."""
        n_atoms = self.structure.n_atoms
        samples = np.asarray(sample_positions, dtype=np.float32)
        with quiet_c_stdout():
            self._files["ensemble_mean.dcd"].write(np.asarray(mean_positions, dtype=np.float32).reshape(-1, n_atoms, 3))
            if self.write_samples:
                self._files["ensemble_samples.dcd"].write(samples.reshape(-1, n_atoms, 3))
        if self._ensemble is not None and self.ensemble_draws is not None:
            particles, draws = self.ensemble_draws
            first, count = self._particles_written, samples.shape[0]
            chosen = np.flatnonzero((particles >= first) & (particles < first + count))
            self._ensemble[chosen] = samples[particles[chosen] - first, draws[chosen]]
        self._particles_written += samples.shape[0]

    def __exit__(self, *exception) -> None:
        from mdtraj.formats import DCDTrajectoryFile

        with quiet_c_stdout():
            for file in self._files.values():
                file.close()
            if self._ensemble is not None and exception[0] is None:
                with DCDTrajectoryFile(str(self.folder / "posterior_ensemble.dcd"), "w", force_overwrite=True) as file:
                    file.write(self._ensemble)


def write_ensemble(folder: pathlib.Path, structure, mean_positions, sample_positions) -> None:
    """`EnsembleWriter`'s three files at once, for positions already in memory."""
    with EnsembleWriter(folder, structure) as writer:
        writer.append(mean_positions, sample_positions)


UNITS = {"amplitudes": "Å", "shift_correction": "Å", "rotation_correction": "rad", "spring_constant": "kT/Å²",
         "path_position_in_angstroms": "Å", "envelope_b_factor": "Å²"}


def write_posterior(path: pathlib.Path, local_draws: dict, global_draws: dict, pose_summary=None) -> None:
    """`posterior.nc`: ArviZ InferenceData; local variables have dims (chain, draw, particle, ...);
    variables with physical units carry them in `attrs["units"]`. With a `PoseSummaries`
    (`atomicspi.products.pose_summaries`), a `pose_summary` group holds per particle the mean
    rotation (`rotation`, RELION's `A`, dims particle × row × column), `angular_spread_in_degrees`
    (the radius holding 90 % of the draws), `shift_in_angstroms` and `shift_standard_deviation_in_angstroms`."""
    import arviz as az

    posterior = {}
    dims = {}
    for name, values in local_draws.items():
        values = np.asarray(values)  # (particle, draw, ...)
        posterior[name] = np.moveaxis(values, 1, 0)[None]
        dims[name] = ["particle"] + [f"{name}_dim_{i}" for i in range(values.ndim - 2)]
    n_draws = next(iter(posterior.values())).shape[1] if posterior else 1
    for name, values in global_draws.items():
        values = np.asarray(values)
        posterior[name] = values[None, :n_draws]
        dims[name] = [f"{name}_dim_{i}" for i in range(values.ndim - 1)]
    data = az.from_dict(posterior=posterior, dims=dims)
    for name, unit in UNITS.items():
        if name in data.posterior:
            data.posterior[name].attrs["units"] = unit
    if pose_summary is not None:
        import xarray

        data.add_groups(pose_summary=xarray.Dataset(
            {
                "rotation": (("particle", "row", "column"), pose_summary.rotations),
                "angular_spread_in_degrees": (("particle",), pose_summary.angular_spread_in_degrees,
                                              {"units": "degree", "level": pose_summary.level}),
                "shift_in_angstroms": (("particle", "axis"), pose_summary.shifts_in_angstroms, {"units": "Å"}),
                "shift_standard_deviation_in_angstroms": (("particle", "axis"), pose_summary.shift_standard_deviation_in_angstroms,
                                                          {"units": "Å"}),
            },
            coords={"axis": ["x", "y"]},
        ))
    temporary = path.with_suffix(".nc.tmp")
    data.to_netcdf(str(temporary), engine="h5netcdf")
    os.replace(temporary, path)


def write_run_record(path: pathlib.Path, record: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, default=_json_default))
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.Path):
        return str(value)
    return str(value)


def plot_elbo(path: pathlib.Path, losses) -> None:
    """The loss (the negative ELBO estimate of the whole stack, from each minibatch) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(losses, dtype=float)
    losses = losses[np.isfinite(losses)]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    steps = np.arange(1, len(losses) + 1)
    axis.plot(steps, losses, lw=0.6, alpha=0.5, label="minibatch")
    window = max(1, len(losses) // 50)
    if len(losses) >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean over {window} steps")
    axis.set_xlabel("step")
    axis.set_ylabel("−ELBO (nats)")
    if np.all(losses > 0):
        axis.set_yscale("log")
    axis.legend()
    axis.set_title("SVI loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_fits(path: pathlib.Path, images, models, pixel_size_in_angstroms: float) -> None:
    """A few particles: image, posterior-mean model image (scaled), residual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    figure, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), dpi=110, squeeze=False)
    extent = [0, images.shape[-1] * pixel_size_in_angstroms, images.shape[-2] * pixel_size_in_angstroms, 0]
    for i in range(n):
        image, model = np.asarray(images[i]), np.asarray(models[i])
        for j, (title, picture) in enumerate((("image", image), ("model", model), ("residual", image - model))):
            axis = axes[i, j]
            axis.imshow(picture, cmap="gray", extent=extent)
            axis.set_title(f"particle {i}: {title}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    axes[-1, 0].set_xlabel(f"{images.shape[-1] * pixel_size_in_angstroms:.0f} Å")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
