"""`load_particles`: one entry point for RELION, cryoSPARC and bare stacks with cryoDRGN poses."""

import dataclasses
import os
import pathlib

import numpy as np

from ._cryodrgn import read_cryodrgn_ctf, read_cryodrgn_poses
from ._cryosparc import read_cryosparc
from ._dataset import CTF_FIELDS, OpticsGroup, ParticleDataset, group_optics
from ._errors import InputError
from ._mrc import ImageStacks, read_stack_header
from ._star import read_relion_star

_STACK_SUFFIXES = (".mrcs", ".mrc")


def load_particles(
    path: str | os.PathLike,
    poses: str | os.PathLike | None = None,
    datadir: str | os.PathLike | None = None,
    ctf: str | os.PathLike | None = None,
) -> ParticleDataset:
    """Load particles and check their image stacks (headers only; no image is read).

    **Arguments:**

    - `path`: a RELION `.star`, a cryoSPARC `.cs`, or an `.mrcs`/`.mrc` stack.
    - `poses`: a cryoDRGN pose pickle `(rotations, translations)`; for a stack it supplies the
      poses, for a `.star`/`.cs` it replaces theirs.
    - `datadir`: folder for the image paths named in a `.star`/`.cs`.
    - `ctf`: a cryoDRGN CTF pickle, for a stack (its pixel size wins over the stack header's).

    **Returns:**

    A checked `ParticleDataset` (box size and pixel size known, every stack present, every image
    index inside its stack). Every problem raises `InputError` naming the file and the field.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"{path}: particles: file not found")
    if datadir is not None and not pathlib.Path(datadir).is_dir():
        raise InputError(f"{datadir}: datadir: folder not found")
    suffix = path.suffix.lower()
    if suffix == ".star":
        dataset = read_relion_star(path, datadir)
    elif suffix == ".cs":
        dataset = read_cryosparc(path, datadir)
    elif suffix in _STACK_SUFFIXES:
        dataset = _bare_stack(path, ctf)
    else:
        raise InputError(f"{path}: particles: expected a .star, .cs, .mrcs or .mrc file")
    if ctf is not None and suffix not in _STACK_SUFFIXES:
        raise InputError(f"{ctf}: ctf: a CTF pickle only applies to a bare .mrcs stack")
    dataset = dataset.check_images()
    if poses is not None:
        dataset = _with_cryodrgn_poses(dataset, pathlib.Path(poses))
    return dataset


def _bare_stack(path: pathlib.Path, ctf_path) -> ParticleDataset:
    header = read_stack_header(path)
    n = header.n_images
    images = ImageStacks([path], np.zeros(n, dtype=np.int64), np.arange(n), path, "images")
    pixel_size = header.pixel_size_in_angstroms if header.pixel_size_in_angstroms > 0 else None
    ctf = None
    groups: tuple[OpticsGroup, ...] = (OpticsGroup(1, "opticsGroup1", pixel_size, header.box_size, np.nan, np.nan, np.nan),)
    group_indices = np.zeros(n, dtype=np.int64)
    if ctf_path is not None:
        ctf_path = pathlib.Path(ctf_path)
        table = read_cryodrgn_ctf(ctf_path)
        if len(table["box_size"]) != n:
            raise InputError(f"{ctf_path}: ctf: {len(table['box_size'])} rows for {n} images in {path}")
        if np.any(table["box_size"] != header.box_size):
            raise InputError(f"{ctf_path}: field box size: {int(table['box_size'][0])}, but {path} holds {header.box_size}×{header.box_size} images")
        pixel_sizes = table["pixel_size_in_angstroms"]
        if np.ptp(pixel_sizes) > 1e-6 or not pixel_sizes[0] > 0:
            raise InputError(f"{ctf_path}: field pixel size: differs between particles or is not positive")
        pixel_size = float(pixel_sizes[0])
        ctf = {k: table[k] for k in CTF_FIELDS}
        groups, group_indices = group_optics(
            np.ones(n), {}, pixel_size, header.box_size, ctf["voltage_in_kilovolts"],
            ctf["spherical_aberration_in_millimeters"], ctf["amplitude_contrast_ratio"], np.zeros((n, 2)),
        )
    return ParticleDataset(
        image_stacks=images,
        pixel_size_in_angstroms=pixel_size,
        box_size=header.box_size,
        ctf=ctf,
        optics_groups=tuple(groups),
        optics_group_indices=np.asarray(group_indices, dtype=np.int64),
        rotations=None,
        shifts_in_angstroms=None,
        extra_columns={},
        source=path,
    )


def _with_cryodrgn_poses(dataset: ParticleDataset, path: pathlib.Path) -> ParticleDataset:
    if path.suffix.lower() != ".pkl":
        raise InputError(f"{path}: poses: expected a cryoDRGN pose pickle (.pkl)")
    rotations, translations = read_cryodrgn_poses(path)
    if len(rotations) != len(dataset):
        raise InputError(f"{path}: poses: {len(rotations)} poses for {len(dataset)} particles in {dataset.source}")
    shifts = np.zeros((len(rotations), 2))
    if translations is not None:
        shifts = -translations * dataset.box_size * dataset.pixel_size_in_angstroms
    return dataclasses.replace(dataset, rotations=rotations, shifts_in_angstroms=shifts)
