"""The image model: atoms, pose and CTF to a particle image (the common case, one factory).

    image = crop_D( F⁻¹[ CTF(k) · exp(i γ_odd(k)) · exp(-2πi k·s) · F[ P_{D'}(A r) ] ] )

where `P_{D'}` projects the rotated atoms (`A @ r`, along z of the rotated frame) onto a
padded `D' × D'` grid of pixel-averaged projected potential in V·Å (`_projection`), `s` is the
particle centre's displacement `(x, y)` from the box centre (a Fourier phase), the CTF
(`_ctf`) multiplies the transform of the padded image (padding against wrap-around of the CTF's
point-spread function), and the central `D × D` pixels are kept (pixel `D // 2` is the box
centre on both grids). Images are `[y, x]`; transforms are numpy's unnormalised `rfft2`. With
`method="fourier"` the transform `F[P_{D'}(A r)]` is computed directly, without the image, by a
non-uniform FFT (`_fourier_projection`).
"""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from .._errors import InputError
from ._ctf import CTFParameters, compute_ctf, compute_odd_aberration_phase
from ._form_factors import PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED, atomic_gaussian_table
from ._fourier_projection import FourierProjector, make_fourier_projector
from ._projection import project_atoms_dense, project_atoms_splat, splat_window

AUTO_FOURIER_LARGEST_PADDED_BOX = 160
"""`method="auto"` uses `"fourier"` for padded boxes `D' ≤ 160` pixels and `"splat"` above.

Measured with bench/microscope.py (AdK, 3,341 atoms with hydrogens, batch 16, float32, 2-core
x86-64 CPU, bench/RESULTS.md): forward+gradient, fourier was 2.9× faster than splat at D = 64 and
2.3× at D = 128, 1.9× slower at D = 256 (its cost grows with the `(2D')²` spreading grid and its
FFTs, the splat's does not). The bound sits between the sizes measured; smaller molecules (fewer
atoms to spread, the same FFTs) move the crossover down.
"""


def rfft_frequencies(box_size: int, pixel_size_in_angstroms: float) -> Float[Array, "box_size box_size//2+1 2"]:
    """Frequencies `(k_x, k_y)` in 1/Å of the entries of `jnp.fft.rfft2` of a `[y, x]` image.

    **Arguments:**

    - `box_size`: `D`.
    - `pixel_size_in_angstroms`: pixel size.

    **Returns:**

    `(D, D // 2 + 1, 2)` array.
    """
    k_y = jnp.fft.fftfreq(box_size, pixel_size_in_angstroms)
    k_x = jnp.fft.rfftfreq(box_size, pixel_size_in_angstroms)
    return jnp.stack(jnp.broadcast_arrays(k_x[None, :], k_y[:, None]), axis=-1)


