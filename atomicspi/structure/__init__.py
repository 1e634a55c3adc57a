"""Atomic models with physics priors: coarse graining, elastic networks, normal modes, domain motions."""

from ._atomic_model import AtomicModel as AtomicModel
from ._atomic_model import load_structure as load_structure
from ._atomic_model import load_trajectory_positions as load_trajectory_positions
