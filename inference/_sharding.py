"""Data parallelism over devices with `jax.sharding`: minibatches split along a `batch` mesh axis,
parameters and optimizer state replicated; `jax.jit` inserts the gradient all-reduce."""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["make_batch_mesh", "shard_batches", "replicate"]

BATCH_AXIS = "batch"


def make_batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional device mesh whose axis is named `batch`.

    **Arguments:**

    - `devices`: the devices to split minibatches over; all of `jax.devices()` when `None`.

    **Returns:**

    A `jax.sharding.Mesh` with axis names `("batch",)`.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def shard_batches(
    stacked_batches: Mapping[str, np.ndarray | jax.Array], mesh: Mesh
) -> dict[str, jax.Array]:
    """Place stacked minibatches (arrays of shape (steps, B, ...)) on the mesh, split along B.

    **Arguments:**

    - `stacked_batches`: dict of arrays whose second axis is the batch axis.
    - `mesh`: from `make_batch_mesh`; B must be divisible by its number of devices.

    **Returns:**

    The same dict with every array a `jax.Array` sharded as `PartitionSpec(None, "batch")`.
    """
    device_count = mesh.shape[BATCH_AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))
    placed = {}
    for name, array in stacked_batches.items():
        if np.ndim(array) < 2 or np.shape(array)[1] % device_count:
            raise ValueError(
                f"minibatch field {name!r} of shape {np.shape(array)} cannot be split over "
                f"{device_count} devices: its batch axis must be divisible by the device count"
            )
        placed[name] = jax.device_put(array, sharding)
    return placed


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copy every array of a pytree (parameters, optimizer state) onto all devices of the mesh.

    **Arguments:**

    - `tree`: any pytree of arrays.
    - `mesh`: from `make_batch_mesh`.

    **Returns:**

    The pytree with every leaf sharded as `PartitionSpec()` (replicated).
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
