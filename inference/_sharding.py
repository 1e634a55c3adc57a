"""Data parallelism over devices with `jax.sharding`: minibatches split along a `batch` mesh axis,
parameters and optimizer state replicated; `jax.jit` inserts the gradient all-reduce.

A mesh may span the devices of several processes (`jax.distributed`): each process then holds and
reads only its rows of every minibatch (`process_batch_rows`), which `shard_batches` assembles into
the global arrays with `jax.make_array_from_process_local_data`."""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["make_batch_mesh", "process_batch_rows", "shard_batches", "replicate"]

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


def process_batch_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a minibatch that this process's devices of the mesh hold.

    **Arguments:**

    - `mesh`: from `make_batch_mesh`.
    - `batch_size`: the minibatch size B over all processes (divisible by the mesh's device count).

    **Returns:**

    A `slice` of `range(B)`: all of it for a mesh of this process's devices only, else the
    contiguous block that `shard_batches` expects this process to give.
    """
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    indices = sharding.addressable_devices_indices_map((batch_size,)).values()
    blocks = sorted(index[0].indices(batch_size)[:2] for index in indices if index is not None)
    if not blocks or any(previous[1] != following[0] for previous, following in zip(blocks, blocks[1:])):
        raise ValueError(f"this process's devices hold the rows {blocks} of the minibatch, not one contiguous block")
    return slice(blocks[0][0], blocks[-1][1])


def shard_batches(
    stacked_batches: Mapping[str, np.ndarray | jax.Array], mesh: Mesh
) -> dict[str, jax.Array]:
    """Place stacked minibatches (arrays of shape (steps, B, ...)) on the mesh, split along B.

    **Arguments:**

    - `stacked_batches`: dict of arrays whose second axis is the batch axis. For a mesh that spans
        several processes, each process gives only its rows of the minibatches
        (`process_batch_rows`), and B counts the rows of all processes.
    - `mesh`: from `make_batch_mesh`; B must be divisible by its number of devices.

    **Returns:**

    The same dict with every array a `jax.Array` of the global shape, sharded as
    `PartitionSpec(None, "batch")`.
    """
    device_count = mesh.shape[BATCH_AXIS]
    sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))
    processes_share = device_count // len(sharding.addressable_devices)  # 1 unless the mesh spans processes
    placed = {}
    for name, array in stacked_batches.items():
        shape = np.shape(array)
        if len(shape) < 2 or (shape[1] * processes_share) % device_count:
            raise ValueError(
                f"minibatch field {name!r} of shape {shape} cannot be split over "
                f"{device_count} devices: its batch axis must be divisible by the device count"
                + (f" ({processes_share} processes, each giving its own rows)" if processes_share > 1 else "")
            )
        if sharding.is_fully_addressable:
            placed[name] = jax.device_put(array, sharding)
        else:
            global_shape = (shape[0], shape[1] * processes_share, *shape[2:])
            placed[name] = jax.make_array_from_process_local_data(sharding, np.asarray(array), global_shape)
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
