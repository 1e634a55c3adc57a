"""The training loop: SVI steps on streamed minibatches, a progress bar, atomic checkpoints every N
steps and on SIGINT/SIGTERM, resuming, and data parallelism over a device mesh (of one process or
of several, `jax.distributed`)."""

import hashlib
import json
import math
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Float
from numpyro.infer import SVI

from atomicspi._errors import InputError

from ._checkpoint import load_checkpoint, save_checkpoint
from ._interrupts import TrainingInterrupted, interrupt_on_signals
from ._progress import TrainingProgress
from ._sharding import replicate, shard_batches
from ._svi import NonFiniteTrainingError, TrainingState, initialize_training, make_training_step

__all__ = ["FitResult", "fit", "configuration_hash"]


class FitResult(NamedTuple):
    """The outcome of `fit`.

    **Fields:**

    - `state`: the final `TrainingState`.
    - `parameters`: the constrained parameters of the model and guide (`svi.get_params`).
    - `elbo_history`: the ELBO estimate of every step from step 0 (NaN where a step was skipped),
        including the steps before a resume.
    - `images_per_second`: the training throughput of this call, compilation (the first call) excluded.
    """

    state: TrainingState
    parameters: dict
    elbo_history: Float[np.ndarray, " steps"]
    images_per_second: float


def configuration_hash(configuration: Mapping[str, Any] | None) -> str | None:
    """SHA-256 of the canonical JSON of a configuration dict (`None` for `None`): a checkpoint only
    resumes a run with the same configuration."""
    if configuration is None:
        return None
    text = json.dumps(configuration, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _stack(batch_list: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([np.asarray(batch[name]) for batch in batch_list]) for name in batch_list[0]}


def _check_processes_run_one_program(training_step: Any, state: TrainingState, batches: dict[str, jax.Array]) -> None:
    """Raise on every process when the processes of a multi-process run traced different training
    steps: multi-controller JAX pairs up their collectives blindly, so different programs give
    wrong sums, not errors. Python's hash seed is the usual cause (numpyro's `Trace_ELBO` sums the
    ELBO's terms in the order of a `set` of site names)."""
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(training_step.lower(state, batches).as_text().encode()).digest()  # a `jax.jit` function
    digests = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest, dtype=np.uint8)))
    if not np.all(digests == digests[0]):
        raise RuntimeError(
            "the processes traced different training steps: start every process with the same PYTHONHASHSEED "
            "(e.g. PYTHONHASHSEED=0), the same inputs and the same package versions"
        )


