"""The model-independent SVI engine of `atomicspi.inference`: minibatch plate scaling, convergence on a
linear-Gaussian model with a known posterior, the NaN/Inf guard, atomic checkpoints, SIGKILL/SIGTERM
and resume of a real training subprocess, and data parallelism over two (CPU) devices."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import _toy_training as toy
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import pytest
import scipy.stats

from atomicspi.inference import (
    NonFiniteTrainingError,
    TrainingInterrupted,
    checkpoint_metadata_path,
    epoch_minibatch_indices,
    fit,
    initialize_training,
    load_checkpoint,
    make_svi,
    make_training_step,
    save_checkpoint,
)
from atomicspi.io import InputError

TESTS = pathlib.Path(__file__).resolve().parent
TOY_SCRIPT = TESTS / "_toy_training.py"
KILL_RUN_STEPS = 200


def _toy_svi(optimizer=None):
    """The toy SVI of `toy.train` (sharing its compiled step), or one with another optimizer."""
    if optimizer is None:
        return toy.make_toy_svi(0.02)
    weights, _ = toy.make_problem()
    return make_svi(
        toy.model, toy.guide, optimizer, num_particles=2, weights=jnp.asarray(weights), n_particles=toy.N_PARTICLES
    )


def _toy_batch(indices):
    _, stack = toy.make_problem()
    return {"images": stack[np.asarray(indices)], "indices": np.asarray(indices)}


def _stacked(batch):
    return {name: jnp.asarray(value)[None] for name, value in batch.items()}


def test_particle_plate_takes_the_batch_indices_and_scales_by_n_particles_over_batch_size():
    weights, _ = toy.make_problem()
    svi = _toy_svi()
    indices = np.array([3, 17, 40, 41, 60])
    batch = _toy_batch(indices)
    latent = np.random.default_rng(0).normal(size=(len(indices), toy.LATENT_DIMENSION)).astype(np.float32)
    conditioned = numpyro.handlers.substitute(svi.model, data={"latent": latent})
    trace = numpyro.handlers.trace(numpyro.handlers.seed(conditioned, 0)).get_trace(
        **batch, **svi.static_kwargs
    )
    np.testing.assert_array_equal(trace["particle"]["value"], indices)
    log_density, _ = numpyro.infer.util.log_density(conditioned, (), {**batch, **svi.static_kwargs}, {})
    expected = (toy.N_PARTICLES / len(indices)) * (
        scipy.stats.norm.logpdf(latent.astype(np.float64)).sum()
        + scipy.stats.norm.logpdf(
            batch["images"], latent.astype(np.float64) @ weights.T, toy.NOISE_STANDARD_DEVIATION
        ).sum()
    )
    np.testing.assert_allclose(float(log_density), expected, rtol=1e-5)


def test_per_particle_parameters_are_subsampled_at_the_batch_indices():
    weights, _ = toy.make_problem()

    def local_guide(*, indices, images, weights, n_particles):
        with numpyro.plate("particle", n_particles, subsample_size=images.shape[0]):
            loc = numpyro.param("local_loc", jnp.zeros((n_particles, toy.LATENT_DIMENSION)), event_dim=1)
            numpyro.sample("latent", numpyro.distributions.Normal(loc, 0.3).to_event(1))

    svi = make_svi(
        toy.model, local_guide, optax.adam(0.1), weights=jnp.asarray(weights), n_particles=toy.N_PARTICLES
    )
    indices = np.array([1, 5, 6, 30, 31, 50, 62, 63])
    batch = _toy_batch(indices)
    state = initialize_training(svi, key=jax.random.PRNGKey(0), batch=batch)
    state, _ = make_training_step(svi)(state, _stacked(batch))
    moved = np.any(np.asarray(svi.get_params(state.svi_state)["local_loc"]) != 0, axis=1)
    np.testing.assert_array_equal(np.flatnonzero(moved), indices)


def test_fit_converges_to_the_exact_posterior_mean_and_mean_field_scale():
    weights, images = toy.make_problem()
    result = toy.train(None, 800, seed=0, steps_per_call=20, checkpoint_every=20)
    exact_mean = toy.exact_posterior_mean(weights, images)
    # A mean-field Gaussian fit to a Gaussian posterior: exact mean, standard deviations 1/sqrt(diag(precision)).
    precision = np.eye(toy.LATENT_DIMENSION) + weights.T.astype(np.float64) @ weights / toy.NOISE_STANDARD_DEVIATION**2
    error = np.abs(toy.encoder_means(result.parameters, images) - exact_mean)
    assert error.max() < 0.1, error.max()  # posterior standard deviations are 0.26 and 0.38
    assert np.abs(exact_mean).max() > 1.5  # the data carry information: the prior mean 0 is far off
    np.testing.assert_allclose(result.parameters["scale"], 1 / np.sqrt(np.diag(precision)), rtol=0.05)
    assert np.all(np.isfinite(result.elbo_history)) and len(result.elbo_history) == 800
    assert result.elbo_history[-50:].mean() > result.elbo_history[:50].mean() + 100


def test_scanned_steps_match_single_steps_and_runs_are_deterministic():
    single = toy.flat_parameters(toy.train(None, 60, seed=3, steps_per_call=1).parameters)
    scanned_result = toy.train(None, 60, seed=3, steps_per_call=20)
    again = toy.flat_parameters(toy.train(None, 60, seed=3, steps_per_call=20).parameters)
    other_seed = toy.flat_parameters(toy.train(None, 60, seed=4, steps_per_call=20).parameters)
    scanned = toy.flat_parameters(scanned_result.parameters)
    assert int(scanned_result.state.step) == 60
    for name in single:
        np.testing.assert_allclose(scanned[name], single[name], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(again[name], scanned[name])
    assert not np.allclose(other_seed["scale/0"], scanned["scale/0"], rtol=1e-3)


def test_a_non_finite_batch_is_skipped_and_counted():
    svi = _toy_svi()
    step = make_training_step(svi)
    good = _toy_batch(np.arange(16))
    state = initialize_training(svi, key=jax.random.PRNGKey(0), batch=good)
    state, _ = step(state, _stacked(good))
    before = svi.get_params(state.svi_state)
    key_before = np.asarray(state.svi_state.rng_key)
    poisoned = dict(good, images=good["images"].copy())
    poisoned["images"][4, 2] = np.nan
    exploding = dict(good, images=good["images"] * np.float32(1e30))  # finite data, infinite loss
    for count, bad in enumerate([poisoned, exploding], start=1):
        state, output = step(state, _stacked(bad))
        assert bool(output.skipped[0]) and not np.isfinite(output.losses[0])
        assert (int(state.step), int(state.skipped_steps), int(state.consecutive_skipped_steps)) == (
            1 + count,
            count,
            count,
        )
        after = svi.get_params(state.svi_state)
        for leaf_before, leaf_after in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
            np.testing.assert_array_equal(leaf_after, leaf_before)
    assert not np.array_equal(np.asarray(state.svi_state.rng_key), key_before)
    state, output = step(state, _stacked(good))
    assert not bool(output.skipped[0])
    assert (int(state.skipped_steps), int(state.consecutive_skipped_steps)) == (2, 0)
    changed = svi.get_params(state.svi_state)
    assert not np.array_equal(changed["scale"], before["scale"])


def test_fit_stops_after_too_many_consecutive_non_finite_steps():
    svi = _toy_svi()

    def batches(step):
        batch = _toy_batch(np.arange(16 * (step % 4), 16 * (step % 4) + 16))
        if step >= 3:
            batch["images"][0, 0] = np.nan
        return batch

    with pytest.raises(NonFiniteTrainingError, match="4 consecutive steps up to step 7"):
        fit(svi, batches, 50, seed=0, max_consecutive_skipped_steps=4, progress=False)


def test_epoch_minibatches_are_permutations_determined_by_seed_and_step():
    epoch = [epoch_minibatch_indices(10, 3, seed=5, step=step) for step in range(3)]
    assert len(set(np.concatenate(epoch))) == 9  # 3 steps per epoch, one particle left out
    np.testing.assert_array_equal(epoch_minibatch_indices(10, 3, seed=5, step=1), epoch[1])
    next_epoch = np.concatenate([epoch_minibatch_indices(10, 3, seed=5, step=step) for step in range(3, 6)])
    assert not np.array_equal(next_epoch, np.concatenate(epoch))
    assert not np.array_equal(
        np.concatenate([epoch_minibatch_indices(10, 3, seed=6, step=step) for step in range(3)]),
        np.concatenate(epoch),
    )


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    svi = _toy_svi()
    batch = _toy_batch(np.arange(16))
    state = initialize_training(svi, key=jax.random.PRNGKey(0), batch=batch)
    state, _ = make_training_step(svi)(state, _stacked(batch))
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, state, elbo_history=np.array([-3.0, np.nan]), metadata={"step": 1, "seed": 0})
    template = initialize_training(svi, key=jax.random.PRNGKey(99), batch=batch)
    restored = load_checkpoint(path, template)
    assert jax.tree_util.tree_structure(restored.state) == jax.tree_util.tree_structure(state)
    for stored, original in zip(jax.tree_util.tree_leaves(restored.state), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(stored, original)
        assert stored.dtype == original.dtype
    np.testing.assert_array_equal(restored.elbo_history, [-3.0, np.nan])
    assert restored.metadata["step"] == 1
    assert json.loads((tmp_path / "checkpoint.json").read_text())["seed"] == 0

    other_optimizer = initialize_training(_toy_svi(optax.sgd(0.1)), key=jax.random.PRNGKey(0), batch=batch)
    with pytest.raises(InputError, match="checkpoint.npz: leaves"):
        load_checkpoint(path, other_optimizer)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    widened = [jnp.zeros(leaf.shape + (2,), leaf.dtype) if leaf.ndim == 2 else leaf for leaf in leaves]
    with pytest.raises(InputError, match=r"checkpoint.npz: leaf_\d+: stored float32\[2, 6\]"):
        load_checkpoint(path, jax.tree_util.tree_unflatten(treedef, widened))
    (tmp_path / "garbage.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.npz: not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.npz", template)


def test_checkpoint_stores_typed_prng_keys_as_key_data(tmp_path):
    state = {"key": jax.random.split(jax.random.key(3))[1], "count": jnp.int32(4)}
    save_checkpoint(tmp_path / "keys.npz", state, elbo_history=np.zeros(0), metadata={})
    template = {"key": jax.random.key(0), "count": jnp.int32(0)}
    restored = load_checkpoint(tmp_path / "keys.npz", template).state
    np.testing.assert_array_equal(jax.random.normal(restored["key"], (3,)), jax.random.normal(state["key"], (3,)))
    assert int(restored["count"]) == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    first = {"weights": jnp.arange(4.0)}
    save_checkpoint(path, first, elbo_history=np.zeros(1), metadata={"step": 1})
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def recording_fsync(file_descriptor):
        events.append(("fsync",))
        real_fsync(file_descriptor)

    def recording_replace(source, target):
        # at the moment of the rename the temporary file already holds the whole new file
        if pathlib.Path(target).suffix == ".npz":
            with np.load(source) as complete:
                assert len(complete.files) == 3  # one leaf, the ELBO history, the metadata
                np.testing.assert_array_equal(complete["leaf_00000"], np.arange(4.0) + 1)
        else:
            assert json.loads(pathlib.Path(source).read_text())["step"] == 2
        events.append(("replace", pathlib.Path(source), pathlib.Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save_checkpoint(path, {"weights": jnp.arange(4.0) + 1}, elbo_history=np.zeros(2), metadata={"step": 2})
    replacements = [event[1:] for event in events if event[0] == "replace"]
    # both files (checkpoint, then its sidecar) arrive by os.replace ...
    assert [target for _, target in replacements] == [path, checkpoint_metadata_path(path)]
    for source, target in replacements:  # ... from a temporary file in the same directory, now gone
        assert source.parent == target.parent == tmp_path
        assert source.name.startswith(f".{target.name}.") and not source.exists()
    for index, event in enumerate(events):  # each written to disk (fsync) before its rename
        if event[0] == "replace":
            assert events[index - 1] == ("fsync",), events

    def failing_fsync(file_descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"weights": jnp.arange(4.0) + 2}, elbo_history=np.zeros(3), metadata={"step": 3})
    restored = load_checkpoint(path, first)  # the previous checkpoint, whole
    np.testing.assert_array_equal(restored.state["weights"], np.arange(4.0) + 1)
    assert restored.metadata["step"] == 2
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.npz"]

    # A crash in the middle of writing the data (half the archive's bytes out, then SIGINT's
    # KeyboardInterrupt, which is not an Exception): whatever file was being written, the
    # checkpoint on disk is still the previous one, whole, and no temporary file is left.
    monkeypatch.setattr(os, "fsync", real_fsync)
    real_savez = np.savez

    def interrupted_savez(stream, **arrays):
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"weights": jnp.arange(4.0) + 3}, elbo_history=np.zeros(4), metadata={"step": 4})
    restored = load_checkpoint(path, first)
    np.testing.assert_array_equal(restored.state["weights"], np.arange(4.0) + 1)
    assert restored.metadata["step"] == 2
    assert json.loads(checkpoint_metadata_path(path).read_text())["step"] == 2
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.npz"]


def test_resume_with_another_seed_is_refused(tmp_path):
    toy.train(tmp_path, 20, seed=0)
    with pytest.raises(InputError, match="seed: the checkpoint has 0, this run 1"):
        toy.train(tmp_path, 40, seed=1, resume=True)


@pytest.fixture(scope="module")
def uninterrupted_parameters(tmp_path_factory):
    result = toy.train(tmp_path_factory.mktemp("uninterrupted"), KILL_RUN_STEPS, seed=7)
    return toy.flat_parameters(result.parameters), result.elbo_history


@pytest.fixture(scope="module")
def subprocess_environment(tmp_path_factory):
    """CPU only, and a persistent compilation cache shared by the training subprocesses of this module
    (the resumed run loads what the first run compiled)."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("compilation_cache")),
    }


