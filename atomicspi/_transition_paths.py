"""Closed → open transition paths whose physics the fit does not share, for benchmarks.

Two generators of all-atom paths between two structures of the same atoms (adenylate kinase's
closed and open states in the benchmarks), each parameterised by Cα arc length:

- `hinge_path`: every domain but the first turns rigidly about its own fixed screw axis
  (exp(s · log T) in SE(3)), then a local elastic relaxation of the Cα trace mends the chain at the
  hinges.
- `adaptive_anm_path`: the adaptive anisotropic network model morph (Yang, Song & Jernigan 2009,
  Biophys. J. 96:4438): small steps along the lowest normal modes of the *current* structure's
  elastic network, recomputed at every step.

Both return positions in the frame of `closed`, with the first domain (CORE) kept in place. A path
position s ∈ [0, 1] is the fraction of the path's Cα arc length travelled (arc length = cumulative
Cα RMSD between consecutive nodes of a fine internal discretisation, positions interpolated linearly
between nodes). `path_positions_of` reads a structure's path position back off the path's nodes;
`two_state_path_positions` draws a two-state population along a path.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import scipy.spatial.transform
import scipy.stats

if TYPE_CHECKING:
    from atomicspi._simulation import SimulatedParticles
    from atomicspi.structure import AtomicModel

__all__ = [
    "adaptive_anm_path",
    "hinge_path",
    "path_positions_of",
    "small_hinge_stack",
    "two_state_path_positions",
]


# --- rigid-body helpers ----------------------------------------------------------------------------


def _kabsch(mobile, target):
    """Rotation R `(..., 3, 3)` and translation t `(..., 3)` minimising Σ |R xᵢ + t − yᵢ|² for point
    sets `mobile` xᵢ and `target` yᵢ of shape `(..., m, 3)` (proper rotations only)."""
    mobile_centre = mobile.mean(axis=-2)
    target_centre = target.mean(axis=-2)
    covariance = np.einsum("...mi,...mj->...ij", mobile - mobile_centre[..., None, :], target - target_centre[..., None, :])
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(np.einsum("...ij,...jk->...ik", u, vt)))
    correction = np.broadcast_to(np.eye(3), sign.shape + (3, 3)).copy()
    correction[..., 2, 2] = sign
    rotation = np.einsum("...ij,...jk,...kl->...li", u, correction, vt)  # (u c vt)ᵀ maps column vectors
    translation = target_centre - np.einsum("...ij,...j->...i", rotation, mobile_centre)
    return rotation, translation


def _superpose_onto(mobile_positions, target_positions, fit_indices):
    """`mobile_positions` `(n, 3)` moved rigidly so that its points `fit_indices` best match `target_positions`'."""
    rotation, translation = _kabsch(mobile_positions[fit_indices], target_positions[fit_indices])
    return mobile_positions @ rotation.T + translation


def _skew(vector):
    x, y, z = vector
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _screw_left_jacobian(rotation_vector):
    """V(ω) = I + (1 − cos θ)/θ² [ω]ₓ + (θ − sin θ)/θ³ [ω]ₓ², which maps a twist's linear part to the
    translation of exp of the twist in SE(3)."""
    theta = float(np.linalg.norm(rotation_vector))
    w = _skew(rotation_vector)
    if theta < 1e-8:
        return np.eye(3) + 0.5 * w
    return np.eye(3) + (1.0 - np.cos(theta)) / theta**2 * w + (theta - np.sin(theta)) / theta**3 * (w @ w)


def _screw_interpolation(rotation, translation, fractions):
    """exp(s · log T) for the rigid transform T = (R, t): rotation by s θ about T's screw axis plus s
    times its translation along the axis. **Returns:** rotations `(n, 3, 3)`, translations `(n, 3)`."""
    rotation_vector = scipy.spatial.transform.Rotation.from_matrix(rotation).as_rotvec()
    linear = np.linalg.solve(_screw_left_jacobian(rotation_vector), translation)
    fractions = np.asarray(fractions, dtype=float)
    rotations = scipy.spatial.transform.Rotation.from_rotvec(fractions[:, None] * rotation_vector[None]).as_matrix()
    translations = np.stack([_screw_left_jacobian(s * rotation_vector) @ (s * linear) for s in fractions])
    return rotations.reshape(-1, 3, 3), translations


# --- shared bookkeeping ------------------------------------------------------------------------------


