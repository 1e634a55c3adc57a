"""Tilt-series particles (cryo-ET subtomogram averaging): each particle is seen in several tilt images.

Two layouts are read, both grouped into particles with their tilt images (`TiltSeriesParticles`):

**RELION 3.0-style subtomogram files** (Warp / M "particle series", as cryoDRGN-ET reads them): one
row per tilt image, with its own `rlnImageName`, CTF (`rlnDefocusU/V/Angle`, ...) and pose
(`rlnAngleRot/Tilt/Psi`, already including the tilt), the particle named by `rlnGroupName`. The rows
are read by `read_relion_star` (the same columns, pixel size and checks as single-particle files)
and grouped by `rlnGroupName` in order of first appearance, as cryoDRGN's
`TiltSeriesData.parse_particle_tilt` does. The file holds no exposure: when
`dose_per_tilt_in_electrons_per_square_angstrom` is given, the tilts of each particle are put in
exposure order by decreasing `rlnCtfScalefactor` (≈ cos tilt: a dose-symmetric scheme, Hagen et al.
2017, as cryoDRGN-ET assumes; ties keep the file's order) and the `k`-th gets pre-exposure
`k · dose_per_tilt`; a `rlnMicrographPreExposure` column, when present, is used instead.

**RELION 4 / 5 particle sets** (`particles.star` + `tomograms.star`): one row per particle, naming
its tomogram (`rlnTomoName`) and itself (`rlnTomoParticleName`; when absent RELION 4 names them
`<tomogram>/<k>`, counting from 1 per tomogram, and so is done here). The tomogram set
(`tomograms.star`) has a `data_global` table (`rlnTomoName`, `rlnVoltage`, `rlnSphericalAberration`,
`rlnAmplitudeContrast`, `rlnTomoHand`, `rlnTomoTiltSeriesPixelSize`, optional
`rlnTomoDefocusSlope`, and `rlnTomoSizeX/Y/Z` for RELION 4 coordinates) and one per-tilt table
`data_<rlnTomoName>` per tomogram, in the same file (RELION 4) or in the file named by
`rlnTomoTiltSeriesStarFile` (RELION 5; resolved against the tomogram set's folder and its
parents, i.e. the RELION project folder). Each per-tilt row is one tilt image, in the order of the
tilt-series stack: `rlnDefocusU`, `rlnDefocusV`, `rlnDefocusAngle`, `rlnMicrographPreExposure`
(e⁻/Å²), optional `rlnCtfScalefactor` and `rlnPhaseShift`, and its geometry, either RELION 5's
`rlnTomoXTilt` (optional, 0), `rlnTomoYTilt`, `rlnTomoZRot` (degrees) or RELION 4's projection
matrix rows `rlnTomoProjX/Y/Z/W` (`[a,b,c,d]`). This follows RELION 5's `TomogramSet::loadTomogram`
and `ParticleSet` (`src/jaz/tomography/`).

The particle's pose in the tomogram is `A = A_subtomogram · A_particle` (`rlnTomoSubtomogramRot/
Tilt/Psi` and `rlnAngleRot/Tilt/Psi`, each the identity when absent; RELION's `getMatrix3x3`); its
position `p` relative to the tomogram's centre is `rlnCenteredCoordinateX/Y/ZAngst` (RELION 5) or
`(rlnCoordinateX/Y/Z - rlnTomoSize/2) · pixel size` (RELION 4), minus `A_subtomogram ·
rlnOriginX/Y/ZAngst` (RELION's `ParticleSet::getPosition`). In tilt image `f`, with
`R_f = Rz(rlnTomoZRot) · Ry(rlnTomoYTilt) · Rx(rlnTomoXTilt)` (textbook rotations, see
`atomicspi.microscope`'s `tilt_series_view_rotation`) or the rotation part of RELION 4's matrix,
the particle's pose is `R_f · A` and its defocus is the tilt's plus
`rlnTomoHand · rlnTomoDefocusSlope · (R_f · p)_z` (RELION's `Tomogram::getCtf`; underfocus
positive). The particle's tilt images are all frames of its tomogram, or those flagged 1 in
`rlnTomoVisibleFrames` (RELION 5's 2D-stack pseudo-subtomograms) when the column is present.

**Images** (`read_tilt_series_images`). RELION 5's `relion_tomo_subtomo --stack2d` (the default
of its "Extract subtomos" job since RELION 4.1) writes, for each particle, one 2D stack
`Subtomograms/<rlnTomoParticleName>_stack2d.mrcs` (under `Subtomograms/<rlnTomoName>/` when the
particle names have no `/`) holding the particle's visible tilt images (`rlnTomoVisibleFrames`) in
frame order, each a box centred on the particle's projected position; the particle's
`rlnImageName` is that file (no `N@`), `data_general` says `rlnTomoSubTomosAre2DStacks 1` and the
optics group `rlnImageDimensionality 2`, `rlnImageSize`, `rlnImagePixelSize` (the tilt series' pixel
size times `rlnTomoSubtomogramBinning`) and `rlnCtfDataAreCtfPremultiplied` (1 unless `--no_ctf`;
premultiplied stacks are refused). (`SubtomoProgram::writeParticleSet` and `processTomograms` in
`src/jaz/tomography/programs/subtomo.cpp`.) RELION 3.0 tilt images are read from their rows'
`N@stack`.

Every problem with the files raises `InputError` with a one-line message naming the file and the
field.
"""

import dataclasses
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..conventions import euler_angles_to_matrix, tilt_series_view_rotation
from ._dataset import ParticleDataset
from ._errors import InputError
from ._mrc import StackHeader, _check_finite, read_stack_header
from ._star import _numeric, _read_blocks, read_relion_star

_ROTATION_TOLERANCE = 1e-3
"""RELION 4 writes projection matrices with 6 significant digits: their rotation part is
orthonormal to about 1e-6; a larger departure means the rows are not a rotation."""


