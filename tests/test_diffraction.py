"""X-ray diffraction forward model (GitHub issue 18) against analytic results, gemmi, scipy and skopi."""

import math

import gemmi
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.constants
from scipy import stats

from atomicspi.io import InputError
from atomicspi.microscope import (
    CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS,
    DetectorGeometry,
    make_detector_geometry,
    make_diffraction_model,
    molecular_amplitude,
    photon_wavelength_in_angstroms,
    pixel_geometry,
    poisson_log_likelihood,
    quaternion_to_matrix,
    sample_photon_counts,
    sample_uniform_rotations,
    xray_form_factor_parameters,
    xray_scattering_factor,
)
from atomicspi.structure import load_structure


@pytest.fixture(scope="module")
def adk_atoms(example_structure_path):
    """`(positions (n, 3) Å centred on the mean, atomic numbers (n,))` of closed adenylate kinase."""
    model = load_structure(example_structure_path)
    positions = model.positions_in_angstroms
    return positions - positions.mean(axis=0), model.atomic_numbers


def grid_sphere(radius, spacing):
    """Points of a cubic grid inside a sphere centred on a grid point, and the radius of the
    sphere with the same volume (`N · spacing³`)."""
    axis = np.arange(-radius, radius + spacing / 2, spacing)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    points = grid[np.linalg.norm(grid, axis=1) <= radius]
    return points, (3 * len(points) * spacing**3 / (4 * np.pi)) ** (1 / 3)


def sphere_amplitude(x):
    """Normalised form factor of a uniform sphere, `3 (sin x - x cos x) / x³`, `x = 2π |q| R`."""
    return 3 * (np.sin(x) - x * np.cos(x)) / x**3


# ---------------------------------------------------------------- form factors


def test_form_factors_at_zero_angle_count_the_electrons():
    numbers = np.arange(1, 99)
    a, _, c = xray_form_factor_parameters(numbers)
    np.testing.assert_allclose(a.sum(axis=1) + c, numbers, atol=0.07)
    np.testing.assert_allclose(xray_scattering_factor(numbers, 0.0), numbers, atol=0.07)
    for number in (1, 6, 7, 8, 16, 26):  # and against gemmi's own (C++) evaluation at s > 0
        s = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
        expected = [gemmi.Element(number).it92.calculate_sf(stol2=float(v) ** 2) for v in s]
        np.testing.assert_allclose(xray_scattering_factor(np.array([number]), s)[0], expected, rtol=1e-6)


def test_unknown_elements_are_refused():
    with pytest.raises(InputError, match="atomic_numbers"):
        xray_form_factor_parameters(np.array([6, 0]))
    with pytest.raises(InputError, match="atomic_numbers"):
        xray_scattering_factor(np.array([119]), 0.1)


# ---------------------------------------------------------------- geometry


def test_photon_energy_and_wavelength_follow_codata(x64):
    energy_in_kev = 9.5
    expected = scipy.constants.h * scipy.constants.c / (energy_in_kev * 1e3 * scipy.constants.e) * 1e10
    assert float(photon_wavelength_in_angstroms(energy_in_kev)) == pytest.approx(expected, rel=1e-9)
    geometry = make_detector_geometry((4, 4), 0.1, 100.0, photon_energy_in_kiloelectronvolts=energy_in_kev)
    assert geometry.wavelength_in_angstroms == pytest.approx(expected, rel=1e-9)
    assert float(geometry.photon_energy_in_kiloelectronvolts) == pytest.approx(energy_in_kev, rel=1e-6)


