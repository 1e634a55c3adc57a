"""Rotations and conventions (atomicspi.conventions, re-exported by atomicspi.microscope) against explicit matrices and scipy."""
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from scipy.spatial.transform import Rotation

from atomicspi.microscope import (
    axis_angle_to_matrix,
    euler_angles_to_matrix,
    geodesic_distance_in_degrees,
    matrix_to_axis_angle,
    matrix_to_euler_angles,
    matrix_to_quaternion,
    matrix_to_six_d,
    quaternion_to_matrix,
    sample_uniform_rotations,
    six_d_to_matrix,
)


def relion_rz(t):
    c, s = np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t))
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


def relion_ry(t):
    c, s = np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t))
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def random_matrices(n, seed=0):
    return Rotation.random(n, random_state=seed).as_matrix()


def test_euler_matches_explicit_relion_product(x64):
    rng = np.random.default_rng(1)
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(20, 3))
    ours = np.asarray(euler_angles_to_matrix(jnp.asarray(angles)))
    for (rot, tilt, psi), matrix in zip(angles, ours):
        np.testing.assert_allclose(matrix, relion_rz(psi) @ relion_ry(tilt) @ relion_rz(rot), atol=1e-12)
    # RELION's passive ZYZ equals scipy's intrinsic ZYZ of the negated angles, transposed.
    scipy_matrices = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(ours, scipy_matrices, atol=1e-12)


def test_euler_round_trip_including_gimbal_lock(x64):
    rng = np.random.default_rng(2)
    angles = rng.uniform([-180, 1, -180], [180, 179, 180], size=(50, 3))
    back = np.asarray(matrix_to_euler_angles(euler_angles_to_matrix(jnp.asarray(angles))))
    np.testing.assert_allclose(back, angles, atol=1e-9)
    locked = jnp.asarray([[30.0, 0.0, 20.0], [30.0, 180.0, 20.0]])
    matrices = euler_angles_to_matrix(locked)
    back = matrix_to_euler_angles(matrices)
    assert np.allclose(np.asarray(back)[:, 0], 0.0)
    np.testing.assert_allclose(np.asarray(euler_angles_to_matrix(back)), np.asarray(matrices), atol=1e-9)


def test_quaternion_matches_scipy_and_round_trips(x64):
    matrices = random_matrices(100)
    scipy_q = Rotation.from_matrix(matrices).as_quat()  # x, y, z, w
    scipy_q = np.concatenate([scipy_q[:, 3:], scipy_q[:, :3]], axis=1)
    scipy_q *= np.sign(scipy_q[:, :1])
    ours = np.asarray(matrix_to_quaternion(jnp.asarray(matrices)))
    np.testing.assert_allclose(ours, scipy_q, atol=1e-10)
    np.testing.assert_allclose(np.asarray(quaternion_to_matrix(jnp.asarray(ours))), matrices, atol=1e-10)


