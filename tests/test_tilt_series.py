"""Tilt-series rendering, simulation in RELION 5 format and reading the 2D stacks back (issue 17).

References, all built here independently of the code under test: the single-particle `ImageModel`
(the image of one pose and one CTF, tested on its own in test_microscope_projection.py), RELION 5's
view rotation `Rz(zrot) Ry(ytilt) Rx(xtilt)` built with scipy (as `Tomogram::setProjectionMatrix`),
the defocus offset `hand · (z cos θ - x sin θ)` of a stage tilt (RELION's `Tomogram::getCtf`), the
exposure filter of Grant & Grigorieff (2015) evaluated in numpy, finite differences, Hagen et al.'s
(2017) dose-symmetric order written out by hand, and RELION 5's visibility rule
(`Tomogram::getVisibilityMinFramesMaxDose`: the whole box inside the tilt image, pre-exposure at
most `--max_dose`).
"""

import functools
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

import atomicspi.io as io
from atomicspi._tilt_series_simulation import simulate_tilt_series, tilt_scheme, write_tilt_series_dataset
from atomicspi.microscope import (
    CTFParameters,
    make_image_model,
    render_tilt_series,
    render_tilt_series_batch,
    tilt_series_view_rotation,
)
from atomicspi.structure import load_structure


def _view(y_tilt, z_rotation, x_tilt):
    """RELION 5's R_f = Rz(zrot) Ry(ytilt) Rx(xtilt), right-handed (scipy's intrinsic ZYX)."""
    return Rotation.from_euler("ZYX", np.stack([z_rotation, y_tilt, x_tilt], axis=-1), degrees=True).as_matrix()


def _paper_filter(k, exposure):
    """Grant & Grigorieff (2015): exp(-N / (2 N_e(k))), N_e = 0.245 k^-1.665 + 2.81 (300 kV); 1 at k = 0."""
    with np.errstate(divide="ignore"):
        critical = 0.245 * np.abs(k) ** -1.665 + 2.81
    return np.exp(-exposure / (2 * critical))


def _molecule(n_atoms=40, seed=0):
    rng = np.random.default_rng(seed)
    positions = rng.normal(size=(n_atoms, 3)) * np.array([7.0, 5.0, 4.0])
    numbers = rng.choice([6, 7, 8, 16], size=n_atoms)
    return positions, numbers, np.full(n_atoms, 15.0)


_render = jax.jit(render_tilt_series, static_argnames=("voltage_in_kilovolts", "zero_beyond_optimal_exposure"))
_render_batch = jax.jit(render_tilt_series_batch, static_argnames=("voltage_in_kilovolts", "zero_beyond_optimal_exposure"))


@jax.jit
def _single(model, positions, rotation, shift, ctf):
    """The single-particle reference: `ImageModel.__call__` of one pose and one CTF."""
    return model(positions, rotation, shift, ctf)


def _ctf(u, v, **fields):
    return CTFParameters(defocus_u_in_angstroms=u, defocus_v_in_angstroms=v, astigmatism_angle_in_degrees=25.0, **fields)


def test_untilted_unexposed_tilt_on_the_axis_is_the_single_particle_image(x64):
    positions, numbers, b = _molecule()
    rotation = Rotation.random(random_state=1).as_matrix()
    ctf = _ctf(14000.0, 13500.0, scale=0.8)
    for padding in (1.5,):  # the padded path (the tilted test below renders unpadded)
        model = make_image_model(numbers, b, 24, 1.5, padding_factor=padding, method="dense")
        single = np.asarray(_single(model, jnp.asarray(positions), jnp.asarray(rotation), jnp.zeros(2), ctf))
        view = tilt_series_view_rotation(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1))
        # zero height: z = 0 (x and y do not matter at 0°)
        for position in ([0.0, 0.0, 0.0], [250.0, -400.0, 0.0]):
            tilt = _render(
                model, jnp.asarray(positions), jnp.asarray(rotation), jnp.asarray(position), view,
                _ctf(jnp.array([14000.0]), jnp.array([13500.0]), scale=jnp.array([0.8])), jnp.zeros(1), handedness=-1.0,
            )
            assert tilt.shape == (1, 24, 24)
            np.testing.assert_allclose(np.asarray(tilt[0]), single, rtol=0, atol=1e-13 * np.abs(single).max())
        assert np.abs(single).max() > 1.0


