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
from ._diffraction import CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS as CLASSICAL_ELECTRON_RADIUS_IN_ANGSTROMS
from ._diffraction import POLARIZATIONS as POLARIZATIONS
from ._diffraction import DetectorGeometry as DetectorGeometry
from ._diffraction import DiffractionModel as DiffractionModel
from ._diffraction import PixelGeometry as PixelGeometry
from ._diffraction import default_atoms_per_chunk as default_atoms_per_chunk
from ._diffraction import make_detector_geometry as make_detector_geometry
from ._diffraction import make_diffraction_model as make_diffraction_model
from ._diffraction import molecular_amplitude as molecular_amplitude
from ._diffraction import photon_wavelength_in_angstroms as photon_wavelength_in_angstroms
from ._diffraction import pixel_geometry as pixel_geometry
from ._diffraction import poisson_log_likelihood as poisson_log_likelihood
from ._diffraction import sample_photon_counts as sample_photon_counts
from ._diffraction import xray_form_factor_parameters as xray_form_factor_parameters
from ._diffraction import xray_scattering_factor as xray_scattering_factor
from ._dose import CRITICAL_EXPOSURE_A as CRITICAL_EXPOSURE_A
from ._dose import CRITICAL_EXPOSURE_B as CRITICAL_EXPOSURE_B
from ._dose import CRITICAL_EXPOSURE_C as CRITICAL_EXPOSURE_C
from ._dose import OPTIMAL_TO_CRITICAL_EXPOSURE as OPTIMAL_TO_CRITICAL_EXPOSURE
from ._dose import compose_tilt_rotations as compose_tilt_rotations
from ._dose import (
    critical_exposure_in_electrons_per_square_angstrom as critical_exposure_in_electrons_per_square_angstrom,
)
from ._dose import critical_exposure_voltage_factor as critical_exposure_voltage_factor
from ._dose import exposure_filter as exposure_filter
from ._dose import exposure_filter_on_grid as exposure_filter_on_grid
from ._dose import (
    optimal_exposure_in_electrons_per_square_angstrom as optimal_exposure_in_electrons_per_square_angstrom,
)
from ._dose import tilt_defocus_offset_in_angstroms as tilt_defocus_offset_in_angstroms
from ._dose import tilt_series_view_rotation as tilt_series_view_rotation
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
from ._tilt_series import broadcast_ctf as broadcast_ctf
from ._tilt_series import render_tilt_series as render_tilt_series
from ._tilt_series import render_tilt_series_batch as render_tilt_series_batch
from ._tilt_series import shift_defocus as shift_defocus
from ._volume_projection import VolumeSpectrum as VolumeSpectrum
from ._volume_projection import gridding_correction_weights as gridding_correction_weights
from ._volume_projection import padded_volume_size as padded_volume_size
from ._volume_projection import project_volume as project_volume
from ._volume_projection import project_volume_fourier as project_volume_fourier
from ._volume_projection import slice_field as slice_field
from ._volume_projection import slice_frequencies as slice_frequencies
from ._volume_projection import volume_spectrum as volume_spectrum
