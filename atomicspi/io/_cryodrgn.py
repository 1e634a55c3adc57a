"""cryoDRGN pose and CTF pickles, read through an unpickler that can only build arrays and plain data.

cryoDRGN's pose pickle is `(rotations, translations)`: `rotations` `(n, 3, 3)` are RELION's `A`
and `translations` `(n, 2)` are RELION's origin as a fraction of the box, so
`shifts_in_angstroms = -translations * D * pixel_size` (see `atomicspi.conventions`).
Its CTF pickle is an `(n, 9)` array with columns `(D, pixel size Å, defocus U Å, defocus V Å,
astigmatism angle °, voltage kV, Cs mm, amplitude contrast, phase shift °)`.
"""

import io
import os
import pathlib
import pickle

import numpy as np

from ._dataset import CTF_FIELDS
from ._errors import InputError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "str"),
    ("_codecs", "encode"),
    ("codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars, and builtin numbers, strings, tuples, lists, dicts."""

    def __init__(self, file, path: pathlib.Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise InputError(f"{self._path}: pickle: refers to {module}.{name}, which is not an array or plain data")

    def persistent_load(self, pid):
        raise InputError(f"{self._path}: pickle: persistent references are not allowed")


def _check_no_objects(value, path: pathlib.Path):
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise InputError(f"{path}: pickle: object arrays are not allowed")
    elif isinstance(value, (tuple, list)):
        for item in value:
            _check_no_objects(item, path)
    elif isinstance(value, dict):
        for item in value.values():
            _check_no_objects(item, path)


def read_restricted_pickle(path: str | os.PathLike):
    """Load a pickle that may only contain numpy arrays and plain data.

    **Arguments:**

    - `path`: the pickle file (untrusted input is fine: anything else raises `InputError`).

    **Returns:**

    The unpickled arrays, numbers, tuples, lists and dicts.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        value = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except InputError:
        raise
    except Exception as error:  # any malformed pickle: report it as bad input
        raise InputError(f"{path}: pickle: not a readable pickle ({type(error).__name__})") from None
    _check_no_objects(value, path)
    return value


def _as_float_array(value, path: pathlib.Path, field: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {field}: not a numeric array") from None
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise InputError(f"{path}: {field}: expected shape (n, {', '.join(map(str, shape_tail))}), got {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: {field}: contains NaN or Inf")
    return array


def read_cryodrgn_poses(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a cryoDRGN pose pickle.

    **Arguments:**

    - `path`: `(rotations, translations)`, or rotations alone.

    **Returns:**

    `(rotations, translations)`: RELION matrices `A` `(n, 3, 3)` and translations as a fraction of
    the box `(n, 2)` (or `None` when the pickle has none).
    """
    path = pathlib.Path(path)
    value = read_restricted_pickle(path)
    if isinstance(value, np.ndarray):
        value = (value,)
    if not isinstance(value, (tuple, list)) or len(value) not in (1, 2):
        raise InputError(f"{path}: poses: expected (rotations, translations)")
    rotations = _as_float_array(value[0], path, "rotations", (3, 3))
    orthogonality = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max(initial=0.0)
    if orthogonality > 1e-3 or np.any(np.linalg.det(rotations) < 0):
        raise InputError(f"{path}: rotations: not rotation matrices")
    translations = None
    if len(value) == 2:
        translations = _as_float_array(value[1], path, "translations", (2,))
        if len(translations) != len(rotations):
            raise InputError(f"{path}: translations: {len(translations)} rows for {len(rotations)} rotations")
    return rotations, translations


def read_cryodrgn_ctf(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a cryoDRGN CTF pickle (`(n, 9)` array).

    **Arguments:**

    - `path`: the pickle.

    **Returns:**

    A dict with `box_size`, `pixel_size_in_angstroms`, `defocus_u_in_angstroms`,
    `defocus_v_in_angstroms`, `astigmatism_angle_in_degrees`, `voltage_in_kilovolts`,
    `spherical_aberration_in_millimeters`, `amplitude_contrast_ratio`, `phase_shift_in_degrees`,
    each an `(n,)` array.
    """
    path = pathlib.Path(path)
    array = _as_float_array(read_restricted_pickle(path), path, "ctf", (9,))
    names = ("box_size", "pixel_size_in_angstroms", *CTF_FIELDS)  # cryoDRGN's column order
    table = {name: array[:, column] for column, name in enumerate(names)}
    voltage, amplitude_contrast = table["voltage_in_kilovolts"], table["amplitude_contrast_ratio"]
    for name, bad, wanted in (
        ("voltage_in_kilovolts", ~(voltage > 0), "positive"),
        ("amplitude_contrast_ratio", ~((amplitude_contrast >= 0) & (amplitude_contrast <= 1)), "between 0 and 1"),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: field {name} (column {names.index(name) + 1}): row {row + 1} is {table[name][row]:g}, not {wanted}")
    return table
