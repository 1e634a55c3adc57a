"""RELION STAR particle files: 3.0 (one block) and 3.1/4/5 (data_optics + data_particles).

Reading interprets the columns below and keeps every other particle column (`extra_columns`) and
optics column (`OpticsGroup.extra`) for writing back. Writing produces RELION 3.1 files.

- Images: `rlnImageName` = `N@path` (N from 1), path resolved against `datadir` when given, else
  against the star file's folder (falling back to the bare file name in that folder).
- Pixel size: 3.1 `rlnImagePixelSize` per optics group; 3.0 `rlnDetectorPixelSize` (µm) × 10⁴ /
  `rlnMagnification`, or `rlnImagePixelSize`, or (neither) the stacks' headers. All particles must
  share one box. In 3.1 the optics groups may differ in pixel size: the dataset's pixel size is
  the finest group's, and the other groups' images are resampled to it when read (band-limited
  interpolation, `resample_to_pixel_size`); each group keeps its own pixel size, which is written
  back when the star file refers to the original stacks. 3.0 files need one pixel size.
- CTF: `rlnDefocusU`, `rlnDefocusV`, `rlnDefocusAngle` (°), `rlnPhaseShift` (°, default 0),
  `rlnVoltage` (kV), `rlnSphericalAberration` (mm), `rlnAmplitudeContrast` (default 0.1, with a
  warning, as RELION and cryoDRGN assume), and, when the file has them, `rlnCtfBfactor` (Å²) and
  `rlnCtfScalefactor`. As RELION's `CTF::readByGroup` reads them, each comes from the particle's
  row when the particle table has the column, else from its optics group (3.1), else the default.
- Refused (one-line `InputError` naming the column), because the image model does not describe
  them: an anisotropic magnification matrix `rlnMagMat00/01/10/11` other than the identity, and
  images flagged `rlnCtfDataAreCtfPremultiplied`, `rlnCtfDataArePhaseFlipped` or
  `rlnCtfDataAreCtfCorrected` = 1 (such images no longer have white noise and the raw CTF).
- Poses: `rlnAngleRot`, `rlnAngleTilt`, `rlnAnglePsi` (°, RELION ZYZ) and
  `rlnOriginXAngst`/`rlnOriginYAngst` (3.1) or `rlnOriginX`/`rlnOriginY` in pixels (3.0);
  `shifts_in_angstroms = -origin`.
- Beam tilt `rlnBeamTiltX`/`Y` (mrad) and `rlnOddZernike`/`rlnEvenZernike` are kept per optics group.
"""

import os
import pathlib
import warnings
from typing import Any

import numpy as np
import pandas as pd
import starfile

from ..conventions import euler_angles_to_matrix, matrix_to_euler_angles
from ._dataset import (
    OpticsGroup,
    ParticleDataset,
    consistent_optics,
    group_optics,
    particle_dataset_from_arrays,
    relative_path,
)
from ._errors import InputError
from ._mrc import ImageStacks, write_stack

DEFAULT_AMPLITUDE_CONTRAST = 0.1

_PARTICLE_COLUMNS = {
    "rlnImageName",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnOpticsGroup",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnOriginX",
    "rlnOriginY",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
}
_OPTICS_COLUMNS = {
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnOddZernike",
    "rlnEvenZernike",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnPhaseShift",
}
_RELION30_OPTICS_COLUMNS = _OPTICS_COLUMNS | {"rlnDetectorPixelSize", "rlnMagnification"}


def _numeric(table: pd.DataFrame, column: str, path: pathlib.Path, block: str) -> np.ndarray:
    """A column as float64, with a one-line error naming the first bad row."""
    if column not in table.columns:
        raise InputError(f"{path}: field {column}: missing from data_{block}")
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = raw.iloc[row]
        if pd.isna(value):  # a short row, or a literal nan (the parser reads both as NaN): the file tells
            written = _written_values(path, block, row)
            position = list(table.columns).index(column)
            if written is None:
                raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} has no value or is NaN")
            if position < len(written):
                raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {written[position]!r}, not a finite number")
            raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} has no value (short row)")
        raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {str(value)!r}, not a finite number")
    return values


