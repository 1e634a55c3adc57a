"""MRC particle stacks: headers, lazy memory-mapped reading by index, writing."""

import dataclasses
import mmap
import os
import pathlib
import threading
import warnings
from collections.abc import Iterable, Sequence

import mrcfile
import mrcfile.utils
import numpy as np

from ._errors import InputError

_HEADER_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class StackHeader:
    """What an MRC header says about a particle stack.

    **Fields:**

    - `path`: the file.
    - `n_images`: number of images (`nz`; a single image counts as a stack of one).
    - `box_size`: image side in pixels (images are square).
    - `pixel_size_in_angstroms`: the header's voxel size along x, 0.0 when the header has none.
    - `data_offset`: byte offset of the first image.
    - `dtype`: the on-disk data type (with its byte order).
    """

    path: pathlib.Path
    n_images: int
    box_size: int
    pixel_size_in_angstroms: float
    data_offset: int
    dtype: np.dtype


def read_stack_header(path: str | os.PathLike) -> StackHeader:
    """Read and check the header of an `.mrcs`/`.mrc` stack without touching the images.

    **Arguments:**

    - `path`: the stack file.

    **Returns:**

    A `StackHeader`. Raises `InputError` when the file is missing, is not MRC, holds complex or
    non-square images, gives a negative pixel size, or is shorter than its header says (truncated).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as handle:
                header = handle.header
                dtype = mrcfile.utils.data_dtype_from_header(header)
                mode = int(header.mode)
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                extended_bytes = int(header.nsymbt)
                pixel_size = float(handle.voxel_size.x)
    except (ValueError, OSError, EOFError, TypeError, AttributeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: header: not a readable MRC file ({message})") from None
    if dtype.kind == "c":
        raise InputError(f"{path}: header: mode {mode} holds complex numbers (Fourier transforms?), not real-space images")
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f"{path}: header: dimensions nx={nx}, ny={ny}, nz={nz} are not positive")
    if nx != ny:
        raise InputError(f"{path}: header: images are {nx}×{ny}, not square")
    offset = _HEADER_BYTES + extended_bytes
    expected = offset + nz * ny * nx * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(
            f"{path}: data: file is truncated ({actual} bytes, header promises {nz} images of {nx}×{ny} = {expected} bytes)"
        )
    if not np.isfinite(pixel_size):
        pixel_size = 0.0
    if pixel_size < 0:
        raise InputError(f"{path}: header: pixel size (voxel size) {pixel_size:g} Å is negative")
    return StackHeader(path, nz, nx, pixel_size, offset, dtype)


class _MappedStack:
    """One memory-mapped stack whose pages are released after each read.

    The kernel may map a whole large page-cache folio (up to MBs) when one image is touched, so
    images are copied out in small groups and the mapping is released (`MADV_DONTNEED`, which
    drops only this process's page-table entries, not the page cache) after each group: resident
    memory stays at the size of the batch being read, whatever the size of the stack.
    """

    _GROUP = 16

    def __init__(self, header: StackHeader):
        self.header = header
        with open(header.path, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        d = header.box_size
        self._images = np.frombuffer(
            self._map, dtype=header.dtype, count=header.n_images * d * d, offset=header.data_offset
        ).reshape(header.n_images, d, d)
        self._can_release = hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED")
        self._native_float32 = header.dtype == np.dtype(np.float32)

    def read(self, indices: np.ndarray) -> np.ndarray:
        d = self.header.box_size
        output = np.empty((len(indices), d, d), dtype=np.float32)
        for start in range(0, len(indices), self._GROUP):
            group = indices[start : start + self._GROUP]
            if self._native_float32:
                np.take(self._images, group, axis=0, out=output[start : start + len(group)])
            else:
                output[start : start + len(group)] = self._images[group]
            if self._can_release:
                self._map.madvise(mmap.MADV_DONTNEED)
        return output


def _check_finite(images: np.ndarray, indices: np.ndarray, path: pathlib.Path) -> None:
    """Raise `InputError` naming the first image with NaN or Inf (a fast sum test first, exact test on failure)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(images.sum(axis=(1, 2), dtype=np.float64)).all():
            return
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if not finite.all():
        bad = int(indices[np.flatnonzero(~finite)[0]])
        raise InputError(f"{path}: image {bad + 1}: contains NaN or Inf values")


class ImageStacks:
    """Particle images addressed as (stack file, index in that stack), opened lazily.

    Nothing is opened until `check` or `read`. Reading memory-maps each stack once and copies
    only the requested images; every image read is checked for NaN and Inf (so bad values are
    reported when the batch containing them is read, naming the stack and the image).

    **Arguments:**

    - `stack_paths`: the distinct stack files.
    - `stack_numbers`: for each particle, which entry of `stack_paths` holds it.
    - `image_indices`: for each particle, its 0-based index in its stack.
    - `source`: the metadata file that named the stacks (for error messages).
    - `field`: the metadata field that named them (for error messages).
    """

    def __init__(
        self,
        stack_paths: Sequence[pathlib.Path],
        stack_numbers: np.ndarray,
        image_indices: np.ndarray,
        source: pathlib.Path,
        field: str,
    ):
        self.stack_paths = tuple(pathlib.Path(p) for p in stack_paths)
        self.stack_numbers = np.asarray(stack_numbers, dtype=np.int64)
        self.image_indices = np.asarray(image_indices, dtype=np.int64)
        self.source = pathlib.Path(source)
        self.field = field
        self._stacks: dict[int, _MappedStack] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.image_indices)

    def subset(self, indices: np.ndarray) -> "ImageStacks":
        """The images of the particles `indices`, in that order."""
        return ImageStacks(
            self.stack_paths, self.stack_numbers[indices], self.image_indices[indices], self.source, self.field
        )

    def check(self) -> list[StackHeader]:
        """Open every stack's header; check existence, truncation, index range and a common box.

        **Returns:**

        The headers of the stacks, in the order of `stack_paths`. Raises `InputError` otherwise.
        """
        headers = []
        for number, path in enumerate(self.stack_paths):
            try:
                header = read_stack_header(path)
            except InputError as error:
                raise InputError(f"{self.source}: field {self.field}: {error}") from None
            used = self.image_indices[self.stack_numbers == number]
            if used.size and (used.min() < 0 or used.max() >= header.n_images):
                bad = int(used.max() if used.max() >= header.n_images else used.min())
                raise InputError(
                    f"{self.source}: field {self.field}: image {bad + 1} requested from {path}, which holds {header.n_images} images"
                )
            headers.append(header)
        boxes = sorted({h.box_size for h in headers})
        if len(boxes) > 1:
            raise InputError(f"{self.source}: field {self.field}: stacks have different box sizes {boxes}")
        return headers

    def _stack(self, number: int) -> _MappedStack:
        with self._lock:
            if number not in self._stacks:
                try:
                    header = read_stack_header(self.stack_paths[number])
                except InputError as error:
                    raise InputError(f"{self.source}: field {self.field}: {error}") from None
                self._stacks[number] = _MappedStack(header)
            return self._stacks[number]

    def read(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images of particles `indices` as float32 `(len(indices), D, D)`, indexed `[y, x]`."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise InputError(f"{self.source}: field {self.field}: no particles requested")
        numbers = self.stack_numbers[indices]
        within = self.image_indices[indices]
        distinct = np.unique(numbers)
        parts = []
        for number in distinct:
            stack = self._stack(int(number))
            where = np.flatnonzero(numbers == number) if len(distinct) > 1 else None
            wanted = within if where is None else within[where]
            if wanted.min() < 0 or wanted.max() >= stack.header.n_images:
                raise InputError(
                    f"{self.source}: field {self.field}: image {int(wanted.max()) + 1} requested from {stack.header.path}, "
                    f"which holds {stack.header.n_images} images"
                )
            images = stack.read(wanted)
            _check_finite(images, wanted, stack.header.path)
            parts.append((where, images))
        if len(parts) == 1:
            return parts[0][1]
        boxes = {images.shape[1] for _, images in parts}
        if len(boxes) > 1:
            raise InputError(f"{self.source}: field {self.field}: stacks have different box sizes {sorted(boxes)}")
        output = np.empty((len(indices), *parts[0][1].shape[1:]), dtype=np.float32)
        for where, images in parts:
            output[where] = images
        return output


def write_stack(
    path: str | os.PathLike, images: np.ndarray, pixel_size_in_angstroms: float
) -> pathlib.Path:
    """Write images to an MRC stack (mode 2, float32, image-stack space group 0).

    **Arguments:**

    - `path`: the `.mrcs` file to write (overwritten).
    - `images`: `(n, D, D)` images indexed `[y, x]`.
    - `pixel_size_in_angstroms`: stored as the header's voxel size.

    **Returns:**

    The path written.
    """
    path = pathlib.Path(path)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"{path}: images: expected shape (n, D, D), got {images.shape}")
    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(images)
        handle.set_image_stack()
        handle.voxel_size = float(pixel_size_in_angstroms)
    return path


def write_stack_in_chunks(
    path: str | os.PathLike,
    chunks: Iterable[np.ndarray],
    n_images: int,
    box_size: int,
    pixel_size_in_angstroms: float,
) -> pathlib.Path:
    """Write a stack too large for memory, chunk after chunk, through a memory map.

    **Arguments:**

    - `path`: the `.mrcs` file to write (overwritten).
    - `chunks`: arrays `(k, D, D)` whose lengths add up to `n_images`.
    - `n_images`, `box_size`: the stack's shape.
    - `pixel_size_in_angstroms`: stored as the header's voxel size.

    **Returns:**

    The path written.
    """
    path = pathlib.Path(path)
    with mrcfile.new_mmap(path, shape=(n_images, box_size, box_size), mrc_mode=2, overwrite=True) as handle:
        handle.set_image_stack()
        handle.voxel_size = float(pixel_size_in_angstroms)
        start = 0
        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=np.float32)
            handle.data[start : start + len(chunk)] = chunk
            start += len(chunk)
            handle.flush()
        if start != n_images:
            raise InputError(f"{path}: images: {start} images written, {n_images} expected")
    return path
