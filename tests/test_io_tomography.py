"""Tilt-series particles: RELION 3.0-style subtomogram files (real, against cryoDRGN's oracles) and
RELION 4 / 5 particle + tomogram sets (synthetic, with the columns RELION 5 reads in
src/jaz/tomography/tomogram_set.cpp and particle_set.cpp, and the labels of src/metadata_label.h).

The expected RELION 4/5 values are built here independently: view rotations with scipy as RELION 5's
`Tomogram::setProjectionMatrix` (`Rz(zrot) Ry(ytilt) Rx(xtilt)`, right-handed), particle rotations
with scipy from RELION's ZYZ angles, defocus as `Tomogram::getCtf` (tilt defocus + hand · slope ·
depth) and positions as `ParticleSet::getPosition`.
"""

import pathlib

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import atomicspi.io as io
from atomicspi.conventions import euler_angles_to_matrix


def _relion_euler(rot, tilt, psi):
    """RELION's Euler_angles2matrix: its Rz, Ry are textbook rotations by minus the angle."""
    return Rotation.from_euler("ZYZ", np.stack([-np.asarray(psi), -np.asarray(tilt), -np.asarray(rot)], axis=-1), degrees=True).as_matrix()


def _view(y_tilt, z_rotation, x_tilt):
    return Rotation.from_euler("ZYX", np.stack([z_rotation, y_tilt, x_tilt], axis=-1), degrees=True).as_matrix()


def _block(name: str, columns: dict) -> str:
    """A STAR loop block from `column -> list of values` (strings written as given)."""
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{column} #{i + 1}" for i, column in enumerate(columns)]
    for row in zip(*columns.values()):
        lines.append("  ".join(str(v) for v in row))
    return "\n".join(lines) + "\n\n"


def _vector(values) -> str:
    return "[" + ",".join(f"{v:.10g}" for v in values) + "]"


# --- RELION 3.0-style subtomogram particles: the real file ------------------------------------------


