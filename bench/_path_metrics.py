"""Metrics of how well per-particle conformations (or a peer method's latent) recover a known
transition path: structure errors, path positions, the two-state population, and calibration.

Used by `bench/adk_paths.py`; importable by other bench scripts (`sys.path` holding `bench/`):

    from _path_metrics import path_recovery_metrics, spearman_of_latent
    metrics = path_recovery_metrics(np.load("truth.npz"), calpha_positions=posterior_means)
    metrics = path_recovery_metrics(np.load("truth.npz"), latent=cryodrgn_z)  # a peer's latent

`truth` is a mapping (a loaded `truth.npz` of `bench/adk_paths.py`) with `path_position` `(n,)`,
`state` `(n,)` (0 major, 1 minor), `path_calpha_nodes` `(n_nodes, n_residues, 3)` (the path's Cα at
evenly spaced path positions), `state_mean_path_positions` `(2,)` and, for structure errors,
`calpha_positions_in_angstroms` `(n, n_residues, 3)`. All positions are in the frame of the poses
(no superposition).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from atomicspi._transition_paths import path_positions_of

__all__ = ["calpha_rmsd", "draw_interval", "leading_latent_axis", "path_recovery_metrics", "spearman_of_latent"]


def draw_interval(draws, interval_mass: float = 0.9):
    """A central interval from each row of posterior draws `(n, n_draws)` with a known chance of
    holding the truth when the draws are calibrated: if the truth is exchangeable with the draws,
    its rank among them is uniform on 0..n_draws, so the k-th smallest and k-th largest draws
    enclose it with probability (n_draws + 1 − 2k)/(n_draws + 1) (the rank statistic of
    simulation-based calibration). k is the largest with that probability ≥ `interval_mass`
    (k = 1, the range, for 20 draws: 0.905). Sample quantiles of the draws are no such interval: the
    5–95 % quantiles of 20 exact draws hold the truth 82 % of the time.

    **Returns:** `(low (n,), high (n,), expected coverage)`.
    """
    ordered = np.sort(np.asarray(draws, dtype=float), axis=1)
    n_draws = ordered.shape[1]
    k = max(1, int(np.floor(0.5 * (n_draws + 1) * (1.0 - interval_mass))))
    return ordered[:, k - 1], ordered[:, n_draws - k], (n_draws + 1 - 2 * k) / (n_draws + 1)


def calpha_rmsd(a, b) -> np.ndarray:
    """Cα RMSD without superposition between `(..., n_residues, 3)` arrays (broadcast)."""
    return np.sqrt(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=-1), axis=-1))


def leading_latent_axis(latent) -> np.ndarray:
    """A latent `(n,)` as is, or `(n, d)` projected on its first principal axis: one number per particle."""
    latent = np.asarray(latent, dtype=float)
    if latent.ndim == 1:
        return latent
    centred = latent.reshape(latent.shape[0], -1) - latent.reshape(latent.shape[0], -1).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[0]


def spearman_of_latent(latent_1d, truth_s) -> float:
    """Absolute Spearman rank correlation of a one-dimensional latent with the true path positions
    (absolute because a peer's latent has an arbitrary sign); a `(n, d)` latent is first projected on
    its leading principal axis.

    **Arguments:**

    - `latent_1d`: `(n,)` (or `(n, d)`) per-particle latent.
    - `truth_s`: `(n,)` true path positions.

    **Returns:** |ρ| in [0, 1].
    """
    return float(abs(scipy.stats.spearmanr(leading_latent_axis(latent_1d), np.asarray(truth_s)).statistic))


def path_recovery_metrics(
    truth,
    calpha_positions=None,
    calpha_samples=None,
    latent=None,
    reference_calpha=None,
    interval_mass: float = 0.9,
) -> dict:
    """Recovery of a known path from per-particle estimates.

    **Arguments:**

    - `truth`: mapping as in the module docstring.
    - `calpha_positions`: `(n, n_residues, 3)` per-particle point estimates (posterior means), or `None`.
    - `calpha_samples`: `(n, n_draws, n_residues, 3)` posterior draws per particle, or `None`.
    - `latent`: `(n,)` or `(n, d)` a peer method's per-particle latent, or `None`.
    - `reference_calpha`: `(n_residues, 3)` the structure the fit started from, or `None`.
    - `interval_mass`: the central posterior interval checked for coverage.

    Only the first n particles of the truth are used (a run may use fewer than were simulated).

    **Returns:** a dict of floats:

    - with positions: `median_rmsd_posterior_mean`, `percentile_90_rmsd_posterior_mean`,
      `median_rmsd_posterior_mean_major` / `_minor` (by true state), `spearman_path_position`
      (signed: the path position has a direction), `median_absolute_error_path_position`,
      `minor_population_inferred` (share of estimated path positions above the midpoint between
      the two state means) next to `minor_population_true` (share of the minor state) and
      `minor_population_true_above_midpoint`, `wasserstein_path_position` (W1 between the estimated
      and true path-position distributions);
    - with a reference: `median_rmsd_reference`;
    - with draws: `coverage_path_position` (share of particles whose true path position lies in the
      interval of `draw_interval` of their draws' path positions) next to
      `coverage_expected_if_calibrated` (that interval's chance for calibrated draws: 0.905 for 20),
      `median_interval_width_path_position`, and `coverage_path_position_quantiles` (the central
      `interval_mass` sample quantiles instead, as reported before: 0.82 for 20 exact draws);
    - with a latent: `spearman_latent` (absolute).
    """
    n = None
    for array in (calpha_positions, calpha_samples, latent):
        if array is not None:
            n = np.asarray(array).shape[0]
            break
    if n is None:
        raise ValueError("give calpha_positions, calpha_samples or latent")
    true_s = np.asarray(truth["path_position"], dtype=float)[:n]
    states = np.asarray(truth["state"])[:n]
    nodes = np.asarray(truth["path_calpha_nodes"], dtype=float)
    midpoint = float(np.mean(truth["state_mean_path_positions"]))
    result = {"n_particles": int(n), "minor_population_true": float(np.mean(states == 1)),
              "minor_population_true_above_midpoint": float(np.mean(true_s > midpoint))}
    if calpha_positions is not None:
        estimate = np.asarray(calpha_positions, dtype=float)
        true_calpha = np.asarray(truth["calpha_positions_in_angstroms"], dtype=float)[:n]
        rmsd = calpha_rmsd(estimate, true_calpha)
        estimated_s = path_positions_of(estimate, nodes)
        result.update({
            "median_rmsd_posterior_mean": float(np.median(rmsd)),
            "percentile_90_rmsd_posterior_mean": float(np.percentile(rmsd, 90)),
            "median_rmsd_posterior_mean_major": float(np.median(rmsd[states == 0])) if np.any(states == 0) else float("nan"),
            "median_rmsd_posterior_mean_minor": float(np.median(rmsd[states == 1])) if np.any(states == 1) else float("nan"),
            "spearman_path_position": float(scipy.stats.spearmanr(estimated_s, true_s).statistic),
            "median_absolute_error_path_position": float(np.median(np.abs(estimated_s - true_s))),
            "minor_population_inferred": float(np.mean(estimated_s > midpoint)),
            "wasserstein_path_position": float(scipy.stats.wasserstein_distance(estimated_s, true_s)),
        })
        if reference_calpha is not None:
            result["median_rmsd_reference"] = float(np.median(calpha_rmsd(np.asarray(reference_calpha)[None], true_calpha)))
    if calpha_samples is not None:
        samples = np.asarray(calpha_samples, dtype=float)
        draws_s = path_positions_of(samples.reshape((-1,) + samples.shape[2:]), nodes).reshape(samples.shape[:2])
        low, high, expected = draw_interval(draws_s, interval_mass)
        tail = 0.5 * (1.0 - interval_mass)
        quantile_low, quantile_high = np.quantile(draws_s, tail, axis=1), np.quantile(draws_s, 1.0 - tail, axis=1)
        result.update({
            "coverage_path_position": float(np.mean((true_s >= low) & (true_s <= high))),
            "coverage_expected_if_calibrated": float(expected),
            "median_interval_width_path_position": float(np.median(high - low)),
            "coverage_path_position_quantiles": float(np.mean((true_s >= quantile_low) & (true_s <= quantile_high))),
        })
    if latent is not None:
        result["spearman_latent"] = spearman_of_latent(latent, true_s)
    return result
