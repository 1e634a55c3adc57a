"""CXI files (Coherent X-ray Imaging, HDF5; format 1.6): XFEL diffraction patterns and their geometry.

The layout read and written (CXI 1.6, Maia 2012; all lengths in metres and energies in joules,
SI as CXI specifies):

    /cxi_version                                    160 (version × 100)
    /entry_1/data_1/data                            patterns (n, n_y, n_x), a link to the detector's
    /entry_1/instrument_1/source_1/energy           photon energy, J
    /entry_1/instrument_1/detector_1/data           the patterns, implicit axes y:x
    /entry_1/instrument_1/detector_1/distance       sample-detector distance, m
    /entry_1/instrument_1/detector_1/x_pixel_size   m (y_pixel_size: the same; square pixels)
    /entry_1/instrument_1/detector_1/corner_position   (x, y, z) of the outer corner of pixel [0, 0], m
    /entry_1/instrument_1/detector_1/basis_vectors  [[0, -p_y, 0], [-p_x, 0, 0]] (CXI's default)
    /entry_1/instrument_1/detector_1/mask           uint32 bit flags, 0 = good pixel

**Frames.** CXI's laboratory frame has `z` along the beam, `y` up and `x` horizontal (right-handed);
pixel `[i, j]` is centred at `corner_position + (i + 1/2) b_0 + (j + 1/2) b_1` for the basis
vectors `b_0` (rows) and `b_1` (columns). With CXI's default basis vectors rows run along `-y` and
columns along `-x`, so atomicspi's detector frame (`x = (j - c_x) p`, `y = (i - c_y) p`, beam along
`+z`; `atomicspi.microscope.DetectorGeometry`) is CXI's turned by 180° about the beam, and the beam
centre is

    c_x = corner_x / p_x - 1/2,     c_y = corner_y / p_y - 1/2    (pixels).

Only flat detectors perpendicular to the beam with the default basis vectors and square pixels are
read (other geometries are refused, not approximated); the distance is the same for all patterns.

**Wavelength.** `source_1/energy` (J), or NeXus' `instrument_1/beam_1/incident_energy` (J) or
`incident_wavelength` (m); `λ = h c / E`.

**Mask.** CXI's mask bits: a pixel is bad when any of invalid (0x1), saturated (0x2), hot (0x4),
dead (0x8), shadowed (0x10), bad (0x80), missing (0x200) or noisy (0x400) is set; other bits
(e.g. 0x1000, "has signal") are ignored. The mask returned is True for the pixels to use; the
writer sets bit 0x1 on the others.

**Polarization** is not a CXI field: the writer stores `DetectorGeometry.polarization` as the
attribute `atomicspi_polarization` of `source_1`; the reader uses the argument, else that
attribute, else `"x"` (horizontal: XFEL undulators polarize linearly in the horizontal plane).
"""

import dataclasses
import math
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Bool, Float

from ._errors import InputError

CXI_VERSION = 160
"""The CXI version written (1.6 × 100)."""

_PLANCK_TIMES_LIGHT_SPEED_IN_JOULE_METRES = 6.62607015e-34 * 299792458.0  # exact (SI 2019)
_BAD_PIXEL_BITS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x80 | 0x200 | 0x400
_POLARIZATIONS = ("x", "y", "unpolarized")
_POLARIZATION_ATTRIBUTE = "atomicspi_polarization"
_ENTRY = "/entry_1"
_DETECTOR = "/entry_1/instrument_1/detector_1"
_SOURCE = "/entry_1/instrument_1/source_1"
_BEAM = "/entry_1/instrument_1/beam_1"
# plausible ranges, to catch values written in other units (mm, µm, eV)
_WAVELENGTH_RANGE_IN_ANGSTROMS = (1e-3, 1e4)
_LARGEST_PIXEL_IN_METRES = 0.01
_LARGEST_DISTANCE_IN_METRES = 100.0


