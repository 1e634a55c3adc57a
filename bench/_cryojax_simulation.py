"""Particle images rendered by cryoJAX, an independent simulator, with per-particle contrast.

The fit's own microscope (`atomicspi.microscope`) projects Peng Gaussians onto a grid with
RELION's CTF. Benchmarks whose images come from that same code share its discretisation and
conventions with the fit; these come from cryoJAX instead (`GaussianMixtureVolume` from the same
Peng tables, its own dense pixel-averaged projection, its own CTF and Fourier shift). The poses,
shifts and CTF parameters are drawn exactly as in `atomicspi._simulation.simulate_particles` (same
seed, same draws), then every clean image is multiplied by a contrast factor exp(N(0, σ²)) (ice
thickness and dose vary between particles), and white noise of unit standard deviation is added at
the requested SNR (mean clean-image variance over noise variance).

Convention mapping, RELION (ours) → cryoJAX, as checked by
`tests/test_microscope_projection.py::test_adk_image_matches_cryojax`: Euler angles negated;
defocus (U + V)/2 with astigmatism U − V at angle 90° − ours; cryoJAX's CTF is −RELION's and its
potential is ours / 47.878 (V·Å² per 1/Å), so ours = −47.878 × cryoJAX's image.

cryoJAX is a test/bench extra (`pip install -e ".[bench]"`), hence this module lives in `bench/`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from atomicspi._simulation import SimulatedParticles, random_acquisition

__all__ = ["CryojaxSimulatedParticles", "render_particles_cryojax", "simulate_particles_cryojax"]


@dataclasses.dataclass(frozen=True)
class CryojaxSimulatedParticles(SimulatedParticles):
    """`SimulatedParticles` plus the per-particle contrast factors `(n,)` that multiplied each clean
    image (and the clean-image scale `noise_scale`: clean images were divided by it so that the
    noise has unit standard deviation)."""

    contrast_factors: np.ndarray = dataclasses.field(kw_only=True)
    noise_scale: float = dataclasses.field(kw_only=True)


def render_particles_cryojax(
    structure,
    positions_in_angstroms,
    rotations,
    shifts_in_angstroms,
    ctf: dict,
    box_size: int,
    pixel_size_in_angstroms: float,
    batch_size: int = 32,
) -> np.ndarray:
    """Noise-free images rendered by cryoJAX, in the units and sign of `atomicspi.microscope`
    (V·Å, RELION's CTF).

    **Arguments:**

    - `structure`: the `AtomicModel` whose atoms are moved (elements and B-factors).
    - `positions_in_angstroms`: `(n, n_atoms, 3)` per-particle positions in the frame of the poses.
    - `rotations`: `(n, 3, 3)` RELION rotation matrices; `shifts_in_angstroms`: `(n, 2)`.
    - `ctf`: named arrays `(n,)` as in `SimulatedParticles.ctf` (RELION's conventions).
    - `box_size`, `pixel_size_in_angstroms`: the images.
    - `batch_size`: particles per compiled call.

    **Returns:** `(n, box_size, box_size)` float32 images.
    """
    import cryojax.simulator as cxs
    from cryojax.constants import PengScatteringFactorParameters

    from atomicspi.microscope import PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED, matrix_to_euler_angles

    parameters = PengScatteringFactorParameters(np.asarray(structure.atomic_numbers))
    b_factors = jnp.asarray(structure.b_factors_in_angstroms_squared, dtype=jnp.float32)

    def render_one(positions, angles, shift, defocus_u, defocus_v, astigmatism_angle, voltage, spherical_aberration,
                   amplitude_contrast, phase_shift):
        volume = cxs.GaussianMixtureVolume.from_tabulated_parameters(positions, parameters, extra_b_factors=b_factors)
        image_model = cxs.make_image_model(
            volume,
            cxs.BasicImageConfig((box_size, box_size), pixel_size_in_angstroms, voltage),
            cxs.EulerAnglePose(shift[0], shift[1], -angles[0], -angles[1], -angles[2]),
            cxs.ContrastTransferTheory(
                cxs.AstigmaticCTF((defocus_u + defocus_v) / 2, defocus_u - defocus_v, 90.0 - astigmatism_angle, spherical_aberration),
                amplitude_contrast_ratio=amplitude_contrast, phase_shift=phase_shift,
            ),
        )
        return -PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * image_model.simulate()

    render = jax.jit(jax.vmap(render_one))
    positions = np.asarray(positions_in_angstroms, dtype=np.float32)
    angles = np.asarray(matrix_to_euler_angles(jnp.asarray(rotations, dtype=jnp.float32)), dtype=np.float32)
    shifts = np.asarray(shifts_in_angstroms, dtype=np.float32)
    names = ("defocus_u_in_angstroms", "defocus_v_in_angstroms", "astigmatism_angle_in_degrees", "voltage_in_kilovolts",
             "spherical_aberration_in_millimeters", "amplitude_contrast_ratio", "phase_shift_in_degrees")
    columns = [np.asarray(ctf[name], dtype=np.float32) for name in names]
    n = positions.shape[0]
    images = np.empty((n, box_size, box_size), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start < batch_size and n > batch_size:
            # Pad the last batch to the compiled shape instead of compiling a second time.
            pad = batch_size - (stop - start)
            take = lambda array: np.concatenate([array[start:stop], np.repeat(array[stop - 1:stop], pad, axis=0)])  # noqa: E731
            batch = render(*(jnp.asarray(take(array)) for array in (positions, angles, shifts, *columns)))
            images[start:stop] = np.asarray(batch)[: stop - start]
        else:
            batch = render(*(jnp.asarray(array[start:stop]) for array in (positions, angles, shifts, *columns)))
            images[start:stop] = np.asarray(batch)
    return images


def simulate_particles_cryojax(
    structure,
    positions_in_angstroms,
    box_size: int,
    pixel_size_in_angstroms: float,
    signal_to_noise_ratio: float,
    seed: int = 0,
    contrast_log_std: float = 0.2,
    defocus_range_in_angstroms: tuple[float, float] = (8000.0, 25000.0),
    max_shift_in_angstroms: float = 2.0,
    voltage_in_kilovolts: float = 300.0,
    spherical_aberration_in_millimeters: float = 2.7,
    amplitude_contrast_ratio: float = 0.1,
    batch_size: int = 32,
) -> CryojaxSimulatedParticles:
    """Render one particle per conformation with cryoJAX: poses, shifts and CTFs drawn exactly as
    `atomicspi._simulation.simulate_particles` draws them for the same seed, a per-particle contrast
    factor exp(N(0, `contrast_log_std`²)), and white Gaussian noise of unit standard deviation
    (images scaled so that the mean clean-image variance, contrast included, over the noise
    variance is the SNR).

    **Arguments:**

    - `structure`: the `AtomicModel` whose atoms are moved (elements and B-factors).
    - `positions_in_angstroms`: `(n, n_atoms, 3)` the conformation of each particle, pose frame.
    - `box_size`, `pixel_size_in_angstroms`: the images.
    - `signal_to_noise_ratio`: variance of the clean images over the noise variance.
    - `seed`: random seed of poses, shifts, CTFs, contrast factors and noise.
    - `contrast_log_std`: standard deviation of the log contrast factors (0 for none).
    - the microscope's ranges and constants as in `simulate_particles`; `batch_size`: particles per
      compiled rendering call.

    **Returns:** `CryojaxSimulatedParticles` (a `SimulatedParticles` with `contrast_factors`).
    """
    positions = np.asarray(positions_in_angstroms, dtype=np.float32)
    n = positions.shape[0]
    # The same draws, in the same order, as simulate_particles.
    rng, rotations, shifts, ctf = random_acquisition(
        n, seed, defocus_range_in_angstroms, max_shift_in_angstroms, voltage_in_kilovolts,
        spherical_aberration_in_millimeters, amplitude_contrast_ratio,
    )
    clean = render_particles_cryojax(
        structure, positions, rotations, shifts, ctf, box_size, pixel_size_in_angstroms, batch_size=batch_size
    )
    contrast_factors = np.exp(contrast_log_std * rng.standard_normal(n))
    clean *= contrast_factors[:, None, None].astype(np.float32)
    signal_variance = float(np.mean(np.var(clean, axis=(1, 2))))
    noise_scale = float(np.sqrt(signal_variance / signal_to_noise_ratio))
    images = clean / noise_scale + rng.standard_normal(clean.shape).astype(np.float32)
    return CryojaxSimulatedParticles(
        images=images.astype(np.float32),
        positions_in_angstroms=positions,
        rotations=rotations,
        shifts_in_angstroms=shifts,
        ctf=ctf,
        pixel_size_in_angstroms=float(pixel_size_in_angstroms),
        noise_std=1.0,
        contrast_factors=contrast_factors,
        noise_scale=noise_scale,
    )
