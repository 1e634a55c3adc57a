"""CTF and Peng form factors against independent references (RELION's formulas, cryoJAX, Mott-Bethe)."""

import _relion_optics as relion
import gemmi
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.constants as constants

from atomicspi.io import InputError
from atomicspi.microscope import (
    CTFParameters,
    compute_ctf,
    compute_odd_aberration_phase,
    peng_parameters,
    residue_pseudo_atoms,
    rfft_frequencies,
    scattering_factor,
    wavelength_in_angstroms,
)


def _relion_wavelength(kv):
    voltage = kv * 1e3
    return 12.2643247 / np.sqrt(voltage * (1.0 + voltage * 0.978466e-6))


def _relion_ctf(kx, ky, U, V, angle, kv, cs, Q, phase, bfac, scale, lam):
    """RELION's CTF::getCTF (ctf.h), transcribed: internal defocus is negative for underfocus."""
    K1 = np.pi * lam
    K2 = np.pi / 2 * cs * 1e7 * lam**3
    K3 = np.arctan(Q / np.sqrt(1 - Q**2))
    K5 = np.deg2rad(phase)
    defocus_average = -(U + V) * 0.5
    defocus_deviation = -(U - V) * 0.5
    u2 = kx**2 + ky**2
    deltaf = defocus_average + defocus_deviation * np.cos(2 * (np.arctan2(ky, kx) - np.deg2rad(angle)))
    argument = K1 * deltaf * u2 + K2 * u2**2 - K5 - K3
    return scale * np.exp(-bfac / 4 * u2) * -np.sin(argument)


def test_wavelength_is_relativistic_de_broglie(x64):
    energy = 300e3 * constants.electron_volt
    expected = constants.h / np.sqrt(
        2 * constants.electron_mass * energy * (1 + energy / (2 * constants.electron_mass * constants.c**2))
    )
    assert float(wavelength_in_angstroms(300.0)) == pytest.approx(expected * 1e10, rel=1e-7)


def test_ctf_matches_relion_formula(x64):
    frequencies = np.asarray(rfft_frequencies(48, 1.1))
    parameters = dict(U=21000.0, V=17500.0, angle=37.0, kv=200.0, cs=2.0, Q=0.07, phase=25.0, bfac=40.0, scale=0.8)
    ours = compute_ctf(
        jnp.asarray(frequencies),
        CTFParameters(
            defocus_u_in_angstroms=parameters["U"],
            defocus_v_in_angstroms=parameters["V"],
            astigmatism_angle_in_degrees=parameters["angle"],
            voltage_in_kilovolts=parameters["kv"],
            spherical_aberration_in_millimeters=parameters["cs"],
            amplitude_contrast_ratio=parameters["Q"],
            phase_shift_in_degrees=parameters["phase"],
            b_factor_in_angstroms_squared=parameters["bfac"],
            scale=parameters["scale"],
        ),
    )
    # RELION's rounded constants give a wavelength 6e-6 (relative) off CODATA's; the formula is
    # compared at our wavelength
    lam = float(wavelength_in_angstroms(parameters["kv"]))
    assert lam == pytest.approx(_relion_wavelength(parameters["kv"]), rel=1e-5)
    relion = _relion_ctf(frequencies[..., 0], frequencies[..., 1], **parameters, lam=lam)
    np.testing.assert_allclose(np.asarray(ours), relion, atol=1e-10)


def test_ctf_at_zero_frequency_is_plus_amplitude_contrast(x64):
    value = compute_ctf(jnp.zeros(2), CTFParameters(15000.0, 14000.0, amplitude_contrast_ratio=0.1))
    assert float(value) == pytest.approx(np.sin(np.arctan(0.1 / np.sqrt(1 - 0.01))), rel=1e-12)
    assert float(value) > 0


def test_even_zernike_defocus_term_equals_defocus_and_phase_change(x64):
    # RELION's even Zernike index 2 is Z_2^0 = 2|k|² - 1: a defocus change plus a constant phase
    frequencies = rfft_frequencies(32, 1.0)
    c = 0.3
    with_zernike = compute_ctf(
        frequencies, CTFParameters(15000.0, 15000.0, even_zernike_coefficients=jnp.array([0.0, 0.0, c]))
    )
    lam = float(wavelength_in_angstroms(300.0))
    equivalent = compute_ctf(
        frequencies,
        CTFParameters(
            15000.0 - 2 * c / (np.pi * lam), 15000.0 - 2 * c / (np.pi * lam), phase_shift_in_degrees=np.rad2deg(c)
        ),
    )
    np.testing.assert_allclose(np.asarray(with_zernike), np.asarray(equivalent), atol=1e-10)