def _calpha_bookkeeping(closed, open_):
    """Cα atom indices, the Cα index of every atom's residue, and the residue number of every Cα."""
    if closed.n_atoms != open_.n_atoms:
        raise ValueError(f"structures have {closed.n_atoms} and {open_.n_atoms} atoms")
    calpha = closed.topology.select("name CA and protein")
    residue_to_calpha = np.full(closed.n_residues, -1)
    residue_to_calpha[closed.residue_indices[calpha]] = np.arange(calpha.size)
    atom_to_calpha = residue_to_calpha[closed.residue_indices]
    if np.any(atom_to_calpha < 0):
        raise ValueError("every atom's residue needs a Cα atom (protein only)")
    residue_numbers = np.array([closed.topology.atom(int(index)).residue.resSeq for index in calpha])
    return calpha, atom_to_calpha, residue_numbers


def _members(residue_numbers, residue_ranges):
    """Boolean mask of the residues whose numbers fall in any inclusive [first, last] range."""
    mask = np.zeros(residue_numbers.shape, dtype=bool)
    for first, last in residue_ranges:
        mask |= (residue_numbers >= first) & (residue_numbers <= last)
    return mask


def _arc_length_path_positions(calpha_nodes):
    """Path position of each node: cumulative Cα RMSD between consecutive nodes over the total."""
    steps = np.sqrt(np.mean(np.sum(np.diff(calpha_nodes, axis=0) ** 2, axis=-1), axis=-1))
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    if cumulative[-1] <= 0:
        raise ValueError("the path has zero length")
    return cumulative / cumulative[-1]


def _interpolate_nodes(node_positions, node_path_positions, path_positions):
    """Positions `(n, n_atoms, 3)` at path positions s, linearly between the two nodes around each s."""
    s = np.asarray(path_positions, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"path_positions must be one-dimensional, got shape {s.shape}")
    if np.any((s < 0) | (s > 1)) or not np.all(np.isfinite(s)):
        raise ValueError("path_positions must lie in [0, 1]")
    upper = np.clip(np.searchsorted(node_path_positions, s, side="right"), 1, len(node_path_positions) - 1)
    lower = upper - 1
    width = node_path_positions[upper] - node_path_positions[lower]
    weight = np.where(width > 0, (s - node_path_positions[lower]) / np.where(width > 0, width, 1.0), 0.0)
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    positions = (1.0 - weight) * node_positions[lower] + weight * node_positions[upper]
    # s = 0 is the first node exactly (the closed structure), not a blend with round-off.
    positions[s == 0.0] = node_positions[0]
    return positions


# --- the hinge path ----------------------------------------------------------------------------------


def _relaxation_energy(flat_positions, pairs, rest_lengths, spring_constants, restraint_weights, rigid_positions):
    """E(x) = Σ_springs ½ kᵢⱼ (|xᵢ − xⱼ| − d⁰ᵢⱼ)² + Σᵢ ½ wᵢ |xᵢ − rᵢ|² and its gradient."""
    x = flat_positions.reshape(-1, 3)
    difference = x[pairs[:, 0]] - x[pairs[:, 1]]
    length = np.linalg.norm(difference, axis=1)
    stretch = length - rest_lengths
    offset = x - rigid_positions
    energy = 0.5 * np.sum(spring_constants * stretch**2) + 0.5 * np.sum(restraint_weights[:, None] * offset**2)
    force = (spring_constants * stretch / np.maximum(length, 1e-12))[:, None] * difference
    gradient = restraint_weights[:, None] * offset
    for axis in range(3):
        gradient[:, axis] += np.bincount(pairs[:, 0], force[:, axis], minlength=x.shape[0])
        gradient[:, axis] -= np.bincount(pairs[:, 1], force[:, axis], minlength=x.shape[0])
    return energy, gradient.ravel()


