"""The particle dataset: lazy images, per-particle CTF, optional poses, minibatches streamed from disk."""

import dataclasses
import os
import pathlib
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from ._errors import InputError
from ._mrc import ImageStacks, read_stack_header, write_stack_in_chunks

CTF_FIELDS = (
    "defocus_u_in_angstroms",
    "defocus_v_in_angstroms",
    "astigmatism_angle_in_degrees",
    "voltage_in_kilovolts",
    "spherical_aberration_in_millimeters",
    "amplitude_contrast_ratio",
    "phase_shift_in_degrees",
)
"""The CTF values every dataset with a CTF has, `(n,)` per particle."""

PER_PARTICLE_CTF_FIELDS = ("b_factor_in_angstroms_squared", "scale")
"""Optional `(n,)` per-particle CTF values (`rlnCtfBfactor`, `rlnCtfScalefactor`; cryoSPARC's
`ctf/bfactor`, `ctf/scale`), in `ParticleDataset.ctf` only when the file has them."""

OPTICS_GROUP_CTF_FIELDS = (
    "beam_tilt_x_in_milliradians",
    "beam_tilt_y_in_milliradians",
    "odd_zernike_coefficients",
    "even_zernike_coefficients",
)
"""Optional CTF values kept per optics group and spread to the particles in `ParticleDataset.batch`."""

OPTIONAL_CTF_FIELDS = PER_PARTICLE_CTF_FIELDS + OPTICS_GROUP_CTF_FIELDS
"""Every CTF value a batch may carry besides `CTF_FIELDS` (all are `CTFParameters` fields)."""