def test_beam_tilt_phase_is_relions_forward_model(x64):
    """The phase beam tilt adds to predicted images is RELION's: 3.0's `LegacyObservationModel::
    predictObservation` applies `selfApplyBeamTilt` with `-τ` (fftw.cpp: delta_phase in degrees
    = factor (ip² + jp²)(ip τ_y + jp τ_x)); 3.1+ folds τ into the odd Zernike terms
    (`TiltHelper::insertTilt`) and multiplies by `exp(i Σ c_j Z_j)`. Both agree, and fix the sign.
    Tolerance: float64 round-off (the phase reaches ~60 rad here, 1e-9 relative is ~1e5 ulps)."""
    box, pixel = 40, 1.2
    frequencies = np.asarray(rfft_frequencies(box, pixel))
    tilt_x, tilt_y = 0.4, -0.25
    parameters = CTFParameters(
        15000.0, 15000.0, spherical_aberration_in_millimeters=2.7,
        beam_tilt_x_in_milliradians=tilt_x, beam_tilt_y_in_milliradians=tilt_y,
    )
    ours = np.asarray(compute_odd_aberration_phase(jnp.asarray(frequencies), parameters))
    lam = float(wavelength_in_angstroms(300.0))  # RELION's rounded constants differ by 6e-6 (relative)
    boxsize = pixel * box
    factor = 0.360 * 2.7 * 1e7 * lam * lam / boxsize**3
    ip = frequencies[..., 1] * boxsize
    jp = frequencies[..., 0] * boxsize
    legacy = np.deg2rad(factor * (ip**2 + jp**2) * (ip * -tilt_y + jp * -tilt_x))
    np.testing.assert_allclose(ours, legacy, rtol=1e-9, atol=1e-12)
    folded = relion.odd_phase(frequencies[..., 0], frequencies[..., 1], (), tilt_x, tilt_y, 2.7, wavelength=lam)
    np.testing.assert_allclose(ours, folded, rtol=1e-9, atol=1e-9)
    assert np.abs(ours).max() > 1.0  # a phase that matters


def test_zernike_terms_b_factor_and_scale_match_relion(x64):
    """Odd and even Zernike coefficients (RELION's default orders: 6 odd, 9 even) with beam tilt,
    B-factor, scale, astigmatism and a phase plate, against RELION's `getPhaseCorrection`,
    `getGammaOffset` and `CTF::getCTF` written out in tests/_relion_optics.py. Tolerance: float64
    round-off (arguments up to ~100 rad)."""
    box, pixel = 48, 1.1
    frequencies = np.asarray(rfft_frequencies(box, pixel))
    x, y = frequencies[..., 0], frequencies[..., 1]
    odd = np.array([1.5, -2.0, 300.0, -150.0, 80.0, 220.0])
    even = np.array([0.3, -20.0, 15.0, 25.0, 900.0, -700.0, 400.0, 650.0, -1200.0])
    values = dict(defocus_u=14000.0, defocus_v=12500.0, angle_degrees=33.0, kilovolts=200.0, cs_mm=2.0, q0=0.07,
                  phase_degrees=40.0, b_factor=60.0, scale=0.8)
    parameters = CTFParameters(
        values["defocus_u"], values["defocus_v"], values["angle_degrees"], values["kilovolts"], values["cs_mm"],
        values["q0"], values["phase_degrees"], values["b_factor"], values["scale"],
        beam_tilt_x_in_milliradians=-0.3, beam_tilt_y_in_milliradians=0.7,
        odd_zernike_coefficients=jnp.asarray(odd), even_zernike_coefficients=jnp.asarray(even),
    )
    lam = float(wavelength_in_angstroms(200.0))
    ours_phase = np.asarray(compute_odd_aberration_phase(jnp.asarray(frequencies), parameters))
    np.testing.assert_allclose(ours_phase, relion.odd_phase(x, y, odd, -0.3, 0.7, 2.0, wavelength=lam), rtol=1e-9, atol=1e-9)
    ours_ctf = np.asarray(compute_ctf(jnp.asarray(frequencies), parameters))
    np.testing.assert_allclose(ours_ctf, relion.ctf(x, y, **values, even_coefficients=even, wavelength=lam), atol=1e-9)
    # the terms matter at these frequencies (else the comparison would be vacuous)
    assert np.abs(relion.even_phase(x, y, even)).max() > 1.0 and np.abs(ours_phase).max() > 1.0


def test_ctf_equals_minus_cryojax_after_documented_conversion():
    cryojax_simulator = pytest.importorskip("cryojax.simulator")
    from cryojax.constants import wavelength_from_kilovolts
    from cryojax.ndimage import make_frequency_grid

    box, pixel = 64, 1.3
    U, V, angle = 16000.0, 12500.0, 28.0
    theirs = cryojax_simulator.AstigmaticCTF((U + V) / 2, U - V, 90.0 - angle, 2.7)(
        make_frequency_grid((box, box), pixel), wavelength_from_kilovolts(300.0), 0.1, 10.0
    )
    ours = compute_ctf(
        rfft_frequencies(box, pixel),
        CTFParameters(U, V, angle, 300.0, 2.7, 0.1, phase_shift_in_degrees=10.0),
    )
    np.testing.assert_allclose(np.asarray(ours), -np.asarray(theirs), atol=1e-2)
    assert np.corrcoef(np.ravel(ours), -np.ravel(theirs))[0, 1] > 0.9999


