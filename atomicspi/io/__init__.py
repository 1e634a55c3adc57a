"""Reading and writing the field's files: particle stacks, RELION STAR, cryoSPARC .cs, cryoDRGN pickles.

Conventions (rotations, shifts, image axes) are those written down in
`atomicspi.conventions`. Every problem with user input raises `InputError` with a
one-line message naming the file and the field.
"""

from ._config import DatasetConfig as DatasetConfig, load_config as load_config
from ._cryodrgn import (
    read_cryodrgn_ctf as read_cryodrgn_ctf,
    read_cryodrgn_poses as read_cryodrgn_poses,
    read_restricted_pickle as read_restricted_pickle,
)
from ._cryosparc import read_cryosparc as read_cryosparc, write_cryosparc as write_cryosparc
from ._dataset import (
    CTF_FIELDS as CTF_FIELDS,
    OpticsGroup as OpticsGroup,
    ParticleBatch as ParticleBatch,
    ParticleDataset as ParticleDataset,
    particle_dataset_from_arrays as particle_dataset_from_arrays,
)
from ._errors import InputError as InputError
from ._load import load_particles as load_particles
from ._mrc import (
    ImageStacks as ImageStacks,
    StackHeader as StackHeader,
    read_stack_header as read_stack_header,
    write_stack as write_stack,
    write_stack_in_chunks as write_stack_in_chunks,
)
from ._star import (
    read_relion_star as read_relion_star,
    write_particles_star as write_particles_star,
    write_relion_star as write_relion_star,
)