def test_scattering_vectors_lie_on_the_ewald_sphere_with_bragg_lengths():
    wavelength, distance, pixel = 1.7, 80.0, 0.6
    geometry = make_detector_geometry((33, 40), pixel, distance, wavelength_in_angstroms=wavelength)
    q = np.asarray(pixel_geometry(geometry).q_in_inverse_angstroms, dtype=float)
    centre_y, centre_x = 33 // 2, 40 // 2
    assert np.all(q[centre_y, centre_x] == 0)
    # a pixel 15 columns right and 7 rows down of the beam: 2θ from the geometry, |q| = 2 sin θ / λ
    row, column = centre_y + 7, centre_x + 15
    x, y = 15 * pixel, 7 * pixel
    two_theta = math.atan2(math.hypot(x, y), distance)
    azimuth = math.atan2(y, x)
    expected = np.array(
        [math.sin(two_theta) * math.cos(azimuth), math.sin(two_theta) * math.sin(azimuth), math.cos(two_theta) - 1]
    ) / wavelength
    np.testing.assert_allclose(q[row, column], expected, rtol=2e-6, atol=1e-9)
    assert np.linalg.norm(q[row, column]) == pytest.approx(2 * math.sin(two_theta / 2) / wavelength, rel=2e-6)
    # every q + k_in has length 1 / λ (Ewald sphere)
    k_out = q + np.array([0.0, 0.0, 1.0 / wavelength])
    np.testing.assert_allclose(np.linalg.norm(k_out, axis=-1), 1.0 / wavelength, rtol=2e-6)


def test_solid_angles_add_up_to_the_detector():
    n_y, n_x, pixel, distance = 60, 80, 1.0, 70.0
    centre_x, centre_y = 23.3, 41.7  # off-centre beam
    geometry = make_detector_geometry(
        (n_y, n_x), pixel, distance, wavelength_in_angstroms=1.0, beam_centre_in_pixels=(centre_x, centre_y)
    )
    total = float(np.sum(np.asarray(pixel_geometry(geometry).solid_angle_in_steradians, dtype=float)))

    def corner(x, y):  # solid angle of the rectangle [0, x] × [0, y] (signed) at distance D
        return math.atan(x * y / (distance * math.sqrt(x**2 + y**2 + distance**2)))

    x_low, x_high = (-0.5 - centre_x) * pixel, (n_x - 0.5 - centre_x) * pixel
    y_low, y_high = (-0.5 - centre_y) * pixel, (n_y - 0.5 - centre_y) * pixel
    exact = corner(x_high, y_high) - corner(x_low, y_high) - corner(x_high, y_low) + corner(x_low, y_low)
    assert total == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("polarization", ["x", "y", "unpolarized"])
def test_polarization_factors_at_known_angles(polarization):
    pixel, distance = 1.0, 20.0
    geometry = make_detector_geometry(
        (41, 41), pixel, distance, wavelength_in_angstroms=1.0, polarization=polarization
    )
    factor = np.asarray(pixel_geometry(geometry).polarization_factor, dtype=float)
    two_theta = math.atan2(10 * pixel, distance)  # 10 pixels from the centre (20, 20)
    along_x, along_y = factor[20, 30], factor[30, 20]
    cos_squared = math.cos(two_theta) ** 2
    expected = {"x": (cos_squared, 1.0), "y": (1.0, cos_squared), "unpolarized": ((1 + cos_squared) / 2,) * 2}
    assert (along_x, along_y) == pytest.approx(expected[polarization], rel=1e-6)
    assert factor[20, 20] == pytest.approx(1.0)
    diagonal = math.atan2(10 * math.sqrt(2) * pixel, distance)  # azimuth 45°: 1 - sin²(2θ)/2
    if polarization != "unpolarized":
        assert factor[30, 30] == pytest.approx(1 - math.sin(diagonal) ** 2 / 2, rel=1e-6)


