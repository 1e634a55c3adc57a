"""Per-particle posterior draws of collective variables, read from an inference output folder.

The folder (written by `python -m atomicspi.infer`) holds `posterior.nc` (ArviZ InferenceData whose
`posterior` group has per-particle variables with dims (chain, draw, particle, ...), e.g.
`amplitudes` of normal modes or `z` of a decoder's latent), `run.json` (with
`samples_per_particle`), `topology.pdb` and `ensemble_samples.dcd` (S posterior draws of the atomic
model per particle, particle-major) and `ensemble_mean.dcd` (posterior mean per particle).

Collective-variable specifications (indices 0-based):

- `mode:K` — amplitude of normal mode K (posterior variable `amplitudes`);
- `latent:K` — component K of the latent `z`;
- `pc:K` — principal component K of the latent (`z`, else `amplitudes`) over all draws;
- `distance:I,J` — distance between atoms I and J of `topology.pdb`, in Å, on `ensemble_samples.dcd`;
- `angle:I,J,K` — angle I–J–K in degrees, on `ensemble_samples.dcd`;
- `rmsd:PATH` — Cα RMSD in Å (after optimal superposition) to the structure in PATH (read by
  mdtraj; Cα atoms matched in order), on `ensemble_samples.dcd`;
- `path:0` — position in Å along the principal curve of a `deformation` run with `path_nodes`
  (posterior variable `path_position_in_angstroms`: each particle's exact posterior along the curve);
  the default where the posterior has it;
- `motion:K` — position in Å along the population's principal motion K: the principal axes of the
  per-particle posterior-mean Cα displacements (`ensemble_mean.dcd`, pose frame) from the reference
  (`topology.pdb`); a draw's position is its Cα displacement projected on the axis over √(number of
  Cα), i.e. the Cα RMSD of the displacement's component along the motion, oriented so that the
  population's mean position is positive (the reference sits at 0). The default for every run that
  wrote its ensembles.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from .._errors import InputError
from .._quiet import quiet_c_stdout

__all__ = [
    "RunCollectiveVariables",
    "default_collective_variable",
    "load_run_collective_variables",
    "samples_layout",
]

_POSTERIOR_KINDS = {"mode": "amplitudes", "latent": "z", "path": "path_position_in_angstroms"}
_STRUCTURAL_KINDS = ("distance", "angle", "rmsd", "motion")


@dataclasses.dataclass(frozen=True)
class RunCollectiveVariables:
    """Draws of 1 or 2 collective variables for every particle of a run.

    **Fields:**

    - `draws`: `(n_particles, n_draws)` for one CV, `(n_particles, n_draws, 2)` for two.
    - `names`, `units`: per CV (unit `""` when dimensionless or unknown).
    - `specifications`: the `--cv` strings.
    - `frames_are_samples`: True when draw s of particle i is frame `i * n_draws + s` of
      `ensemble_samples.dcd` (structural CVs only).
    """

    draws: np.ndarray
    names: tuple[str, ...]
    units: tuple[str, ...]
    specifications: tuple[str, ...]
    frames_are_samples: bool


def default_collective_variable(output_dir: str | pathlib.Path) -> str:
    """`path:0` (position along the principal curve, Å) when the posterior has it (`path_nodes`);
    else `motion:0` (position along the principal motion, Å) when the run wrote its ensembles; else
    `mode:0` when the posterior has `amplitudes`, else `pc:0` of the latent `z`."""
    output_dir = pathlib.Path(output_dir)
    if (output_dir / "posterior.nc").is_file() and "path_position_in_angstroms" in _posterior_variable_names(output_dir):
        return "path:0"
    if all((output_dir / name).is_file() for name in ("topology.pdb", "ensemble_mean.dcd", "ensemble_samples.dcd")):
        return "motion:0"
    posterior = _open_posterior(output_dir)
    if "amplitudes" in posterior:
        return "mode:0"
    if "z" in posterior:
        return "pc:0"
    raise InputError(f"{pathlib.Path(output_dir) / 'posterior.nc'}: posterior has neither 'amplitudes' nor 'z'")


def load_run_collective_variables(
    output_dir: str | pathlib.Path, cv: str | list[str] | tuple[str, ...]
) -> RunCollectiveVariables:
    """Per-particle posterior draws of 1 or 2 collective variables of an inference run.

    **Arguments:**

    - `output_dir`: the run's output folder.
    - `cv`: one specification or a list of two (see the module docstring), e.g. `"mode:0"`,
      `["distance:10,200", "rmsd:open.pdb"]`.

    **Returns:** `RunCollectiveVariables`. Raises `atomicspi.io.InputError` (one line naming the
    file and field) for a missing folder or file, or a bad specification.
    """
    output_dir = pathlib.Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: no such output folder")
    specifications = (cv,) if isinstance(cv, str) else tuple(cv)
    if len(specifications) not in (1, 2):
        raise InputError(f"--cv: give one or two collective variables, got {len(specifications)}")
    parsed = [_parse(specification) for specification in specifications]
    if any(kind in _STRUCTURAL_KINDS for kind, _ in parsed) and any(
        kind not in _STRUCTURAL_KINDS for kind, _ in parsed
    ):
        raise InputError(
            "--cv: structural (distance, angle, rmsd) and posterior (mode, latent, pc) variables come from "
            "different draws and cannot be combined"
        )
    columns, names, units = [], [], []
    for specification, (kind, argument) in zip(specifications, parsed):
        if kind in _STRUCTURAL_KINDS:
            values, name, unit = _structural(output_dir, specification, kind, argument)
        else:
            values, name, unit = _posterior_component(output_dir, specification, kind, argument)
        columns.append(values)
        names.append(name)
        units.append(unit)
    draws = columns[0] if len(columns) == 1 else np.stack(columns, axis=-1)
    return RunCollectiveVariables(
        draws=draws,
        names=tuple(names),
        units=tuple(units),
        specifications=specifications,
        frames_are_samples=parsed[0][0] in _STRUCTURAL_KINDS,
    )


def _parse(specification: str):
    kind, separator, argument = specification.partition(":")
    if not separator or not argument:
        raise InputError(f"--cv {specification!r}: expected KIND:ARGUMENT (mode:K, latent:K, pc:K, path:0, motion:K, distance:I,J, angle:I,J,K, rmsd:PATH)")
    if kind == "rmsd":
        return kind, argument
    expected = {"mode": 1, "latent": 1, "pc": 1, "path": 1, "motion": 1, "distance": 2, "angle": 3}.get(kind)
    if expected is None:
        raise InputError(f"--cv {specification!r}: unknown kind {kind!r} (mode, latent, pc, path, motion, distance, angle, rmsd)")
    try:
        indices = [int(part) for part in argument.split(",")]
    except ValueError:
        raise InputError(f"--cv {specification!r}: indices must be integers") from None
    if len(indices) != expected or min(indices) < 0:
        raise InputError(f"--cv {specification!r}: {kind} takes {expected} non-negative integer index(es)")
    return kind, indices


def _open_posterior(output_dir: pathlib.Path):
    import xarray

    path = output_dir / "posterior.nc"
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: no such output folder")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with xarray.open_dataset(path, group="posterior", engine="h5netcdf") as dataset:
            return dataset.load()
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the 'posterior' group ({str(error).splitlines()[0]})") from None


def _posterior_variable_names(output_dir: pathlib.Path) -> set[str]:
    """The names of posterior.nc's posterior variables, without reading their values."""
    import xarray

    path = output_dir / "posterior.nc"
    try:
        with xarray.open_dataset(path, group="posterior", engine="h5netcdf") as dataset:
            return {str(name) for name in dataset.data_vars}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the 'posterior' group ({str(error).splitlines()[0]})") from None