@dataclasses.dataclass(frozen=True)
class CXIGeometry:
    """The detector and beam of a CXI file, in atomicspi's units and frame.

    The fields are those of `atomicspi.microscope.DetectorGeometry` (which the io layer does not
    import): `DetectorGeometry(**dataclasses.asdict(geometry))` makes one.

    **Fields:**

    - `wavelength_in_angstroms`: X-ray wavelength.
    - `detector_distance_in_millimetres`: sample to detector plane along the beam.
    - `pixel_size_in_millimetres`: side of the square pixels.
    - `beam_centre_x_in_pixels`, `beam_centre_y_in_pixels`: the direct beam on the detector, in
        pixel indices (column, row).
    - `shape`: `(n_y, n_x)`.
    - `polarization`: `"x"`, `"y"` or `"unpolarized"`.
    """

    wavelength_in_angstroms: float
    detector_distance_in_millimetres: float
    pixel_size_in_millimetres: float
    beam_centre_x_in_pixels: float
    beam_centre_y_in_pixels: float
    shape: tuple[int, int]
    polarization: str = "x"


class CXIData(NamedTuple):
    """What `read_cxi` returns.

    **Fields:**

    - `patterns`: `(n, n_y, n_x)` float32 patterns, `[y, x]` (photon counts or detector units,
        as stored).
    - `geometry`: a `CXIGeometry`.
    - `mask`: `(n_y, n_x)` booleans, True for the pixels to use.
    """

    patterns: Float[np.ndarray, "n n_y n_x"]
    geometry: CXIGeometry
    mask: Bool[np.ndarray, "n_y n_x"]


def _wavelength_from_energy(energy_in_joules: float) -> float:
    return _PLANCK_TIMES_LIGHT_SPEED_IN_JOULE_METRES / energy_in_joules * 1e10


class _Reader:
    """Checked access to the datasets of one open CXI file, naming the file and field on failure."""

    def __init__(self, path: pathlib.Path, handle):
        self.path = path
        self.handle = handle

    def error(self, field: str, problem: str) -> InputError:
        return InputError(f"{self.path}: field {field}: {problem}")

    def has(self, field: str) -> bool:
        import h5py

        try:
            return isinstance(self.handle.get(field), h5py.Dataset)
        except (KeyError, OSError, RuntimeError, ValueError):  # e.g. a dangling link
            return False

    def array(self, field: str) -> np.ndarray:
        import h5py

        try:
            node = self.handle.get(field)
        except (KeyError, OSError, RuntimeError, ValueError) as error:
            raise self.error(field, f"cannot be read ({error})") from None
        if node is None:
            raise self.error(field, "missing")
        if not isinstance(node, h5py.Dataset):
            raise self.error(field, "is a group, not a dataset")
        if node.dtype.kind not in "biuf":
            raise self.error(field, f"must be real numbers, got HDF5 type {node.dtype}")
        try:
            return np.asarray(node[()])
        except (OSError, RuntimeError, ValueError, TypeError) as error:
            raise self.error(field, f"cannot be read ({error})") from None

    def positive_scalar(self, field: str, unit: str, largest: float = math.inf) -> float:
        values = self.array(field).astype(float).ravel()
        if values.size == 0:
            raise self.error(field, "is empty")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise self.error(field, f"must be positive and finite ({unit}), got {_show(values)}")
        if np.ptp(values) > 1e-9 * values.max():
            raise self.error(field, f"varies between patterns ({_show(values)}); one value is supported")
        if values[0] > largest:
            raise self.error(field, f"{values[0]:g} {unit} is implausibly large (CXI stores {unit}, SI)")
        return float(values[0])


def _show(values: np.ndarray) -> str:
    values = np.asarray(values).ravel()
    shown = ", ".join(f"{v:g}" for v in values[:4])
    return f"[{shown}{', ...' if values.size > 4 else ''}]"


def _read_wavelength(reader: _Reader) -> float:
    low, high = _WAVELENGTH_RANGE_IN_ANGSTROMS
    for field, is_energy in (
        (f"{_SOURCE}/energy", True),
        (f"{_BEAM}/incident_energy", True),
        (f"{_BEAM}/incident_wavelength", False),
    ):
        if reader.has(field):
            value = reader.positive_scalar(field, "J" if is_energy else "m")
            wavelength = _wavelength_from_energy(value) if is_energy else value * 1e10
            if not low <= wavelength <= high:
                unit = "J" if is_energy else "m"
                raise reader.error(
                    field, f"{value:g} {unit} gives a wavelength of {wavelength:g} Å (CXI stores {unit}, SI units)"
                )
            return wavelength
    raise reader.error(f"{_SOURCE}/energy", "missing (nor beam_1/incident_energy or incident_wavelength): no wavelength")


