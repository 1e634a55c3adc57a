"""Per-particle pose summaries from posterior draws of the rotation and shift."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float

__all__ = ["PoseSummaries", "mean_rotations", "pose_draws", "pose_summaries"]


class PoseSummaries(NamedTuple):
    """Per particle (input order):

    - `rotations`: `(n, 3, 3)` the mean rotation (RELION's `A`; `mean_rotations`).
    - `angular_spread_in_degrees`: `(n,)` the radius around it holding `level` of the draws
      (their geodesic distances' quantile).
    - `shifts_in_angstroms`: `(n, 2)` the mean shift `(x, y)`;
      `shift_standard_deviation_in_angstroms`: `(n, 2)` its standard deviation over the draws.
    - `level`: the probability `angular_spread_in_degrees` holds.
    """

    rotations: np.ndarray
    angular_spread_in_degrees: np.ndarray
    shifts_in_angstroms: np.ndarray
    shift_standard_deviation_in_angstroms: np.ndarray
    level: float


def pose_draws(
    rotations: Float[np.ndarray, "n 3 3"],
    shifts_in_angstroms: Float[np.ndarray, "n 2"],
    rotation_corrections: Float[np.ndarray, "n draws 3"],
    shift_corrections_in_angstroms: Float[np.ndarray, "n draws 2"],
) -> tuple[Float[np.ndarray, "n draws 3 3"], Float[np.ndarray, "n draws 2"]]:
    """The posterior draws of each particle's pose, `exp(δ) A` and `s + ε`, from the model's
    corrections `δ` (rotation vectors, radians) and `ε` (Å) around its given poses `A`, `s`
    (`atomicspi.models.sample_pose_corrections`)."""
    from atomicspi.conventions import axis_angle_to_matrix

    corrections = np.asarray(axis_angle_to_matrix(np.asarray(rotation_corrections, dtype=np.float64)))
    draws = corrections @ np.asarray(rotations, dtype=np.float64)[:, None]
    return draws, np.asarray(shifts_in_angstroms, dtype=np.float64)[:, None] + np.asarray(shift_corrections_in_angstroms)


def mean_rotations(draws: Float[np.ndarray, "n draws 3 3"]) -> Float[np.ndarray, "n 3 3"]:
    """The chordal L2 mean of each particle's rotation draws: the rotation nearest (Frobenius) to
    their arithmetic mean matrix, `U diag(1, 1, det(U Vᵀ)) Vᵀ` from its SVD."""
    mean = np.mean(np.asarray(draws, dtype=np.float64), axis=1)
    left, _, right = np.linalg.svd(mean)
    sign = np.sign(np.linalg.det(left @ right))
    left[:, :, 2] *= sign[:, None]
    return left @ right


def pose_summaries(
    rotation_draws: Float[np.ndarray, "n draws 3 3"], shift_draws_in_angstroms: Float[np.ndarray, "n draws 2"], *, level: float = 0.9
) -> PoseSummaries:
    """Mean rotation, angular spread (the `level` quantile of the draws' geodesic distance from the
    mean), mean shift and its standard deviation, per particle."""
    from atomicspi.conventions import geodesic_distance_in_degrees

    means = mean_rotations(rotation_draws)
    distances = np.asarray(geodesic_distance_in_degrees(means[:, None], np.asarray(rotation_draws, dtype=np.float64)))
    shifts = np.asarray(shift_draws_in_angstroms, dtype=np.float64)
    spread = shifts.std(axis=1, ddof=1) if shifts.shape[1] > 1 else np.zeros_like(shifts[:, 0])
    return PoseSummaries(means, np.quantile(distances, level, axis=1), shifts.mean(axis=1), spread, float(level))
