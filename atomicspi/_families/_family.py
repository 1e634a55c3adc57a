"""What the pipeline needs to know about a model family, in one place."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple

import numpy as np

__all__ = ["FittedModel", "ModelFamily", "ModelSetup"]


class ModelSetup(NamedTuple):
    """A family's model ready to train: its context and the extra keyword arguments of its model
    and guide (a deformation model's `decoder`, say), with what setting them up measured."""

    context: Any
    extra_arguments: dict[str, Any]
    diagnostics: dict[str, Any]


class FittedModel(NamedTuple):
    """A trained model as the posterior passes use it.

    - `model`, `guide`: the model and guide taking flat batches (`atomicspi._batches`).
    - `parameters`: the trained parameters (numpyro's `params`).
    - `model_arguments`: the keyword arguments both take besides a batch (`context`,
      `n_particles`, and the family's extras).
    - `ordered`: a function giving, on each call, a fresh iterator over the dataset as
      `(count, flat batch)` in input order (`ordered_batches`), read from the stack as it goes.
    - `keep`: indices into the padded draws of the real particles, in input order.
    """

    model: Callable
    guide: Callable
    parameters: dict[str, Any]
    model_arguments: dict[str, Any]
    ordered: Callable[[], Iterator[tuple[int, dict[str, np.ndarray]]]]
    keep: np.ndarray


class ModelFamily(abc.ABC):
    """One entry of `FAMILIES`: a NumPyro model with the pieces the pipeline asks of it.

    A new family is one file defining a subclass and one line in `atomicspi/_families/__init__.py`
    (plus its name in `atomicspi.io`'s `MODELS`, which validates `dataset.yaml` below this layer).

    **Class attributes:**

    - `name`: the `model:` value in `dataset.yaml`.
    - `landscape_coordinate`: the products' default coordinate (see `atomicspi.products`), or
      None for a family without per-particle conformations (no landscape is made).
    - `uses_domains`: whether `domains` from the yaml reach `build_model_context`.
    - `has_atoms`: whether the model moves the reference's atoms. A family without (`volume`, a
      density map) gets a context without atoms (`atomicspi.models.atomless_context`), needs no
      reference, and writes no topology, ensembles or landscape (its `write_outputs` instead).
    """

    name: ClassVar[str]
    landscape_coordinate: ClassVar[str | None] = "motion:0"
    uses_domains: ClassVar[bool] = False
    has_atoms: ClassVar[bool] = True

    @property
    @abc.abstractmethod
    def model(self) -> Callable:
        """The model function (`atomicspi.models`), called with keyword arguments."""

    @abc.abstractmethod
    def local_sites(self, context) -> dict:
        """name → `atomicspi.inference.LocalSite` of the model's per-particle sites."""

    def global_sites(self, context) -> dict:
        """name → `atomicspi.inference.GlobalSite` of the model's global array sites (none by default)."""
        return {}

    def set_up(self, config, dataset, context, *, key) -> ModelSetup:
        """The model's context and extra arguments before training (by default: as given, none)."""
        return ModelSetup(context, {}, {})

    def refined_draws(self, config, fitted: FittedModel, local: dict, global_: dict, *, key) -> tuple[dict, dict, FittedModel]:
        """Per-particle draws `(n_particles, n_samples, ...)` after any correction the family makes
        to the guide's draws (`global_`: the global sites' draws), with diagnostics for `run.json`,
        and the fitted model whose parameters go with them (a family may refine its parameters
        after training). By default: as drawn, none, unchanged."""
        return local, {}, fitted

    @abc.abstractmethod
    def positions(self, fitted: FittedModel, local: dict, global_: dict) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """A function from particle indices (rows of `local`, input order) to the posterior's atom
        positions for those particles: means `(n, n_atoms, 3)` and draws `(n, n_samples, n_atoms, 3)`,
        in Å. The pipeline calls it on a chunk of particles at a time."""

    def write_outputs(self, config, dataset, output, parameters: dict, model_arguments: dict, local: dict) -> dict:
        """Files the family writes into the output folder besides the pipeline's own (a volume's maps),
        from the trained `parameters`, the model's keyword arguments and the local draws
        `(n_particles, n_samples, ...)`; returns their record for `run.json` (nothing by default)."""
        return {}
