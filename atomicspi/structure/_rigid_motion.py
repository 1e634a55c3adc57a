"""Rigid-body motions of point sets: rotation vectors, the six infinitesimal rigid-body directions,
and optimal superposition (Kabsch)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["rigid_body_basis", "superpose"]


def rigid_body_basis(positions_in_angstroms: Float[Array, "n 3"]) -> Float[Array, "6 n 3"]:
    """An orthonormal basis of the six infinitesimal rigid-body displacements (three translations,
    three rotations about the centroid) of a point set.

    **Arguments:**

    - `positions_in_angstroms`: `(n, 3)` coordinates.

    **Returns:** `(6, n, 3)` orthonormal displacement fields (as flattened 3n-vectors).
    """
    x = jnp.asarray(positions_in_angstroms)
    n = x.shape[0]
    centred = x - jnp.mean(x, axis=0)
    translations = jnp.broadcast_to(jnp.eye(3, dtype=x.dtype)[:, None, :], (3, n, 3))
    rotations = jnp.stack([jnp.cross(jnp.eye(3, dtype=x.dtype)[axis], centred) for axis in range(3)])
    basis = jnp.concatenate([translations, rotations]).reshape(6, 3 * n)
    q, _ = jnp.linalg.qr(basis.T)
    return q.T.reshape(6, n, 3)


def superpose(
    mobile_positions_in_angstroms: Float[Array, "n 3"],
    target_positions_in_angstroms: Float[Array, "n 3"],
) -> Float[Array, "n 3"]:
    """Optimal rigid superposition (Kabsch, no scaling, proper rotations only) of `mobile` onto `target`.

    **Arguments:**

    - `mobile_positions_in_angstroms`: `(n, 3)` coordinates to move.
    - `target_positions_in_angstroms`: `(n, 3)` coordinates to fit onto (same point order).

    **Returns:** `(n, 3)` the mobile coordinates after the rotation and translation that minimise the
    RMSD to the target.
    """
    mobile = jnp.asarray(mobile_positions_in_angstroms)
    target = jnp.asarray(target_positions_in_angstroms)
    mobile_centre, target_centre = jnp.mean(mobile, axis=0), jnp.mean(target, axis=0)
    covariance = (mobile - mobile_centre).T @ (target - target_centre)
    u, _, vt = jnp.linalg.svd(covariance)
    sign = jnp.sign(jnp.linalg.det(u @ vt))
    correction = jnp.diag(jnp.array([1.0, 1.0, 1.0], dtype=mobile.dtype).at[2].set(sign))
    rotation_transposed = u @ correction @ vt  # maps row vectors: x_centred @ rotation_transposed
    return (mobile - mobile_centre) @ rotation_transposed + target_centre