def _per_particle(posterior, name: str, path: pathlib.Path, specification: str) -> tuple[np.ndarray, str]:
    if name not in posterior:
        raise InputError(f"{path}: posterior has no variable {name!r} (needed for --cv {specification})")
    variable = posterior[name]
    if variable.dims[:3] != ("chain", "draw", "particle"):
        raise InputError(f"{path}: variable {name!r} has dims {variable.dims}, expected (chain, draw, particle, ...)")
    values = np.asarray(variable.values, dtype=float)
    values = values.reshape(values.shape[0] * values.shape[1], values.shape[2], -1).transpose(1, 0, 2)
    return values, str(variable.attrs.get("units", ""))


def _posterior_component(output_dir, specification, kind, argument):
    path = output_dir / "posterior.nc"
    posterior = _open_posterior(output_dir)
    component = argument[0]
    if kind == "pc":
        name = "z" if "z" in posterior else "amplitudes"
        values, unit = _per_particle(posterior, name, path, specification)
        values = _principal_components(values)
        label = f"PC{component} of {name}"
    else:
        name = _POSTERIOR_KINDS[kind]
        values, unit = _per_particle(posterior, name, path, specification)
        label = {"mode": f"mode {component} amplitude", "latent": f"latent z[{component}]", "path": "position along the path"}[kind]
    if component >= values.shape[-1]:
        raise InputError(f"{path}: --cv {specification}: {name!r} has only {values.shape[-1]} components")
    return values[..., component], label, unit


