"""Global pose search (`atomicspi.inference.search_poses`) and `poses: search` through the pipeline.

References: the image model itself (central slices of the structure's 3D transform against its
rendered images), simulated particles whose true poses are known, Haar-uniform random rotations
for the grid's covering radius, and RELION's star conventions read back by atomicspi (and by
cryoDRGN's parser where it is installed)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from atomicspi.inference import make_fourier_volume, rotation_grid, search_poses  # noqa: E402
from atomicspi.microscope import (  # noqa: E402
    CTFParameters,
    compute_ctf,
    euler_angles_to_matrix,
    geodesic_distance_in_degrees,
    make_image_model,
    sample_uniform_rotations,
)


@pytest.fixture(scope="module")
def calpha_closed(example_structure_path):
    from atomicspi.structure import load_structure

    closed = load_structure(example_structure_path).calpha()
    return closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))


def _simulated(structure, n, box_size, pixel_size, snr, seed=0):
    from atomicspi._simulation import simulate_particles

    positions = np.broadcast_to(structure.positions_in_angstroms, (n, *structure.positions_in_angstroms.shape))
    return simulate_particles(structure, positions, box_size, pixel_size, snr, seed=seed, max_shift_in_angstroms=3.0)


def _errors(result, particles):
    angles = np.asarray(geodesic_distance_in_degrees(jnp.asarray(result.rotations), jnp.asarray(particles.rotations)))
    shifts = np.linalg.norm(result.shifts_in_angstroms - particles.shifts_in_angstroms, axis=1)
    return angles, shifts


def test_slices_of_the_fourier_volume_are_the_image_models_images(calpha_closed):
    """CTF × slice × shift phase equals the `rfft2` of the image model's image within the band, at
    arbitrary poses, within the trilinear interpolation's error (≈ 1 %). The image model is its
    Fourier method without aliases (`alias_reach=0.5`): the slices hold the transform itself, while
    pixel-sampled images of Cα beads (B ≈ 50 Å²) at 3 Å/px also hold aliases beyond Nyquist (5 %)."""
    from atomicspi.inference._pose_search import half_plane_band

    box_size, pixel = 32, 3.0
    image_model = make_image_model(
        calpha_closed.atomic_numbers, calpha_closed.b_factors_in_angstroms_squared, box_size, pixel, method="fourier",
        fourier_options={"alias_reach": 0.5},
    )
    volume = make_fourier_volume(image_model, calpha_closed.positions_in_angstroms, 8)
    band, _ = half_plane_band(8)
    frequencies = band / (box_size * pixel)
    ctf = CTFParameters(*(jnp.float32(v) for v in (12000.0, 11000.0, 40.0, 300.0, 2.7, 0.1, 0.0)))
    transfer = np.asarray(compute_ctf(jnp.asarray(frequencies, dtype=jnp.float32), ctf))
    rng = np.random.default_rng(0)
    for _ in range(3):
        rotation = euler_angles_to_matrix(jnp.asarray(rng.uniform([0, 0, 0], [360, 180, 360]), dtype=jnp.float32))
        shift = rng.uniform(-4.0, 4.0, 2)
        image = image_model(jnp.asarray(calpha_closed.positions_in_angstroms, jnp.float32), rotation, jnp.asarray(shift, jnp.float32), ctf)
        measured = np.fft.rfft2(np.asarray(image, dtype=np.float64))[np.mod(band[:, 1], box_size), band[:, 0]]
        predicted = transfer * np.asarray(volume.slice(rotation, jnp.asarray(band))) * np.exp(-2j * np.pi * frequencies @ shift)
        assert np.linalg.norm(predicted - measured) / np.linalg.norm(measured) < 0.02


def test_rotation_grid_covers_so3():
    """Every Haar-random rotation is within 13° of the 4,608-rotation grid (its spacing ≈ 15°),
    and the grid is made of proper rotations."""
    grid = rotation_grid(192, 24)
    assert grid.shape == (4608, 3, 3)
    np.testing.assert_allclose(np.linalg.det(grid), 1.0, atol=1e-5)
    random = sample_uniform_rotations(jax.random.key(1), 300)
    nearest = jax.vmap(lambda rotation: jnp.min(geodesic_distance_in_degrees(jnp.asarray(grid), rotation)))(random)
    assert float(jnp.max(nearest)) < 13.0
    assert 5.0 < float(jnp.median(nearest)) < 9.0


@pytest.mark.parametrize("snr, median_degrees, worst_degrees", [(1e6, 1.0, 2.0), (1.0, 3.0, 10.0)])
def test_search_finds_known_poses(calpha_closed, snr, median_degrees, worst_degrees):
    """From uniform random poses and shifts up to 3 Å: noiseless images give their poses to the
    search's final step; noisy ones (SNR 1, 32² at 3 Å/px, Cα) within a few degrees."""
    box_size, pixel = 32, 3.0
    particles = _simulated(calpha_closed, 16, box_size, pixel, snr, seed=2)
    image_model = make_image_model(calpha_closed.atomic_numbers, calpha_closed.b_factors_in_angstroms_squared, box_size, pixel)
    volume = make_fourier_volume(image_model, calpha_closed.positions_in_angstroms, 12)
    ctf = CTFParameters(**{name: jnp.asarray(values, jnp.float32) for name, values in particles.ctf.items()})
    result = search_poses(volume, particles.images, ctf, 1.0, max_shift_in_angstroms=6.0)
    angles, shifts = _errors(result, particles)
    assert np.median(angles) < median_degrees and np.max(angles) < worst_degrees
    assert np.median(shifts) < 0.5
    assert result.hypothesis_rotations.shape[:2] == result.hypothesis_log_weights.shape
    np.testing.assert_allclose(np.exp(result.hypothesis_log_weights).sum(axis=1), 1.0, rtol=1e-4)
    assert np.all(result.contrast > 0)


