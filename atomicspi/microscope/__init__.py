"""atomicspi.microscope"""

from ..conventions import (
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
from ._ctf import (
    CTFParameters as CTFParameters,
    compute_ctf as compute_ctf,
    compute_odd_aberration_phase as compute_odd_aberration_phase,
    wavelength_in_angstroms as wavelength_in_angstroms,
)
from ._form_factors import (
    PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED as PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED,
    atomic_gaussian_table as atomic_gaussian_table,
    peng_parameters as peng_parameters,
    residue_pseudo_atoms as residue_pseudo_atoms,
    scattering_factor as scattering_factor,
)
from ._image_model import (
    ImageModel as ImageModel,
    make_image_model as make_image_model,
    rfft_frequencies as rfft_frequencies,
)
from ._projection import (
    project_atoms_dense as project_atoms_dense,
    project_atoms_splat as project_atoms_splat,
    splat_window as splat_window,
)
from ._noise import (
    circular_mask as circular_mask,
    gaussian_log_likelihood_fourier as gaussian_log_likelihood_fourier,
    power_spectrum_on_grid as power_spectrum_on_grid,
    radial_average as radial_average,
    radial_shell_indices as radial_shell_indices,
    sample_gaussian_noise as sample_gaussian_noise,
    scale_and_offset_fourier as scale_and_offset_fourier,
)
