"""Runs over several processes through `jax.distributed` (GitHub issue 20): `python -m atomicspi.infer`
started once per process with the `ATOMICSPI_*` environment variables. Two CPU processes of one
device each give the result of one process with two devices (the same split of every minibatch),
and only process 0 writes."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from atomicspi.infer import main

_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory, write_tiny_calpha_dataset):
    folder = tmp_path_factory.mktemp("distributed")
    write_tiny_calpha_dataset(folder, 16, config_overrides={"num_steps": 6, "batch_size": 8, "samples_per_particle": 3, "n_modes": 3})
    return folder


def _yaml(folder, output: str):
    import yaml

    config = yaml.safe_load((folder / "dataset.yaml").read_text())
    config["output"] = output
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _environment(host_devices: int, **variables: str) -> dict:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ATOMICSPI_") and name != "PYTHONHASHSEED"}
    return {**environment, **variables, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={host_devices}"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _infer(path, environment) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "atomicspi.infer", str(path), "--quiet"], cwd=path.parent, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return process.returncode, stderr


def test_two_processes_give_the_two_device_result_and_only_process_0_writes(dataset_folder):
    import arviz as az

    started = time.perf_counter()
    address = f"127.0.0.1:{_free_port()}"
    # Process 1 gets an output folder of its own (the output is not part of the run's configuration
    # hash), so that anything it wrote would show: it must stay absent.
    processes = [
        _infer(_yaml(dataset_folder, output), _environment(
            1, ATOMICSPI_COORDINATOR_ADDRESS=address, ATOMICSPI_NUM_PROCESSES="2", ATOMICSPI_PROCESS_ID=str(rank),
            PYTHONHASHSEED="0",
        ))
        for rank, output in enumerate(("two_processes", "two_processes_rank_1"))
    ]
    reference = _infer(_yaml(dataset_folder, "two_devices"), _environment(2))  # meanwhile, one process, two devices
    (status_0, stderr_0), (status_1, stderr_1) = (_finish(process) for process in processes)
    reference_status, reference_stderr = _finish(reference)
    print(f"2 processes and the 2-device reference took {time.perf_counter() - started:.0f} s together")
    assert status_0 == 0 and status_1 == 0, stderr_0[-3000:] + stderr_1[-3000:]
    assert reference_status == 0, reference_stderr[-3000:]
    assert "process 1 of 2: training done" in stderr_1
    assert not (dataset_folder / "two_processes_rank_1").exists()

    record = json.loads((dataset_folder / "two_processes" / "run.json").read_text())
    assert record["machine"]["process_count"] == 2 and len(record["machine"]["devices"]) == 2
    reference_record = json.loads((dataset_folder / "two_devices" / "run.json").read_text())
    assert reference_record["machine"]["process_count"] == 1 and len(reference_record["machine"]["devices"]) == 2
    assert (dataset_folder / "two_processes" / "checkpoint.npz").is_file()

    draws = {name: az.from_netcdf(str(dataset_folder / name / "posterior.nc")).posterior for name in ("two_processes", "two_devices")}
    a, b = (np.asarray(draws[name]["amplitudes"]) for name in ("two_processes", "two_devices"))
    # Same keys and the same rows of every minibatch on each device: only the gradient all-reduce
    # differs (gloo across processes, in-process otherwise), i.e. float32 reduction order at most.
    spread = np.std(b)
    print(f"max |two processes - two devices| = {np.max(np.abs(a - b)) / spread:.2e} of the draws' spread")
    assert np.max(np.abs(a - b)) < 1e-3 * spread
    # The reported ELBO too: it was off by 1-5 % (a different value on each process) when the processes'
    # hash seeds differed, numpyro then summing the ELBO's terms in a different order in each program.
    np.testing.assert_allclose(record["final_elbo"], reference_record["final_elbo"], rtol=1e-5)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"ATOMICSPI_NUM_PROCESSES": "2", "ATOMICSPI_PROCESS_ID": "0"}, "ATOMICSPI_COORDINATOR_ADDRESS: not set"),
        ({"ATOMICSPI_COORDINATOR_ADDRESS": "localhost", "ATOMICSPI_NUM_PROCESSES": "2", "ATOMICSPI_PROCESS_ID": "0"}, "is not host:port"),
        ({"ATOMICSPI_COORDINATOR_ADDRESS": "127.0.0.1:1234", "ATOMICSPI_NUM_PROCESSES": "two", "ATOMICSPI_PROCESS_ID": "0"}, "'two' is not an integer"),
        ({"ATOMICSPI_COORDINATOR_ADDRESS": "127.0.0.1:1234", "ATOMICSPI_NUM_PROCESSES": "0", "ATOMICSPI_PROCESS_ID": "0"}, "not a positive number"),
        ({"ATOMICSPI_COORDINATOR_ADDRESS": "127.0.0.1:1234", "ATOMICSPI_NUM_PROCESSES": "2", "ATOMICSPI_PROCESS_ID": "2"}, "2 is not in 0..1"),
        ({"ATOMICSPI_COORDINATOR_ADDRESS": "127.0.0.1:1234", "ATOMICSPI_NUM_PROCESSES": "2", "ATOMICSPI_PROCESS_ID": "1",
          "PYTHONHASHSEED": "random"}, "PYTHONHASHSEED: a multi-process run needs the same fixed hash seed"),
    ],
)
def test_bad_process_variables_are_one_line_errors_with_exit_status_2(tmp_path, monkeypatch, capsys, variables, message):
    for name in ("ATOMICSPI_COORDINATOR_ADDRESS", "ATOMICSPI_NUM_PROCESSES", "ATOMICSPI_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main([str(tmp_path / "dataset.yaml"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: environment: ") and message in error, error
    assert list(tmp_path.iterdir()) == []
