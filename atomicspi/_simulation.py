"""Synthetic particle stacks with ground truth: conformations, poses, CTFs and noise at a given SNR."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SimulatedParticles",
    "interpolated_conformations",
    "prior_conformations",
    "random_acquisition",
    "simulate_particles",
    "write_simulated_dataset",
]


@dataclasses.dataclass(frozen=True)
class SimulatedParticles:
    """Images `(n, D, D)` with their ground truth (positions `(n, n_atoms, 3)` in Å, RELION rotations,
    shifts in Å, CTF parameters as named arrays), pixel size, and the noise standard deviation (per
    pixel); with coloured noise its radial power spectrum (`atomicspi.microscope` normalisation,
    unit mean over the frequency grid), with per-particle contrast the factors `(n,)`."""

    images: np.ndarray
    positions_in_angstroms: np.ndarray
    rotations: np.ndarray
    shifts_in_angstroms: np.ndarray
    ctf: dict
    pixel_size_in_angstroms: float
    noise_std: float
    noise_power_spectrum: np.ndarray | None = None
    contrast: np.ndarray | None = None


def interpolated_conformations(start, end, fractions) -> np.ndarray:
    """Linear interpolation of all atoms between two structures of the same atoms, after superposing
    `end` onto `start` on their Cα atoms; `start` fixes the frame.

    **Arguments:**

    - `start`, `end`: `AtomicModel`s with identical atom order.
    - `fractions`: `(n,)` interpolation fractions (0 = start, 1 = end).

    **Returns:** positions `(n, n_atoms, 3)` in Å.
    """
    if start.n_atoms != end.n_atoms:
        raise ValueError(f"structures have {start.n_atoms} and {end.n_atoms} atoms")
    calpha = start.topology.select("name CA and protein")
    moved = end.to_mdtraj().superpose(start.to_mdtraj(), atom_indices=calpha)
    end_positions = moved.xyz[0].astype(float) * 10.0
    f = np.asarray(fractions, dtype=float)[:, None, None]
    return (1.0 - f) * start.positions_in_angstroms[None] + f * end_positions[None]


def prior_conformations(structure, n_particles: int, n_modes: int, spring_constant: float, seed: int = 0):
    """Conformations from the `nma` model's prior: Cα elastic network (15 Å), amplitudes
    aₖ ~ N(0, kT/(γ λₖ)), every atom following its residue's Cα.

    **Returns:** `(positions (n, n_atoms, 3) in Å, truth dict with "amplitudes" (n, n_modes),
    "mode_eigenvalues", "spring_constant")`.
    """
    from atomicspi.structure import ElasticNetwork, calpha_beads, normal_modes

    beads = calpha_beads(structure)
    modes = normal_modes(ElasticNetwork.from_positions(beads.bead_positions_in_angstroms, 15.0), n_modes)
    eigenvalues = np.asarray(modes.eigenvalues)
    rng = np.random.default_rng(seed)
    amplitudes = rng.standard_normal((n_particles, n_modes)) / np.sqrt(spring_constant * eigenvalues)
    displacements = np.einsum("nk,kbc->nbc", amplitudes, np.asarray(modes.vectors))
    positions = structure.positions_in_angstroms[None] + displacements[:, np.asarray(beads.atom_to_bead)]
    truth = {"amplitudes": amplitudes, "mode_eigenvalues": eigenvalues, "spring_constant": spring_constant}
    return positions, truth


def random_acquisition(
    n: int,
    seed: int,
    defocus_range_in_angstroms: tuple[float, float] = (8000.0, 25000.0),
    max_shift_in_angstroms: float = 2.0,
    voltage_in_kilovolts: float = 300.0,
    spherical_aberration_in_millimeters: float = 2.7,
    amplitude_contrast_ratio: float = 0.1,
    optics: dict | None = None,
):
    """The random acquisition of n particles: uniform RELION rotations, shifts uniform in ±max (Å),
    defocus uniform in the range with up to 3 % astigmatism at a uniform angle, fixed optics.

    `optics` adds fixed higher-order terms shared by all particles, named as `CTFParameters`
    fields: `b_factor_in_angstroms_squared`, `scale`, `beam_tilt_x_in_milliradians`,
    `beam_tilt_y_in_milliradians` (scalars), `odd_zernike_coefficients`,
    `even_zernike_coefficients` (RELION's order, sequences); they are rendered and written to the
    star file (one optics group).

    **Returns:** `(rng, rotations (n, 3, 3), shifts_in_angstroms (n, 2), ctf dict of (n,) arrays,
    `(n, k)` for Zernike coefficients)`; `rng` continues the same stream (simulators draw their
    noise from it next).
    """
    from atomicspi.io import OPTIONAL_CTF_FIELDS
    from atomicspi.microscope import sample_uniform_rotations

    rng = np.random.default_rng(seed)
    rotations = np.asarray(sample_uniform_rotations(jax.random.key(seed), n), dtype=np.float32)
    shifts = rng.uniform(-max_shift_in_angstroms, max_shift_in_angstroms, size=(n, 2)).astype(np.float32)
    defocus_u = rng.uniform(*defocus_range_in_angstroms, size=n)
    ctf = {
        "defocus_u_in_angstroms": defocus_u,
        "defocus_v_in_angstroms": defocus_u * rng.uniform(0.97, 1.0, size=n),
        "astigmatism_angle_in_degrees": rng.uniform(0.0, 180.0, size=n),
        "voltage_in_kilovolts": np.full(n, voltage_in_kilovolts),
        "spherical_aberration_in_millimeters": np.full(n, spherical_aberration_in_millimeters),
        "amplitude_contrast_ratio": np.full(n, amplitude_contrast_ratio),
        "phase_shift_in_degrees": np.zeros(n),
    }
    for name, value in (optics or {}).items():
        if name not in OPTIONAL_CTF_FIELDS:
            raise ValueError(f"optics: {name!r} is not one of {OPTIONAL_CTF_FIELDS}")
        value = np.asarray(value, dtype=np.float64)
        ctf[name] = np.broadcast_to(value, (n, *value.shape)).copy()
    return rng, rotations, shifts, ctf


def simulate_particles(
    structure,
    positions_in_angstroms,
    box_size: int,
    pixel_size_in_angstroms: float,
    signal_to_noise_ratio: float,
    seed: int = 0,
    defocus_range_in_angstroms: tuple[float, float] = (8000.0, 25000.0),
    max_shift_in_angstroms: float = 2.0,
    voltage_in_kilovolts: float = 300.0,
    spherical_aberration_in_millimeters: float = 2.7,
    amplitude_contrast_ratio: float = 0.1,
    batch_size: int = 64,
    optics: dict | None = None,
    noise_power_spectrum=None,
    contrast_range: tuple[float, float] | None = None,
) -> SimulatedParticles:
    """Render one particle per conformation with a uniform random pose, a random shift and defocus,
    and white Gaussian noise whose variance is the mean signal variance over the SNR.

    **Arguments:**

    - `structure`: the `AtomicModel` whose atoms are moved (elements and B-factors).
    - `positions_in_angstroms`: `(n, n_atoms, 3)` the conformation of each particle, pose frame.
    - `box_size`, `pixel_size_in_angstroms`: the images.
    - `signal_to_noise_ratio`: variance of the clean images over the noise variance.
    - `optics`: fixed beam tilt, Zernike terms, B-factor, scale (`random_acquisition`).
    - `noise_power_spectrum`: `(n_shells,)` a radial spectrum (`atomicspi.microscope` shells; the
      last holds beyond): the noise is coloured with it, scaled to the same variance per pixel as the
      white noise (the same white draws, filtered: the same particles with white and with coloured
      noise of equal total power share every other random number).
    - `contrast_range`: per-particle contrast uniform in this range, multiplying the signal (drawn
      after the noise, so the other random numbers are unchanged).

    **Returns:** `SimulatedParticles`.
    """
    from atomicspi.microscope import CTFParameters, make_image_model
    from atomicspi.models import render_images

    positions = np.asarray(positions_in_angstroms, dtype=np.float32)
    n = positions.shape[0]
    rng, rotations, shifts, ctf = random_acquisition(
        n, seed, defocus_range_in_angstroms, max_shift_in_angstroms, voltage_in_kilovolts,
        spherical_aberration_in_millimeters, amplitude_contrast_ratio, optics,
    )
    image_model = make_image_model(
        structure.atomic_numbers, structure.b_factors_in_angstroms_squared, box_size, pixel_size_in_angstroms
    )
    render = jax.jit(functools.partial(render_images, image_model))
    clean = np.empty((n, box_size, box_size), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        parameters = CTFParameters(**{k: jnp.asarray(v[start:stop], dtype=jnp.float32) for k, v in ctf.items()})
        clean[start:stop] = np.asarray(
            render(jnp.asarray(positions[start:stop]), jnp.asarray(rotations[start:stop]), jnp.asarray(shifts[start:stop]), parameters)
        )
    signal_variance = float(np.mean(np.var(clean, axis=(1, 2))))
    # Normalise so that the noise has unit standard deviation, as in a whitened, normalised stack.
    noise_std = float(np.sqrt(signal_variance / signal_to_noise_ratio))
    spectrum = contrast = None
    if noise_power_spectrum is None and contrast_range is None:
        images = clean / noise_std + rng.standard_normal(clean.shape).astype(np.float32)
    else:
        noise = rng.standard_normal(clean.shape).astype(np.float32)
        if noise_power_spectrum is not None:
            spectrum, noise = _coloured(noise, noise_power_spectrum)
        contrast = np.ones(n) if contrast_range is None else rng.uniform(*contrast_range, size=n)
        images = contrast[:, None, None].astype(np.float32) * (clean / noise_std) + noise
    return SimulatedParticles(
        images=images.astype(np.float32),
        positions_in_angstroms=positions,
        rotations=rotations,
        shifts_in_angstroms=shifts,
        ctf=ctf,
        pixel_size_in_angstroms=float(pixel_size_in_angstroms),
        noise_std=1.0,
        noise_power_spectrum=spectrum,
        contrast=contrast,
    )


def _coloured(white: np.ndarray, power_spectrum) -> tuple[np.ndarray, np.ndarray]:
    """White unit noise `(n, D, D)` filtered to a radial power spectrum scaled to unit variance per
    pixel: `(the scaled spectrum, the noise)`."""
    box_size = white.shape[-1]
    spectrum = np.asarray(power_spectrum, dtype=np.float64)
    index = np.fft.fftfreq(box_size) * box_size
    full = spectrum[np.minimum(np.round(np.hypot(index[:, None], index[None, :])).astype(int), len(spectrum) - 1)]
    spectrum = spectrum / full.mean()
    half = np.fft.rfftfreq(box_size) * box_size
    shells = np.minimum(np.round(np.hypot(index[:, None], half[None, :])).astype(int), len(spectrum) - 1)
    amplitude = np.sqrt(spectrum[shells])
    noise = np.fft.irfft2(amplitude * np.fft.rfft2(white.astype(np.float64)), s=(box_size, box_size))
    return spectrum, noise.astype(np.float32)


def write_simulated_dataset(
    folder: str | os.PathLike,
    structure,
    particles: SimulatedParticles,
    truth_extra: dict | None = None,
    model: str = "nma",
    config_overrides: dict | None = None,
) -> pathlib.Path:
    """Write a RELION 3.1 star file + `.mrcs`, the reference structure, a `truth.npz` and a
    `dataset.yaml`; returns the yaml's path."""
    import yaml

    from atomicspi.io import write_particles_star

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    structure.save_pdb(folder / "reference.pdb")
    write_particles_star(
        folder / "particles.star", particles.images, folder / "particles.mrcs", particles.pixel_size_in_angstroms,
        ctf=particles.ctf, rotations=particles.rotations, shifts_in_angstroms=particles.shifts_in_angstroms,
    )
    calpha = structure.topology.select("name CA and protein")
    truth: dict = {
        "calpha_positions_in_angstroms": particles.positions_in_angstroms[:, calpha],
        "rotations": particles.rotations,
        "shifts_in_angstroms": particles.shifts_in_angstroms,
        "noise_std": particles.noise_std,
    }
    for name in ("noise_power_spectrum", "contrast"):  # coloured noise, per-particle contrast
        if getattr(particles, name) is not None:
            truth[name] = getattr(particles, name)
    np.savez(folder / "truth.npz", **truth, **(truth_extra or {}))
    config = {
        "particles": "particles.star",
        "reference": "reference.pdb",
        "model": model,
        "poses": "given",
        "output": "output",
    }
    config.update(config_overrides or {})
    path = folder / "dataset.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "README.txt").write_text(
        "Synthetic dataset written by atomicspi.simulate.\n"
        + json.dumps({"n_particles": int(particles.images.shape[0]), "box_size": int(particles.images.shape[1]),
                      "pixel_size_in_angstroms": particles.pixel_size_in_angstroms}, indent=1)
        + "\n"
    )
    return path