@pytest.mark.parametrize("handedness", [1.0, -1.0])
def test_tilted_image_is_the_single_particle_image_of_the_tilted_pose_and_height(x64, handedness):
    positions, numbers, b = _molecule()
    model = make_image_model(numbers, b, 24, 1.5, method="dense")
    rotation = Rotation.random(random_state=2).as_matrix()
    particle = np.array([640.0, -310.0, 180.0])  # x, y, z in the tomogram (Å)
    y_tilt = np.array([-45.0, 0.0, 21.0, 60.0])
    z_rotation = np.array([85.0, 85.0, 84.5, 86.0])
    base_u = np.array([30000.0, 30200.0, 29900.0, 30500.0])
    base_v = base_u - 400.0
    scale = np.cos(np.deg2rad(y_tilt))
    images = _render(
        model, jnp.asarray(positions), jnp.asarray(rotation), jnp.asarray(particle),
        tilt_series_view_rotation(jnp.asarray(y_tilt), jnp.asarray(z_rotation), jnp.zeros(4)),
        _ctf(jnp.asarray(base_u), jnp.asarray(base_v), scale=jnp.asarray(scale)), jnp.zeros(4), handedness=handedness,
    )
    x, _, z = particle
    offsets = handedness * (z * np.cos(np.deg2rad(y_tilt)) - x * np.sin(np.deg2rad(y_tilt)))
    assert np.abs(offsets).max() > 500  # the height term matters
    views = _view(y_tilt, z_rotation, np.zeros(4))
    for f in range(4):
        expected = _single(
            model, jnp.asarray(positions), jnp.asarray(views[f] @ rotation), jnp.zeros(2),
            _ctf(base_u[f] + offsets[f], base_v[f] + offsets[f], scale=scale[f]),
        )
        np.testing.assert_allclose(np.asarray(images[f]), np.asarray(expected), rtol=0, atol=1e-10 * np.abs(expected).max())
        # without the height offset the image differs: the comparison above can fail
        flat = _single(model, jnp.asarray(positions), jnp.asarray(views[f] @ rotation), jnp.zeros(2), _ctf(base_u[f], base_v[f], scale=scale[f]))
        if abs(offsets[f]) > 100:
            assert np.abs(np.asarray(images[f]) - np.asarray(flat)).max() > 1e-3 * np.abs(expected).max()


def test_exposure_filter_scales_fourier_amplitudes(x64):
    positions, numbers, b = _molecule()
    box, pixel = 24, 1.5
    model = make_image_model(numbers, b, box, pixel, method="dense")
    exposure = np.array([0.0, 4.0, 20.0, 60.0])
    images = np.asarray(_render(
        model, jnp.asarray(positions), jnp.asarray(Rotation.random(random_state=3).as_matrix()), jnp.zeros(3),
        tilt_series_view_rotation(jnp.full(4, 30.0), jnp.full(4, 85.0), jnp.zeros(4)),
        _ctf(12000.0, 11800.0), jnp.asarray(exposure),
    ))
    fourier = np.fft.rfft2(images)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(box, pixel), np.fft.rfftfreq(box, pixel), indexing="ij"))
    significant = np.abs(fourier[0]) > 1e-3 * np.abs(fourier[0]).max()
    assert significant.mean() > 0.5
    for f in range(1, 4):
        ratio = np.abs(fourier[f][significant]) / np.abs(fourier[0][significant])
        np.testing.assert_allclose(ratio, _paper_filter(k[significant], exposure[f]), rtol=1e-9)
    assert ratio.min() < 0.1  # 60 e/Å² damps the high frequencies


