"""Exact per-particle posteriors along the principal curve of a fitted latent space.

A fitted deformation model has a decoder from a latent z to a structure and a guide q(z | image).
Along a one-dimensional motion the guide's means scatter about a curve in z: the images inform the
position along it, and each image's noise pulls its latent off it in directions that the decoder
turns into structural changes the truth does not have (issue 19: the posterior-mean structures sat
0.44 Å off the true path, 0.33 Å of it per particle). On the curve itself the posterior of a
particle's position is one-dimensional, so it can be computed exactly on a grid instead of
approximated by a Gaussian around an encoder's guess:

1. `principal_curve`: the curve through the middle of the guide means (Hastie & Stuetzle 1989),
   `n_nodes` nodes equally spaced in arc length, extended past the extreme means;
2. `curve_image_statistics`: every node decoded and rendered at every particle's pose and CTF, with
   the inner products that the Gaussian likelihood needs (with each node's neighbour, so the images
   between nodes are interpolated linearly: `substeps` grid points per interval);
3. `grid_log_likelihoods`: log p(image | grid point), the contrast marginalised under its prior;
4. `path_population`: the population along the curve by EM (the nonparametric maximum-likelihood
   mixing distribution, smoothed), which is the prior of every particle's posterior and the
   free-energy profile along the path;
5. `PathPosterior`: per particle the grid posterior, its mean, central interval and draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats
from jaxtyping import Array, Bool, Complex, Float, Int, PRNGKeyArray

__all__ = [
    "CurveImageStatistics", "PathPosterior", "arc_lengths", "contrast_grid", "curve_explained_variance", "curve_grid", "curve_image_statistics", "extend_curve_along_structure",
    "fit_node_structures", "grid_log_likelihoods", "grid_posterior_weights", "node_responsibilities", "path_population", "path_posterior",
    "posterior_windows", "principal_curve", "refine_curve", "residual_power_ratio", "unfolded_curve_structures", "weighted_inner_product",
]


def _project_on_polyline(points: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc-length coordinate of each point's nearest point on the polyline through `nodes`, and the
    squared distance to it."""
    starts, ends = nodes[:-1], nodes[1:]
    segments = ends - starts
    lengths = np.linalg.norm(segments, axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    squared_lengths = np.maximum(lengths**2, 1e-24)
    t = np.clip(np.einsum("nsd,sd->ns", points[:, None] - starts[None], segments) / squared_lengths, 0.0, 1.0)
    nearest = starts[None] + t[..., None] * segments[None]
    distances = np.sum((points[:, None] - nearest) ** 2, axis=-1)
    segment = np.argmin(distances, axis=1)
    rows = np.arange(len(points))
    return cumulative[segment] + t[rows, segment] * lengths[segment], distances[rows, segment]


def _resample_by_arc_length(nodes: np.ndarray, n_nodes: int) -> np.ndarray:
    lengths = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = np.linspace(0.0, cumulative[-1], n_nodes)
    return np.stack([np.interp(targets, cumulative, nodes[:, j]) for j in range(nodes.shape[1])], axis=1)


def principal_curve(
    points: Float[np.ndarray, "n d"],
    n_nodes: int,
    *,
    iterations: int = 10,
    bandwidth_in_nodes: float = 2.0,
    extension: float = 0.1,
    running_lines: bool = False,
) -> Float[np.ndarray, "n_nodes d"]:
    """The principal curve through a cloud of points (Hastie & Stuetzle 1989): start on the first
    principal axis; then repeatedly project every point on the curve (arc length) and move each node
    to the kernel-weighted mean of the points projected near it (Gaussian kernel of
    `bandwidth_in_nodes` node spacings), nodes respaced equally in arc length. With `running_lines`
    each node is instead the value at its arc length of the kernel-weighted straight-line fit of the
    points against their arc length (Hastie & Stuetzle's "running lines"): a kernel-weighted mean
    pulls the end nodes inwards by about a bandwidth (every point near an end lies on one side of
    it), a line through the same points does not, so a smooth curve (a wide kernel) still reaches
    the extreme points.

    **Arguments:**

    - `points`: `(n, d)`, e.g. the guide's posterior means of the latent.
    - `n_nodes`: nodes of the returned curve.
    - `iterations`: projection–averaging rounds.
    - `bandwidth_in_nodes`: kernel width in node spacings (larger: smoother).
    - `extension`: each end is extended straight along its end direction by this share of the
      curve's length (means are shrunk towards the population's centre; the extreme particles'
      posteriors need room beyond them).
    - `running_lines`: local straight-line fits instead of local means (see above).

    **Returns:** `(n_nodes, d)` nodes ordered along the curve, equally spaced in arc length; the
    first node is at the end where the first principal coordinate is smallest.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) < 2:
        raise ValueError(f"principal_curve needs (n >= 2, d) points, got shape {points.shape}")
    if n_nodes < 3:
        raise ValueError(f"n_nodes must be at least 3, got {n_nodes}")
    centre = points.mean(axis=0)
    _, _, directions = np.linalg.svd(points - centre, full_matrices=False)
    axis = directions[0]
    coordinates = (points - centre) @ axis
    nodes = centre + np.linspace(coordinates.min(), coordinates.max(), n_nodes)[:, None] * axis
    for _ in range(iterations):
        arc, _ = _project_on_polyline(points, nodes)
        total = max(float(np.sum(np.linalg.norm(np.diff(nodes, axis=0), axis=1))), 1e-12)
        targets = np.linspace(0.0, total, n_nodes)
        width = bandwidth_in_nodes * total / (n_nodes - 1)
        offsets = arc[None] - targets[:, None]  # (K, n)
        weights = np.exp(-0.5 * (offsets / width) ** 2)
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
        smoothed = weights @ points
        if running_lines:  # the weighted least-squares line's value at each node's arc length
            first = np.sum(weights * offsets, axis=1)  # weighted mean offset
            second = np.sum(weights * offsets**2, axis=1)
            variance = second - first**2
            slope = ((weights * offsets) @ points - first[:, None] * smoothed) / np.maximum(variance, 1e-12 * width**2)[:, None]
            smoothed = smoothed - first[:, None] * slope
        nodes = _resample_by_arc_length(smoothed, n_nodes)
    # Extend both ends straight on, then respace.
    total = float(np.sum(np.linalg.norm(np.diff(nodes, axis=0), axis=1)))
    head, tail = nodes[0] - nodes[1], nodes[-1] - nodes[-2]
    head /= max(np.linalg.norm(head), 1e-12)
    tail /= max(np.linalg.norm(tail), 1e-12)
    extended = np.concatenate([[nodes[0] + extension * total * head], nodes, [nodes[-1] + extension * total * tail]])
    nodes = _resample_by_arc_length(extended, n_nodes)
    if (nodes[-1] - nodes[0]) @ axis < 0:
        nodes = nodes[::-1]
    return nodes


def extend_curve_along_structure(
    nodes: Float[np.ndarray, "n_nodes d"],
    structure_of: Callable[[Float[Array, " d"]], Float[Array, " m"]],
    extension: float,
    *,
    tangent_nodes: int = 3,
    largest_step_in_spacings: float = 2.0,
) -> Float[np.ndarray, "n_nodes d"]:
    """Extend a latent curve at both ends so that its *structures* run on straight: from each end,
    Gauss–Newton steps in the latent whose decoded structure moves along the structures' direction
    at that end, until the structures have gone `extension` × their length along the curve.

    A straight extension in the latent (`principal_curve`'s `extension`) runs on along the curve's
    last latent direction. Where the particles' latent means hardly change with their position near
    an end (the guide's noise dominates there), that direction is noise, and the decoder can turn it
    into structures that run back along the path. This extension follows the structures' own
    direction at the end (over `tangent_nodes` node spacings) instead, as far as the decoder can
    move that way. (On the adaptive-ANM benchmark it did not move the fold of the curve's open end:
    there the trained decoder can follow only a third of the path's continuation; bench/RESULTS.md,
    sixteenth session.)

    **Arguments:**

    - `nodes`: `(K, d)` the curve's latent nodes, not yet extended, ordered along it.
    - `structure_of`: latent `(d,)` → structure `(m,)` (flattened), differentiable with JAX.
    - `extension`: the extension at each end as a share of the structures' length along the curve
      (the sum of the node-to-node structure distances).
    - `tangent_nodes`: node spacings over which the end direction is measured.
    - `largest_step_in_spacings`: a latent step is at most this many of the curve's mean latent
      node spacings (where the decoder hardly moves, the least-squares step would be unbounded).

    **Returns:** `(K, d)` latent nodes of the extended curve, equally spaced in latent arc length.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    n_nodes = len(nodes)
    if n_nodes <= tangent_nodes:
        raise ValueError(f"extend_curve_along_structure needs more than tangent_nodes = {tangent_nodes} nodes, got {n_nodes}")
    flat = jax.jit(lambda z: jnp.ravel(structure_of(z)))
    jacobian = jax.jit(jax.jacfwd(flat))
    structures = np.stack([np.asarray(flat(jnp.asarray(z, dtype=jnp.float32)), dtype=np.float64) for z in nodes])
    length = float(np.sum(np.linalg.norm(np.diff(structures, axis=0), axis=1)))
    spacing = float(np.mean(np.linalg.norm(np.diff(nodes, axis=0), axis=1)))
    n_steps = max(1, int(round(extension * (n_nodes - 1))))

    def run_on(end: int, inward: int) -> np.ndarray:
        direction = structures[end] - structures[inward]
        direction /= max(float(np.linalg.norm(direction)), 1e-300)
        step = direction * extension * length / n_steps  # equal structure steps along the end direction
        z, target, added = nodes[end].copy(), structures[end].copy(), []
        for _ in range(n_steps):
            target = target + step
            current = np.asarray(flat(jnp.asarray(z, dtype=jnp.float32)), dtype=np.float64)
            matrix = np.asarray(jacobian(jnp.asarray(z, dtype=jnp.float32)), dtype=np.float64)  # (m, d)
            delta = np.linalg.lstsq(matrix, target - current, rcond=None)[0]
            size = float(np.linalg.norm(delta))
            if size > largest_step_in_spacings * spacing:
                delta *= largest_step_in_spacings * spacing / size
            z = z + delta
            added.append(z.copy())
        return np.asarray(added)

    head = run_on(0, tangent_nodes)[::-1]
    tail = run_on(n_nodes - 1, n_nodes - 1 - tangent_nodes)
    return _resample_by_arc_length(np.concatenate([head, nodes, tail]), n_nodes)


def unfolded_curve_structures(
    structures: Float[np.ndarray, "n_nodes n_points 3"],
    *,
    tangent_nodes: int = 3,
    tolerance_in_steps: float = 1.0,
) -> tuple[Float[np.ndarray, "n_nodes n_points 3"], Bool[np.ndarray, " n_nodes"]]:
    """Where a curve's structures fold back near an end, straight continuations to replace them.

    Along a curve that runs on to its ends, each node's structure moves away from the structure at
    the opposite end. A decoder that cannot reach the end of the motion makes the curve fold: its
    structures' distance from the opposite end (root-mean-square over the points) peaks at an
    interior node k* and falls from there to the end, so the particles beyond the fold are placed
    at it. On the issue-19 adaptive-ANM stack the distance peaks ten nodes before the open end
    (path position 0.81) and the end's structure is back at 0.51 (bench/RESULTS.md, seventeenth
    session). Here, at each end where the fall exceeds `tolerance_in_steps` mean node steps, the
    nodes past k* get targets on the straight line from k* along the structures' direction over the
    `tangent_nodes` node spacings before it, each at the mean node step of those spacings.

    **Arguments:**

    - `structures`: `(K, n, 3)` the nodes' structures (any common frame, e.g. bead displacements).
    - `tangent_nodes`: node spacings over which the direction before the fold is measured.
    - `tolerance_in_steps`: the least fall, in mean node steps, that counts as a fold.

    **Returns:** `(targets, folded)`: the structures with the folded nodes' replaced `(K, n, 3)`, and
    which nodes were replaced `(K,)`.
    """
    structures = np.asarray(structures, dtype=np.float64)
    n_nodes = len(structures)
    targets, folded = structures.copy(), np.zeros(n_nodes, dtype=bool)
    steps = np.sqrt(np.mean(np.sum(np.diff(structures, axis=0) ** 2, axis=-1), axis=-1))
    tolerance = tolerance_in_steps * float(np.mean(steps))
    for order in (np.arange(n_nodes), np.arange(n_nodes)[::-1]):  # towards the last node, then the first
        ordered = structures[order]
        distance = np.sqrt(np.mean(np.sum((ordered - ordered[0]) ** 2, axis=-1), axis=-1))
        peak = int(np.argmax(distance))
        if peak < tangent_nodes or peak == n_nodes - 1 or distance[peak] - distance[-1] <= tolerance:
            continue
        step = (ordered[peak] - ordered[peak - tangent_nodes]) / tangent_nodes
        for j, node in enumerate(order[peak + 1 :], start=1):
            targets[node] = ordered[peak] + j * step
            folded[node] = True
    return targets, folded


def fit_node_structures(
    parameters: Any,
    structures_of: Callable[[Any], Float[Array, "n_nodes n_points 3"]],
    targets: Float[np.ndarray, "n_nodes n_points 3"],
    *,
    trainable: Any = True,
    n_steps: int = 1000,
    learning_rate: float = 1e-2,
) -> tuple[Any, float]:
    """Move `parameters` so that the nodes' structures reach `targets` (least squares over every
    node and point, Adam): e.g. a decoder's fine fields, from zero, to the continuations of
    `unfolded_curve_structures` while the other nodes keep theirs.

    **Arguments:**

    - `parameters`: the pytree of arrays.
    - `structures_of`: `parameters → (K, n, 3)` the nodes' structures.
    - `targets`: `(K, n, 3)`.
    - `trainable`: a pytree of bools like `parameters` (or one bool): which arrays move.
    - `n_steps`, `learning_rate`: Adam's steps and step size.

    **Returns:** `(parameters, rms)`: the fitted parameters and the root-mean-square distance (over
    nodes and points) left between the structures and the targets.
    """
    import equinox as eqx
    import optax

    moving, fixed = eqx.partition(parameters, trainable)
    goal = jnp.asarray(targets, dtype=jnp.float32)

    def loss(moving):
        return jnp.mean(jnp.sum((structures_of(eqx.combine(moving, fixed)) - goal) ** 2, axis=-1))

    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.01))

    @jax.jit
    def run(moving):
        def step(carry, _):
            moving, state = carry
            value, gradient = jax.value_and_grad(loss)(moving)
            updates, state = optimizer.update(gradient, state, moving)
            return (optax.apply_updates(moving, updates), state), value

        (moving, _), _ = jax.lax.scan(step, (moving, optimizer.init(moving)), None, length=n_steps)
        return moving, jnp.sqrt(loss(moving))

    moving, rms = run(moving)
    return eqx.combine(moving, fixed), float(rms)


def curve_explained_variance(points: Float[np.ndarray, "n d"], nodes: Float[np.ndarray, "n_nodes d"]) -> float:
    """Share of the points' variance that the curve explains: 1 − (mean squared distance of each
    point to the curve) / (mean squared distance to the points' mean). Near 1 for a cloud about a
    one-dimensional motion, but not a test of one-dimensionality: a curve of 32 nodes snakes
    through a uniform square and explains 0.92 of it.
    """
    points = np.asarray(points, dtype=np.float64)
    _, distances = _project_on_polyline(points, np.asarray(nodes, dtype=np.float64))
    total = float(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1)))
    return float(1.0 - np.mean(distances) / max(total, 1e-300))