def _text_columns(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a one-loop STAR file, split by whitespace (independent of `starfile`)."""
    columns, rows = [], []
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("_"):
            columns.append(text.split()[0][1:])
        elif text and not text.startswith(("data_", "loop_", "#")):
            rows.append(text.split())
    return columns, rows


@pytest.fixture(scope="module")
def sta(shared_data):
    return shared_data / "formats" / "sta_testing.star"


def test_real_subtomogram_file_groups_tilts_by_particle(sta):
    particles = io.read_tilt_series_particles(sta)
    columns, rows = _text_columns(sta)
    group = [row[columns.index("rlnGroupName")] for row in rows]
    names = list(dict.fromkeys(group))  # order of first appearance, as cryoDRGN's parse_particle_tilt
    assert len(rows) == 219
    assert len(particles) == 6
    assert list(particles.particle_names) == names
    np.testing.assert_array_equal(particles.tilt_counts, [39, 39, 39, 39, 39, 24])
    for i, name in enumerate(names):
        np.testing.assert_array_equal(particles.tilt_image_indices[particles.tilts(i)], [r for r, g in enumerate(group) if g == name])
    np.testing.assert_array_equal(particles.particle_of_tilt, np.repeat(np.arange(6), [39] * 5 + [24]))
    # pixel size from rlnDetectorPixelSize (µm) and rlnMagnification, as RELION 3.0 defines it
    expected_pixel = float(rows[0][columns.index("rlnDetectorPixelSize")]) * 1e4 / float(rows[0][columns.index("rlnMagnification")])
    np.testing.assert_allclose(particles.pixel_size_in_angstroms, expected_pixel)
    assert particles.tomogram_names is None and particles.particle_rotations is None
    assert particles.pre_exposure_in_electrons_per_square_angstrom is None  # the file has no exposure
    padded, mask = particles.padded(particles.defocus_u_in_angstroms, fill=np.nan)
    assert padded.shape == (6, 39) and mask.sum() == 219 and np.isnan(padded[5, 24:]).all()
    np.testing.assert_array_equal(padded[mask], particles.defocus_u_in_angstroms)


def test_real_subtomogram_file_matches_cryodrgn_oracles(sta):
    """sta_ctf.pkl: cryoDRGN's (N, 9) CTF array (D, Apix override, defocus U, V, angle, kV, Cs, Q0, phase);
    sta_pose.pkl: (rotations, translations); rows in the file's order."""
    particles = io.read_tilt_series_particles(sta)
    ctf = io.read_restricted_pickle(sta.parent / "sta_ctf.pkl")
    rotations, _ = io.read_restricted_pickle(sta.parent / "sta_pose.pkl")  # its translations are not zeros
    assert ctf.shape == (219, 9) and rotations.shape == (219, 3, 3)
    rows = particles.tilt_image_indices
    np.testing.assert_allclose(particles.defocus_u_in_angstroms, ctf[rows, 2], rtol=1e-6)
    np.testing.assert_allclose(particles.defocus_v_in_angstroms, ctf[rows, 3], rtol=1e-6)
    np.testing.assert_allclose(particles.astigmatism_angle_in_degrees, ctf[rows, 4], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(particles.phase_shift_in_degrees, ctf[rows, 8])
    first = rows[particles.tilt_offsets[:-1]]
    np.testing.assert_allclose(particles.voltage_in_kilovolts, ctf[first, 5], rtol=1e-6)
    np.testing.assert_allclose(particles.spherical_aberration_in_millimeters, ctf[first, 6], rtol=1e-6)
    np.testing.assert_allclose(particles.amplitude_contrast_ratio, ctf[first, 7], rtol=1e-6)
    assert np.ptp(particles.defocus_u_in_angstroms) > 1000  # per-tilt defoci, not one per particle
    np.testing.assert_allclose(particles.rotations, rotations[rows], atol=2e-6)


def test_real_subtomogram_file_exposure_order(sta):
    """With a dose per tilt, the k-th tilt by decreasing rlnCtfScalefactor (≈ cos tilt) gets k · dose.
    The file's rlnCtfBfactor (Warp: -13 Å² more per exposure) gives the same order independently."""
    particles = io.read_tilt_series_particles(sta, dose_per_tilt_in_electrons_per_square_angstrom=3.25)
    columns, rows = _text_columns(sta)
    b_factor = np.array([float(r[columns.index("rlnCtfBfactor")]) for r in rows])
    exposure_order = -b_factor[particles.tilt_image_indices] / 13.0 - 1
    np.testing.assert_allclose(particles.pre_exposure_in_electrons_per_square_angstrom, 3.25 * exposure_order, atol=1e-9)
    for i in range(len(particles)):
        tilts = particles.tilts(i)
        order = np.argsort(particles.pre_exposure_in_electrons_per_square_angstrom[tilts])
        assert np.all(np.diff(particles.ctf_scale[tilts][order]) <= 0)


def test_subtomogram_exposure_rank_breaks_ties_in_file_order(tmp_path):
    scale = [0.94, 1.0, 0.985, 0.985, 0.94, 0.8]
    names = ["p1", "p1", "p1", "p2", "p1", "p2"]
    path = tmp_path / "sub.star"
    path.write_text(_block("", {
        "rlnImageName": [f"{i + 1}@stack.mrcs" for i in range(6)],
        "rlnDetectorPixelSize": [5.0] * 6, "rlnMagnification": [10000] * 6,
        "rlnVoltage": [300] * 6, "rlnSphericalAberration": [2.7] * 6, "rlnAmplitudeContrast": [0.1] * 6,
        "rlnDefocusU": [1e4 + i for i in range(6)], "rlnDefocusV": [1e4] * 6, "rlnDefocusAngle": [0] * 6,
        "rlnAngleRot": [0] * 6, "rlnAngleTilt": [0] * 6, "rlnAnglePsi": [0] * 6,
        "rlnCtfScalefactor": scale, "rlnGroupName": names, "rlnMicrographName": [f"t{i}.mrc" for i in range(6)],
    }))
    particles = io.read_tilt_series_particles(path, dose_per_tilt_in_electrons_per_square_angstrom=2.0)
    np.testing.assert_array_equal(particles.particle_names, ["p1", "p2"])
    np.testing.assert_array_equal(particles.tilt_image_indices, [0, 1, 2, 4, 3, 5])  # rows need not be contiguous
    # p1 scales 0.94, 1.0, 0.985, 0.94 -> ranks 2, 0, 1, 3 ; p2 scales 0.985, 0.8 -> 0, 1
    np.testing.assert_array_equal(particles.pre_exposure_in_electrons_per_square_angstrom, [4.0, 0.0, 2.0, 6.0, 0.0, 2.0])
    np.testing.assert_array_equal(particles.defocus_u_in_angstroms, [1e4, 1e4 + 1, 1e4 + 2, 1e4 + 4, 1e4 + 3, 1e4 + 5])


# --- RELION 4 / 5 particle and tomogram sets: synthetic ------------------------------------------------

TOMOGRAMS = {
    # name: (frames: y tilt, z rotation, x tilt, defocus U, V, angle, pre-exposure), hand, slope, pixel, size
    "TS_01": dict(
        y_tilt=[0.0, 3.0, -3.0, -6.0, 6.0], z_rotation=[-85.1, -85.2, -85.0, -84.9, -85.3], x_tilt=[0.0, 0.2, 0.0, -0.1, 0.0],
        defocus=[30000.0, 30250.0, 29800.0, 30400.0, 29500.0], pre_exposure=[0.0, 3.0, 6.0, 9.0, 12.0],
        hand=-1.0, slope=1.0, pixel=1.35, size=(4000, 4000, 1000),
    ),
    "TS_02": dict(
        y_tilt=[1.0, 31.0, -29.0], z_rotation=[92.0, 92.0, 92.0], x_tilt=[0.0, 0.0, 0.0],
        defocus=[41000.0, 40000.0, 42000.0], pre_exposure=[0.0, 4.0, 8.0],
        hand=1.0, slope=0.9, pixel=1.35, size=(3000, 3000, 600),
    ),
}

PARTICLES = dict(
    tomo=["TS_01", "TS_01", "TS_02", "TS_02"],
    name=["TS_01/1", "TS_01/2", "TS_02/1", "TS_02/2"],
    centred=[[120.0, -340.0, 55.0], [0.0, 0.0, 0.0], [-800.0, 410.0, -120.0], [15.0, 25.0, 210.0]],
    angles=[[10.0, 80.0, -30.0], [170.0, 20.0, 45.0], [-60.0, 120.0, 5.0], [0.0, 90.0, 90.0]],
    subtomogram=[[0.0, 30.0, 10.0], [90.0, 90.0, 0.0], [0.0, 0.0, 0.0], [-45.0, 10.0, 170.0]],
    origin=[[1.5, -2.0, 0.5], [0.0, 0.0, 0.0], [-3.0, 0.0, 4.0], [0.25, 0.5, -0.75]],
    visible=[[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 1], [0, 1, 1]],
)


def _tilt_table(name, spec, relion4=False):
    n = len(spec["y_tilt"])
    columns = {}
    if relion4:
        views = _view(np.array(spec["y_tilt"]), np.array(spec["z_rotation"]), np.array(spec["x_tilt"]))
        size = np.array(spec["size"], dtype=float)
        for axis, label in enumerate("XYZW"):
            rows = []
            for f in range(n):  # P = S(image centre + shift) R S(-tomogram centre), as setProjectionMatrix
                matrix = np.eye(4)
                matrix[:3, :3] = views[f]
                matrix[:3, 3] = -views[f] @ (size // 2) + np.array([1000.0 + 3 * f, 1000.0 - 2 * f, 0.0])
                rows.append(_vector(matrix[axis]))
            columns[f"rlnTomoProj{label}"] = rows
    else:
        columns |= {"rlnTomoXTilt": spec["x_tilt"], "rlnTomoYTilt": spec["y_tilt"], "rlnTomoZRot": spec["z_rotation"],
                    "rlnTomoXShiftAngst": [1.5] * n, "rlnTomoYShiftAngst": [-2.5] * n,
                    "rlnTomoNominalStageTiltAngle": np.round(spec["y_tilt"]).tolist()}
    columns |= {
        "rlnDefocusU": spec["defocus"], "rlnDefocusV": [d - 200 for d in spec["defocus"]], "rlnDefocusAngle": [40.0] * n,
        "rlnCtfScalefactor": np.round(np.cos(np.deg2rad(spec["y_tilt"])), 6).tolist(),
        "rlnMicrographPreExposure": spec["pre_exposure"],
    }
    return _block(name, columns)


def _global_table(tomograms=TOMOGRAMS, star_files=None):
    names = list(tomograms)
    columns = {
        "rlnTomoName": names,
        "rlnVoltage": [300.0] * len(names), "rlnSphericalAberration": [2.7] * len(names), "rlnAmplitudeContrast": [0.07, 0.1][: len(names)],
        "rlnTomoHand": [tomograms[t]["hand"] for t in names],
        "rlnTomoDefocusSlope": [tomograms[t]["slope"] for t in names],
        "rlnTomoTiltSeriesPixelSize": [tomograms[t]["pixel"] for t in names],
        "rlnTomoSizeX": [tomograms[t]["size"][0] for t in names], "rlnTomoSizeY": [tomograms[t]["size"][1] for t in names],
        "rlnTomoSizeZ": [tomograms[t]["size"][2] for t in names],
    }
    if star_files is not None:
        columns["rlnTomoTiltSeriesStarFile"] = star_files
    return _block("global", columns)


def _write_relion5(project: pathlib.Path, particles=PARTICLES, tilt_tables=None, global_table=None):
    """A RELION 5 project: Tomograms/job001/tomograms.star naming per-tilt-series files relative to the
    project folder, and Refine/job002/particles.star with centred coordinates."""
    job = project / "Tomograms" / "job001"
    (job / "tilt_series").mkdir(parents=True, exist_ok=True)
    star_files = []
    for name, spec in TOMOGRAMS.items():
        relative = f"Tomograms/job001/tilt_series/{name}.star"
        (project / relative).write_text(tilt_tables[name] if tilt_tables and name in tilt_tables else _tilt_table(name, spec))
        star_files.append(relative)
    tomograms = job / "tomograms.star"
    tomograms.write_text(global_table if global_table is not None else _global_table(star_files=star_files))
    refine = project / "Refine" / "job002"
    refine.mkdir(parents=True, exist_ok=True)
    n = len(particles["tomo"])
    columns = {
        "rlnTomoName": particles["tomo"], "rlnTomoParticleName": particles["name"],
        "rlnCenteredCoordinateXAngst": [p[0] for p in particles["centred"]],
        "rlnCenteredCoordinateYAngst": [p[1] for p in particles["centred"]],
        "rlnCenteredCoordinateZAngst": [p[2] for p in particles["centred"]],
        "rlnAngleRot": [a[0] for a in particles["angles"]], "rlnAngleTilt": [a[1] for a in particles["angles"]],
        "rlnAnglePsi": [a[2] for a in particles["angles"]],
        "rlnTomoSubtomogramRot": [a[0] for a in particles["subtomogram"]],
        "rlnTomoSubtomogramTilt": [a[1] for a in particles["subtomogram"]],
        "rlnTomoSubtomogramPsi": [a[2] for a in particles["subtomogram"]],
        "rlnOriginXAngst": [o[0] for o in particles["origin"]], "rlnOriginYAngst": [o[1] for o in particles["origin"]],
        "rlnOriginZAngst": [o[2] for o in particles["origin"]],
        "rlnTomoVisibleFrames": [_vector(v) for v in particles["visible"]],
        "rlnOpticsGroup": [1] * n, "rlnRandomSubset": [1, 2, 1, 2][:n],
    }
    optics = _block("optics", {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["optics1"], "rlnTomoTiltSeriesPixelSize": [1.35],
                               "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.07]})
    path = refine / "particles.star"
    path.write_text("data_general\n\n_rlnTomoSubTomosAre2DStacks 1\n\n" + optics + _block("particles", columns))
    return path, tomograms


def _expected(particles=PARTICLES):
    """Per-tilt poses, defoci, exposures of each particle as RELION 5 computes them."""
    out = {key: [] for key in ("frames", "rotations", "u", "v", "dose", "tilt", "offset")}
    for i, tomo in enumerate(particles["tomo"]):
        spec = TOMOGRAMS[tomo]
        a_sub = _relion_euler(*particles["subtomogram"][i])
        a = a_sub @ _relion_euler(*particles["angles"][i])
        position = np.array(particles["centred"][i]) - a_sub @ np.array(particles["origin"][i])
        frames = np.flatnonzero(particles["visible"][i])
        views = _view(np.array(spec["y_tilt"]), np.array(spec["z_rotation"]), np.array(spec["x_tilt"]))[frames]
        depth = views[:, 2, :] @ position
        offset = spec["hand"] * spec["slope"] * depth
        out["frames"].append(frames)
        out["rotations"].append(views @ a)
        out["u"].append(np.array(spec["defocus"])[frames] + offset)
        out["v"].append(np.array(spec["defocus"])[frames] - 200 + offset)
        out["dose"].append(np.array(spec["pre_exposure"])[frames])
        out["tilt"].append(np.array(spec["y_tilt"])[frames])
        out["offset"].append(offset)
    return {key: np.concatenate(values) for key, values in out.items()}


def test_relion5_particles_are_grouped_with_their_tilt_images(tmp_path):
    path, tomograms = _write_relion5(tmp_path)
    particles = io.read_tilt_series_particles(path, tomograms)
    expected = _expected()
    np.testing.assert_array_equal(particles.particle_names, PARTICLES["name"])
    np.testing.assert_array_equal(particles.tomogram_names, PARTICLES["tomo"])
    np.testing.assert_array_equal(particles.tilt_counts, [5, 3, 3, 2])  # variable: tomograms and visible frames
    np.testing.assert_array_equal(particles.tilt_offsets, [0, 5, 8, 11, 13])
    np.testing.assert_array_equal(particles.tilt_image_indices, expected["frames"])
    np.testing.assert_allclose(particles.rotations, expected["rotations"], atol=2e-6)
    np.testing.assert_allclose(particles.defocus_u_in_angstroms, expected["u"], atol=2e-3)
    np.testing.assert_allclose(particles.defocus_v_in_angstroms, expected["v"], atol=2e-3)
    np.testing.assert_allclose(particles.defocus_offset_in_angstroms, expected["offset"], atol=2e-3)
    np.testing.assert_array_equal(particles.pre_exposure_in_electrons_per_square_angstrom, expected["dose"])
    np.testing.assert_allclose(particles.tilt_angles_in_degrees, expected["tilt"], atol=1e-12)
    np.testing.assert_array_equal(particles.astigmatism_angle_in_degrees, 40.0)
    np.testing.assert_allclose(particles.ctf_scale, np.round(np.cos(np.deg2rad(expected["tilt"])), 6))
    np.testing.assert_array_equal(particles.amplitude_contrast_ratio, [0.07, 0.07, 0.1, 0.1])
    np.testing.assert_array_equal(particles.pixel_size_in_angstroms, 1.35)
    assert np.abs(particles.defocus_offset_in_angstroms).max() > 100  # the depth term is exercised
    # the defocus offset of the particle exactly at the centre is zero
    np.testing.assert_allclose(particles.defocus_offset_in_angstroms[particles.tilts(1)], 0.0, atol=1e-9)
    rotations, mask = particles.padded(particles.rotations)
    assert rotations.shape == (4, 5, 3, 3) and mask.sum() == 13
    assert set(particles.particle_columns) == {"rlnOpticsGroup", "rlnRandomSubset"}
    # the particle-level pose is the one of RELION's ParticleSet::getMatrix3x3, built with atomicspi's Euler matrices
    np.testing.assert_allclose(
        particles.particle_rotations,
        np.asarray(euler_angles_to_matrix(np.array(PARTICLES["subtomogram"]))) @ np.asarray(euler_angles_to_matrix(np.array(PARTICLES["angles"]))),
        atol=1e-6,
    )


def test_relion4_projection_matrices_give_the_same_particles(tmp_path):
    """RELION 4: per-tilt tables in tomograms.star with rlnTomoProjX..W, pixel coordinates
    rlnCoordinateX/Y/Z, no particle names (RELION 4 names them <tomogram>/<k>)."""
    text = _global_table()
    for name, spec in TOMOGRAMS.items():
        text += _tilt_table(name, spec, relion4=True)
    tomograms = tmp_path / "tomograms.star"
    tomograms.write_text(text)
    n = len(PARTICLES["tomo"])
    pixels = [np.array(c) / 1.35 + np.array(TOMOGRAMS[t]["size"]) / 2 for c, t in zip(PARTICLES["centred"], PARTICLES["tomo"])]
    columns = {
        "rlnTomoName": PARTICLES["tomo"],
        "rlnCoordinateX": [p[0] for p in pixels], "rlnCoordinateY": [p[1] for p in pixels], "rlnCoordinateZ": [p[2] for p in pixels],
        "rlnAngleRot": [a[0] for a in PARTICLES["angles"]], "rlnAngleTilt": [a[1] for a in PARTICLES["angles"]],
        "rlnAnglePsi": [a[2] for a in PARTICLES["angles"]],
        "rlnTomoSubtomogramRot": [a[0] for a in PARTICLES["subtomogram"]],
        "rlnTomoSubtomogramTilt": [a[1] for a in PARTICLES["subtomogram"]],
        "rlnTomoSubtomogramPsi": [a[2] for a in PARTICLES["subtomogram"]],
        "rlnOriginXAngst": [o[0] for o in PARTICLES["origin"]], "rlnOriginYAngst": [o[1] for o in PARTICLES["origin"]],
        "rlnOriginZAngst": [o[2] for o in PARTICLES["origin"]], "rlnOpticsGroup": [1] * n,
    }
    optics = _block("optics", {"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [1.35]})
    path = tmp_path / "particles.star"
    path.write_text(optics + _block("particles", columns))
    particles = io.read_tilt_series_particles(path, tomograms)
    all_frames = dict(PARTICLES, visible=[[1] * len(TOMOGRAMS[t]["y_tilt"]) for t in PARTICLES["tomo"]])
    expected = _expected(all_frames)
    np.testing.assert_array_equal(particles.particle_names, ["TS_01/1", "TS_01/2", "TS_02/1", "TS_02/2"])
    np.testing.assert_array_equal(particles.tilt_counts, [5, 5, 3, 3])
    np.testing.assert_allclose(particles.rotations, expected["rotations"], atol=2e-6)
    np.testing.assert_allclose(particles.defocus_u_in_angstroms, expected["u"], atol=1e-3)
    np.testing.assert_allclose(particles.tilt_angles_in_degrees, expected["tilt"], atol=1e-6)  # asin(-R[2, 0])
    np.testing.assert_allclose(particles.positions_in_angstroms[1], [0.0, 0.0, 0.0], atol=1e-9)


def _error(call):
    with pytest.raises(io.InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_relion5_bad_input_names_file_and_field(tmp_path):
    def project(name, **changes):
        folder = tmp_path / name
        folder.mkdir()
        return _write_relion5(folder, **changes)

    # a particle with rows in two tomograms
    path, tomograms = project("two", particles=dict(PARTICLES, name=["TS_01/1", "TS_01/2", "TS_01/1", "TS_02/2"]))
    message = _error(lambda: io.read_tilt_series_particles(path, tomograms))
    assert "particles.star: field rlnTomoName" in message and "'TS_01'" in message and "'TS_02'" in message
    # the same particle twice in one tomogram
    path, tomograms = project("twice", particles=dict(PARTICLES, name=["TS_01/1", "TS_01/1", "TS_02/1", "TS_02/2"]))
    assert "particles.star: field rlnTomoParticleName" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # a tomogram the tomogram set does not list
    path, tomograms = project("unknown", particles=dict(PARTICLES, tomo=["TS_01", "TS_01", "TS_02", "TS_09"]))
    assert "particles.star: field rlnTomoName: row 4" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # no tomogram set given
    assert "particles.star: field rlnTomoName" in _error(lambda: io.read_tilt_series_particles(path))
    # missing dose column
    spec = TOMOGRAMS["TS_01"]
    no_dose = _tilt_table("TS_01", spec).replace("_rlnMicrographPreExposure #", "_rlnSomethingElse #")
    path, tomograms = project("dose", tilt_tables={"TS_01": no_dose})
    assert "TS_01.star: field rlnMicrographPreExposure: missing" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # a NaN tilt angle
    nan_tilt = _tilt_table("TS_02", dict(TOMOGRAMS["TS_02"], y_tilt=[1.0, float("nan"), -29.0]))
    path, tomograms = project("nan", tilt_tables={"TS_02": nan_tilt})
    message = _error(lambda: io.read_tilt_series_particles(path, tomograms))
    assert "TS_02.star: field rlnTomoYTilt: row 2" in message
    # negative exposure
    negative = _tilt_table("TS_02", dict(TOMOGRAMS["TS_02"], pre_exposure=[0.0, -4.0, 8.0]))
    path, tomograms = project("negative", tilt_tables={"TS_02": negative})
    assert "TS_02.star: field rlnMicrographPreExposure: row 2" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # visibility flags that do not match the tilt count
    path, tomograms = project("visible", particles=dict(PARTICLES, visible=[[1, 1, 1, 1, 1], [1, 1], [1, 1, 1], [0, 1, 1]]))
    assert "particles.star: field rlnTomoVisibleFrames: row 2" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # no handedness in the tomogram set
    global_table = _global_table(star_files=[f"Tomograms/job001/tilt_series/{t}.star" for t in TOMOGRAMS]).replace("_rlnTomoHand #", "_rlnTomoHandX #")
    path, tomograms = project("hand", global_table=global_table)
    assert "tomograms.star: field rlnTomoHand: missing from data_global" in _error(lambda: io.read_tilt_series_particles(path, tomograms))
    # a tilt-series file that is not there
    global_table = _global_table(star_files=["Tomograms/job001/tilt_series/TS_01.star", "elsewhere/TS_02.star"])
    path, tomograms = project("missing", global_table=global_table)
    assert "tomograms.star: field rlnTomoTiltSeriesStarFile" in _error(lambda: io.read_tilt_series_particles(path, tomograms))


def test_relion4_matrix_that_is_not_a_rotation_is_refused(tmp_path):
    spec = TOMOGRAMS["TS_02"]
    table = _tilt_table("TS_02", spec, relion4=True)
    rows = table.splitlines()
    first = next(i for i, line in enumerate(rows) if line.startswith("["))
    cells = rows[first].split("  ")
    cells[0] = _vector([2.0, 0.0, 0.0, 5.0])  # scaled x row
    rows[first] = "  ".join(cells)
    tomograms = tmp_path / "tomograms.star"
    tomograms.write_text(_global_table({"TS_02": spec}) + "\n".join(rows) + "\n")
    path = tmp_path / "particles.star"
    path.write_text(_block("particles", {"rlnTomoName": ["TS_02"], "rlnCenteredCoordinateXAngst": [0.0],
                                         "rlnCenteredCoordinateYAngst": [0.0], "rlnCenteredCoordinateZAngst": [0.0]}))
    assert "tomograms.star: field rlnTomoProjX: row 1 of data_TS_02" in _error(lambda: io.read_tilt_series_particles(path, tomograms))


def test_subtomogram_bad_input_names_file_and_field(tmp_path):
    base = {
        "rlnImageName": ["1@s.mrcs", "2@s.mrcs", "3@s.mrcs"], "rlnDetectorPixelSize": [5.0] * 3, "rlnMagnification": [10000] * 3,
        "rlnVoltage": [300] * 3, "rlnSphericalAberration": [2.7] * 3, "rlnAmplitudeContrast": [0.1] * 3,
        "rlnDefocusU": [1e4] * 3, "rlnDefocusV": [1e4] * 3, "rlnDefocusAngle": [0] * 3,
        "rlnAngleRot": [0] * 3, "rlnAngleTilt": [0] * 3, "rlnAnglePsi": [0] * 3,
        "rlnGroupName": ["a", "a", "b"], "rlnMicrographName": ["t1.mrc", "t2.mrc", "t1.mrc"],
    }

    def write(name, **changes):
        path = tmp_path / name
        columns = {k: v for k, v in (base | changes).items() if v is not None}
        path.write_text(_block("", columns))
        return path

    path = write("same_tilt.star", rlnMicrographName=["t1.mrc", "t1.mrc", "t2.mrc"])
    assert "same_tilt.star: field rlnMicrographName" in _error(lambda: io.read_tilt_series_particles(path))
    path = write("no_group.star", rlnGroupName=None)
    assert "no_group.star: field rlnGroupName" in _error(lambda: io.read_tilt_series_particles(path))
    path = write("no_scale.star")
    assert "no_scale.star: field rlnCtfScalefactor" in _error(
        lambda: io.read_tilt_series_particles(path, dose_per_tilt_in_electrons_per_square_angstrom=3.0)
    )
    path = write("voltages.star", rlnVoltage=[300, 200, 300])
    assert "voltages.star: field rlnVoltage" in _error(lambda: io.read_tilt_series_particles(path))
    path = write("nan_angle.star", rlnAngleTilt=[0, "nan", 0])
    assert "nan_angle.star: field rlnAngleTilt: row 2" in _error(lambda: io.read_tilt_series_particles(path))
