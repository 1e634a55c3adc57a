"""Minibatches determined by (seed, step) alone, so that a resumed run sees the same data in the same order."""

from collections.abc import Callable, Mapping

import numpy as np
from jaxtyping import Int

__all__ = ["epoch_minibatch_indices", "make_epoch_minibatches"]


def epoch_minibatch_indices(n_particles: int, batch_size: int, seed: int, step: int) -> Int[np.ndarray, " batch_size"]:
    """The particle indices of the minibatch of `step`.

    Epoch e = step // (n_particles // batch_size) visits the particles in the order of the permutation
    `np.random.default_rng([seed, e]).permutation(n_particles)`, in consecutive slices of `batch_size`;
    the last `n_particles % batch_size` particles of each permutation are left out of that epoch.

    **Arguments:**

    - `n_particles`: the size of the stack.
    - `batch_size`: the minibatch size B (at most `n_particles`).
    - `seed`: the data-order seed.
    - `step`: the training step.

    **Returns:**

    Sorted int64 array of shape (B,) (sorted so that reads from a file on disk go forward).
    """
    if not 0 < batch_size <= n_particles:
        raise ValueError(f"batch_size must be in [1, {n_particles}], got {batch_size}")
    steps_per_epoch = n_particles // batch_size
    epoch, position = divmod(step, steps_per_epoch)
    permutation = np.random.default_rng([seed, epoch]).permutation(n_particles)
    return np.sort(permutation[position * batch_size : (position + 1) * batch_size])


def make_epoch_minibatches(
    read_particles: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    n_particles: int,
    batch_size: int,
    seed: int,
    *,
    rows: slice = slice(None),
) -> Callable[[int], dict[str, np.ndarray]]:
    """A `batches(step) -> dict` function for `fit`, streaming epochs of shuffled minibatches.

    **Arguments:**

    - `read_particles`: reads the particles at the given (sorted) indices, e.g. from a memory-mapped
        stack and its CTF table: returns a dict of arrays with leading axis of length B.
    - `n_particles`, `batch_size`, `seed`: as in `epoch_minibatch_indices`.
    - `rows`: the rows of each minibatch to read (keyword only); all of them by default, this
        process's share in a run over several processes (`process_batch_rows`).

    **Returns:**

    A function of the step returning `read_particles(indices)` with `indices` added as field `indices`.
    """

    def batches(step: int) -> dict[str, np.ndarray]:
        indices = epoch_minibatch_indices(n_particles, batch_size, seed, step)[rows]
        return {**read_particles(indices), "indices": indices}

    return batches
