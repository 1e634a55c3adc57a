"""Checkpoints of a training state: written atomically, read without pickle.

A checkpoint is one `.npz` file holding the leaves of the state pytree (flattened with
`jax.tree_util`, in order, as `leaf_00000`, `leaf_00001`, ...), the ELBO history, and the metadata as a
JSON string; a JSON sidecar (`<name>.json`) repeats the metadata for people and tools. The file is
written to a temporary file in the same directory, flushed to disk, and moved over the old checkpoint
with `os.replace`, so a reader sees either the old checkpoint or the new one, never a part of one.
Restoring needs a template state of the same structure (initialise SVI on the first minibatch): its
tree structure is filled with the stored leaves after their number, shapes and dtypes are checked.
"""

import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import Float

from atomicspi._errors import InputError

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "checkpoint_metadata_path"]

FORMAT_VERSION = 1
_METADATA_KEY = "metadata_json"
_ELBO_KEY = "elbo_history"


class Checkpoint(NamedTuple):
    """A restored checkpoint.

    **Fields:**

    - `state`: the training state, with the structure of the template it was restored into.
    - `elbo_history`: the ELBO estimate of every step taken (NaN where a step was skipped).
    - `metadata`: the JSON metadata (`step`, `seed`, `config_hash`, `format_version`, and whatever the
        writer added).
    """

    state: Any
    elbo_history: Float[np.ndarray, " steps"]
    metadata: dict


def checkpoint_metadata_path(path: str | os.PathLike) -> pathlib.Path:
    """The JSON sidecar of the checkpoint at `path`: the same name with suffix `.json`."""
    return pathlib.Path(path).with_suffix(".json")


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaf_to_numpy(leaf) -> np.ndarray:
    if _is_key(leaf):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def _write_atomically(path: pathlib.Path, write) -> None:
    file_descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(file_descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary_name, path)
    except BaseException:
        pathlib.Path(temporary_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(
    path: str | os.PathLike,
    state,
    *,
    elbo_history: Float[np.ndarray, " steps"],
    metadata: Mapping[str, Any],
) -> None:
    """Write a checkpoint atomically (temporary file in the same directory, fsync, `os.replace`).

    **Arguments:**

    - `path`: the `.npz` file to write (its directory must exist); the sidecar goes to
        `checkpoint_metadata_path(path)`.
    - `state`: any pytree of arrays (a `TrainingState`).
    - `elbo_history`: one-dimensional float array, stored with the state.
    - `metadata`: JSON-serialisable dict (e.g. `step`, `seed`, `config_hash`).

    **Returns:**

    Nothing.
    """
    path = pathlib.Path(path)
    leaves = [_leaf_to_numpy(leaf) for leaf in jax.tree_util.tree_leaves(state)]
    full_metadata = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "leaves": [{"shape": list(leaf.shape), "dtype": leaf.dtype.str} for leaf in leaves],
    }
    metadata_json = json.dumps(full_metadata, sort_keys=True)
    arrays: dict[str, Any] = {f"leaf_{index:05d}": leaf for index, leaf in enumerate(leaves)}
    arrays[_ELBO_KEY] = np.asarray(elbo_history, dtype=np.float64)
    arrays[_METADATA_KEY] = np.array(metadata_json)
    _write_atomically(path, lambda stream: np.savez(stream, **arrays))
    _write_atomically(
        checkpoint_metadata_path(path),
        lambda stream: stream.write(json.dumps(full_metadata, indent=1, sort_keys=True).encode()),
    )


def load_checkpoint(path: str | os.PathLike, template_state) -> Checkpoint:
    """Read a checkpoint into the structure of `template_state`, checking every leaf's shape and dtype.

    **Arguments:**

    - `path`: the `.npz` file written by `save_checkpoint`.
    - `template_state`: a state of the same structure (e.g. `initialize_training` on the first
        minibatch); only its tree structure, shapes, dtypes and shardings are used.

    **Returns:**

    A `Checkpoint`. Raises `atomicspi.io.InputError` when the file is not a checkpoint or does not match
    the template (a different model, guide or optimizer).
    """
    path = pathlib.Path(path)
    template_leaves, treedef = jax.tree_util.tree_flatten(template_state)
    try:
        with np.load(path, allow_pickle=False) as stored:
            metadata = json.loads(str(stored[_METADATA_KEY]))
            elbo_history = np.asarray(stored[_ELBO_KEY])
            stored_leaves = [stored[f"leaf_{index:05d}"] for index in range(len(metadata["leaves"]))]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{path}: not a readable checkpoint ({error})") from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {metadata.get('format_version')} is not {FORMAT_VERSION}")
    if len(stored_leaves) != len(template_leaves):
        raise InputError(
            f"{path}: leaves: the checkpoint has {len(stored_leaves)} arrays but the model and guide "
            f"have {len(template_leaves)}; it was written for a different model, guide or optimizer"
        )
    restored = []
    for index, (stored_leaf, template_leaf) in enumerate(zip(stored_leaves, template_leaves)):
        expected = _leaf_to_numpy(template_leaf)
        if stored_leaf.shape != expected.shape or stored_leaf.dtype != expected.dtype:
            raise InputError(
                f"{path}: leaf_{index:05d}: stored {stored_leaf.dtype}{list(stored_leaf.shape)} but the "
                f"model and guide expect {expected.dtype}{list(expected.shape)}; the checkpoint was "
                f"written for a different model, guide or optimizer"
            )
        value = (
            jax.random.wrap_key_data(stored_leaf, impl=jax.random.key_impl(template_leaf))
            if _is_key(template_leaf)
            else stored_leaf
        )
        restored.append(jax.device_put(value, getattr(template_leaf, "sharding", None)))
    return Checkpoint(
        state=jax.tree_util.tree_unflatten(treedef, restored),
        elbo_history=elbo_history,
        metadata=metadata,
    )
