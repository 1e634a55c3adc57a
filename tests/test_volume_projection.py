"""Fourier-slice projection of maps and the reference reconstruction (GitHub issue 16).

The references are independent of the code under test: the analytic projections and transforms
of anisotropic 3D Gaussians (a Gaussian's projection along z is the 2D Gaussian with the marginal
mean and covariance of the rotated one), plain numpy sums, `A @ r` from
`atomicspi.conventions`, central finite differences, a full-grid numpy FSC, the standard CTF
formula, and mrcfile.
"""

import math

import jax
import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest
from _gaussian_blobs import GaussianBlobs, coordinates, gaussian

from atomicspi._errors import InputError
from atomicspi.conventions import euler_angles_to_matrix, sample_uniform_rotations
from atomicspi.microscope import project_volume, project_volume_fourier, slice_field, slice_frequencies, volume_spectrum
from atomicspi.products import backproject, fourier_shell_correlation, resolution_at, write_map

BOX = 32
VOXEL = 2.0  # Å


@pytest.fixture(scope="module")
def blobs():
    return GaussianBlobs(BOX, VOXEL)


@pytest.fixture(scope="module")
def random_rotations():
    return np.asarray(sample_uniform_rotations(jax.random.key(1), 6), dtype=np.float64)


def _relative_error(estimate, reference):
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def _correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _project_many(density, rotations, **options):
    spectrum = volume_spectrum(jnp.asarray(density, jnp.float32), VOXEL, **options)
    project = jax.jit(jax.vmap(lambda a: jnp.fft.irfft2(spectrum.slice(a), s=(BOX, BOX))))
    return np.asarray(project(jnp.asarray(rotations, jnp.float32)), dtype=np.float64)


def test_slices_match_the_analytic_projections_of_gaussians(blobs, random_rotations):
    references = [blobs.projection(a) for a in random_rotations]
    errors = {}
    for oversampling in (2.0, 4.0):
        images = _project_many(blobs.density, random_rotations, oversampling=oversampling)
        errors[oversampling] = [_relative_error(i, r) for i, r in zip(images, references)]
        correlations = [_correlation(i, r) for i, r in zip(images, references)]
        assert min(correlations) >= 0.999, (oversampling, correlations)
    # measured (D = 32): 1.2-1.4 % at oversampling 2, 0.3 % at 4 (the error falls as 1/oversampling²)
    assert max(errors[2.0]) <= 0.02, errors
    assert max(errors[4.0]) <= 0.006, errors
    assert np.mean(errors[4.0]) < 0.5 * np.mean(errors[2.0]), errors
    # k = 0 is always on a grid node: without the gridding correction the total is exact, p Σ V
    totals = _project_many(blobs.density, random_rotations, gridding_correction=False).sum(axis=(1, 2))
    np.testing.assert_allclose(totals, VOXEL * blobs.density.sum(), rtol=1e-5)
    # the one-shot function is the same slice
    one_shot = jax.jit(project_volume, static_argnums=2)
    single = one_shot(jnp.asarray(blobs.density, jnp.float32), jnp.asarray(random_rotations[0], jnp.float32), VOXEL)
    np.testing.assert_allclose(single, _project_many(blobs.density, random_rotations[:1])[0], atol=1e-6 * np.abs(single).max())


def test_slicing_the_analytic_transform_gives_the_analytic_projection(blobs, random_rotations):
    for a in random_rotations[:3]:
        fourier = slice_field(blobs.transform, jnp.asarray(a, jnp.float32), BOX, VOXEL)
        image = np.asarray(jnp.fft.irfft2(fourier, s=(BOX, BOX)))
        assert _relative_error(image, blobs.projection(a)) < 1e-4  # measured ≤ 3·10⁻⁶ (float32)
        # the layout is exactly the rfft2 of a real image (self-conjugate columns made Hermitian)
        np.testing.assert_allclose(np.fft.rfft2(image), fourier, atol=1e-5 * np.abs(fourier).max())
    frequencies = slice_frequencies(jnp.asarray(random_rotations[0]), BOX, VOXEL)
    planar = np.stack(np.meshgrid(np.fft.rfftfreq(BOX, VOXEL), np.fft.fftfreq(BOX, VOXEL)), axis=-1)  # (k_x, k_y)
    expected = planar[..., 0:1] * random_rotations[0][0] + planar[..., 1:2] * random_rotations[0][1]
    np.testing.assert_allclose(frequencies, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(frequencies, axis=-1), np.linalg.norm(planar, axis=-1), atol=1e-6)


