"""The restricted unpickler for cryoDRGN files: same values as plain pickle for arrays, nothing else admitted."""
import collections
import pickle

import numpy as np
import pytest

import atomicspi.io as io


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_and_plain_data_round_trip(tmp_path, protocol):
    value = (
        np.arange(12, dtype=np.float32).reshape(4, 3),
        {"a": np.array([1, 2], dtype=np.int64), "b": [1.5, 2, "x", (3, 4)]},
        np.float64(2.5),
        np.array([[1.0, 2.0]], dtype=">f8"),
    )
    path = tmp_path / "value.pkl"
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    loaded = io.read_restricted_pickle(path)
    np.testing.assert_array_equal(loaded[0], value[0])
    assert loaded[0].dtype == np.float32
    np.testing.assert_array_equal(loaded[1]["a"], value[1]["a"])
    assert loaded[1]["b"] == value[1]["b"]
    assert loaded[2] == 2.5
    np.testing.assert_array_equal(loaded[3], value[3])


@pytest.mark.parametrize(
    "value",
    [collections.OrderedDict(a=1), np.array([object()], dtype=object), pickle.PickleBuffer, np.random.default_rng],
    ids=["OrderedDict", "object-array", "class", "numpy-function"],
)
def test_other_objects_are_refused(tmp_path, value):
    path = tmp_path / "value.pkl"
    path.write_bytes(pickle.dumps(value, protocol=4))
    with pytest.raises(io.InputError, match="value.pkl"):
        io.read_restricted_pickle(path)


def test_cryodrgn_files_read_as_plain_pickle_does(shared_data):
    formats = shared_data / "formats"
    for name in ("pose.star.pkl", "pose.cs.pkl", "hand_rot_trans.pkl", "toy_rot_trans.pkl"):
        with open(formats / name, "rb") as file:
            trusted_rotations, trusted_translations = pickle.load(file)  # trusted test fixture
        rotations, translations = io.read_cryodrgn_poses(formats / name)
        np.testing.assert_array_equal(rotations, trusted_rotations)
        np.testing.assert_array_equal(translations, trusted_translations)
    with open(formats / "ctf1.pkl", "rb") as file:
        trusted_ctf = pickle.load(file)  # trusted test fixture
    ctf = io.read_cryodrgn_ctf(formats / "ctf1.pkl")
    np.testing.assert_array_equal(ctf["defocus_u_in_angstroms"], trusted_ctf[:, 2])
    np.testing.assert_array_equal(ctf["phase_shift_in_degrees"], trusted_ctf[:, 8])
    assert set(ctf) >= set(io.CTF_FIELDS)