def test_gradient_matches_finite_differences_and_padding_does_not_leak(x64):
    positions, numbers, b = _molecule(n_atoms=8, seed=4)
    model = make_image_model(numbers, b, 16, 2.0, method="dense")
    rotation = jnp.asarray(Rotation.random(random_state=5).as_matrix())
    particle = jnp.array([300.0, -50.0, 120.0])
    y_tilt = jnp.array([-30.0, 9.0, jnp.nan])
    views = tilt_series_view_rotation(y_tilt, jnp.full(3, 80.0), jnp.zeros(3))  # NaN view in the padding
    ctf = _ctf(jnp.array([15000.0, 15100.0, jnp.nan]), jnp.array([14800.0, 14900.0, jnp.nan]))
    exposure = jnp.array([0.0, 6.0, jnp.nan])
    mask = jnp.array([True, True, False])
    weights = jnp.asarray(np.random.default_rng(6).normal(size=(3, 16, 16)))

    def loss(moved):
        images = render_tilt_series(model, moved, rotation, particle, views, ctf, exposure, mask=mask, handedness=-1.0)
        return jnp.sum(images * weights)

    value_and_gradient = jax.jit(jax.value_and_grad(loss))
    gradient = np.asarray(value_and_gradient(jnp.asarray(positions))[1])
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
    direction = np.random.default_rng(7).normal(size=positions.shape)
    step = 1e-4
    plus = value_and_gradient(jnp.asarray(positions + step * direction))[0]
    minus = value_and_gradient(jnp.asarray(positions - step * direction))[0]
    numeric = (plus - minus) / (2 * step)
    np.testing.assert_allclose(np.sum(gradient * direction), numeric, rtol=1e-6)
    images = _render(model, jnp.asarray(positions), rotation, particle, views, ctf, exposure, mask=mask)
    assert np.all(np.isfinite(np.asarray(images))) and np.all(np.asarray(images[2]) == 0.0)


