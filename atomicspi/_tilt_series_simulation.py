"""Synthetic cryo-ET particles with ground truth: each particle seen in a tilt series, written as a
RELION 5 tomography project with one 2D stack of tilt images per particle.

**Acquisition.** Every tomogram is imaged with the same tilt scheme (`tilt_scheme`): stage tilts
from `-max` to `+max` in equal steps (default ±60° in 3°: 41 tilt images), acquired in
dose-symmetric order (Hagen, Wan & Briggs, J. Struct. Biol. 197:191, 2017: 0°, then groups of two
tilts alternating sides, `0, +s, -s, -2s, +2s, +3s, -3s, -4s, +4s, …`) or sequentially from
`-max` to `+max`, the `k`-th image acquired after a pre-exposure of `k` times the dose per tilt.
Each tomogram has its tilt axis at `tilt_axis_angle ± 2°` in the image (`rlnTomoZRot`), no x tilt,
a defocus U drawn uniformly in the defocus range with per-tilt scatter (normal, `defocus_jitter`),
a fixed astigmatism (V = U · [0.97, 1], random angle) and a per-tilt contrast scale
`cos(tilt)^contrast_cosine_power` (`rlnCtfScalefactor`; 1 by default).

**Particles.** Particle `i` lies in tomogram `i mod n_tomograms` at a position uniform in the
tomogram's volume less half a box from its faces, with a uniform random pose `A` (the rotation
taking the model into the tomogram). In tilt image `f` its pose is `R_f · A`, its defocus the tilt
image's plus `hand · (R_f · p)_z` (RELION's `Tomogram::getCtf`), its image exposure-filtered for the
tilt's pre-exposure (`atomicspi.microscope.render_tilt_series`). It is visible in the tilt images
whose footprint (the tomogram's x-y size) holds its whole box around its projected position, and
(with `max_dose`) whose pre-exposure is at most `max_dose`, as `relion_tomo_subtomo` decides
(`Tomogram::getVisibilityMinFramesMaxDose`); its 2D stack holds those tilt images only, in frame
order. White Gaussian noise of unit variance is added, the signal scaled so that the mean variance
of the visible clean tilt images over the noise variance is the SNR.

**Files** (RELION 5, `write_tilt_series_dataset`), as a RELION project folder:

- `tomograms.star`: `data_global`, one row per tomogram (`rlnTomoName`, `rlnTomoTiltSeriesStarFile`,
  `rlnVoltage`, `rlnSphericalAberration`, `rlnAmplitudeContrast`, `rlnMicrographOriginalPixelSize`,
  `rlnTomoHand`, `rlnOpticsGroupName`, `rlnTomoTiltSeriesPixelSize`, `rlnTomoSizeX/Y/Z` in pixels);
- `tilt_series/<tomogram>.star`: `data_<tomogram>`, one row per tilt image sorted by tilt angle
  (`rlnTomoNominalStageTiltAngle`, `rlnTomoNominalTiltAxisAngle`, `rlnMicrographPreExposure`,
  `rlnDefocusU/V/Angle` at the tilt image's centre, `rlnCtfScalefactor`, `rlnTomoXTilt`,
  `rlnTomoYTilt`, `rlnTomoZRot`, `rlnTomoXShiftAngst`, `rlnTomoYShiftAngst`); no tilt images are
  simulated, so there is no `rlnMicrographName` (RELION programs that read the tilt images cannot
  run on this project);
- `particles.star`: as `relion_tomo_subtomo --stack2d --no_ctf` writes it
  (`SubtomoProgram::writeParticleSet`, RELION 5): `data_general` with `rlnTomoSubTomosAre2DStacks 1`;
  `data_optics` with `rlnTomoTiltSeriesPixelSize`, `rlnCtfDataAreCtfPremultiplied 0`,
  `rlnImageDimensionality 2`, `rlnTomoSubtomogramBinning 1`, `rlnImagePixelSize`, `rlnImageSize`;
  `data_particles` with `rlnTomoName`, `rlnTomoParticleName` (`<tomogram>/<k>`, from 1 in each
  tomogram), `rlnCenteredCoordinateX/Y/ZAngst`, `rlnOriginX/Y/ZAngst` (0), `rlnTomoSubtomogramRot/
  Tilt/Psi` (a random "picking" orientation `A_sub`, or 0) and `rlnAngleRot/Tilt/Psi` (of
  `A_sub^T · A`, so that RELION's `A_sub · A_particle` is the pose), `rlnTomoVisibleFrames`,
  `rlnImageName`, `rlnOpticsGroup`, `rlnRandomSubset`;
- `Subtomograms/<rlnTomoParticleName>_stack2d.mrcs`: the particle's visible tilt images (RELION 5's
  naming for particle names with a `/`), centred on the particle (no in-plane shift), not
  premultiplied by the CTF, protein bright (RELION's default contrast inversion), binning 1;
- `reference.pdb`, `truth.npz` (poses, positions, tilt geometry, per-tilt and per-particle CTF,
  visibility, Cα positions of each particle's conformation, noise level) and `README.txt`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SimulatedTiltSeries",
    "simulate_tilt_series",
    "tilt_scheme",
    "write_tilt_series_dataset",
]


def tilt_scheme(
    max_tilt_in_degrees: float = 60.0,
    step_in_degrees: float = 3.0,
    order: Literal["dose-symmetric", "sequential"] = "dose-symmetric",
    dose_per_tilt_in_electrons_per_square_angstrom: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The stage tilts of a tilt series and the exposure received before each.

    **Arguments:**

    - `max_tilt_in_degrees`, `step_in_degrees`: tilts `-max, -max + step, …, +max` (`max` a
      multiple of `step`).
    - `order`: `"dose-symmetric"` (Hagen et al. 2017: `0, +s, -s, -2s, +2s, +3s, -3s, …`) or
      `"sequential"` (from `-max` to `+max`).
    - `dose_per_tilt_in_electrons_per_square_angstrom`: exposure of each tilt image.

    **Returns:**

    `(tilt_angles_in_degrees, pre_exposure_in_electrons_per_square_angstrom)`, both `(n_tilts,)`,
    sorted by tilt angle; the `k`-th acquired image has pre-exposure `k · dose_per_tilt`.
    """
    steps = max_tilt_in_degrees / step_in_degrees
    if step_in_degrees <= 0 or max_tilt_in_degrees < 0 or abs(steps - round(steps)) > 1e-9:
        raise ValueError(f"max tilt {max_tilt_in_degrees:g} is not a non-negative multiple of the step {step_in_degrees:g}")
    if dose_per_tilt_in_electrons_per_square_angstrom < 0:
        raise ValueError(f"dose per tilt {dose_per_tilt_in_electrons_per_square_angstrom:g} is negative")
    n = int(round(steps))
    levels = list(range(-n, n + 1))
    acquired: list[int]
    if order == "sequential":
        acquired = levels
    elif order == "dose-symmetric":
        acquired = [0]
        for k in range(1, n + 1):
            acquired += [k, -k] if k % 2 == 1 else [-k, k]
    else:
        raise ValueError(f"tilt order {order!r} is not 'dose-symmetric' or 'sequential'")
    rank = {level: r for r, level in enumerate(acquired)}
    angles = np.array(levels, dtype=np.float64) * float(step_in_degrees)
    exposure = np.array([rank[level] for level in levels], dtype=np.float64) * float(
        dose_per_tilt_in_electrons_per_square_angstrom
    )
    return angles, exposure