def curve_grid(nodes: Float[np.ndarray, "n_nodes d"], substeps: int) -> Float[np.ndarray, "n_grid d"]:
    """The grid along the polyline through `nodes`: `substeps` points per interval, from each node
    towards the next, then the last node ((K − 1)·substeps + 1 points)."""
    nodes = np.asarray(nodes)
    t = np.arange(substeps) / substeps
    inner = nodes[:-1, None] * (1 - t)[:, None] + nodes[1:, None] * t[:, None]  # (K − 1, substeps, d)
    return np.concatenate([inner.reshape(-1, nodes.shape[1]), nodes[-1:]])


def contrast_grid(contrast_log_mean: float, contrast_log_std: float, n_contrasts: int) -> Float[np.ndarray, " n_contrasts"]:
    """Equal-mass grid of the contrast prior LogNormal(contrast_log_mean, contrast_log_std²): the
    midpoints of `n_contrasts` equal quantile bins."""
    quantiles = (np.arange(n_contrasts) + 0.5) / n_contrasts
    return np.exp(contrast_log_mean + contrast_log_std * scipy.stats.norm.ppf(quantiles))


def weighted_inner_product(
    weights: Float[Array, "*#batch y x_half"], a: Complex[Array, "*#batch y x_half"], b: Complex[Array, "*#batch y x_half"]
) -> Float[Array, "*#batch"]:
    """`Σ_k W(k) Re(a(k) b*(k))` over the rfft2 grid: the likelihood's inner product of two
    images' transforms under the inverse noise power `W` (`inverse_noise_power`; leading axes
    broadcast, e.g. one `W` for a batch of images)."""
    return jnp.sum(weights * (a.real * b.real + a.imag * b.imag), axis=(-2, -1))