def test_sigint_in_process_checkpoints_raises_and_resumes_to_the_uninterrupted_result(
    tmp_path, uninterrupted_parameters
):
    def interrupt_at_step_50(step):
        if step == 50:
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as interrupted:
        toy.train(tmp_path, KILL_RUN_STEPS, seed=7, checkpoint_every=1000, before_batch=interrupt_at_step_50)
    assert interrupted.value.exit_status == 130
    step = json.loads((tmp_path / "checkpoint.json").read_text())["step"]
    assert step == interrupted.value.step and 50 <= step < KILL_RUN_STEPS
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    resumed = toy.train(tmp_path, KILL_RUN_STEPS, seed=7, resume=True)
    reference, reference_elbo = uninterrupted_parameters
    final = toy.flat_parameters(resumed.parameters)
    for name in reference:
        np.testing.assert_allclose(final[name], reference[name], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed.elbo_history, reference_elbo, rtol=1e-5)

    with pytest.raises(KeyboardInterrupt, match="no checkpoint_path, nothing saved"):
        toy.train(None, KILL_RUN_STEPS, seed=7, before_batch=interrupt_at_step_50)


def _start_training(directory: pathlib.Path, environment, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(TOY_SCRIPT), str(directory), "--steps", str(KILL_RUN_STEPS), "--seed", "7"]
    return subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
    )