def _integers(table: pd.DataFrame, column: str, path: pathlib.Path, block: str) -> np.ndarray:
    """A column of whole numbers as int64 (`1.7` is refused, not truncated)."""
    values = _numeric(table, column, path, block)
    fractional = values != np.round(values)
    if fractional.any():
        row = int(np.flatnonzero(fractional)[0])
        raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {values[row]:g}, not a whole number")
    return values.astype(np.int64)


def _check_range(
    values: np.ndarray, path: pathlib.Path, column: str, block: str, low: float, high: float
) -> np.ndarray:
    """Refuse values outside [low, high], naming the first row that is."""
    outside = (values < low) | (values > high)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {values[row]:g}, not between {low:g} and {high:g}")
    return values


def _written_values(path: pathlib.Path, block: str, row: int) -> list[str] | None:
    """The values of data row `row` (from 0) of the loop in `data_<block>`, as written in the file
    (whitespace-separated), or None when the row cannot be found (e.g. a block that is no loop)."""
    in_block = in_loop = False
    seen = 0
    with open(path, errors="replace") as file:
        for line in file:
            text = line.strip()
            if text.startswith("data_"):
                if in_block:
                    return None
                in_block, in_loop = text == f"data_{block}", False
            elif not in_block or not text or text.startswith("#"):
                continue
            elif text == "loop_":
                in_loop = True
            elif in_loop and not text.startswith("_"):
                if seen == row:
                    return text.split()
                seen += 1
    return None


_MAGNIFICATION_COLUMNS = ("rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11")
_IDENTITY = (1.0, 0.0, 0.0, 1.0)
_PROCESSED_IMAGE_FLAGS = {
    "rlnCtfDataAreCtfPremultiplied": "premultiplied by their CTF",
    "rlnCtfDataArePhaseFlipped": "phase-flipped",
    "rlnCtfDataAreCtfCorrected": "CTF-corrected",
}
_MAGNIFICATION_TOLERANCE = 1e-6
"""RELION writes the matrix with 6 decimals: an identity matrix reads back within 1e-6."""


def _refuse_unmodelled_optics(table: pd.DataFrame, path: pathlib.Path, block: str) -> None:
    """Refuse, naming the column and the first row, an anisotropic magnification matrix and images
    whose CTF has already been applied or corrected (the image model describes neither)."""
    present = [c for c in _MAGNIFICATION_COLUMNS if c in table.columns]
    if present:
        matrix = np.column_stack([
            _numeric(table, c, path, block) if c in table.columns else np.full(len(table), identity)
            for c, identity in zip(_MAGNIFICATION_COLUMNS, _IDENTITY)
        ])
        off = np.abs(matrix - np.array(_IDENTITY)) > _MAGNIFICATION_TOLERANCE
        if off.any():
            bad_row, bad_entry = (int(i[0]) for i in np.nonzero(off))
            raise InputError(
                f"{path}: field {_MAGNIFICATION_COLUMNS[bad_entry]}: row {bad_row + 1} of data_{block} sets an anisotropic "
                f"magnification matrix {matrix[bad_row].round(6).tolist()}, which is not modelled (the images would have to "
                "be resampled to isotropic magnification first)"
            )
    for flag, what in _PROCESSED_IMAGE_FLAGS.items():
        if flag in table.columns:
            flags = _numeric(table, flag, path, block)
            if np.any(flags != 0):
                row = int(np.flatnonzero(flags != 0)[0])
                raise InputError(
                    f"{path}: field {flag}: row {row + 1} of data_{block} says the images are {what}, which is "
                    "not modelled (give the images as extracted, with their raw CTF)"
                )


def _uniform(values: np.ndarray, path: pathlib.Path, field: str, what: str) -> float:
    if values.size and np.ptp(values) > 1e-4 * max(abs(float(values[0])), 1.0):
        raise InputError(f"{path}: field {field}: particles disagree in {what} ({sorted(set(np.round(values, 6).tolist()))[:4]})")
    return float(values[0])


