"""RELION's optics, transcribed in numpy (float64) from its source, independent of atomicspi's code.

Sources (github.com/3dem/relion, master of Oct 2025):

- `src/ctf.h` `CTF::getCTF` and `src/ctf.cpp` `CTF::initialise`: `γ = K1 (Axx x² + 2 Axy x y + Ayy y²)
  + K2 u⁴ - K5 - K3 + gammaOffset`, `CTF = scale · exp(K4 u²) · -sin(γ)` with `K1 = π λ`,
  `K2 = π/2 C_s λ³`, `K3 = atan(Q0 / √(1 - Q0²))`, `K4 = -B/4`, `K5 = φ`, and the astigmatism
  bilinear form `A = Qᵀ D Q`, `D = diag(-ΔfU, -ΔfV)`, `Q` the rotation by the defocus angle.
- `src/jaz/single_particle/obs_model.cpp`: `getGammaOffset` (the even Zernike sum, `gammaOffset`
  above) and `getPhaseCorrection` (the odd Zernike sum `φ_odd`; predictions are multiplied by
  `exp(i φ_odd)`), both at `(x, y) = (column, signed row) / (pixel size · box)` in 1/Å; the
  constructor adds the beam tilt to the odd coefficients with `TiltHelper::insertTilt`
  (`src/jaz/single_particle/ctf/tilt_helper.cpp`).
- `src/jaz/math/Zernike.cpp`: `evenIndexToMN`, `oddIndexToMN`, `Z(m, n, ρ, φ)` = `R_n^|m|(ρ)`
  times `cos(m φ)` (m ≥ 0) or `sin(-m φ)`, unnormalised.

The Zernike polynomials are written out in Cartesian form for the indices RELION's default
aberration orders use (odd n ≤ 3: 6 coefficients; even n ≤ 4: 9), not computed from a general
formula, so that they check atomicspi's general one.
"""

import numpy as np


def relion_wavelength(kilovolts):
    """`CTF::initialise`: λ = 12.2643247 / √(V (1 + 0.978466·10⁻⁶ V)), V in volts (Å)."""
    volts = np.asarray(kilovolts, dtype=float) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def odd_zernike_basis(x, y):
    """RELION's odd Zernike terms j = 0..5 (`oddIndexToMN`: (n, m) = (1, -1), (1, 1), (3, -3),
    (3, -1), (3, 1), (3, 3)) at frequencies (x, y) in 1/Å."""
    r2 = x * x + y * y
    return np.stack([
        y,                       # Z_1^-1 = ρ sin φ
        x,                       # Z_1^1  = ρ cos φ
        3 * x * x * y - y**3,    # Z_3^-3 = ρ³ sin 3φ
        (3 * r2 - 2) * y,        # Z_3^-1 = (3ρ³ - 2ρ) sin φ
        (3 * r2 - 2) * x,        # Z_3^1  = (3ρ³ - 2ρ) cos φ
        x**3 - 3 * x * y * y,    # Z_3^3  = ρ³ cos 3φ
    ])


def even_zernike_basis(x, y):
    """RELION's even Zernike terms j = 0..8 (`evenIndexToMN`: (n, m) = (0, 0), (2, -2), (2, 0),
    (2, 2), (4, -4), (4, -2), (4, 0), (4, 2), (4, 4)) at frequencies (x, y) in 1/Å."""
    r2 = x * x + y * y
    return np.stack([
        np.ones_like(x),                      # Z_0^0
        2 * x * y,                            # Z_2^-2 = ρ² sin 2φ
        2 * r2 - 1,                           # Z_2^0
        x * x - y * y,                        # Z_2^2  = ρ² cos 2φ
        4 * x**3 * y - 4 * x * y**3,          # Z_4^-4 = ρ⁴ sin 4φ
        (4 * r2 - 3) * 2 * x * y,             # Z_4^-2 = (4ρ⁴ - 3ρ²) sin 2φ
        6 * r2 * r2 - 6 * r2 + 1,             # Z_4^0
        (4 * r2 - 3) * (x * x - y * y),       # Z_4^2  = (4ρ⁴ - 3ρ²) cos 2φ
        x**4 - 6 * x * x * y * y + y**4,      # Z_4^4  = ρ⁴ cos 4φ
    ])


