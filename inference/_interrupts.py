"""Stopping training cleanly on SIGINT and SIGTERM: the signal sets a flag, training checkpoints at the
next step boundary and raises `TrainingInterrupted`."""

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator

__all__ = ["TrainingInterrupted", "InterruptFlag", "interrupt_on_signals"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint.

    A subclass of `KeyboardInterrupt` (so `except Exception` does not swallow it); a command line should
    exit with `exit_status`: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

    **Arguments:**

    - `signal_number`: the signal received.
    - `step`: the step the checkpoint was written at.
    """

    def __init__(self, signal_number: int, step: int):
        self.signal_number = signal_number
        self.step = step
        self.exit_status = 128 + signal_number
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at step {step}; checkpoint written")


class InterruptFlag:
    """The signal received, if any (`signal_number` is `None` until one arrives)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None


@contextlib.contextmanager
def interrupt_on_signals(
    signal_numbers: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[InterruptFlag]:
    """Within the context, the first of `signal_numbers` to arrive is recorded in the yielded
    `InterruptFlag` instead of stopping the process; a second one raises `KeyboardInterrupt` at once.
    The previous handlers come back on exit. Outside the main thread (where Python cannot install
    handlers) nothing is installed and the flag never fires."""
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signal_number, frame):
        if flag.signal_number is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signal_number).name}")
        flag.signal_number = signal_number

    previous = {number: signal.signal(number, handle) for number in signal_numbers}
    try:
        yield flag
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