class CurveImageStatistics(NamedTuple):
    """Per particle and node k, the noise-weighted inner products of the Gaussian likelihood
    (`<a, b> = Σ_k W(k) Re(â(k) b̂*(k))`, `W` the inverse noise power per `noise_std²`):
    `cross (n, W)` = <image, m_k>, `energy (n, W)` = <m_k, m_k>, `neighbour (n, W − 1)` = <m_k, m_{k+1}>,
    m_k the noise-free image of node k at the particle's pose, shift and CTF, for the W nodes
    `starts[i], …, starts[i] + W − 1` of each particle's window on a curve of `n_nodes` (all of them:
    `starts` 0, W = `n_nodes`)."""

    cross: Float[np.ndarray, "n window"]
    energy: Float[np.ndarray, "n window"]
    neighbour: Float[np.ndarray, "n window_minus_1"]
    starts: Int[np.ndarray, " n"]
    n_nodes: int


def curve_image_statistics(
    render: Callable[[Float[Array, "batch n_atoms 3"], Mapping[str, Any]], Float[Array, "batch y x"]],
    inverse_noise_power: Callable[[Mapping[str, Any]], Float[Array, "*batch y x_half"]],
    node_positions: Float[Array | np.ndarray, "n_nodes n_atoms 3"],
    batches: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    starts: Int[np.ndarray, " n"] | None = None,
    window: int | None = None,
) -> CurveImageStatistics:
    """The likelihood's inner products for every particle and curve node, streaming over batches.

    **Arguments:**

    - `render`: `(atom positions (B, n_atoms, 3), batch) → (B, D, D)` the noise-free image of each
      particle's structure at its pose, shift and CTF, in the images' units at unit contrast.
    - `inverse_noise_power`: `batch → (D, D // 2 + 1)` or `(B, D, D // 2 + 1)` weights on the rfft2
      grid: half-plane multiplicity × frequency mask / (D² · noise power in units of `noise_std²`).
      For white noise over all frequencies, `<a, b>` is then the pixel sum of `a · b`.
    - `node_positions`: the nodes' atom positions.
    - `batches`: `(count, batch)` in input order, `count` the batch's real (unpadded) particles,
      each batch with its particles' `indices`.
    - `starts`, `window`: only the `window` nodes from `starts[i]` for particle i (its posterior's
      neighbourhood, once known: a window of a quarter of the nodes costs a quarter of the renders);
      by default every node.

    **Returns:** `CurveImageStatistics`.
    """
    nodes = jnp.asarray(node_positions, dtype=jnp.float32)
    n_nodes = nodes.shape[0]
    window = n_nodes if window is None else int(window)
    if not 2 <= window <= n_nodes:
        raise ValueError(f"window {window} is not between 2 and the {n_nodes} nodes")

    @jax.jit
    def statistics(batch, first_nodes):
        images = jnp.fft.rfft2(jnp.asarray(batch["images"], dtype=jnp.float32))
        weights = inverse_noise_power(batch)

        def inner(a, b):
            return weighted_inner_product(weights, a, b)

        first = jnp.fft.rfft2(render(nodes[first_nodes], batch))

        def step(previous, offset):
            rendered = jnp.fft.rfft2(render(nodes[first_nodes + offset], batch))
            return rendered, (inner(images, rendered), inner(rendered, rendered), inner(previous, rendered))

        _, (cross, energy, neighbour) = jax.lax.scan(step, first, jnp.arange(1, window))
        cross = jnp.concatenate([inner(images, first)[None], cross])
        energy = jnp.concatenate([inner(first, first)[None], energy])
        return cross.T, energy.T, neighbour.T

    parts: list[tuple[np.ndarray, ...]] = []
    all_starts: list[np.ndarray] = []
    for count, batch in batches:
        indices = np.asarray(batch["indices"])
        first_nodes = np.zeros(len(indices), dtype=np.int32) if starts is None else np.asarray(starts)[indices].astype(np.int32)
        first_nodes = np.clip(first_nodes, 0, n_nodes - window)
        parts.append(tuple(np.asarray(value, dtype=np.float64)[:count] for value in statistics(batch, jnp.asarray(first_nodes))))
        all_starts.append(first_nodes[:count])
    cross, energy, neighbour = (np.concatenate([part[i] for part in parts]) for i in range(3))
    return CurveImageStatistics(cross, energy, neighbour, np.concatenate(all_starts).astype(np.int64), n_nodes)