def _wait_for(path: pathlib.Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended before {path.name} appeared: {process.communicate()[1].decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def _resume_and_compare(directory: pathlib.Path, environment, uninterrupted_parameters) -> None:
    resumed = subprocess.run(
        [sys.executable, str(TOY_SCRIPT), str(directory), "--steps", str(KILL_RUN_STEPS), "--seed", "7", "--resume"],
        capture_output=True,
        env=environment,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    reference, reference_elbo = uninterrupted_parameters
    with np.load(directory / "parameters.npz", allow_pickle=False) as final:
        assert sorted(final.files) == sorted(reference)
        for name in reference:
            np.testing.assert_allclose(final[name], reference[name], rtol=1e-5, atol=1e-7)
    with np.load(directory / "checkpoint.npz", allow_pickle=False) as checkpoint:
        np.testing.assert_allclose(checkpoint["elbo_history"], reference_elbo, rtol=1e-5)


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(
    tmp_path, subprocess_environment, uninterrupted_parameters
):
    process = _start_training(
        tmp_path, subprocess_environment, "--checkpoint-every", "20", "--seconds-per-step", "0.01"
    )
    _wait_for(tmp_path / "checkpoint.json", process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    step = json.loads((tmp_path / "checkpoint.json").read_text())["step"]
    assert 0 < step < KILL_RUN_STEPS and not (tmp_path / "parameters.npz").exists()
    _resume_and_compare(tmp_path, subprocess_environment, uninterrupted_parameters)


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path, subprocess_environment, uninterrupted_parameters):
    started = tmp_path / "started"
    process = _start_training(
        tmp_path,
        subprocess_environment,
        *("--checkpoint-every", "1000", "--seconds-per-step", "0.01", "--started-file", str(started)),
    )
    _wait_for(started, process)
    assert not (tmp_path / "checkpoint.npz").exists()  # no periodic checkpoint before the signal
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr.decode()
    assert "SIGTERM" in stderr.decode()
    step = json.loads((tmp_path / "checkpoint.json").read_text())["step"]
    assert 2 <= step < KILL_RUN_STEPS
    _resume_and_compare(tmp_path, subprocess_environment, uninterrupted_parameters)


SHARDING_SCRIPT = """
import sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
import _toy_training as toy
from atomicspi.inference import make_batch_mesh, shard_batches
assert len(jax.devices()) == 2, jax.devices()
mesh = make_batch_mesh()
placed = shard_batches({{"images": np.zeros((3, 16, 6), np.float32)}}, mesh)["images"]
assert [shard.data.shape for shard in placed.addressable_shards] == [(3, 8, 6), (3, 8, 6)]
sharded = toy.train(None, 60, seed=2, steps_per_call=10, mesh=mesh)
single = toy.train(None, 60, seed=2, steps_per_call=10)
assert len(sharded.state.svi_state.rng_key.sharding.device_set) == 2
np.savez({output!r}, **{{"sharded/" + k: v for k, v in toy.flat_parameters(sharded.parameters).items()}},
         **{{"single/" + k: v for k, v in toy.flat_parameters(single.parameters).items()}})
"""


def test_data_parallel_run_over_two_devices_matches_the_single_device_run(tmp_path):
    output = tmp_path / "parameters.npz"
    environment = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
    }
    completed = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT.format(tests=str(TESTS), output=str(output))],
        capture_output=True,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    with np.load(output, allow_pickle=False) as parameters:
        names = [name.removeprefix("single/") for name in parameters.files if name.startswith("single/")]
        assert names
        for name in names:
            np.testing.assert_allclose(
                parameters["sharded/" + name], parameters["single/" + name], rtol=1e-5, atol=1e-6
            )