def _relaxation_hessian(positions, pairs, rest_lengths, spring_constants, restraint_weights, convex=False):
    """Sparse Hessian of `_relaxation_energy`: per spring kᵢⱼ [u uᵀ + (1 − d⁰ᵢⱼ/dᵢⱼ) (I − u uᵀ)] (u the
    unit vector along it), plus wᵢ I. With `convex`, the transverse term of compressed springs is
    dropped, which makes it positive definite when every wᵢ > 0."""
    difference = positions[pairs[:, 0]] - positions[pairs[:, 1]]
    length = np.maximum(np.linalg.norm(difference, axis=1), 1e-12)
    unit = difference / length[:, None]
    outer = unit[:, :, None] * unit[:, None, :]
    tension = 1.0 - rest_lengths / length
    transverse = (np.maximum(tension, 0.0) if convex else tension)[:, None, None] * (np.eye(3)[None] - outer)
    block = spring_constants[:, None, None] * (outer + transverse)  # (n_springs, 3, 3)
    axis_a, axis_b = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    rows, columns, values = [], [], []
    for first, second, sign in ((0, 0, 1.0), (1, 1, 1.0), (0, 1, -1.0), (1, 0, -1.0)):
        rows.append((3 * pairs[:, first, None, None] + axis_a).ravel())
        columns.append((3 * pairs[:, second, None, None] + axis_b).ravel())
        values.append((sign * block).ravel())
    n = 3 * positions.shape[0]
    rows.append(np.arange(n))
    columns.append(np.arange(n))
    values.append(np.repeat(restraint_weights, 3))
    return scipy.sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=(n, n))


def _minimise_relaxation_energy(start, pairs, rest_lengths, spring_constants, restraint_weights, rigid_positions, max_iterations=100):
    """Minimise `_relaxation_energy` from `start` by damped Newton steps (sparse direct solves with
    the exact Hessian, or its convex part where that gives no descent direction; backtracking on the
    energy) until every gradient component is below 10⁻⁶."""
    arguments = (pairs, rest_lengths, spring_constants, restraint_weights, rigid_positions)
    x = np.asarray(start, dtype=float).ravel().copy()
    energy, gradient = _relaxation_energy(x, *arguments)
    for _ in range(max_iterations):
        if np.max(np.abs(gradient)) < 1e-6:
            break
        for convex in (False, True):
            hessian = _relaxation_hessian(x.reshape(-1, 3), pairs, rest_lengths, spring_constants, restraint_weights, convex)
            direction = -scipy.sparse.linalg.spsolve(hessian, gradient)
            slope = float(gradient @ direction)
            if np.isfinite(slope) and slope < 0:
                break
        step = 1.0
        while True:
            trial_energy, trial_gradient = _relaxation_energy(x + step * direction, *arguments)
            if trial_energy <= energy + 1e-4 * step * slope or step < 1e-6:
                break
            step *= 0.5
        x, energy, gradient = x + step * direction, trial_energy, trial_gradient
    return x.reshape(-1, 3)


