"""Readers against what RELION, cryoSPARC and cryoDRGN wrote (shared data), and write → read round trips."""
import pickle
import warnings

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import atomicspi.io as io


@pytest.fixture(scope="module")
def formats(shared_data):
    return shared_data / "formats"


def trusted_pickle(path):
    """cryoDRGN's own test fixtures: trusted files, loaded with plain pickle (never user input)."""
    with open(path, "rb") as file:
        return pickle.load(file)


def reference_images(path):
    """Images as mrcfile reads them (permissive: these files lack the MAP ID)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(path, permissive=True) as handle:
            return np.asarray(handle.data, dtype=np.float32)


def test_relion30_star_matches_cryodrgn(formats):
    with pytest.warns(UserWarning, match="rlnAmplitudeContrast"):
        dataset = io.read_relion_star(formats / "FinalRefinement-OriginalParticles-PfCRT.star")
    rotations, translations = trusted_pickle(formats / "pose.star.pkl")
    ctf = trusted_pickle(formats / "ctf1.pkl")
    box = 300
    assert len(dataset) == len(rotations) == 5
    np.testing.assert_allclose(dataset.rotations, rotations, atol=1e-5)
    # cryoDRGN: translations = rlnOrigin (pixels) / D; ours = −origin in Å.
    np.testing.assert_allclose(dataset.shifts_in_angstroms, -translations * box * 1.035, atol=1e-6)
    assert dataset.pixel_size_in_angstroms == pytest.approx(ctf[0, 1])
    np.testing.assert_allclose(dataset.defocus_u_in_angstroms, ctf[:, 2])
    np.testing.assert_allclose(dataset.defocus_v_in_angstroms, ctf[:, 3])
    np.testing.assert_allclose(dataset.astigmatism_angle_in_degrees, ctf[:, 4], rtol=1e-6)
    np.testing.assert_allclose(dataset.voltage_in_kilovolts, ctf[:, 5])
    np.testing.assert_allclose(dataset.spherical_aberration_in_millimeters, ctf[:, 6])
    np.testing.assert_allclose(dataset.amplitude_contrast_ratio, ctf[:, 7])
    np.testing.assert_allclose(dataset.phase_shift_in_degrees, ctf[:, 8])
    # The stacks named in this file are not shipped: checking them names the file and the field.
    with pytest.raises(io.InputError, match="rlnImageName.*not found"):
        dataset.check_images()


def test_cryosparc_matches_cryodrgn(formats):
    dataset = io.read_cryosparc(formats / "cryosparc_P12_J24_001_particles.cs")
    rotations, translations = trusted_pickle(formats / "pose.cs.pkl")
    table = np.load(formats / "cryosparc_P12_J24_001_particles.cs")
    assert len(dataset) == len(rotations) == len(table)
    np.testing.assert_allclose(dataset.rotations, rotations, atol=1e-5)
    # Independent statement of the relation: A = Rodrigues(pose)ᵀ (scipy's rotation vector).
    expected = Rotation.from_rotvec(table["alignments3D/pose"].astype(np.float64)).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(dataset.rotations, expected, atol=1e-5)
    np.testing.assert_allclose(dataset.shifts_in_angstroms, -translations * 180 * 2.95, atol=1e-4)
    assert dataset.pixel_size_in_angstroms == pytest.approx(2.95)
    assert dataset.box_size == 180
    np.testing.assert_allclose(dataset.defocus_u_in_angstroms, table["ctf/df1_A"])
    np.testing.assert_allclose(dataset.astigmatism_angle_in_degrees, np.rad2deg(table["ctf/df_angle_rad"].astype(np.float64)))


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_empiar_images_load_with_pixel_size(formats, name):
    dataset = io.load_particles(formats / name)
    assert len(dataset) == 7 and dataset.box_size == 320
    # RELION 3.0: rlnDetectorPixelSize 5 µm / rlnMagnification 38168; cryoSPARC stores the same.
    assert dataset.pixel_size_in_angstroms == pytest.approx(5e4 / 38168, rel=1e-6)
    reference = reference_images(formats / "empiar_10076_7.mrc")
    np.testing.assert_array_equal(dataset.images([6, 0, 3]), reference[[6, 0, 3]])
    np.testing.assert_allclose(dataset.defocus_u_in_angstroms[:2], [15301.1, 15303.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_relion31_stacks_load(formats, name):
    dataset = io.load_particles(formats / name)
    assert len(dataset) == 5 and dataset.box_size == 256
    assert dataset.pixel_size_in_angstroms == pytest.approx(2.806)
    assert dataset.voltage_in_kilovolts[0] == 300 and dataset.spherical_aberration_in_millimeters[0] == pytest.approx(0.01)
    assert dict(dataset.optics_groups[0].extra)["rlnMicrographOriginalPixelSize"] == "1.403"
    # First particle: rlnOriginXAngst 0.019324, rlnOriginYAngst -0.64686; angles -102.30296 82.318041 124.706463.
    np.testing.assert_allclose(dataset.shifts_in_angstroms[0], [-0.019324, 0.64686])
    expected = Rotation.from_euler("ZYZ", [-102.30296, 82.318041, 124.706463], degrees=True).as_matrix().T
    np.testing.assert_allclose(dataset.rotations[0], expected, atol=1e-6)
    np.testing.assert_array_equal(dataset.images(), reference_images(formats / "relion31.mrcs"))
    assert "rlnImageOriginalName" in dataset.extra_columns


def test_bare_stack_with_cryodrgn_poses(formats):
    dataset = io.load_particles(formats / "hand.mrcs", poses=formats / "hand_rot_trans.pkl")
    rotations, translations = trusted_pickle(formats / "hand_rot_trans.pkl")
    np.testing.assert_allclose(dataset.rotations, rotations)
    np.testing.assert_allclose(dataset.shifts_in_angstroms, -translations * 64 * 1.0)
    assert dataset.ctf is None


def assert_same_dataset(a, b, image_check=True):
    assert len(a) == len(b)
    assert a.box_size == b.box_size
    assert a.pixel_size_in_angstroms == pytest.approx(b.pixel_size_in_angstroms, rel=1e-6)
    assert (a.ctf is None) == (b.ctf is None)
    if a.ctf is not None:
        for name in io.CTF_FIELDS:
            np.testing.assert_allclose(a.ctf[name], b.ctf[name], rtol=1e-6, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(a.beam_tilt_in_milliradians, b.beam_tilt_in_milliradians)
    for field in ("rotations", "shifts_in_angstroms"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=field)
    if image_check:
        np.testing.assert_array_equal(a.images(), b.images())


def test_star_round_trip_keeps_every_field(formats, tmp_path):
    original = io.load_particles(formats / "relion31.star")
    io.write_relion_star(tmp_path / "out.star", original, tmp_path / "out.mrcs")
    again = io.load_particles(tmp_path / "out.star")
    assert_same_dataset(original, again)
    assert again.optics_groups == original.optics_groups
    assert set(again.extra_columns) == set(original.extra_columns)
    for name, values in original.extra_columns.items():
        if values.dtype.kind in "fi":
            np.testing.assert_allclose(again.extra_columns[name], values, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(again.extra_columns[name].astype(str), values.astype(str))
    with mrcfile.open(tmp_path / "out.mrcs") as handle:
        assert handle.voxel_size.x == pytest.approx(2.806)


def test_star_round_trip_with_beam_tilt_zernike_and_two_groups(formats, tmp_path):
    text = (formats / "relion31.star").read_text()
    optics_row = "           1 opticsGroup1     0.100000     0.010000   300.000000     2.806000     1.403000          256            2 "
    header = "_rlnImageDimensionality #9 \n"
    text = text.replace(header, header + "_rlnBeamTiltX #10 \n_rlnBeamTiltY #11 \n_rlnOddZernike #12 \n_rlnEvenZernike #13 \n")
    text = text.replace(
        optics_row,
        optics_row + " 0.5 -0.25 [0.1,0.2,3.5,0,0,1.5] [4.0,5.0,6.0]\n"
        "           2 opticsGroup2     0.070000     2.700000   200.000000     2.806000     1.403000          256            2  0 0 [] []",
    )
    lines = text.splitlines()
    particle_rows = [i for i, line in enumerate(lines) if "@relion31.mrcs" in line]
    lines[particle_rows[-1]] = lines[particle_rows[-1]].replace(" 000005@relion31.mrcs            1 ", " 000005@relion31.mrcs            2 ")
    source = tmp_path / "in.star"
    source.write_text("\n".join(lines) + "\n")
    (tmp_path / "relion31.mrcs").symlink_to(formats / "relion31.mrcs")
    original = io.load_particles(source)
    assert original.optics_groups[0].beam_tilt_in_milliradians == (0.5, -0.25)
    assert original.optics_groups[0].odd_zernike == (0.1, 0.2, 3.5, 0.0, 0.0, 1.5)
    assert original.voltage_in_kilovolts.tolist() == [300, 300, 300, 300, 200]
    io.write_relion_star(tmp_path / "out.star", original)
    again = io.load_particles(tmp_path / "out.star")
    assert_same_dataset(original, again)
    assert again.optics_groups == original.optics_groups
    # Batches carry each particle's group optics under CTFParameters' field names.
    batch = again.batch([4, 0])
    np.testing.assert_allclose(batch.ctf["beam_tilt_x_in_milliradians"], [0.0, 0.5])
    np.testing.assert_allclose(batch.ctf["beam_tilt_y_in_milliradians"], [0.0, -0.25])
    np.testing.assert_allclose(batch.ctf["odd_zernike_coefficients"], [[0] * 6, [0.1, 0.2, 3.5, 0, 0, 1.5]])
    np.testing.assert_allclose(batch.ctf["even_zernike_coefficients"], [[0, 0, 0], [4, 5, 6]])
    np.testing.assert_allclose(batch.ctf["voltage_in_kilovolts"], [200, 300])


def test_relion30_to_31_conversion_keeps_poses_and_ctf(formats, tmp_path):
    original = io.load_particles(formats / "empiar_10076_7.star")
    io.write_relion_star(tmp_path / "out.star", original)
    again = io.load_particles(tmp_path / "out.star")
    assert_same_dataset(original, again)
    assert "rlnMicrographName" in again.extra_columns


def test_cryosparc_round_trip(formats, tmp_path):
    original = io.load_particles(formats / "relion31.star")
    io.write_cryosparc(tmp_path / "out.cs", original, tmp_path / "images.mrcs")
    again = io.load_particles(tmp_path / "out.cs")
    assert_same_dataset(original, again)
    # And cs → cs with the metadata of a real cryoSPARC file (stacks absent: metadata only).
    real = io.read_cryosparc(formats / "cryosparc_P12_J24_001_particles.cs")
    io.write_cryosparc(tmp_path / "real.cs", real)
    assert_same_dataset(real, io.read_cryosparc(tmp_path / "real.cs"), image_check=False)


@pytest.mark.parametrize("name", ["cryosparc_P12_J24_001_particles.cs", "empiar_10076_7.cs"])
def test_cryosparc_writer_fields_are_those_of_real_cryosparc_tables(formats, tmp_path, name):
    """Written back from what we read, a real cryoSPARC table keeps its fields: every field the writer
    writes exists in the real file with the same dtype and per-row shape (strings: the same kind), and
    holds the same values. Not compared: `uid` (cryoSPARC's are random 64-bit ids, ours count),
    `ctf/type` (the program that fitted the CTF) and the numbering of `ctf/exp_group_id` (ours from
    1, as RELION's optics groups), whose grouping of the particles must be the same."""
    real = np.load(formats / name, allow_pickle=False)
    io.write_cryosparc(tmp_path / "written.cs", io.read_cryosparc(formats / name))
    written = np.load(tmp_path / "written.cs", allow_pickle=False)
    assert len(written) == len(real)
    missing = [field for field in written.dtype.names if field not in real.dtype.names]
    assert not missing, f"fields cryoSPARC does not write: {missing}"
    for field in written.dtype.names:
        ours, theirs = written.dtype[field], real.dtype[field]
        if theirs.kind == "S":
            assert ours.kind == "S", field
        else:
            assert (ours.base, ours.shape) == (theirs.base, theirs.shape), field
    assert {"blob/path", "blob/idx", "blob/shape", "blob/psize_A", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad"} <= set(written.dtype.names)
    assert ("alignments3D/pose" in written.dtype.names) == ("alignments3D/pose" in real.dtype.names)

    for field in written.dtype.names:
        if field in ("uid", "ctf/type", "ctf/exp_group_id", "blob/path", "alignments3D/pose"):
            continue
        # float32 fields read as float64 and written as float32 again: the same numbers (measured:
        # exact), the angles in radians after a pass through degrees allowed 1 float32 ulp.
        np.testing.assert_allclose(written[field], real[field], rtol=2e-7 if field.endswith("_rad") else 0, err_msg=field)
    # The same stacks: blob/path is written relative to the new file's folder.
    for ours, theirs in zip(written["blob/path"][:50], real["blob/path"][:50]):
        assert (tmp_path / ours.decode()).resolve() == (formats / theirs.decode().lstrip(">")).resolve()
    _, our_groups = np.unique(written["ctf/exp_group_id"], return_inverse=True)
    _, their_groups = np.unique(real["ctf/exp_group_id"], return_inverse=True)
    np.testing.assert_array_equal(our_groups, their_groups)
    if "alignments3D/pose" in real.dtype.names:
        # The same rotations, compared as matrices (near |θ| = π one rotation has two rotation vectors:
        # ours and cryoSPARC's differ by up to 6.27 in this file): float32 vectors through float64 matrices and back,
        # measured 4e-7; 2e-6 is a few float32 ulps of the matrices' entries.
        np.testing.assert_allclose(
            Rotation.from_rotvec(written["alignments3D/pose"]).as_matrix(),
            Rotation.from_rotvec(real["alignments3D/pose"]).as_matrix(), atol=2e-6,
        )


def test_arrays_to_star_and_mrcs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 16, 16)).astype(np.float32)
    io.write_stack(tmp_path / "sim.mrcs", images, 1.5)
    header = io.read_stack_header(tmp_path / "sim.mrcs")
    assert (header.n_images, header.box_size, header.pixel_size_in_angstroms) == (6, 16, 1.5)
    rotations = Rotation.random(6, random_state=1).as_matrix()
    ctf = {name: rng.uniform(0.05, 0.2, 6) for name in io.CTF_FIELDS}
    ctf.update(voltage_in_kilovolts=300.0, spherical_aberration_in_millimeters=2.7)
    dataset = io.particle_dataset_from_arrays(tmp_path / "sim.mrcs", 1.5, ctf, rotations, rng.normal(size=(6, 2)))
    io.write_relion_star(tmp_path / "sim.star", dataset)
    again = io.load_particles(tmp_path / "sim.star")
    assert_same_dataset(dataset, again)
    np.testing.assert_array_equal(again.images(), images)


def test_minibatches_stream_every_particle_once(formats):
    dataset = io.load_particles(formats / "toy_projections.star")
    reference = dataset.images()
    seen = []
    for batch in dataset.minibatches(batch_size=96, seed=3, epoch=1, prefetch=2):
        np.testing.assert_array_equal(batch.images, reference[batch.indices])
        np.testing.assert_allclose(batch.ctf["phase_shift_in_degrees"], 90.0)
        assert "beam_tilt_x_in_milliradians" not in batch.ctf  # no beam tilt in this file
        seen.append(batch.indices)
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(1000))
    again = np.concatenate([b.indices for b in dataset.minibatches(96, seed=3, epoch=1, prefetch=0)])
    other_epoch = np.concatenate([b.indices for b in dataset.minibatches(96, seed=3, epoch=2)])
    np.testing.assert_array_equal(order, again)
    assert not np.array_equal(order, other_epoch)
    in_order = np.concatenate([b.indices for b in dataset.minibatches(96, shuffle=False)])
    np.testing.assert_array_equal(in_order, np.arange(1000))
    # Stopping early releases the reading thread.
    iterator = dataset.minibatches(10)
    next(iterator)
    iterator.close()


