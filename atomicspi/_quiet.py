"""Silencing C libraries that print to the process's standard output.

mdtraj's DCD reader (VMD's `dcdplugin`) `printf`s two lines, "dcdplugin) detected standard 32-bit
DCD file ..." and "dcdplugin) CHARMM format DCD file ...", every time it opens a file, and it has
no switch to stop it. `quiet_c_stdout` points file descriptor 1 at the null device for the
duration of a block (flushing C's stdio buffers on the way in and out, so that nothing printed
inside is written later), while Python's `sys.stdout` keeps writing where it did before.

Part of the bottom layer: it imports nothing from atomicspi.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
from collections.abc import Iterator

__all__ = ["quiet_c_stdout"]

_STDOUT = 1


def _flush_c_streams() -> None:
    """`fflush(NULL)`: write out every C stdio buffer (where the C library can be found)."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library with fflush (e.g. Windows)
        pass


def _python_stdout_uses_descriptor_1() -> bool:
    try:
        return sys.stdout is not None and sys.stdout.fileno() == _STDOUT
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def quiet_c_stdout() -> Iterator[None]:
    """Discard what C code writes to file descriptor 1 inside the block; Python's `print` still shows.

    Usable as a context manager or, `quiet_c_stdout()(function)`, as a decorator. Standard error
    is left alone, so Python warnings and tracebacks raised inside still reach the user.
    """
    try:
        saved = os.dup(_STDOUT)
    except OSError:  # no standard output at all: nothing to silence
        yield
        return
    python_stdout = sys.stdout
    rebound = None
    if python_stdout is not None:
        with contextlib.suppress(Exception):
            python_stdout.flush()
    _flush_c_streams()
    if _python_stdout_uses_descriptor_1():
        # Python's own writes keep going to the real standard output, through a copy of it.
        rebound = open(  # noqa: SIM115 (closed below)
            os.dup(saved),
            "w",
            encoding=python_stdout.encoding,
            errors=python_stdout.errors,
            buffering=1 if python_stdout.line_buffering else -1,
        )
        sys.stdout = rebound
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, _STDOUT)
    finally:
        os.close(null)
    try:
        yield
    finally:
        _flush_c_streams()
        if rebound is not None:
            with contextlib.suppress(Exception):
                rebound.flush()
            if sys.stdout is rebound:
                sys.stdout = python_stdout
            rebound.close()
        os.dup2(saved, _STDOUT)
        os.close(saved)