def test_batch_is_the_particles_rendered_one_by_one(x64):
    positions, numbers, b = _molecule(n_atoms=12, seed=8)
    model = make_image_model(numbers, b, 16, 2.0, method="dense")
    rng = np.random.default_rng(9)
    conformations = positions[None] + rng.normal(size=(2, 12, 3))
    rotations = Rotation.random(2, random_state=10).as_matrix()
    particles = np.array([[100.0, 20.0, -80.0], [-300.0, 0.0, 60.0]])
    views = np.stack([_view(np.array([0.0, 24.0, -24.0]), np.full(3, 85.0), np.zeros(3)),
                      _view(np.array([3.0, -12.0, 0.0]), np.full(3, -95.0), np.zeros(3))])
    defocus = np.array([[20000.0, 20100.0, 19900.0], [25000.0, 25100.0, 0.0]])
    exposure = np.array([[0.0, 3.0, 6.0], [0.0, 3.0, 0.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    batch = _render_batch(
        model, jnp.asarray(conformations), jnp.asarray(rotations), jnp.asarray(particles), jnp.asarray(views),
        _ctf(jnp.asarray(defocus), jnp.asarray(defocus - 100.0), scale=jnp.array([1.0, 0.7])),
        jnp.asarray(exposure), mask=jnp.asarray(mask), handedness=jnp.array([1.0, -1.0]),
    )
    for i, hand in enumerate((1.0, -1.0)):
        count = int(mask[i].sum())
        tilts = [0, 1, 2] if count == 3 else [0, 1, 1]  # unpadded (a real tilt repeated: one shape, one compilation)
        one = _render(
            model, jnp.asarray(conformations[i]), jnp.asarray(rotations[i]), jnp.asarray(particles[i]),
            jnp.asarray(views[i, tilts]), _ctf(jnp.asarray(defocus[i, tilts]), jnp.asarray(defocus[i, tilts] - 100.0),
                                                scale=[1.0, 0.7][i]),
            jnp.asarray(exposure[i, tilts]), handedness=hand,
        )[:count]
        np.testing.assert_allclose(np.asarray(batch[i, :count]), np.asarray(one), rtol=0, atol=1e-10 * np.abs(one).max())
        assert np.all(np.asarray(batch[i, count:]) == 0.0)


# --- simulation, RELION 5 files, reading back -------------------------------------------------------


def test_tilt_schemes():
    angles, exposure = tilt_scheme(60.0, 3.0, "dose-symmetric", 3.0)
    assert len(angles) == 41 and angles[0] == -60.0 and angles[-1] == 60.0
    # Hagen et al. (2017): 0, +3, -3, -6, +6, +9, -9, -12, +12, ... in that order
    first = [0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0, -12.0, 12.0]
    for rank, angle in enumerate(first):
        assert exposure[np.flatnonzero(angles == angle)[0]] == 3.0 * rank
    np.testing.assert_array_equal(np.sort(exposure), 3.0 * np.arange(41))
    angles, exposure = tilt_scheme(30.0, 10.0, "sequential", 2.5)
    np.testing.assert_array_equal(angles, [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0])
    np.testing.assert_array_equal(exposure, 2.5 * np.arange(7))
    with pytest.raises(ValueError):
        tilt_scheme(60.0, 7.0)


BOX, PIXEL, STEP, MAX_DOSE = 24, 4.0, 6.0, 45.0
POSITIONS = np.array([[1940.0, 0.0, 550.0], [0.0, 0.0, 0.0], [-700.0, 900.0, -300.0], [300.0, -1200.0, 250.0], [-1930.0, 40.0, -500.0]])


@pytest.fixture(scope="module")
def calpha(example_structure_path):
    structure = load_structure(example_structure_path).calpha()
    return structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))


@pytest.fixture(scope="module")
def project(tmp_path_factory, calpha):
    """Five noise-free particles in two tomograms (±60° in 6° steps, dose-symmetric, 3 e/Å² per tilt,
    at most 45 e/Å²), two of them near the edges so that they lose tilt images."""
    rng = np.random.default_rng(11)
    conformations = calpha.positions_in_angstroms[None] + 0.5 * rng.normal(size=(5, calpha.n_atoms, 3))
    simulated = simulate_tilt_series(
        calpha, conformations, BOX, PIXEL, None, seed=3, n_tomograms=2, tilt_step_in_degrees=STEP,
        max_dose_in_electrons_per_square_angstrom=MAX_DOSE, particle_positions_in_angstroms=POSITIONS,
        contrast_cosine_power=1.0,
    )
    folder = tmp_path_factory.mktemp("relion5")
    path = write_tilt_series_dataset(folder, calpha, simulated, truth_extra={"marker": np.arange(3)})
    return folder, path, simulated


def _expected_geometry(truth):
    """Per particle, from the truth file: views, visibility, pose and defocus in each tilt image."""
    out = []
    size = np.array([4000.0, 4000.0])  # the default tomogram (Å); the box must lie inside the tilt image
    for i, tomogram in enumerate(truth["tomogram_of_particle"]):
        views = _view(truth["tilt_angles_in_degrees"][tomogram], truth["z_rotations_in_degrees"][tomogram],
                      truth["x_tilts_in_degrees"][tomogram])
        p = truth["particle_positions_in_angstroms"][i]
        projected = views @ p
        visible = np.all(np.abs(projected[:, :2]) <= size / 2 - BOX * PIXEL / 2, axis=1)
        visible &= truth["pre_exposure_in_electrons_per_square_angstrom"][tomogram] <= MAX_DOSE
        angle = np.deg2rad(truth["tilt_angles_in_degrees"][tomogram])
        offset = truth["handedness"][tomogram] * (p[2] * np.cos(angle) - p[0] * np.sin(angle))
        out.append(dict(views=views, visible=visible, offset=offset, tomogram=tomogram,
                        rotations=views @ truth["rotations"][i]))
    return out


def test_simulated_project_reads_back(project, calpha):
    folder, path, simulated = project
    truth = np.load(folder / "truth.npz")
    assert set(truth["marker"]) == {0, 1, 2}
    expected = _expected_geometry(truth)
    visible = np.stack([e["visible"] for e in expected])
    np.testing.assert_array_equal(truth["visible"], visible)
    counts = visible.sum(axis=1)
    assert len(set(counts.tolist())) > 1 and counts.max() < 21  # variable tilt counts; max_dose drops tilts

    particles = io.read_tilt_series_particles(path, folder / "tomograms.star")
    np.testing.assert_array_equal(particles.particle_names, ["TS_01/1", "TS_02/1", "TS_01/2", "TS_02/2", "TS_01/3"])
    np.testing.assert_array_equal(particles.tilt_counts, counts)
    np.testing.assert_allclose(particles.particle_rotations, truth["rotations"], atol=2e-6)
    np.testing.assert_allclose(particles.positions_in_angstroms, POSITIONS, atol=1e-5)
    rows = lambda key: np.concatenate([truth[key][e["tomogram"]][e["visible"]] for e in expected])  # noqa: E731
    np.testing.assert_allclose(particles.rotations, np.concatenate([e["rotations"][e["visible"]] for e in expected]), atol=2e-6)
    np.testing.assert_allclose(particles.tilt_angles_in_degrees, rows("tilt_angles_in_degrees"), atol=1e-9)
    offsets = np.concatenate([e["offset"][e["visible"]] for e in expected])
    assert np.abs(offsets).max() > 1000
    np.testing.assert_allclose(particles.defocus_offset_in_angstroms, offsets, atol=1e-2)
    np.testing.assert_allclose(particles.defocus_u_in_angstroms, rows("defocus_u_in_angstroms") + offsets, atol=1e-2)
    np.testing.assert_allclose(particles.defocus_v_in_angstroms, rows("defocus_v_in_angstroms") + offsets, atol=1e-2)
    np.testing.assert_allclose(particles.ctf_scale, np.cos(np.deg2rad(rows("tilt_angles_in_degrees"))), atol=1e-6)
    # pre-exposure: Hagen's order at 6° steps, 3 e/Å² per tilt
    order = [0, 6, -6, -12, 12, 18, -18, -24, 24, 30, -30, -36, 36, 42, -42, -48, 48, 54, -54, -60, 60]
    dose = {angle: 3.0 * rank for rank, angle in enumerate(order)}
    np.testing.assert_array_equal(particles.pre_exposure_in_electrons_per_square_angstrom,
                                  [dose[round(a)] for a in particles.tilt_angles_in_degrees])
    np.testing.assert_array_equal(particles.voltage_in_kilovolts, 300.0)
    np.testing.assert_array_equal(particles.pixel_size_in_angstroms, PIXEL)

    images = io.read_tilt_series_images(particles)
    assert images.box_size == BOX and images.max_tilts == counts.max()
    np.testing.assert_array_equal(images.pixel_size_in_angstroms, PIXEL)
    stacks, mask = images.read()
    assert stacks.shape == (5, counts.max(), BOX, BOX)
    np.testing.assert_array_equal(mask, np.arange(counts.max())[None] < counts[:, None])
    np.testing.assert_array_equal(stacks[mask], simulated.images[simulated.visible])
    assert np.all(stacks[~mask] == 0.0)
    some, some_mask = images.read([4, 1])
    np.testing.assert_array_equal(some, stacks[[4, 1]])
    np.testing.assert_array_equal(some_mask, mask[[4, 1]])
    mapped = images.particle(2)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, stacks[2, : counts[2]])
    assert images.stack_paths[2] == folder / "Subtomograms" / "TS_01" / "2_stack2d.mrcs"


