"""Normal modes of an elastic network: the lowest non-trivial eigenpairs of its Hessian."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.csgraph
import scipy.sparse.linalg
from jaxtyping import Array, Float

from ..io._errors import InputError
from ._elastic_network import ElasticNetwork

__all__ = ["NormalModes", "normal_modes"]

_DENSE_LIMIT_IN_BEADS = 1000
_N_RIGID_BODY_MODES = 6


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


def normal_modes(network: ElasticNetwork, n_modes: int = 20, spring_constant: float = 1.0, method: str = "auto") -> NormalModes:
    """The lowest `n_modes` non-trivial normal modes of an elastic network at its reference.

    The six zero-eigenvalue rigid-body modes (translations and rotations) of the connected network are
    computed and dropped. Dense `scipy.linalg.eigh` (only the lowest eigenpairs) serves up to 1,000
    beads; beyond, ARPACK's Lanczos (`scipy.sparse.linalg.eigsh`) in shift-invert mode about a small
    negative shift on the sparse Hessian, which finds the lowest modes of 20,000-bead networks.

    **Arguments:**

    - `network`: the `ElasticNetwork`.
    - `n_modes`: how many non-trivial modes.
    - `spring_constant`: γ; eigenvalues scale linearly with it, eigenvectors do not depend on it.
    - `method`: `"dense"`, `"sparse"` or `"auto"` (dense up to 1,000 beads).

    **Returns:** `NormalModes` with eigenvalues ascending and orthonormal vectors `(n_modes, n_beads, 3)`.
    """
    n = network.n_beads
    n_wanted = n_modes + _N_RIGID_BODY_MODES
    if not 0 < n_modes <= 3 * n - _N_RIGID_BODY_MODES:
        raise InputError(f"n_modes: must be between 1 and {3 * n - _N_RIGID_BODY_MODES} for {n} beads, got {n_modes}")
    if method not in ("auto", "dense", "sparse"):
        raise InputError(f"method: must be 'auto', 'dense' or 'sparse', got {method!r}")
    _check_connected(network)
    if method == "dense" or (method == "auto" and n <= _DENSE_LIMIT_IN_BEADS):
        hessian = np.asarray(network.hessian(1.0))
        values, vectors = scipy.linalg.eigh(hessian, subset_by_index=[0, n_wanted - 1])
    else:
        hessian = network.sparse_hessian(1.0).tocsc()
        # A shift below zero keeps H − σI positive definite (its LU factorisation exists) while the
        # eigenvalues nearest σ are still the rigid-body ones and the lowest non-trivial ones.
        shift = -1e-6 * float(hessian.diagonal().mean())
        values, vectors = scipy.sparse.linalg.eigsh(hessian, k=n_wanted, sigma=shift, which="LM")
        order = np.argsort(values)
        values, vectors = values[order], vectors[:, order]
    values = values[_N_RIGID_BODY_MODES:] * float(spring_constant)
    vectors = vectors[:, _N_RIGID_BODY_MODES:].T.reshape(n_modes, n, 3)
    return NormalModes(eigenvalues=jnp.asarray(values), vectors=jnp.asarray(vectors))