def insert_tilt(odd_coefficients, tilt_x, tilt_y, cs_mm, wavelength):
    """`TiltHelper::insertTilt`: the beam tilt (mrad) added to the odd Zernike coefficients."""
    coefficients = np.zeros(max(6, len(odd_coefficients)))
    coefficients[: len(odd_coefficients)] = odd_coefficients
    scale = cs_mm * 20000 * wavelength * wavelength * 3.141592654
    z3x = -scale * tilt_x / 3.0
    z3y = -scale * tilt_y / 3.0
    coefficients[1] += 2.0 * z3x
    coefficients[0] += 2.0 * z3y
    coefficients[4] += z3x
    coefficients[3] += z3y
    return coefficients


def _padded(coefficients, length):
    out = np.zeros(length)
    out[: len(coefficients)] = coefficients
    return out


def odd_phase(x, y, odd_coefficients=(), tilt_x=0.0, tilt_y=0.0, cs_mm=2.7, kilovolts=300.0, wavelength=None):
    """`getPhaseCorrection`'s phase: Σ_j c_j Z_j^odd(x, y) after `insertTilt` (radians).
    `wavelength` overrides RELION's rounded constants."""
    lam = relion_wavelength(kilovolts) if wavelength is None else wavelength
    coefficients = insert_tilt(np.asarray(odd_coefficients, dtype=float), tilt_x, tilt_y, cs_mm, lam)
    return np.tensordot(_padded(coefficients, 6), odd_zernike_basis(x, y), axes=1)


def even_phase(x, y, even_coefficients=()):
    """`getGammaOffset`: Σ_j c_j Z_j^even(x, y) (radians)."""
    return np.tensordot(_padded(np.asarray(even_coefficients, dtype=float), 9), even_zernike_basis(x, y), axes=1)


def ctf(x, y, defocus_u, defocus_v, angle_degrees, kilovolts, cs_mm, q0, phase_degrees=0.0, b_factor=0.0,
        scale=1.0, even_coefficients=(), wavelength=None):
    """`CTF::getCTF` with `gammaOffset = even_phase` (x, y in 1/Å). `wavelength` overrides RELION's
    rounded constants (to compare formulas at one wavelength)."""
    lam = relion_wavelength(kilovolts) if wavelength is None else wavelength
    azimuth = np.deg2rad(angle_degrees)
    rotation = np.array([[np.cos(azimuth), np.sin(azimuth)], [-np.sin(azimuth), np.cos(azimuth)]])
    a = rotation.T @ np.diag([-defocus_u, -defocus_v]) @ rotation
    u2 = x * x + y * y
    gamma = (
        np.pi * lam * (a[0, 0] * x * x + 2.0 * a[0, 1] * x * y + a[1, 1] * y * y)
        + np.pi / 2 * cs_mm * 1e7 * lam**3 * u2 * u2
        - np.deg2rad(phase_degrees)
        - np.arctan(q0 / np.sqrt(1 - q0 * q0))
        + even_phase(x, y, even_coefficients)
    )
    return scale * np.exp(-b_factor / 4.0 * u2) * -np.sin(gamma)


def rfft_grid(box, pixel_size):
    """(x, y) frequencies in 1/Å of numpy's `rfft2` of a `[y, x]` image: RELION's `(x, signed y) /
    (s · angpix)` for an even box `s` (`getPhaseCorrection` puts the Nyquist row at -1/2 like
    numpy; `CTF::getFftwImage` at +1/2, the same frequency of a real image's transform)."""
    x = np.fft.rfftfreq(box, pixel_size)[None, :]
    y = np.fft.fftfreq(box, pixel_size)[:, None]
    return np.broadcast_to(x, (box, box // 2 + 1)), np.broadcast_to(y, (box, box // 2 + 1))