def test_simulated_images_are_the_single_particle_images(project, calpha):
    """Each visible tilt image is ImageModel's image of pose R_f A and defocus tilt + height, times the
    tilt's contrast cos θ, with the exposure filter applied here in numpy to its Fourier transform."""
    folder, path, simulated = project
    truth = np.load(folder / "truth.npz")
    expected = _expected_geometry(truth)
    model = make_image_model(calpha.atomic_numbers, calpha.b_factors_in_angstroms_squared, BOX, PIXEL)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(BOX, PIXEL), np.fft.rfftfreq(BOX, PIXEL), indexing="ij"))
    particles = io.read_tilt_series_particles(path, folder / "tomograms.star")
    stacks, mask = io.read_tilt_series_images(particles).read()
    render = jax.jit(functools.partial(model, shift_in_angstroms=jnp.zeros(2)))
    checked = 0
    for i in (0, 3):
        e = expected[i]
        t = e["tomogram"]
        for j, f in enumerate(np.flatnonzero(e["visible"])):
            u = truth["defocus_u_in_angstroms"][t, f] + e["offset"][f]
            v = truth["defocus_v_in_angstroms"][t, f] + e["offset"][f]
            ctf = CTFParameters(
                defocus_u_in_angstroms=jnp.float32(u), defocus_v_in_angstroms=jnp.float32(v),
                astigmatism_angle_in_degrees=jnp.float32(truth["astigmatism_angle_in_degrees"][t, f]),
                scale=jnp.float32(np.cos(np.deg2rad(truth["tilt_angles_in_degrees"][t, f]))),
            )
            image = np.asarray(render(jnp.asarray(simulated.positions_in_angstroms[i]),
                                      rotation=jnp.asarray(e["rotations"][f], dtype=jnp.float32), ctf=ctf), dtype=np.float64)
            dose = truth["pre_exposure_in_electrons_per_square_angstrom"][t, f]
            filtered = np.fft.irfft2(np.fft.rfft2(image) * _paper_filter(k, dose), s=(BOX, BOX))
            np.testing.assert_allclose(stacks[i, j], filtered, rtol=0, atol=2e-4 * np.abs(filtered).max())
            checked += 1
    assert checked >= 10


