"""CXI files (GitHub issue 18): round trips, files written by hand after the CXI 1.6 text, bad input."""

import dataclasses
import math
import re

import h5py
import numpy as np
import pytest
import scipy.constants

from atomicspi.io import CXI_VERSION, CXIGeometry, InputError, read_cxi, write_cxi
from atomicspi.microscope import DetectorGeometry, make_detector_geometry, pixel_geometry

DETECTOR = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"


def joules(photon_energy_in_kiloelectronvolts):
    return photon_energy_in_kiloelectronvolts * 1e3 * scipy.constants.e


SIX_KEV_IN_JOULES = joules(6.0)


def write_by_hand(path, patterns, *, pixel=75e-6, distance=0.13, corner=None, energy=SIX_KEV_IN_JOULES, extra=None, skip=()):
    """A CXI file written with h5py alone, following the CXI 1.6 text (not our writer)."""
    n_y, n_x = patterns.shape[-2:]
    fields = {
        "cxi_version": 160,
        f"{DETECTOR}/data": patterns,
        f"{DETECTOR}/distance": distance,
        f"{DETECTOR}/x_pixel_size": pixel,
        f"{DETECTOR}/y_pixel_size": pixel,
        f"{DETECTOR}/corner_position": corner if corner is not None else np.array([n_x / 2 * pixel, n_y / 2 * pixel, distance]),
        f"{SOURCE}/energy": energy,
    }
    fields.update(extra or {})
    with h5py.File(path, "w") as handle:
        for name, value in fields.items():
            if name not in skip and value is not None:
                handle[name] = value
        if "entry_1/data_1/data" not in skip and f"{DETECTOR}/data" in handle:
            handle["entry_1/data_1/data"] = h5py.SoftLink(f"/{DETECTOR}/data")
    return path


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    geometry = make_detector_geometry(
        (24, 30), 0.075, 130.0, photon_energy_in_kiloelectronvolts=6.0, beam_centre_in_pixels=(14.25, 11.5), polarization="unpolarized"
    )
    patterns = rng.poisson(3.0, size=(5, 24, 30))
    mask = rng.random((24, 30)) > 0.1
    path = write_cxi(tmp_path / "patterns.cxi", patterns, geometry, mask)
    data = read_cxi(path)
    np.testing.assert_array_equal(data.patterns, patterns)
    assert data.patterns.dtype == np.float32 and data.patterns.shape == (5, 24, 30)
    np.testing.assert_array_equal(data.mask, mask)
    for field in dataclasses.fields(CXIGeometry):
        expected, read = getattr(geometry, field.name), getattr(data.geometry, field.name)
        if isinstance(read, float):
            assert read == pytest.approx(float(expected), rel=1e-12, abs=1e-12), field.name
        else:
            assert read == expected, field.name
    # the record makes the microscope's geometry (the io layer does not import it)
    again = DetectorGeometry(**dataclasses.asdict(data.geometry))
    np.testing.assert_allclose(pixel_geometry(again).q_in_inverse_angstroms, pixel_geometry(geometry).q_in_inverse_angstroms, rtol=1e-6)
    # and is what the file says in CXI's SI units and frame
    with h5py.File(path, "r") as handle:
        assert int(handle["cxi_version"][()]) == CXI_VERSION == 160
        assert handle["entry_1/data_1/data"].shape == (5, 24, 30)
        assert float(handle[f"{SOURCE}/energy"][()]) == pytest.approx(joules(6.0), rel=1e-8)
        assert float(handle[f"{DETECTOR}/distance"][()]) == pytest.approx(0.130)
        assert float(handle[f"{DETECTOR}/x_pixel_size"][()]) == pytest.approx(75e-6)
        np.testing.assert_allclose(handle[f"{DETECTOR}/corner_position"][()], [14.75 * 75e-6, 12.0 * 75e-6, 0.13])
        np.testing.assert_array_equal(handle[f"{DETECTOR}/mask"][()] != 0, ~mask)


def test_float_patterns_and_a_single_pattern_round_trip(tmp_path):
    geometry = CXIGeometry(1.5, 200.0, 0.1, 7.0, 8.0, (16, 12), "x")
    pattern = np.random.default_rng(1).gamma(2.0, size=(16, 12)).astype(np.float32)
    data = read_cxi(write_cxi(tmp_path / "one.cxi", pattern, geometry))
    np.testing.assert_array_equal(data.patterns, pattern[None])
    assert data.mask.all() and data.geometry.polarization == "x"
    assert read_cxi(tmp_path / "one.cxi", polarization="y").geometry.polarization == "y"