def _resolve_stacks(names: pd.Series, path: pathlib.Path, datadir: pathlib.Path | None):
    """Split `N@file` names into stack numbers, indices and resolved stack paths."""
    text = names.astype(str)
    parts = text.str.partition("@")
    has_at = parts[1] == "@"
    numbers_text = parts[0].where(has_at, "1")
    files = parts[2].where(has_at, text)
    numbers = pd.to_numeric(numbers_text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers)) | (files.str.len() == 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: field rlnImageName: row {row + 1} is {text.iloc[row]!r}, not N@stack with N >= 1")
    codes, uniques = pd.factorize(files)
    base = datadir if datadir is not None else path.parent
    stack_paths = []
    for name in uniques:
        relative = pathlib.Path(name)
        candidates = [base / relative, base / relative.name]
        if relative.is_absolute() and datadir is None:
            candidates = [relative]
        stack_paths.append(next((c for c in candidates if c.exists()), candidates[0]))
    return stack_paths, codes, numbers.astype(np.int64) - 1


def _parse_zernike(text, path: pathlib.Path, field: str) -> tuple[float, ...]:
    text = str(text).strip()
    if text in ("", "[]", "nan", "<NA>"):
        return ()
    try:
        values = tuple(float(x) for x in text.strip("[]").split(",") if x.strip())
    except ValueError:
        raise InputError(f"{path}: field {field}: {text!r} is not a list of numbers") from None
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: field {field}: {text!r} holds a value that is not a finite number")
    return values


def _zernike_column(table: pd.DataFrame, column: str, path: pathlib.Path) -> np.ndarray:
    """Per-particle Zernike lists as an `(n, k)` array, padded with zeros to the longest."""
    rows = [_parse_zernike(text, path, column) for text in table[column].tolist()]
    padded = np.zeros((len(rows), max((len(r) for r in rows), default=0)))
    for i, coefficients in enumerate(rows):
        padded[i, : len(coefficients)] = coefficients
    return padded


def _read_blocks(path: pathlib.Path) -> dict[str, pd.DataFrame]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # the parser's own errors: report as bad input
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: STAR syntax: {first}") from None
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            duplicated = block.columns[block.columns.duplicated()]
            if len(duplicated):
                raise InputError(f"{path}: field {duplicated[0]}: column appears twice in data_{name}")
    return blocks


def _particle_block(blocks: dict, path: pathlib.Path) -> tuple[str, pd.DataFrame]:
    loops = {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}
    if "particles" in loops:
        name = "particles"
    elif len(loops) == 1:
        name = next(iter(loops))
    else:
        candidates = [n for n, b in loops.items() if "rlnImageName" in b.columns and n != "optics"]
        if len(candidates) != 1:
            raise InputError(f"{path}: field data_particles: no single particle table among blocks {list(blocks)}")
        name = candidates[0]
    table = loops[name].reset_index(drop=True)
    if "rlnImageName" not in table.columns:
        raise InputError(f"{path}: field rlnImageName: missing from data_{name}")
    if len(table) == 0:
        raise InputError(f"{path}: field data_{name}: no particles")
    return name, table


def read_relion_star(path: str | os.PathLike, datadir: str | os.PathLike | None = None) -> ParticleDataset:
    """Read a RELION particle STAR file (3.0, 3.1, 4, 5) without touching the image stacks.

    **Arguments:**

    - `path`: the `.star` file.
    - `datadir`: folder against which image paths are resolved instead of the star file's folder.

    **Returns:**

    A `ParticleDataset` (call `check_images()`, or use `load_particles`, to check the stacks).
    Raises `InputError` naming the file and the field on any inconsistency.
    """
    path = pathlib.Path(path)
    datadir = None if datadir is None else pathlib.Path(datadir)
    blocks = _read_blocks(path)
    block_name, table = _particle_block(blocks, path)
    optics = blocks.get("optics")
    if optics is not None and not isinstance(optics, pd.DataFrame):
        optics = pd.DataFrame([optics])
    if optics is None and "rlnOpticsGroup" in table.columns and "rlnOriginXAngst" in table.columns:
        raise InputError(f"{path}: field data_optics: RELION 3.1 particles (rlnOpticsGroup) without an optics table")
    n = len(table)
    stack_paths, stack_numbers, image_indices = _resolve_stacks(table["rlnImageName"], path, datadir)
    images = ImageStacks(stack_paths, stack_numbers, image_indices, path, "rlnImageName")
    has_ctf = "rlnDefocusU" in table.columns

    _refuse_unmodelled_optics(table, path, block_name)
    if optics is not None:
        _refuse_unmodelled_optics(optics.reset_index(drop=True), path, "optics")

    pixel_size: float | None
    if optics is not None:
        groups, group_indices = _optics_groups_31(optics, table, path, block_name)
        used = np.unique(group_indices)
        pixel_sizes = np.array([groups[i].pixel_size_in_angstroms for i in used], dtype=np.float64)
        if np.isnan(pixel_sizes).any():
            raise InputError(f"{path}: field rlnImagePixelSize: missing from data_optics")
        if not np.all(pixel_sizes > 0):
            bad = float(pixel_sizes[~(pixel_sizes > 0)][0])
            raise InputError(f"{path}: field rlnImagePixelSize: pixel size must be positive, got {bad!r}")
        # groups with a coarser pixel are resampled to the finest on reading (ParticleDataset.images)
        pixel_size = float(pixel_sizes.min())
        boxes = {groups[i].box_size for i in used}
        if len(boxes) > 1:
            raise InputError(f"{path}: field rlnImageSize: optics groups have different box sizes {sorted(boxes)}")
        box_size = boxes.pop()
        table_of = lambda attribute: np.array([getattr(g, attribute) for g in groups])[group_indices]  # noqa: E731
        # RELION's CTF::readByGroup: a particle's own column wins over its optics group's
        overridden = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast") if c in table.columns]
        voltage = _numeric(table, "rlnVoltage", path, block_name) if "rlnVoltage" in overridden else table_of("voltage_in_kilovolts")
        cs = _numeric(table, "rlnSphericalAberration", path, block_name) if "rlnSphericalAberration" in overridden else table_of("spherical_aberration_in_millimeters")
        q0 = _amplitude_contrast(table, path, block_name) if "rlnAmplitudeContrast" in overridden else table_of("amplitude_contrast_ratio")
        if has_ctf and (np.isnan(voltage).any() or np.isnan(cs).any()):
            missing = "rlnVoltage" if np.isnan(voltage).any() else "rlnSphericalAberration"
            raise InputError(f"{path}: field {missing}: missing from data_optics")
        consumed = _PARTICLE_COLUMNS | set(overridden)
    else:
        pixel_size = _pixel_size_30(table, path, block_name)
        box_size = int(_uniform(_integers(table, "rlnImageSize", path, block_name), path, "rlnImageSize", "box size")) if "rlnImageSize" in table.columns else None
        voltage = cs = q0 = None
        if has_ctf:
            voltage = _numeric(table, "rlnVoltage", path, block_name)
            cs = _numeric(table, "rlnSphericalAberration", path, block_name)
            q0 = _amplitude_contrast(table, path, block_name)
            tilt = np.zeros((n, 2))
            if "rlnBeamTiltX" in table.columns or "rlnBeamTiltY" in table.columns:
                tilt = np.column_stack([_numeric(table, c, path, block_name) for c in ("rlnBeamTiltX", "rlnBeamTiltY")])
            zernike = {c: _zernike_column(table, c, path) for c in ("rlnOddZernike", "rlnEvenZernike") if c in table.columns}
            groups, group_indices = group_optics(
                np.ones(n), {}, pixel_size, box_size, voltage, cs, q0, tilt,
                odd_zernike=zernike.get("rlnOddZernike"), even_zernike=zernike.get("rlnEvenZernike"),
            )
        else:
            groups = (OpticsGroup(1, "opticsGroup1", pixel_size, box_size, np.nan, np.nan, np.nan),)
            group_indices = np.zeros(n, dtype=np.int64)
        consumed = _PARTICLE_COLUMNS | _RELION30_OPTICS_COLUMNS | {"rlnImageSize"}

    ctf = None
    if has_ctf:
        by_group = None if optics is None else (optics.reset_index(drop=True), group_indices)
        phase = _particle_or_group(table, by_group, "rlnPhaseShift", path, block_name)
        ctf = {
            "defocus_u_in_angstroms": _numeric(table, "rlnDefocusU", path, block_name),
            "defocus_v_in_angstroms": _numeric(table, "rlnDefocusV", path, block_name),
            "astigmatism_angle_in_degrees": _numeric(table, "rlnDefocusAngle", path, block_name),
            "voltage_in_kilovolts": np.asarray(voltage, dtype=np.float64),
            "spherical_aberration_in_millimeters": np.asarray(cs, dtype=np.float64),
            "amplitude_contrast_ratio": np.asarray(q0, dtype=np.float64),
            "phase_shift_in_degrees": np.zeros(n) if phase is None else phase,
        }
        for column, name in (("rlnCtfBfactor", "b_factor_in_angstroms_squared"), ("rlnCtfScalefactor", "scale")):
            values = _particle_or_group(table, by_group, column, path, block_name)
            if values is not None:
                ctf[name] = values
        if np.any(ctf["voltage_in_kilovolts"] <= 0):
            raise InputError(f"{path}: field rlnVoltage: must be positive")

    rotations, shifts = _poses(table, path, block_name, pixel_size, optics is not None)
    extra = {c: table[c].to_numpy() for c in table.columns if c not in consumed}
    return ParticleDataset(
        image_stacks=images,
        pixel_size_in_angstroms=pixel_size,
        box_size=box_size,
        ctf=ctf,
        optics_groups=tuple(groups),
        optics_group_indices=np.asarray(group_indices, dtype=np.int64),
        rotations=rotations,
        shifts_in_angstroms=shifts,
        extra_columns=extra,
        source=path,
    )


def _particle_or_group(table: pd.DataFrame, by_group, column: str, path: pathlib.Path, block: str) -> np.ndarray | None:
    """`(n,)` values of `column` as RELION's `CTF::readValue` finds them: the particle's row when the
    particle table has the column, else its optics group's (`by_group` = (optics table, group index
    of each particle), or None for a file without one), else None."""
    if column in table.columns:
        return _numeric(table, column, path, block)
    if by_group is not None and column in by_group[0].columns:
        optics, group_indices = by_group
        return _numeric(optics, column, path, "optics")[group_indices]
    return None


def _amplitude_contrast(table: pd.DataFrame, path: pathlib.Path, block: str) -> np.ndarray:
    if "rlnAmplitudeContrast" in table.columns:
        return _check_range(_numeric(table, "rlnAmplitudeContrast", path, block), path, "rlnAmplitudeContrast", block, 0.0, 1.0)
    warnings.warn(
        f"{path}: rlnAmplitudeContrast absent, using {DEFAULT_AMPLITUDE_CONTRAST}", stacklevel=3
    )
    return np.full(len(table), DEFAULT_AMPLITUDE_CONTRAST)


def _pixel_size_30(table: pd.DataFrame, path: pathlib.Path, block: str) -> float | None:
    if "rlnImagePixelSize" in table.columns:
        values = _numeric(table, "rlnImagePixelSize", path, block)
        field = "rlnImagePixelSize"
    elif "rlnDetectorPixelSize" in table.columns or "rlnMagnification" in table.columns:
        detector = _numeric(table, "rlnDetectorPixelSize", path, block)
        magnification = _numeric(table, "rlnMagnification", path, block)
        if np.any(magnification <= 0):
            raise InputError(f"{path}: field rlnMagnification: must be positive")
        values = detector * 1e4 / magnification
        field = "rlnDetectorPixelSize"
    else:
        return None
    pixel_size = _uniform(values, path, field, "pixel size")
    if not pixel_size > 0:
        raise InputError(f"{path}: field {field}: pixel size must be positive")
    return pixel_size


def _optics_groups_31(optics: pd.DataFrame, table: pd.DataFrame, path: pathlib.Path, block: str):
    optics = optics.reset_index(drop=True)
    numbers = _integers(optics, "rlnOpticsGroup", path, "optics")
    if len(set(numbers.tolist())) != len(numbers):
        raise InputError(f"{path}: field rlnOpticsGroup: optics group numbers repeat in data_optics")
    optional = lambda column: _numeric(optics, column, path, "optics") if column in optics.columns else np.full(len(optics), np.nan)  # noqa: E731
    pixel = optional("rlnImagePixelSize")
    box = _integers(optics, "rlnImageSize", path, "optics").astype(np.float64) if "rlnImageSize" in optics.columns else np.full(len(optics), np.nan)
    voltage = optional("rlnVoltage")
    cs = optional("rlnSphericalAberration")
    q0 = _amplitude_contrast(optics, path, "optics")
    tilt_x = optional("rlnBeamTiltX") if "rlnBeamTiltX" in optics.columns else np.zeros(len(optics))
    tilt_y = optional("rlnBeamTiltY") if "rlnBeamTiltY" in optics.columns else np.zeros(len(optics))
    extra_columns = [c for c in optics.columns if c not in _OPTICS_COLUMNS]
    groups = []
    for row in range(len(optics)):
        groups.append(
            OpticsGroup(
                number=int(numbers[row]),
                name=str(optics["rlnOpticsGroupName"].iloc[row]) if "rlnOpticsGroupName" in optics.columns else f"opticsGroup{numbers[row]}",
                pixel_size_in_angstroms=float(pixel[row]),
                box_size=None if np.isnan(box[row]) else int(box[row]),
                voltage_in_kilovolts=float(voltage[row]),
                spherical_aberration_in_millimeters=float(cs[row]),
                amplitude_contrast_ratio=float(q0[row]),
                beam_tilt_in_milliradians=(float(tilt_x[row]), float(tilt_y[row])),
                odd_zernike=_parse_zernike(optics["rlnOddZernike"].iloc[row], path, "rlnOddZernike") if "rlnOddZernike" in optics.columns else (),
                even_zernike=_parse_zernike(optics["rlnEvenZernike"].iloc[row], path, "rlnEvenZernike") if "rlnEvenZernike" in optics.columns else (),
                extra=tuple((c, str(optics[c].iloc[row])) for c in extra_columns),
            )
        )
    if "rlnOpticsGroup" in table.columns:
        labels = _integers(table, "rlnOpticsGroup", path, block)
    elif len(groups) == 1:
        labels = np.full(len(table), groups[0].number)
    else:
        raise InputError(f"{path}: field rlnOpticsGroup: missing from data_{block} with {len(groups)} optics groups")
    position = {number: i for i, number in enumerate(numbers.tolist())}
    missing = sorted(set(np.unique(labels).tolist()) - set(position))
    if missing:
        raise InputError(f"{path}: field rlnOpticsGroup: particles refer to optics group {missing[0]}, absent from data_optics")
    return tuple(groups), np.array([position[label] for label in labels.tolist()], dtype=np.int64)


def _poses(table, path, block, pixel_size, relion31):
    angle_columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    present = [c for c in angle_columns if c in table.columns]
    rotations = None
    if present:
        angles = np.column_stack([_numeric(table, c, path, block) for c in angle_columns])
        rotations = np.asarray(euler_angles_to_matrix(angles), dtype=np.float64)
    if "rlnOriginXAngst" in table.columns or "rlnOriginYAngst" in table.columns:
        origins = np.column_stack([_numeric(table, c, path, block) for c in ("rlnOriginXAngst", "rlnOriginYAngst")])
    elif "rlnOriginX" in table.columns or "rlnOriginY" in table.columns:
        origins = np.column_stack([_numeric(table, c, path, block) for c in ("rlnOriginX", "rlnOriginY")])
        if pixel_size is None:
            raise InputError(f"{path}: field rlnOriginX: origins in pixels but no pixel size (rlnDetectorPixelSize, rlnMagnification)")
        origins = origins * pixel_size
    elif rotations is not None:
        origins = np.zeros((len(table), 2))
    else:
        return None, None
    return rotations, -origins



def _format_zernike(values: tuple[float, ...]) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def write_relion_star(
    path: str | os.PathLike,
    dataset: ParticleDataset,
    stack_path: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Write particles as a RELION 3.1 STAR file (data_optics + data_particles).

    **Arguments:**

    - `path`: the `.star` file to write (overwritten).
    - `dataset`: a `ParticleDataset` (see `particle_dataset_from_arrays` for arrays in memory).
    - `stack_path`: when given, the images are copied there (streamed in chunks) and the star
      file refers to it; otherwise it refers to the dataset's existing stacks.

    **Returns:**

    The path written. Image paths are written relative to the star file's folder; shifts as
    `rlnOriginXAngst/YAngst = -shifts_in_angstroms`; rotations as RELION Euler angles.
    """
    path = pathlib.Path(path)
    if dataset.pixel_size_in_angstroms is None or dataset.box_size is None:
        dataset = dataset.check_images()
    dataset = consistent_optics(dataset)
    n = len(dataset)
    if stack_path is not None:
        stack_path = dataset.write_images(stack_path)
        names = [f"{i + 1:06d}@{relative_path(stack_path, path.parent)}" for i in range(n)]
    else:
        stacks = [relative_path(p, path.parent) for p in dataset.image_stacks.stack_paths]
        names = [
            f"{index + 1:06d}@{stacks[number]}"
            for number, index in zip(dataset.image_stacks.stack_numbers.tolist(), dataset.image_stacks.image_indices.tolist())
        ]

    groups = dataset.optics_groups
    optics = {
        "rlnOpticsGroup": [g.number for g in groups],
        "rlnOpticsGroupName": [g.name for g in groups],
        # the original stacks keep each group's own pixel size; copied images are on the common grid
        "rlnImagePixelSize": [
            g.pixel_size_in_angstroms if stack_path is None and g.pixel_size_in_angstroms is not None and g.pixel_size_in_angstroms > 0
            else dataset.pixel_size_in_angstroms
            for g in groups
        ],
        "rlnImageSize": [dataset.box_size] * len(groups),
        "rlnImageDimensionality": [2] * len(groups),
    }
    for column, attribute in (
        ("rlnVoltage", "voltage_in_kilovolts"),
        ("rlnSphericalAberration", "spherical_aberration_in_millimeters"),
        ("rlnAmplitudeContrast", "amplitude_contrast_ratio"),
    ):
        values = [getattr(g, attribute) for g in groups]
        if np.all(np.isfinite(values)):
            optics[column] = values
    if any(g.beam_tilt_in_milliradians != (0.0, 0.0) for g in groups):
        optics["rlnBeamTiltX"] = [g.beam_tilt_in_milliradians[0] for g in groups]
        optics["rlnBeamTiltY"] = [g.beam_tilt_in_milliradians[1] for g in groups]
    if any(g.odd_zernike for g in groups):
        optics["rlnOddZernike"] = [_format_zernike(g.odd_zernike) for g in groups]
    if any(g.even_zernike for g in groups):
        optics["rlnEvenZernike"] = [_format_zernike(g.even_zernike) for g in groups]
    for column in dict.fromkeys(c for g in groups for c, _ in g.extra):
        optics[column] = [dict(g.extra).get(column, "") for g in groups]

    particles: dict[str, Any] = {"rlnImageName": names}
    if dataset.ctf is not None:
        particles["rlnDefocusU"] = dataset.ctf["defocus_u_in_angstroms"]
        particles["rlnDefocusV"] = dataset.ctf["defocus_v_in_angstroms"]
        particles["rlnDefocusAngle"] = dataset.ctf["astigmatism_angle_in_degrees"]
        particles["rlnPhaseShift"] = dataset.ctf["phase_shift_in_degrees"]
        for column, name in (("rlnCtfBfactor", "b_factor_in_angstroms_squared"), ("rlnCtfScalefactor", "scale")):
            if name in dataset.ctf:
                particles[column] = dataset.ctf[name]
    particles["rlnOpticsGroup"] = np.array([g.number for g in groups])[dataset.optics_group_indices]
    if dataset.rotations is not None:
        angles = np.asarray(matrix_to_euler_angles(dataset.rotations), dtype=np.float64)
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = angles.T
    if dataset.shifts_in_angstroms is not None:
        particles["rlnOriginXAngst"] = -dataset.shifts_in_angstroms[:, 0]
        particles["rlnOriginYAngst"] = -dataset.shifts_in_angstroms[:, 1]
    for column, column_values in dataset.extra_columns.items():
        if column not in particles:
            particles[column] = column_values
    starfile.write(
        {"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)}, path, float_format="%.6f"
    )
    return path


def write_particles_star(
    path: str | os.PathLike,
    images: np.ndarray,
    stack_path: str | os.PathLike,
    pixel_size_in_angstroms: float,
    ctf: dict | None = None,
    rotations: np.ndarray | None = None,
    shifts_in_angstroms: np.ndarray | None = None,
) -> pathlib.Path:
    """Write images held in memory and their metadata as an `.mrcs` stack and a RELION 3.1 star file.

    **Arguments:**

    - `path`: the `.star` file; `stack_path`: the `.mrcs` file (both overwritten).
    - `images`: `(n, D, D)` images indexed `[y, x]`; `pixel_size_in_angstroms`: their pixel size.
    - `ctf`: dict with (at least) the arrays named in `CTF_FIELDS`, and any of
      `OPTIONAL_CTF_FIELDS` (see `particle_dataset_from_arrays`), or None.
    - `rotations`: `(n, 3, 3)` RELION matrices `A`; `shifts_in_angstroms`: `(n, 2)`; or None.

    **Returns:**

    The star file's path.
    """
    write_stack(stack_path, images, pixel_size_in_angstroms)
    dataset = particle_dataset_from_arrays(stack_path, pixel_size_in_angstroms, ctf, rotations, shifts_in_angstroms)
    return write_relion_star(path, dataset)
