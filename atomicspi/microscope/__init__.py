"""atomicspi.microscope"""

from ..conventions import axis_angle_to_matrix as axis_angle_to_matrix
from ..conventions import euler_angles_to_matrix as euler_angles_to_matrix
from ..conventions import geodesic_distance_in_degrees as geodesic_distance_in_degrees
from ..conventions import matrix_to_axis_angle as matrix_to_axis_angle
from ..conventions import matrix_to_euler_angles as matrix_to_euler_angles
from ..conventions import matrix_to_quaternion as matrix_to_quaternion
from ..conventions import matrix_to_six_d as matrix_to_six_d
from ..conventions import quaternion_to_matrix as quaternion_to_matrix
from ..conventions import sample_uniform_rotations as sample_uniform_rotations
from ..conventions import six_d_to_matrix as six_d_to_matrix
from ._ctf import CTFParameters as CTFParameters
from ._ctf import compute_ctf as compute_ctf
from ._ctf import compute_odd_aberration_phase as compute_odd_aberration_phase
from ._ctf import ctf_batch_axes as ctf_batch_axes
from ._ctf import wavelength_in_angstroms as wavelength_in_angstroms
from ._form_factors import (
    PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED as PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED,
)
from ._form_factors import atomic_gaussian_table as atomic_gaussian_table
from ._form_factors import peng_parameters as peng_parameters
from ._form_factors import residue_pseudo_atoms as residue_pseudo_atoms
from ._form_factors import scattering_factor as scattering_factor
from ._fourier_projection import FourierProjector as FourierProjector
from ._fourier_projection import form_factor_basis as form_factor_basis
from ._fourier_projection import make_fourier_projector as make_fourier_projector
from ._fourier_projection import project_atoms_fourier as project_atoms_fourier
from ._image_model import ImageModel as ImageModel
from ._image_model import make_image_model as make_image_model
from ._image_model import rfft_frequencies as rfft_frequencies
from ._noise import circular_mask as circular_mask
from ._noise import gaussian_log_likelihood_fourier as gaussian_log_likelihood_fourier
from ._noise import half_plane_weights as half_plane_weights
from ._noise import power_spectrum_on_grid as power_spectrum_on_grid
from ._noise import radial_average as radial_average
from ._noise import radial_shell_count as radial_shell_count
from ._noise import radial_shell_indices as radial_shell_indices
from ._noise import resolution_mask as resolution_mask
from ._noise import sample_gaussian_noise as sample_gaussian_noise
from ._noise import scale_and_offset_fourier as scale_and_offset_fourier
from ._noise import smoothed_power_spectrum as smoothed_power_spectrum
from ._projection import project_atoms_dense as project_atoms_dense
from ._projection import project_atoms_splat as project_atoms_splat
from ._projection import splat_window as splat_window
