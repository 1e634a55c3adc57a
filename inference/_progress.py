"""A training progress bar (tqdm) showing the ELBO, images per second and the estimated time left."""

import math
import sys
import time

from tqdm.auto import tqdm

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """Progress of a training run, on stderr.

    The bar counts steps (from the step training starts or resumes at, to `total_steps`); its
    postfix shows the mean ELBO over the steps of the last update that were not skipped, the number of
    images processed per second since the first update (so that compilation, which happens in the
    first call, is left out; until then, since the bar started), and the number of skipped steps; tqdm
    shows the time left.

    **Arguments:**

    - `total_steps`: the step training ends at.
    - `initial_step`: the step training starts (or resumes) at.
    - `images_per_step`: the minibatch size.
    - `enabled`: `False` to show nothing (the rates are still computed).
    """

    def __init__(self, total_steps: int, initial_step: int, images_per_step: int, *, enabled: bool = True):
        self.images_per_step = images_per_step
        self.initial_step = initial_step
        self.step = initial_step
        self.elbo = math.nan
        self.skipped_steps = 0
        self._start_time = time.perf_counter()
        self._first_update: tuple[float, int] | None = None
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not enabled,
        )

    @property
    def images_per_second(self) -> float:
        """Images processed per second since the first update (compilation excluded), or since the bar
        started while there has been only one update."""
        start_time, start_step = self._start_time, self.initial_step
        if self._first_update is not None and self.step > self._first_update[1]:
            start_time, start_step = self._first_update
        elapsed = time.perf_counter() - start_time
        return (self.step - start_step) * self.images_per_step / elapsed if elapsed > 0 else math.nan

    def update(self, steps: int, elbos: list[float], skipped_steps: int) -> None:
        """Record `steps` more steps, with the ELBO of each step that was not skipped, and the total
        number of skipped steps so far."""
        self.step += steps
        if self._first_update is None:
            self._first_update = (time.perf_counter(), self.step)
        finite = [value for value in elbos if math.isfinite(value)]
        if finite:
            self.elbo = sum(finite) / len(finite)
        self.skipped_steps = skipped_steps
        self._bar.set_postfix(
            ELBO=f"{self.elbo:.4g}",
            images_per_second=f"{self.images_per_second:.3g}",
            skipped=skipped_steps,
            refresh=False,
        )
        self._bar.update(steps)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()
