"""Minibatches as the training loop and the posterior passes stream them: flat dicts of float32
arrays, with the CTF gathered back into `CTFParameters` for the models and guides.

The CTF travels as the seven `CTF_FIELDS` plus whichever of `OPTIONAL_CTF_FIELDS` the dataset has
(per-particle B-factor and scale; per-optics-group beam tilt and odd/even Zernike coefficients,
the latter `(B, k)` with the same `k` in every batch of a dataset): every optics term the particle
file gives reaches `CTFParameters`, hence the image model, in training, in the posterior passes
and in `fits.png`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np

__all__ = ["ctf_parameters", "flat_batch", "ordered_batches", "with_ctf_parameters"]


def _ctf_names(fields) -> tuple[str, ...]:
    """The CTF entries of a flat batch (or of a `ParticleBatch.ctf`): `CTF_FIELDS` and the optional
    ones present."""
    from atomicspi.io import CTF_FIELDS, OPTIONAL_CTF_FIELDS

    return CTF_FIELDS + tuple(name for name in OPTIONAL_CTF_FIELDS if name in fields)


def flat_batch(batch) -> dict[str, np.ndarray]:
    """A `ParticleBatch` as the flat dict of float32 arrays the training loop streams: images, poses
    and every CTF entry of `batch.ctf` (`CTF_FIELDS` and the optional ones the dataset has)."""
    flat = {
        "indices": np.asarray(batch.indices),
        "images": np.asarray(batch.images, dtype=np.float32),
        "rotations": np.asarray(batch.rotations, dtype=np.float32),
        "shifts_in_angstroms": np.asarray(batch.shifts_in_angstroms, dtype=np.float32),
    }
    flat.update({name: np.asarray(batch.ctf[name], dtype=np.float32) for name in _ctf_names(batch.ctf)})
    return flat


def ctf_parameters(fields: dict, count: int | None = None):
    """`CTFParameters` from the dataset's CTF arrays (`CTF_FIELDS` and whichever of
    `OPTIONAL_CTF_FIELDS` are present), the first `count` particles of each."""
    from atomicspi.microscope import CTFParameters

    return CTFParameters(**{name: jnp.asarray(fields[name][:count], dtype=jnp.float32) for name in _ctf_names(fields)})


def with_ctf_parameters(function: Callable) -> Callable:
    """Adapt a model or guide to the flat batch: gather the CTF entries into `CTFParameters`."""

    def adapted(**arguments):
        fields = {name: arguments.pop(name) for name in _ctf_names(arguments)}
        return function(ctf=ctf_parameters(fields), **arguments)

    adapted.__name__ = getattr(function, "__name__", "function")
    return adapted


def ordered_batches(dataset, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Minibatches in input order as `(count, flat batch)`, the last one padded by repeating its final
    particle (`count` is the number of real particles in it)."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        indices = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([indices, np.full(batch_size - len(indices), indices[-1])])
        yield len(indices), flat_batch(dataset.batch(padded))