@dataclasses.dataclass(frozen=True)
class SimulatedTiltSeries:
    """Tilt-series particles with their ground truth (`simulate_tilt_series`).

    Per-tomogram arrays `(n_tomograms, n_tilts)` are in the order of the tilt series (sorted by
    tilt angle); per-particle tilt arrays `(n, n_tilts)` are over all tilts of the particle's
    tomogram, with `visible` saying which are in its 2D stack.

    **Fields:**

    - `images`: `(n, n_tilts, D, D)` float32, zero where not visible.
    - `visible`: `(n, n_tilts)` bool.
    - `positions_in_angstroms`: `(n, n_atoms, 3)` the conformation of each particle (model frame).
    - `rotations`: `(n, 3, 3)` pose `A` in the tomogram; `subtomogram_rotations`: `A_sub` written
      as `rlnTomoSubtomogram*` (`rlnAngle*` hold `A_sub^T A`).
    - `particle_positions_in_angstroms`: `(n, 3)` position relative to the tomogram's centre.
    - `tomogram_of_particle`: `(n,)`; `tomogram_names`: `(n_tomograms,)`; `particle_names`: `(n,)`.
    - `tilt_angles_in_degrees`, `z_rotations_in_degrees`, `x_tilts_in_degrees`,
      `pre_exposure_in_electrons_per_square_angstrom`, `defocus_u_in_angstroms`,
      `defocus_v_in_angstroms`, `astigmatism_angle_in_degrees`, `ctf_scale`: `(n_tomograms, n_tilts)`,
      each tilt image's geometry and CTF at its centre.
    - `view_rotations`: `(n_tomograms, n_tilts, 3, 3)` `R_f`.
    - `handedness`: `(n_tomograms,)` `rlnTomoHand`.
    - `particle_defocus_u_in_angstroms`, `particle_defocus_v_in_angstroms`: `(n, n_tilts)` defocus
      at the particle (tilt image's plus height offset).
    - `tomogram_size_in_pixels`: `(3,)`; `pixel_size_in_angstroms`, `voltage_in_kilovolts`,
      `spherical_aberration_in_millimeters`, `amplitude_contrast_ratio`: numbers.
    - `noise_std`: the noise standard deviation of the images (1.0), or None for noise-free images
      (V·Å, `signal_to_noise_ratio=None`).
    """

    images: np.ndarray
    visible: np.ndarray
    positions_in_angstroms: np.ndarray
    rotations: np.ndarray
    subtomogram_rotations: np.ndarray
    particle_positions_in_angstroms: np.ndarray
    tomogram_of_particle: np.ndarray
    tomogram_names: np.ndarray
    particle_names: np.ndarray
    tilt_angles_in_degrees: np.ndarray
    z_rotations_in_degrees: np.ndarray
    x_tilts_in_degrees: np.ndarray
    view_rotations: np.ndarray
    pre_exposure_in_electrons_per_square_angstrom: np.ndarray
    defocus_u_in_angstroms: np.ndarray
    defocus_v_in_angstroms: np.ndarray
    astigmatism_angle_in_degrees: np.ndarray
    ctf_scale: np.ndarray
    handedness: np.ndarray
    particle_defocus_u_in_angstroms: np.ndarray
    particle_defocus_v_in_angstroms: np.ndarray
    tomogram_size_in_pixels: np.ndarray
    pixel_size_in_angstroms: float
    voltage_in_kilovolts: float
    spherical_aberration_in_millimeters: float
    amplitude_contrast_ratio: float
    noise_std: float | None


