"""Contrast transfer function with RELION's (and CTFFIND's) definitions.

For a spatial frequency `k = (k_x, k_y)` in 1/Å with azimuth `α = atan2(k_y, k_x)`:

    Δf(α)  = (Δf_U + Δf_V) / 2 + (Δf_U - Δf_V) / 2 · cos(2 (α - α_ast))      (underfocus > 0)
    χ(k)   = π λ Δf(α) |k|² - (π / 2) C_s λ³ |k|⁴ + φ + atan(Q / √(1 - Q²)) - γ_even(k)
    CTF(k) = scale · exp(-B |k|² / 4) · sin(χ(k))

with the relativistic electron wavelength `λ = h / √(2 m₀ e U (1 + e U / (2 m₀ c²)))`,
`C_s` in Å, amplitude contrast `Q`, phase-plate shift `φ`, envelope B-factor `B` and RELION 5's
even Zernike aberration `γ_even`. This is RELION's `CTF::getCTF`, which evaluates `-sin` of the
negative of this argument (its internal defocus is negative for underfocus), so at zero
frequency `CTF = sin(atan(Q / √(1 - Q²))) = Q > 0`: protein (positive potential) is bright at
low resolution.

Antisymmetric aberrations (beam tilt and RELION 5's odd Zernike terms) do not change |CTF|; they
multiply the image's Fourier transform by `exp(i γ_odd(k))`, see `compute_odd_aberration_phase`:

    γ_odd(k) = Σ_j c_j^odd Z_j^odd(k) - 2π · 10⁻³ · C_s λ² |k|² (k_x τ_x + k_y τ_y)

for beam tilt `τ` (mrad). This is RELION 3.1+'s forward model (`ObservationModel::predictObservation`
multiplies the prediction by `getPhaseCorrection`, `exp(i Σ_j c_j Z_j)`, after
`TiltHelper::insertTilt` has added the tilt as `c_1 += 2 c`, `c_4 += c`, `c_0 += 2 c'`, `c_3 += c'`
with `c = -2π · 10⁻³ C_s λ² τ_x / 3`, `c' = ` the same with `τ_y`: `c (3|k|² - 2) k_x + 2 c k_x =
3 c |k|² k_x`), and RELION 3.0's (`LegacyObservationModel::predictObservation` applies
`selfApplyBeamTilt` with `-τ` to the prediction; `selfApplyBeamTilt` with `+τ` is the correction of
the data). Zernike terms follow RELION's ordering and unnormalised radial polynomials, evaluated at
the frequency in 1/Å: even coefficient `j` has `n = 2⌊√j⌋`, `m = 2 (j - ⌊√j⌋² - ⌊√j⌋)`; odd
coefficient `j` has `n = 2p + 1` with `p = ⌊(√(1 + 4j) - 1) / 2⌋`, `m = 2 (j - p² - p) - n`;
`Z_n^m = R_n^|m|(|k|) · (cos(m α) if m ≥ 0 else sin(|m| α))` (`Zernike::evenIndexToMN`,
`oddIndexToMN`, `Z_cart`). RELION's anisotropic magnification matrix, which would distort `k`
before all of the above, is not modelled (`atomicspi.io` refuses files that set one).

cryoJAX (0.6) writes its CTF as `sin(χ_cryojax - φ - atan(Q / √(1 - Q²)))` with
`χ_cryojax = -π λ Δf |k|² + (π / 2) C_s λ³ |k|⁴`, i.e. `-CTF` here, and it measures the
frequency azimuth from the y axis (`atan2(k_x, k_y)`), so the conversion is
`AstigmaticCTF(defocus_in_angstroms=(Δf_U + Δf_V) / 2, astigmatism_in_angstroms=Δf_U - Δf_V,
astigmatism_angle=90 - α_ast)` and a sign flip of the result (its wavelength formula also
differs from the CODATA one here by 3·10⁻⁵ relative).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

ELECTRON_REST_ENERGY_IN_KILOELECTRONVOLTS = 510.99895
"""m₀ c² in keV (CODATA 2018)."""

PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS = 12.398419843
"""h c in keV·Å (CODATA 2018)."""


def wavelength_in_angstroms(voltage_in_kilovolts: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
    """Relativistic electron wavelength `λ = h c / √(E (E + 2 m₀ c²))`, `E = e U`.

    **Arguments:**

    - `voltage_in_kilovolts`: accelerating voltage in kV.

    **Returns:**

    The wavelength in Å (0.019687 Å at 300 kV).
    """
    energy = jnp.asarray(voltage_in_kilovolts)
    return PLANCK_CONSTANT_TIMES_SPEED_OF_LIGHT_IN_KILOELECTRONVOLT_ANGSTROMS / jnp.sqrt(
        energy * (energy + 2.0 * ELECTRON_REST_ENERGY_IN_KILOELECTRONVOLTS)
    )


class CTFParameters(eqx.Module):
    """Per-image contrast transfer function parameters (RELION names and units).

    Fields are scalars (or arrays); a batch of images is a `CTFParameters` whose leaves all have
    a leading batch axis (for `jax.vmap(..., in_axes=0)`; with some leaves shared, pass a
    matching `in_axes` pytree or `eqx.filter_vmap`). `beam_tilt_*`, `odd_zernike_coefficients` and
    `even_zernike_coefficients` are optional (RELION 5 optics tables: `rlnBeamTiltX/Y`,
    `rlnOddZernike`, `rlnEvenZernike`).
    """

    defocus_u_in_angstroms: Float[ArrayLike, ""]
    defocus_v_in_angstroms: Float[ArrayLike, ""]
    astigmatism_angle_in_degrees: Float[ArrayLike, ""] = 0.0
    voltage_in_kilovolts: Float[ArrayLike, ""] = 300.0
    spherical_aberration_in_millimeters: Float[ArrayLike, ""] = 2.7
    amplitude_contrast_ratio: Float[ArrayLike, ""] = 0.1
    phase_shift_in_degrees: Float[ArrayLike, ""] = 0.0
    b_factor_in_angstroms_squared: Float[ArrayLike, ""] = 0.0
    scale: Float[ArrayLike, ""] = 1.0
    beam_tilt_x_in_milliradians: Float[ArrayLike, ""] | None = None
    beam_tilt_y_in_milliradians: Float[ArrayLike, ""] | None = None
    odd_zernike_coefficients: Float[ArrayLike, " n_odd"] | None = None
    even_zernike_coefficients: Float[ArrayLike, " n_even"] | None = None

    @property
    def has_odd_aberrations(self) -> bool:
        """Whether beam tilt or odd Zernike terms are set (the transfer is then complex)."""
        return (
            self.beam_tilt_x_in_milliradians is not None
            or self.beam_tilt_y_in_milliradians is not None
            or self.odd_zernike_coefficients is not None
        )


def _radial_zernike(n: int, m: int, rho: Array) -> Array:
    m = abs(m)
    total = jnp.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        coefficient = (
            (-1) ** k
            * math.factorial(n - k)
            / (math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k))
        )
        total = total + coefficient * rho ** (n - 2 * k)
    return total


def _zernike(n: int, m: int, rho: Array, azimuth: Array) -> Array:
    angular = jnp.cos(m * azimuth) if m >= 0 else jnp.sin(-m * azimuth)
    return _radial_zernike(n, m, rho) * angular


def _even_index_to_degree_and_order(j: int) -> tuple[int, int]:
    k = math.isqrt(j)
    return 2 * k, 2 * (j - k * k - k)


def _odd_index_to_degree_and_order(j: int) -> tuple[int, int]:
    p = int((math.sqrt(1 + 4 * j) - 1.0) / 2.0)
    n = 2 * p + 1
    return n, 2 * (j - p * p - p) - n


def _zernike_sum(coefficients, frequencies, to_degree_and_order) -> Array:
    coefficients = jnp.asarray(coefficients)
    kx, ky = frequencies[..., 0], frequencies[..., 1]
    rho = jnp.sqrt(kx**2 + ky**2)
    azimuth = jnp.arctan2(ky, kx)
    total = jnp.zeros_like(rho)
    for j in range(coefficients.shape[-1]):
        n, m = to_degree_and_order(j)
        total = total + coefficients[j] * _zernike(n, m, rho, azimuth)
    return total


def compute_ctf(
    frequencies_in_inverse_angstroms: Float[Array, "... 2"],
    parameters: CTFParameters,
) -> Float[Array, "..."]:
    """The (real, even) contrast transfer function, including envelope and scale.

    **Arguments:**

    - `frequencies_in_inverse_angstroms`: `(..., 2)` frequencies `(k_x, k_y)` in 1/Å.
    - `parameters`: a `CTFParameters` (unbatched; `jax.vmap` for batches).

    **Returns:**

    `scale · exp(-B |k|² / 4) · sin(χ(k))`, shape `(...)` (module docstring for `χ`).
    """
    kx = frequencies_in_inverse_angstroms[..., 0]
    ky = frequencies_in_inverse_angstroms[..., 1]
    k_squared = kx**2 + ky**2
    azimuth = jnp.arctan2(ky, kx)
    wavelength = wavelength_in_angstroms(parameters.voltage_in_kilovolts)
    defocus_u = jnp.asarray(parameters.defocus_u_in_angstroms)
    defocus_v = jnp.asarray(parameters.defocus_v_in_angstroms)
    astigmatism_angle = jnp.deg2rad(jnp.asarray(parameters.astigmatism_angle_in_degrees))
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * jnp.cos(
        2.0 * (azimuth - astigmatism_angle)
    )
    spherical_aberration = 1e7 * jnp.asarray(parameters.spherical_aberration_in_millimeters)
    amplitude_contrast = jnp.asarray(parameters.amplitude_contrast_ratio)
    argument = (
        jnp.pi * wavelength * defocus * k_squared
        - 0.5 * jnp.pi * spherical_aberration * wavelength**3 * k_squared**2
        + jnp.deg2rad(jnp.asarray(parameters.phase_shift_in_degrees))
        + jnp.arctan(amplitude_contrast / jnp.sqrt(1.0 - amplitude_contrast**2))
    )
    if parameters.even_zernike_coefficients is not None:
        argument = argument - _zernike_sum(
            parameters.even_zernike_coefficients,
            frequencies_in_inverse_angstroms,
            _even_index_to_degree_and_order,
        )
    envelope = jnp.exp(-0.25 * jnp.asarray(parameters.b_factor_in_angstroms_squared) * k_squared)
    return jnp.asarray(parameters.scale) * envelope * jnp.sin(argument)


def compute_odd_aberration_phase(
    frequencies_in_inverse_angstroms: Float[Array, "... 2"],
    parameters: CTFParameters,
) -> Float[Array, "..."]:
    """Phase `γ_odd(k)` (radians) of beam tilt and odd Zernike terms.

    The image's Fourier transform is multiplied by `exp(i γ_odd(k))`, as RELION multiplies its
    predictions by `ObservationModel::getPhaseCorrection` (numpy's and FFTW's forward transform
    have the same sign); the module docstring gives `γ_odd`.

    **Arguments:**

    - `frequencies_in_inverse_angstroms`: `(..., 2)` frequencies `(k_x, k_y)` in 1/Å.
    - `parameters`: a `CTFParameters`.

    **Returns:**

    The phase in radians, shape `(...)`; zero when no odd aberration is set.
    """
    kx = frequencies_in_inverse_angstroms[..., 0]
    ky = frequencies_in_inverse_angstroms[..., 1]
    phase = jnp.zeros_like(kx)
    if parameters.beam_tilt_x_in_milliradians is not None or parameters.beam_tilt_y_in_milliradians is not None:
        tilt_x = jnp.asarray(
            0.0 if parameters.beam_tilt_x_in_milliradians is None else parameters.beam_tilt_x_in_milliradians
        )
        tilt_y = jnp.asarray(
            0.0 if parameters.beam_tilt_y_in_milliradians is None else parameters.beam_tilt_y_in_milliradians
        )
        wavelength = wavelength_in_angstroms(parameters.voltage_in_kilovolts)
        spherical_aberration = 1e7 * jnp.asarray(parameters.spherical_aberration_in_millimeters)
        phase = phase - 2e-3 * jnp.pi * spherical_aberration * wavelength**2 * (kx**2 + ky**2) * (
            kx * tilt_x + ky * tilt_y
        )
    if parameters.odd_zernike_coefficients is not None:
        phase = phase + _zernike_sum(
            parameters.odd_zernike_coefficients,
            frequencies_in_inverse_angstroms,
            _odd_index_to_degree_and_order,
        )
    return phase


def ctf_batch_axes(parameters: CTFParameters, batch_size: int) -> CTFParameters:
    """`jax.vmap`'s `in_axes` for a batch of `batch_size` images' `CTFParameters`: 0 for the fields
    with that leading axis, None for those shared by all images (scalars such as the voltage)."""
    return jax.tree_util.tree_map(lambda v: 0 if jnp.ndim(v) >= 1 and jnp.shape(v)[0] == batch_size else None, parameters)