def _hinge_nodes(
    closed,
    open_,
    domain_residue_ranges,
    n_nodes,
    spring_cutoff_in_angstroms,
    hinge_half_width_in_residues,
    hinge_restraint_weight,
    restraint_weight,
    sequence_spring_constant,
    hinge_spring_constant,
):
    """All-atom nodes `(n_nodes, n_atoms, 3)` of the hinge path at evenly spaced screw fractions."""
    calpha, atom_to_calpha, residue_numbers = _calpha_bookkeeping(closed, open_)
    n_residues = calpha.size
    labels = np.full(n_residues, -1)
    for domain, ranges in enumerate(domain_residue_ranges):
        labels[_members(residue_numbers, ranges) & (labels < 0)] = domain
    if np.any(labels < 0):
        # Residues outside every range join the domain of their nearest assigned neighbour in sequence.
        assigned = np.flatnonzero(labels >= 0)
        if assigned.size == 0:
            raise ValueError("domain_residue_ranges cover no residue")
        nearest = assigned[np.argmin(np.abs(np.arange(n_residues)[:, None] - assigned[None]), axis=1)]
        labels = labels[nearest]
    if np.count_nonzero(labels == 0) < 3:
        raise ValueError("the first domain (kept in place) needs at least three residues")

    closed_all = np.asarray(closed.positions_in_angstroms, dtype=float)
    closed_calpha = closed_all[calpha]
    open_calpha = _superpose_onto(np.asarray(open_.positions_in_angstroms, dtype=float)[calpha], closed_calpha, labels == 0)
    fractions = np.linspace(0.0, 1.0, n_nodes)
    # Rigid transforms of every domain at every fraction: identity for the first domain.
    rotations = np.broadcast_to(np.eye(3), (len(domain_residue_ranges), n_nodes, 3, 3)).copy()
    translations = np.zeros((len(domain_residue_ranges), n_nodes, 3))
    for domain in range(1, len(domain_residue_ranges)):
        members = labels == domain
        if np.count_nonzero(members) < 3:
            raise ValueError(f"domain {domain} has fewer than three residues")
        rotation, translation = _kabsch(closed_calpha[members], open_calpha[members])
        rotations[domain], translations[domain] = _screw_interpolation(rotation, translation, fractions)

    # Springs of the closed structure: all Cα pairs within the cutoff inside a domain, and sequence
    # neighbours |i − j| ≤ 2 (across hinges too, which keeps the chain connected).
    index_i, index_j = np.triu_indices(n_residues, k=1)
    rest = np.linalg.norm(closed_calpha[index_i] - closed_calpha[index_j], axis=1)
    boundaries = np.flatnonzero(labels[1:] != labels[:-1])  # between residue b and b + 1
    distance_to_hinge = np.full(n_residues, np.inf)
    for boundary in boundaries:
        distance_to_hinge = np.minimum(distance_to_hinge, np.minimum(np.abs(np.arange(n_residues) - boundary), np.abs(np.arange(n_residues) - boundary - 1)))
    hinge = distance_to_hinge <= hinge_half_width_in_residues
    weights = np.where(hinge, hinge_restraint_weight, restraint_weight)
    sequence = index_j - index_i <= 2
    keep = ((labels[index_i] == labels[index_j]) & (rest <= spring_cutoff_in_angstroms)) | sequence
    hinge_pair = hinge[index_i] | hinge[index_j]
    spring_constants = np.where(sequence, sequence_spring_constant, np.where(hinge_pair, hinge_spring_constant, 1.0))[keep]
    pairs = np.stack([index_i[keep], index_j[keep]], axis=1)
    rest_lengths = rest[keep]

    nodes = np.empty((n_nodes,) + closed_all.shape)
    relaxation = np.zeros((n_residues, 3))
    atom_labels = labels[atom_to_calpha]
    hinge_atoms = hinge[atom_to_calpha]
    for node in range(n_nodes):
        rigid_calpha = np.einsum("rij,rj->ri", rotations[labels, node], closed_calpha) + translations[labels, node]
        if node > 0:
            relaxed = _minimise_relaxation_energy(rigid_calpha + relaxation, pairs, rest_lengths, spring_constants, weights, rigid_calpha)
            relaxation = relaxed - rigid_calpha
        rigid_atoms = np.einsum("aij,aj->ai", rotations[atom_labels, node], closed_all) + translations[atom_labels, node]
        nodes[node] = rigid_atoms + relaxation[atom_to_calpha]
        if node > 0:
            # Hinge residues turn with their local chain (Cα of i − 1, i, i + 1) rather than with one
            # domain, so that the peptide bonds across a boundary are not torn apart.
            local = _residue_frame_atoms(closed_all, closed_calpha, atom_to_calpha, (rigid_calpha + relaxation)[None])[0]
            nodes[node, hinge_atoms] = local[hinge_atoms]
    return nodes, calpha


