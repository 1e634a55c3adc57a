"""`volume`: a density map, no atomic model, fitted to the images at their poses (GitHub issue 16).

**Representation.** The map is a voxel grid of the `D × D × D` box (the images' pixel size, voxel
`D // 2` at the origin, `atomicspi.microscope`'s map conventions), written as a whitened Gaussian
random field: the site `volume` holds one standard normal `u(q)` per frequency `q` of the box's
DFT (integer, cycles per box), and the map is

    V = M ⊙ H[ τ(|q|) · u ] / √(D³),

`H` the 3D discrete Hartley transform (`Σ x cas(2π q·r / D)`, `cas = cos + sin`: real, and
`/ √(D³)` orthogonal), `τ` a per-shell amplitude (`VoxelDensity.prior_standard_deviation`) and `M`
a soft spherical support. Without the mask `V` is a stationary Gaussian field whose Fourier
coefficients are independent with `E|F[V](q)|² = D³ τ(|q|)²` (`F` the DFT; `τ` is even in `q`, so
the Hartley basis diagonalises it as the Fourier basis does): the Gaussian prior on the map's
Fourier components of RELION's regularised reconstruction, with `τ²` the signal power per shell.
`τ` falls with `|q|` as the particles' signal does and is 0 beyond the Nyquist sphere `|q| > D / 2`
(the map is band-limited there, as `atomicspi.products.backproject`'s); the family estimates it
before training from the cross power of two quick reconstructions from disjoint halves of the
images (`prior_standard_deviation_from_half_maps`, an empirical-Bayes prior).

Why Hartley coefficients: Adam normalises each coordinate's step by its own gradient's size. With
one coordinate per frequency, each in units of its prior width, every frequency moves at the same
rate; with white noise per voxel (the same prior, `V = M ⊙ F⁻¹[τ F[w]]`) every coordinate's
gradient mixes all frequencies, the low ones dominate its size, and the high ones crawl. On
tests/test_volume_family.py's stack (300 images, 32², SNR 1) the voxel-white parametrisation
reached FSC 0.143 with the truth at 7.1 Å after 600 steps and 6.6 Å after 1,500 at 3e-3 (the exact
MAP, solved by conjugate gradients: 5.2 Å); the Hartley one reaches 5.2 Å in 150 steps at 5e-3. The map is linear in
`u`: the posterior mean map is the map of the guide's mean.

**Half maps.** `n_halves` (2) independent maps are fitted at once, particle `i` seeing map
`i mod 2` (RELION's gold standard: two reconstructions from disjoint halves of the data, whose
Fourier shell correlation measures the resolution without overfitting). Their mean is the map.
They share the prior's `τ`, the noise level and the contrast's encoder, as RELION's half maps share
their `τ²` and noise estimates.

**Images.** Each map's transform is computed once per step (`atomicspi.microscope.volume_spectrum`,
zero-padded to twice the box, with the gridding correction) and sliced at every particle's pose
(Fourier-slice theorem), multiplied by the particle's CTF and the phase of its shift (and of odd
aberrations), as `atomicspi.microscope.ImageModel` does for atoms; the inverse FFT is the image,
observed through the same `observe_images` likelihood (contrast, white or coloured noise) as the
atomic models.

Why voxels rather than a neural field (cryoDRGN's Fourier-feature MLP): for one map the posterior
is Gaussian (the images are linear in the map), the prior is explicit and has RELION's meaning, and
every step updates all coefficients for three FFTs of the box and the padded box per half map and
eight gathers per image frequency. A neural field's prior is implicit, in its architecture and its
features' scale, and its fit non-convex. Measured on the same 300 images (2-core CPU, loaded): an
MLP `k ↦ H[V](k)` (3 × 128 ReLU, 64 Gaussian Fourier features of `q / D` with standard deviation
3, MAP with the true noise, Adam at 1e-3, batches of 32) reached FSC 0.143 with the truth at
5.01 Å after 400 steps (backprojection with the true poses 5.01 Å, this model 5.17 Å after 150),
but at about 0.65 s a step against 0.1-0.13 s here (5-6 times as long), and with features of standard deviation 8 only 6.44 Å
after 200 steps: its implicit support (features of scale 3 reach about ±9 voxels, the blobs lie
within 10) did the work of a mask, which an explicit one cannot do without inflating the half
maps' FSC (a support of radius 11 voxels here: truth 5.39 Å, half maps a spurious 4.0 Å). The
neural field earns its place for maps that vary with a latent variable.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int

from atomicspi.microscope import (
    CTFParameters,
    ImageModel,
    compute_ctf,
    compute_odd_aberration_phase,
    ctf_batch_axes,
    rfft_frequencies,
    volume_spectrum,
)
from atomicspi.structure import ElasticNetwork

from ._context import ModelContext, ModelOptions
from ._likelihood import observe_images, sample_envelope, sample_globals, sample_pose_corrections

__all__ = ["VoxelDensity", "atomless_context", "prior_standard_deviation_from_half_maps", "volume"]

_MASK_EDGE_IN_VOXELS = 3.0  # width of the support's cosine edge


def _shell_radii(box_size: int) -> np.ndarray:
    """`|q|` (cycles per box) of every `rfftn` entry of a `D³` box, `(D, D, D // 2 + 1)`."""
    full = np.fft.fftfreq(box_size) * box_size
    half = np.fft.rfftfreq(box_size) * box_size
    return np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + half[None, None, :] ** 2)


def _full_radii(box_size: int) -> np.ndarray:
    """`|q|` (cycles per box) of every `fftn` entry of a `D³` box, `(D, D, D)`."""
    full = np.fft.fftfreq(box_size) * box_size
    return np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + full[None, None, :] ** 2)


def _hartley(values: Float[Array, "*batch n n n"]) -> Float[Array, "*batch n n n"]:
    """The 3D discrete Hartley transform over the last three axes, `Σ x(r) cas(2π q·r / n)`
    (`cas = cos + sin`): `Re F − Im F` of the DFT `F`. Real, symmetric, and `/ √(n³)` orthogonal and
    its own inverse."""
    transform = jnp.fft.fftn(values, axes=(-3, -2, -1))
    return transform.real - transform.imag


def _support(box_size: int) -> np.ndarray:
    """The soft spherical support `M`, `(D, D, D)`: 1 within `D / 2 - 1 - edge` voxels of the box
    centre, a cosine down to 0 at `D / 2 - 1`, 0 beyond (the inscribed sphere: the box's corners
    hold no particle, and a map free there is free to fit noise)."""
    axis = np.arange(box_size) - box_size // 2
    radius = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    outer = box_size / 2 - 1.0
    inner = max(outer - _MASK_EDGE_IN_VOXELS, 0.0)
    fraction = np.clip((radius - inner) / max(outer - inner, 1e-9), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * fraction))


class VoxelDensity(eqx.Module):
    """The map as a whitened Gaussian random field on the box's voxels (module docstring); the
    `volume` model's `decoder` argument.

    **Fields:**

    - `prior_standard_deviation`: `(D // 2 + 1,)` `τ` at the integer shells `s = 0 ... D / 2`
        (cycles per box), in the map's unit (linearly interpolated between shells, 0 beyond
        `D / 2`); `E|F[V](q)|² = D³ τ(|q|)²` before the support mask.
    - `box_size`: `D`; `pixel_size_in_angstroms`: the voxel (and pixel) size.
    - `n_halves`: independent maps, particle `i` seeing map `i mod n_halves` (2: half maps).
    - `oversampling`: zero-padding of the map before its transform (`volume_spectrum`).
    """

    prior_standard_deviation: Float[Array, " n_shells"]
    box_size: int = eqx.field(static=True)
    pixel_size_in_angstroms: float = eqx.field(static=True)
    n_halves: int = eqx.field(static=True, default=2)
    oversampling: float = eqx.field(static=True, default=2.0)

    @property
    def site_shape(self) -> tuple[int, int, int, int]:
        """Shape of the `volume` site: `(n_halves, D, D, D)`."""
        return (self.n_halves, self.box_size, self.box_size, self.box_size)

    def maps(self, whitened: Float[Array, "n_halves box_size box_size box_size"]) -> Float[Array, "n_halves box_size box_size box_size"]:
        """The maps `M ⊙ H[τ(|q|) u] / √(D³)` of whitened Hartley coefficients `u`, `[z, y, x]`, the map's unit.

        **Arguments:**

        - `whitened`: `(n_halves, D, D, D)` the `volume` site (or its guide's mean), entry
            `[h, i, j, k]` the coefficient of frequency `q = (k, j, i)` (numpy's `fftfreq` order).

        **Returns:**

        `(n_halves, D, D, D)` maps.
        """
        size = self.box_size
        radii = jnp.asarray(_full_radii(size), dtype=whitened.dtype)
        shells = jnp.arange(self.prior_standard_deviation.shape[0], dtype=whitened.dtype)
        amplitude = jnp.interp(radii, shells, self.prior_standard_deviation.astype(whitened.dtype), right=0.0)
        amplitude = jnp.where(radii > size / 2, 0.0, amplitude)
        maps = _hartley(amplitude * whitened) / math.sqrt(size**3)
        return maps * jnp.asarray(_support(size), dtype=whitened.dtype)

    def half_of(self, indices: Int[Array | np.ndarray, " batch"] | None, batch_size: int) -> Int[Array, " batch"]:
        """The map each particle of a minibatch sees: `index mod n_halves` (all 0 without indices)."""
        if indices is None:
            return jnp.zeros(batch_size, dtype=jnp.int32)
        return jnp.asarray(indices).astype(jnp.int32) % self.n_halves

    def render(
        self,
        maps: Float[Array, "n_halves box_size box_size box_size"],
        halves: Int[Array, " batch"],
        rotations: Float[Array | np.ndarray, "batch 3 3"],
        shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
        ctf: CTFParameters,
    ) -> Float[Array, "batch box_size box_size"]:
        """Noise-free images of the maps at the particles' poses, CTFs and shifts.

        **Arguments:**

        - `maps`: `(n_halves, D, D, D)` from `maps`.
        - `halves`: `(B,)` the map of each particle (`half_of`).
        - `rotations`: `(B, 3, 3)` RELION's `A`; `shifts_in_angstroms`: `(B, 2)` the particle
            centre's `(x, y)` offset from the box centre.
        - `ctf`: the particles' `CTFParameters` (fields without the batch axis are shared).

        **Returns:**

        `(B, D, D)` images `[y, x]`: `irfft2` of the slice times `CTF · exp(-2πi k·s + i γ_odd)`,
        in the map's unit times Å (before the likelihood's contrast).
        """
        size = self.box_size
        rotations = jnp.asarray(rotations, dtype=maps.dtype)
        shifts = jnp.asarray(shifts_in_angstroms, dtype=maps.dtype)
        batch_size = rotations.shape[0]
        sliced = jnp.zeros((batch_size, size, size // 2 + 1), dtype=jnp.complex64 if maps.dtype == jnp.float32 else jnp.complex128)
        for half in range(self.n_halves):
            spectrum = volume_spectrum(maps[half], self.pixel_size_in_angstroms, oversampling=self.oversampling)
            sliced = jnp.where((halves == half)[:, None, None], jax.vmap(spectrum.slice)(rotations), sliced)
        frequencies = rfft_frequencies(size, self.pixel_size_in_angstroms).astype(maps.dtype)

        def transfer(shift, parameters):
            phase = -2.0 * jnp.pi * (frequencies[..., 0] * shift[0] + frequencies[..., 1] * shift[1])
            if parameters.has_odd_aberrations:
                phase = phase + compute_odd_aberration_phase(frequencies, parameters)
            return compute_ctf(frequencies, parameters) * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))

        transfers = jax.vmap(transfer, in_axes=(0, ctf_batch_axes(ctf, batch_size)))(shifts, ctf)
        return jnp.fft.irfft2(sliced * transfers, s=(size, size)).astype(maps.dtype)


def prior_standard_deviation_from_half_maps(
    map_a: Float[np.ndarray, "box_size box_size box_size"],
    map_b: Float[np.ndarray, "box_size box_size box_size"],
) -> Float[np.ndarray, " n_shells"]:
    """`τ` of `VoxelDensity` from two independent reconstructions of the map: an empirical-Bayes
    estimate of its signal per Fourier shell, as RELION's regularisation takes `τ²` from its half
    maps.

    The noise of maps from disjoint halves of the images is independent, so their cross power
    `Re Σ_{q ∈ s} A(q) B(q)*` over shell `s` (`round(|q|) = s`, cycles per box; `rfftn`) estimates
    the signal power `Σ |F[V](q)|²` without any estimate of the noise, which at high frequency
    is as large as the signal's share of the images and would bias the difference of powers.
    With `E|F[V](q)|² = D³ m τ(s)²` (`m` the mean square of the support mask, which the prior's
    field is multiplied by) each shell gives `τ(s)²`; it is averaged with its neighbours
    (weights 1/4, 1/2, 1/4), shells whose average is not positive (no signal measured) get a floor
    of 10⁻³ of the largest `τ`, where the prior holds the map near zero as the Wiener filter does,
    and shell 0 (the maps' means) takes shell 1's value.

    **Arguments:**

    - `map_a`, `map_b`: `(D, D, D)` maps `[z, y, x]` in the unit of the map to fit (e.g.
        `atomicspi.products.backproject` of the images of even and of odd index, over the contrast).

    **Returns:**

    `(D // 2 + 1,)` `τ` at the shells `0 ... D / 2`, in the maps' unit.
    """
    a = np.asarray(map_a, dtype=np.float64)
    b = np.asarray(map_b, dtype=np.float64)
    box_size = a.shape[0]
    n_shells = box_size // 2 + 1
    shells = np.rint(_shell_radii(box_size)).astype(np.int64)
    half = np.fft.rfftfreq(box_size) * box_size
    multiplicity = np.where((half == 0) | (half == box_size / 2), 1.0, 2.0)[None, None, :] * np.ones(shells.shape)
    inside = shells < n_shells
    cross = (np.fft.rfftn(a) * np.conj(np.fft.rfftn(b))).real
    power = np.bincount(shells[inside], weights=(multiplicity * cross)[inside], minlength=n_shells)
    count = np.bincount(shells[inside], weights=multiplicity[inside], minlength=n_shells)
    variance = power / (np.maximum(count, 1.0) * box_size**3 * float(np.mean(_support(box_size) ** 2)))
    variance[0] = variance[1]
    padded = np.concatenate([variance[:1], variance, variance[-1:]])
    smoothed = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    amplitude = np.sqrt(np.maximum(smoothed, 0.0))
    floor = 1e-3 * float(amplitude.max()) if amplitude.max() > 0 else 1.0
    return np.where(smoothed > 0, np.maximum(amplitude, floor), floor)


def default_density(context: ModelContext) -> VoxelDensity:
    """A `VoxelDensity` for a context alone (no images seen): flat `τ` such that a projection's
    pixels have about the noise's standard deviation, `σ / (c p √D)`."""
    image_model = context.image_model
    if image_model is None:
        raise ValueError("the volume model needs the context's image_model (box and pixel size)")
    options = context.options
    size, pixel = image_model.box_size, image_model.pixel_size_in_angstroms
    level = options.noise_std_guess / (options.contrast_guess * pixel * math.sqrt(size))
    return VoxelDensity(jnp.full(size // 2 + 1, level, dtype=jnp.float32), size, pixel)


def atomless_context(box_size: int, pixel_size_in_angstroms: float, options: ModelOptions) -> ModelContext:
    """A `ModelContext` without atoms, for models of density maps: no beads, modes or springs, and
    an `ImageModel` of no atoms that carries the images' box and pixel size (for the likelihood's
    resolution mask). The pipeline adds the noise spectra as for any context.

    **Arguments:**

    - `box_size`: `D`; `pixel_size_in_angstroms`: the images' pixel size.
    - `options`: the `ModelOptions`.

    **Returns:**

    A `ModelContext` with zero atoms and beads.
    """
    image_model = ImageModel(
        amplitudes=jnp.zeros((0, 5)), variances_in_angstroms_squared=jnp.zeros((0, 5)), order=jnp.zeros(0, dtype=jnp.int32),
        pixel_size_in_angstroms=float(pixel_size_in_angstroms), box_size=int(box_size), padded_box_size=int(box_size),
        groups=(), method="splat",
    )
    network = ElasticNetwork(np.zeros((0, 3)), np.zeros((0, 2), dtype=np.int64), np.zeros(0), np.zeros(0))
    return ModelContext(
        reference_positions_in_angstroms=jnp.zeros((0, 3)), atom_to_bead=jnp.zeros(0, dtype=jnp.int32),
        bead_positions_in_angstroms=jnp.zeros((0, 3)), mode_vectors=jnp.zeros((0, 0, 3)), mode_eigenvalues=jnp.zeros(0),
        network=network, image_model=image_model, options=options, bead_domains=jnp.zeros(0, dtype=jnp.int32),
    )


def volume(
    *,
    images: Float[Array | np.ndarray, "batch y x"] | None,
    rotations: Float[Array | np.ndarray, "batch 3 3"],
    shifts_in_angstroms: Float[Array | np.ndarray, "batch 2"],
    ctf: CTFParameters,
    context: ModelContext,
    n_particles: int,
    indices: Int[Array | np.ndarray, " batch"] | None = None,
    decoder: VoxelDensity | None = None,
) -> None:
    """One density map for all particles (two: the half maps), fitted to the images at their poses.

    **Random variables:** globals `spring_constant` (shared with every model's guide; no spring
    uses it, its posterior is its prior), `noise_std`, optionally `envelope_b_factor`, and
    `volume` `(n_halves, D, D, D)` ~ N(0, I), the map's whitened coefficients (module docstring);
    in the `particle` plate: optional pose corrections, `contrast`, observed `images`.

    `decoder` is the `VoxelDensity` (its prior's `τ`, the box; the name the guide passes model
    extras under); without it a flat `τ` from the context's noise and contrast (`default_density`).
    """
    density = decoder if decoder is not None else default_density(context)
    _, noise_std = sample_globals(context)
    ctf = sample_envelope(context, ctf)
    whitened = numpyro.sample("volume", dist.Normal(0.0, 1.0).expand(density.site_shape).to_event(4))
    maps = density.maps(whitened)
    batch_size = rotations.shape[0]
    halves = density.half_of(indices, batch_size)
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        rotations, shifts = sample_pose_corrections(context, rotations, shifts_in_angstroms)
        predicted = density.render(maps, halves, rotations, shifts, ctf)
        observe_images(context, predicted, noise_std, images, indices)