def test_bad_geometry_is_refused():
    with pytest.raises(InputError, match="detector_distance_in_millimetres"):
        make_detector_geometry((8, 8), 0.1, -5.0, wavelength_in_angstroms=1.0)
    with pytest.raises(InputError, match="pixel_size_in_millimetres"):
        make_detector_geometry((8, 8), float("nan"), 5.0, wavelength_in_angstroms=1.0)
    with pytest.raises(InputError, match="wavelength_in_angstroms"):
        make_detector_geometry((8, 8), 0.1, 5.0, wavelength_in_angstroms=1.0, photon_energy_in_kiloelectronvolts=8.0)
    with pytest.raises(InputError, match="photon_energy"):
        make_detector_geometry((8, 8), 0.1, 5.0, photon_energy_in_kiloelectronvolts=0.0)
    with pytest.raises(InputError, match="polarization"):
        make_detector_geometry((8, 8), 0.1, 5.0, wavelength_in_angstroms=1.0, polarization="circular")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shape"):
        DetectorGeometry(1.0, 5.0, 0.1, 4.0, 4.0, shape=(8, 0))


# ---------------------------------------------------------------- amplitudes and patterns


def test_grid_sphere_amplitude_is_the_analytic_sphere_form_factor():
    points, radius = grid_sphere(12.0, 1.0)
    direction = np.array([0.36, 0.48, 0.8])
    x = np.linspace(0.05, 10.0, 120)  # through the first two zeros, |q| ≤ 0.13 / Å ≪ 1 / spacing
    q = (x / (2 * np.pi * radius))[:, None] * direction
    amplitude = np.asarray(
        molecular_amplitude(jnp.asarray(points), jnp.eye(3), jnp.asarray(q), jnp.ones((len(q), 1)), jnp.zeros(len(points), int))
    )
    np.testing.assert_allclose(amplitude.real / len(points), sphere_amplitude(x), atol=3e-3)
    np.testing.assert_allclose(amplitude.imag / len(points), 0.0, atol=1e-5)  # centrosymmetric


def test_detector_pattern_of_a_carbon_sphere():
    """The whole model on a detector: |F|² / (N f_C)² is the sphere's |Φ(x)|², f_C from gemmi."""
    points, radius = grid_sphere(10.0, 1.0)
    geometry = make_detector_geometry((40, 40), 1.2, 100.0, wavelength_in_angstroms=1.0)
    model = make_diffraction_model(np.full(len(points), 6), geometry)
    intensity = np.asarray(model.intensity(jnp.asarray(points), jnp.asarray(quaternion_to_matrix(jnp.array([0.9, 0.1, -0.3, 0.2])))))
    q = np.linalg.norm(np.asarray(pixel_geometry(geometry).q_in_inverse_angstroms), axis=-1)
    carbon = np.vectorize(lambda s: gemmi.Element("C").it92.calculate_sf(stol2=s**2))(q / 2)
    x = 2 * np.pi * q * radius
    inside = (x > 0) & (x < 10)
    assert inside.sum() > 500
    normalised = intensity[inside] / (len(points) * carbon[inside]) ** 2
    np.testing.assert_allclose(normalised, sphere_amplitude(x[inside]) ** 2, atol=2e-3)
    assert intensity[20, 20] == pytest.approx((len(points) * 6.0) ** 2, rel=1e-3)  # q = 0: (Σ f(0))²


def test_friedel_symmetry_for_real_form_factors():
    rng = np.random.default_rng(3)
    positions = jnp.asarray(rng.normal(scale=6.0, size=(50, 3)))
    types = jnp.asarray(rng.integers(0, 3, size=50))
    q = jnp.asarray(rng.normal(scale=0.2, size=(30, 3)))
    form_factors = jnp.asarray(rng.uniform(1.0, 8.0, size=(30, 3)))
    rotation = sample_uniform_rotations(jax.random.key(1), 1)[0]
    plus = np.asarray(molecular_amplitude(positions, rotation, q, form_factors, types))
    minus = np.asarray(molecular_amplitude(positions, rotation, -q, form_factors, types))
    assert np.abs(plus.imag).max() > 0.1 * np.abs(plus).max()  # not trivially real
    np.testing.assert_allclose(minus, np.conj(plus), rtol=1e-4, atol=1e-4 * np.abs(plus).max())
    np.testing.assert_allclose(np.abs(minus) ** 2, np.abs(plus) ** 2, rtol=1e-4, atol=1e-6 * np.abs(plus).max() ** 2)