@dataclasses.dataclass(frozen=True)
class TiltSeriesParticles:
    """Particles of a tilt-series dataset, each with its tilt images.

    Per-tilt arrays are flat over all tilt images, particle after particle: the tilt images of
    particle `i` are entries `tilt_offsets[i]:tilt_offsets[i + 1]` (`tilts(i)`); `padded` gives
    them as a `(n_particles, max_tilts, ...)` array with a mask. Conventions (rotations, defocus
    sign) are those of `atomicspi.conventions` and `atomicspi.microscope`.

    **Fields:**

    - `particle_names`: `(n_particles,)` `rlnGroupName` (RELION 3.0) or `rlnTomoParticleName`.
    - `tomogram_names`: `(n_particles,)` `rlnTomoName`, or None (RELION 3.0 files do not name it).
    - `tilt_offsets`: `(n_particles + 1,)` int64, the start of each particle's tilt images.
    - `tilt_image_indices`: `(n_tilt_images,)` int64: the row of the particle file (RELION 3.0;
      the index into `tilt_images`) or the frame of the tomogram's tilt series (RELION 4 / 5: the
      row of its per-tilt table and slice of its tilt-series stack).
    - `rotations`: `(n_tilt_images, 3, 3)` pose of the particle in each tilt image.
    - `defocus_u_in_angstroms`, `defocus_v_in_angstroms`, `astigmatism_angle_in_degrees`,
      `phase_shift_in_degrees`, `ctf_scale`: `(n_tilt_images,)` CTF of each tilt image at the
      particle (RELION 4 / 5: the tilt image's, plus `defocus_offset_in_angstroms`).
    - `defocus_offset_in_angstroms`: `(n_tilt_images,)` the depth term already included in the
      defoci (`hand · slope · (R_f · p)_z`; zeros for RELION 3.0 files, whose defoci are per row).
    - `pre_exposure_in_electrons_per_square_angstrom`: `(n_tilt_images,)` exposure before each tilt
      image, or None when the file has none and no dose per tilt was given.
    - `tilt_angles_in_degrees`: `(n_tilt_images,)` stage tilt (`rlnTomoYTilt`, or `asin(-R_f[2, 0])`
      of RELION 4 matrices), or None (RELION 3.0).
    - `voltage_in_kilovolts`, `spherical_aberration_in_millimeters`, `amplitude_contrast_ratio`,
      `pixel_size_in_angstroms`: `(n_particles,)`.
    - `particle_rotations`: `(n_particles, 3, 3)` pose `A` in the tomogram, or None (RELION 3.0).
    - `positions_in_angstroms`: `(n_particles, 3)` position relative to the tomogram's centre
      (origin shifts applied), or None (RELION 3.0).
    - `particle_columns`: the particle table's other columns, `name -> (n_particles,)` (RELION
      4 / 5); for RELION 3.0 files, the columns of `tilt_images.extra_columns` whose value is the
      same for all tilt images of each particle.
    - `tilt_images`: RELION 3.0: the rows as a `ParticleDataset` (images, CTF and poses of each
      tilt image); None for RELION 4 / 5.
    - `source`: the particle file.
    """

    particle_names: np.ndarray
    tomogram_names: np.ndarray | None
    tilt_offsets: np.ndarray
    tilt_image_indices: np.ndarray
    rotations: np.ndarray
    defocus_u_in_angstroms: np.ndarray
    defocus_v_in_angstroms: np.ndarray
    astigmatism_angle_in_degrees: np.ndarray
    phase_shift_in_degrees: np.ndarray
    ctf_scale: np.ndarray
    defocus_offset_in_angstroms: np.ndarray
    pre_exposure_in_electrons_per_square_angstrom: np.ndarray | None
    tilt_angles_in_degrees: np.ndarray | None
    voltage_in_kilovolts: np.ndarray
    spherical_aberration_in_millimeters: np.ndarray
    amplitude_contrast_ratio: np.ndarray
    pixel_size_in_angstroms: np.ndarray
    particle_rotations: np.ndarray | None
    positions_in_angstroms: np.ndarray | None
    particle_columns: Mapping[str, np.ndarray]
    tilt_images: ParticleDataset | None
    source: pathlib.Path

    def __len__(self) -> int:
        return len(self.particle_names)

    @property
    def tilt_counts(self) -> np.ndarray:
        """`(n_particles,)` number of tilt images of each particle."""
        return np.diff(self.tilt_offsets)

    @property
    def particle_of_tilt(self) -> np.ndarray:
        """`(n_tilt_images,)` the particle each tilt image belongs to."""
        return np.repeat(np.arange(len(self)), self.tilt_counts)

    def tilts(self, particle: int) -> slice:
        """The entries of the per-tilt arrays that belong to particle `particle`."""
        return slice(int(self.tilt_offsets[particle]), int(self.tilt_offsets[particle + 1]))

    def padded(self, values: np.ndarray, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """A per-tilt array as `(n_particles, max_tilts, ...)`, padded with `fill`, and its mask.

        **Arguments:**

        - `values`: `(n_tilt_images, ...)`, e.g. `rotations` or `defocus_u_in_angstroms`.
        - `fill`: value of the padding entries.

        **Returns:**

        `(padded, mask)`: `mask[i, j]` is True for the `j`-th tilt image of particle `i`.
        """
        values = np.asarray(values)
        counts = self.tilt_counts
        max_tilts = int(counts.max(initial=0))
        mask = np.arange(max_tilts)[None, :] < counts[:, None]
        padded = np.full((len(self), max_tilts) + values.shape[1:], fill, dtype=values.dtype)
        padded[mask] = values
        return padded, mask


def read_tilt_series_particles(
    path: str | os.PathLike,
    tomograms: str | os.PathLike | None = None,
    datadir: str | os.PathLike | None = None,
    dose_per_tilt_in_electrons_per_square_angstrom: float | None = None,
) -> TiltSeriesParticles:
    """Read tilt-series particles and group the tilt images of each particle.

    **Arguments:**

    - `path`: the particle `.star` file: RELION 3.0-style subtomogram particles (a row per tilt
      image, `rlnGroupName`) or a RELION 4 / 5 particle set (`rlnTomoName`).
    - `tomograms`: the tomogram set (`tomograms.star`) of a RELION 4 / 5 particle set (required
      for those; unused for RELION 3.0 files).
    - `datadir`: RELION 3.0 files: folder against which image paths are resolved.
    - `dose_per_tilt_in_electrons_per_square_angstrom`: RELION 3.0 files without
      `rlnMicrographPreExposure`: the exposure of each tilt image, to derive the pre-exposures
      (see the module docstring).

    **Returns:**

    A `TiltSeriesParticles`. Raises `InputError` naming the file and the field on any problem.
    """
    path = pathlib.Path(path)
    blocks = _read_blocks(path)
    block_name, table = _particle_table(blocks, path)
    if "rlnTomoName" in table.columns:
        if tomograms is None:
            raise InputError(
                f"{path}: field rlnTomoName: RELION 4/5 particles are read with their tomogram set (give the tomograms.star)"
            )
        return _read_relion45(path, blocks, block_name, table, pathlib.Path(tomograms))
    if "rlnGroupName" in table.columns:
        return _read_relion30(path, table, datadir, dose_per_tilt_in_electrons_per_square_angstrom)
    raise InputError(
        f"{path}: field rlnGroupName: data_{block_name} names no particle of its tilt images "
        "(neither rlnTomoName of RELION 4/5 nor rlnGroupName of RELION 3.0 subtomogram files)"
    )


def _as_table(block) -> pd.DataFrame:
    """A STAR block as a table (a block of single values is one row)."""
    if isinstance(block, pd.DataFrame):
        return block.reset_index(drop=True)
    return pd.DataFrame([block])


def _particle_table(blocks: dict, path: pathlib.Path) -> tuple[str, pd.DataFrame]:
    loops = {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}
    if "particles" in loops:
        name = "particles"
    else:
        candidates = [n for n in loops if n not in ("optics", "general")]
        if len(candidates) != 1:
            raise InputError(f"{path}: field data_particles: no single particle table among blocks {list(blocks)}")
        name = candidates[0]
    table = loops[name].reset_index(drop=True)
    if len(table) == 0:
        raise InputError(f"{path}: field data_{name}: no particles")
    return name, table


def _names(table: pd.DataFrame, column: str, path: pathlib.Path, block: str) -> np.ndarray:
    """A column of names as strings, refusing empty values."""
    raw = table[column]
    text = raw.astype(str).str.strip()
    bad = raw.isna().to_numpy() | (text == "").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} has no value")
    return text.to_numpy(dtype=object)


