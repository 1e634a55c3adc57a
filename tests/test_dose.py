"""Exposure filter and tilt-series geometry against independent references.

References: the formula of Grant & Grigorieff (eLife 2015) evaluated here in numpy; cryoDRGN-ET's
`TiltSeriesData.critical_exposure` / `get_dose_filters` (cryodrgn/dataset.py) transcribed in numpy;
RELION's motion-correction voltage scaling (`MotioncorrRunner`, doses /= 0.8 at 200 kV); RELION 5's
`Tomogram::setProjectionMatrix` rotation `Rz(zrot) Ry(ytilt) Rx(xtilt)` built with scipy.
"""

import jax
import numpy as np
import pytest
import scipy.optimize
from scipy.spatial.transform import Rotation

from atomicspi.conventions import euler_angles_to_matrix
from atomicspi.microscope import (
    OPTIMAL_TO_CRITICAL_EXPOSURE,
    compose_tilt_rotations,
    critical_exposure_in_electrons_per_square_angstrom,
    exposure_filter,
    exposure_filter_on_grid,
    optimal_exposure_in_electrons_per_square_angstrom,
    tilt_defocus_offset_in_angstroms,
    tilt_series_view_rotation,
)


def _paper_critical_exposure(k):
    """Grant & Grigorieff (2015), eq. 3 with the published constants (300 kV)."""
    with np.errstate(divide="ignore"):
        return 0.245 * np.abs(k) ** -1.665 + 2.81


def _paper_filter(k, exposure):
    """q(k, N) = exp(-N / (2 N_e(k))), eq. 5; 1 at k = 0 (N_e infinite)."""
    exposure = np.asarray(exposure)
    exposure = exposure.reshape(exposure.shape + (1,) * np.ndim(k))
    return np.exp(-exposure / (2 * _paper_critical_exposure(k)))


def test_filter_is_the_paper_formula(x64):
    k = np.array([0.0, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.33, 0.5])
    exposure = np.array([0.0, 2.5, 10.0, 40.0, 120.0])
    np.testing.assert_allclose(exposure_filter(k, exposure), _paper_filter(k, exposure), rtol=1e-12, atol=0)
    np.testing.assert_allclose(critical_exposure_in_electrons_per_square_angstrom(k[1:]), _paper_critical_exposure(k[1:]), rtol=1e-12)
    assert np.isinf(critical_exposure_in_electrons_per_square_angstrom(0.0))
    # negative frequencies (the rfft grid's k_y) are |k|
    np.testing.assert_allclose(exposure_filter(-k, exposure), exposure_filter(k, exposure), rtol=0, atol=0)


def test_filter_on_the_rfft_grid(x64):
    exposure = np.array([0.0, 5.0, 30.0])
    for box, pixel in ((16, 1.3), (15, 2.0)):
        weights = np.asarray(exposure_filter_on_grid(box, pixel, exposure))
        k = np.hypot(*np.meshgrid(np.fft.fftfreq(box, pixel), np.fft.rfftfreq(box, pixel), indexing="ij"))
        assert weights.shape == (3, box, box // 2 + 1)
        np.testing.assert_allclose(weights, _paper_filter(k, exposure), rtol=1e-12)
        np.testing.assert_array_equal(weights[0], 1.0)  # no exposure, no damage
        np.testing.assert_array_equal(weights[:, 0, 0], 1.0)  # k = 0 is never damped
        assert np.all(np.diff(weights, axis=0) <= 0)  # more exposure, less signal
        assert weights[-1].min() < 0.1


def test_filter_matches_cryodrgn_et(x64):
    """cryoDRGN-ET (cryodrgn/dataset.py, TiltSeriesData.get_dose_filters at 300 kV, without its separate
    cos(tilt) factor): freqs = lattice.freqs2d / Apix on the symmetric (D+1)² lattice, critical exposure
    0.245 s^-1.665 + 2.81, cumulative dose = tilt number × dose per tilt, and the weight
    exp(-0.5 · dose / N_e) set to 0 where dose >= 2.51284 N_e."""
    box, pixel, dose_per_tilt = 64, 2.5, 3.0
    axis = np.linspace(-0.5, 0.5, box + 1, endpoint=True)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    s = np.sqrt(x**2 + y**2).ravel() / pixel
    tilt_numbers = np.arange(41)
    cumulative = (tilt_numbers * dose_per_tilt)[:, None]
    with np.errstate(divide="ignore"):
        critical = np.power(s, -1.665) * 0.245 + 2.81
    reference = np.exp(-0.5 * cumulative / critical) * (cumulative < critical * 2.51284)
    ours = exposure_filter(s, tilt_numbers * dose_per_tilt, zero_beyond_optimal_exposure=True)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=0)
    assert 0 < (reference == 0).mean() < 1  # the cut-off is exercised on both sides


