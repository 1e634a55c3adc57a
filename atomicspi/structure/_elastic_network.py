"""The anisotropic network model (ANM): harmonic springs between beads in contact at the reference.

Energy, with γ the spring constant (kT/Å² gives the energy in kT) and wᵢⱼ optional per-spring weights:

    E(x) = Σ_(i,j) γ wᵢⱼ / 2 · (|xᵢ − xⱼ| − d⁰ᵢⱼ)²,

where d⁰ᵢⱼ is the distance at the reference. Its Hessian at the reference has, for every contact,
the super-element −γ wᵢⱼ dᵢⱼ dᵢⱼᵀ / |dᵢⱼ|² in blocks (i, j) and (j, i), and the negated sum of a row's
off-diagonal blocks on the diagonal (Atilgan et al. 2001; the same matrix as ProDy's `ANM.buildHessian`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jaxtyping import Array, Float, Int

from .._errors import InputError
from ._coarse_grain import contact_pairs

__all__ = ["ElasticNetwork"]


class ElasticNetwork(eqx.Module):
    """An elastic network: contacts, rest lengths and spring weights fixed at a reference structure.

    **Fields:**

    - `reference_positions_in_angstroms`: `(n_beads, 3)` reference coordinates.
    - `pairs`: `(n_contacts, 2)` bead indices of each spring.
    - `rest_lengths_in_angstroms`: `(n_contacts,)` spring lengths d⁰ at the reference.
    - `spring_weights`: `(n_contacts,)` dimensionless factors multiplying γ (ones for a plain ANM).

    Build one with `ElasticNetwork.from_positions`. The fields are float64 NumPy arrays (so the
    Hessian and modes are computed in double precision whatever JAX's x64 setting); inside a JAX
    transformation they become JAX arrays like any other leaf.
    """

    reference_positions_in_angstroms: Float[np.ndarray, "n_beads 3"]
    pairs: Int[np.ndarray, "n_contacts 2"]
    rest_lengths_in_angstroms: Float[np.ndarray, " n_contacts"]
    spring_weights: Float[np.ndarray, " n_contacts"]

    @classmethod
    def from_positions(
        cls,
        reference_positions_in_angstroms: Float[np.ndarray, "n_beads 3"],
        cutoff_in_angstroms: float = 15.0,
        distance_exponent: float = 0.0,
        weight_reference_distance_in_angstroms: float = 3.8,
    ) -> "ElasticNetwork":
        """Springs between all bead pairs within a cutoff of each other at the reference.

        **Arguments:**

        - `reference_positions_in_angstroms`: `(n_beads, 3)` reference coordinates (concrete array).
        - `cutoff_in_angstroms`: contact cutoff (15 Å is the usual choice for Cα ANMs).
        - `distance_exponent`: p in the distance-dependent weights wᵢⱼ = (d⁰ᵢⱼ / r₀)^(−p); 0 gives
          uniform springs (plain ANM), 2 the common inverse-square weighting.
        - `weight_reference_distance_in_angstroms`: r₀, the distance at which a weight is 1.

        **Returns:** the `ElasticNetwork`.
        """
        positions = np.asarray(reference_positions_in_angstroms, dtype=float)
        pairs = contact_pairs(positions, cutoff_in_angstroms)
        if pairs.shape[0] == 0:
            raise InputError(f"reference_positions_in_angstroms: no bead pairs within the cutoff of {cutoff_in_angstroms} Å")
        rest_lengths = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
        if np.any(rest_lengths == 0):
            raise InputError("reference_positions_in_angstroms: two beads sit at the same position")
        weights = (rest_lengths / weight_reference_distance_in_angstroms) ** (-float(distance_exponent))
        return cls(
            reference_positions_in_angstroms=positions,
            pairs=pairs,
            rest_lengths_in_angstroms=rest_lengths,
            spring_weights=weights,
        )

    @property
    def n_beads(self) -> int:
        return int(self.reference_positions_in_angstroms.shape[0])

    def energy(
        self, positions_in_angstroms: Float[Array | np.ndarray, "n_beads 3"], spring_constant: float | Array = 1.0
    ) -> Float[Array, ""]:
        """Elastic energy E(x) = Σ γ w / 2 (|xᵢ − xⱼ| − d⁰)².

        **Arguments:**

        - `positions_in_angstroms`: `(n_beads, 3)` coordinates (traced; differentiable).
        - `spring_constant`: γ (kT/Å² for an energy in kT); may be traced.

        **Returns:** the scalar energy (kT when γ is in kT/Å²).
        """
        x = jnp.asarray(positions_in_angstroms)
        differences = x[self.pairs[:, 0]] - x[self.pairs[:, 1]]
        lengths = jnp.sqrt(jnp.sum(differences * differences, axis=-1))
        stretch = lengths - self.rest_lengths_in_angstroms
        return 0.5 * spring_constant * jnp.sum(self.spring_weights * stretch * stretch)

    def yielding_energy(
        self,
        positions_in_angstroms: Float[Array | np.ndarray, "n_beads 3"],
        spring_constant: float | Array = 1.0,
        yield_stretch_in_angstroms: float | Array = 1.0,
    ) -> Float[Array, ""]:
        """Elastic energy with springs that yield: E(x) = Σ γ w / 2 · s² log(1 + δ²/s²), δ = |xᵢ − xⱼ| − d⁰.

        Harmonic (γ w δ² / 2) for stretches δ well below the yield stretch s, logarithmic beyond it,
        so a contact that a large motion breaks costs a bounded few γ w s² instead of γ w δ² / 2
        (the "cracking" elastic network of Miyashita, Onuchic and Wolynes, PNAS 2003, which they
        introduced for adenylate kinase's lid closure). Its Hessian at the reference is the harmonic
        one (`hessian`), so Laplace approximations about the reference are unchanged.

        **Arguments:**

        - `positions_in_angstroms`: `(n_beads, 3)` coordinates (traced; differentiable).
        - `spring_constant`: γ (kT/Å² for an energy in kT); may be traced.
        - `yield_stretch_in_angstroms`: s, the stretch beyond which a spring yields.

        **Returns:** the scalar energy (kT when γ is in kT/Å²).
        """
        x = jnp.asarray(positions_in_angstroms)
        differences = x[self.pairs[:, 0]] - x[self.pairs[:, 1]]
        lengths = jnp.sqrt(jnp.sum(differences * differences, axis=-1))
        stretch = lengths - self.rest_lengths_in_angstroms
        scale_squared = jnp.square(yield_stretch_in_angstroms)
        return 0.5 * spring_constant * jnp.sum(self.spring_weights * scale_squared * jnp.log1p(stretch * stretch / scale_squared))

    def _super_elements(self, spring_constant, array_module):
        """γ w d dᵀ / |d|² for every contact, `(n_contacts, 3, 3)`, with NumPy or jax.numpy."""
        x = array_module.asarray(self.reference_positions_in_angstroms)
        differences = x[self.pairs[:, 0]] - x[self.pairs[:, 1]]
        scale = spring_constant * array_module.asarray(self.spring_weights) / array_module.sum(differences * differences, axis=-1)
        return scale[:, None, None] * differences[:, :, None] * differences[:, None, :]

    def hessian(self, spring_constant: float | Array = 1.0) -> Float[Array, "3*n_beads 3*n_beads"]:
        """The dense Hessian of the energy at the reference (analytic super-element form).

        Rows and columns are ordered bead by bead: index 3·i + c is coordinate c of bead i.
        Memory grows as (3 n_beads)²: use `sparse_hessian` beyond a few thousand beads.

        **Arguments:**

        - `spring_constant`: γ (may be traced: the Hessian is linear in it).

        **Returns:** `(3 n_beads, 3 n_beads)` symmetric matrix (kT/Å² when γ is in kT/Å²).
        """
        n = self.n_beads
        blocks = self._super_elements(spring_constant, jnp)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        h = jnp.zeros((n, n, 3, 3), dtype=blocks.dtype)
        h = h.at[i, j].add(-blocks).at[j, i].add(-blocks).at[i, i].add(blocks).at[j, j].add(blocks)
        return h.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)

    def sparse_hessian(self, spring_constant: float = 1.0) -> scipy.sparse.csr_matrix:
        """The Hessian at the reference as a `scipy.sparse.csr_matrix` (same ordering as `hessian`).

        **Arguments:**

        - `spring_constant`: γ (a concrete number).

        **Returns:** `(3 n_beads, 3 n_beads)` sparse symmetric matrix.
        """
        n = self.n_beads
        blocks = self._super_elements(float(spring_constant), np)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        diagonal = np.zeros((n, 3, 3))
        np.add.at(diagonal, i, blocks)
        np.add.at(diagonal, j, blocks)
        block_rows = np.concatenate([i, j, np.arange(n)])
        block_columns = np.concatenate([j, i, np.arange(n)])
        values = np.concatenate([-blocks, -blocks, diagonal])
        component = np.arange(3)
        rows = np.broadcast_to(3 * block_rows[:, None, None] + component[None, :, None], values.shape)
        columns = np.broadcast_to(3 * block_columns[:, None, None] + component[None, None, :], values.shape)
        return scipy.sparse.csr_matrix((values.ravel(), (rows.ravel(), columns.ravel())), shape=(3 * n, 3 * n))
