"""Atomic models with physics priors: coarse graining, elastic networks, normal modes, domain motions."""

from ._atomic_model import AtomicModel as AtomicModel
from ._atomic_model import load_structure as load_structure
from ._atomic_model import load_trajectory_positions as load_trajectory_positions
from ._atoms import bond_length_penalty as bond_length_penalty
from ._atoms import bonds_from_topology as bonds_from_topology
from ._atoms import clash_candidate_pairs as clash_candidate_pairs
from ._atoms import clash_penalty as clash_penalty
from ._atoms import displace_atoms as displace_atoms
from ._atoms import move_atoms_with_domains as move_atoms_with_domains
from ._coarse_grain import CoarseGraining as CoarseGraining
from ._coarse_grain import calpha_beads as calpha_beads
from ._coarse_grain import centroid_beads as centroid_beads
from ._coarse_grain import contact_pairs as contact_pairs
from ._domains import apply_domain_motion as apply_domain_motion
from ._domains import domain_centroids as domain_centroids
from ._domains import domain_normal_modes as domain_normal_modes
from ._domains import domains_from_normal_modes as domains_from_normal_modes
from ._domains import domains_from_residue_ranges as domains_from_residue_ranges
from ._elastic_network import ElasticNetwork as ElasticNetwork
from ._normal_modes import NormalModes as NormalModes
from ._normal_modes import normal_modes as normal_modes
from ._priors import elastic_network_log_prior as elastic_network_log_prior
from ._priors import mode_amplitude_prior as mode_amplitude_prior
from ._rigid_motion import block_rigid_basis as block_rigid_basis
from ._rigid_motion import rigid_body_basis as rigid_body_basis
from ._rigid_motion import superpose as superpose