def test_single_atom_photon_counts_have_the_thomson_scale(x64):
    """One carbon atom: λ = Φ r_e² P Ω f_C(s)² + b, every factor recomputed here from the geometry."""
    pixel, distance, wavelength = 0.5, 40.0, 1.3
    geometry = make_detector_geometry((16, 20), pixel, distance, wavelength_in_angstroms=wavelength)
    model = make_diffraction_model(np.array([6]), geometry)
    fluence, background = 3.0e7, 0.25
    expected = np.asarray(model.expected_photons(jnp.array([[1.0, -2.0, 0.5]]), jnp.eye(3), fluence, background))
    rows, columns = np.mgrid[0:16, 0:20]
    x, y = (columns - 10) * pixel, (rows - 8) * pixel
    r = np.sqrt(x**2 + y**2 + distance**2)
    s = np.sin(np.arctan2(np.hypot(x, y), distance) / 2) / wavelength
    carbon = np.vectorize(lambda v: gemmi.Element("C").it92.calculate_sf(stol2=v**2))(s)
    reference = fluence * (2.8179403262e-5) ** 2 * (1 - (x / r) ** 2) * pixel**2 * distance / r**3 * carbon**2 + background
    assert CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS == pytest.approx(scipy.constants.physical_constants["classical electron radius"][0] * 1e10, rel=1e-9)
    np.testing.assert_allclose(expected, reference, rtol=1e-6)


def test_rotation_acts_on_the_atoms_and_chunks_do_not_matter(adk_atoms):
    positions, numbers = adk_atoms
    positions, numbers = positions[:200], numbers[:200]
    geometry = make_detector_geometry((24, 24), 2.0, 100.0, wavelength_in_angstroms=2.0)
    rotations = sample_uniform_rotations(jax.random.key(4), 3)
    reference = make_diffraction_model(numbers, geometry)
    intensities = jax.jit(jax.vmap(reference.intensity, in_axes=(None, 0)))(jnp.asarray(positions), rotations)
    scale = float(jnp.max(intensities))
    for chunk in (1, 7, 200):
        model = make_diffraction_model(numbers, geometry, atoms_per_chunk=chunk)
        batch = jax.jit(jax.vmap(model.intensity, in_axes=(None, 0)))(jnp.asarray(positions), rotations)
        np.testing.assert_allclose(batch, intensities, atol=2e-5 * scale)
    # A applied by the model = the rotated coordinates A r with the identity
    rotated = jnp.asarray(positions) @ rotations[0].T
    np.testing.assert_allclose(reference.intensity(rotated, jnp.eye(3)), intensities[0], atol=2e-5 * scale)


def test_guinier_law_gives_the_form_factor_weighted_radius_of_gyration(adk_atoms):
    positions, numbers = adk_atoms
    weights = xray_scattering_factor(numbers, 0.0)
    centre = weights @ positions / weights.sum()
    radius_of_gyration = math.sqrt(weights @ np.sum((positions - centre) ** 2, axis=1) / weights.sum())
    # |q| ≤ 0.009 / Å: Q R_g = 2π |q| R_g ≤ 0.9 (Guinier range)
    geometry = make_detector_geometry((16, 16), 1.0, 1000.0, wavelength_in_angstroms=1.0)
    model = make_diffraction_model(numbers, geometry)
    rotations = sample_uniform_rotations(jax.random.key(5), 48)
    mean = jnp.mean(jax.lax.map(lambda rotation: model.intensity(jnp.asarray(positions), rotation), rotations), axis=0)
    q = np.linalg.norm(np.asarray(model.q_in_inverse_angstroms), axis=-1).ravel()
    momentum_squared = (2 * np.pi * q) ** 2
    # ln I = ln I(0) - Q² R_g² / 3 + O(Q⁴)
    _, slope, _ = np.polynomial.polynomial.polyfit(momentum_squared, np.log(np.asarray(mean).ravel()), 2)
    assert math.sqrt(-3 * slope) == pytest.approx(radius_of_gyration, rel=0.03)
    assert float(mean[8, 8]) == pytest.approx(weights.sum() ** 2, rel=1e-3)