def hinge_path(
    closed,
    open,  # noqa: A002 - the open state
    domain_residue_ranges,
    path_positions,
    n_nodes: int = 61,
    spring_cutoff_in_angstroms: float = 12.0,
    hinge_half_width_in_residues: int = 3,
    hinge_restraint_weight: float = 0.01,
    restraint_weight: float = 10.0,
    sequence_spring_constant: float = 10.0,
    hinge_spring_constant: float = 0.03,
    return_nodes: bool = False,
):
    """Rigid-hinge arcs with local elastic relaxation, closed → open.

    Open is superposed onto closed on the first domain's Cα (which stays in place). Each other
    domain d moves by exp(u · log T_d), the screw-motion interpolation of the rigid transform T_d
    (Kabsch) that takes its closed Cα onto its open Cα: rotation by u θ_d about T_d's fixed screw axis
    plus u times its translation along the axis. The Cα trace is then relaxed by minimising (damped
    Newton steps with an analytic gradient and sparse Hessian, warm-started from the previous node)

        E(x) = Σ ½ kᵢⱼ (|xᵢ − xⱼ| − d⁰ᵢⱼ)² + Σᵢ ½ wᵢ |xᵢ − rᵢ|²,

    with springs d⁰ᵢⱼ of the closed structure between Cα within `spring_cutoff_in_angstroms` inside a
    domain (kᵢⱼ = 1, or `hinge_spring_constant` where one end is a hinge residue, within
    `hinge_half_width_in_residues` of a domain boundary, so that hinges bend) and between all
    sequence neighbours |i − j| ≤ 2, across hinges too (kᵢⱼ = `sequence_spring_constant`: keeps the
    chain's virtual bonds and angles), rᵢ the rigidly moved Cα, and wᵢ = `hinge_restraint_weight`
    (weak) at hinge residues, `restraint_weight` elsewhere. (Without the weak domain springs at the
    hinges, a hinge residue held only by its sequence neighbours can snap between mirror positions
    along the path.) Every atom gets its domain's rigid transform plus its residue's Cα relaxation
    displacement, except at hinge residues, whose atoms turn with their local chain (the rotation,
    Kabsch, that maps the closed Cα of residues i − 1, i, i + 1 onto the relaxed ones, about their Cα),
    so that the peptide bonds across a boundary are not torn apart. The path is computed at
    `n_nodes` evenly spaced u and re-parameterised by Cα arc length.

    **Arguments:**

    - `closed`, `open`: `AtomicModel`s of the same atoms (closed fixes the frame).
    - `domain_residue_ranges`: domains as lists of inclusive `[first, last]` residue numbers, the
      first one kept in place (e.g. `ADENYLATE_KINASE_DOMAINS`: CORE, NMP, LID); residues outside
      every range join their nearest domain in sequence.
    - `path_positions`: `(n,)` path positions s ∈ [0, 1] (0 = closed, 1 = the path's open end).
    - `n_nodes`: internal discretisation of the path.
    - `spring_cutoff_in_angstroms`, `hinge_half_width_in_residues`, `hinge_restraint_weight`,
      `restraint_weight`, `sequence_spring_constant`, `hinge_spring_constant`: the relaxation energy
      above (in units of the domains' spring constant).
    - `return_nodes`: also return the nodes.

    **Returns:** positions `(n, n_atoms, 3)` in Å; with `return_nodes`, also the nodes' all-atom
    positions `(n_nodes, n_atoms, 3)` and their path positions `(n_nodes,)`.
    """
    nodes, calpha = _hinge_nodes(
        closed, open, domain_residue_ranges, n_nodes, spring_cutoff_in_angstroms,
        hinge_half_width_in_residues, hinge_restraint_weight, restraint_weight, sequence_spring_constant,
        hinge_spring_constant,
    )
    node_path_positions = _arc_length_path_positions(nodes[:, calpha])
    positions = _interpolate_nodes(nodes, node_path_positions, path_positions)
    return (positions, nodes, node_path_positions) if return_nodes else positions


# --- the adaptive ANM path ---------------------------------------------------------------------------


def _residue_frame_atoms(closed_all, closed_calpha, atom_to_calpha, calpha_nodes):
    """All-atom nodes: each residue's atoms turned by the rotation (Kabsch) that maps the closed Cα of
    residues i − 1, i, i + 1 onto the node's (i, i + 1, i + 2 and i − 2, i − 1, i at the termini), about
    its own Cα, which lands on the node's Cα exactly."""
    n_residues = closed_calpha.shape[0]
    if n_residues < 3:
        raise ValueError("the path needs at least three residues")
    centre = np.clip(np.arange(n_residues), 1, n_residues - 2)
    triplets = centre[:, None] + np.array([-1, 0, 1])[None]
    rotations, _ = _kabsch(closed_calpha[triplets][None], calpha_nodes[:, triplets])  # (nodes, residues, 3, 3)
    local = closed_all - closed_calpha[atom_to_calpha]
    return np.einsum("naij,aj->nai", rotations[:, atom_to_calpha], local) + calpha_nodes[:, atom_to_calpha]


