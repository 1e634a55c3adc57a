"""NumPyro generative models (installed as `atomicspi.models`).

Each model is a plain function `model(*, images, rotations, shifts_in_angstroms, ctf, context, n_particles, ...)`
with a `particle` plate over
the minibatch; the microscope is the likelihood. `MODELS` maps the names used in `dataset.yaml`.
"""

from ._context import ModelContext as ModelContext
from ._context import ModelOptions as ModelOptions
from ._context import build_model_context as build_model_context
from ._deformation import Decoder as Decoder
from ._deformation import decoded_structure as decoded_structure
from ._deformation import decoder_along_motions as decoder_along_motions
from ._deformation import deformation as deformation
from ._deformation import deformation_positions as deformation_positions
from ._deformation import fluctuation_field as fluctuation_field
from ._deformation import fluctuation_scale as fluctuation_scale
from ._deformation import latent_elastic_log_normaliser as latent_elastic_log_normaliser
from ._deformation import spring_constant_for_spread as spring_constant_for_spread
from ._domains import domain_positions as domain_positions
from ._domains import domains as domains
from ._homogeneous import homogeneous as homogeneous
from ._likelihood import StationaryGaussianImages as StationaryGaussianImages
from ._likelihood import image_model_of as image_model_of
from ._likelihood import inverse_noise_power as inverse_noise_power
from ._likelihood import noise_power_on_grid as noise_power_on_grid
from ._likelihood import render_images as render_images
from ._likelihood import sample_envelope as sample_envelope
from ._likelihood import with_envelope as with_envelope
from ._nma import nma as nma
from ._nma import nma_positions as nma_positions
from ._volume import VoxelDensity as VoxelDensity
from ._volume import atomless_context as atomless_context
from ._volume import prior_standard_deviation_from_half_maps as prior_standard_deviation_from_half_maps
from ._volume import volume as volume

MODELS = {"nma": nma, "deformation": deformation, "domains": domains, "homogeneous": homogeneous, "volume": volume}