# ---------------------------------------------------------------- photon counts


def test_poisson_log_likelihood_matches_scipy(x64):
    rng = np.random.default_rng(6)
    expected = rng.uniform(0.0, 20.0, size=(3, 5, 6))
    expected[0, 0, 0] = 0.0
    counts = rng.poisson(expected)
    counts[0, 0, 0] = 0
    reference = stats.poisson.logpmf(counts, expected)
    ours = poisson_log_likelihood(jnp.asarray(counts), jnp.asarray(expected))
    np.testing.assert_allclose(ours, reference.sum(axis=(1, 2)), rtol=1e-12)
    mask = rng.random((5, 6)) > 0.3
    masked = poisson_log_likelihood(jnp.asarray(counts), jnp.asarray(expected), jnp.asarray(mask))
    np.testing.assert_allclose(masked, (reference * mask).sum(axis=(1, 2)), rtol=1e-12)
    counts[1, 2, 3] = 4
    expected[1, 2, 3] = 0.0  # an impossible count, masked out or not
    assert poisson_log_likelihood(jnp.asarray(counts), jnp.asarray(expected))[1] == -np.inf
    mask[2, 3] = False
    assert np.isfinite(poisson_log_likelihood(jnp.asarray(counts), jnp.asarray(expected), jnp.asarray(mask))[1])


def test_sampled_counts_have_poisson_mean_and_variance():
    means = jnp.asarray(np.geomspace(0.05, 40.0, 24).reshape(4, 6))
    n = 4000
    key, stacked = jax.random.key(7), jnp.broadcast_to(means, (n, 4, 6))
    samples = np.asarray(sample_photon_counts(key, stacked))
    np.testing.assert_array_equal(sample_photon_counts(key, stacked), samples)  # explicit keys: reproducible
    assert np.issubdtype(samples.dtype, np.integer) and samples.min() >= 0
    means = np.asarray(means)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - means), 5 * np.sqrt(means / n))
    variance_error = np.sqrt((means + 2 * means**2) / n)  # std of the sample variance (μ₄ = λ + 3λ²)
    np.testing.assert_array_less(np.abs(samples.var(axis=0) - means), 5 * variance_error)


def test_likelihood_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(9)
    positions = rng.normal(scale=5.0, size=(12, 3))
    numbers = rng.choice([1, 6, 7, 8, 16], size=12)
    geometry = make_detector_geometry((12, 12), 2.0, 60.0, wavelength_in_angstroms=1.5)
    model = make_diffraction_model(numbers, geometry, atoms_per_chunk=5)
    rotation = quaternion_to_matrix(jnp.array([0.8, 0.2, 0.5, -0.1]))
    fluence, background = 5.0e9, 0.05
    counts = jnp.asarray(rng.poisson(np.asarray(model.expected_photons(jnp.asarray(positions), rotation, fluence, background))))
    assert int(counts.sum()) > 100

    def log_likelihood(r):
        return poisson_log_likelihood(counts, model.expected_photons(r, rotation, fluence, background))

    gradient = np.asarray(jax.jit(jax.grad(log_likelihood))(jnp.asarray(positions)))
    log_likelihood = jax.jit(log_likelihood)
    step = 1e-6
    directions = [np.eye(36)[i].reshape(12, 3) for i in (0, 7, 17, 35)]  # a few coordinates, then random directions
    directions += list(rng.normal(size=(3, 12, 3)))
    for direction in directions:
        numeric = (
            float(log_likelihood(jnp.asarray(positions + step * direction)))
            - float(log_likelihood(jnp.asarray(positions - step * direction)))
        ) / (2 * step)
        assert np.sum(gradient * direction) == pytest.approx(numeric, rel=1e-5, abs=1e-6 * np.abs(gradient).max())