def _make_hermitian(fourier_image: Array) -> Array:
    """The `rfft2` of `irfft2(fourier_image)`: symmetrise the self-conjugate columns."""
    box_size = fourier_image.shape[0]
    columns = [0] + ([box_size // 2] if box_size % 2 == 0 else [])
    mirrored = jnp.roll(jnp.flip(fourier_image, axis=0), 1, axis=0)
    for column in columns:
        symmetric = 0.5 * (fourier_image[:, column] + jnp.conj(mirrored[:, column]))
        fourier_image = fourier_image.at[:, column].set(symmetric)
    return fourier_image


class ImageModel(eqx.Module):
    """Images of one molecule (fixed scattering tables; positions, pose and CTF per call).

    Build it with `make_image_model`. The atoms are stored sorted by splat window (`order`), so
    each group of equal windows is one fixed-shape splat. With `method="fourier"`,
    `fourier_projector` holds the precomputed Fourier-space projection of the sorted atoms.
    """

    amplitudes: Float[Array, "n_atoms n_gaussians"]
    variances_in_angstroms_squared: Float[Array, "n_atoms n_gaussians"]
    order: Int[Array, " n_atoms"]
    pixel_size_in_angstroms: float = eqx.field(static=True)
    box_size: int = eqx.field(static=True)
    padded_box_size: int = eqx.field(static=True)
    groups: tuple[tuple[int, int, int], ...] = eqx.field(static=True)
    method: Literal["splat", "dense", "fourier"] = eqx.field(static=True)
    fourier_projector: FourierProjector | None = None

    def projection(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
    ) -> Float[Array, "padded_box_size padded_box_size"]:
        """Projected potential (V·Å, pixel averages) of the rotated atoms on the padded grid.

        **Arguments:**

        - `positions_in_angstroms`: `(n_atoms, 3)` model coordinates (the box centre is the
            origin).
        - `rotation`: `A`, `(3, 3)`; the projection is along z of `A @ r`.

        **Returns:**

        `(D', D')` image `[y, x]`, no shift, no CTF.
        """
        positions_2d = self._positions_2d(positions_in_angstroms, rotation)
        if self.fourier_projector is not None:
            return jnp.fft.irfft2(
                self.fourier_projector(positions_2d), s=(self.padded_box_size, self.padded_box_size)
            )
        if self.method == "dense":
            return project_atoms_dense(
                positions_2d,
                self.amplitudes,
                self.variances_in_angstroms_squared,
                self.padded_box_size,
                self.pixel_size_in_angstroms,
            )
        image = jnp.zeros((self.padded_box_size, self.padded_box_size), positions_2d.dtype)
        for start, stop, window in self.groups:
            image = image + project_atoms_splat(
                positions_2d[start:stop],
                self.amplitudes[start:stop],
                self.variances_in_angstroms_squared[start:stop],
                self.padded_box_size,
                self.pixel_size_in_angstroms,
                window,
            )
        return image

    def _positions_2d(self, positions_in_angstroms, rotation):
        positions = jnp.asarray(positions_in_angstroms)[self.order]
        return positions @ jnp.asarray(rotation)[:2, :].T

    def _padded_fourier(self, positions_in_angstroms, rotation, shift_in_angstroms, ctf, fourier_filter=None):
        if self.fourier_projector is not None:
            projection_fourier = self.fourier_projector(self._positions_2d(positions_in_angstroms, rotation))
        else:
            projection_fourier = jnp.fft.rfft2(self.projection(positions_in_angstroms, rotation))
        frequencies = rfft_frequencies(self.padded_box_size, self.pixel_size_in_angstroms)
        shift = jnp.asarray(shift_in_angstroms)
        phase = -2.0 * jnp.pi * (frequencies[..., 0] * shift[0] + frequencies[..., 1] * shift[1])
        if ctf.has_odd_aberrations:
            phase = phase + compute_odd_aberration_phase(frequencies, ctf)
        transfer = compute_ctf(frequencies, ctf) * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
        if fourier_filter is not None:  # e.g. a tilt image's exposure filter (`_tilt_series`)
            transfer = transfer * jnp.asarray(fourier_filter)
        return projection_fourier * transfer

    def __call__(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
        shift_in_angstroms: Float[Array, "2"],
        ctf: CTFParameters,
        fourier_filter: Float[Array, "padded_box_size padded_box_size//2+1"] | None = None,
    ) -> Float[Array, "box_size box_size"]:
        """The image `[y, x]` (V·Å, times the CTF's `scale`).

        **Arguments:**

        - `positions_in_angstroms`: `(n_atoms, 3)` atom (or bead) coordinates in the model frame.
        - `rotation`: RELION's `A`, `(3, 3)` (see `atomicspi.conventions`).
        - `shift_in_angstroms`: `(x, y)` of the particle centre relative to the box centre.
        - `ctf`: `CTFParameters` of this image.
        - `fourier_filter`: optional real `(D', D' // 2 + 1)` weights on the `rfft2` grid of the
            padded box (`rfft_frequencies(padded_box_size, pixel_size)`), multiplied into the CTF,
            e.g. a tilt image's exposure filter (`exposure_filter_on_grid`). Without it (default)
            the image is exactly what it was before this argument existed.

        **Returns:**

        `(D, D)` image.
        """
        padded = jnp.fft.irfft2(
            self._padded_fourier(positions_in_angstroms, rotation, shift_in_angstroms, ctf, fourier_filter),
            s=(self.padded_box_size, self.padded_box_size),
        )
        start = self.padded_box_size // 2 - self.box_size // 2
        return padded[start : start + self.box_size, start : start + self.box_size]

    def fourier(
        self,
        positions_in_angstroms: Float[Array, "n_atoms 3"],
        rotation: Float[Array, "3 3"],
        shift_in_angstroms: Float[Array, "2"],
        ctf: CTFParameters,
        fourier_filter: Float[Array, "padded_box_size padded_box_size//2+1"] | None = None,
    ) -> Complex[Array, "box_size box_size//2+1"]:
        """`jnp.fft.rfft2` of `self(...)` (same arguments), without the inverse FFT when unpadded.

        **Returns:**

        `(D, D // 2 + 1)` complex array.
        """
        if self.padded_box_size != self.box_size:
            return jnp.fft.rfft2(self(positions_in_angstroms, rotation, shift_in_angstroms, ctf, fourier_filter))
        return _make_hermitian(
            self._padded_fourier(positions_in_angstroms, rotation, shift_in_angstroms, ctf, fourier_filter)
        )


def make_image_model(
    atomic_numbers: Int[np.ndarray, " n_atoms"] | None,
    b_factors_in_angstroms_squared: Float[np.ndarray, " n_atoms"] | None,
    box_size: int,
    pixel_size_in_angstroms: float,
    *,
    gaussian_table: Float[np.ndarray, "n_atoms n_gaussians 2"] | None = None,
    padding_factor: float = 1.0,
    method: Literal["splat", "dense", "fourier", "auto"] = "splat",
    truncation_in_standard_deviations: float = 4.0,
    fourier_options: dict[str, Any] | None = None,
) -> ImageModel:
    """Image model for a molecule whose atoms' positions are given per image.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers (Peng 1996 form factors), or `None` with
        `gaussian_table`.
    - `b_factors_in_angstroms_squared`: `(n_atoms,)` per-atom B-factors (or `None` for zero).
    - `box_size`: `D`, pixels per side of the image.
    - `pixel_size_in_angstroms`: pixel size.
    - `gaussian_table`: instead of atomic numbers, an `(n_atoms, n_gaussians, 2)` table of
        `(a_i in Å, b_i + B in Å²)` per atom, e.g. from `residue_pseudo_atoms` (coarse-grained
        beads) or `atomic_gaussian_table`.
    - `padding_factor`: the CTF is applied on a grid of `D' = D · padding_factor` pixels
        (rounded up to even, or `D` for 1), then cropped to `D`.
    - `method`: `"splat"` (each atom on its neighbourhood; fast), `"dense"` (every atom on
        every pixel; reference) or `"fourier"` (the transform computed directly by a non-uniform
        FFT, `make_fourier_projector`; the padded box is periodic: atoms near its edges wrap
        around, where the other methods drop them; relative error vs dense ≈ 0.1-0.5 %, up to
        1.4-2.4 % with B = 0 hydrogens, see `_fourier_projection`), or `"auto"`: `"fourier"` when the
        padded box `D' ≤ AUTO_FOURIER_LARGEST_PADDED_BOX` (160) pixels, else `"splat"` (the faster
        of the two in `bench/microscope.py`; `ImageModel.method` holds the choice).
    - `truncation_in_standard_deviations`: reach of the splat windows (`splat_window`).
    - `fourier_options`: keyword arguments of `make_fourier_projector` for `method="fourier"`
        (oversampling, kernel width, `alias_reach`, basis truncation).

    **Returns:**

    An `ImageModel`: `model(positions, rotation, shift, ctf) -> (D, D)` image and
    `model.fourier(...)` its `rfft2`. Call it inside `jax.vmap` for batches of particles.
    """
    if gaussian_table is None:
        if atomic_numbers is None:
            raise InputError("atomic_numbers: required unless gaussian_table is given")
        gaussian_table = atomic_gaussian_table(atomic_numbers, b_factors_in_angstroms_squared)
    elif atomic_numbers is not None or b_factors_in_angstroms_squared is not None:
        raise InputError("gaussian_table: give either it or atomic_numbers and b-factors, not both")
    table = np.asarray(gaussian_table, dtype=float)
    if table.ndim != 3 or table.shape[-1] != 2:
        raise InputError(f"gaussian_table: shape {table.shape} is not (n_atoms, n_gaussians, 2)")
    if np.any(table[..., 1] <= 0):
        raise InputError("gaussian_table: Gaussian widths b_i + B must be positive")
    if method not in ("splat", "dense", "fourier", "auto"):
        raise InputError(f"method: {method!r} is not 'splat', 'dense', 'fourier' or 'auto'")
    if fourier_options is not None and method not in ("fourier", "auto"):
        raise InputError(f"fourier_options: only for method='fourier' (or 'auto'), not {method!r}")
    if padding_factor < 1:
        raise InputError(f"padding_factor: {padding_factor} is smaller than 1")
    padded_box_size = box_size if padding_factor == 1 else 2 * int(np.ceil(box_size * padding_factor / 2))
    chosen: Literal["splat", "dense", "fourier"]
    if method == "auto":
        chosen = "fourier" if padded_box_size <= AUTO_FOURIER_LARGEST_PADDED_BOX else "splat"
    else:
        chosen = method
    variances = table[..., 1] / (8.0 * np.pi**2)
    windows = splat_window(
        np.where(table[..., 0] != 0, variances, 0.0), pixel_size_in_angstroms, truncation_in_standard_deviations
    )
    order = np.argsort(windows, kind="stable")
    sorted_windows = windows[order]
    boundaries = np.flatnonzero(np.diff(sorted_windows)) + 1
    starts = np.concatenate([[0], boundaries])
    stops = np.concatenate([boundaries, [len(order)]])
    groups = tuple(
        (int(start), int(stop), int(sorted_windows[start])) for start, stop in zip(starts, stops)
    )
    dtype = jnp.result_type(float)
    amplitudes = PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * table[order, :, 0]
    fourier_projector = None
    if chosen == "fourier":
        fourier_projector = make_fourier_projector(
            amplitudes, variances[order], padded_box_size, pixel_size_in_angstroms, **(fourier_options or {})
        )
    return ImageModel(
        amplitudes=jnp.asarray(amplitudes, dtype=dtype),
        variances_in_angstroms_squared=jnp.asarray(variances[order], dtype=dtype),
        order=jnp.asarray(order),
        pixel_size_in_angstroms=float(pixel_size_in_angstroms),
        box_size=int(box_size),
        padded_box_size=int(padded_box_size),
        groups=groups,
        method=chosen,
        fourier_projector=fourier_projector,
    )