def test_pose_summaries_of_known_draws():
    """The mean of draws symmetric about a rotation is that rotation; the spread is the quantile
    of the draws' angles from it; shifts' mean and standard deviation are numpy's."""
    from atomicspi.conventions import axis_angle_to_matrix
    from atomicspi.products import pose_draws, pose_summaries

    centre = np.asarray(euler_angles_to_matrix(jnp.asarray([[30.0, 60.0, 90.0]])), dtype=np.float64)
    axis = np.array([0.0, 0.0, 1.0])
    angles = np.radians([-4.0, -2.0, 2.0, 4.0, -1.0, 1.0])
    corrections = (angles[:, None] * axis)[None]
    shifts = np.random.default_rng(0).normal(size=(1, 6, 2))
    rotations, shift_draws = pose_draws(centre, np.zeros((1, 2)), corrections, shifts)
    np.testing.assert_allclose(rotations[0, 0], np.asarray(axis_angle_to_matrix(corrections[0, 0])) @ centre[0], atol=1e-6)
    summary = pose_summaries(rotations, shift_draws, level=0.5)
    assert float(geodesic_distance_in_degrees(jnp.asarray(summary.rotations[0]), jnp.asarray(centre[0]))) < 0.05
    np.testing.assert_allclose(summary.angular_spread_in_degrees[0], np.quantile(np.abs(np.degrees(angles)), 0.5), atol=0.05)
    np.testing.assert_allclose(summary.shifts_in_angstroms[0], shifts[0].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(summary.shift_standard_deviation_in_angstroms[0], shifts[0].std(axis=0, ddof=1), atol=1e-12)


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, calpha_closed):
    """`poses: search` on a star file without angles or origins (homogeneous, 24 Cα particles)."""
    import starfile

    from atomicspi._simulation import write_simulated_dataset
    from atomicspi.api import run_inference

    folder = tmp_path_factory.mktemp("searched")
    particles = _simulated(calpha_closed, 24, 32, 3.0, 1.0, seed=3)
    yaml_path = write_simulated_dataset(
        folder, calpha_closed, particles, model="homogeneous",
        config_overrides={"poses": "search", "num_steps": 150, "batch_size": 8, "samples_per_particle": 6},
    )
    tables = starfile.read(folder / "particles.star")
    tables["particles"] = tables["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    )
    starfile.write(tables, folder / "particles.star", overwrite=True)
    return run_inference(yaml_path, progress=False), particles


def test_poses_search_writes_poses_that_read_back(searched_run):
    """The written `particles.star` reads back with atomicspi: its poses are the posterior's mean
    poses (`posterior.nc`'s `pose_summary`) and near the truth."""
    from atomicspi.api import load_posterior
    from atomicspi.io import load_particles

    output, particles = searched_run
    back = load_particles(output / "particles.star")
    summary = load_posterior(output).pose_summary
    between = geodesic_distance_in_degrees(jnp.asarray(back.rotations), jnp.asarray(summary.rotation.values))
    assert float(jnp.max(between)) < 0.01
    np.testing.assert_allclose(back.shifts_in_angstroms, summary.shift_in_angstroms.values, atol=1e-4)
    angles = np.asarray(geodesic_distance_in_degrees(jnp.asarray(back.rotations), jnp.asarray(particles.rotations)))
    shifts = np.linalg.norm(back.shifts_in_angstroms - particles.shifts_in_angstroms, axis=1)
    assert np.median(angles) < 3.0 and np.median(shifts) < 0.5
    spread = summary.angular_spread_in_degrees.values
    assert np.all(spread > 0) and summary.angular_spread_in_degrees.attrs["level"] == 0.9


def _cryodrgn_command():
    """cryoDRGN's command line: on the PATH, or in bench/.venv-cryodrgn (`bench/peers_setup.sh`)."""
    import pathlib
    import shutil

    found = shutil.which("cryodrgn")
    local = pathlib.Path(__file__).resolve().parents[1] / "bench" / ".venv-cryodrgn" / "bin" / "cryodrgn"
    return found or (str(local) if local.is_file() else None)


def test_poses_search_star_reads_with_cryodrgn(searched_run, tmp_path):
    """cryoDRGN's `parse_pose_star` reads the written `particles.star` into a pose pickle that,
    read back by atomicspi, gives the star's own rotations and shifts."""
    import subprocess

    from atomicspi.io import load_particles

    command = _cryodrgn_command()
    if command is None:
        pytest.skip("cryoDRGN is not installed (bench/peers_setup.sh)")
    output, _ = searched_run
    star = output / "particles.star"
    pickle_path = tmp_path / "poses.pkl"
    subprocess.run([command, "parse_pose_star", str(star), "-o", str(pickle_path), "-D", "32", "--Apix", "3.0"],
                   check=True, capture_output=True)
    ours = load_particles(star)
    theirs = load_particles(star, poses=pickle_path)
    between = geodesic_distance_in_degrees(jnp.asarray(ours.rotations), jnp.asarray(theirs.rotations))
    assert float(jnp.max(between)) < 0.01
    np.testing.assert_allclose(theirs.shifts_in_angstroms, ours.shifts_in_angstroms, atol=1e-3)