def test_optimal_exposure_maximises_the_signal_to_noise_ratio(x64):
    """Summed to exposure N, the signal amplitude is ∫₀^N q(k, n) dn and the noise √N (Grant &
    Grigorieff 2015): the ratio, computed numerically from the filter, peaks at 2.51284 N_e(k)."""
    exposure = np.linspace(0.0, 400.0, 400_001)
    step = exposure[1] - exposure[0]
    for k in (0.05, 0.1, 0.2, 0.3):
        q = np.asarray(exposure_filter(k, exposure))
        signal = np.concatenate([[0.0], np.cumsum((q[1:] + q[:-1]) / 2 * step)])
        ratio = signal[1:] / np.sqrt(exposure[1:])
        best = exposure[1:][np.argmax(ratio)]
        expected = OPTIMAL_TO_CRITICAL_EXPOSURE * _paper_critical_exposure(k)
        assert abs(best - expected) < 2e-4 * expected + step, (k, best, expected)
        np.testing.assert_allclose(optimal_exposure_in_electrons_per_square_angstrom(k), expected, rtol=1e-12)
    # and the constant is the root of d/dx[(1 - exp(-x/2)) / √x] = 0, i.e. (1 + x) exp(-x/2) = 1
    root = scipy.optimize.brentq(lambda x: (1 + x) * np.exp(-x / 2) - 1, 1.0, 5.0, xtol=1e-12)
    assert abs(root - OPTIMAL_TO_CRITICAL_EXPOSURE) < 5e-5


def test_200_kilovolts_scales_the_critical_exposure_by_0_8(x64):
    """cisTEM's ElectronDose (voltage_scaling_factor 0.8 on a k^b + c) and RELION's motion correction
    (doses /= 0.8 at 200 kV) are the same filter."""
    k = np.array([0.0, 0.02, 0.1, 0.25])
    exposure = np.array([0.0, 7.0, 60.0])
    np.testing.assert_allclose(
        critical_exposure_in_electrons_per_square_angstrom(k[1:], 200.0), 0.8 * _paper_critical_exposure(k[1:]), rtol=1e-12
    )
    np.testing.assert_allclose(exposure_filter(k, exposure, 200.0), _paper_filter(k, exposure / 0.8), rtol=1e-12)
    np.testing.assert_allclose(exposure_filter(k, exposure, 301.5), _paper_filter(k, exposure), rtol=1e-12)
    for voltage in (100.0, 250.0, 120.0):
        with pytest.raises(ValueError, match="300 and 200 kV"):
            exposure_filter(k, exposure, voltage)


def test_filter_is_differentiable_in_the_exposure_at_zero_frequency(x64):
    gradient = jax.grad(lambda n: exposure_filter(np.array([0.0, 0.1]), n).sum())(4.0)
    expected = -0.5 / _paper_critical_exposure(0.1) * np.exp(-4.0 / (2 * _paper_critical_exposure(0.1)))
    np.testing.assert_allclose(gradient, expected, rtol=1e-10)


