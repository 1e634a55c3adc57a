"""`atomicspi.api`, the public Python interface to simulating, fitting and reading outputs (GitHub issue 21)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import atomicspi.api as api
from atomicspi.io import InputError


def test_every_public_name_exists_and_is_documented():
    for name in api.__all__:
        value = getattr(api, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"atomicspi.api.{name} has no docstring"
        assert name in api.__doc__, f"the module docstring does not mention {name}"


def test_importing_the_api_loads_neither_the_models_nor_the_inference_engine():
    code = textwrap.dedent(
        """
        import sys
        import atomicspi.api
        heavy = ["atomicspi.models", "atomicspi.inference", "atomicspi._pipeline", "numpyro"]
        print(" ".join(name for name in heavy if name in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []


@pytest.mark.parametrize("load", [api.load_posterior, api.load_ensemble, api.load_run_record, api.load_truth])
def test_loaders_name_the_missing_file(load, tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load(tmp_path)


def test_load_truth_reads_what_write_simulated_dataset_writes(tmp_path):
    np.savez(tmp_path / "truth.npz", calpha_positions_in_angstroms=np.ones((2, 3, 3)), interpolation_fraction=np.arange(2.0))
    truth = api.load_truth(tmp_path)
    assert sorted(truth) == ["calpha_positions_in_angstroms", "interpolation_fraction"]
    np.testing.assert_array_equal(truth["interpolation_fraction"], [0.0, 1.0])


def test_run_inference_checks_the_yaml_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        api.run_inference(tmp_path / "missing.yaml")
