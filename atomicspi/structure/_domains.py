"""Domain and chain motions: rigid-body motion of each domain about its centroid, and per-domain modes."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._errors import InputError
from ..conventions import axis_angle_to_matrix
from ._elastic_network import ElasticNetwork
from ._normal_modes import NormalModes, normal_modes

__all__ = [
    "domains_from_residue_ranges",
    "domains_from_normal_modes",
    "domain_centroids",
    "apply_domain_motion",
    "domain_normal_modes",
]


def domains_from_residue_ranges(
    bead_residue_numbers: Int[np.ndarray, " n_beads"],
    residue_ranges: Sequence[Sequence[Sequence[int]]],
) -> Int[np.ndarray, " n_beads"]:
    """Assign beads to domains given as lists of inclusive residue-number ranges.

    For example adenylate kinase: `[[(1, 29), (60, 121), (160, 214)], [(30, 59)], [(122, 159)]]` for
    CORE, NMP and LID. For one domain per chain use `CoarseGraining.bead_chain_indices` directly.

    **Arguments:**

    - `bead_residue_numbers`: `(n_beads,)` residue numbers as in the file (`CoarseGraining.bead_residue_numbers`).
    - `residue_ranges`: for each domain, a list of `(first, last)` residue numbers, both included.

    **Returns:** `(n_beads,)` domain index of every bead.
    """
    numbers = np.asarray(bead_residue_numbers)
    assignment = np.full(numbers.shape, -1, dtype=int)
    for domain, ranges in enumerate(residue_ranges):
        for first, last in ranges:
            inside = (numbers >= first) & (numbers <= last)
            if np.any(assignment[inside] >= 0):
                raise InputError(f"residue_ranges: range {first}-{last} of domain {domain} overlaps another domain")
            assignment[inside] = domain
    if np.any(assignment < 0):
        missing = numbers[assignment < 0]
        raise InputError(f"residue_ranges: residues {missing[:5].tolist()}{'...' if missing.size > 5 else ''} are in no domain")
    return assignment


def domains_from_normal_modes(
    network: ElasticNetwork, n_domains: int, n_modes: int = 10, seed: int = 0
) -> Int[np.ndarray, " n_beads"]:
    """Find `n_domains` quasi-rigid domains from the elastic network's lowest modes.

    Under the lowest modes, springs inside a rigid domain barely change length, while springs across
    a hinge do. Every spring (i, j) gets the variance of its length change in the Boltzmann ensemble
    of the modes, Fᵢⱼ = Σₖ ((vₖᵢ − vₖⱼ)·eᵢⱼ)²/λₖ (eᵢⱼ the unit bond vector; units kT/γ), and the
    weight exp(−Fᵢⱼ / median F). The beads are then split by spectral clustering of that weighted
    contact graph: k-means (best of 20) on the row-normalised lowest `n_domains` eigenvectors of the
    normalised graph Laplacian. Domains need not be contiguous in sequence.

    **Arguments:**

    - `network`: the elastic network of the beads.
    - `n_domains`: number of domains (≥ 2).
    - `n_modes`: number of lowest non-rigid modes that define the motion.
    - `seed`: seed of the k-means initialisations (the result is deterministic for a seed).

    **Returns:** `(n_beads,)` domain index of every bead; domain 0 holds most beads.
    """
    import scipy.cluster.vq
    import scipy.sparse
    import scipy.sparse.csgraph
    import scipy.sparse.linalg

    if n_domains < 2:
        raise ValueError(f"n_domains must be at least 2, got {n_domains}")
    modes = normal_modes(network, n_modes)
    vectors = np.asarray(modes.vectors, dtype=float)
    eigenvalues = np.asarray(modes.eigenvalues, dtype=float)
    positions = np.asarray(network.reference_positions_in_angstroms, dtype=float)
    first, second = np.asarray(network.pairs).T
    bonds = positions[first] - positions[second]
    bonds /= np.linalg.norm(bonds, axis=1, keepdims=True)
    stretch = np.einsum("kpc,pc->kp", vectors[:, first] - vectors[:, second], bonds)
    fluctuation = np.sum(stretch**2 / eigenvalues[:, None], axis=0)
    weights = np.exp(-fluctuation / np.median(fluctuation))
    n = positions.shape[0]
    adjacency = scipy.sparse.coo_matrix(
        (np.concatenate([weights, weights]), (np.concatenate([first, second]), np.concatenate([second, first]))), shape=(n, n)
    ).tocsc()
    laplacian = scipy.sparse.csgraph.laplacian(adjacency, normed=True)
    # Sparse shift-invert about just below 0 (the Laplacian's smallest eigenvalue): large networks fit.
    _, eigenvectors = scipy.sparse.linalg.eigsh(laplacian, k=n_domains, sigma=-1e-3, which="LM", v0=np.ones(n))
    embedding = eigenvectors
    embedding = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    best_inertia, labels = np.inf, None
    for _ in range(20):
        centroids, candidate = scipy.cluster.vq.kmeans2(embedding, n_domains, minit="++", seed=rng)
        inertia = np.sum((embedding - centroids[candidate]) ** 2)
        if inertia < best_inertia and np.unique(candidate).size == n_domains:
            best_inertia, labels = inertia, candidate
    if labels is None:
        raise ValueError(f"could not split the network into {n_domains} non-empty domains")
    order = np.argsort(-np.bincount(labels, minlength=n_domains), kind="stable")
    return np.argsort(order)[labels]


def domain_centroids(
    positions_in_angstroms: Float[Array, "n 3"],
    domain_assignment: Int[Array, " n"],
    n_domains: int,
) -> Float[Array, "n_domains 3"]:
    """The centroid of each domain's points.

    **Arguments:**

    - `positions_in_angstroms`: `(n, 3)` coordinates.
    - `domain_assignment`: `(n,)` domain index of every point.
    - `n_domains`: number of domains (static).

    **Returns:** `(n_domains, 3)` centroids in Å.
    """
    sums = jax.ops.segment_sum(positions_in_angstroms, domain_assignment, n_domains)
    counts = jax.ops.segment_sum(jnp.ones(positions_in_angstroms.shape[0]), domain_assignment, n_domains)
    return sums / counts[:, None]


def apply_domain_motion(
    reference_positions_in_angstroms: Float[Array, "n 3"],
    domain_assignment: Int[Array, " n"],
    rotation_vectors: Float[Array, "n_domains 3"],
    translations_in_angstroms: Float[Array, "n_domains 3"],
    centroids_in_angstroms: Float[Array, "n_domains 3"] | None = None,
) -> Float[Array, "n 3"]:
    """Move every domain rigidly: x ↦ R_d (x − c_d) + c_d + t_d.

    **Arguments:**

    - `reference_positions_in_angstroms`: `(n, 3)` coordinates (beads or atoms).
    - `domain_assignment`: `(n,)` domain index of every point.
    - `rotation_vectors`: `(n_domains, 3)` axis-angle rotation of each domain (radians) about its centroid.
    - `translations_in_angstroms`: `(n_domains, 3)` translation of each domain.
    - `centroids_in_angstroms`: `(n_domains, 3)` rotation centres; default the centroids of the given
      points. Pass the bead centroids when moving atoms so that atoms and beads move identically.

    **Returns:** `(n, 3)` moved coordinates; differentiable in rotations, translations and positions.
    """
    x = jnp.asarray(reference_positions_in_angstroms)
    n_domains = rotation_vectors.shape[0]
    if centroids_in_angstroms is None:
        centroids_in_angstroms = domain_centroids(x, domain_assignment, n_domains)
    rotations = axis_angle_to_matrix(rotation_vectors)
    centres = centroids_in_angstroms[domain_assignment]
    rotated = jnp.einsum("nij,nj->ni", rotations[domain_assignment], x - centres)
    return rotated + centres + jnp.asarray(translations_in_angstroms)[domain_assignment]


def domain_normal_modes(
    network: ElasticNetwork,
    domain_assignment: Int[np.ndarray, " n_beads"],
    n_modes_per_domain: int,
) -> NormalModes:
    """Internal modes of each domain: the ANM modes of the sub-network of springs inside the domain.

    Springs between domains are dropped, so each domain's six rigid-body modes (left out here; use
    `apply_domain_motion` for those) are exact zero modes of its sub-network. Modes are embedded in the
    full bead set (zero outside their domain), so modes of different domains are orthogonal.

    **Arguments:**

    - `network`: the full `ElasticNetwork`.
    - `domain_assignment`: `(n_beads,)` domain index of every bead (concrete).
    - `n_modes_per_domain`: non-trivial modes per domain.

    **Returns:** `NormalModes` with `n_domains · n_modes_per_domain` modes, grouped by domain (the
    lowest of domain 0 first); eigenvalues are those of the network's γ = 1 sub-Hessians.
    """
    assignment = np.asarray(domain_assignment)
    n_domains = int(assignment.max()) + 1
    pairs = network.pairs
    eigenvalues, vectors = [], []
    for domain in range(n_domains):
        beads = np.flatnonzero(assignment == domain)
        local_index = np.full(network.n_beads, -1, dtype=int)
        local_index[beads] = np.arange(beads.size)
        inside = (assignment[pairs[:, 0]] == domain) & (assignment[pairs[:, 1]] == domain)
        sub_network = ElasticNetwork(
            reference_positions_in_angstroms=network.reference_positions_in_angstroms[beads],
            pairs=local_index[pairs[inside]],
            rest_lengths_in_angstroms=network.rest_lengths_in_angstroms[inside],
            spring_weights=network.spring_weights[inside],
        )
        modes = normal_modes(sub_network, n_modes_per_domain)
        eigenvalues.append(modes.eigenvalues)
        vectors.append(jnp.zeros((n_modes_per_domain, network.n_beads, 3), modes.vectors.dtype).at[:, beads].set(modes.vectors))
    return NormalModes(eigenvalues=jnp.concatenate(eigenvalues), vectors=jnp.concatenate(vectors))
