"""Rigid-body motions of point sets: rotation vectors, the six infinitesimal rigid-body directions,
and optimal superposition (Kabsch)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["rotation_matrix_from_vector", "rigid_body_basis", "superpose"]


def rotation_matrix_from_vector(rotation_vector: Float[Array, "... 3"]) -> Float[Array, "... 3 3"]:
    """Rodrigues' formula: the rotation by angle |v| (radians) about the axis v/|v|.

    Differentiable everywhere, including at v = 0 (series expansion of the coefficients there).

    **Arguments:**

    - `rotation_vector`: `(..., 3)` axis-angle vectors in radians.

    **Returns:** `(..., 3, 3)` rotation matrices R with R·r the rotated point.
    """
    v = jnp.asarray(rotation_vector)
    theta_squared = jnp.sum(v * v, axis=-1)[..., None, None]
    small = theta_squared < 1e-8
    safe_theta_squared = jnp.where(small, 1.0, theta_squared)
    safe_theta = jnp.sqrt(safe_theta_squared)
    # sin θ / θ and (1 − cos θ) / θ², with their Taylor series near θ = 0.
    a = jnp.where(small, 1.0 - theta_squared / 6.0, jnp.sin(safe_theta) / safe_theta)
    b = jnp.where(small, 0.5 - theta_squared / 24.0, (1.0 - jnp.cos(safe_theta)) / safe_theta_squared)
    zero = jnp.zeros_like(v[..., 0])
    cross = jnp.stack(
        [
            jnp.stack([zero, -v[..., 2], v[..., 1]], axis=-1),
            jnp.stack([v[..., 2], zero, -v[..., 0]], axis=-1),
            jnp.stack([-v[..., 1], v[..., 0], zero], axis=-1),
        ],
        axis=-2,
    )
    identity = jnp.eye(3, dtype=cross.dtype)
    return identity + a * cross + b * (cross @ cross)


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

