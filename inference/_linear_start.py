"""A data-driven start for the `deformation` decoder: the population's principal motions from a
linear-Gaussian model of the images in the elastic network's mode space, fitted by EM.

Each particle's bead displacement is taken to be Σₖ aₖ vₖ over the lowest normal modes vₖ, with
a ~ N(m, C) over the population, and its image linearised about the reference:

    yᵢ ≈ c fᵢ(x⁰) + c Jᵢ aᵢ + εᵢ,   εᵢ ~ N(0, σ² I),

Jᵢ the derivative of particle i's image (its own pose and CTF) with respect to the amplitudes. The
mean m and covariance C that maximise the marginal likelihood of the images come from EM: the
posterior of aᵢ is Gaussian with precision C⁻¹ + c²JᵢᵀJᵢ/σ², and the M-step averages the posterior
moments. Views that do not see a motion contribute little to it (their JᵢᵀJᵢ is small along it),
which is the point of fitting the model rather than averaging per-particle least-squares estimates.
This is probabilistic PCA with a particle-specific design matrix, the linear analogue of the
covariance estimate RECOVAR makes for volumes, here over atomic displacements.

The eigenvectors of C with the largest eigenvalues are the population's principal motions. They are
computed without any elastic prior on the amplitudes, so a hinge motion that the elastic network
prices at hundreds of kT shows up with its real size.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from atomicspi.microscope import CTFParameters, ImageModel, rfft_frequencies
from atomicspi.models import ModelContext, render_images

__all__ = ["PrincipalMotions", "principal_motions", "mode_space_statistics", "fit_linear_gaussian"]


class PrincipalMotions(NamedTuple):
    """The population's motions estimated by `principal_motions`.

    **Fields:**

    - `mean_displacement_in_angstroms`: `(n_beads, 3)` the population's mean bead displacement.
    - `directions`: `(n_directions, n_beads, 3)` orthonormal principal motions, largest first.
    - `variances_in_angstroms_squared`: `(n_directions,)` the population variance along each
      (of the displacement's norm over all beads).
    - `mean_amplitudes`, `covariance`: m and C in mode space.
    - `log_likelihood_history`: the EM objective per iteration (non-decreasing).
    """

    mean_displacement_in_angstroms: Float[np.ndarray, "n_beads 3"]
    directions: Float[np.ndarray, "n_directions n_beads 3"]
    variances_in_angstroms_squared: Float[np.ndarray, " n_directions"]
    mean_amplitudes: Float[np.ndarray, " n_modes"]
    covariance: Float[np.ndarray, "n_modes n_modes"]
    log_likelihood_history: Float[np.ndarray, " n_iterations"]


def _low_frequencies(images, frequency_mask):
    """The Fourier coefficients of `images (..., D, D)` inside `frequency_mask (D, D//2 + 1)`, as
    real numbers whose white-noise variance is the pixels' (orthonormal FFT; real and imaginary
    parts each carry half the variance, hence the √2)."""
    coefficients = jnp.fft.rfft2(images, norm="ortho")[..., frequency_mask]
    return jnp.sqrt(2.0) * jnp.concatenate([coefficients.real, coefficients.imag], axis=-1)


def mode_space_statistics(
    image_model: ImageModel,
    reference_positions: Float[Array, "n_atoms 3"],
    atom_to_bead: Int[Array, " n_atoms"],
    mode_vectors: Float[Array, "n_modes n_beads 3"],
    images: Float[Array, "n y x"],
    rotations: Float[Array, "n 3 3"],
    shifts: Float[Array, "n 2"],
    ctf: CTFParameters,
    contrast: float,
    frequency_mask: Bool[np.ndarray, "y x_half"],
) -> tuple[Float[Array, "n n_modes n_modes"], Float[Array, "n n_modes"], Float[Array, " n"]]:
    """Per-particle sufficient statistics of the linearised image model: JᵢᵀJᵢ `(n, M, M)`, Jᵢᵀrᵢ
    `(n, M)` and rᵢᵀrᵢ `(n,)`, with rᵢ = yᵢ − c fᵢ(x⁰) and Jᵢ = c ∂fᵢ/∂a at a = 0, both restricted
    to the Fourier coefficients in `frequency_mask` (the linearisation holds at low resolution only:
    a displacement shows linearly in an image only where it is small against the resolution)."""
    n_modes = mode_vectors.shape[0]

    def render(amplitudes):
        displacements = jnp.einsum("nk,kbc->nbc", amplitudes, mode_vectors)
        positions = reference_positions[None] + displacements[:, atom_to_bead]
        return contrast * render_images(image_model, positions, rotations, shifts, ctf)

    zero = jnp.zeros((images.shape[0], n_modes), dtype=images.dtype)
    predicted, pushforward = jax.linearize(render, zero)
    # Column k of every particle's Jacobian: the pushforward of the k-th unit amplitude (all particles at once).
    columns = jax.vmap(lambda k: pushforward(jnp.zeros_like(zero).at[:, k].set(1.0)))(jnp.arange(n_modes))
    jacobian = _low_frequencies(columns, frequency_mask).transpose(1, 2, 0)  # (n, coefficients, M)
    residual = _low_frequencies(images - predicted, frequency_mask)
    return (
        jnp.einsum("npk,npl->nkl", jacobian, jacobian),
        jnp.einsum("npk,np->nk", jacobian, residual),
        jnp.sum(residual * residual, axis=-1),
    )


def fit_linear_gaussian(
    gram: Float[np.ndarray, "n M M"],
    projected: Float[np.ndarray, "n M"],
    residual_norms: Float[np.ndarray, " n"],
    noise_variance: float,
    initial_covariance: Float[np.ndarray, "M M"],
    n_iterations: int = 200,
) -> tuple[Float[np.ndarray, " M"], Float[np.ndarray, "M M"], Float[np.ndarray, " n_iterations"]]:
    """EM for a ~ N(m, C), yᵢ − c fᵢ(x⁰) = Jᵢ aᵢ + N(0, σ² I), in float64 NumPy.

    **Arguments:**

    - `gram`, `projected`, `residual_norms`: JᵢᵀJᵢ, Jᵢᵀrᵢ and rᵢᵀrᵢ (`mode_space_statistics`).
    - `noise_variance`: σ².
    - `initial_covariance`: C at the start (m starts at 0).
    - `n_iterations`: EM iterations.

    **Returns:** `(m, C, log-likelihood per particle at each iteration, up to a constant)`.
    """
    gram, projected = np.asarray(gram, dtype=float), np.asarray(projected, dtype=float)
    residual_norms = np.asarray(residual_norms, dtype=float)
    n_modes = gram.shape[-1]
    precision_data, information = gram / noise_variance, projected / noise_variance
    identity = np.eye(n_modes)
    mean, covariance = np.zeros(n_modes), np.asarray(initial_covariance, dtype=float)
    history = []
    for _ in range(n_iterations):
        # Posterior of each aᵢ: precision P = C⁻¹ + JᵀJ/σ², mean P⁻¹ (C⁻¹ m + Jᵀr/σ²).
        c_inverse = np.linalg.inv(covariance)
        precision = c_inverse[None] + precision_data
        posterior_covariance = np.linalg.inv(precision)
        posterior_mean = np.einsum("nkl,nl->nk", posterior_covariance, (c_inverse @ mean)[None] + information)
        # Marginal log-likelihood of the residuals (matrix determinant lemma), up to a constant.
        log_det_c = np.linalg.slogdet(covariance)[1]
        log_det_p = np.linalg.slogdet(precision)[1]
        quadratic = (
            residual_norms / noise_variance + mean @ c_inverse @ mean
            - np.einsum("nk,nkl,nl->n", posterior_mean, precision, posterior_mean)
        )
        history.append(float(np.mean(-0.5 * (quadratic + log_det_c + log_det_p))))
        mean = posterior_mean.mean(axis=0)
        centred = posterior_mean - mean
        covariance = np.mean(posterior_covariance + centred[:, :, None] * centred[:, None, :], axis=0)
        covariance = 0.5 * (covariance + covariance.T) + 1e-9 * identity
    return mean, covariance, np.asarray(history)


def _rows(value, n: int, start: int, stop: int):
    """Rows start:stop of a per-particle array (leading axis n); shared scalars as they are."""
    return value[start:stop] if jnp.ndim(value) >= 1 and jnp.shape(value)[0] == n else value


def principal_motions(
    context: ModelContext,
    images: Float[Array | np.ndarray, "n y x"],
    rotations: Float[Array | np.ndarray, "n 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "n 2"],
    ctf: CTFParameters,
    contrast: float,
    noise_std: float,
    n_directions: int,
    batch_size: int = 32,
    n_iterations: int = 200,
    resolution_in_angstroms: float = 15.0,
) -> PrincipalMotions:
    """The population's principal motions in the span of `context.mode_vectors`.

    **Arguments:**

    - `context`: the model's `ModelContext` (reference atoms, beads, modes, microscope).
    - `images`, `rotations`, `shifts_in_angstroms`: the particles used (a few hundred suffice).
    - `ctf`: their `CTFParameters` (batched like the images).
    - `contrast`, `noise_std`: the images' contrast and per-pixel noise level.
    - `n_directions`: how many principal motions to return.
    - `batch_size`: particles linearised at once.
    - `n_iterations`: EM iterations.
    - `resolution_in_angstroms`: only Fourier components below this resolution enter (the linear
      model of the images holds for displacements small against it).

    **Returns:** `PrincipalMotions`.
    """
    image_model = context.image_model
    if image_model is None:
        raise ValueError("principal_motions needs a context with an image model")
    modes = jnp.asarray(context.mode_vectors, dtype=jnp.float32)
    n_modes = modes.shape[0]
    frequencies = np.asarray(rfft_frequencies(images.shape[-1], float(image_model.pixel_size_in_angstroms)))
    frequency_mask = np.linalg.norm(frequencies, axis=-1) <= 1.0 / resolution_in_angstroms
    frequency_mask[0, 0] = False  # the mean of an image carries no conformational information
    statistics = jax.jit(
        lambda images, rotations, shifts, ctf: mode_space_statistics(
            image_model, context.reference_positions_in_angstroms.astype(jnp.float32),
            context.atom_to_bead, modes, images, rotations, shifts, ctf, contrast, frequency_mask,
        )
    )
    n = images.shape[0]
    pieces = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        part = jax.tree_util.tree_map(functools.partial(_rows, n=n, start=start, stop=stop), ctf)
        pieces.append(
            statistics(
                jnp.asarray(images[start:stop], dtype=jnp.float32), jnp.asarray(rotations[start:stop], dtype=jnp.float32),
                jnp.asarray(shifts_in_angstroms[start:stop], dtype=jnp.float32), part,
            )
        )
    gram, projected, residual_norms = (np.concatenate([np.asarray(p[i], dtype=np.float64) for p in pieces]) for i in range(3))
    # Start EM from the amplitude spread of a soft network: C = s² I with s² the variance that
    # explains the residual power beyond the noise along the average Jacobian.
    excess = max(float(np.mean(residual_norms)) - noise_std**2 * 2 * int(frequency_mask.sum()), 0.0)
    trace_gram = float(np.mean(np.trace(gram, axis1=1, axis2=2)))
    initial_variance = max(excess / max(trace_gram, 1e-12), 1e-2)
    mean, covariance, history = fit_linear_gaussian(
        gram, projected, residual_norms, noise_std**2, initial_variance * np.eye(n_modes), n_iterations
    )
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:n_directions]
    modes_np = np.asarray(context.mode_vectors, dtype=float)
    directions = np.einsum("kd,kbc->dbc", eigenvectors[:, order], modes_np)
    return PrincipalMotions(
        mean_displacement_in_angstroms=np.einsum("k,kbc->bc", mean, modes_np),
        directions=directions,
        variances_in_angstroms_squared=eigenvalues[order],
        mean_amplitudes=mean,
        covariance=covariance,
        log_likelihood_history=history,
    )