def _copy(project, tmp_path):
    folder, _, _ = project
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _error(call) -> str:
    with pytest.raises(io.InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def _read(folder):
    particles = io.read_tilt_series_particles(folder / "particles.star", folder / "tomograms.star")
    return io.read_tilt_series_images(particles)


def test_bad_stacks_name_file_and_field(project, tmp_path):
    folder = _copy(project, tmp_path)
    stack = folder / "Subtomograms" / "TS_02" / "1_stack2d.mrcs"
    original = io.read_stack_header(stack)
    images = np.asarray(_read(folder).particle(1))

    stack.unlink()
    message = _error(lambda: _read(folder))
    assert "particles.star" in message and "rlnImageName" in message and "TS_02/1" in message and "not found" in message

    io.write_stack(stack, images[:-1], PIXEL)  # one tilt image missing
    message = _error(lambda: _read(folder))
    assert "particles.star" in message and "rlnImageName" in message
    assert f"holds {original.n_images - 1} images" in message and f"{original.n_images} tilt images" in message

    io.write_stack(stack, np.zeros((original.n_images, BOX + 2, BOX + 2)), PIXEL)  # wrong box
    message = _error(lambda: _read(folder))
    assert "particles.star" in message and "rlnImageSize" in message and f"{BOX + 2}×{BOX + 2}" in message

    stack.write_bytes(b"not an mrc file at all" * 10)
    message = _error(lambda: _read(folder))
    assert "particles.star" in message and "rlnImageName" in message and "1_stack2d.mrcs" in message

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about the NaN it is asked to write
        io.write_stack(stack, np.full((original.n_images, BOX, BOX), np.nan), PIXEL)  # NaN found when read
    images_object = _read(folder)
    message = _error(lambda: images_object.read([1]))
    assert "1_stack2d.mrcs" in message and "NaN" in message


def _rewrite(path: pathlib.Path, change):
    blocks = starfile.read(path, always_dict=True)
    change(blocks)
    starfile.write(blocks, path)


def test_bad_particle_files_name_file_and_field(project, tmp_path):
    folder = _copy(project, tmp_path)
    star = folder / "particles.star"
    original = star.read_text()

    def premultiplied(blocks):
        blocks["optics"]["rlnCtfDataAreCtfPremultiplied"] = 1

    def three_d(blocks):
        blocks["optics"]["rlnImageDimensionality"] = 3

    def not_2d_stacks(blocks):
        blocks["general"]["rlnTomoSubTomosAre2DStacks"] = 0

    def no_image_names(blocks):
        blocks["particles"] = blocks["particles"].drop(columns=["rlnImageName"])

    def image_in_a_stack(blocks):
        blocks["particles"].loc[0, "rlnImageName"] = "1@" + blocks["particles"].loc[0, "rlnImageName"]

    cases = [
        (premultiplied, "rlnCtfDataAreCtfPremultiplied"),
        (three_d, "rlnImageDimensionality"),
        (not_2d_stacks, "rlnTomoSubTomosAre2DStacks"),
        (no_image_names, "rlnImageName"),
        (image_in_a_stack, "rlnImageName"),
    ]
    for change, field in cases:
        star.write_text(original)
        _rewrite(star, change)
        message = _error(lambda: _read(folder))
        assert "particles.star" in message and f"field {field}" in message, (field, message)


def test_relion30_rows_are_read_as_padded_tilt_images(project, tmp_path):
    """RELION 3.0-style rows (one per tilt image, `N@stack`, grouped by rlnGroupName) give the same
    padded images as the stacks they point to."""
    folder, _, simulated = project
    star = folder / "relion30.star"
    rows = []
    for i, name in enumerate(["TS_01/1", "TS_02/1"]):
        for j in range(int(simulated.visible[i].sum())):
            rows.append({"rlnImageName": f"{j + 1}@Subtomograms/{name}_stack2d.mrcs", "rlnGroupName": name,
                         "rlnDefocusU": 20000.0, "rlnDefocusV": 20000.0, "rlnDefocusAngle": 0.0, "rlnVoltage": 300.0,
                         "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1, "rlnAngleRot": 0.0,
                         "rlnAngleTilt": 0.0, "rlnAnglePsi": 0.0, "rlnImagePixelSize": PIXEL})
    starfile.write({"particles": pd.DataFrame(rows)}, star)
    particles = io.read_tilt_series_particles(star)
    images = io.read_tilt_series_images(particles)
    stacks, mask = images.read()
    np.testing.assert_array_equal(mask.sum(axis=1), simulated.visible[:2].sum(axis=1))
    np.testing.assert_array_equal(stacks[mask], simulated.images[:2][simulated.visible[:2]])
    np.testing.assert_array_equal(images.particle(1), simulated.images[1][simulated.visible[1]])


def test_command_line_writes_a_tilt_series_project(tmp_path, calpha):
    from atomicspi.simulate import main

    output = tmp_path / "cli"
    reference = tmp_path / "calpha.pdb"
    calpha.save_pdb(reference)
    assert main([str(output), "--structures", str(reference), str(reference),
                 "--n-particles", "2", "--box-size", "12", "--pixel-size", "6", "--snr", "0.5", "--tilt-series",
                 "--n-tomograms", "2", "--tilt-step", "30", "--tilt-order", "sequential", "--dose-per-tilt", "2"]) == 0
    particles = io.read_tilt_series_particles(output / "particles.star", output / "tomograms.star")
    assert np.all((particles.tilt_counts >= 1) & (particles.tilt_counts <= 5))  # random positions may leave the image
    np.testing.assert_array_equal(particles.pre_exposure_in_electrons_per_square_angstrom, 2.0 * particles.tilt_image_indices)
    assert set(particles.tilt_angles_in_degrees) <= {-60.0, -30.0, 0.0, 30.0, 60.0}
    stacks, mask = io.read_tilt_series_images(particles).read()
    assert stacks.shape == (2, particles.tilt_counts.max(), 12, 12) and mask.sum() == particles.tilt_counts.sum()
    assert 1.0 < stacks[mask].var() < 1.7  # unit noise plus a signal of mean variance 0.5
    truth = np.load(output / "truth.npz")
    assert truth["interpolation_fraction"].shape == (2,) and truth["calpha_positions_in_angstroms"].shape[:1] == (2,)
    assert main([str(tmp_path / "bad"), "--structures", str(reference), str(reference), "--n-particles", "1",
                 "--tilt-series", "--beam-tilt", "0.1", "0.2"]) == 2