# ---------------------------------------------------------------- skopi


def test_agrees_with_skopi(adk_atoms):
    """skopi (LCLS's SPI simulator: numba, Waasmaier-Kirfel form factors) for the same geometry,
    beam and orientation: its pixel q, polarization, solid angle and photon pattern."""
    pytest.importorskip("skopi")
    from skopi.beam import Beam
    from skopi.detector import SimpleSquareDetector
    from skopi.diffraction import calculate_molecular_form_factor_square
    from skopi.particle import Particle

    positions, numbers = adk_atoms
    order = np.argsort(numbers[:500], kind="stable")  # skopi expects atoms grouped by element
    positions, numbers = positions[:500][order], numbers[:500][order]
    n_pixels, pixel_in_metres, distance_in_metres, wavelength_in_metres = 48, 1.5e-3, 0.1, 2.0e-10
    photons, focus_radius_in_metres = 1.0e12, 1.0e-7
    beam = Beam(wavelength=wavelength_in_metres, fluence=photons, focus_radius=focus_radius_in_metres)
    detector = SimpleSquareDetector(n_pixels, n_pixels * pixel_in_metres, distance_in_metres, beam=beam)
    quaternion = np.array([0.7, -0.3, 0.5, 0.4])
    quaternion /= np.linalg.norm(quaternion)
    particle = Particle()
    symbols = {1: "H", 6: "C", 7: "N", 8: "O", 16: "S"}
    particle.create_from_atoms([[symbols[int(z)], tuple(r)] for z, r in zip(numbers, positions)])
    particle.rotate(quaternion)
    s = np.asarray(detector.pixel_position_reciprocal).reshape(-1, 3)  # 1/m, cycles
    skopi_intensity = np.asarray(
        calculate_molecular_form_factor_square(particle, np.linalg.norm(s, axis=1) * 1e-10 / 2, s)
    ).reshape(n_pixels, n_pixels)
    skopi_photons = np.asarray(detector.linear_correction)[0] * skopi_intensity

    geometry = make_detector_geometry(
        (n_pixels, n_pixels),
        pixel_in_metres * 1e3,
        distance_in_metres * 1e3,
        wavelength_in_angstroms=wavelength_in_metres * 1e10,
        beam_centre_in_pixels=((n_pixels - 1) / 2, (n_pixels - 1) / 2),  # skopi's square is centred on the beam
    )
    pixels = pixel_geometry(geometry)
    np.testing.assert_allclose(pixels.q_in_inverse_angstroms, s.reshape(n_pixels, n_pixels, 3) * 1e-10, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(pixels.polarization_factor, np.asarray(detector.polarization_correction)[0], rtol=1e-6)
    np.testing.assert_allclose(pixels.solid_angle_in_steradians, np.asarray(detector.solid_angle_per_pixel)[0], rtol=1e-5)
    fluence = photons / (beam.get_focus_area() * 1e20)  # photons / Å²
    model = make_diffraction_model(numbers, geometry)
    ours = np.asarray(model.expected_photons(jnp.asarray(positions), quaternion_to_matrix(jnp.asarray(quaternion)), fluence))
    correlation = np.corrcoef(ours.ravel(), skopi_photons.ravel())[0, 1]
    print(f"correlation with skopi: {correlation:.6f}, total photons ours / skopi: {ours.sum() / skopi_photons.sum():.5f}")
    assert correlation >= 0.99
    assert ours.sum() == pytest.approx(skopi_photons.sum(), rel=0.01)
    # the orientation matters: the other handedness of the same rotation (A.T) gives a different pattern
    transposed = np.asarray(model.expected_photons(jnp.asarray(positions), quaternion_to_matrix(jnp.asarray(quaternion)).T, fluence))
    assert np.corrcoef(transposed.ravel(), skopi_photons.ravel())[0, 1] < correlation - 0.01
