"""cryoSPARC `.cs` particle tables (numpy structured arrays, read with `allow_pickle=False`).

Fields used: `blob/path` (leading `>` stripped; resolved against `datadir` or the `.cs` folder,
falling back to the bare file name), `blob/idx` (0-based), `blob/shape`, `blob/psize_A`;
`ctf/df1_A`, `ctf/df2_A`, `ctf/df_angle_rad`, `ctf/accel_kv`, `ctf/cs_mm`, `ctf/amp_contrast`,
`ctf/phase_shift_rad` (default 0), `ctf/exp_group_id` (optics group); when present,
`ctf/bfactor` (Å², RELION's `rlnCtfBfactor`, as pyem's csparc2star maps it), `ctf/scale` (the
CTF's scale, RELION's `rlnCtfScalefactor`) and `ctf/tilt_A` (`C_s sin τ` in Å, converted to
RELION's beam tilt `τ = arcsin(tilt_A / C_s)` in mrad as pyem's `cryosparc_2_cs_ctf_parameters`
does); `alignments3D/pose` (rotation vector, `A = axis_angle_to_matrix(pose).T`) and
`alignments3D/shift` (pixels, sign of RELION's origin: `shifts_in_angstroms = -shift * blob/psize_A`).
Particles may differ in `blob/psize_A` when the table has a CTF: each pixel size is its own optics
group and the images are resampled to the finest when read (as for RELION optics groups).
Refused when not all zero, for want of a documented conversion to RELION's terms: `ctf/shift_A`,
`ctf/trefoil_A`, `ctf/tetra_A` and `ctf/anisomag`. Other fields are not kept.
"""

import os
import pathlib

import numpy as np

from ..conventions import axis_angle_to_matrix, matrix_to_axis_angle
from ._dataset import PIXEL_SIZE_TOLERANCE, OpticsGroup, ParticleDataset, consistent_optics, group_optics, relative_path
from ._errors import InputError
from ._mrc import ImageStacks

_REQUIRED = ("blob/path", "blob/idx", "blob/shape", "blob/psize_A")
_CTF_REQUIRED = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")
_UNCONVERTED = {"ctf/shift_A": 2, "ctf/trefoil_A": 2, "ctf/tetra_A": 4, "ctf/anisomag": 4}
"""cryoSPARC's higher-order aberration fields (and their widths) that are accepted only when zero."""


def _beam_tilt(table: np.ndarray, path: pathlib.Path, cs_mm: np.ndarray) -> np.ndarray:
    """`(n, 2)` RELION beam tilt (mrad) from `ctf/tilt_A` = `C_s sin τ` (Å), zeros without the field."""
    if "ctf/tilt_A" not in _names(table):
        return np.zeros((len(table), 2))
    tilt = _field(table, "ctf/tilt_A", path, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tilt == 0, 0.0, tilt / (cs_mm[:, None] * 1e7))
    bad = ~(np.abs(ratio) <= 1).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: field ctf/tilt_A: row {row + 1} is {tilt[row].tolist()} Å, more than C_s = {cs_mm[row]:g} mm allows")
    return np.arcsin(ratio) * 1e3


def _refuse_unconverted_aberrations(table: np.ndarray, path: pathlib.Path) -> None:
    for name, width in _UNCONVERTED.items():
        if name in _names(table):
            values = _field(table, name, path, width)
            nonzero = np.any(values != 0, axis=1)
            if nonzero.any():
                row = int(np.flatnonzero(nonzero)[0])
                raise InputError(
                    f"{path}: field {name}: row {row + 1} is {values[row].tolist()}; cryoSPARC's {name.split('/')[1]} "
                    "aberration is not converted to RELION's terms, so it cannot be modelled (refit without it)"
                )