def _adaptive_anm_calpha_nodes(
    closed_calpha,
    open_calpha,
    frame_mask,
    cutoff_in_angstroms,
    cumulative_overlap_threshold,
    initial_modes,
    max_modes,
    step_fraction,
    max_step_rmsd_in_angstroms,
    bond_spring_constant,
    tolerance_rmsd_in_angstroms,
    max_iterations,
):
    """Cα iterates of the adaptive ANM morph (see `adaptive_anm_path`), each superposed on the closed
    frame residues. **Returns:** `(n_nodes, n_residues, 3)` and the number of modes used per step."""
    from threadpoolctl import threadpool_limits

    from atomicspi.structure import ElasticNetwork, normal_modes

    n_residues = closed_calpha.shape[0]
    all_modes = 3 * n_residues - 6
    max_modes = all_modes if max_modes is None else min(int(max_modes), all_modes)
    n_modes = min(int(initial_modes), max_modes)
    # Virtual Cα–Cα bonds keep their closed lengths: a soft projection after every step, because linear
    # mode steps stretch them and the network, rebuilt at every step, never pulls them back.
    bonds = np.stack([np.arange(n_residues - 1), np.arange(1, n_residues)], axis=1)
    bond_lengths = np.linalg.norm(closed_calpha[1:] - closed_calpha[:-1], axis=1)
    bond_constants = np.full(n_residues - 1, float(bond_spring_constant))
    unit_weights = np.ones(n_residues)
    everything = np.ones(n_residues, dtype=bool)
    current = closed_calpha.copy()
    nodes, modes_used = [current.copy()], []
    remaining_rmsd = np.inf
    for _ in range(max_iterations):
        remaining = _superpose_onto(open_calpha, current, everything) - current
        remaining_rmsd = float(np.sqrt(np.mean(np.sum(remaining**2, axis=1))))
        if remaining_rmsd <= tolerance_rmsd_in_angstroms:
            break
        with threadpool_limits(limits=1, user_api="blas"):
            modes = normal_modes(ElasticNetwork.from_positions(current, cutoff_in_angstroms), n_modes, method="dense")
        vectors = np.asarray(modes.vectors, dtype=float).reshape(n_modes, -1)
        coefficients = vectors @ remaining.ravel()
        cumulative_overlap = np.sqrt(np.cumsum(coefficients**2)) / np.linalg.norm(remaining)
        n_used = min(n_modes, int(np.searchsorted(cumulative_overlap, cumulative_overlap_threshold)) + 1)
        if cumulative_overlap[-1] < cumulative_overlap_threshold:
            n_modes = min(2 * n_modes, max_modes)  # as ProDy's calcAdaptiveANM: more modes next time
        step = (step_fraction * coefficients[:n_used] @ vectors[:n_used]).reshape(-1, 3)
        step_rmsd = float(np.sqrt(np.mean(np.sum(step**2, axis=1))))
        if step_rmsd > max_step_rmsd_in_angstroms:
            step *= max_step_rmsd_in_angstroms / step_rmsd
        stepped = current + step
        if bond_spring_constant > 0:
            stepped = _minimise_relaxation_energy(stepped, bonds, bond_lengths, bond_constants, unit_weights, stepped)
        current = _superpose_onto(stepped, closed_calpha, frame_mask)
        nodes.append(current.copy())
        modes_used.append(n_used)
    else:
        remaining = _superpose_onto(open_calpha, current, everything) - current
        remaining_rmsd = float(np.sqrt(np.mean(np.sum(remaining**2, axis=1))))
    if remaining_rmsd > tolerance_rmsd_in_angstroms:
        warnings.warn(
            f"adaptive ANM path stopped after {max_iterations} steps {remaining_rmsd:.2f} Å (Cα RMSD) from the open state",
            stacklevel=3,
        )
    return np.stack(nodes), np.asarray(modes_used)