@dataclasses.dataclass(frozen=True)
class OpticsGroup:
    """One RELION optics group (cryoSPARC exposure group).

    **Fields:**

    - `number`: the group's number as written in the file (`rlnOpticsGroup`).
    - `name`: its name (`rlnOpticsGroupName`).
    - `pixel_size_in_angstroms`, `box_size`: image pixel size and side (None when unknown).
    - `voltage_in_kilovolts`, `spherical_aberration_in_millimeters`, `amplitude_contrast_ratio`.
    - `beam_tilt_in_milliradians`: `(x, y)` (`rlnBeamTiltX`, `rlnBeamTiltY`).
    - `odd_zernike`, `even_zernike`: RELION's aberration coefficients (empty when absent).
    - `extra`: other optics columns, `(name, text)` pairs, written back unchanged.
    """

    number: int
    name: str
    pixel_size_in_angstroms: float | None
    box_size: int | None
    voltage_in_kilovolts: float
    spherical_aberration_in_millimeters: float
    amplitude_contrast_ratio: float
    beam_tilt_in_milliradians: tuple[float, float] = (0.0, 0.0)
    odd_zernike: tuple[float, ...] = ()
    even_zernike: tuple[float, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()


class ParticleBatch(NamedTuple):
    """A minibatch.

    **Fields:**

    - `indices`: `(B,)` particle indices into the dataset.
    - `images`: `(B, D, D)` float32 images indexed `[y, x]`.
    - `ctf`: dict of `(B,)` float arrays named as `CTF_FIELDS` (the field names of
      `atomicspi.microscope.CTFParameters`); plus `b_factor_in_angstroms_squared` and `scale`
      `(B,)` when the dataset has them (`PER_PARTICLE_CTF_FIELDS`), `beam_tilt_x_in_milliradians`
      and `beam_tilt_y_in_milliradians` `(B,)` when some optics group has beam tilt, and
      `odd_zernike_coefficients` / `even_zernike_coefficients` `(B, n)` (RELION's order, padded
      with zeros to the longest group: the same `n` for every batch of a dataset) when some group
      has them; None when the dataset has no CTF. Which keys are present is a property of the
      dataset, the same for all its batches.
    - `rotations`: `(B, 3, 3)` RELION matrices `A`, or None.
    - `shifts_in_angstroms`: `(B, 2)` `(x, y)`, or None.
    """

    indices: np.ndarray
    images: np.ndarray
    ctf: dict[str, np.ndarray] | None
    rotations: np.ndarray | None
    shifts_in_angstroms: np.ndarray | None


@dataclasses.dataclass(frozen=True, eq=False)
class ParticleDataset:
    """Particles: lazily read images with their CTF and (optionally) poses.

    Conventions are those of `atomicspi.conventions`: `rotations` are RELION's `A`,
    `shifts_in_angstroms` are `(x, y)` = −rlnOrigin in Å.

    **Fields:**

    - `image_stacks`: where the images are (`ImageStacks`; nothing is read until asked).
    - `pixel_size_in_angstroms`: the pixel size of the images as `images` and `batch` return them
      (None only before the stacks were checked, for a RELION 3.0 star without pixel size
      columns). When optics groups differ in pixel size (`OpticsGroup.pixel_size_in_angstroms`,
      the stacks' own), it is the finest, and the other groups' images are resampled to it as
      they are read (`resample_to_pixel_size`).
    - `box_size`: image side in pixels (None only before the stacks were checked).
    - `ctf`: dict of `(n,)` float64 arrays named as `CTF_FIELDS`, plus those of
      `PER_PARTICLE_CTF_FIELDS` the input has; None when the input has no CTF.
    - `optics_groups`: the `OpticsGroup`s; `optics_group_indices` `(n,)` indexes into them.
    - `rotations`: `(n, 3, 3)` or None; `shifts_in_angstroms`: `(n, 2)` or None.
    - `extra_columns`: RELION particle columns not interpreted here, `name -> (n,)` array, kept so
      that star → dataset → star keeps them.
    - `source`: the file the metadata came from.
    """

    image_stacks: ImageStacks
    pixel_size_in_angstroms: float | None
    box_size: int | None
    ctf: Mapping[str, np.ndarray] | None
    optics_groups: tuple[OpticsGroup, ...]
    optics_group_indices: np.ndarray
    rotations: np.ndarray | None
    shifts_in_angstroms: np.ndarray | None
    extra_columns: Mapping[str, np.ndarray]
    source: object

    def __len__(self) -> int:
        return len(self.image_stacks)

    @property
    def defocus_u_in_angstroms(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["defocus_u_in_angstroms"]

    @property
    def defocus_v_in_angstroms(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["defocus_v_in_angstroms"]

    @property
    def astigmatism_angle_in_degrees(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["astigmatism_angle_in_degrees"]

    @property
    def voltage_in_kilovolts(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["voltage_in_kilovolts"]

    @property
    def spherical_aberration_in_millimeters(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["spherical_aberration_in_millimeters"]

    @property
    def amplitude_contrast_ratio(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["amplitude_contrast_ratio"]

    @property
    def phase_shift_in_degrees(self) -> np.ndarray | None:
        return None if self.ctf is None else self.ctf["phase_shift_in_degrees"]

    @property
    def beam_tilt_in_milliradians(self) -> np.ndarray:
        """`(n, 2)` beam tilt of each particle's optics group."""
        table = np.array([g.beam_tilt_in_milliradians for g in self.optics_groups], dtype=np.float64).reshape(-1, 2)
        return table[self.optics_group_indices]

    def check_images(self) -> "ParticleDataset":
        """Open every stack header and check it against the metadata.

        **Returns:**

        The dataset with `box_size` and (when the metadata had none) `pixel_size_in_angstroms`
        taken from the headers. Raises `InputError` on missing or truncated stacks, indices past
        the end of a stack, mixed box sizes, or a box that disagrees with the metadata.
        """
        headers = self.image_stacks.check()
        box = headers[0].box_size if headers else self.box_size
        if self.box_size is not None and box != self.box_size:
            raise InputError(
                f"{self.image_stacks.source}: field box size: metadata says {self.box_size} pixels, "
                f"{headers[0].path} holds {box}×{box} images"
            )
        pixel_size = self.pixel_size_in_angstroms
        if pixel_size is None:
            pixel_size = headers[0].pixel_size_in_angstroms if headers else 0.0
            if not pixel_size > 0:
                raise InputError(
                    f"{self.image_stacks.source}: field pixel size: none in the metadata and none in the header of {headers[0].path}"
                )
        groups = tuple(
            dataclasses.replace(
                g, box_size=box, pixel_size_in_angstroms=g.pixel_size_in_angstroms if _known(g.pixel_size_in_angstroms) else pixel_size
            )
            for g in self.optics_groups
        )
        return dataclasses.replace(self, box_size=box, pixel_size_in_angstroms=pixel_size, optics_groups=groups)

    def write_images(self, stack_path: str | os.PathLike) -> pathlib.Path:
        """Copy all images, in order, into one `.mrcs` stack, streamed in chunks of about 16 MiB."""
        stack_path = pathlib.Path(stack_path)
        n = len(self)
        box_size, pixel_size = self.box_size, self.pixel_size_in_angstroms
        if box_size is None or pixel_size is None:
            raise ValueError("write_images: the box size or pixel size is unknown (call check_images first)")
        chunk = max(1, 2**24 // (4 * box_size**2))
        write_stack_in_chunks(
            stack_path,
            (self.images(np.arange(i, min(i + chunk, n))) for i in range(0, n, chunk)),
            n,
            box_size,
            pixel_size,
        )
        return stack_path

    def subset(self, indices) -> "ParticleDataset":
        """The particles `indices` (any integer index array or boolean mask), in that order."""
        indices = np.arange(len(self))[np.asarray(indices)]
        pick = lambda array: None if array is None else array[indices]  # noqa: E731
        return dataclasses.replace(
            self,
            image_stacks=self.image_stacks.subset(indices),
            ctf=None if self.ctf is None else {k: v[indices] for k, v in self.ctf.items()},
            optics_group_indices=self.optics_group_indices[indices],
            rotations=pick(self.rotations),
            shifts_in_angstroms=pick(self.shifts_in_angstroms),
            extra_columns={k: v[indices] for k, v in self.extra_columns.items()},
        )

    def images(self, indices=None) -> np.ndarray:
        """Images `(B, D, D)` float32, indexed `[y, x]`; all of them when `indices` is None.

        Raises `InputError` naming the stack and image when an image holds NaN or Inf.
        """
        if indices is None:
            indices = np.arange(len(self))
        images = self.image_stacks.read(indices)
        return self._on_common_grid(images, np.asarray(indices, dtype=np.int64).reshape(-1))

    def _on_common_grid(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Images of optics groups whose pixel size differs from the dataset's, resampled to it
        (`resample_to_pixel_size`); the others untouched."""
        target = self.pixel_size_in_angstroms
        if target is None or len(self.optics_groups) < 2:
            return images
        groups = self.optics_group_indices[indices]
        for number in np.unique(groups):
            source = self.optics_groups[number].pixel_size_in_angstroms
            if _known(source) and not same_pixel_size(source, target):
                rows = groups == number
                images[rows] = resample_to_pixel_size(images[rows], source, target)
        return images

    def batch(self, indices) -> ParticleBatch:
        """The `ParticleBatch` of particles `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        ctf = None
        if self.ctf is not None:
            ctf = {k: v[indices] for k, v in self.ctf.items()}
            groups = self.optics_group_indices[indices]
            if any(g.beam_tilt_in_milliradians != (0.0, 0.0) for g in self.optics_groups):
                tilt = self.beam_tilt_in_milliradians[indices]
                ctf["beam_tilt_x_in_milliradians"] = tilt[:, 0]
                ctf["beam_tilt_y_in_milliradians"] = tilt[:, 1]
            for name, attribute in (("odd_zernike_coefficients", "odd_zernike"), ("even_zernike_coefficients", "even_zernike")):
                width = max(len(getattr(g, attribute)) for g in self.optics_groups)
                if width:
                    table = np.zeros((len(self.optics_groups), width))
                    for row, group in enumerate(self.optics_groups):
                        table[row, : len(getattr(group, attribute))] = getattr(group, attribute)
                    ctf[name] = table[groups]
        return ParticleBatch(
            indices=indices,
            images=self.images(indices),
            ctf=ctf,
            rotations=None if self.rotations is None else self.rotations[indices],
            shifts_in_angstroms=None if self.shifts_in_angstroms is None else self.shifts_in_angstroms[indices],
        )

    def minibatches(
        self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True, prefetch: int = 2
    ) -> Iterator[ParticleBatch]:
        """One epoch of minibatches streamed from disk, read ahead by a background thread.

        **Arguments:**

        - `batch_size`: particles per batch (the last batch may be smaller).
        - `seed`, `epoch`: the order is a permutation drawn from `(seed, epoch)`, so it is
          reproducible and differs between epochs.
        - `shuffle`: False keeps file order.
        - `prefetch`: batches read ahead (0 reads in the calling thread).

        **Returns:**

        An iterator of `ParticleBatch`. Errors in the reading thread are raised in the caller.
        """
        if batch_size < 1:
            raise InputError(f"{self.source}: field batch_size: must be at least 1, got {batch_size}")
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(len(self))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if prefetch <= 0:
            return (self.batch(chunk) for chunk in chunks)
        return _prefetched(self, chunks, prefetch)


_DONE = object()


def _prefetched(dataset: ParticleDataset, chunks: list[np.ndarray], prefetch: int) -> Iterator[ParticleBatch]:
    buffer: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce():
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                item = dataset.batch(chunk)
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the consumer, which raises it
            buffer.put(error)
            return
        buffer.put(_DONE)

    thread = threading.Thread(target=produce, daemon=True, name="atomicspi-prefetch")
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


PIXEL_SIZE_TOLERANCE = 1e-4
"""Relative difference below which two pixel sizes are the same (no resampling)."""


def _known(pixel_size) -> bool:
    return pixel_size is not None and bool(np.isfinite(pixel_size)) and pixel_size > 0


def same_pixel_size(a: float, b: float) -> bool:
    """Whether two pixel sizes agree within `PIXEL_SIZE_TOLERANCE` (relative)."""
    return abs(a - b) <= PIXEL_SIZE_TOLERANCE * max(abs(a), abs(b))


def resample_to_pixel_size(images: np.ndarray, source_pixel_size: float, target_pixel_size: float) -> np.ndarray:
    """Images `(B, D, D)` sampled at `source_pixel_size` resampled to `target_pixel_size` (same box
    `D`, same centre pixel `D // 2`) by band-limited (trigonometric) interpolation.

    The image is taken as the periodic band-limited function through its samples (its DFT); that
    function is evaluated on the new grid, pixel `i` at `(i - D // 2) · target` Å from the centre.
    This is Fourier padding to the finer pixel when the sizes are commensurate and exact for
    band-limited images whatever the ratio; it is done separably, `R @ image @ Rᵀ`, with the 1-D
    Dirichlet kernel `R[i, j] = (1/D) Σ_k cos(2π k (s_i - j) / D)` over the `D` frequencies of the
    source grid (for even `D`, the Nyquist term as a cosine), `s_i` pixel `i`'s position in source
    pixels. With a finer target (the datasets' choice: the finest group's pixel size) no content
    is lost and nothing aliases; the new grid then covers a slightly smaller field of view, and
    the band between the two Nyquist frequencies stays empty (the coarser images have neither
    signal nor noise there). A coarser target would alias what lies beyond its Nyquist frequency.
    """
    box = images.shape[-1]
    centre = box // 2
    positions = (np.arange(box) - centre) * (target_pixel_size / source_pixel_size) + centre
    difference = positions[:, None] - np.arange(box)[None, :]
    frequencies = np.arange(1, (box - 1) // 2 + 1)
    kernel = 1.0 + 2.0 * np.cos(2.0 * np.pi * difference[..., None] * frequencies / box).sum(axis=-1)
    if box % 2 == 0:
        kernel = kernel + np.cos(np.pi * difference)
    kernel = kernel / box
    resampled = np.einsum("ij,bjk,lk->bil", kernel, np.asarray(images, dtype=np.float64), kernel, optimize=True)
    return resampled.astype(np.float32)


def group_optics(
    labels: np.ndarray,
    names: dict[int, str],
    pixel_size_in_angstroms: float | None,
    box_size: int | None,
    voltage_in_kilovolts: np.ndarray,
    spherical_aberration_in_millimeters: np.ndarray,
    amplitude_contrast_ratio: np.ndarray,
    beam_tilt_in_milliradians: np.ndarray,
    template: dict[int, OpticsGroup] | None = None,
    odd_zernike: np.ndarray | None = None,
    even_zernike: np.ndarray | None = None,
    pixel_sizes_in_angstroms: np.ndarray | None = None,
) -> tuple[tuple[OpticsGroup, ...], np.ndarray]:
    """Optics groups from per-particle values: one group per distinct (label, voltage, Cs, Q0, tilt
    and, when given, Zernike coefficients).

    **Arguments:**

    - `labels`: `(n,)` integer group labels from the file (all equal when it has none).
    - `names`: label -> group name.
    - `pixel_size_in_angstroms`, `box_size`: shared by all groups (a template's own pixel size wins).
    - the per-particle optical values, `(n,)` each and `(n, 2)` for the beam tilt.
    - `template`: label -> existing `OpticsGroup` whose Zernike terms (unless given) and extra
      columns are kept.
    - `odd_zernike`, `even_zernike`: `(n, k)` per-particle RELION coefficients, or None.
    - `pixel_sizes_in_angstroms`: `(n,)` per-particle pixel sizes of the stacks (they then join
      the key and set each group's), or None for `pixel_size_in_angstroms` everywhere.

    **Returns:**

    `(optics_groups, optics_group_indices)`, groups numbered from 1 in order of first appearance
    of their label; a label whose particles differ in optics is split into several groups.
    """
    n = len(labels)
    odd = np.zeros((n, 0)) if odd_zernike is None else np.asarray(odd_zernike, dtype=np.float64).reshape(n, -1)
    even = np.zeros((n, 0)) if even_zernike is None else np.asarray(even_zernike, dtype=np.float64).reshape(n, -1)
    pixels = np.zeros(n) if pixel_sizes_in_angstroms is None else np.asarray(pixel_sizes_in_angstroms, dtype=np.float64)  # no NaN: np.unique splits NaNs
    keys = np.column_stack(
        [labels, voltage_in_kilovolts, spherical_aberration_in_millimeters, amplitude_contrast_ratio, beam_tilt_in_milliradians, pixels, odd, even]
    ).astype(np.float64)
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    groups = []
    for number, row in enumerate(unique[order], start=1):
        label = int(row[0])
        kept = (template or {}).get(label)
        split = np.count_nonzero(unique[:, 0] == row[0]) > 1
        name = names.get(label, f"opticsGroup{label}")
        odd_row, even_row = row[7 : 7 + odd.shape[1]], row[7 + odd.shape[1] :]
        group_pixel_size: float | None
        if pixel_sizes_in_angstroms is not None:
            group_pixel_size = float(row[6])
        elif kept and _known(kept.pixel_size_in_angstroms):
            group_pixel_size = kept.pixel_size_in_angstroms
        else:
            group_pixel_size = pixel_size_in_angstroms
        groups.append(
            OpticsGroup(
                number=number,
                name=f"{name}_{number}" if split else name,
                pixel_size_in_angstroms=group_pixel_size,
                box_size=box_size,
                voltage_in_kilovolts=float(row[1]),
                spherical_aberration_in_millimeters=float(row[2]),
                amplitude_contrast_ratio=float(row[3]),
                beam_tilt_in_milliradians=(float(row[4]), float(row[5])),
                odd_zernike=tuple(odd_row.tolist()) if odd_zernike is not None else (kept.odd_zernike if kept else ()),
                even_zernike=tuple(even_row.tolist()) if even_zernike is not None else (kept.even_zernike if kept else ()),
                extra=kept.extra if kept else (),
            )
        )
    return tuple(groups), rank[np.asarray(inverse).reshape(-1)]


def particle_dataset_from_arrays(
    stack_path,
    pixel_size_in_angstroms: float,
    ctf: Mapping[str, np.ndarray] | None = None,
    rotations: np.ndarray | None = None,
    shifts_in_angstroms: np.ndarray | None = None,
) -> ParticleDataset:
    """A dataset over an existing stack (all its images, in order) with metadata from arrays.

    Use it to write simulated particles: `write_stack(stack, images, pixel_size)`, then
    `write_relion_star(star, particle_dataset_from_arrays(stack, pixel_size, ctf, rotations, shifts))`.

    **Arguments:**

    - `stack_path`: the `.mrcs` holding the images.
    - `pixel_size_in_angstroms`: the pixel size.
    - `ctf`: dict of `(n,)` arrays named as `CTF_FIELDS` (scalars are broadcast), or None; it may
      also hold any of `OPTIONAL_CTF_FIELDS`: `b_factor_in_angstroms_squared`, `scale`, the beam
      tilt `(n,)` each, and `odd_zernike_coefficients` / `even_zernike_coefficients` `(n, k)` or
      `(k,)` (particles that differ in beam tilt or Zernike terms get their own optics groups).
    - `rotations`: `(n, 3, 3)` RELION matrices, or None.
    - `shifts_in_angstroms`: `(n, 2)`, or None (zeros when rotations are given).

    **Returns:**

    The checked `ParticleDataset`.
    """
    stack_path = pathlib.Path(stack_path)
    header = read_stack_header(stack_path)
    n = header.n_images
    images = ImageStacks([stack_path], np.zeros(n, dtype=np.int64), np.arange(n), stack_path, "images")
    if ctf is not None:
        missing = [k for k in CTF_FIELDS if k not in ctf]
        if missing:
            raise InputError(f"{stack_path}: field {missing[0]}: missing from the CTF parameters")
        unknown = [k for k in ctf if k not in CTF_FIELDS + OPTIONAL_CTF_FIELDS]
        if unknown:
            raise InputError(f"{stack_path}: field {unknown[0]}: not a CTF parameter")
        per_particle = lambda name: np.broadcast_to(np.asarray(ctf[name], dtype=np.float64), (n,)).copy()  # noqa: E731
        tilt = np.column_stack([
            per_particle(name) if name in ctf else np.zeros(n)
            for name in ("beam_tilt_x_in_milliradians", "beam_tilt_y_in_milliradians")
        ])
        zernike = {
            name: np.broadcast_to(np.asarray(ctf[name], dtype=np.float64), (n, np.shape(ctf[name])[-1])).copy()
            for name in ("odd_zernike_coefficients", "even_zernike_coefficients") if name in ctf
        }
        ctf = {k: per_particle(k) for k in CTF_FIELDS + PER_PARTICLE_CTF_FIELDS if k in ctf}
        groups, group_indices = group_optics(
            np.ones(n), {}, pixel_size_in_angstroms, header.box_size,
            ctf["voltage_in_kilovolts"], ctf["spherical_aberration_in_millimeters"],
            ctf["amplitude_contrast_ratio"], tilt,
            odd_zernike=zernike.get("odd_zernike_coefficients"), even_zernike=zernike.get("even_zernike_coefficients"),
        )
    else:
        groups = (OpticsGroup(1, "opticsGroup1", pixel_size_in_angstroms, header.box_size, np.nan, np.nan, np.nan),)
        group_indices = np.zeros(n, dtype=np.int64)
    if rotations is not None:
        rotations = np.asarray(rotations, dtype=np.float64).reshape(n, 3, 3)
        if shifts_in_angstroms is None:
            shifts_in_angstroms = np.zeros((n, 2))
    if shifts_in_angstroms is not None:
        shifts_in_angstroms = np.asarray(shifts_in_angstroms, dtype=np.float64).reshape(n, 2)
    return ParticleDataset(
        image_stacks=images,
        pixel_size_in_angstroms=float(pixel_size_in_angstroms),
        box_size=header.box_size,
        ctf=ctf,
        optics_groups=groups,
        optics_group_indices=np.asarray(group_indices, dtype=np.int64),
        rotations=rotations,
        shifts_in_angstroms=shifts_in_angstroms,
        extra_columns={},
        source=stack_path,
    )


def relative_path(target: pathlib.Path, folder: pathlib.Path) -> str:
    """`target` relative to `folder` (absolute when no relative path exists), for paths written into files."""
    try:
        return os.path.relpath(pathlib.Path(target).resolve(), folder.resolve())
    except ValueError:  # another drive
        return str(pathlib.Path(target).resolve())


def consistent_optics(dataset: ParticleDataset) -> ParticleDataset:
    """The dataset with optics groups split where per-particle CTF optics disagree with their group."""
    if dataset.ctf is None:
        return dataset
    groups, indices = dataset.optics_groups, dataset.optics_group_indices
    table = np.array(
        [[g.voltage_in_kilovolts, g.spherical_aberration_in_millimeters, g.amplitude_contrast_ratio] for g in groups]
    )[indices]
    per_particle = np.column_stack(
        [dataset.ctf[k] for k in ("voltage_in_kilovolts", "spherical_aberration_in_millimeters", "amplitude_contrast_ratio")]
    )
    if np.array_equal(table, per_particle):
        return dataset
    labels = np.array([g.number for g in groups])[indices]
    groups, indices = group_optics(
        labels,
        {g.number: g.name for g in groups},
        dataset.pixel_size_in_angstroms,
        dataset.box_size,
        per_particle[:, 0],
        per_particle[:, 1],
        per_particle[:, 2],
        dataset.beam_tilt_in_milliradians,
        template={g.number: g for g in dataset.optics_groups},
    )
    return dataclasses.replace(dataset, optics_groups=groups, optics_group_indices=indices)