def _principal_components(values: np.ndarray) -> np.ndarray:
    """Project draws `(n_particles, n_draws, n_components)` on the principal axes of all draws."""
    flat = values.reshape(-1, values.shape[-1])
    centred = flat - flat.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    # A sign convention: the largest loading of each axis is positive.
    signs = np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])
    return (centred @ (axes * signs[:, None]).T).reshape(values.shape[:2] + (len(axes),))


def _samples_per_particle(output_dir: pathlib.Path) -> int:
    path = output_dir / "run.json"
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        record = json.loads(path.read_text())
        value = int(record["samples_per_particle"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{path}: field 'samples_per_particle' missing or not an integer") from None
    if value < 1:
        raise InputError(f"{path}: field 'samples_per_particle' must be positive, got {value}")
    return value


def samples_layout(output_dir: pathlib.Path) -> tuple[int, int]:
    """`(n_frames of ensemble_samples.dcd, S draws per particle)`, checked, without reading coordinates."""
    import mdtraj

    topology = output_dir / "topology.pdb"
    samples = output_dir / "ensemble_samples.dcd"
    for path in (topology, samples):
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    n_draws = _samples_per_particle(output_dir)
    try:
        with quiet_c_stdout(), mdtraj.formats.DCDTrajectoryFile(str(samples)) as handle:
            n_frames = len(handle)
    except OSError as error:
        raise InputError(f"{samples}: cannot read DCD ({str(error).splitlines()[0]})") from None
    if n_frames == 0 or n_frames % n_draws:
        raise InputError(f"{samples}: {n_frames} frames is not a positive multiple of samples_per_particle = {n_draws}")
    return n_frames, n_draws


def _load_samples(output_dir: pathlib.Path, atom_indices) -> np.ndarray:
    """Positions in Å, `(n_frames, len(atom_indices), 3)`, of the given atoms of every sample (chunked)."""
    import mdtraj

    chunks = mdtraj.iterload(
        str(output_dir / "ensemble_samples.dcd"), top=str(output_dir / "topology.pdb"), chunk=2000,
        atom_indices=np.asarray(atom_indices),
    )
    with quiet_c_stdout():  # mdtraj's DCD reader prints two lines per file opened
        return 10.0 * np.concatenate([chunk.xyz for chunk in chunks]).astype(np.float64)


def _structural(output_dir, specification, kind, argument):
    import mdtraj

    _, n_draws = samples_layout(output_dir)
    topology = mdtraj.load_topology(str(output_dir / "topology.pdb"))
    n_atoms = topology.n_atoms
    if kind == "motion":
        calpha = topology.select("name CA")
        if len(calpha) == 0:
            raise InputError(f"{output_dir / 'topology.pdb'}: no Cα atoms (needed for --cv {specification})")
        values, name = _principal_motion_positions(output_dir, calpha, argument[0], specification)
        return values.reshape(-1, n_draws), name, "Å"
    if kind in ("distance", "angle"):
        if max(argument) >= n_atoms:
            raise InputError(
                f"{output_dir / 'topology.pdb'}: --cv {specification}: atom index out of range (n_atoms = {n_atoms})"
            )
        positions = _load_samples(output_dir, argument)
        if kind == "distance":
            values = np.linalg.norm(positions[:, 1] - positions[:, 0], axis=-1)
            name, unit = f"distance atoms {argument[0]}–{argument[1]}", "Å"
        else:
            first, second = positions[:, 0] - positions[:, 1], positions[:, 2] - positions[:, 1]
            cosine = np.sum(first * second, axis=-1) / (
                np.linalg.norm(first, axis=-1) * np.linalg.norm(second, axis=-1)
            )
            values = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
            name, unit = f"angle atoms {argument[0]}–{argument[1]}–{argument[2]}", "°"
    else:
        reference_path = pathlib.Path(argument)
        if not reference_path.is_file():
            raise InputError(f"{reference_path}: file not found (--cv {specification})")
        try:
            reference = mdtraj.load(str(reference_path))
        except Exception as error:  # mdtraj raises many types for unreadable files
            raise InputError(f"{reference_path}: cannot read structure ({str(error).splitlines()[0]})") from None
        ours = topology.select("name CA")
        theirs = reference.topology.select("name CA")
        if len(ours) == 0 or len(ours) != len(theirs):
            raise InputError(
                f"{reference_path}: {len(theirs)} Cα atoms, the run's topology.pdb has {len(ours)} (must match, > 0)"
            )
        values = _superposed_rmsd(_load_samples(output_dir, ours), 10.0 * reference.xyz[0, theirs])
        name, unit = f"Cα RMSD to {reference_path.name}", "Å"
    return values.reshape(-1, n_draws), name, unit


def _principal_motion_positions(output_dir: pathlib.Path, calpha, component: int, specification: str):
    """Every sample's position (Å) along principal motion `component` of the posterior means."""
    import mdtraj

    reference = 10.0 * mdtraj.load(str(output_dir / "topology.pdb")).xyz[0, calpha].astype(np.float64)
    with quiet_c_stdout():
        means = 10.0 * mdtraj.load(str(output_dir / "ensemble_mean.dcd"), top=str(output_dir / "topology.pdb"),
                                   atom_indices=calpha).xyz.astype(np.float64)
    displacements = (means - reference).reshape(len(means), -1)
    if component >= min(displacements.shape):
        raise InputError(f"{output_dir / 'ensemble_mean.dcd'}: --cv {specification}: only {min(displacements.shape)} principal motions")
    centred = displacements - displacements.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axis = axes[component]
    scale = np.sqrt(len(calpha))
    positions = ((_load_samples(output_dir, calpha) - reference).reshape(-1, displacements.shape[1]) @ axis) / scale
    if np.mean(displacements @ axis) < 0:
        positions = -positions
    return positions, f"position along principal motion {component} (Cα)"


def _superposed_rmsd(frames: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """RMSD after optimal superposition (Kabsch, float64; mdtraj's float32 QCP is off by ~0.01 Å)."""
    frames = np.asarray(frames, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    reference = reference - reference.mean(axis=0)
    u, singular, vt = np.linalg.svd(np.einsum("fai,aj->fij", frames, reference))
    singular[:, -1] *= np.sign(np.linalg.det(u @ vt))
    squared = np.sum(frames**2, axis=(1, 2)) + np.sum(reference**2) - 2.0 * singular.sum(axis=1)
    return np.sqrt(np.clip(squared, 0.0, None) / len(reference))
