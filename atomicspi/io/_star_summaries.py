"""`particles.star` in a run's output folder: the input's RELION tables with per-particle posterior
summaries as extra columns, so that subsets can be selected in RELION or cryoSPARC."""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np
import pandas
import starfile

from ._errors import InputError
from ._star import _particle_block, _read_blocks, _resolve_stacks

__all__ = ["write_star_with_columns"]


def write_star_with_columns(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    columns: dict[str, np.ndarray],
    datadir: str | os.PathLike | None = None,
    *,
    replaced: dict[str, np.ndarray] | None = None,
    dropped: tuple[str, ...] = (),
) -> None:
    """Copy the RELION star file `source` to `destination` with `columns` added to its particle table.

    Every block and column of the input is kept, in its order (the optics table too); the first
    `len(values)` particle rows are written (a run on the first N particles writes N rows), and
    `rlnImageName` is rewritten relative to `destination`'s folder so that the stacks still resolve.

    **Arguments:**

    - `source`: the input `.star` file; `datadir`: the folder its image paths were resolved against.
    - `destination`: the file to write.
    - `columns`: label (without the leading `_`) → `(n_rows,)` values, one per particle in input order.
    - `replaced`: like `columns`, but overwriting the input's column of that label where it has one
      (inferred poses: `rlnAngleRot`, `rlnOriginXAngst`, ...).
    - `dropped`: labels of input columns to leave out (e.g. origins in pixels beside new ones in Å).
    """
    source, destination = pathlib.Path(source), pathlib.Path(destination)
    blocks = _read_blocks(source)
    name, table = _particle_block(blocks, source)
    replaced = dict(replaced or {})
    n_rows = {len(values) for values in [*columns.values(), *replaced.values()]}
    if len(n_rows) > 1:
        raise ValueError(f"columns of different lengths {sorted(n_rows)}")
    n_rows_value = n_rows.pop() if n_rows else len(table)
    if n_rows_value > len(table):
        raise InputError(f"{source}: field data_{name}: {len(table)} particles, {n_rows_value} summaries")
    table = table.iloc[:n_rows_value].copy()
    stack_paths, codes, indices = _resolve_stacks(table["rlnImageName"], source, None if datadir is None else pathlib.Path(datadir))
    relative = [os.path.relpath(path.resolve(), destination.parent.resolve()) for path in stack_paths]
    table["rlnImageName"] = [f"{index + 1:06d}@{relative[code]}" for code, index in zip(codes, indices)]
    for label in columns:
        if label in table.columns:
            raise ValueError(f"column {label} is already in {source}")
    # all columns at once: one insert per column fragments the frame (a PerformanceWarning per column)
    table = table.drop(columns=[label for label in (*dropped, *replaced) if label in table.columns])
    added = pandas.DataFrame({label: np.asarray(values) for label, values in {**replaced, **columns}.items()}, index=table.index)
    table = pandas.concat([table, added], axis=1)
    blocks[name] = table
    temporary = destination.with_name(destination.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        starfile.write(blocks, temporary, overwrite=True)
    os.replace(temporary, destination)