def _group(names: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by name in order of first appearance: (unique names, offsets, row indices)."""
    codes, uniques = pd.factorize(names)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    counts = np.bincount(codes, minlength=len(uniques))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.asarray(uniques, dtype=object), offsets, order


def _per_particle(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, names: np.ndarray,
                  path: pathlib.Path, column: str) -> np.ndarray:
    """The value of a per-row column for each particle, refusing particles whose rows disagree."""
    grouped = values[rows]
    first = grouped[offsets[:-1]]
    particle = np.repeat(np.arange(len(names)), np.diff(offsets))
    differs = grouped != first[particle]
    if differs.any():
        bad = int(particle[np.flatnonzero(differs)[0]])
        raise InputError(f"{path}: field {column}: the tilt images of particle {names[bad]!r} have different values")
    return first


def _read_relion30(path: pathlib.Path, table: pd.DataFrame, datadir, dose_per_tilt: float | None) -> TiltSeriesParticles:
    dataset = read_relion_star(path, datadir)
    block = "particles"
    if dataset.ctf is None:
        raise InputError(f"{path}: field rlnDefocusU: missing (each tilt image needs its defocus)")
    if dataset.rotations is None:
        raise InputError(f"{path}: field rlnAngleRot: missing (each tilt image needs its pose)")
    names, offsets, rows = _group(_names(table, "rlnGroupName", path, block))
    particle = np.repeat(np.arange(len(names)), np.diff(offsets))

    if "rlnMicrographName" in table.columns:
        micrographs = table["rlnMicrographName"].astype(str).to_numpy(dtype=object)[rows]
        pairs = pd.DataFrame({"particle": particle, "micrograph": micrographs})
        repeated = pairs.duplicated().to_numpy()
        if repeated.any():
            k = int(np.flatnonzero(repeated)[0])
            raise InputError(
                f"{path}: field rlnMicrographName: particle {names[particle[k]]!r} has two rows from tilt image "
                f"{micrographs[k]!r} (row {int(rows[k]) + 1})"
            )

    ctf = dataset.ctf
    per_particle = {
        field: _per_particle(np.asarray(ctf[field]), offsets, rows, names, path, column)
        for field, column in (
            ("voltage_in_kilovolts", "rlnVoltage"),
            ("spherical_aberration_in_millimeters", "rlnSphericalAberration"),
            ("amplitude_contrast_ratio", "rlnAmplitudeContrast"),
        )
    }
    n_rows = len(table)
    scale = np.asarray(ctf["scale"]) if "scale" in ctf else np.ones(n_rows)

    pre_exposure: np.ndarray | None = None
    if "rlnMicrographPreExposure" in table.columns:
        pre_exposure = _numeric(table, "rlnMicrographPreExposure", path, block)[rows]
        _check_non_negative(pre_exposure, rows, path, "rlnMicrographPreExposure", block)
    elif dose_per_tilt is not None:
        if not (np.isfinite(dose_per_tilt) and dose_per_tilt >= 0):
            raise InputError(f"{path}: field dose per tilt: {dose_per_tilt!r} is not a non-negative number")
        if "scale" not in ctf:
            raise InputError(
                f"{path}: field rlnCtfScalefactor: missing, and needed to put the tilt images in exposure order"
            )
        pre_exposure = _exposure_rank(scale[rows], offsets) * float(dose_per_tilt)

    pixel_size = dataset.pixel_size_in_angstroms
    extra = {}
    for column, values in dataset.extra_columns.items():
        grouped = np.asarray(values)[rows]
        first = grouped[offsets[:-1]]
        if np.all(grouped == first[particle]):
            extra[column] = first
    return TiltSeriesParticles(
        particle_names=names,
        tomogram_names=None,
        tilt_offsets=offsets,
        tilt_image_indices=rows,
        rotations=np.asarray(dataset.rotations, dtype=np.float64)[rows],
        defocus_u_in_angstroms=np.asarray(ctf["defocus_u_in_angstroms"])[rows],
        defocus_v_in_angstroms=np.asarray(ctf["defocus_v_in_angstroms"])[rows],
        astigmatism_angle_in_degrees=np.asarray(ctf["astigmatism_angle_in_degrees"])[rows],
        phase_shift_in_degrees=np.asarray(ctf["phase_shift_in_degrees"])[rows],
        ctf_scale=scale[rows],
        defocus_offset_in_angstroms=np.zeros(n_rows),
        pre_exposure_in_electrons_per_square_angstrom=pre_exposure,
        tilt_angles_in_degrees=None,
        voltage_in_kilovolts=per_particle["voltage_in_kilovolts"],
        spherical_aberration_in_millimeters=per_particle["spherical_aberration_in_millimeters"],
        amplitude_contrast_ratio=per_particle["amplitude_contrast_ratio"],
        pixel_size_in_angstroms=np.full(len(names), np.nan if pixel_size is None else float(pixel_size)),
        particle_rotations=None,
        positions_in_angstroms=None,
        particle_columns=extra,
        tilt_images=dataset,
        source=path,
    )


def _exposure_rank(scale: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Within each particle, the rank of each tilt image by decreasing scale (ties: file order)."""
    ranks = np.empty(len(scale))
    for start, stop in zip(offsets[:-1], offsets[1:]):
        order = np.argsort(-scale[start:stop], kind="stable")
        ranks[start + order] = np.arange(stop - start)
    return ranks


def _check_non_negative(values: np.ndarray, rows: np.ndarray, path: pathlib.Path, column: str, block: str) -> None:
    negative = values < 0
    if negative.any():
        k = int(np.flatnonzero(negative)[0])
        raise InputError(f"{path}: field {column}: row {int(rows[k]) + 1} of data_{block} is {values[k]:g}, not >= 0")


def _vectors(table: pd.DataFrame, column: str, path: pathlib.Path, block: str, length: int | None) -> list[np.ndarray]:
    """A column of RELION vectors `[a,b,...]`, one array per row (all of `length` when given)."""
    if column not in table.columns:
        raise InputError(f"{path}: field {column}: missing from data_{block}")
    out = []
    for row, raw in enumerate(table[column].tolist()):
        text = str(raw).strip()
        try:
            values = np.array([float(x) for x in text.strip("[]").split(",") if x.strip()], dtype=np.float64)
        except ValueError:
            raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {text!r}, not a list of numbers") from None
        if not np.all(np.isfinite(values)) or (length is not None and len(values) != length):
            what = f"{length} finite numbers" if length is not None else "finite numbers"
            raise InputError(f"{path}: field {column}: row {row + 1} of data_{block} is {text!r}, not {what}")
        out.append(values)
    return out


@dataclasses.dataclass(frozen=True)
class _TiltSeries:
    """One tomogram's tilt images (RELION 4 / 5)."""

    view_rotations: np.ndarray
    tilt_angles_in_degrees: np.ndarray
    defocus_u_in_angstroms: np.ndarray
    defocus_v_in_angstroms: np.ndarray
    astigmatism_angle_in_degrees: np.ndarray
    phase_shift_in_degrees: np.ndarray
    ctf_scale: np.ndarray
    pre_exposure_in_electrons_per_square_angstrom: np.ndarray
    voltage_in_kilovolts: float
    spherical_aberration_in_millimeters: float
    amplitude_contrast_ratio: float
    handedness: float
    defocus_slope: float
    pixel_size_in_angstroms: float | None
    size_in_pixels: np.ndarray | None


def _tilt_series_table(tomograms: pathlib.Path, tomogram_blocks: dict, global_table: pd.DataFrame, row: int,
                       name: str) -> tuple[pathlib.Path, pd.DataFrame]:
    """The per-tilt table of tomogram `name`: in its rlnTomoTiltSeriesStarFile, or in the tomogram set."""
    if "rlnTomoTiltSeriesStarFile" in global_table.columns:
        written = pathlib.Path(str(global_table["rlnTomoTiltSeriesStarFile"].iloc[row]).strip())
        if written.is_absolute():
            candidates = [written]
        else:
            folder = tomograms.resolve().parent
            candidates = [base / written for base in (folder, *folder.parents)] + [folder / written.name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(
                f"{tomograms}: field rlnTomoTiltSeriesStarFile: {str(written)!r} of tomogram {name!r} not found "
                f"(looked in {tomograms.parent} and its parents)"
            )
        blocks = _read_blocks(found)
        source = found
    else:
        blocks = tomogram_blocks
        source = tomograms
    if name not in blocks:
        raise InputError(f"{source}: field data_{name}: no per-tilt table for tomogram {name!r}")
    table = _as_table(blocks[name])
    if len(table) == 0:
        raise InputError(f"{source}: field data_{name}: no tilt images")
    return source, table


def _view_rotations(table: pd.DataFrame, path: pathlib.Path, block: str) -> tuple[np.ndarray, np.ndarray]:
    """`R_f` `(n_tilts, 3, 3)` and the stage tilt angles of a per-tilt table (RELION 5 angles or 4 matrices)."""
    projection_columns = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
    if "rlnTomoYTilt" in table.columns or not any(c in table.columns for c in projection_columns):
        y_tilt = _numeric(table, "rlnTomoYTilt", path, block)
        z_rotation = _numeric(table, "rlnTomoZRot", path, block)
        x_tilt = _numeric(table, "rlnTomoXTilt", path, block) if "rlnTomoXTilt" in table.columns else np.zeros(len(table))
        rotations = np.asarray(tilt_series_view_rotation(y_tilt, z_rotation, x_tilt), dtype=np.float64)
        return rotations, y_tilt
    rows = [np.stack(_vectors(table, c, path, block, 4)) for c in projection_columns[:3]]
    rotations = np.stack([r[:, :3] for r in rows], axis=1)
    error = np.abs(rotations @ np.swapaxes(rotations, -1, -2) - np.eye(3)).max(axis=(-1, -2))
    improper = np.linalg.det(rotations) < 0
    bad = (error > _ROTATION_TOLERANCE) | improper
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: field rlnTomoProjX: row {row + 1} of data_{block}: the projection matrix's 3 × 3 part is not a "
            "rotation (anisotropic or mirrored projection matrices are not modelled)"
        )
    tilt = np.rad2deg(np.arcsin(np.clip(-rotations[:, 2, 0], -1.0, 1.0)))
    return rotations, tilt


def _load_tilt_series(tomograms: pathlib.Path, tomogram_blocks: dict, global_table: pd.DataFrame, row: int,
                      name: str) -> _TiltSeries:
    source, table = _tilt_series_table(tomograms, tomogram_blocks, global_table, row, name)
    view_rotations, tilt_angles = _view_rotations(table, source, name)
    pre_exposure = _numeric(table, "rlnMicrographPreExposure", source, name)
    _check_non_negative(pre_exposure, np.arange(len(table)), source, "rlnMicrographPreExposure", name)
    n = len(table)

    def optional(column: str, default: float) -> np.ndarray:
        return _numeric(table, column, source, name) if column in table.columns else np.full(n, default)

    def global_value(column: str) -> float:
        if column not in global_table.columns:
            raise InputError(f"{tomograms}: field {column}: missing from data_global")
        raw = global_table[column].iloc[row]
        value = float(pd.to_numeric(pd.Series([raw]), errors="coerce").iloc[0])
        if not np.isfinite(value):
            raise InputError(f"{tomograms}: field {column}: row {row + 1} of data_global is {str(raw)!r}, not a finite number")
        return value

    handedness = global_value("rlnTomoHand")
    slope = global_value("rlnTomoDefocusSlope") if "rlnTomoDefocusSlope" in global_table.columns else 1.0
    voltage = global_value("rlnVoltage")
    if voltage <= 0:
        raise InputError(f"{tomograms}: field rlnVoltage: tomogram {name!r} has {voltage:g}, not a positive voltage")
    pixel_size = global_value("rlnTomoTiltSeriesPixelSize") if "rlnTomoTiltSeriesPixelSize" in global_table.columns else None
    size = None
    if all(c in global_table.columns for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")):
        size = np.array([global_value(c) for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")])
    return _TiltSeries(
        view_rotations=view_rotations,
        tilt_angles_in_degrees=tilt_angles,
        defocus_u_in_angstroms=_numeric(table, "rlnDefocusU", source, name),
        defocus_v_in_angstroms=_numeric(table, "rlnDefocusV", source, name),
        astigmatism_angle_in_degrees=_numeric(table, "rlnDefocusAngle", source, name),
        phase_shift_in_degrees=optional("rlnPhaseShift", 0.0),
        ctf_scale=optional("rlnCtfScalefactor", 1.0),
        pre_exposure_in_electrons_per_square_angstrom=pre_exposure,
        voltage_in_kilovolts=voltage,
        spherical_aberration_in_millimeters=global_value("rlnSphericalAberration"),
        amplitude_contrast_ratio=global_value("rlnAmplitudeContrast"),
        handedness=handedness,
        defocus_slope=slope,
        pixel_size_in_angstroms=pixel_size,
        size_in_pixels=size,
    )


def _euler_or_identity(table: pd.DataFrame, columns: tuple[str, str, str], path: pathlib.Path, block: str) -> np.ndarray:
    """`(n, 3, 3)` RELION rotations from three angle columns, the identity when none is present."""
    if not any(c in table.columns for c in columns):
        return np.broadcast_to(np.eye(3), (len(table), 3, 3))
    angles = np.column_stack([_numeric(table, c, path, block) for c in columns])
    return np.asarray(euler_angles_to_matrix(angles), dtype=np.float64)


_PARTICLE_COLUMNS = {
    "rlnTomoName", "rlnTomoParticleName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi",
    "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst",
    "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst",
    "rlnTomoVisibleFrames",
}


def _particle_names_45(table: pd.DataFrame, tomogram_names: np.ndarray, path: pathlib.Path, block: str) -> np.ndarray:
    """`rlnTomoParticleName`, or RELION 4's `<tomogram>/<k>`; refuses a name used twice."""
    if "rlnTomoParticleName" in table.columns:
        names = _names(table, "rlnTomoParticleName", path, block)
    else:
        count = pd.Series(tomogram_names).groupby(tomogram_names, sort=False).cumcount().to_numpy() + 1
        names = np.array([f"{t}/{k}" for t, k in zip(tomogram_names, count)], dtype=object)
    repeated = pd.Series(names).duplicated(keep=False).to_numpy()
    if repeated.any():
        first = int(np.flatnonzero(repeated)[0])
        rows = np.flatnonzero(names == names[first])
        tomos = list(dict.fromkeys(tomogram_names[rows]))
        if len(tomos) > 1:
            raise InputError(
                f"{path}: field rlnTomoName: particle {names[first]!r} has rows in tomograms {tomos[0]!r} and {tomos[1]!r}"
            )
        raise InputError(
            f"{path}: field rlnTomoParticleName: particle {names[first]!r} appears in rows {rows[0] + 1} and "
            f"{rows[1] + 1} of data_{block}"
        )
    return names


def _read_relion45(path: pathlib.Path, blocks: dict, block: str, table: pd.DataFrame,
                   tomograms: pathlib.Path) -> TiltSeriesParticles:
    tomogram_blocks = _read_blocks(tomograms)
    if "global" not in tomogram_blocks:
        raise InputError(f"{tomograms}: field data_global: missing (not a RELION tomogram set)")
    global_table = _as_table(tomogram_blocks["global"])
    listed = _names(global_table, "rlnTomoName", tomograms, "global")
    repeated = pd.Series(listed).duplicated().to_numpy()
    if repeated.any():
        raise InputError(f"{tomograms}: field rlnTomoName: tomogram {listed[np.flatnonzero(repeated)[0]]!r} is listed twice")
    row_of = {name: i for i, name in enumerate(listed)}

    tomogram_names = _names(table, "rlnTomoName", path, block)
    unknown = np.array([name not in row_of for name in tomogram_names])
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(
            f"{path}: field rlnTomoName: row {row + 1} of data_{block} names tomogram {tomogram_names[row]!r}, "
            f"which {tomograms.name} does not list"
        )
    names = _particle_names_45(table, tomogram_names, path, block)
    n = len(table)

    series = {name: _load_tilt_series(tomograms, tomogram_blocks, global_table, row_of[name], name)
              for name in dict.fromkeys(tomogram_names)}

    pixel_sizes = _pixel_sizes_45(blocks, table, tomogram_names, series, path, block, tomograms)
    a_subtomogram = _euler_or_identity(table, ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"), path, block)
    a_particle = _euler_or_identity(table, ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), path, block)
    particle_rotations = a_subtomogram @ a_particle
    positions = _positions_45(table, tomogram_names, series, pixel_sizes, a_subtomogram, path, block, tomograms)

    visible = None
    if "rlnTomoVisibleFrames" in table.columns:
        visible = _vectors(table, "rlnTomoVisibleFrames", path, block, None)

    per_tilt: dict[str, list[np.ndarray]] = {key: [] for key in (
        "frames", "rotations", "u", "v", "angle", "phase", "scale", "offset", "dose", "tilt")}
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        tilt_series = series[tomogram_names[i]]
        n_frames = len(tilt_series.pre_exposure_in_electrons_per_square_angstrom)
        frames = np.arange(n_frames)
        if visible is not None:
            flags = visible[i]
            if len(flags) != n_frames or not np.all((flags == 0) | (flags == 1)):
                raise InputError(
                    f"{path}: field rlnTomoVisibleFrames: row {i + 1} of data_{block} is not {n_frames} flags 0 or 1 "
                    f"(the tilt count of tomogram {tomogram_names[i]!r})"
                )
            frames = frames[flags == 1]
        view = tilt_series.view_rotations[frames]
        offset = tilt_series.handedness * tilt_series.defocus_slope * (view[:, 2, :] @ positions[i])
        per_tilt["frames"].append(frames)
        per_tilt["rotations"].append(view @ particle_rotations[i])
        per_tilt["u"].append(tilt_series.defocus_u_in_angstroms[frames] + offset)
        per_tilt["v"].append(tilt_series.defocus_v_in_angstroms[frames] + offset)
        per_tilt["angle"].append(tilt_series.astigmatism_angle_in_degrees[frames])
        per_tilt["phase"].append(tilt_series.phase_shift_in_degrees[frames])
        per_tilt["scale"].append(tilt_series.ctf_scale[frames])
        per_tilt["offset"].append(offset)
        per_tilt["dose"].append(tilt_series.pre_exposure_in_electrons_per_square_angstrom[frames])
        per_tilt["tilt"].append(tilt_series.tilt_angles_in_degrees[frames])
        counts[i] = len(frames)

    def flat(key: str, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(per_tilt[key]) if n else np.zeros((0,) + shape)

    def constant(attribute: str) -> np.ndarray:
        return np.array([getattr(series[t], attribute) for t in tomogram_names], dtype=np.float64)

    extra = {c: table[c].to_numpy() for c in table.columns if c not in _PARTICLE_COLUMNS}
    return TiltSeriesParticles(
        particle_names=names,
        tomogram_names=tomogram_names,
        tilt_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        tilt_image_indices=flat("frames").astype(np.int64),
        rotations=flat("rotations", (3, 3)),
        defocus_u_in_angstroms=flat("u"),
        defocus_v_in_angstroms=flat("v"),
        astigmatism_angle_in_degrees=flat("angle"),
        phase_shift_in_degrees=flat("phase"),
        ctf_scale=flat("scale"),
        defocus_offset_in_angstroms=flat("offset"),
        pre_exposure_in_electrons_per_square_angstrom=flat("dose"),
        tilt_angles_in_degrees=flat("tilt"),
        voltage_in_kilovolts=constant("voltage_in_kilovolts"),
        spherical_aberration_in_millimeters=constant("spherical_aberration_in_millimeters"),
        amplitude_contrast_ratio=constant("amplitude_contrast_ratio"),
        pixel_size_in_angstroms=pixel_sizes,
        particle_rotations=particle_rotations,
        positions_in_angstroms=positions,
        particle_columns=extra,
        tilt_images=None,
        source=path,
    )


def _pixel_sizes_45(blocks: dict, table: pd.DataFrame, tomogram_names: np.ndarray, series: dict,
                    path: pathlib.Path, block: str, tomograms: pathlib.Path) -> np.ndarray:
    """Tilt-series pixel size of each particle: its optics group's `rlnTomoTiltSeriesPixelSize`
    (particle file), else its tomogram's (tomogram set)."""
    optics = blocks.get("optics")
    if optics is not None and "rlnOpticsGroup" in table.columns:
        optics = _as_table(optics)
        if "rlnTomoTiltSeriesPixelSize" in optics.columns:
            groups = _numeric(optics, "rlnOpticsGroup", path, "optics")
            sizes = _numeric(optics, "rlnTomoTiltSeriesPixelSize", path, "optics")
            wanted = _numeric(table, "rlnOpticsGroup", path, block)
            lookup = dict(zip(groups.tolist(), sizes.tolist()))
            missing = [g for g in wanted.tolist() if g not in lookup]
            if missing:
                raise InputError(f"{path}: field rlnOpticsGroup: group {missing[0]:g} is not in data_optics")
            out = np.array([lookup[g] for g in wanted.tolist()])
            return _check_pixel_sizes(out, path, "rlnTomoTiltSeriesPixelSize")
    values = [series[t].pixel_size_in_angstroms for t in tomogram_names]
    if any(v is None for v in values):
        raise InputError(f"{tomograms}: field rlnTomoTiltSeriesPixelSize: missing from data_global (and from {path.name}'s data_optics)")
    return _check_pixel_sizes(np.array(values, dtype=np.float64), tomograms, "rlnTomoTiltSeriesPixelSize")


def _check_pixel_sizes(values: np.ndarray, path: pathlib.Path, column: str) -> np.ndarray:
    if not np.all(values > 0):
        raise InputError(f"{path}: field {column}: pixel size must be positive, got {float(values[~(values > 0)][0])!r}")
    return values


def _positions_45(table: pd.DataFrame, tomogram_names: np.ndarray, series: dict, pixel_sizes: np.ndarray,
                  a_subtomogram: np.ndarray, path: pathlib.Path, block: str, tomograms: pathlib.Path) -> np.ndarray:
    """`(n, 3)` positions relative to the tomogram's centre in Å, origin shifts applied (RELION 5's
    `ParticleSet::getPosition`)."""
    centred = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
    decentred = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
    if all(c in table.columns for c in centred):
        positions = np.column_stack([_numeric(table, c, path, block) for c in centred])
    elif all(c in table.columns for c in decentred):
        pixels = np.column_stack([_numeric(table, c, path, block) for c in decentred])
        sizes = [series[t].size_in_pixels for t in tomogram_names]
        if any(s is None for s in sizes):
            raise InputError(
                f"{tomograms}: field rlnTomoSizeX: missing from data_global (needed to centre RELION 4 coordinates)"
            )
        positions = (pixels - np.stack(sizes) / 2.0) * pixel_sizes[:, None]
    else:
        raise InputError(
            f"{path}: field rlnCenteredCoordinateXAngst: data_{block} has neither rlnCenteredCoordinateX/Y/ZAngst (RELION 5) "
            "nor rlnCoordinateX/Y/Z (RELION 4)"
        )
    origin_columns = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
    if any(c in table.columns for c in origin_columns):
        origins = np.column_stack([
            _numeric(table, c, path, block) if c in table.columns else np.zeros(len(table)) for c in origin_columns
        ])
        positions = positions - np.einsum("nij,nj->ni", a_subtomogram, origins)
    return positions


# --- the images: RELION 5 2D stacks (one per particle) or RELION 3.0 rows --------------------------


class TiltSeriesImages:
    """The tilt images of tilt-series particles, opened lazily (`read_tilt_series_images`).

    RELION 4 / 5 particles (`relion_tomo_subtomo --stack2d`): each particle's `rlnImageName` is one
    `.mrcs` stack holding its visible tilt images (`rlnTomoVisibleFrames`), in frame order, so the
    `j`-th image of the stack is the particle's `j`-th tilt image (`TiltSeriesParticles.tilts`).
    RELION 3.0 subtomogram files: each tilt image is a row's `N@stack`.

    **Attributes:**

    - `particles`: the `TiltSeriesParticles` the images belong to.
    - `box_size`: `D`, pixels per side (the same for all particles).
    - `pixel_size_in_angstroms`: `(n_particles,)` pixel size of the images (RELION 5: the optics
      group's `rlnImagePixelSize`, i.e. the tilt series' times `rlnTomoSubtomogramBinning`).
    - `max_tilts`: the largest tilt count, the padded length of `read`.
    - `stack_paths`: RELION 4 / 5: `(n_particles,)` the stack of each particle; None for RELION 3.0.
    """

    def __init__(self, particles: TiltSeriesParticles, box_size: int, pixel_size_in_angstroms: np.ndarray,
                 headers: list[StackHeader] | None = None, dataset: ParticleDataset | None = None):
        self.particles = particles
        self.box_size = int(box_size)
        self.pixel_size_in_angstroms = np.asarray(pixel_size_in_angstroms, dtype=np.float64)
        self.max_tilts = int(particles.tilt_counts.max(initial=0))
        self._headers = headers
        self._dataset = dataset
        self.stack_paths = None if headers is None else tuple(h.path for h in headers)

    def __len__(self) -> int:
        return len(self.particles)

    def particle(self, index: int) -> np.ndarray:
        """The tilt images of particle `index`, `(n_tilts, D, D)` indexed `[y, x]`.

        **Returns:**

        For a RELION 4 / 5 particle, a read-only memory map of its stack (on-disk data type,
        nothing copied or checked; the file is unmapped when the array is freed); for RELION 3.0
        rows, a float32 copy.
        """
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"particle {index} of {len(self)}")
        if self._headers is None:
            return self._read_particle(index)
        header = self._headers[index]
        count = int(self.particles.tilt_counts[index])
        return np.memmap(header.path, dtype=header.dtype, mode="r", offset=header.data_offset,
                         shape=(count, header.box_size, header.box_size))

    def _read_particle(self, index: int) -> np.ndarray:
        """Particle `index`'s tilt images as float32, checked for NaN and Inf."""
        if self._dataset is not None:  # RELION 3.0 rows, resampled to the dataset's common pixel size
            rows = self.particles.tilt_image_indices[self.particles.tilts(index)]
            return self._dataset.images(rows)
        assert self._headers is not None
        header = self._headers[index]
        count = int(self.particles.tilt_counts[index])
        with open(header.path, "rb") as file:  # read, not mapped: a file per particle, no handle kept open
            file.seek(header.data_offset)
            values = np.fromfile(file, dtype=header.dtype, count=count * header.box_size**2)
        images = values.reshape(count, header.box_size, header.box_size).astype(np.float32)
        _check_finite(images, np.arange(count), header.path)
        return images

    def read(self, indices=None) -> tuple[np.ndarray, np.ndarray]:
        """The tilt images of particles `indices` (all when None), padded to `max_tilts`.

        **Returns:**

        `(images, mask)`: float32 `(len(indices), max_tilts, D, D)`, zero in the padding, and bool
        `(len(indices), max_tilts)`, True for the particle's tilt images (as
        `TiltSeriesParticles.padded`). Raises `InputError` naming the stack and the image when an
        image holds NaN or Inf.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        counts = self.particles.tilt_counts[indices]
        mask = np.arange(self.max_tilts)[None, :] < counts[:, None]
        images = np.zeros((len(indices), self.max_tilts, self.box_size, self.box_size), dtype=np.float32)
        for k, index in enumerate(indices):
            images[k, : counts[k]] = self._read_particle(int(index))
        return images, mask


def read_tilt_series_images(
    particles: TiltSeriesParticles, datadir: str | os.PathLike | None = None
) -> TiltSeriesImages:
    """Open the tilt images of tilt-series particles and check them against the particle file.

    **Arguments:**

    - `particles`: from `read_tilt_series_particles`.
    - `datadir`: RELION 4 / 5: a folder to look for the stacks in first (else they are resolved
      against the particle file's folder and its parents, the RELION project folder).

    **Returns:**

    A `TiltSeriesImages` (headers read and checked, no image read). RELION 4 / 5 particle files
    must name, in `rlnImageName`, one 2D stack per particle (RELION 5's `relion_tomo_subtomo
    --stack2d`, `Subtomograms/<rlnTomoParticleName>_stack2d.mrcs`, no `N@`) holding exactly the
    particle's visible tilt images, all of the optics group's `rlnImageSize`; 3D pseudo-subtomograms
    (`rlnImageDimensionality` 3, `rlnTomoSubTomosAre2DStacks` 0) and images premultiplied by their
    CTF (`rlnCtfDataAreCtfPremultiplied` 1, `relion_tomo_subtomo`'s default; extract with
    `--no_ctf`) are refused, as the image model describes neither. Any problem raises `InputError`
    naming the file and the field.
    """
    if particles.tilt_images is not None:
        dataset = particles.tilt_images.check_images()
        box = dataset.box_size
        assert box is not None
        pixel = np.full(len(particles), np.nan if dataset.pixel_size_in_angstroms is None else dataset.pixel_size_in_angstroms)
        return TiltSeriesImages(particles, box, pixel, dataset=dataset)

    path = particles.source
    blocks = _read_blocks(path)
    block, table = _particle_table(blocks, path)
    if len(table) != len(particles):
        raise InputError(f"{path}: field data_{block}: {len(table)} rows, but {len(particles)} particles were read")
    general = blocks.get("general")
    if general is not None:
        general_table = _as_table(general)
        if "rlnTomoSubTomosAre2DStacks" in general_table.columns:
            flag = _numeric(general_table, "rlnTomoSubTomosAre2DStacks", path, "general")[0]
            if flag != 1:
                raise InputError(
                    f"{path}: field rlnTomoSubTomosAre2DStacks: {flag:g}: the particles are 3D pseudo-subtomograms, "
                    "not 2D stacks of tilt images (extract them with relion_tomo_subtomo --stack2d)"
                )
    if "rlnImageName" not in table.columns:
        raise InputError(
            f"{path}: field rlnImageName: missing from data_{block} (no 2D stacks: extract the particles with "
            "relion_tomo_subtomo --stack2d)"
        )
    sizes, pixel_sizes = _stack_optics(blocks, table, particles, path, block)
    names = _names(table, "rlnImageName", path, block)
    folder = path.resolve().parent
    bases = ([pathlib.Path(datadir)] if datadir is not None else []) + [folder, *folder.parents]
    headers: list[StackHeader] = []
    for i, written in enumerate(names):
        particle = particles.particle_names[i]
        if "@" in written:
            raise InputError(
                f"{path}: field rlnImageName: row {i + 1} of data_{block} is {written!r}, one image of a stack, not "
                f"the 2D stack of particle {particle!r}'s tilt images"
            )
        relative = pathlib.Path(written)
        candidates = [relative] if relative.is_absolute() else [base / relative for base in bases]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(
                f"{path}: field rlnImageName: the stack {written!r} of particle {particle!r} was not found "
                f"(looked in {'datadir ' + str(datadir) + ', ' if datadir is not None else ''}{folder} and its parents)"
            )
        try:
            header = read_stack_header(found)
        except InputError as error:
            raise InputError(f"{path}: field rlnImageName: {error}") from None
        count = int(particles.tilt_counts[i])
        if header.n_images != count:
            raise InputError(
                f"{path}: field rlnImageName: {found} holds {header.n_images} images, but particle {particle!r} has "
                f"{count} tilt images (rlnTomoVisibleFrames)"
            )
        expected = sizes[i] if sizes is not None else (headers[0].box_size if headers else header.box_size)
        if header.box_size != expected:
            field = "rlnImageSize" if sizes is not None else "rlnImageName"
            what = "data_optics says" if sizes is not None else f"the stack of particle {particles.particle_names[0]!r} holds"
            raise InputError(
                f"{path}: field {field}: {found} holds {header.box_size}×{header.box_size} images, {what} {expected}"
            )
        headers.append(header)
    box = headers[0].box_size
    if pixel_sizes is None:
        pixel_sizes = np.array([h.pixel_size_in_angstroms if h.pixel_size_in_angstroms > 0 else p
                                for h, p in zip(headers, particles.pixel_size_in_angstroms)])
    return TiltSeriesImages(particles, box, pixel_sizes, headers=headers)


def _stack_optics(blocks: dict, table: pd.DataFrame, particles: TiltSeriesParticles, path: pathlib.Path,
                  block: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per particle, the box size and pixel size its optics group gives its 2D stack (None where the
    particle file has no optics group columns for them); refuses 3D and CTF-premultiplied images."""
    optics = blocks.get("optics")
    if optics is None or "rlnOpticsGroup" not in table.columns:
        return None, None
    optics = _as_table(optics)
    groups = _numeric(optics, "rlnOpticsGroup", path, "optics")
    wanted = _numeric(table, "rlnOpticsGroup", path, block)
    row_of = {g: k for k, g in enumerate(groups.tolist())}
    missing = [g for g in wanted.tolist() if g not in row_of]
    if missing:
        raise InputError(f"{path}: field rlnOpticsGroup: group {missing[0]:g} is not in data_optics")
    rows = np.array([row_of[g] for g in wanted.tolist()], dtype=np.int64)

    def column(name: str) -> np.ndarray | None:
        return _numeric(optics, name, path, "optics")[rows] if name in optics.columns else None

    dimensionality = column("rlnImageDimensionality")
    if dimensionality is not None and np.any(dimensionality != 2):
        raise InputError(
            f"{path}: field rlnImageDimensionality: {dimensionality[dimensionality != 2][0]:g}: 3D pseudo-subtomograms, "
            "not 2D stacks of tilt images (extract them with relion_tomo_subtomo --stack2d)"
        )
    premultiplied = column("rlnCtfDataAreCtfPremultiplied")
    if premultiplied is not None and np.any(premultiplied != 0):
        raise InputError(
            f"{path}: field rlnCtfDataAreCtfPremultiplied: the 2D stacks are premultiplied by their CTF, which is not "
            "modelled (extract them with relion_tomo_subtomo --stack2d --no_ctf)"
        )
    sizes = column("rlnImageSize")
    pixel_sizes = column("rlnImagePixelSize")
    if pixel_sizes is None:
        binning = column("rlnTomoSubtomogramBinning")
        if binning is not None:
            pixel_sizes = binning * particles.pixel_size_in_angstroms
    if sizes is not None:
        sizes = sizes.astype(np.int64)
    if pixel_sizes is not None:
        pixel_sizes = _check_pixel_sizes(pixel_sizes, path, "rlnImagePixelSize")
    return sizes, pixel_sizes