def test_axis_angle_matches_scipy_and_round_trips(x64):
    matrices = random_matrices(100, seed=3)
    vectors = Rotation.from_matrix(matrices).as_rotvec()
    np.testing.assert_allclose(np.asarray(axis_angle_to_matrix(jnp.asarray(vectors))), matrices, atol=1e-10)
    np.testing.assert_allclose(np.asarray(matrix_to_axis_angle(jnp.asarray(matrices))), vectors, atol=1e-8)
    tiny = np.array([[1e-9, -2e-9, 3e-9], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        np.asarray(axis_angle_to_matrix(jnp.asarray(tiny))), Rotation.from_rotvec(tiny).as_matrix(), atol=1e-14
    )
    np.testing.assert_allclose(
        np.asarray(matrix_to_axis_angle(axis_angle_to_matrix(jnp.asarray(tiny)))), tiny, atol=1e-14
    )


def test_axis_angle_gradient_finite_at_zero(x64):
    def f(v):
        return jnp.sum(axis_angle_to_matrix(v) * jnp.arange(9.0).reshape(3, 3))

    gradient = jax.grad(f)(jnp.zeros(3))
    # d/dv of (I + [v]x) contracted with W: the antisymmetric part of W.
    w = np.arange(9.0).reshape(3, 3)
    expected = np.array([w[2, 1] - w[1, 2], w[0, 2] - w[2, 0], w[1, 0] - w[0, 1]])
    np.testing.assert_allclose(np.asarray(gradient), expected, atol=1e-10)


def test_six_d_round_trip_and_gram_schmidt(x64):
    matrices = random_matrices(50, seed=4)
    np.testing.assert_allclose(np.asarray(six_d_to_matrix(matrix_to_six_d(jnp.asarray(matrices)))), matrices, atol=1e-12)
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(50, 6))
    built = np.asarray(six_d_to_matrix(jnp.asarray(raw)))
    np.testing.assert_allclose(built @ built.transpose(0, 2, 1), np.broadcast_to(np.eye(3), built.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(built), 1.0, atol=1e-12)
    first = raw[:, :3] / np.linalg.norm(raw[:, :3], axis=1, keepdims=True)
    np.testing.assert_allclose(built[:, :, 0], first, atol=1e-12)
    # The second column lies in the plane of a1 and a2, on a2's side.
    assert np.all(np.einsum("ni,ni->n", built[:, :, 1], raw[:, 3:]) > 0)
    np.testing.assert_allclose(np.einsum("ni,ni->n", built[:, :, 2], raw[:, 3:]), 0.0, atol=1e-12)


def test_sampled_rotations_are_rotations_and_haar_distributed():
    matrices = np.asarray(sample_uniform_rotations(jax.random.key(0), 4000), dtype=np.float64)
    np.testing.assert_allclose(matrices @ matrices.transpose(0, 2, 1), np.broadcast_to(np.eye(3), matrices.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-5)
    angles = np.arccos(np.clip((np.trace(matrices, axis1=1, axis2=2) - 1) / 2, -1, 1))
    # Haar density of the rotation angle on [0, pi]: (1 - cos t) / pi; its CDF is (t - sin t) / pi.
    result = scipy.stats.kstest(angles, lambda t: (t - np.sin(t)) / np.pi)
    assert result.pvalue > 1e-3
    # Rotation axes are isotropic: the z-component of R e_z is uniform on [-1, 1].
    assert scipy.stats.kstest(matrices[:, 2, 2], scipy.stats.uniform(-1, 2).cdf).pvalue > 1e-3
    # A biased sampler fails the same test.
    biased = angles[angles < 2.5]
    assert scipy.stats.kstest(biased, lambda t: (t - np.sin(t)) / np.pi).pvalue < 1e-3


def test_geodesic_distance_matches_scipy(x64):
    a = random_matrices(200, seed=6)
    b = random_matrices(200, seed=7)
    expected = np.rad2deg((Rotation.from_matrix(a).inv() * Rotation.from_matrix(b)).magnitude())
    np.testing.assert_allclose(np.asarray(geodesic_distance_in_degrees(jnp.asarray(a), jnp.asarray(b))), expected, atol=1e-8)
    near = Rotation.from_rotvec([[1e-7, 0, 0], [0, np.pi - 1e-7, 0]]).as_matrix()
    np.testing.assert_allclose(
        np.asarray(geodesic_distance_in_degrees(jnp.eye(3), jnp.asarray(near))),
        np.rad2deg([1e-7, np.pi - 1e-7]),
        rtol=1e-6,
    )


def test_batched_leading_dimensions():
    angles = jnp.zeros((2, 5, 3))
    assert euler_angles_to_matrix(angles).shape == (2, 5, 3, 3)
    assert matrix_to_quaternion(jnp.broadcast_to(jnp.eye(3), (2, 5, 3, 3))).shape == (2, 5, 4)
    assert geodesic_distance_in_degrees(jnp.eye(3), jnp.broadcast_to(jnp.eye(3), (4, 3, 3))).shape == (4,)