def test_peng_table_matches_cryojax():
    pytest.importorskip("cryojax")
    from cryojax.constants import PengScatteringFactorParameters
    from cryojax.constants._scattering_factor_parameters import _SUPPORTED_ATOMIC_NUMBERS

    numbers = np.array(_SUPPORTED_ATOMIC_NUMBERS)
    theirs = PengScatteringFactorParameters(numbers)
    a, b = peng_parameters(numbers)
    # Both are Peng's printed 4-decimal numbers (cryoJAX 0.6: Z = 1-30, 17 elements; measured equal):
    # a mistyped last digit is at least 1e-4 / 194.4 = 5e-7 relative, float32 storage at most 6e-8.
    np.testing.assert_allclose(a, theirs.a, rtol=2e-7)
    np.testing.assert_allclose(b, theirs.b, rtol=2e-7)


# Peng, Ren, Dudarev & Whelan (1996) Table 1, typed from the paper: heavier elements than cryoJAX has.
PENG_1996_ROWS = {
    34: ((0.4477, 1.1678, 1.5843, 2.8087, 1.1956), (0.2405, 1.5442, 6.3231, 19.461, 52.0233)),  # Se
    79: ((0.9674, 1.8916, 3.3993, 3.0524, 1.2607), (0.2358, 1.4712, 5.6758, 18.7119, 61.5286)),  # Au
    92: ((1.3382, 3.2043, 5.4558, 5.4839, 3.6342), (0.2838, 2.2452, 10.2519, 41.7251, 124.9023)),  # U
    98: ((1.2089, 2.7391, 4.3482, 4.0047, 4.6497), (0.2421, 1.7487, 6.7262, 23.2153, 80.3108)),  # Cf
}


def test_peng_table_read_from_gemmi_covers_h_to_cf():
    """The table is gemmi's `c4322` (IT Vol. C 4.3.2.2 = Peng 1996): H ... Cf, rows where they belong."""
    a, b = peng_parameters(np.arange(1, 99))
    assert np.isfinite(a).all() and np.isfinite(b).all() and (b > 0).all()
    numbers = np.array(list(PENG_1996_ROWS))
    a, b = peng_parameters(numbers)
    np.testing.assert_array_equal(a, [row[0] for row in PENG_1996_ROWS.values()])
    np.testing.assert_array_equal(b, [row[1] for row in PENG_1996_ROWS.values()])
    with pytest.raises(InputError, match=r"\[99\]"):
        peng_parameters(np.array([98, 99]))


@pytest.mark.parametrize("element", ["C", "O", "S", "Se", "I", "Au", "U"])
def test_scattering_factor_follows_mott_bethe(element):
    """Mott-Bethe: f_e(s) = m₀e² / (8π ε₀ h²) · (Z - f_x(s)) / s², with Waasmaier-Kirfel-like X-ray
    factors (gemmi's IT92), an independent parameterisation."""
    z = gemmi.Element(element).atomic_number
    s = np.linspace(0.4, 1.5, 12)
    mott_constant = (
        constants.electron_mass * constants.elementary_charge**2
        / (8 * np.pi * constants.epsilon_0 * constants.h**2) * 1e-10
    )  # 0.023934 Å
    xray = np.array([gemmi.Element(element).it92.calculate_sf(float(si**2)) for si in s])
    expected = mott_constant * (z - xray) / s**2
    np.testing.assert_allclose(scattering_factor(np.array([z]), s)[0], expected, rtol=0.06)


def test_pseudo_atom_scattering_factor_is_residue_sum():
    numbers = np.array([7, 6, 6, 8, 1, 16, 6, 1])
    b_factors = np.array([10.0, 20.0, 30.0, 40.0, 5.0, 12.0, 0.0, 3.0])
    residues = np.array([4, 4, 4, 4, 4, 9, 9, 9])
    table = residue_pseudo_atoms(numbers, b_factors, residues)
    s = np.linspace(0.0, 1.0, 7)
    for bead, residue in enumerate([4, 9]):
        members = residues == residue
        expected = np.sum(
            scattering_factor(numbers[members], s) * np.exp(-b_factors[members, None] * s**2), axis=0
        )
        got = np.sum(table[bead, :, :1] * np.exp(-table[bead, :, 1:] * s**2), axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_unknown_element_is_input_error():
    with pytest.raises(InputError, match="atomic_numbers"):
        peng_parameters(np.array([6, 0]))
    with pytest.raises(InputError, match="atomic_numbers"):
        peng_parameters(np.array([120]))
