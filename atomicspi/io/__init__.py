"""Reading and writing the field's files: particle stacks, RELION STAR, cryoSPARC .cs, cryoDRGN pickles.

Conventions (rotations, shifts, image axes) are those written down in
`atomicspi.conventions`. Every problem with user input raises `InputError` with a
one-line message naming the file and the field.
"""

from ._config import DatasetConfig as DatasetConfig
from ._config import load_config as load_config
from ._cryodrgn import read_cryodrgn_ctf as read_cryodrgn_ctf
from ._cryodrgn import read_cryodrgn_poses as read_cryodrgn_poses
from ._cryodrgn import read_restricted_pickle as read_restricted_pickle
from ._cryosparc import read_cryosparc as read_cryosparc
from ._cryosparc import write_cryosparc as write_cryosparc
from ._cxi import CXI_VERSION as CXI_VERSION
from ._cxi import CXIData as CXIData
from ._cxi import CXIGeometry as CXIGeometry
from ._cxi import read_cxi as read_cxi
from ._cxi import write_cxi as write_cxi
from ._dataset import CTF_FIELDS as CTF_FIELDS
from ._dataset import OPTICS_GROUP_CTF_FIELDS as OPTICS_GROUP_CTF_FIELDS
from ._dataset import OPTIONAL_CTF_FIELDS as OPTIONAL_CTF_FIELDS
from ._dataset import PER_PARTICLE_CTF_FIELDS as PER_PARTICLE_CTF_FIELDS
from ._dataset import OpticsGroup as OpticsGroup
from ._dataset import ParticleBatch as ParticleBatch
from ._dataset import ParticleDataset as ParticleDataset
from ._dataset import particle_dataset_from_arrays as particle_dataset_from_arrays
from ._errors import InputError as InputError
from ._load import load_particles as load_particles
from ._mrc import ImageStacks as ImageStacks
from ._mrc import StackHeader as StackHeader
from ._mrc import read_stack_header as read_stack_header
from ._mrc import write_stack as write_stack
from ._mrc import write_stack_in_chunks as write_stack_in_chunks
from ._star import read_relion_star as read_relion_star
from ._star import write_particles_star as write_particles_star
from ._star import write_relion_star as write_relion_star
from ._star_summaries import write_star_with_columns as write_star_with_columns
from ._tomography import TiltSeriesImages as TiltSeriesImages
from ._tomography import TiltSeriesParticles as TiltSeriesParticles
from ._tomography import read_tilt_series_images as read_tilt_series_images
from ._tomography import read_tilt_series_particles as read_tilt_series_particles