def fit(
    svi: SVI,
    batches: Callable[[int], Mapping[str, np.ndarray]],
    num_steps: int,
    *,
    seed: int,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    steps_per_call: int = 1,
    max_consecutive_skipped_steps: int = 10,
    mesh: Mesh | None = None,
    configuration: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train with SVI for `num_steps` steps (in total, counting the steps of a resumed run).

    Deterministic for a given `seed` and `batches`: the parameters are initialised on `batches(0)` with
    PRNG key `jax.random.PRNGKey(seed)`, and step s trains on `batches(s)`; stopping and resuming (at
    any checkpoint) gives the same result as an uninterrupted run, to float tolerance.

    **Arguments:**

    - `svi`: from `make_svi`.
    - `batches`: `batches(step)` returns the minibatch of that step: a dict of arrays of leading
        length B (fixed), including `indices`; it must depend on the step (and fixed settings) alone,
        e.g. `make_epoch_minibatches`. The next minibatches are read while the device computes. With
        a mesh over several processes, each process's `batches` gives only its rows of the
        minibatch (`process_batch_rows`) and B counts the rows of all processes.
    - `num_steps`: the step to stop at.
    - `seed`: the PRNG seed of the initialisation and of the Monte Carlo ELBO estimates.
    - `checkpoint_path`: the `.npz` checkpoint file (its directory is created); `None` for none.
        With several processes only process 0 writes it, and every process reads it to resume (from
        a filesystem they share).
    - `checkpoint_every`: write a checkpoint every this many steps (a multiple of `steps_per_call`),
        at the end, and when SIGINT or SIGTERM arrives (at the next step boundary, after which
        `TrainingInterrupted` is raised; its `exit_status` is 130 or 143).
    - `resume`: continue from `checkpoint_path` if it exists (a fresh start otherwise); the checkpoint
        must have been written by the same model, guide, optimizer, seed and `configuration`.
    - `steps_per_call`: SVI steps per jit-compiled call (scanned with `jax.lax.scan`).
    - `max_consecutive_skipped_steps`: raise `NonFiniteTrainingError` when this many consecutive steps
        had a non-finite loss or gradient (each is skipped and counted in `state.skipped_steps`).
    - `mesh`: a device mesh with a `batch` axis (`make_batch_mesh`) for data parallelism: minibatches
        are split over its devices, parameters replicated; its devices may belong to several
        processes (every process calls `fit` alike). `None` for the default device.
    - `configuration`: JSON-serialisable run settings whose hash is stored in the checkpoint.
    - `progress`: show a progress bar on stderr (ELBO, images/s, time left).

    **Returns:**

    A `FitResult` (with a mesh over several processes, its `state` and `parameters` are global
    arrays replicated on every device: `jax.device_get` them for use in one process).
    """
    if steps_per_call < 1 or checkpoint_every < 1 or checkpoint_every % steps_per_call:
        raise ValueError(
            f"checkpoint_every ({checkpoint_every}) must be a positive multiple of steps_per_call "
            f"({steps_per_call})"
        )
    config_hash = configuration_hash(configuration)
    checkpoint_path = None if checkpoint_path is None else pathlib.Path(checkpoint_path)
    writes_checkpoints = jax.process_index() == 0

    def place(stacked: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return shard_batches(stacked, mesh) if mesh is not None else jax.device_put(stacked)

    first_batch = batches(0)
    initial_batch = {name: stacked[0] for name, stacked in place(_stack([first_batch])).items()}
    state = initialize_training(svi, key=jax.random.PRNGKey(seed), batch=initial_batch)
    if mesh is not None:
        state = replicate(state, mesh)
    elbo_history: list[float] = []
    resuming = resume and checkpoint_path is not None and checkpoint_path.exists()
    if resume and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.assert_equal(
            np.int32(resuming), f"{checkpoint_path} exists for some processes only: it must be on a filesystem they share"
        )
    if resuming and checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path, state)
        for field, expected in (("seed", seed), ("config_hash", config_hash)):
            if checkpoint.metadata.get(field) != expected:
                raise InputError(
                    f"{checkpoint_path}: {field}: the checkpoint has {checkpoint.metadata.get(field)!r}, "
                    f"this run {expected!r}; resume with the settings it was written with"
                )
        state = checkpoint.state
        elbo_history = [float(value) for value in checkpoint.elbo_history]
    if checkpoint_path is not None and writes_checkpoints:
        checkpoint_path.parent.mkdir(parents=True, exist_ok=True)

    def write_checkpoint(path: pathlib.Path, state: TrainingState) -> None:
        if not writes_checkpoints:
            return
        save_checkpoint(
            path,
            state,
            elbo_history=np.asarray(elbo_history),
            metadata={
                "step": int(state.step),
                "seed": seed,
                "config_hash": config_hash,
                "skipped_steps": int(state.skipped_steps),
                "steps_per_call": steps_per_call,
            },
        )

    def read_call(step: int) -> dict[str, jax.Array] | None:
        count = min(steps_per_call, num_steps - step)
        return place(_stack([batches(step + offset) for offset in range(count)])) if count > 0 else None

    training_step = make_training_step(svi)
    step = int(state.step)
    batch_size = int(np.shape(initial_batch["indices"])[0])  # of all processes
    bar = TrainingProgress(num_steps, step, batch_size, enabled=progress)
    try:
        with interrupt_on_signals() as interrupt:
            next_batches = read_call(step)
            if mesh is not None and next_batches is not None and not next(iter(next_batches.values())).is_fully_addressable:
                _check_processes_run_one_program(training_step, state, next_batches)
            while next_batches is not None:
                state, output = training_step(state, next_batches)
                count = int(np.shape(next(iter(next_batches.values())))[0])
                next_batches = read_call(step + count)
                losses = np.asarray(output.losses)
                skipped = np.asarray(output.skipped)
                step += count
                elbos = [math.nan if skip else -float(loss) for loss, skip in zip(losses, skipped)]
                elbo_history.extend(elbos)
                bar.update(count, elbos, int(state.skipped_steps))
                if int(state.consecutive_skipped_steps) >= max_consecutive_skipped_steps:
                    raise NonFiniteTrainingError(
                        f"{int(state.consecutive_skipped_steps)} consecutive steps up to step {step} had a "
                        f"non-finite loss or gradient (NaN or Inf in the data, or a diverging optimizer: "
                        f"lower the learning rate)"
                    )
                if checkpoint_path is not None and (
                    step % checkpoint_every == 0 or step == num_steps or interrupt.signal_number is not None
                ):
                    write_checkpoint(checkpoint_path, state)
                if interrupt.signal_number is not None:
                    if checkpoint_path is None:
                        raise KeyboardInterrupt(f"stopped at step {step}; no checkpoint_path, nothing saved")
                    raise TrainingInterrupted(interrupt.signal_number, step)
    finally:
        bar.close()
    return FitResult(
        state=state,
        parameters=svi.get_params(state.svi_state),
        elbo_history=np.asarray(elbo_history),
        images_per_second=bar.images_per_second,
    )