def simulate_tilt_series(
    structure,
    positions_in_angstroms,
    box_size: int,
    pixel_size_in_angstroms: float,
    signal_to_noise_ratio: float | None,
    seed: int = 0,
    *,
    n_tomograms: int = 1,
    max_tilt_in_degrees: float = 60.0,
    tilt_step_in_degrees: float = 3.0,
    tilt_order: Literal["dose-symmetric", "sequential"] = "dose-symmetric",
    dose_per_tilt_in_electrons_per_square_angstrom: float = 3.0,
    max_dose_in_electrons_per_square_angstrom: float | None = None,
    defocus_range_in_angstroms: tuple[float, float] = (20000.0, 50000.0),
    defocus_jitter_in_angstroms: float = 100.0,
    tilt_axis_angle_in_degrees: float = 85.0,
    handedness: float = -1.0,
    tomogram_size_in_angstroms: tuple[float, float, float] = (4000.0, 4000.0, 1200.0),
    contrast_cosine_power: float = 0.0,
    voltage_in_kilovolts: float = 300.0,
    spherical_aberration_in_millimeters: float = 2.7,
    amplitude_contrast_ratio: float = 0.1,
    random_subtomogram_orientations: bool = True,
    particle_positions_in_angstroms=None,
    batch_size: int = 8,
) -> SimulatedTiltSeries:
    """Render each conformation as a particle seen in a tilt series (module docstring).

    **Arguments:**

    - `structure`: the `AtomicModel` whose atoms are moved (elements and B-factors).
    - `positions_in_angstroms`: `(n, n_atoms, 3)` the conformation of each particle.
    - `box_size`, `pixel_size_in_angstroms`: the tilt images' boxes (binning 1).
    - `signal_to_noise_ratio`: mean variance of the visible clean tilt images over the noise
      variance; None for noise-free images in V·Å (for tests).
    - `seed`: of every random draw.
    - `n_tomograms`: particle `i` is in tomogram `i mod n_tomograms`.
    - `max_tilt_in_degrees`, `tilt_step_in_degrees`, `tilt_order`,
      `dose_per_tilt_in_electrons_per_square_angstrom`: the tilt scheme (`tilt_scheme`).
    - `max_dose_in_electrons_per_square_angstrom`: leave out tilt images with more pre-exposure
      (`relion_tomo_subtomo --max_dose`); None keeps all.
    - `defocus_range_in_angstroms`, `defocus_jitter_in_angstroms`: each tomogram's defocus and
      its per-tilt scatter.
    - `tilt_axis_angle_in_degrees`: the nominal `rlnTomoZRot` (each tomogram's is within ±2°).
    - `handedness`: `rlnTomoHand` of all tomograms (±1).
    - `tomogram_size_in_angstroms`: `(x, y, z)` of the tomograms (written in pixels).
    - `contrast_cosine_power`: per-tilt contrast scale `cos(tilt)^power`.
    - `voltage_in_kilovolts` (300 or 200, for the exposure filter), `spherical_aberration_in_millimeters`,
      `amplitude_contrast_ratio`: the optics.
    - `random_subtomogram_orientations`: write a random `A_sub` (else the identity).
    - `particle_positions_in_angstroms`: `(n, 3)` positions in the tomograms instead of random ones.
    - `batch_size`: particles rendered per call.

    **Returns:**

    `SimulatedTiltSeries`. Raises `ValueError` when a particle is visible in no tilt image.
    """
    from atomicspi.conventions import sample_uniform_rotations, tilt_series_view_rotation
    from atomicspi.microscope import CTFParameters, make_image_model, render_tilt_series_batch

    conformations = np.asarray(positions_in_angstroms, dtype=np.float32)
    n = conformations.shape[0]
    if n_tomograms < 1:
        raise ValueError(f"n_tomograms {n_tomograms} is not positive")
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    rotations = np.asarray(sample_uniform_rotations(jax.random.fold_in(key, 0), n), dtype=np.float64)
    if random_subtomogram_orientations:
        subtomogram = np.asarray(sample_uniform_rotations(jax.random.fold_in(key, 1), n), dtype=np.float64)
    else:
        subtomogram = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()

    angles, exposure = tilt_scheme(
        max_tilt_in_degrees, tilt_step_in_degrees, tilt_order, dose_per_tilt_in_electrons_per_square_angstrom
    )
    n_tilts = len(angles)
    tilt_angles = np.broadcast_to(angles, (n_tomograms, n_tilts)).copy()
    pre_exposure = np.broadcast_to(exposure, (n_tomograms, n_tilts)).copy()
    z_rotations = np.repeat(tilt_axis_angle_in_degrees + rng.uniform(-2.0, 2.0, size=(n_tomograms, 1)), n_tilts, axis=1)
    x_tilts = np.zeros((n_tomograms, n_tilts))
    base = rng.uniform(*defocus_range_in_angstroms, size=(n_tomograms, 1))
    defocus_u = base + defocus_jitter_in_angstroms * rng.standard_normal((n_tomograms, n_tilts))
    defocus_v = defocus_u * rng.uniform(0.97, 1.0, size=(n_tomograms, 1))
    astigmatism = np.repeat(rng.uniform(0.0, 180.0, size=(n_tomograms, 1)), n_tilts, axis=1)
    ctf_scale = np.cos(np.deg2rad(tilt_angles)) ** contrast_cosine_power
    views = np.asarray(tilt_series_view_rotation(tilt_angles, z_rotations, x_tilts), dtype=np.float64)
    hands = np.full(n_tomograms, float(handedness))

    size = np.asarray(tomogram_size_in_angstroms, dtype=np.float64)
    size_in_pixels = np.round(size / pixel_size_in_angstroms).astype(np.int64)
    radius = 0.5 * box_size * pixel_size_in_angstroms
    tomogram = np.arange(n) % n_tomograms
    if particle_positions_in_angstroms is None:
        reach = np.maximum(0.5 * size - radius, 0.0)
        positions = rng.uniform(-1.0, 1.0, size=(n, 3)) * reach
    else:
        positions = np.asarray(particle_positions_in_angstroms, dtype=np.float64).reshape(n, 3)

    projected = np.einsum("nfij,nj->nfi", views[tomogram], positions)  # (n, n_tilts, 3): R_f p
    half = 0.5 * size_in_pixels[:2] * pixel_size_in_angstroms
    visible = np.all(np.abs(projected[..., :2]) <= half - radius, axis=-1)
    if max_dose_in_electrons_per_square_angstrom is not None:
        visible &= pre_exposure[tomogram] <= max_dose_in_electrons_per_square_angstrom
    unseen = np.flatnonzero(~visible.any(axis=1))
    if unseen.size:
        raise ValueError(f"particle {int(unseen[0])} at {positions[unseen[0]].tolist()} Å is visible in no tilt image")
    offset = hands[tomogram, None] * projected[..., 2]
    particle_u = defocus_u[tomogram] + offset
    particle_v = defocus_v[tomogram] + offset

    image_model = make_image_model(
        structure.atomic_numbers, structure.b_factors_in_angstroms_squared, box_size, pixel_size_in_angstroms
    )
    render = jax.jit(functools.partial(render_tilt_series_batch, image_model, voltage_in_kilovolts=float(voltage_in_kilovolts)))
    images = np.zeros((n, n_tilts, box_size, box_size), dtype=np.float32)  # clean first, then noisy in place
    chunks = [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    for rows in chunks:
        t = tomogram[rows]
        ctf = CTFParameters(
            defocus_u_in_angstroms=jnp.asarray(defocus_u[t], dtype=jnp.float32),
            defocus_v_in_angstroms=jnp.asarray(defocus_v[t], dtype=jnp.float32),
            astigmatism_angle_in_degrees=jnp.asarray(astigmatism[t], dtype=jnp.float32),
            voltage_in_kilovolts=float(voltage_in_kilovolts),
            spherical_aberration_in_millimeters=float(spherical_aberration_in_millimeters),
            amplitude_contrast_ratio=float(amplitude_contrast_ratio),
            scale=jnp.asarray(ctf_scale[t], dtype=jnp.float32),
        )
        images[rows] = np.asarray(render(
            jnp.asarray(conformations[rows]),
            jnp.asarray(rotations[rows], dtype=jnp.float32),
            jnp.asarray(positions[rows], dtype=jnp.float32),
            jnp.asarray(views[t], dtype=jnp.float32),
            ctf,
            jnp.asarray(pre_exposure[t], dtype=jnp.float32),
            mask=jnp.asarray(visible[rows]),
            handedness=jnp.asarray(hands[t], dtype=jnp.float32),
        ))
    noise_std = None
    if signal_to_noise_ratio is not None:  # chunk by chunk: one array of images in memory
        variances = np.concatenate([np.var(images[rows], axis=(2, 3)) for rows in chunks])
        scale = np.float32(np.sqrt(signal_to_noise_ratio / float(np.mean(variances[visible]))))  # unit noise
        for rows in chunks:
            noise = rng.standard_normal((len(rows), n_tilts, box_size, box_size), dtype=np.float32)
            images[rows] = np.where(visible[rows][:, :, None, None], images[rows] * scale + noise, np.float32(0.0))
        noise_std = 1.0

    width = max(2, len(str(n_tomograms)))
    tomogram_names = np.array([f"TS_{t + 1:0{width}d}" for t in range(n_tomograms)])
    counts = np.zeros(n_tomograms, dtype=np.int64)
    names = []
    for i in range(n):
        counts[tomogram[i]] += 1
        names.append(f"{tomogram_names[tomogram[i]]}/{counts[tomogram[i]]}")
    return SimulatedTiltSeries(
        images=images,
        visible=visible,
        positions_in_angstroms=conformations,
        rotations=rotations,
        subtomogram_rotations=subtomogram,
        particle_positions_in_angstroms=positions,
        tomogram_of_particle=tomogram,
        tomogram_names=tomogram_names,
        particle_names=np.array(names),
        tilt_angles_in_degrees=tilt_angles,
        z_rotations_in_degrees=z_rotations,
        x_tilts_in_degrees=x_tilts,
        view_rotations=views,
        pre_exposure_in_electrons_per_square_angstrom=pre_exposure,
        defocus_u_in_angstroms=defocus_u,
        defocus_v_in_angstroms=defocus_v,
        astigmatism_angle_in_degrees=astigmatism,
        ctf_scale=ctf_scale,
        handedness=hands,
        particle_defocus_u_in_angstroms=particle_u,
        particle_defocus_v_in_angstroms=particle_v,
        tomogram_size_in_pixels=size_in_pixels,
        pixel_size_in_angstroms=float(pixel_size_in_angstroms),
        voltage_in_kilovolts=float(voltage_in_kilovolts),
        spherical_aberration_in_millimeters=float(spherical_aberration_in_millimeters),
        amplitude_contrast_ratio=float(amplitude_contrast_ratio),
        noise_std=noise_std,
    )


def _visible_frames(flags: np.ndarray) -> str:
    """RELION's integer vector `[1,0,1,...]`."""
    return "[" + ",".join(str(int(f)) for f in flags) + "]"


def write_tilt_series_dataset(
    folder: str | os.PathLike,
    structure,
    simulated: SimulatedTiltSeries,
    truth_extra: dict | None = None,
) -> pathlib.Path:
    """Write simulated tilt-series particles as a RELION 5 project (module docstring).

    **Arguments:**

    - `folder`: the project folder (created; files in it overwritten).
    - `structure`: the reference `AtomicModel` (written as `reference.pdb`).
    - `simulated`: from `simulate_tilt_series`.
    - `truth_extra`: more arrays for `truth.npz` (e.g. interpolation fractions, mode amplitudes).

    **Returns:**

    The path of `particles.star` (read it with `atomicspi.io.read_tilt_series_particles(path,
    folder / "tomograms.star")` and `read_tilt_series_images`).
    """
    import pandas as pd
    import starfile

    from atomicspi.conventions import matrix_to_euler_angles
    from atomicspi.io import write_stack

    folder = pathlib.Path(folder)
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    s = simulated
    n = len(s.particle_names)
    pixel = s.pixel_size_in_angstroms
    box = s.images.shape[-1]

    star_files = [f"tilt_series/{name}.star" for name in s.tomogram_names]
    for t, name in enumerate(s.tomogram_names):
        n_tilts = s.tilt_angles_in_degrees.shape[1]
        table = pd.DataFrame({
            "rlnTomoNominalStageTiltAngle": s.tilt_angles_in_degrees[t],
            "rlnTomoNominalTiltAxisAngle": s.z_rotations_in_degrees[t],
            "rlnMicrographPreExposure": s.pre_exposure_in_electrons_per_square_angstrom[t],
            "rlnDefocusU": s.defocus_u_in_angstroms[t],
            "rlnDefocusV": s.defocus_v_in_angstroms[t],
            "rlnDefocusAngle": s.astigmatism_angle_in_degrees[t],
            "rlnCtfScalefactor": s.ctf_scale[t],
            "rlnTomoXTilt": s.x_tilts_in_degrees[t],
            "rlnTomoYTilt": s.tilt_angles_in_degrees[t],
            "rlnTomoZRot": s.z_rotations_in_degrees[t],
            "rlnTomoXShiftAngst": np.zeros(n_tilts),
            "rlnTomoYShiftAngst": np.zeros(n_tilts),
        })
        starfile.write({str(name): table}, folder / star_files[t], float_format="%.6f")
    n_tomograms = len(s.tomogram_names)
    global_table = pd.DataFrame({
        "rlnTomoName": list(s.tomogram_names),
        "rlnTomoTiltSeriesStarFile": star_files,
        "rlnVoltage": [s.voltage_in_kilovolts] * n_tomograms,
        "rlnSphericalAberration": [s.spherical_aberration_in_millimeters] * n_tomograms,
        "rlnAmplitudeContrast": [s.amplitude_contrast_ratio] * n_tomograms,
        "rlnMicrographOriginalPixelSize": [pixel] * n_tomograms,
        "rlnTomoHand": s.handedness,
        "rlnOpticsGroupName": ["optics1"] * n_tomograms,
        "rlnTomoTiltSeriesPixelSize": [pixel] * n_tomograms,
        "rlnTomoSizeX": [int(s.tomogram_size_in_pixels[0])] * n_tomograms,
        "rlnTomoSizeY": [int(s.tomogram_size_in_pixels[1])] * n_tomograms,
        "rlnTomoSizeZ": [int(s.tomogram_size_in_pixels[2])] * n_tomograms,
    })
    starfile.write({"global": global_table}, folder / "tomograms.star", float_format="%.6f")

    image_names = []
    for i, name in enumerate(s.particle_names):
        relative = f"Subtomograms/{name}_stack2d.mrcs"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write_stack(folder / relative, s.images[i][s.visible[i]], pixel)
        image_names.append(relative)
    particle_angles = np.asarray(
        matrix_to_euler_angles(np.swapaxes(s.subtomogram_rotations, -1, -2) @ s.rotations), dtype=np.float64
    )
    subtomogram_angles = np.asarray(matrix_to_euler_angles(s.subtomogram_rotations), dtype=np.float64)
    particles = pd.DataFrame({
        "rlnTomoName": s.tomogram_names[s.tomogram_of_particle],
        "rlnTomoParticleName": list(s.particle_names),
        "rlnCenteredCoordinateXAngst": s.particle_positions_in_angstroms[:, 0],
        "rlnCenteredCoordinateYAngst": s.particle_positions_in_angstroms[:, 1],
        "rlnCenteredCoordinateZAngst": s.particle_positions_in_angstroms[:, 2],
        "rlnOriginXAngst": np.zeros(n),
        "rlnOriginYAngst": np.zeros(n),
        "rlnOriginZAngst": np.zeros(n),
        "rlnTomoSubtomogramRot": subtomogram_angles[:, 0],
        "rlnTomoSubtomogramTilt": subtomogram_angles[:, 1],
        "rlnTomoSubtomogramPsi": subtomogram_angles[:, 2],
        "rlnAngleRot": particle_angles[:, 0],
        "rlnAngleTilt": particle_angles[:, 1],
        "rlnAnglePsi": particle_angles[:, 2],
        "rlnTomoVisibleFrames": [_visible_frames(v) for v in s.visible],
        "rlnImageName": image_names,
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        "rlnRandomSubset": 1 + np.arange(n) % 2,
    })
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["optics1"],
        "rlnVoltage": [s.voltage_in_kilovolts],
        "rlnSphericalAberration": [s.spherical_aberration_in_millimeters],
        "rlnAmplitudeContrast": [s.amplitude_contrast_ratio],
        "rlnTomoTiltSeriesPixelSize": [pixel],
        "rlnCtfDataAreCtfPremultiplied": [0],
        "rlnImageDimensionality": [2],
        "rlnTomoSubtomogramBinning": [1.0],
        "rlnImagePixelSize": [pixel],
        "rlnImageSize": [box],
    })
    path = folder / "particles.star"
    starfile.write(
        {"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": particles},
        path, float_format="%.6f",
    )

    structure.save_pdb(folder / "reference.pdb")
    calpha = structure.topology.select("name CA and protein")
    truth: dict[str, Any] = {
        "calpha_positions_in_angstroms": s.positions_in_angstroms[:, calpha],
        "rotations": s.rotations,
        "subtomogram_rotations": s.subtomogram_rotations,
        "particle_positions_in_angstroms": s.particle_positions_in_angstroms,
        "tomogram_of_particle": s.tomogram_of_particle,
        "tomogram_names": s.tomogram_names,
        "particle_names": s.particle_names,
        "visible": s.visible,
        "tilt_angles_in_degrees": s.tilt_angles_in_degrees,
        "z_rotations_in_degrees": s.z_rotations_in_degrees,
        "x_tilts_in_degrees": s.x_tilts_in_degrees,
        "view_rotations": s.view_rotations,
        "pre_exposure_in_electrons_per_square_angstrom": s.pre_exposure_in_electrons_per_square_angstrom,
        "defocus_u_in_angstroms": s.defocus_u_in_angstroms,
        "defocus_v_in_angstroms": s.defocus_v_in_angstroms,
        "astigmatism_angle_in_degrees": s.astigmatism_angle_in_degrees,
        "ctf_scale": s.ctf_scale,
        "handedness": s.handedness,
        "particle_defocus_u_in_angstroms": s.particle_defocus_u_in_angstroms,
        "particle_defocus_v_in_angstroms": s.particle_defocus_v_in_angstroms,
        "noise_std": np.nan if s.noise_std is None else s.noise_std,
    }
    np.savez(folder / "truth.npz", **truth, **(truth_extra or {}))
    (folder / "README.txt").write_text(
        "Synthetic tilt-series dataset (RELION 5 layout) written by atomicspi.simulate --tilt-series.\n"
        + json.dumps({
            "n_particles": n, "n_tomograms": n_tomograms, "n_tilts": int(s.tilt_angles_in_degrees.shape[1]),
            "box_size": int(box), "pixel_size_in_angstroms": pixel,
            "read_with": "atomicspi.io.read_tilt_series_particles('particles.star', 'tomograms.star')",
        }, indent=1)
        + "\n"
    )
    return path