def _relion5_view_rotation(y_tilt, z_rotation, x_tilt):
    """RELION 5: r2 r1 r0 with r = gravis::t3Matrix::rotation (right-handed, OpenGL formula)."""
    return Rotation.from_euler("ZYX", np.stack([z_rotation, y_tilt, x_tilt], axis=-1), degrees=True).as_matrix()


def test_view_rotation_is_relions_projection_rotation(x64):
    rng = np.random.default_rng(0)
    y_tilt = rng.uniform(-60, 60, 12)
    z_rotation = rng.uniform(-180, 180, 12)
    x_tilt = rng.uniform(-5, 5, 12)
    rotations = np.asarray(tilt_series_view_rotation(y_tilt, z_rotation, x_tilt))
    np.testing.assert_allclose(rotations, _relion5_view_rotation(y_tilt, z_rotation, x_tilt), atol=1e-12)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    # a pure stage tilt is the textbook rotation about y
    theta = np.deg2rad(30.0)
    np.testing.assert_allclose(
        tilt_series_view_rotation(30.0),
        [[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]],
        atol=1e-12,
    )


def test_points_on_the_tilt_axis_keep_their_defocus(x64):
    tilts = np.linspace(-60, 60, 41)
    views = tilt_series_view_rotation(tilts, tilt_axis_angle_in_degrees=85.3)
    for y in (-800.0, 0.0, 350.0):
        offsets = tilt_defocus_offset_in_angstroms(np.array([0.0, y, 0.0]), views, handedness=-1.0)
        np.testing.assert_allclose(offsets, 0.0, atol=1e-9)


@pytest.mark.parametrize("handedness", [1.0, -1.0])
def test_height_changes_defocus_by_z_cos_minus_x_sin(x64, handedness):
    """(R_f p)_z for R_f = Rz(axis) Ry(θ): z cos θ - x sin θ (the in-plane axis angle does not change
    depth); with hand = +1 a particle above the centre (z > 0) is further underfocused at θ = 0."""
    tilts = np.linspace(-60, 60, 13)
    theta = np.deg2rad(tilts)
    views = tilt_series_view_rotation(tilts, tilt_axis_angle_in_degrees=-94.0)
    position = np.array([120.0, -310.0, 45.0])
    offsets = np.asarray(tilt_defocus_offset_in_angstroms(position, views, handedness, defocus_slope=1.25))
    expected = handedness * 1.25 * (position[2] * np.cos(theta) - position[0] * np.sin(theta))
    np.testing.assert_allclose(offsets, expected, atol=1e-9)
    above = tilt_defocus_offset_in_angstroms(np.array([0.0, 0.0, 200.0]), tilt_series_view_rotation(np.zeros(1)), handedness)
    np.testing.assert_allclose(above, [handedness * 200.0], atol=1e-12)


def test_composed_rotations_apply_the_particle_then_the_view(x64):
    rng = np.random.default_rng(1)
    particle_rotations = np.asarray(euler_angles_to_matrix(rng.uniform([-180, 0, -180], [180, 180, 180], (4, 3))))
    views = _relion5_view_rotation(rng.uniform(-60, 60, (4, 7)), rng.uniform(-95, -85, (4, 7)), np.zeros((4, 7)))
    composed = np.asarray(compose_tilt_rotations(particle_rotations, views))
    assert composed.shape == (4, 7, 3, 3)
    np.testing.assert_allclose(composed @ np.swapaxes(composed, -1, -2), np.broadcast_to(np.eye(3), composed.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(composed), 1.0, atol=1e-12)
    coordinates = rng.normal(size=(25, 3)) * 30
    in_turn = np.einsum("ptij,pmj->ptmi", views, np.einsum("pij,mj->pmi", particle_rotations, coordinates))
    at_once = np.einsum("ptij,mj->ptmi", composed, coordinates)
    np.testing.assert_allclose(at_once, in_turn, atol=1e-10)
    # one particle against a stack of views broadcasts the same way
    np.testing.assert_allclose(compose_tilt_rotations(particle_rotations[0], views[0]), composed[0], atol=1e-12)
