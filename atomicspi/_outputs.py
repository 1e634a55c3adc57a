"""Writing an inference run's output folder: structures, ensembles, the ArviZ posterior, plots."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from atomicspi._quiet import quiet_c_stdout

__all__ = ["EnsembleWriter", "write_ensemble", "write_posterior", "write_run_record", "plot_elbo", "plot_fits"]


class EnsembleWriter:
    """`topology.pdb` (the atoms the model moves), `ensemble_mean.dcd` (frame i = posterior mean of
    particle i) and `ensemble_samples.dcd` (S draws per particle, particle-major), written a chunk of
    particles at a time, so that memory does not grow with the number of particles.

    Use as a context manager: `with EnsembleWriter(folder, structure) as writer: writer.append(...)`.
    """

    def __init__(self, folder: pathlib.Path, structure):
        self.folder = pathlib.Path(folder)
        self.structure = structure
        self._files: list = []

    def __enter__(self) -> "EnsembleWriter":
        from mdtraj.formats import DCDTrajectoryFile

        self.structure.to_mdtraj().save_pdb(str(self.folder / "topology.pdb"))
        with quiet_c_stdout():  # mdtraj's DCD plugin (VMD's dcdplugin) prints to standard output
            self._files = [
                DCDTrajectoryFile(str(self.folder / name), "w", force_overwrite=True)
                for name in ("ensemble_mean.dcd", "ensemble_samples.dcd")
            ]
        return self

    def append(self, mean_positions, sample_positions) -> None:
        """Append particles: means `(n, n_atoms, 3)` and draws `(n, S, n_atoms, 3)`, in Å (DCD's unit)."""
        mean_file, sample_file = self._files
        n_atoms = self.structure.n_atoms
        with quiet_c_stdout():
            mean_file.write(np.asarray(mean_positions, dtype=np.float32).reshape(-1, n_atoms, 3))
            sample_file.write(np.asarray(sample_positions, dtype=np.float32).reshape(-1, n_atoms, 3))

    def __exit__(self, *exception) -> None:
        with quiet_c_stdout():
            for file in self._files:
                file.close()


def write_ensemble(folder: pathlib.Path, structure, mean_positions, sample_positions) -> None:
    """`EnsembleWriter`'s three files at once, for positions already in memory."""
    with EnsembleWriter(folder, structure) as writer:
        writer.append(mean_positions, sample_positions)


UNITS = {"amplitudes": "Å", "shift_correction": "Å", "rotation_correction": "rad", "spring_constant": "kT/Å²"}


def write_posterior(path: pathlib.Path, local_draws: dict, global_draws: dict) -> None:
    """`posterior.nc`: ArviZ InferenceData; local variables have dims (chain, draw, particle, ...);
    variables with physical units carry them in `attrs["units"]`."""
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