def test_the_identity_slice_is_the_sum_along_z(blobs):
    density = jnp.asarray(blobs.density, jnp.float32)
    image = np.asarray(project_volume(density, jnp.eye(3), VOXEL, gridding_correction=False))
    expected = VOXEL * blobs.density.sum(axis=0)  # ∫ dz = voxel size × Σ over z
    assert _relative_error(image, expected) < 1e-5
    # and both are the analytic projection (the map is sampled finely enough)
    assert _relative_error(expected, blobs.projection(np.eye(3))) < 1e-4
    fourier = project_volume_fourier(density, jnp.eye(3), VOXEL, gridding_correction=False)
    np.testing.assert_allclose(fourier, np.fft.rfft2(expected), atol=1e-5 * np.abs(fourier).max())


def test_a_blob_goes_where_the_rotation_puts_it():
    offset = 6
    points = coordinates(BOX, VOXEL, 3)
    position = np.array([offset * VOXEL, 0.0, 0.0])  # index D // 2 + 6 along x
    density = gaussian(points, position, np.eye(3) * (1.2 * VOXEL) ** 2)
    assert np.unravel_index(np.argmax(density), density.shape) == (BOX // 2, BOX // 2, BOX // 2 + offset)
    pixels = coordinates(BOX, VOXEL, 2)
    for angles in ([90.0, 0.0, 0.0], [0.0, 0.0, 90.0], [0.0, 90.0, 0.0], [30.0, 50.0, 70.0]):
        a = np.asarray(euler_angles_to_matrix(np.array(angles)), dtype=np.float64)
        image = np.asarray(
            project_volume(jnp.asarray(density, jnp.float32), jnp.asarray(a, jnp.float32), VOXEL, oversampling=4.0)
        )
        expected = (a @ position)[:2]  # (x, y) in Å
        nearest = tuple(np.rint(expected[::-1] / VOXEL).astype(int) + BOX // 2)  # (row, column)
        assert np.unravel_index(np.argmax(image), image.shape) == nearest, angles
        # measured: within 0.04 Å at oversampling 4 (0.5 Å at 2, where interpolation shifts the total)
        centroid = np.einsum("ij,ijk->k", image, pixels) / image.sum()
        np.testing.assert_allclose(centroid, expected, atol=0.1, err_msg=str(angles))
    # rot = 90°: A = Rz(90°) takes +x to -y (RELION's Rz rotates the frame)
    a = np.asarray(euler_angles_to_matrix(np.array([90.0, 0.0, 0.0])))
    np.testing.assert_allclose(a @ [1.0, 0.0, 0.0], [0.0, -1.0, 0.0], atol=1e-6)


def test_the_gradient_with_respect_to_the_map_matches_finite_differences(x64):
    box = 8
    rng = np.random.default_rng(3)
    density = rng.normal(size=(box, box, box))
    rotation = jnp.asarray(euler_angles_to_matrix(np.array([20.0, 65.0, -40.0])))
    weights = rng.normal(size=(box, box))

    @jax.jit
    def loss(volume):
        return jnp.sum(weights * project_volume(volume, rotation, 1.5)) + 0.1 * jnp.sum(
            jnp.abs(project_volume_fourier(volume, rotation, 1.5)) ** 2
        )

    gradient = np.asarray(jax.grad(loss)(jnp.asarray(density)))
    step = 1e-5
    for index in [(4, 4, 4), (2, 5, 3), (0, 7, 1), (6, 1, 6)]:
        plus, minus = density.copy(), density.copy()
        plus[index] += step
        minus[index] -= step
        difference = (float(loss(jnp.asarray(plus))) - float(loss(jnp.asarray(minus)))) / (2 * step)
        assert gradient[index] == pytest.approx(difference, rel=1e-6, abs=1e-8), index
    # vmapping over rotations is the loop
    rotations = jnp.asarray(sample_uniform_rotations(jax.random.key(4), 3))
    project = jax.jit(lambda a: project_volume(jnp.asarray(density), a, 1.5))
    batched = jax.jit(jax.vmap(project))(rotations)
    for a, image in zip(rotations, batched):
        np.testing.assert_allclose(image, project(a), atol=1e-10)


def _ctf(frequencies, defocus_in_angstroms, *, voltage_in_volts=300e3, cs_in_angstroms=2.7e7, amplitude_contrast=0.1):
    """The standard CTF `-(√(1 - A²) sin χ + A cos χ)`, `χ = π λ Δf k² - (π / 2) Cs λ³ k⁴`."""
    wavelength = 12.2643 / math.sqrt(voltage_in_volts * (1 + 0.978466e-6 * voltage_in_volts))
    k_squared = np.sum(frequencies**2, axis=-1)
    chi = np.pi * wavelength * defocus_in_angstroms * k_squared - 0.5 * np.pi * cs_in_angstroms * wavelength**3 * k_squared**2
    return -(math.sqrt(1 - amplitude_contrast**2) * np.sin(chi) + amplitude_contrast * np.cos(chi))


@pytest.fixture(scope="module")
def projections(blobs):
    rotations = np.asarray(sample_uniform_rotations(jax.random.key(2), 300), dtype=np.float64)
    return rotations, _project_many(blobs.density, rotations)


def test_backprojection_recovers_the_map(blobs, projections):
    rotations, images = projections
    reconstruction = backproject(images, rotations, VOXEL)
    frequencies, fsc = fourier_shell_correlation(reconstruction, blobs.density, VOXEL)
    shells = np.arange(len(fsc))
    # measured: FSC ≥ 0.99 up to shell 15 of 16, 0.93 at Nyquist
    assert np.all(fsc[shells <= 13] >= 0.98), np.round(fsc, 3)
    assert fsc[-1] >= 0.8, np.round(fsc, 3)
    assert resolution_at(frequencies, fsc, 0.5) < 1 / (0.85 * frequencies[-1])
    assert _correlation(reconstruction, blobs.density) > 0.995


def test_backprojection_with_ctfs(blobs, projections):
    rotations, images = projections
    rng = np.random.default_rng(5)
    planar = np.stack(np.meshgrid(np.fft.rfftfreq(BOX, VOXEL), np.fft.fftfreq(BOX, VOXEL)), axis=-1)
    ctfs = np.stack([_ctf(planar, defocus) for defocus in rng.uniform(1500.0, 5000.0, len(images))])
    observed = np.fft.irfft2(np.fft.rfft2(images) * ctfs, s=(BOX, BOX))
    reconstruction = backproject(observed, rotations, VOXEL, ctfs=ctfs)
    frequencies, fsc = fourier_shell_correlation(reconstruction, blobs.density, VOXEL)
    shells = np.arange(len(fsc))
    # measured: FSC ≥ 0.99 up to shell 15 of 16, 0.92 at Nyquist
    assert np.all(fsc[shells <= 13] >= 0.98), np.round(fsc, 3)
    # the CTFs matter: ignoring them inverts the low frequencies and loses the rest
    _, ignored = fourier_shell_correlation(backproject(observed, rotations, VOXEL), blobs.density, VOXEL)
    assert np.all(ignored[1:6] < -0.9) and np.mean(np.abs(ignored[9:14])) < 0.9, np.round(ignored, 3)


def _full_grid_fsc(a, b):
    """FSC with numpy's full `fftn` and shells `round(|q|)`: an independent reference."""
    box = a.shape[0]
    transform_a, transform_b = np.fft.fftn(a), np.fft.fftn(b)
    q = np.fft.fftfreq(box) * box
    shell = np.rint(np.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + q[None, None, :] ** 2)).astype(int)
    fsc, counts = [], []
    for s in range(box // 2 + 1):
        inside = shell == s
        cross = np.sum(transform_a[inside] * np.conj(transform_b[inside])).real
        norm = np.sqrt(np.sum(np.abs(transform_a[inside]) ** 2) * np.sum(np.abs(transform_b[inside]) ** 2))
        fsc.append(cross / norm)
        counts.append(int(inside.sum()))
    return np.array(fsc), np.array(counts)


def test_fourier_shell_correlation():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, BOX, BOX, BOX))
    frequencies, fsc = fourier_shell_correlation(a, a, VOXEL)
    np.testing.assert_allclose(frequencies, np.arange(BOX // 2 + 1) / (BOX * VOXEL))
    np.testing.assert_allclose(fsc, 1.0, atol=1e-12)
    np.testing.assert_allclose(fourier_shell_correlation(a, -3.0 * a, VOXEL)[1], -1.0, atol=1e-12)
    _, independent = fourier_shell_correlation(a, b, VOXEL)
    reference, counts = _full_grid_fsc(a, b)
    np.testing.assert_allclose(independent, reference, atol=1e-12)
    # independent noise: FSC ≈ 0 with standard deviation 1/√(voxels in the shell)
    normalised = independent[1:] * np.sqrt(counts[1:])
    assert np.all(np.abs(normalised) <= 3.0), np.round(normalised, 2)
    assert 0.5 < np.std(normalised) < 1.5, np.std(normalised)
    # a map and a noisy copy: FSC = SNR / (1 + SNR) per shell for white signal and noise
    _, noisy = fourier_shell_correlation(a, a + b, VOXEL)
    assert np.mean(noisy[2:]) == pytest.approx(1 / math.sqrt(2), abs=0.02)


def test_resolution_at_interpolates_the_crossing():
    frequencies = np.linspace(0.0, 0.25, 26)  # 1/Å, Nyquist at 4 Å
    fsc = 1.0 - frequencies / 0.2  # linear: crosses t at f = 0.2 (1 - t)
    for threshold in (0.5, 0.143):
        assert resolution_at(frequencies, fsc, threshold) == pytest.approx(1 / (0.2 * (1 - threshold)), rel=1e-12)
    # between two shells of a non-linear curve: linear interpolation between them; the first crossing counts
    curve = np.array([1.0, 0.9, 0.6, 0.3, 0.7, 0.1])
    shells = np.arange(6) * 0.05
    expected = 0.10 + (0.5 - 0.6) / (0.3 - 0.6) * 0.05
    assert resolution_at(shells, curve, 0.5) == pytest.approx(1 / expected, rel=1e-12)
    assert resolution_at(frequencies, np.ones(26), 0.143) == pytest.approx(4.0)  # never below: Nyquist
    assert resolution_at(frequencies, np.zeros(26), 0.143) == math.inf


def test_write_map(tmp_path):
    density = np.random.default_rng(8).normal(size=(BOX, BOX, BOX))
    path = write_map(tmp_path / "map.mrc", density, 1.37)
    with mrcfile.open(path) as handle:
        assert handle.is_volume()
        np.testing.assert_array_equal(handle.data, density.astype(np.float32))
        for axis in ("x", "y", "z"):
            assert float(handle.voxel_size[axis]) == pytest.approx(1.37)
            assert float(handle.header.origin[axis]) == 0.0
        assert (int(handle.header.nxstart), int(handle.header.nystart), int(handle.header.nzstart)) == (0, 0, 0)
        assert (int(handle.header.nx), int(handle.header.ny), int(handle.header.nz)) == (BOX, BOX, BOX)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="density"):
        volume_spectrum(np.zeros((8, 8, 6)), 1.0)
    with pytest.raises(InputError, match="oversampling"):
        volume_spectrum(np.zeros((8, 8, 8)), 1.0, oversampling=0.5)
    with pytest.raises(InputError, match="rotations"):
        backproject(np.zeros((3, 8, 8)), np.zeros((2, 3, 3)), 1.0)
    with pytest.raises(InputError, match="maps"):
        fourier_shell_correlation(np.zeros((8, 8, 8)), np.zeros((6, 6, 6)), 1.0)