def adaptive_anm_path(
    closed,
    open,  # noqa: A002 - the open state
    path_positions,
    cutoff_in_angstroms: float = 18.0,
    frame_residue_ranges=None,
    cumulative_overlap_threshold: float = 0.5,
    initial_modes: int = 20,
    max_modes: int | None = None,
    step_fraction: float = 0.2,
    max_step_rmsd_in_angstroms: float = 0.25,
    bond_spring_constant: float = 10.0,
    tolerance_rmsd_in_angstroms: float = 0.5,
    max_iterations: int = 300,
    return_nodes: bool = False,
):
    """Adaptive anisotropic network model morph closed → open (Yang, Song & Jernigan 2009).

    Starting at closed's Cα, repeat: superpose open's Cα onto the current Cα (all Cα); build the Cα
    ANM of the *current* structure (`cutoff_in_angstroms`; the fit uses 15 Å, this deliberately
    differs); project the remaining displacement onto its lowest modes, keeping modes in order of
    frequency until their cumulative overlap √(Σₖ cos² θₖ) reaches `cumulative_overlap_threshold`
    (at least one); step `step_fraction` of that projection (capped at `max_step_rmsd_in_angstroms`
    RMSD); restore the virtual Cα–Cα bond lengths of closed (minimise Σ ½ k (|xᵢ − xᵢ₊₁| − d⁰)² +
    Σ ½ |xᵢ − x̃ᵢ|² about the stepped positions x̃, k = `bond_spring_constant`; 0 skips this); superpose
    onto closed on the frame residues. Stop within `tolerance_rmsd_in_angstroms` of open (Cα RMSD
    after superposition) or after `max_iterations`. The modes on offer start at `initial_modes` and
    double whenever all of them fall short of the threshold (as ProDy's `calcAdaptiveANM` does), up
    to `max_modes`: on adenylate kinase, 20 modes stall 3.9 Å from open, because the NMP tip's
    remaining displacement is orthogonal to the 20 softest modes of the 18 Å network. The iterates
    are the path's nodes. Every residue's atoms get the rotation (Kabsch) that maps the closed Cα
    of residues i − 1, i, i + 1 onto the node's, about its Cα, which follows the node.

    **Arguments:**

    - `closed`, `open`: `AtomicModel`s of the same atoms (closed fixes the frame).
    - `path_positions`: `(n,)` path positions s ∈ [0, 1] (0 = closed, 1 = the last iterate).
    - `cutoff_in_angstroms`: the ANM contact cutoff.
    - `frame_residue_ranges`: inclusive `[first, last]` residue-number ranges kept in place (e.g.
      adenylate kinase's CORE, `ADENYLATE_KINASE_DOMAINS[0]`); `None` superposes on all Cα.
    - `cumulative_overlap_threshold`, `initial_modes`, `max_modes` (`None`: all 3n − 6),
      `step_fraction`, `max_step_rmsd_in_angstroms`, `bond_spring_constant`,
      `tolerance_rmsd_in_angstroms`, `max_iterations`: the iteration above.
    - `return_nodes`: also return the nodes.

    **Returns:** positions `(n, n_atoms, 3)` in Å; with `return_nodes`, also the nodes' all-atom
    positions `(n_nodes, n_atoms, 3)` and their path positions `(n_nodes,)`.
    """
    calpha, atom_to_calpha, residue_numbers = _calpha_bookkeeping(closed, open)
    frame_mask = np.ones(calpha.size, dtype=bool) if frame_residue_ranges is None else _members(residue_numbers, frame_residue_ranges)
    if np.count_nonzero(frame_mask) < 3:
        raise ValueError("frame_residue_ranges must hold at least three residues")
    closed_all = np.asarray(closed.positions_in_angstroms, dtype=float)
    calpha_nodes, _ = _adaptive_anm_calpha_nodes(
        closed_all[calpha], np.asarray(open.positions_in_angstroms, dtype=float)[calpha], frame_mask, cutoff_in_angstroms,
        cumulative_overlap_threshold, initial_modes, max_modes, step_fraction, max_step_rmsd_in_angstroms,
        bond_spring_constant, tolerance_rmsd_in_angstroms, max_iterations,
    )
    nodes = _residue_frame_atoms(closed_all, closed_all[calpha], atom_to_calpha, calpha_nodes)
    nodes[0] = closed_all
    node_path_positions = _arc_length_path_positions(calpha_nodes)
    positions = _interpolate_nodes(nodes, node_path_positions, path_positions)
    return (positions, nodes, node_path_positions) if return_nodes else positions


# --- reading path positions and drawing populations ------------------------------------------------


def path_positions_of(calpha_positions, path_calpha_nodes, node_path_positions=None) -> np.ndarray | float:
    """Path position of each structure: its nearest path node in Cα RMSD (no superposition: both in
    the frame of the poses), refined by the vertex of the parabola through the squared RMSDs to that
    node and its two neighbours.

    **Arguments:**

    - `calpha_positions`: `(n, n_residues, 3)` Cα positions in Å (or `(n_residues, 3)` for one).
    - `path_calpha_nodes`: `(n_nodes, n_residues, 3)` the path's Cα at its nodes.
    - `node_path_positions`: `(n_nodes,)` the nodes' path positions, increasing; `None` for nodes
      evenly spaced in [0, 1].

    **Returns:** `(n,)` path positions in [0, 1] (a scalar for one structure).
    """
    x = np.asarray(calpha_positions, dtype=float)
    single = x.ndim == 2
    x = x.reshape((-1,) + x.shape[-2:])
    nodes = np.asarray(path_calpha_nodes, dtype=float)
    if nodes.ndim != 3 or nodes.shape[1:] != x.shape[1:] or nodes.shape[0] < 3:
        raise ValueError(f"path_calpha_nodes must be (n_nodes ≥ 3, {x.shape[1]}, 3), got {nodes.shape}")
    n_nodes = nodes.shape[0]
    grid = np.linspace(0.0, 1.0, n_nodes) if node_path_positions is None else np.asarray(node_path_positions, dtype=float)
    squared = (
        np.sum(x**2, axis=(1, 2))[:, None] + np.sum(nodes**2, axis=(1, 2))[None] - 2.0 * np.einsum("mrc,krc->mk", x, nodes)
    ) / x.shape[1]
    nearest = np.argmin(squared, axis=1)
    centre = np.clip(nearest, 1, n_nodes - 2)
    rows = np.arange(x.shape[0])
    before, middle, after = squared[rows, centre - 1], squared[rows, centre], squared[rows, centre + 1]
    curvature = before - 2.0 * middle + after
    vertex = np.where(curvature > 0, 0.5 * (before - after) / np.where(curvature > 0, curvature, 1.0), 0.0)
    vertex = np.clip(vertex, -1.0, 1.0)
    # The vertex in node units around `centre`, mapped through the (possibly uneven) node positions.
    below = np.where(vertex < 0, grid[centre] - grid[centre - 1], grid[centre + 1] - grid[centre])
    s = np.clip(grid[centre] + vertex * below, grid[0], grid[-1])
    return float(s[0]) if single else s