def test_hand_written_file_gives_the_spec_pixel_positions(tmp_path):
    """Pixel [i, j] of a CXI detector sits at corner + (i + ½) b₀ + (j + ½) b₁ (CXI 1.6, default
    basis vectors b₀ = (0, -p, 0), b₁ = (-p, 0, 0)); the scattering vectors computed from those
    positions here must equal the ones of the geometry read."""
    n_y, n_x, pixel, distance = 20, 26, 110e-6, 0.35
    corner = np.array([11.3 * pixel, 8.6 * pixel, distance])
    mask_bits = np.zeros((n_y, n_x), np.uint32)
    mask_bits[3, 4] = 0x1  # invalid
    mask_bits[5, 6] = 0x200  # missing (gap)
    mask_bits[7, 8] = 0x1000  # "has signal": not a bad pixel
    path = write_by_hand(
        tmp_path / "hand.cxi",
        np.ones((2, n_y, n_x), np.int16),
        pixel=pixel,
        distance=distance,
        corner=corner,
        energy=joules(8.0),
        extra={f"{DETECTOR}/mask": mask_bits, f"{DETECTOR}/basis_vectors": np.array([[0, -pixel, 0], [-pixel, 0, 0]])},
    )
    data = read_cxi(path)
    wavelength = scipy.constants.h * scipy.constants.c / joules(8.0)  # m
    assert data.geometry.wavelength_in_angstroms == pytest.approx(wavelength * 1e10, rel=1e-12)
    assert data.geometry.detector_distance_in_millimetres == pytest.approx(350.0)
    assert data.geometry.pixel_size_in_millimetres == pytest.approx(0.11)
    assert data.geometry.polarization == "x"
    assert [(int(i), int(j)) for i, j in zip(*np.nonzero(~data.mask))] == [(3, 4), (5, 6)]

    rows, columns = np.mgrid[0:n_y, 0:n_x]
    positions = corner + (rows[..., None] + 0.5) * np.array([0, -pixel, 0]) + (columns[..., None] + 0.5) * np.array([-pixel, 0, 0])
    directions = positions / np.linalg.norm(positions, axis=-1, keepdims=True)
    q_cxi = (directions - [0, 0, 1]) / (wavelength * 1e10)  # 1/Å, CXI frame
    q_ours = np.asarray(pixel_geometry(DetectorGeometry(**dataclasses.asdict(data.geometry))).q_in_inverse_angstroms)
    # atomicspi's detector frame is CXI's turned by 180° about the beam: (x, y, z) -> (-x, -y, z)
    np.testing.assert_allclose(q_ours, q_cxi * np.array([-1, -1, 1]), rtol=1e-5, atol=1e-9)
    assert math.isclose(np.linalg.norm(q_ours, axis=-1).min(), np.linalg.norm(q_cxi, axis=-1).min(), rel_tol=1e-5)


def test_reader_falls_back_to_the_detector_data_and_beam_fields(tmp_path):
    patterns = np.arange(2 * 6 * 8, dtype=float).reshape(2, 6, 8)
    path = write_by_hand(
        tmp_path / "nexus.cxi",
        patterns,
        skip=("entry_1/data_1/data", f"{SOURCE}/energy", f"{DETECTOR}/distance"),
        extra={"entry_1/instrument_1/beam_1/incident_wavelength": 1.25e-10},
    )
    data = read_cxi(path)
    np.testing.assert_array_equal(data.patterns, patterns)
    assert data.geometry.wavelength_in_angstroms == pytest.approx(1.25)
    assert data.geometry.detector_distance_in_millimetres == pytest.approx(130.0)  # from corner_position z
    assert (data.geometry.beam_centre_x_in_pixels, data.geometry.beam_centre_y_in_pixels) == pytest.approx((3.5, 2.5))


def test_writer_refuses_bad_input(tmp_path):
    geometry = CXIGeometry(1.0, 100.0, 0.1, 4.0, 4.0, (8, 8))
    path = tmp_path / "bad.cxi"
    with pytest.raises(InputError, match=re.escape(f"{path}: patterns: expected shape")):
        write_cxi(path, np.zeros((2, 8, 9)), geometry)
    with pytest.raises(InputError, match=re.escape(f"{path}: patterns: contain NaN")):
        write_cxi(path, np.full((1, 8, 8), np.nan), geometry)
    with pytest.raises(InputError, match=re.escape(f"{path}: mask: shape")):
        write_cxi(path, np.zeros((1, 8, 8)), geometry, mask=np.ones((4, 4), bool))
    with pytest.raises(InputError, match=re.escape(f"{path}: geometry detector_distance_in_millimetres")):
        write_cxi(path, np.zeros((1, 8, 8)), dataclasses.replace(geometry, detector_distance_in_millimetres=0.0))