def residual_power_ratio(
    render: Callable[[Float[Array, "batch n_atoms 3"], Mapping[str, Any]], Float[Array, "batch y x"]],
    inverse_noise_power: Callable[[Mapping[str, Any]], Float[Array, "*batch y x_half"]],
    node_positions: Float[Array | np.ndarray, "n_nodes n_atoms 3"],
    batches: Iterable[tuple[int, Mapping[str, Any]]],
    best_grid: Int[np.ndarray, " n"],
    *,
    substeps: int,
    noise_std: float,
) -> Float[np.ndarray, "y x_half"]:
    """Per frequency shell, the power the images have left after the fit over the power the noise
    model gives them, broadcast on the rfft2 grid: divide the noise model's weights by it and the
    likelihood counts model error (a structure, an envelope or a renderer the data do not quite
    have) as noise where it lives, as RELION's noise spectrum from the residuals of the projections
    does. Where the model fits, the ratio is 1 (the noise variance is `noise_std²`); where the model
    predicts signal the images lack, or lacks signal they have, it is larger, and those frequencies
    inform each particle's posterior less. Without it the posterior along the path is as sure as if
    the model were exact, and its intervals are too narrow (issue 19).

    The residual of particle i is `ŷ − c m̂(g_i)` at its grid point `g_i = best_grid[i]`
    (`substeps` per node interval, the image between nodes interpolated as in `grid_log_likelihoods`),
    c the least-squares contrast. Per shell,
    `ratio = Σ W |residual|² / (noise_std² · Σ (multiplicity − leverage))` over particles and the
    shell's entries the weights `W` observe, the multiplicity the entry's count in the full plane (1
    on the columns kx = 0 and D/2, else 2): for noise as modelled `E[W |n̂|²] = multiplicity ·
    noise_std²`, less the share the fit of the particle's two parameters (contrast, and position
    along the curve, linearised) absorbs, the entry's leverage `W Re(x G⁻¹ x^H)` with x = (m̂, ∂m̂),
    G their Gram matrix (the leverages of a particle sum to 2). The signal lives in the few entries
    of the lowest shells, so without that correction their noise would come out 10–15 % low.

    **Arguments:** `render`, `inverse_noise_power`, `node_positions` and `batches` as for
    `curve_image_statistics`; `best_grid`: `(n,)` each particle's grid point (e.g. its posterior mode).

    **Returns:** `(D, D // 2 + 1)` the ratio of each entry's shell (1 where no entry is observed).
    """
    from atomicspi.microscope import half_plane_weights, radial_shell_indices

    nodes = jnp.asarray(node_positions, dtype=jnp.float32)
    n_nodes = nodes.shape[0]
    best_grid = np.asarray(best_grid)

    @jax.jit
    def sums(batch, lower, share):
        images = jnp.fft.rfft2(jnp.asarray(batch["images"], dtype=jnp.float32))
        box_size = images.shape[-2]
        weights = jnp.broadcast_to(inverse_noise_power(batch), images.shape)
        first = jnp.fft.rfft2(render(nodes[lower], batch))
        second = jnp.fft.rfft2(render(nodes[jnp.minimum(lower + 1, n_nodes - 1)], batch))
        predicted = (1 - share)[:, None, None] * first + share[:, None, None] * second
        along = second - first  # the direction the position moves the image in

        def inner(a, b):
            return weighted_inner_product(weights, a, b)

        contrast = jnp.maximum(inner(images, predicted) / jnp.maximum(inner(predicted, predicted), 1e-30), 0.0)
        residual = images - contrast[:, None, None] * predicted
        # leverage of each entry in the fit of (contrast, position), linearised: W Re(x G⁻¹ x^H), x = (m, dm)
        gram = jnp.stack([jnp.stack([inner(predicted, predicted), inner(predicted, along)], -1),
                          jnp.stack([inner(along, predicted), inner(along, along)], -1)], -2)
        gram = gram + 1e-9 * jnp.trace(gram, axis1=-2, axis2=-1)[:, None, None] * jnp.eye(2) + 1e-30 * jnp.eye(2)
        inverse = jnp.linalg.inv(gram)[:, :, :, None, None]
        leverage = weights * (inverse[:, 0, 0] * jnp.abs(predicted) ** 2 + inverse[:, 1, 1] * jnp.abs(along) ** 2
                              + 2 * inverse[:, 0, 1] * (predicted * jnp.conj(along)).real)
        multiplicity = half_plane_weights(box_size)[None, :]
        degrees = jnp.where(weights > 0, multiplicity - leverage, 0.0)
        return weights * (residual.real**2 + residual.imag**2), degrees

    weighted_power, degrees = None, None
    for count, batch in batches:
        indices = np.asarray(batch["indices"])
        grid = best_grid[indices]
        lower = np.minimum(grid // substeps, n_nodes - 1)
        share = (grid - lower * substeps) / substeps
        power, free = sums(batch, jnp.asarray(lower, dtype=jnp.int32), jnp.asarray(share, dtype=jnp.float32))
        power, free = np.asarray(power, dtype=np.float64)[:count].sum(axis=0), np.asarray(free, dtype=np.float64)[:count].sum(axis=0)
        weighted_power = power if weighted_power is None else weighted_power + power
        degrees = free if degrees is None else degrees + free
    if weighted_power is None or degrees is None:
        raise ValueError("no batches")
    shells = np.asarray(radial_shell_indices(weighted_power.shape[0]))
    power_by_shell = np.bincount(shells.ravel(), weights=weighted_power.ravel())
    expected_by_shell = noise_std**2 * np.bincount(shells.ravel(), weights=degrees.ravel())
    ratio = np.where(expected_by_shell > 0, power_by_shell / np.maximum(expected_by_shell, 1e-300), 1.0)
    return ratio[shells]


def posterior_windows(
    weights: Float[np.ndarray, "n n_grid"], n_nodes: int, smallest_window: int = 10, mass: float = 0.999
) -> tuple[Int[np.ndarray, " n"], int]:
    """Where the next `curve_image_statistics` pass needs to look, from the particles' grid
    posteriors `(n, G)`: one window length for all, the nodes spanning the central `mass` of the
    posterior for 99 % of the particles (at least `smallest_window`), and each particle's window
    centred on its posterior's central interval.

    **Returns:** `(starts (n,), window)`."""
    n_grid = weights.shape[1]
    node_of_grid = np.linspace(0.0, n_nodes - 1, n_grid)
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    tail = 0.5 * (1.0 - mass)
    low = node_of_grid[np.argmax(cdf >= tail, axis=1)]
    high = node_of_grid[np.argmax(cdf >= 1.0 - tail, axis=1)]
    window = int(min(n_nodes, max(smallest_window, np.ceil(np.percentile(high - low, 99)) + 3)))
    starts = np.clip(np.rint(0.5 * (low + high) - 0.5 * (window - 1)), 0, n_nodes - window).astype(np.int64)
    return starts, window


def _interpolated_statistics(statistics: CurveImageStatistics, substeps: int) -> tuple[np.ndarray, np.ndarray]:
    """<image, m(g)> and <m(g), m(g)> on the grid of `substeps` points per node interval, the image
    between nodes k and k + 1 taken as (1 − t) m_k + t m_{k+1}."""
    t = np.arange(substeps) / substeps  # (J,)
    cross, energy, neighbour = statistics.cross, statistics.energy, statistics.neighbour
    cross_grid = (1 - t) * cross[:, :-1, None] + t * cross[:, 1:, None]
    energy_grid = ((1 - t) ** 2 * energy[:, :-1, None] + 2 * t * (1 - t) * neighbour[..., None] + t**2 * energy[:, 1:, None])
    n = cross.shape[0]
    cross_grid = np.concatenate([cross_grid.reshape(n, -1), cross[:, -1:]], axis=1)
    energy_grid = np.concatenate([energy_grid.reshape(n, -1), energy[:, -1:]], axis=1)
    return cross_grid, energy_grid


def grid_log_likelihoods(
    statistics: CurveImageStatistics,
    *,
    substeps: int,
    noise_std: float,
    contrast_log_mean: float,
    contrast_log_std: float,
    n_contrasts: int = 41,
) -> Float[np.ndarray, "n n_grid"]:
    """log p(image_i | grid point g) up to a constant per particle, on the grid of `substeps` points
    per node interval ((K − 1)·substeps + 1 points), for image = c · m(g) + noise of variance
    `noise_std²` (times the weights' power), the contrast c ~ LogNormal(contrast_log_mean,
    contrast_log_std²) marginalised on an equal-mass grid of `n_contrasts` points:
    log p = logsumexp_c [(c <y, m> − c² <m, m> / 2) / σ²] − log n_contrasts."""
    cross, energy = _interpolated_statistics(statistics, substeps)
    contrasts = contrast_grid(contrast_log_mean, contrast_log_std, n_contrasts)
    variance = noise_std**2
    n_columns = int(cross.shape[-1])
    windowed = np.empty((len(cross), n_columns))
    for start in range(0, len(cross), 4096):  # (chunk, G, C) at a time
        c, e = cross[start : start + 4096, :, None], energy[start : start + 4096, :, None]
        terms = (contrasts * c - 0.5 * contrasts**2 * e) / variance
        windowed[start : start + 4096] = scipy.special.logsumexp(terms, axis=-1) - np.log(n_contrasts)
    n_grid = (statistics.n_nodes - 1) * substeps + 1
    if n_columns == n_grid:
        return windowed
    result = np.full((len(windowed), n_grid), -np.inf)  # nothing outside each particle's window
    columns = statistics.starts[:, None] * substeps + np.arange(n_columns)[None]
    np.put_along_axis(result, columns, windowed, axis=1)
    return result


def grid_posterior_weights(
    log_likelihood: Float[np.ndarray, "n n_grid"], population: Float[np.ndarray, " n_grid"]
) -> Float[np.ndarray, "n n_grid"]:
    """Each particle's posterior weights on the grid under the prior `population`."""
    log_posterior = log_likelihood + np.log(np.asarray(population) + 1e-300)[None]
    log_posterior -= log_posterior.max(axis=1, keepdims=True)
    weights = np.exp(log_posterior)
    return weights / weights.sum(axis=1, keepdims=True)


def path_population(
    log_likelihood: Float[np.ndarray, "n n_grid"],
    *,
    iterations: int = 100,
    smoothing_in_grid_points: float = 2.0,
) -> Float[np.ndarray, " n_grid"]:
    """The population along the grid that maximises the marginal likelihood of all particles
    (EM for the mixing weights π: π ← mean over particles of p(g | image_i, π)), each round
    smoothed by a Gaussian kernel of `smoothing_in_grid_points` (the unsmoothed maximum is a few
    spikes, whose posteriors would be too narrow). Starts flat.

    **Returns:** `(n_grid,)` weights summing to one."""
    n_grid = log_likelihood.shape[1]
    offsets = np.arange(n_grid)
    kernel = np.exp(-0.5 * ((offsets[:, None] - offsets[None]) / max(smoothing_in_grid_points, 1e-6)) ** 2)
    kernel /= kernel.sum(axis=0, keepdims=True)  # columns sum to one: mass is kept
    population = np.full(n_grid, 1.0 / n_grid)
    for _ in range(iterations):
        population = kernel @ grid_posterior_weights(log_likelihood, population).mean(axis=0)
        population /= population.sum()
    return population


class PathPosterior(NamedTuple):
    """Per-particle posteriors along a curve in latent space.

    - `nodes`: `(K, d)` the curve's latents; `grid`: `(G, d)` the grid's latents (`substeps` per interval).
    - `arc_length_in_angstroms`: `(G,)` position along the curve: the cumulative root-mean-square
      displacement of the beads (Cα) between consecutive grid structures.
    - `population`: `(G,)` the population along the curve (`path_population`).
    - `mean_in_angstroms`, `low_in_angstroms`, `high_in_angstroms`: `(n,)` each particle's posterior
      mean and central interval (`interval_mass`).
    - `draws_in_angstroms`: `(n, S)` and `draw_latents`: `(n, S, d)`, draws from each posterior.
    """

    nodes: np.ndarray
    grid: np.ndarray
    arc_length_in_angstroms: np.ndarray
    population: np.ndarray
    mean_in_angstroms: np.ndarray
    low_in_angstroms: np.ndarray
    high_in_angstroms: np.ndarray
    draws_in_angstroms: np.ndarray
    draw_latents: np.ndarray


def path_posterior(
    log_likelihood: Float[np.ndarray, "n n_grid"],
    nodes: Float[np.ndarray, "n_nodes d"],
    arc_length_in_angstroms: Float[np.ndarray, " n_grid"],
    n_samples: int,
    *,
    key: PRNGKeyArray,
    interval_mass: float = 0.9,
    population: Float[np.ndarray, " n_grid"] | None = None,
) -> PathPosterior:
    """Each particle's posterior on the grid (prior: `population`, by default `path_population`),
    summarised and drawn from. A draw picks a grid point by its weight and a uniform offset within its
    cell, so draws are continuous along the curve.

    **Returns:** `PathPosterior`."""
    n, n_grid = log_likelihood.shape
    grid = curve_grid(nodes, (n_grid - 1) // (len(nodes) - 1))
    if population is None:
        population = path_population(log_likelihood)
    weights = grid_posterior_weights(log_likelihood, population)
    arc = np.asarray(arc_length_in_angstroms, dtype=np.float64)
    mean = weights @ arc
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    tail = 0.5 * (1.0 - interval_mass)
    # Continuous quantiles: the cdf of grid point g is reached at the end of its cell.
    cell_ends = np.concatenate([0.5 * (arc[1:] + arc[:-1]), arc[-1:]])
    low = np.array([np.interp(tail, row, cell_ends) for row in cdf])
    high = np.array([np.interp(1 - tail, row, cell_ends) for row in cdf])
    uniform = np.asarray(jax.random.uniform(key, (n, n_samples)), dtype=np.float64)
    positions = np.stack([np.interp(u, np.concatenate([[0.0], row]), np.concatenate([[arc[0]], cell_ends]))
                          for u, row in zip(uniform, cdf)])
    draw_latents = np.stack([np.interp(positions, arc, grid[:, j]) for j in range(grid.shape[1])], axis=-1)
    return PathPosterior(nodes, grid, arc, population, mean, low, high, positions, draw_latents)


def arc_lengths(bead_positions: Float[np.ndarray, "n_grid n_beads 3"]) -> Float[np.ndarray, " n_grid"]:
    """Cumulative root-mean-square bead displacement between consecutive structures, in Å."""
    steps = np.sqrt(np.mean(np.sum(np.diff(np.asarray(bead_positions, dtype=np.float64), axis=0) ** 2, axis=-1), axis=-1))
    return np.concatenate([[0.0], np.cumsum(steps)])


def node_responsibilities(weights: Float[np.ndarray, "n n_grid"], n_nodes: int) -> Float[np.ndarray, "n n_nodes"]:
    """Grid posterior weights `(n, G)` shared out to the curve's nodes as the interpolation does: a
    grid point a share t of the way from node k to k + 1 gives 1 − t of its weight to k, t to k + 1."""
    n_grid = weights.shape[1]
    substeps = (n_grid - 1) // (n_nodes - 1)
    index = np.minimum(np.arange(n_grid) // substeps, n_nodes - 2)
    t = np.arange(n_grid) / substeps - index
    shares = np.zeros((n_grid, n_nodes))
    shares[np.arange(n_grid), index] += 1 - t
    shares[np.arange(n_grid), index + 1] += t
    return weights @ shares


def refine_curve(
    parameters: Any,
    node_log_likelihoods: Callable[[Any, Mapping[str, Any], Int[Array, "batch top"]], Float[Array, "batch top"]],
    responsibilities: Float[np.ndarray, "n n_nodes"],
    batches: Callable[[], Iterable[tuple[int, Mapping[str, Any]]]],
    *,
    n_epochs: int = 2,
    learning_rate: Any = 1e-3,
    top_nodes: int = 3,
    final_learning_rate_share: float = 1.0,
) -> tuple[Any, list[float]]:
    """The M-step of EM along the curve: move the parameters that make the nodes' structures (a
    decoder's weights) to maximise the particles' expected log-likelihood under their posteriors
    over the nodes, Σ_i Σ_k r_ik log p(image_i | node k), by Adam over the minibatches. Each
    particle counts its `top_nodes` most responsible nodes (renormalised): its posterior spans a few
    nodes, so the rest add nothing but renders.

    **Arguments:**

    - `parameters`: the pytree of arrays optimised.
    - `node_log_likelihoods`: `(parameters, batch, node indices (B, T)) → (B, T)` log p(image | node)
      with the nodes built from `parameters`.
    - `responsibilities`: `(n, K)` each particle's posterior mass per node (`node_responsibilities`).
    - `batches`: returns `(count, batch)` in input order, each batch with `indices`, padded to one
      size (as `atomicspi._batches.ordered_batches`).
    - `learning_rate`: Adam's step, one for all, or a pytree like `parameters` with one per array.
    - `final_learning_rate_share`: each step falls along a cosine from its rate to this share of
      it over the call's steps (1: constant).

    **Returns:** `(parameters, loss per epoch)`, the loss the mean negative expected log-likelihood.
    """
    import optax

    top = np.argsort(-responsibilities, axis=1)[:, :top_nodes]
    top_weights = np.take_along_axis(responsibilities, top, axis=1)
    top_weights /= np.maximum(top_weights.sum(axis=1, keepdims=True), 1e-300)
    if final_learning_rate_share != 1.0:
        # batches are padded to one size: the first gives the steps per epoch without reading the rest
        _, first = next(iter(batches()))
        n_steps = n_epochs * -(-responsibilities.shape[0] // len(first["indices"]))

    def adam(rate):
        if final_learning_rate_share == 1.0:
            return optax.adam(rate)
        return optax.adam(optax.cosine_decay_schedule(rate, max(n_steps, 1), alpha=final_learning_rate_share))

    if isinstance(learning_rate, (int, float)):
        optimizer = adam(learning_rate)
    else:  # one Adam per distinct rate, each over the arrays that have it
        labels = jax.tree_util.tree_map(lambda rate: repr(float(rate)), learning_rate)
        rates = {label: float(label) for label in jax.tree_util.tree_leaves(labels)}
        # (labels given by a function: a pytree that is itself callable, an equinox module, would be called)
        optimizer = optax.multi_transform({label: adam(rate) for label, rate in rates.items()}, lambda _: labels)
    state = optimizer.init(parameters)

    def loss(parameters, batch, nodes, weights, valid):
        values = node_log_likelihoods(parameters, batch, nodes)
        return -jnp.sum(valid[:, None] * weights * values) / jnp.maximum(jnp.sum(valid), 1.0)

    @jax.jit
    def step(parameters, state, batch, nodes, weights, valid):
        value, gradient = jax.value_and_grad(loss)(parameters, batch, nodes, weights, valid)
        updates, state = optimizer.update(gradient, state, parameters)
        return optax.apply_updates(parameters, updates), state, value

    history = []
    for _ in range(n_epochs):
        total, count_total = 0.0, 0
        for count, batch in batches():
            indices = np.asarray(batch["indices"])
            valid = (np.arange(len(indices)) < count).astype(np.float32)
            parameters, state, value = step(
                parameters, state, batch, jnp.asarray(top[indices]), jnp.asarray(top_weights[indices], dtype=jnp.float32),
                jnp.asarray(valid),
            )
            total += float(value) * count
            count_total += count
        history.append(total / max(count_total, 1))
    return parameters, history