def read_cxi(
    path: str | os.PathLike,
    *,
    beam_centre_in_pixels: tuple[float, float] | None = None,
    polarization: str | None = None,
) -> CXIData:
    """Read diffraction patterns, detector geometry and mask from a CXI file.

    **Arguments:**

    - `path`: the `.cxi` (HDF5) file.
    - `beam_centre_in_pixels`: `(c_x, c_y)`; required when the file has no
        `detector_1/corner_position`, and used instead of it when given.
    - `polarization`: `"x"`, `"y"` or `"unpolarized"`; default: the file's
        `atomicspi_polarization` attribute, else `"x"` (module docstring).

    **Returns:**

    A `CXIData` `(patterns, geometry, mask)`. Raises `InputError`, naming the file and the field,
    for a missing file or dataset, a pattern stack that is not `(n, n_y, n_x)` (one `(n_y, n_x)`
    pattern is read as `n = 1`), NaN or Inf in the patterns, a non-positive distance, pixel size or
    energy, values in implausible units, non-square pixels, a geometry other than a flat detector
    perpendicular to the beam with CXI's default basis vectors, or a mask of the wrong shape.
    """
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if polarization is not None and polarization not in _POLARIZATIONS:
        raise InputError(f"polarization: {polarization!r} is not one of {', '.join(_POLARIZATIONS)}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: file: not a readable HDF5 (CXI) file ({str(error).splitlines()[0]})") from None
    with handle:
        reader = _Reader(path, handle)
        if reader.has("/cxi_version"):
            version = reader.array("/cxi_version").ravel()
            if version.size != 1 or not np.isfinite(version[0]) or version[0] < 100:
                raise reader.error("/cxi_version", f"must be the version × 100 (e.g. 160), got {_show(version)}")
        elif "cxi_version" in handle:
            raise reader.error("/cxi_version", "is not a dataset")
        data_field = f"{_ENTRY}/data_1/data" if reader.has(f"{_ENTRY}/data_1/data") else f"{_DETECTOR}/data"
        if not reader.has(data_field):
            raise reader.error(f"{_ENTRY}/data_1/data", f"missing (nor {_DETECTOR}/data): no patterns")
        patterns = reader.array(data_field)
        if patterns.ndim == 2:
            patterns = patterns[None]
        if patterns.ndim != 3 or min(patterns.shape) == 0:
            raise reader.error(data_field, f"expected patterns of shape (n, n_y, n_x), got {patterns.shape}")
        patterns = patterns.astype(np.float32)
        finite = np.isfinite(patterns).reshape(len(patterns), -1).all(axis=1)
        if not finite.all():
            raise reader.error(data_field, f"pattern {int(np.flatnonzero(~finite)[0])}: contains NaN or Inf values")
        shape = (int(patterns.shape[1]), int(patterns.shape[2]))

        pixel_x = reader.positive_scalar(f"{_DETECTOR}/x_pixel_size", "m", _LARGEST_PIXEL_IN_METRES)
        pixel_y = reader.positive_scalar(f"{_DETECTOR}/y_pixel_size", "m", _LARGEST_PIXEL_IN_METRES)
        if not math.isclose(pixel_x, pixel_y, rel_tol=1e-9):
            raise reader.error(
                f"{_DETECTOR}/y_pixel_size", f"{pixel_y:g} m differs from x_pixel_size {pixel_x:g} m (square pixels only)"
            )
        if reader.has(f"{_DETECTOR}/basis_vectors"):
            field = f"{_DETECTOR}/basis_vectors"
            basis = reader.array(field).astype(float)
            default = np.array([[0.0, -pixel_y, 0.0], [-pixel_x, 0.0, 0.0]])
            if basis.shape != (2, 3) or not np.allclose(basis, default, rtol=1e-6, atol=1e-9 * pixel_x):
                raise reader.error(
                    field,
                    f"only CXI's default [[0, -y_pixel_size, 0], [-x_pixel_size, 0, 0]] (a flat detector "
                    f"perpendicular to the beam) is supported, got {basis.tolist()}",
                )

        distance = None
        corner = None
        if reader.has(f"{_DETECTOR}/corner_position"):
            field = f"{_DETECTOR}/corner_position"
            corner = reader.array(field).astype(float).ravel()
            if corner.shape != (3,) or not np.all(np.isfinite(corner)):
                raise reader.error(field, f"expected three finite numbers (x, y, z) in m, got {_show(corner)}")
            if not 0 < corner[2] <= _LARGEST_DISTANCE_IN_METRES:
                raise reader.error(field, f"z = {corner[2]:g} m must be a positive distance in m (SI)")
        if reader.has(f"{_DETECTOR}/distance"):
            distance = reader.positive_scalar(f"{_DETECTOR}/distance", "m", _LARGEST_DISTANCE_IN_METRES)
            if corner is not None and not math.isclose(distance, corner[2], rel_tol=1e-6):
                raise reader.error(
                    f"{_DETECTOR}/distance", f"{distance:g} m differs from corner_position z = {corner[2]:g} m"
                )
        elif corner is not None:
            distance = float(corner[2])
        else:
            raise reader.error(f"{_DETECTOR}/distance", "missing (and no corner_position)")

        if beam_centre_in_pixels is not None:
            centre = np.asarray(beam_centre_in_pixels, dtype=float)
            if centre.shape != (2,) or not np.all(np.isfinite(centre)):
                raise InputError(f"beam_centre_in_pixels: expected (c_x, c_y), got {beam_centre_in_pixels!r}")
            centre_x, centre_y = float(centre[0]), float(centre[1])
        elif corner is not None:
            centre_x, centre_y = corner[0] / pixel_x - 0.5, corner[1] / pixel_y - 0.5
        else:
            raise reader.error(f"{_DETECTOR}/corner_position", "missing: give beam_centre_in_pixels to read this file")

        mask = np.ones(shape, dtype=bool)
        if reader.has(f"{_DETECTOR}/mask"):
            field = f"{_DETECTOR}/mask"
            flags = reader.array(field)
            if flags.shape != shape:
                raise reader.error(field, f"shape {flags.shape} does not match the patterns' {shape}")
            if flags.dtype.kind == "f":
                if not np.all(np.isfinite(flags)) or np.any(flags != np.round(flags)) or np.any(flags < 0):
                    raise reader.error(field, "must hold non-negative integer bit flags")
                flags = flags.astype(np.int64)
            mask = (flags.astype(np.int64) & _BAD_PIXEL_BITS) == 0

        wavelength = _read_wavelength(reader)
        if polarization is None:
            polarization = _POLARIZATIONS[0]
            if _SOURCE in handle and _POLARIZATION_ATTRIBUTE in handle[_SOURCE].attrs:
                stored = handle[_SOURCE].attrs[_POLARIZATION_ATTRIBUTE]
                stored = stored.decode() if isinstance(stored, bytes) else str(stored)
                if stored not in _POLARIZATIONS:
                    raise reader.error(
                        f"{_SOURCE} attribute {_POLARIZATION_ATTRIBUTE}",
                        f"{stored!r} is not one of {', '.join(_POLARIZATIONS)}",
                    )
                polarization = stored

    geometry = CXIGeometry(
        wavelength_in_angstroms=wavelength,
        detector_distance_in_millimetres=distance * 1e3,
        pixel_size_in_millimetres=pixel_x * 1e3,
        beam_centre_x_in_pixels=float(centre_x),
        beam_centre_y_in_pixels=float(centre_y),
        shape=shape,
        polarization=polarization,
    )
    return CXIData(patterns=patterns, geometry=geometry, mask=mask)