def test_subset(formats):
    dataset = io.load_particles(formats / "relion31.star")
    part = dataset.subset([4, 1])
    np.testing.assert_array_equal(part.images(), dataset.images([4, 1]))
    np.testing.assert_array_equal(part.rotations, dataset.rotations[[4, 1]])
    np.testing.assert_array_equal(part.defocus_u_in_angstroms, dataset.defocus_u_in_angstroms[[4, 1]])
    np.testing.assert_array_equal(part.extra_columns["rlnCoordinateX"], dataset.extra_columns["rlnCoordinateX"][[4, 1]])


def test_datadir_override(formats, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    star = tmp_path / "elsewhere" / "particles.star"
    star.write_text((formats / "relion31.star").read_text())
    with pytest.raises(io.InputError, match="relion31.mrcs"):
        io.load_particles(star)
    assert len(io.load_particles(star, datadir=formats)) == 5


def test_config_defaults_and_relative_paths(tmp_path, example_structure_path):
    (tmp_path / "particles.star").write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n")
    (tmp_path / "dataset.yaml").write_text(
        f"particles: particles.star\nreference: {example_structure_path}\nmodel: nma\nposes: given\noutput: out\nbatch_size: 16\n"
    )
    config = io.load_config(tmp_path / "dataset.yaml")
    assert config.particles == tmp_path.resolve() / "particles.star"
    assert config.output == tmp_path.resolve() / "out"
    assert config.batch_size == 16 and config.num_steps == 2000 and config.learning_rate == 1e-3
    assert config.coarse_grain == "calpha" and config.n_particles is None
    assert not (tmp_path / "out").exists()


def test_write_particles_star_from_memory(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(4, 12, 12)).astype(np.float32)
    ctf = {name: np.full(4, 0.1) for name in io.CTF_FIELDS}
    ctf["defocus_u_in_angstroms"] = rng.uniform(1e4, 2e4, 4)
    rotations = Rotation.random(4, random_state=3).as_matrix()
    shifts = rng.normal(size=(4, 2))
    io.write_particles_star(tmp_path / "p.star", images, tmp_path / "p.mrcs", 2.0, ctf, rotations, shifts)
    dataset = io.load_particles(tmp_path / "p.star")
    np.testing.assert_array_equal(dataset.images(), images)
    np.testing.assert_allclose(dataset.defocus_u_in_angstroms, ctf["defocus_u_in_angstroms"], rtol=1e-6)
    np.testing.assert_allclose(dataset.rotations, rotations, atol=1e-5)
    np.testing.assert_allclose(dataset.shifts_in_angstroms, shifts, atol=1e-6)
    assert dataset.pixel_size_in_angstroms == 2.0


def test_batch_ctf_names_are_the_microscope_parameters(formats):
    import dataclasses

    from atomicspi.microscope import CTFParameters

    names = {field.name for field in dataclasses.fields(CTFParameters)}
    batch = io.load_particles(formats / "relion31.star").batch([0, 1])
    assert set(batch.ctf) <= names
    assert set(io.CTF_FIELDS) <= names


def test_empiar_star_and_cs_describe_the_same_particles(formats):
    star = io.load_particles(formats / "empiar_10076_7.star")
    table = io.load_particles(formats / "empiar_10076_7.cs")
    for name in io.CTF_FIELDS:
        np.testing.assert_allclose(star.ctf[name], table.ctf[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(star.images(), table.images())


def test_several_stacks_in_one_star(tmp_path):
    rng = np.random.default_rng(4)
    first = rng.normal(size=(3, 8, 8)).astype(np.float32)
    second = rng.normal(size=(2, 8, 8)).astype(np.float32)
    (tmp_path / "stacks").mkdir()
    io.write_stack(tmp_path / "stacks" / "a.mrcs", first, 2.0)
    io.write_stack(tmp_path / "stacks" / "b.mrcs", second, 2.0)
    names = ["2@stacks/b.mrcs", "1@stacks/a.mrcs", "3@stacks/a.mrcs", "1@stacks/b.mrcs"]
    rows = "".join(f"{name} 2.0\n" for name in names)
    (tmp_path / "p.star").write_text(f"data_particles\nloop_\n_rlnImageName\n_rlnImagePixelSize\n{rows}")
    dataset = io.load_particles(tmp_path / "p.star")
    expected = np.stack([second[1], first[0], first[2], second[0]])
    np.testing.assert_array_equal(dataset.images(), expected)
    np.testing.assert_array_equal(dataset.images([3, 0, 2]), expected[[3, 0, 2]])
    for batch in dataset.minibatches(3, seed=1):
        np.testing.assert_array_equal(batch.images, expected[batch.indices])
    assert dataset.ctf is None and dataset.rotations is None and dataset.pixel_size_in_angstroms == 2.0
