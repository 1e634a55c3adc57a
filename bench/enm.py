"""Time to the lowest 20 ANM modes (15 Å cutoff, γ = 1): atomicspi vs ProDy on the same coordinates.

Systems: adenylate kinase Cα (214 beads), and 2,000- and 20,000-bead protein-density point clouds
(jittered cubic lattice at 5.1 Å spacing, i.e. one bead per 133 Å³ like residues in a protein,
cut to a ball). Each timing covers building the network/Hessian and solving for the modes.
ProDy runs in a child process with a time limit (its sparse path is ARPACK 'SA' on the Hessian,
which can take minutes at 20,000 beads); a timed-out run is reported as a lower bound.

Usage: python bench/enm.py [--prody-timeout SECONDS] [--sizes 214,2000,20000]
"""

import argparse
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

N_MODES = 20
CUTOFF_IN_ANGSTROMS = 15.0


def protein_density_cloud(n_beads, spacing_in_angstroms=5.1, seed=0):
    rng = np.random.default_rng(seed)
    side = int(np.ceil((2.2 * n_beads) ** (1 / 3))) + 2
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing_in_angstroms
    grid = grid + rng.normal(scale=0.6, size=grid.shape)
    grid -= grid.mean(axis=0)
    return grid[np.argsort(np.linalg.norm(grid, axis=1))[:n_beads]]


def run_prody(positions_path, output_path):
    import prody

    prody.confProDy(verbosity="none")
    positions = np.load(positions_path)
    start = time.perf_counter()
    anm = prody.ANM()
    anm.buildHessian(positions, cutoff=CUTOFF_IN_ANGSTROMS, gamma=1.0, sparse=positions.shape[0] > 3000)
    anm.calcModes(N_MODES)
    elapsed = time.perf_counter() - start
    np.savez(output_path, seconds=elapsed, eigenvalues=anm.getEigvals(), vectors=anm.getEigvecs())


def time_prody(positions, timeout):
    with tempfile.TemporaryDirectory() as directory:
        positions_path = os.path.join(directory, "positions.npy")
        output_path = os.path.join(directory, "prody.npz")
        np.save(positions_path, positions)
        try:
            subprocess.run([sys.executable, __file__, "--prody-child", positions_path, output_path], check=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        result = np.load(output_path)
        return float(result["seconds"]), result["eigenvalues"], result["vectors"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prody-timeout", type=float, default=180.0)
    parser.add_argument("--sizes", default="214,2000,20000")
    parser.add_argument("--prody-child", nargs=2)
    arguments = parser.parse_args()
    if arguments.prody_child:
        run_prody(*arguments.prody_child)
        return

    import jax

    jax.config.update("jax_enable_x64", True)
    from atomicspi.structure import ElasticNetwork, load_structure, normal_modes

    root = pathlib.Path(__file__).resolve().parents[1]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared, timings noisy)")
    print(f"{'beads':>7} {'method':>7} {'atomicspi s':>12} {'ProDy s':>10} {'ProDy/ours':>10} {'max rel dλ':>11} {'overlap':>8} {'residual':>9}")
    for n_beads in [int(size) for size in arguments.sizes.split(",")]:
        if n_beads == 214:
            positions = load_structure(root / "atomicspi" / "data" / "adk_closed.pdb.gz").calpha().positions_in_angstroms
        else:
            positions = protein_density_cloud(n_beads)
        # Warm up JAX compilation on a small network so timings measure the computation.
        normal_modes(ElasticNetwork.from_positions(positions[:50], CUTOFF_IN_ANGSTROMS), 5)
        start = time.perf_counter()
        network = ElasticNetwork.from_positions(positions, CUTOFF_IN_ANGSTROMS)
        modes = normal_modes(network, N_MODES)
        ours = time.perf_counter() - start
        method = "dense" if n_beads <= 1000 else "sparse" if n_beads <= 5000 else "lobpcg"
        # Self-check independent of ProDy: max ‖H v − λ v‖ / λ over the modes.
        flat = np.asarray(modes.vectors, dtype=float).reshape(N_MODES, -1).T
        eigenvalues_ours = np.asarray(modes.eigenvalues, dtype=float)
        residual = np.max(np.linalg.norm(network.sparse_hessian() @ flat - flat * eigenvalues_ours, axis=0) / eigenvalues_ours)
        prody_result = time_prody(positions, arguments.prody_timeout)
        if prody_result is None:
            print(f"{n_beads:>7} {method:>7} {ours:>12.2f} {'>' + format(arguments.prody_timeout, '.0f'):>10} {'>' + format(arguments.prody_timeout / ours, '.1f'):>10} {'-':>11} {'-':>8} {residual:>9.1e}")
            continue
        prody_seconds, eigenvalues, vectors = prody_result
        relative = np.max(np.abs(np.asarray(modes.eigenvalues) - eigenvalues) / eigenvalues)
        ours_vectors = np.asarray(modes.vectors).reshape(N_MODES, -1).T
        overlap = np.linalg.svd(ours_vectors.T @ vectors, compute_uv=False).min()
        print(f"{n_beads:>7} {method:>7} {ours:>12.2f} {prody_seconds:>10.2f} {prody_seconds / ours:>10.1f} {relative:>11.1e} {overlap:>8.5f} {residual:>9.1e}")


if __name__ == "__main__":
    main()
