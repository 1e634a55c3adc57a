"""Tilt series: the exposure (dose) filter and the geometry of a particle seen in each tilt image.

**Exposure filter** (Grant & Grigorieff, eLife 4:e06980, 2015). Radiation damage fades the signal
at spatial frequency `k` (1/Å) exponentially with the exposure `N` (e⁻/Å²) received before the
image was taken. The paper's fit of the critical exposure (the exposure that reduces the signal
*power* to 1/e) at 300 kV is

    N_e(k) = a · k^b + c,   a = 0.245, b = -1.665, c = 2.81,

and the amplitude weight of an image taken after exposure `N` is

    q(k, N) = exp(-N / (2 N_e(k))).

These are the constants and the formula of RELION (`src/jaz/optics/damage.cpp`, `Damage::getWeight`,
used by the tomography programs as `Tomogram::computeDoseWeight` with the tilt's
`rlnMicrographPreExposure`; and `MotioncorrRunner::doseWeighting`) and of cryoDRGN-ET
(`cryodrgn/dataset.py`, `TiltSeriesData.critical_exposure` / `get_dose_filters`). The authors' own
code (unblur / summovie / cisTEM `ElectronDose`) uses the unrounded fit `0.24499, -1.6649, 2.8141`;
the rounded values of the paper are used here. At `k = 0` the critical exposure is infinite and
`q = 1`; the filter is evaluated as `exp(-N k^{-b} / (2 (a + c k^{-b})))`, which is finite there.

*Voltage.* At 200 kV the critical exposure is 0.8 times the 300 kV one (damage per electron is
larger): cisTEM's `ElectronDose::Init` multiplies the whole of `a k^b + c` by
`voltage_scaling_factor = 0.8`, and RELION's motion correction divides the exposure by 0.8, which
is the same. This is what is done here. (cryoDRGN-ET instead multiplies only `a` by 0.75 at
200 kV; the two codes also disagree at 100 kV, 0.532 against 0.64, so only 300 and 200 kV, within
2 kV as RELION allows, are accepted.)

*Optimal exposure.* Summing frames up to exposure `N`, the signal amplitude grows as
`∫₀^N q(k, n) dn = 2 N_e (1 - exp(-N / (2 N_e)))` and the noise as `√N`; their ratio is largest
where `(1 + x) exp(-x / 2) = 1`, `x = N / N_e = 2.51284`, the paper's optimal exposure. cryoDRGN-ET
sets the filter to zero beyond it (`zero_beyond_optimal_exposure=True` here); RELION does not.

**Tilt geometry** (RELION 5, `Tomogram::setProjectionMatrix` in `src/jaz/tomography/tomogram.cpp`).
A tilt image `f` sees the tomogram (specimen) through the rotation

    R_f = Rz(rlnTomoZRot) · Ry(rlnTomoYTilt) · Rx(rlnTomoXTilt)

of *textbook* (active, right-handed) rotations, `Ry(θ) = [[cos θ, 0, sin θ], [0, 1, 0],
[-sin θ, 0, cos θ]]` (RELION's `gravis::t3Matrix::rotation`, the OpenGL formula), followed by a
projection along z and an in-plane shift. The stage tilt is the rotation about the specimen's y
axis; `rlnTomoZRot` is the in-plane angle of the tilt axis in the image (≈ the nominal tilt-axis
angle); RELION 4's `rlnTomoProjX/Y/Z/W` rows hold `R_f` (and the shifts) as a 4 × 4 matrix. Note
that these `Rz`, `Ry` are the transposes of the ones in RELION's Euler angles
(`atomicspi.conventions`).

A particle with pose `A` in the tomogram (`A = A_subtomogram · A_particle`, the rotation taking the
reference into the tomogram, RELION's `ParticleSet::getMatrix3x3`; `atomicspi.conventions`' `A`)
appears in tilt image `f` as the projection of `R_f · A · r`: its pose in that image, in
atomicspi's convention, is `R_f · A` (`compose_tilt_rotations`).

Its defocus in tilt image `f` is that of the tilt image's centre plus an offset proportional to its
height in the tilted frame (RELION's `Tomogram::getCtf` / `getDepthOffset`):

    Δdefocus_f = hand · slope · (R_f · p)_z,

with `p` the particle's position (Å) relative to the tomogram's centre, `hand = rlnTomoHand`
(±1, whether defocus grows or shrinks with the projected z) and `slope = rlnTomoDefocusSlope`
(default 1). Defocus is positive for underfocus (as `rlnDefocusU` and `atomicspi.microscope`'s
CTF), so with `hand = +1` a particle at positive tilted-frame height `z'` is `z'` Å further
underfocused than the tilt image's centre. For a pure stage tilt by `θ`,
`(R_f · p)_z = z cos θ - x sin θ`: points on the tilt axis (`x = z = 0`) keep the centre's
defocus at every tilt.

All functions are JAX, batched over leading dimensions and differentiable in their array inputs.
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..conventions import tilt_series_view_rotation as tilt_series_view_rotation
from ._image_model import rfft_frequencies

CRITICAL_EXPOSURE_A = 0.245
"""`a` of `N_e(k) = a k^b + c` (e⁻/Å² · Å^b), Grant & Grigorieff (2015), at 300 kV."""

CRITICAL_EXPOSURE_B = -1.665
"""`b` of `N_e(k) = a k^b + c` (dimensionless exponent)."""

CRITICAL_EXPOSURE_C = 2.81
"""`c` of `N_e(k) = a k^b + c` (e⁻/Å²)."""

OPTIMAL_TO_CRITICAL_EXPOSURE = 2.51284
"""`N_opt / N_e`: the root of `(1 + x) exp(-x / 2) = 1` (Grant & Grigorieff 2015)."""

_VOLTAGE_FACTORS = {300.0: 1.0, 200.0: 0.8}
_VOLTAGE_TOLERANCE_IN_KILOVOLTS = 2.0


def critical_exposure_voltage_factor(voltage_in_kilovolts: float) -> float:
    """How much the critical exposure at a voltage is of that at 300 kV.

    **Arguments:**

    - `voltage_in_kilovolts`: the acceleration voltage (a Python number: 300 or 200, within 2 kV).

    **Returns:**

    1.0 at 300 kV, 0.8 at 200 kV (cisTEM's `ElectronDose`, RELION's motion correction). Other
    voltages raise `ValueError`: the published fit is for 300 kV, and its scaling is only agreed on
    for 200 kV.
    """
    voltage = float(voltage_in_kilovolts)
    for nominal, factor in _VOLTAGE_FACTORS.items():
        if abs(voltage - nominal) <= _VOLTAGE_TOLERANCE_IN_KILOVOLTS:
            return factor
    raise ValueError(f"the exposure filter is defined at 300 and 200 kV only, not at {voltage:g} kV")


def _inverse_critical_exposure(frequency_in_inverse_angstroms: ArrayLike, voltage_in_kilovolts: float) -> Array:
    """`1 / N_e(|k|)` written as `k^{-b} / (a + c k^{-b})`, finite (0) at `k = 0`."""
    k = jnp.abs(jnp.asarray(frequency_in_inverse_angstroms))
    k_to_minus_b = jnp.power(k, -CRITICAL_EXPOSURE_B)
    factor = critical_exposure_voltage_factor(voltage_in_kilovolts)
    return k_to_minus_b / (factor * (CRITICAL_EXPOSURE_A + CRITICAL_EXPOSURE_C * k_to_minus_b))


def critical_exposure_in_electrons_per_square_angstrom(
    frequency_in_inverse_angstroms: Float[ArrayLike, "*shape"],
    voltage_in_kilovolts: float = 300.0,
) -> Float[Array, "*shape"]:
    """The critical exposure `N_e(k) = factor · (a |k|^b + c)` of Grant & Grigorieff (2015).

    **Arguments:**

    - `frequency_in_inverse_angstroms`: spatial frequencies `|k|` (1/Å; the sign is ignored).
    - `voltage_in_kilovolts`: 300 or 200 (see `critical_exposure_voltage_factor`).

    **Returns:**

    `N_e` in e⁻/Å² (infinite at `k = 0`).
    """
    k = jnp.abs(jnp.asarray(frequency_in_inverse_angstroms))
    factor = critical_exposure_voltage_factor(voltage_in_kilovolts)
    return factor * (CRITICAL_EXPOSURE_A * jnp.power(k, CRITICAL_EXPOSURE_B) + CRITICAL_EXPOSURE_C)


def optimal_exposure_in_electrons_per_square_angstrom(
    frequency_in_inverse_angstroms: Float[ArrayLike, "*shape"],
    voltage_in_kilovolts: float = 300.0,
) -> Float[Array, "*shape"]:
    """The exposure that maximises the signal-to-noise ratio of a frequency, `2.51284 · N_e(k)`.

    **Arguments:**

    - `frequency_in_inverse_angstroms`: spatial frequencies `|k|` (1/Å).
    - `voltage_in_kilovolts`: 300 or 200.

    **Returns:**

    `N_opt` in e⁻/Å² (see the module docstring for its derivation).
    """
    return OPTIMAL_TO_CRITICAL_EXPOSURE * critical_exposure_in_electrons_per_square_angstrom(
        frequency_in_inverse_angstroms, voltage_in_kilovolts
    )


def exposure_filter(
    frequency_in_inverse_angstroms: Float[ArrayLike, "*shape"],
    pre_exposure_in_electrons_per_square_angstrom: Float[ArrayLike, "*batch"],
    voltage_in_kilovolts: float = 300.0,
    zero_beyond_optimal_exposure: bool = False,
) -> Float[Array, "..."]:
    """Amplitude weight `q(k, N) = exp(-N / (2 N_e(k)))` of each frequency of each tilt image.

    **Arguments:**

    - `frequency_in_inverse_angstroms`: `|k|` in 1/Å, any shape (e.g. a `(D, D // 2 + 1)` grid).
    - `pre_exposure_in_electrons_per_square_angstrom`: exposure `N` received before each image
      (RELION's `rlnMicrographPreExposure`), any batch shape, e.g. `(n_tilts,)`; must be ≥ 0.
    - `voltage_in_kilovolts`: 300 or 200 (a Python number).
    - `zero_beyond_optimal_exposure`: set the weight to 0 where `N` is at least the optimal
      exposure `2.51284 N_e(k)`, as cryoDRGN-ET does (default: keep the exponential).

    **Returns:**

    Weights in [0, 1] of shape `batch + shape` (1 at `k = 0` and at `N = 0`), to multiply the
    Fourier transform of the projection (the clean image) with.
    """
    inverse = _inverse_critical_exposure(frequency_in_inverse_angstroms, voltage_in_kilovolts)
    exposure = jnp.asarray(pre_exposure_in_electrons_per_square_angstrom)
    exposure = jnp.reshape(exposure, exposure.shape + (1,) * inverse.ndim)
    scaled = exposure * inverse  # N / N_e
    weight = jnp.exp(-0.5 * scaled)
    if zero_beyond_optimal_exposure:
        weight = jnp.where(scaled < OPTIMAL_TO_CRITICAL_EXPOSURE, weight, 0.0)
    return weight


def exposure_filter_on_grid(
    box_size: int,
    pixel_size_in_angstroms: float,
    pre_exposure_in_electrons_per_square_angstrom: Float[ArrayLike, "*batch"],
    voltage_in_kilovolts: float = 300.0,
    zero_beyond_optimal_exposure: bool = False,
) -> Float[Array, "*batch box_size box_size//2+1"]:
    """`exposure_filter` on the `rfft2` grid of `D × D` images (`rfft_frequencies`).

    **Arguments:**

    - `box_size`: `D`.
    - `pixel_size_in_angstroms`: pixel size.
    - `pre_exposure_in_electrons_per_square_angstrom`: `N` per image, e.g. `(n_tilts,)`.
    - `voltage_in_kilovolts`, `zero_beyond_optimal_exposure`: as in `exposure_filter`.

    **Returns:**

    `batch + (D, D // 2 + 1)` weights, to multiply `jnp.fft.rfft2` of the images with.
    """
    frequencies = rfft_frequencies(box_size, pixel_size_in_angstroms)
    radius = jnp.sqrt(jnp.sum(frequencies**2, axis=-1))
    return exposure_filter(
        radius, pre_exposure_in_electrons_per_square_angstrom, voltage_in_kilovolts, zero_beyond_optimal_exposure
    )


def compose_tilt_rotations(
    particle_rotations: Float[ArrayLike, "*batch 3 3"],
    view_rotations: Float[ArrayLike, "*batch n_tilts 3 3"],
) -> Float[Array, "*batch n_tilts 3 3"]:
    """The pose of a particle in each tilt image: `R_f · A`.

    **Arguments:**

    - `particle_rotations`: the particle's pose `A` in the tomogram (atomicspi's / RELION's
      convention, `A = A_subtomogram · A_particle` for RELION 4/5 particles).
    - `view_rotations`: `R_f` of each tilt image (`tilt_series_view_rotation`).

    **Returns:**

    The pose of the particle in each tilt image, to be used as any single-particle pose
    (the image is the projection of `R_f · A · r` along z).
    """
    particles = jnp.asarray(particle_rotations)
    return jnp.asarray(view_rotations) @ particles[..., None, :, :]


def tilt_defocus_offset_in_angstroms(
    positions_in_angstroms: Float[ArrayLike, "*batch 3"],
    view_rotations: Float[ArrayLike, "*batch n_tilts 3 3"],
    handedness: float = 1.0,
    defocus_slope: float = 1.0,
) -> Float[Array, "*batch n_tilts"]:
    """Defocus of a particle in each tilt image relative to the tilt image's centre.

    **Arguments:**

    - `positions_in_angstroms`: the particle's position `p` relative to the tomogram's centre.
    - `view_rotations`: `R_f` of each tilt image.
    - `handedness`: RELION's `rlnTomoHand` (+1 or -1).
    - `defocus_slope`: RELION's `rlnTomoDefocusSlope` (1 unless refined).

    **Returns:**

    `hand · slope · (R_f · p)_z` in Å, to be added to the tilt image's `rlnDefocusU` and
    `rlnDefocusV` (positive = more underfocus); `(R_f · p)_z = z cos θ - x sin θ` for a stage tilt θ.
    """
    third_rows = jnp.asarray(view_rotations)[..., 2, :]  # (*batch, n_tilts, 3)
    positions = jnp.asarray(positions_in_angstroms)[..., None, :]  # (*batch, 1, 3)
    height = jnp.sum(third_rows * positions, axis=-1)
    return handedness * defocus_slope * height
