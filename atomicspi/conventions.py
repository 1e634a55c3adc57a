"""Rotations, and the one place where atomicspi's geometric conventions are written down.

This module is in the bottom layer: it imports nothing from atomicspi, and `atomicspi.io`,
`atomicspi.structure` and `atomicspi.microscope` take their rotations from here (the microscope
re-exports them under their old names).

**Rotations (RELION).** A pose is the rotation matrix `A` that maps model coordinates `r`
(Å, in the frame of the reference structure) to the rotated frame `A @ r`; the image is the
projection of the rotated model along its z axis. Euler angles are RELION's ZYZ triple
`(rot, tilt, psi)` in degrees, and

    A = Rz(psi) @ Ry(tilt) @ Rz(rot),
    Rz(t) = [[cos t,  sin t, 0], [-sin t, cos t, 0], [0, 0, 1]],
    Ry(t) = [[cos t, 0, -sin t], [0, 1, 0], [sin t, 0, cos t]],

which is, entry by entry, RELION's `Euler_angles2matrix` (note that these `Rz`, `Ry` are the
*transposes* of the textbook right-handed rotation matrices: RELION's angles rotate the frame).
`matrix_to_euler_angles` returns `tilt` in [0, 180] like RELION's `Euler_matrix2angles`.

**Images.** Images are arrays indexed `[y, x]`; pixel `(i, j)` of a `D × D` image sits at
`x = (j - D // 2) * pixel_size`, `y = (i - D // 2) * pixel_size`, so the box centre is pixel
index `D // 2` along each axis (also for even `D`, as in RELION).

**Shifts.** A particle's `shifts_in_angstroms` is `(x, y)`, the displacement of the particle
centre from the box centre. RELION stores the opposite: `rlnOriginXAngst` (3.1+) or
`rlnOriginX` × pixel size (3.0), so `shifts_in_angstroms = -origin_in_angstroms`.

**cryoSPARC.** `alignments3D/pose` is a rotation vector (axis × angle, radians). With the
textbook (Rodrigues) matrix `R = axis_angle_to_matrix(pose)`, the RELION pose is `A = R.T`
(equivalently `axis_angle_to_matrix(-pose)`). `alignments3D/shift` is in pixels with the sign
of RELION's origin, so `shifts_in_angstroms = -shift * blob/psize_A`. Both relations are the
ones cryoDRGN's `parse_pose_csparc` applies, and are checked against its output in the tests.

**cryoDRGN.** cryoDRGN's pose pickles hold `(rotations, translations)`: `rotations` are RELION's
`A` itself (not its transpose; checked to 1e-7 against `pose.star.pkl`), and `translations` are
RELION's origin in units of the box, `origin_in_pixels / D`, so
`shifts_in_angstroms = -translations * D * pixel_size`.

**Other representations** used here: unit quaternions `(w, x, y, z)` and rotation vectors
(radians) both denote the textbook active rotation `R` (`R @ v` rotates `v` about the axis by the
angle, right-handed), exactly as `scipy.spatial.transform.Rotation` (scalar-last there). The 6D
representation of Zhou et al. (2019) is the first two columns of the matrix, concatenated
column after column; `six_d_to_matrix` orthonormalises them by Gram-Schmidt.

**Tilt series (RELION 5).** A tilt image `f` sees the tomogram through
`R_f = Rz(rlnTomoZRot) @ Ry(rlnTomoYTilt) @ Rx(rlnTomoXTilt)` of *textbook* right-handed
rotations (RELION's `Tomogram::setProjectionMatrix`; these `Rz`, `Ry` are the transposes of the
Euler ones above), and a particle of pose `A` in the tomogram has the pose `R_f @ A` in that image
(`tilt_series_view_rotation`; `atomicspi.microscope.compose_tilt_rotations`).

All functions are JAX, batched over any leading dimensions and differentiable.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


def _safe_norm(vectors: Array, axis: int = -1) -> Array:
    """Euclidean norm whose gradient is finite (zero) at the origin."""
    squared = jnp.sum(vectors**2, axis=axis)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def euler_angles_to_matrix(
    angles_in_degrees: Float[ArrayLike, "*batch 3"],
) -> Float[Array, "*batch 3 3"]:
    """RELION's rotation matrix from Euler angles.

    **Arguments:**

    - `angles_in_degrees`: `(rot, tilt, psi)` in degrees, RELION's ZYZ convention.

    **Returns:**

    `A = Rz(psi) @ Ry(tilt) @ Rz(rot)` as in RELION's `Euler_angles2matrix` (see module docstring).
    """
    angles = jnp.deg2rad(jnp.asarray(angles_in_degrees))
    alpha, beta, gamma = angles[..., 0], angles[..., 1], angles[..., 2]
    ca, sa = jnp.cos(alpha), jnp.sin(alpha)
    cb, sb = jnp.cos(beta), jnp.sin(beta)
    cg, sg = jnp.cos(gamma), jnp.sin(gamma)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler_angles(
    matrices: Float[ArrayLike, "*batch 3 3"],
) -> Float[Array, "*batch 3"]:
    """RELION Euler angles of a rotation matrix, inverse of `euler_angles_to_matrix`.

    **Arguments:**

    - `matrices`: rotation matrices `A`.

    **Returns:**

    `(rot, tilt, psi)` in degrees with `tilt` in [0, 180]; at the gimbal lock (`tilt` 0 or 180)
    `rot` is set to 0 and the whole in-plane angle is put in `psi`, as RELION does.
    """
    a = jnp.asarray(matrices)
    sin_tilt = _safe_norm(jnp.stack([a[..., 0, 2], a[..., 1, 2]], axis=-1))
    regular = sin_tilt > 1e-6
    tilt = jnp.arctan2(sin_tilt, a[..., 2, 2])
    rot = jnp.where(regular, jnp.arctan2(a[..., 2, 1], a[..., 2, 0]), 0.0)
    psi_regular = jnp.arctan2(a[..., 1, 2], -a[..., 0, 2])
    psi_up = jnp.arctan2(-a[..., 1, 0], a[..., 0, 0])
    psi_down = jnp.arctan2(a[..., 1, 0], -a[..., 0, 0])
    psi = jnp.where(regular, psi_regular, jnp.where(a[..., 2, 2] > 0, psi_up, psi_down))
    return jnp.rad2deg(jnp.stack([rot, tilt, psi], axis=-1))


def quaternion_to_matrix(
    quaternions: Float[ArrayLike, "*batch 4"],
) -> Float[Array, "*batch 3 3"]:
    """Rotation matrix of a quaternion `(w, x, y, z)`.

    **Arguments:**

    - `quaternions`: quaternions, scalar first; normalised here, so any non-zero scale is allowed.

    **Returns:**

    The active rotation matrix (as `scipy.spatial.transform.Rotation.from_quat` with scalar last).
    """
    q = jnp.asarray(quaternions)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(
    matrices: Float[ArrayLike, "*batch 3 3"],
) -> Float[Array, "*batch 4"]:
    """Unit quaternion `(w, x, y, z)` of a rotation matrix, with `w >= 0`.

    **Arguments:**

    - `matrices`: rotation matrices.

    **Returns:**

    Unit quaternions, scalar first, in the hemisphere `w >= 0` (Shepperd's method: the candidate
    built from the largest diagonal term, so it is accurate for every rotation).
    """
    m = jnp.asarray(matrices)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = jnp.stack(
        [
            jnp.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], axis=-1),
            jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], axis=-1),
            jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], axis=-1),
            jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], axis=-1),
        ],
        axis=-2,
    )
    diagonal = jnp.stack([m00 + m11 + m22, m00, m11, m22], axis=-1)
    best = jnp.argmax(diagonal, axis=-1)
    chosen = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    chosen = chosen / jnp.linalg.norm(chosen, axis=-1, keepdims=True)
    return jnp.where(chosen[..., :1] < 0, -chosen, chosen)


def axis_angle_to_matrix(
    rotation_vectors: Float[ArrayLike, "*batch 3"],
) -> Float[Array, "*batch 3 3"]:
    """Rotation matrix of a rotation vector (Rodrigues' formula).

    **Arguments:**

    - `rotation_vectors`: axis × angle in radians, as cryoSPARC's `alignments3D/pose`.

    **Returns:**

    The active rotation matrix `R` (for cryoSPARC poses the RELION pose is `R.T`).
    """
    v = jnp.asarray(rotation_vectors)
    angle = _safe_norm(v)
    small = angle < 1e-4
    safe_angle = jnp.where(small, 1.0, angle)
    angle_squared = angle**2
    sin_over_angle = jnp.where(small, 1 - angle_squared / 6, jnp.sin(safe_angle) / safe_angle)
    one_minus_cos_over_angle_squared = jnp.where(
        small, 0.5 - angle_squared / 24, (1 - jnp.cos(safe_angle)) / safe_angle**2
    )
    zero = jnp.zeros_like(v[..., 0])
    cross = jnp.stack(
        [
            jnp.stack([zero, -v[..., 2], v[..., 1]], axis=-1),
            jnp.stack([v[..., 2], zero, -v[..., 0]], axis=-1),
            jnp.stack([-v[..., 1], v[..., 0], zero], axis=-1),
        ],
        axis=-2,
    )
    identity = jnp.broadcast_to(jnp.eye(3, dtype=cross.dtype), cross.shape)
    return (
        identity
        + sin_over_angle[..., None, None] * cross
        + one_minus_cos_over_angle_squared[..., None, None] * (cross @ cross)
    )


def matrix_to_axis_angle(
    matrices: Float[ArrayLike, "*batch 3 3"],
) -> Float[Array, "*batch 3"]:
    """Rotation vector of a rotation matrix, inverse of `axis_angle_to_matrix`.

    **Arguments:**

    - `matrices`: rotation matrices.

    **Returns:**

    Axis × angle in radians, with the angle in [0, π].
    """
    q = matrix_to_quaternion(matrices)
    vector_norm = _safe_norm(q[..., 1:])
    angle = 2 * jnp.arctan2(vector_norm, q[..., 0])
    small = vector_norm < 1e-7
    scale = jnp.where(small, 2 / q[..., 0], angle / jnp.where(small, 1.0, vector_norm))
    return scale[..., None] * q[..., 1:]


def six_d_to_matrix(
    six_d: Float[ArrayLike, "*batch 6"],
) -> Float[Array, "*batch 3 3"]:
    """Rotation matrix from the 6D representation of Zhou et al. (2019).

    **Arguments:**

    - `six_d`: two 3-vectors `(a1, a2)` concatenated; any linearly independent pair.

    **Returns:**

    The matrix with columns `b1 = a1/|a1|`, `b2` = `a2` made orthonormal to `b1` (Gram-Schmidt),
    and `b3 = b1 × b2`.
    """
    x = jnp.asarray(six_d)
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / jnp.linalg.norm(a1, axis=-1, keepdims=True)
    a2 = a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2 / jnp.linalg.norm(a2, axis=-1, keepdims=True)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_six_d(
    matrices: Float[ArrayLike, "*batch 3 3"],
) -> Float[Array, "*batch 6"]:
    """The 6D representation (first two columns, column after column) of a rotation matrix.

    **Arguments:**

    - `matrices`: rotation matrices.

    **Returns:**

    `concatenate([R[:, 0], R[:, 1]])`, so that `six_d_to_matrix(matrix_to_six_d(R)) == R`.
    """
    m = jnp.asarray(matrices)
    return jnp.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def sample_uniform_rotations(key: PRNGKeyArray, n: int) -> Float[Array, "n 3 3"]:
    """Rotations drawn uniformly (Haar measure) on SO(3).

    **Arguments:**

    - `key`: a JAX random key.
    - `n`: number of rotations.

    **Returns:**

    `n` rotation matrices from normalised standard-normal quaternions (uniform on the 3-sphere,
    hence Haar-distributed rotations).
    """
    quaternions = jax.random.normal(key, (n, 4))
    return quaternion_to_matrix(quaternions)


def geodesic_distance_in_degrees(
    a: Float[ArrayLike, "*batch 3 3"], b: Float[ArrayLike, "*batch 3 3"]
) -> Float[Array, "*batch"]:
    """Angle of the rotation that takes `a` to `b`.

    **Arguments:**

    - `a`, `b`: rotation matrices (broadcast against each other).

    **Returns:**

    The geodesic distance on SO(3) in degrees, in [0, 180], computed as
    `atan2(|vee(R - R.T)| / 2, (trace R - 1) / 2)` with `R = a.T @ b` (accurate near 0 and 180).
    """
    relative = jnp.swapaxes(jnp.asarray(a), -1, -2) @ jnp.asarray(b)
    skew = jnp.stack(
        [
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ],
        axis=-1,
    )
    sine = _safe_norm(skew) / 2
    cosine = (jnp.trace(relative, axis1=-2, axis2=-1) - 1) / 2
    return jnp.rad2deg(jnp.arctan2(sine, cosine))


def _axis_rotation(angle_in_degrees: Array, axis: int) -> Array:
    """Textbook (active, right-handed) rotation matrices about coordinate axis `axis`."""
    angle = jnp.deg2rad(angle_in_degrees)
    c, s = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def tilt_series_view_rotation(
    tilt_angle_in_degrees: Float[ArrayLike, "*batch"],
    tilt_axis_angle_in_degrees: Float[ArrayLike, "*batch"] = 0.0,
    x_tilt_in_degrees: Float[ArrayLike, "*batch"] = 0.0,
) -> Float[Array, "*batch 3 3"]:
    """The rotation `R_f` through which a tilt image sees the tomogram (RELION 5).

    **Arguments:**

    - `tilt_angle_in_degrees`: stage tilt about the specimen's y axis (`rlnTomoYTilt`).
    - `tilt_axis_angle_in_degrees`: in-plane rotation applied after the tilt (`rlnTomoZRot`; the
      tilt axis then lies along `Rz(angle) · ŷ` in the image).
    - `x_tilt_in_degrees`: rotation about x applied first (`rlnTomoXTilt`, usually 0).

    **Returns:**

    `Rz(tilt_axis_angle) · Ry(tilt_angle) · Rx(x_tilt)` of textbook right-handed rotations, the
    rotation part of RELION 5's `Tomogram::setProjectionMatrix` (inputs broadcast together).
    """
    y_tilt, z_rotation, x_tilt = jnp.broadcast_arrays(
        jnp.asarray(tilt_angle_in_degrees, dtype=float),
        jnp.asarray(tilt_axis_angle_in_degrees, dtype=float),
        jnp.asarray(x_tilt_in_degrees, dtype=float),
    )
    return _axis_rotation(z_rotation, 2) @ _axis_rotation(y_tilt, 1) @ _axis_rotation(x_tilt, 0)
