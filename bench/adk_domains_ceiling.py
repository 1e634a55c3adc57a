"""How close can rigid domain motions (plus elastic-network modes) get to the issue-5 truth?

For interpolation fractions along closed → open adenylate kinase (the benchmark's conformations),
least-squares fit the `domains` model's bead positions (NMP and LID rigid motions about their
centroids, CORE fixed as in the model, or CORE also free) to the true Cα positions and print the Cα
RMSD left. This is the best any inference with that model could do, however good the data.

    python bench/adk_domains_ceiling.py
"""

import jax
import numpy as np
import scipy.optimize

from atomicspi._example import ADENYLATE_KINASE_DOMAINS, example_structure_paths
from atomicspi._simulation import interpolated_conformations
from atomicspi.microscope import axis_angle_to_matrix
from atomicspi.models import ModelOptions, build_model_context
from atomicspi.models._domains import domain_bead_positions
from atomicspi.structure import load_structure

FRACTIONS = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 1.0])


def main():
    jax.config.update("jax_enable_x64", True)
    closed_path, open_path = example_structure_paths()
    closed = load_structure(closed_path)
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    calpha = closed.topology.select("name CA and protein")
    truth = interpolated_conformations(closed, load_structure(open_path), FRACTIONS)[:, calpha]
    reference = np.sqrt(((truth - closed.positions_in_angstroms[calpha]) ** 2).sum(-1).mean(-1))
    print("fraction            ", FRACTIONS)
    print("reference (closed)  ", reference.round(2))
    for n_modes in (0, 5, 10):
        context = build_model_context(closed, None, max(n_modes, 1), 15.0, ModelOptions(), domain_residue_ranges=ADENYLATE_KINASE_DOMAINS)
        for free_core in (False, True):
            left = []
            for target in truth:
                def residual(p):
                    motion, rigid, amplitudes = p[:12], p[12:18], p[18:] * (n_modes > 0)
                    beads = domain_bead_positions(context, motion, amplitudes)
                    if free_core:
                        beads = beads @ axis_angle_to_matrix(rigid[:3]).T + rigid[3:]
                    return (beads - target).ravel()

                function, jacobian = jax.jit(residual), jax.jit(jax.jacfwd(residual))
                fit = scipy.optimize.least_squares(
                    lambda p: np.asarray(function(p)), np.zeros(18 + max(n_modes, 1)), jac=lambda p: np.asarray(jacobian(p))
                )
                left.append(np.sqrt((fit.fun**2).sum() / len(calpha)))
            label = f"{n_modes:2d} modes, CORE {'free ' if free_core else 'fixed'}"
            print(f"{label:20s}", np.round(left, 2))


if __name__ == "__main__":
    main()
