"""A Markov state model from the diffusion model on a landscape, exported to deeptime.

Kinetics rest on the diffusion assumption (see `atomicspi.products.diffusion_model`), not on the
images, which give populations only.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ._diffusion_model import DiffusionModel

__all__ = ["markov_state_model"]


def markov_state_model(model: DiffusionModel, lag_time: float):
    """The transition matrix T = expm(K τ) of the diffusion model as a deeptime MSM.

    **Arguments:**

    - `model`: a `DiffusionModel` (its states are the connected populated grid cells,
      `model.active_cells`).
    - `lag_time`: τ, in the time unit of the diffusion coefficient.

    **Returns:** a `deeptime.markov.msm.MarkovStateModel` with `lagtime=lag_time`; deeptime computes
    its stationary distribution from T (it equals `model.stationary_distribution`).
    """
    from deeptime.markov.msm import MarkovStateModel

    transition_matrix = scipy.linalg.expm(model.rate_matrix.toarray() * lag_time)
    transition_matrix = np.clip(transition_matrix, 0.0, None)
    transition_matrix /= transition_matrix.sum(axis=1, keepdims=True)
    return MarkovStateModel(transition_matrix, reversible=True, lagtime=lag_time)
