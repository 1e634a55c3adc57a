"""atomicspi.microscope"""

from ._rotations import (
    axis_angle_to_matrix as axis_angle_to_matrix,
    euler_angles_to_matrix as euler_angles_to_matrix,
    geodesic_distance_in_degrees as geodesic_distance_in_degrees,
    matrix_to_axis_angle as matrix_to_axis_angle,
    matrix_to_euler_angles as matrix_to_euler_angles,
    matrix_to_quaternion as matrix_to_quaternion,
    matrix_to_six_d as matrix_to_six_d,
    quaternion_to_matrix as quaternion_to_matrix,
    sample_uniform_rotations as sample_uniform_rotations,
    six_d_to_matrix as six_d_to_matrix,
)