def write_cxi(
    path: str | os.PathLike,
    patterns: Float[np.ndarray, "n n_y n_x"],
    geometry: Any,
    mask: Bool[np.ndarray, "n_y n_x"] | None = None,
) -> pathlib.Path:
    """Write diffraction patterns and their geometry to a CXI 1.6 file (module docstring).

    **Arguments:**

    - `path`: the `.cxi` file to write (overwritten).
    - `patterns`: `(n, n_y, n_x)` (or one `(n_y, n_x)`) patterns, `[y, x]`; integer counts are
        stored as int32 (when they fit), anything else as float32.
    - `geometry`: a `CXIGeometry` or `atomicspi.microscope.DetectorGeometry` (anything with their
        fields).
    - `mask`: `(n_y, n_x)` booleans, True for good pixels (default all); bad pixels get CXI's
        "invalid" bit 0x1.

    **Returns:**

    The path written. Raises `InputError` for patterns that do not match the geometry's shape,
    NaN or Inf values, or non-positive geometry numbers.
    """
    import h5py

    path = pathlib.Path(path)
    patterns = np.asarray(patterns)
    if patterns.ndim == 2:
        patterns = patterns[None]
    shape = tuple(int(n) for n in geometry.shape)
    if patterns.ndim != 3 or patterns.shape[1:] != shape or patterns.shape[0] == 0:
        raise InputError(f"{path}: patterns: expected shape (n, {shape[0]}, {shape[1]}) from the geometry, got {patterns.shape}")
    if patterns.dtype.kind not in "biuf":
        raise InputError(f"{path}: patterns: must be real numbers, got {patterns.dtype}")
    if patterns.dtype.kind in "biu" and (patterns.size == 0 or np.abs(patterns).max() < 2**31):
        patterns = patterns.astype(np.int32)
    else:
        patterns = patterns.astype(np.float32)
        if not np.all(np.isfinite(patterns)):
            raise InputError(f"{path}: patterns: contain NaN or Inf values")
    numbers = {}
    for name in ("wavelength_in_angstroms", "detector_distance_in_millimetres", "pixel_size_in_millimetres"):
        value = float(np.asarray(getattr(geometry, name)))
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"{path}: geometry {name}: must be a positive finite number, got {value!r}")
        numbers[name] = value
    centre = [float(np.asarray(getattr(geometry, name))) for name in ("beam_centre_x_in_pixels", "beam_centre_y_in_pixels")]
    if not all(math.isfinite(c) for c in centre):
        raise InputError(f"{path}: geometry beam centre: must be finite, got {centre}")
    polarization = str(getattr(geometry, "polarization", "x"))
    if polarization not in _POLARIZATIONS:
        raise InputError(f"{path}: geometry polarization: {polarization!r} is not one of {', '.join(_POLARIZATIONS)}")
    flags = np.zeros(shape, dtype=np.uint32)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise InputError(f"{path}: mask: shape {mask.shape} does not match the patterns' {shape}")
        flags[~mask.astype(bool)] = 0x1

    pixel = numbers["pixel_size_in_millimetres"] * 1e-3
    distance = numbers["detector_distance_in_millimetres"] * 1e-3
    energy = _PLANCK_TIMES_LIGHT_SPEED_IN_JOULE_METRES / (numbers["wavelength_in_angstroms"] * 1e-10)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("cxi_version", data=np.int32(CXI_VERSION))
        handle.create_dataset("number_of_entries", data=np.int32(1))
        source = handle.create_group(_SOURCE)
        source.create_dataset("energy", data=energy)
        source.attrs[_POLARIZATION_ATTRIBUTE] = polarization
        detector = handle.create_group(_DETECTOR)
        detector.create_dataset(
            "data", data=patterns, chunks=(1, *shape), compression="gzip", compression_opts=4, shuffle=True
        )
        detector.create_dataset("distance", data=distance)
        detector.create_dataset("x_pixel_size", data=pixel)
        detector.create_dataset("y_pixel_size", data=pixel)
        detector.create_dataset("corner_position", data=np.array([(centre[0] + 0.5) * pixel, (centre[1] + 0.5) * pixel, distance]))
        detector.create_dataset("basis_vectors", data=np.array([[0.0, -pixel, 0.0], [-pixel, 0.0, 0.0]]))
        detector.create_dataset("mask", data=flags)
        handle.create_group(f"{_ENTRY}/data_1")
        handle[f"{_ENTRY}/data_1/data"] = h5py.SoftLink(f"{_DETECTOR}/data")
    return path