def _load_table(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        table = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise InputError(f"{path}: table: not a cryoSPARC .cs file (a numpy structured array without Python objects)") from None
    if not isinstance(table, np.ndarray) or table.dtype.names is None or table.ndim != 1:
        raise InputError(f"{path}: table: not a cryoSPARC structured array")
    if len(table) == 0:
        raise InputError(f"{path}: table: no particles")
    return table


def _names(table: np.ndarray) -> tuple[str, ...]:
    """The fields of a structured array (`_load_table` refuses arrays without)."""
    return table.dtype.names or ()


def _field(table: np.ndarray, name: str, path: pathlib.Path, width: int | None = None) -> np.ndarray:
    if name not in _names(table):
        raise InputError(f"{path}: field {name}: missing")
    try:
        values = np.asarray(table[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: field {name}: not numeric") from None
    expected = (len(table),) if width is None else (len(table), width)
    if values.shape != expected:
        raise InputError(f"{path}: field {name}: shape {values.shape}, expected {expected}")
    bad = ~np.isfinite(values.reshape(len(table), -1)).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: field {name}: row {int(np.flatnonzero(bad)[0]) + 1} is not finite")
    return values


def _whole_numbers(values: np.ndarray, path: pathlib.Path, name: str) -> np.ndarray:
    """`values` (finite floats) that must be whole numbers, as they are (`1.7` is refused, not truncated)."""
    fractional = values != np.round(values)
    if fractional.any():
        row = int(np.flatnonzero(fractional)[0])
        raise InputError(f"{path}: field {name}: row {row + 1} is {values[row]:g}, not a whole number")
    return values


def _decoded(raw_paths: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """`blob/path` bytes as text, naming the first row that is not UTF-8."""
    try:
        return np.char.decode(raw_paths, "utf-8")
    except UnicodeDecodeError:
        for row, raw in enumerate(raw_paths.tolist()):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: field blob/path: row {row + 1} is not UTF-8 text ({raw!r})") from None
        raise InputError(f"{path}: field blob/path: not UTF-8 text") from None


def read_cryosparc(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> ParticleDataset:
    """Read a cryoSPARC particle `.cs` file without touching the image stacks.

    **Arguments:**

    - `path`: the `.cs` file.
    - `datadir`: folder against which `blob/path` is resolved instead of the `.cs` file's folder.

    **Returns:**

    A `ParticleDataset` in atomicspi's conventions. Raises `InputError` naming the file and field.
    """
    path = pathlib.Path(path)
    base = pathlib.Path(datadir) if datadir is not None else path.parent
    table = _load_table(path)
    for name in _REQUIRED:
        if name not in _names(table):
            raise InputError(f"{path}: field {name}: missing")
    n = len(table)
    raw_paths = table["blob/path"]
    if raw_paths.dtype.kind not in "SU":
        raise InputError(f"{path}: field blob/path: not text")
    texts = _decoded(raw_paths, path) if raw_paths.dtype.kind == "S" else raw_paths
    texts = np.char.lstrip(texts.astype(str), ">")
    uniques, codes = np.unique(texts, return_inverse=True)
    stack_paths = []
    for name in uniques:
        relative = pathlib.Path(str(name))
        candidates = [base / relative, base / relative.name]
        stack_paths.append(next((c for c in candidates if c.exists()), candidates[0]))
    indices = _whole_numbers(_field(table, "blob/idx", path), path, "blob/idx")
    if np.any(indices < 0):
        raise InputError(f"{path}: field blob/idx: negative index")
    images = ImageStacks(stack_paths, codes.reshape(-1), indices.astype(np.int64), path, "blob/path")

    shapes = _field(table, "blob/shape", path, 2).astype(np.int64)
    distinct = np.unique(shapes, axis=0)
    if len(distinct) > 1:
        raise InputError(f"{path}: field blob/shape: particles have different box sizes {distinct.tolist()[:4]}")
    if distinct[0, 0] != distinct[0, 1] or distinct[0, 0] <= 0:
        raise InputError(f"{path}: field blob/shape: images {distinct[0].tolist()} are not square")
    box_size = int(distinct[0, 0])
    pixel_sizes = _field(table, "blob/psize_A", path)
    if not np.all(pixel_sizes > 0):
        row = int(np.flatnonzero(~(pixel_sizes > 0))[0])
        raise InputError(f"{path}: field blob/psize_A: row {row + 1} is {pixel_sizes[row]:g}, not a positive pixel size")
    mixed = np.ptp(pixel_sizes) > PIXEL_SIZE_TOLERANCE * abs(pixel_sizes[0])
    if mixed and not all(name in _names(table) for name in _CTF_REQUIRED):
        raise InputError(f"{path}: field blob/psize_A: particles disagree in pixel size ({np.min(pixel_sizes):g} to {np.max(pixel_sizes):g} Å)")
    # mixed pixel sizes (with a CTF): one optics group per pixel size, resampled to the finest on reading
    pixel_size = float(np.min(pixel_sizes)) if mixed else float(pixel_sizes[0])

    ctf = None
    labels = _whole_numbers(_field(table, "ctf/exp_group_id", path), path, "ctf/exp_group_id") if "ctf/exp_group_id" in _names(table) else np.ones(n)
    if any(name in _names(table) for name in _CTF_REQUIRED):
        values = {name: _field(table, name, path) for name in _CTF_REQUIRED}
        outside = (values["ctf/amp_contrast"] < 0) | (values["ctf/amp_contrast"] > 1)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise InputError(f"{path}: field ctf/amp_contrast: row {row + 1} is {values['ctf/amp_contrast'][row]:g}, not between 0 and 1")
        if np.any(values["ctf/accel_kv"] <= 0):
            raise InputError(f"{path}: field ctf/accel_kv: row {int(np.flatnonzero(values['ctf/accel_kv'] <= 0)[0]) + 1} is not positive")
        _refuse_unconverted_aberrations(table, path)
        phase = _field(table, "ctf/phase_shift_rad", path) if "ctf/phase_shift_rad" in _names(table) else np.zeros(n)
        ctf = {
            "defocus_u_in_angstroms": values["ctf/df1_A"],
            "defocus_v_in_angstroms": values["ctf/df2_A"],
            "astigmatism_angle_in_degrees": np.rad2deg(values["ctf/df_angle_rad"]),
            "voltage_in_kilovolts": values["ctf/accel_kv"],
            "spherical_aberration_in_millimeters": values["ctf/cs_mm"],
            "amplitude_contrast_ratio": values["ctf/amp_contrast"],
            "phase_shift_in_degrees": np.rad2deg(phase),
        }
        for field, name in (("ctf/bfactor", "b_factor_in_angstroms_squared"), ("ctf/scale", "scale")):
            if field in _names(table):
                ctf[name] = _field(table, field, path)
        groups, group_indices = group_optics(
            labels,
            {int(label): f"exposureGroup{int(label)}" for label in np.unique(labels)},
            pixel_size,
            box_size,
            ctf["voltage_in_kilovolts"],
            ctf["spherical_aberration_in_millimeters"],
            ctf["amplitude_contrast_ratio"],
            _beam_tilt(table, path, ctf["spherical_aberration_in_millimeters"]),
            pixel_sizes_in_angstroms=pixel_sizes if mixed else None,
        )
    else:
        groups = (OpticsGroup(1, "opticsGroup1", pixel_size, box_size, np.nan, np.nan, np.nan),)
        group_indices = np.zeros(n, dtype=np.int64)

    rotations = shifts = None
    if "alignments3D/pose" in _names(table):
        pose = _field(table, "alignments3D/pose", path, 3)
        rotations = np.swapaxes(np.asarray(axis_angle_to_matrix(pose), dtype=np.float64), -1, -2)
        shifts = -_field(table, "alignments3D/shift", path, 2) * (pixel_sizes[:, None] if mixed else pixel_size)
    return ParticleDataset(
        image_stacks=images,
        pixel_size_in_angstroms=pixel_size,
        box_size=box_size,
        ctf=ctf,
        optics_groups=tuple(groups),
        optics_group_indices=np.asarray(group_indices, dtype=np.int64),
        rotations=rotations,
        shifts_in_angstroms=shifts,
        extra_columns={},
        source=path,
    )


def write_cryosparc(
    path: str | os.PathLike, dataset: ParticleDataset, stack_path: str | os.PathLike | None = None
) -> pathlib.Path:
    """Write particles as a cryoSPARC `.cs` table.

    **Arguments:**

    - `path`: the file to write (overwritten; written as given, no `.npy` added).
    - `dataset`: a `ParticleDataset`.
    - `stack_path`: when given, the images are copied there and `blob/path` refers to it;
      otherwise to the dataset's stacks. Paths are written relative to the `.cs` file's folder.

    **Returns:**

    The path written. Beam tilt is written as `ctf/tilt_A` (`C_s sin τ`), the B-factor and scale
    as `ctf/bfactor` and `ctf/scale` when the dataset has them; Zernike terms and extra RELION
    columns are not written.
    """
    path = pathlib.Path(path)
    if dataset.pixel_size_in_angstroms is None or dataset.box_size is None:
        dataset = dataset.check_images()
    dataset = consistent_optics(dataset)
    assert dataset.pixel_size_in_angstroms is not None  # check_images found it (or raised)
    n = len(dataset)
    # the pixel size of the images the file refers to: each group's own for the original stacks,
    # the dataset's (common grid) for copied images
    pixel_size = np.array(
        [dataset.pixel_size_in_angstroms if g.pixel_size_in_angstroms is None else g.pixel_size_in_angstroms for g in dataset.optics_groups],
        dtype=np.float64,
    )[dataset.optics_group_indices]
    if stack_path is not None:
        pixel_size = np.full(n, dataset.pixel_size_in_angstroms)
        stack_path = dataset.write_images(stack_path)
        paths = np.full(n, relative_path(stack_path, path.parent))
        indices = np.arange(n)
    else:
        stacks = np.array([relative_path(p, path.parent) for p in dataset.image_stacks.stack_paths])
        paths = stacks[dataset.image_stacks.stack_numbers]
        indices = dataset.image_stacks.image_indices
    encoded = np.char.encode(paths.astype(str), "utf-8")
    fields = [
        ("uid", "<u8"),
        ("blob/path", f"S{max(1, encoded.dtype.itemsize)}"),
        ("blob/idx", "<u4"),
        ("blob/shape", "<u4", (2,)),
        ("blob/psize_A", "<f4"),
        ("blob/sign", "<f4"),
    ]
    if dataset.ctf is not None:
        fields += [
            ("ctf/type", "S9"),
            ("ctf/exp_group_id", "<u4"),
            ("ctf/accel_kv", "<f4"),
            ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"),
        ]
        fields += [(field, "<f4") for field, name in (("ctf/scale", "scale"), ("ctf/bfactor", "b_factor_in_angstroms_squared")) if name in dataset.ctf]
        has_tilt = bool(np.any(dataset.beam_tilt_in_milliradians != 0))
        if has_tilt:
            fields.append(("ctf/tilt_A", "<f4", (2,)))
    if dataset.rotations is not None:
        fields += [("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/psize_A", "<f4")]
    table = np.zeros(n, dtype=fields)
    table["uid"] = np.arange(n, dtype=np.uint64)
    table["blob/path"] = encoded
    table["blob/idx"] = indices
    table["blob/shape"] = dataset.box_size
    table["blob/psize_A"] = pixel_size
    table["blob/sign"] = -1.0
    if dataset.ctf is not None:
        table["ctf/type"] = b"imported"
        table["ctf/exp_group_id"] = np.array([g.number for g in dataset.optics_groups])[dataset.optics_group_indices]
        table["ctf/accel_kv"] = dataset.ctf["voltage_in_kilovolts"]
        table["ctf/cs_mm"] = dataset.ctf["spherical_aberration_in_millimeters"]
        table["ctf/amp_contrast"] = dataset.ctf["amplitude_contrast_ratio"]
        table["ctf/df1_A"] = dataset.ctf["defocus_u_in_angstroms"]
        table["ctf/df2_A"] = dataset.ctf["defocus_v_in_angstroms"]
        table["ctf/df_angle_rad"] = np.deg2rad(dataset.ctf["astigmatism_angle_in_degrees"])
        table["ctf/phase_shift_rad"] = np.deg2rad(dataset.ctf["phase_shift_in_degrees"])
        for field, name in (("ctf/scale", "scale"), ("ctf/bfactor", "b_factor_in_angstroms_squared")):
            if name in dataset.ctf:
                table[field] = dataset.ctf[name]
        if has_tilt:
            cs_in_angstroms = dataset.ctf["spherical_aberration_in_millimeters"][:, None] * 1e7
            table["ctf/tilt_A"] = cs_in_angstroms * np.sin(dataset.beam_tilt_in_milliradians * 1e-3)
    if dataset.rotations is not None:
        shifts = dataset.shifts_in_angstroms if dataset.shifts_in_angstroms is not None else np.zeros((n, 2))
        table["alignments3D/pose"] = np.asarray(matrix_to_axis_angle(np.swapaxes(dataset.rotations, -1, -2)))
        table["alignments3D/shift"] = -shifts / pixel_size[:, None]
        table["alignments3D/psize_A"] = pixel_size
    with open(path, "wb") as file:
        np.save(file, table, allow_pickle=False)
    return path
