"""Normal modes of an elastic network: the lowest non-trivial eigenpairs of its Hessian."""

from __future__ import annotations

import os

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.csgraph
import scipy.sparse.linalg
from jaxtyping import Array, Float
from threadpoolctl import threadpool_limits

from .._errors import InputError
from ._elastic_network import ElasticNetwork
from ._rigid_motion import rigid_body_basis

__all__ = ["NormalModes", "normal_modes"]

_DENSE_LIMIT_IN_BEADS = 1000
_SHIFT_INVERT_LIMIT_IN_BEADS = 5000
_N_RIGID_BODY_MODES = 6
# Once JAX has run, its CPU worker threads compete with a full-width OpenBLAS pool: on a 2-core machine
# scipy's eigh of a 642 × 642 matrix went from 0.04 s to 5 s. Half the cores for BLAS avoids this.
_BLAS_THREADS = max(1, (os.cpu_count() or 2) // 2)


class NormalModes(eqx.Module):
    """Normal modes, lowest first, with the six rigid-body modes removed.

    **Fields:**

    - `eigenvalues`: `(n_modes,)` Hessian eigenvalues λₖ (kT/Å² when γ is in kT/Å²).
    - `vectors`: `(n_modes, n_beads, 3)` orthonormal eigenvectors (each of unit norm as a 3n-vector).
    """

    eigenvalues: Float[Array, " n_modes"]
    vectors: Float[Array, "n_modes n_beads 3"]

    @property
    def n_modes(self) -> int:
        return int(self.eigenvalues.shape[0])

    def displacements(self, amplitudes_in_angstroms: Float[Array, " n_modes"]) -> Float[Array, "n_beads 3"]:
        """The bead displacement Σₖ aₖ vₖ for mode amplitudes aₖ (Å, since the vectors have unit norm).

        **Arguments:**

        - `amplitudes_in_angstroms`: `(n_modes,)` amplitudes.

        **Returns:** `(n_beads, 3)` displacement in Å.
        """
        return jnp.einsum("k,knc->nc", amplitudes_in_angstroms, self.vectors)


def _check_connected(network: ElasticNetwork) -> None:
    n = network.n_beads
    adjacency = scipy.sparse.coo_matrix((np.ones(len(network.pairs)), (network.pairs[:, 0], network.pairs[:, 1])), shape=(n, n))
    n_components, _ = scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    if n_components > 1:
        raise InputError(
            f"network: the contact graph has {n_components} disconnected parts, so it has more than six "
            "zero modes; raise cutoff_in_angstroms or model the parts separately"
        )


def _lobpcg(network: ElasticNetwork, n_modes: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest non-trivial eigenpairs by LOBPCG, with the rigid-body basis as hard constraints (so
    only the wanted modes are iterated) and the inverse 3×3 diagonal blocks as preconditioner."""
    n = network.n_beads
    hessian = network.sparse_hessian(1.0).tobsr(blocksize=(3, 3))
    block_rows = np.repeat(np.arange(n), np.diff(hessian.indptr))
    inverse_diagonal = np.linalg.inv(hessian.data[block_rows == hessian.indices])

    def precondition(residuals):
        residuals = residuals.reshape(n, 3, -1)
        return np.einsum("nij,njk->nik", inverse_diagonal, residuals).reshape(3 * n, -1)

    preconditioner = scipy.sparse.linalg.LinearOperator(hessian.shape, matvec=precondition, matmat=precondition, dtype=float)
    constraints = np.asarray(rigid_body_basis(network.reference_positions_in_angstroms)).reshape(6, -1).T
    n_block = n_modes + max(4, n_modes // 4)
    start = np.random.default_rng(0).normal(size=(3 * n, n_block))
    tolerance = 1e-6 * float(hessian.diagonal().mean())
    values, vectors = scipy.sparse.linalg.lobpcg(
        hessian, start, M=preconditioner, Y=constraints, largest=False, tol=tolerance, maxiter=1000
    )
    order = np.argsort(values)[:n_modes]
    return values[order], vectors[:, order]


def normal_modes(network: ElasticNetwork, n_modes: int = 20, spring_constant: float = 1.0, method: str = "auto") -> NormalModes:
    """The lowest `n_modes` non-trivial normal modes of an elastic network at its reference.

    The six zero-eigenvalue rigid-body modes (translations and rotations) of the connected network are
    removed. Methods:

    - `"dense"`: `scipy.linalg.eigh` of the dense Hessian (lowest eigenpairs only); rigid modes dropped.
    - `"sparse"`: ARPACK Lanczos (`scipy.sparse.linalg.eigsh`) in shift-invert mode about a small
      negative shift, with a sparse LU of the Hessian; rigid modes dropped. The LU fills in quickly
      in 3D, so this is for up to a few thousand beads.
    - `"lobpcg"`: `scipy.sparse.linalg.lobpcg` on the sparse Hessian with the six rigid-body
      directions as constraints and a block-Jacobi preconditioner; memory grows linearly, so this is
      the method for 10⁴ beads and beyond (converged to a residual of 10⁻⁶ × the mean diagonal).
    - `"auto"`: dense up to 1,000 beads, sparse up to 5,000, LOBPCG beyond.

    **Arguments:**

    - `network`: the `ElasticNetwork`.
    - `n_modes`: how many non-trivial modes.
    - `spring_constant`: γ; eigenvalues scale linearly with it, eigenvectors do not depend on it.
    - `method`: `"auto"`, `"dense"`, `"sparse"` or `"lobpcg"`.

    **Returns:** `NormalModes` with eigenvalues ascending and orthonormal vectors `(n_modes, n_beads, 3)`.
    """
    n = network.n_beads
    if not 0 < n_modes <= 3 * n - _N_RIGID_BODY_MODES:
        raise InputError(f"n_modes: must be between 1 and {3 * n - _N_RIGID_BODY_MODES} for {n} beads, got {n_modes}")
    if method not in ("auto", "dense", "sparse", "lobpcg"):
        raise InputError(f"method: must be 'auto', 'dense', 'sparse' or 'lobpcg', got {method!r}")
    _check_connected(network)
    if method == "auto":
        method = "dense" if n <= _DENSE_LIMIT_IN_BEADS else "sparse" if n <= _SHIFT_INVERT_LIMIT_IN_BEADS else "lobpcg"
    with threadpool_limits(limits=_BLAS_THREADS, user_api="blas"):
        values, vectors = _solve(network, n_modes, method)
    vectors = vectors.T.reshape(n_modes, n, 3)
    return NormalModes(eigenvalues=jnp.asarray(values * float(spring_constant)), vectors=jnp.asarray(vectors))


def _solve(network: ElasticNetwork, n_modes: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    n_wanted = n_modes + _N_RIGID_BODY_MODES
    if method == "lobpcg":
        values, vectors = _lobpcg(network, n_modes)
    else:
        if method == "dense":
            hessian = network.sparse_hessian(1.0).toarray()
            values, vectors = scipy.linalg.eigh(hessian, subset_by_index=[0, n_wanted - 1])
        else:
            hessian = network.sparse_hessian(1.0).tocsc()
            # A shift below zero keeps H − σI positive definite (its LU factorisation exists) while the
            # eigenvalues nearest σ are still the rigid-body ones and the lowest non-trivial ones.
            shift = -1e-6 * float(hessian.diagonal().mean())
            values, vectors = scipy.sparse.linalg.eigsh(hessian, k=n_wanted, sigma=shift, which="LM")
            order = np.argsort(values)
            values, vectors = values[order], vectors[:, order]
        values, vectors = values[_N_RIGID_BODY_MODES:], vectors[:, _N_RIGID_BODY_MODES:]
    return values, vectors