BAD_FILES = {
    # case: (changes to the hand-written file, field named in the message, words in the message)
    "no patterns": (dict(skip=("entry_1/data_1/data", f"{DETECTOR}/data")), "/entry_1/data_1/data", "missing"),
    "patterns 4D": (dict(patterns=np.zeros((2, 2, 6, 8))), "/entry_1/data_1/data", "shape"),
    "patterns NaN": (dict(patterns=np.where(np.arange(96).reshape(2, 6, 8) == 60, np.nan, 1.0)), "/entry_1/data_1/data", "pattern 1: contains NaN"),
    "patterns text": (dict(patterns=np.array([[b"ab"]])), "/entry_1/data_1/data", "real numbers"),
    "negative distance": (dict(distance=-0.1, corner=np.array([0.0, 0.0, 0.1])), "distance", "positive"),
    "distance in mm": (dict(distance=130.0, corner=np.array([3e-4, 2e-4, 130.0])), "corner_position", "positive distance in m"),
    "distances disagree": (dict(distance=0.2, corner=np.array([3e-4, 2e-4, 0.13])), "distance", "differs from corner_position"),
    "distance per pattern varies": (dict(distance=np.array([0.13, 0.14]), corner=np.array([3e-4, 2e-4, 0.13])), "distance", "varies"),
    "no distance": (dict(skip=(f"{DETECTOR}/distance", f"{DETECTOR}/corner_position")), "distance", "missing"),
    "no pixel size": (dict(skip=(f"{DETECTOR}/x_pixel_size",)), "x_pixel_size", "missing"),
    "pixel NaN": (dict(pixel=np.nan), "x_pixel_size", "positive and finite"),
    "pixel in µm": (dict(pixel=75.0), "x_pixel_size", "implausibly large"),
    "rectangular pixels": (dict(extra={f"{DETECTOR}/y_pixel_size": 1e-4}), "y_pixel_size", "square pixels"),
    "tilted detector": (dict(extra={f"{DETECTOR}/basis_vectors": np.array([[0, -75e-6, 1e-6], [-75e-6, 0, 0]])}), "basis_vectors", "default"),
    "corner of two numbers": (dict(corner=np.array([0.0, 0.13])), "corner_position", "three finite numbers"),
    "no corner": (dict(skip=(f"{DETECTOR}/corner_position",)), "corner_position", "beam_centre_in_pixels"),
    "no energy": (dict(skip=(f"{SOURCE}/energy",)), f"/{SOURCE}/energy", "no wavelength"),
    "energy in eV": (dict(energy=6000.0), f"/{SOURCE}/energy", "wavelength of"),
    "zero energy": (dict(energy=0.0), f"/{SOURCE}/energy", "positive"),
    "mask shape": (dict(extra={f"{DETECTOR}/mask": np.zeros((5, 8), np.uint32)}), "mask", "shape"),
    "cxi_version": (dict(extra={"cxi_version": -3}), "/cxi_version", "version"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_name_the_file_and_the_field(tmp_path, case):
    changes, field, words = BAD_FILES[case]
    changes = dict(changes)
    patterns = changes.pop("patterns", np.ones((2, 6, 8)))
    path = write_by_hand(tmp_path / "bad.cxi", patterns, **changes)
    with pytest.raises(InputError) as error:
        read_cxi(path)
    message = str(error.value)
    assert message.startswith(f"{path}: field ") and field in message and words in message, message
    assert "\n" not in message


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'none.cxi'}: file not found")):
        read_cxi(tmp_path / "none.cxi")
    text = tmp_path / "text.cxi"
    text.write_text("not HDF5")
    with pytest.raises(InputError, match=re.escape(f"{text}: file: not a readable HDF5")):
        read_cxi(text)
    path = write_by_hand(tmp_path / "ok.cxi", np.ones((1, 4, 4)))
    with pytest.raises(InputError, match="polarization"):
        read_cxi(path, polarization="circular")
    with pytest.raises(InputError, match="beam_centre_in_pixels"):
        read_cxi(path, beam_centre_in_pixels=(1.0, np.nan))
    assert read_cxi(path, beam_centre_in_pixels=(1.0, 2.5)).geometry.beam_centre_y_in_pixels == 2.5


def test_no_pickles_in_the_reader():
    import inspect

    from atomicspi.io import _cxi

    source = inspect.getsource(_cxi)
    assert "pickle" not in source and "allow_pickle" not in source