def two_state_path_positions(
    n: int,
    minor_fraction: float,
    rng,
    major_mean: float = 0.15,
    minor_mean: float = 0.8,
    standard_deviation: float = 0.08,
):
    """A two-state population along a path: a major state near closed and a minor state near open,
    each a normal distribution truncated to [0, 1].

    **Arguments:**

    - `n`: number of particles.
    - `minor_fraction`: the minor state's share; exactly round(n · minor_fraction) particles, at
      random places in the returned order.
    - `rng`: a `numpy.random.Generator`.
    - `major_mean`, `minor_mean`, `standard_deviation`: the states' (untruncated) means and width.

    **Returns:** `(path_positions (n,), states (n,))`, states 0 (major) and 1 (minor).
    """
    if not 0.0 <= minor_fraction <= 1.0:
        raise ValueError(f"minor_fraction must lie in [0, 1], got {minor_fraction}")
    states = np.zeros(n, dtype=int)
    states[rng.permutation(n)[: int(round(n * minor_fraction))]] = 1
    means = np.where(states == 1, minor_mean, major_mean)
    lower, upper = (0.0 - means) / standard_deviation, (1.0 - means) / standard_deviation
    s = scipy.stats.truncnorm.rvs(lower, upper, loc=means, scale=standard_deviation, size=n, random_state=rng)
    return np.asarray(s, dtype=float), states


class SmallHingeStack(NamedTuple):
    """`small_hinge_stack`'s particles and their truth."""

    closed: AtomicModel  # the reference: Cα, centred on its mean
    particles: SimulatedParticles  # images with contrast variation and noise
    path_positions: np.ndarray  # (n,) true path positions
    states: np.ndarray  # (n,) 0 major, 1 minor
    calpha_positions_in_angstroms: np.ndarray  # (n, n_residues, 3) true structures
    path_calpha_nodes: np.ndarray  # (101, n_residues, 3) the path at evenly spaced positions


def small_hinge_stack(
    closed_path, open_path, domains, *, n: int = 256, box_size: int = 24, pixel_size_in_angstroms: float = 4.0,
    snr: float = 1.0, minor_fraction: float = 0.25, contrast_log_std: float = 0.2, seed: int = 11,
) -> SmallHingeStack:
    """The CI-sized version of the issue-19 benchmark (`tests/test_path_recovery.py`,
    `bench/ci_hinge_ablation.py`): Cα adenylate kinase along `hinge_path`, a two-state population
    (`two_state_path_positions`), images by atomicspi's renderer at unit contrast scaled to the SNR,
    then per-particle contrast exp(N(0, `contrast_log_std`²)) and unit white noise."""
    import dataclasses

    from atomicspi._simulation import simulate_particles
    from atomicspi.structure import load_structure

    closed = load_structure(closed_path).calpha()
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    opened = load_structure(open_path).calpha()
    rng = np.random.default_rng(seed)
    truth_s, states = two_state_path_positions(n, minor_fraction, rng)
    truth = hinge_path(closed, opened, domains, truth_s)
    nodes = hinge_path(closed, opened, domains, np.linspace(0.0, 1.0, 101))
    clean = simulate_particles(closed, truth, box_size, pixel_size_in_angstroms, 1e12, seed=seed).images.astype(float)
    clean /= np.sqrt(np.mean(np.var(clean, axis=(1, 2))) / snr)
    contrast = np.exp(contrast_log_std * rng.standard_normal(n))
    particles = simulate_particles(closed, truth, box_size, pixel_size_in_angstroms, snr, seed=seed)
    particles = dataclasses.replace(
        particles, images=(contrast[:, None, None] * clean + rng.standard_normal(clean.shape)).astype(np.float32)
    )
    return SmallHingeStack(closed, particles, truth_s, states, truth, nodes)
