"""Elastic electron scattering factors of neutral atoms (Peng et al. 1996) as Gaussian tables.

Peng, Ren, Dudarev & Whelan, *Acta Cryst.* A52 (1996) 257, Table 1 (elastic, 0 < s < 2 Å⁻¹),
reproduced as Table 4.3.2.2 of *International Tables for Crystallography* Vol. C, parameterise
the elastic electron scattering factor of each neutral atom as five Gaussians,

    f(s) = Σ_i a_i exp(-b_i s²),   s = q / 2,   q = |spatial frequency| in 1/Å,

with `a_i` in Å and `b_i` in Å². A per-atom (Debye-Waller) B-factor `B` multiplies `f` by
`exp(-B s²)`, i.e. replaces `b_i` by `b_i + B`.

Physics used throughout `atomicspi.microscope`. In the first Born approximation the Coulomb
potential of an atom is `V(r) = (h² / (2π m₀ e)) · F⁻¹[f(|k| / 2)](r)` with
`h² / (2π m₀ e) = 47.878 V·Å²` (rest mass, so that the relativistic factor sits in the
interaction constant, not here), so each Gaussian gives, projected along z (in V·Å),

    V_proj(ρ) = 47.878 Σ_i a_i (4π / b_i') exp(-4π² ρ² / b_i'),   b_i' = b_i + B,

a normalised 2D Gaussian of variance `b_i' / (8π²)` per axis with weight `47.878 a_i` (V·Å³).
Its integral over the plane is `47.878 f(0)` and its 2D Fourier transform is
`47.878 Σ_i a_i exp(-b_i' |k|² / 4)`.

The numbers are Peng's Table 1 for Z = 1 (H) ... 98 (Cf) as gemmi distributes them:
`gemmi.Element(Z).c4322` holds the five `a_i` (Å) and `b_i` (Å²) of International Tables Vol. C
Table 4.3.2.2 (gemmi's `it92` is the X-ray table, `neutron92` neutron lengths). Tests compare them
with cryoJAX's independently typed copy and with the Mott-Bethe formula applied to gemmi's X-ray
factors.
"""

import functools

import numpy as np
from jaxtyping import Float, Int

from .._errors import InputError

PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED = 47.878
"""`h² / (2π m₀ e)` in V·Å²: converts a scattering factor in Å into potential × volume (V·Å³)."""

_LARGEST_ATOMIC_NUMBER = 118  # gemmi's elements; it has Peng's parameters up to 98 (Cf)


@functools.cache
def _peng_table() -> Float[np.ndarray, "n_elements 2 5"]:
    """`[Z] -> ((a_1 ... a_5) in Å, (b_1 ... b_5) in Å²)` from gemmi's `c4322` coefficients (Z = 1
    ... 98; NaN rows where gemmi has none), read once on first use."""
    import gemmi

    rows = {}
    for atomic_number in range(1, _LARGEST_ATOMIC_NUMBER + 1):
        coefficients = gemmi.Element(atomic_number).c4322
        if coefficients is not None:
            rows[atomic_number] = (coefficients.a, coefficients.b)
    table = np.full((max(rows) + 1, 2, 5), np.nan)
    for atomic_number, parameters in rows.items():
        table[atomic_number] = parameters
    table.setflags(write=False)
    return table


def peng_parameters(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
) -> tuple[Float[np.ndarray, "n_atoms 5"], Float[np.ndarray, "n_atoms 5"]]:
    """Peng (1996) five-Gaussian parameters of each atom.

    **Arguments:**

    - `atomic_numbers`: atomic numbers, 1 (H) to 98 (Cf).

    **Returns:**

    `(a, b)`: amplitudes in Å and Gaussian widths in Å², each `(n_atoms, 5)`.

    Raises `InputError` (`atomicspi.io.InputError`) for an atomic number outside the table.
    """
    atomic_numbers = np.asarray(atomic_numbers)
    table = _peng_table()
    outside = (atomic_numbers < 1) | (atomic_numbers >= len(table))
    missing = outside | np.isnan(table[np.where(outside, 0, atomic_numbers), 0, 0])
    if missing.any():
        bad = sorted(set(atomic_numbers[missing].tolist()))
        raise InputError(
            f"atomic_numbers: no Peng (1996) scattering factor for atomic number(s) {bad}"
        )
    parameters = table[atomic_numbers]
    return parameters[..., 0, :], parameters[..., 1, :]


def scattering_factor(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
    s_in_inverse_angstroms: Float[np.ndarray, "..."],
) -> Float[np.ndarray, "n_atoms ..."]:
    """Elastic electron scattering factor `f(s) = Σ a_i exp(-b_i s²)` in Å.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers.
    - `s_in_inverse_angstroms`: `s = q / 2 = sin(θ) / λ`, any shape.

    **Returns:**

    `(n_atoms, *s.shape)` scattering factors in Å.
    """
    a, b = peng_parameters(atomic_numbers)
    s_squared = np.asarray(s_in_inverse_angstroms, dtype=float) ** 2
    shape = (len(a),) + (1,) * s_squared.ndim + (5,)
    return np.sum(a.reshape(shape) * np.exp(-b.reshape(shape) * s_squared[..., None]), axis=-1)


def atomic_gaussian_table(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
    b_factors_in_angstroms_squared: Float[np.ndarray, " n_atoms"] | None = None,
) -> Float[np.ndarray, "n_atoms 5 2"]:
    """Per-atom Gaussian table `(a_i, b_i + B)` for the image model.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers.
    - `b_factors_in_angstroms_squared`: `(n_atoms,)` B-factors added to every `b_i`
        (zero when `None`).

    **Returns:**

    `(n_atoms, 5, 2)`: `[..., 0]` amplitudes `a_i` in Å, `[..., 1]` widths `b_i + B` in Å².
    """
    a, b = peng_parameters(atomic_numbers)
    if b_factors_in_angstroms_squared is not None:
        b_factors = np.asarray(b_factors_in_angstroms_squared, dtype=float)
        if b_factors.shape != a.shape[:1]:
            raise InputError(
                f"b_factors_in_angstroms_squared: shape {b_factors.shape} does not match "
                f"{a.shape[0]} atoms"
            )
        if np.any(b + b_factors[:, None] <= 0):
            raise InputError("b_factors_in_angstroms_squared: b_i + B must be positive")
        b = b + b_factors[:, None]
    return np.stack([a, b], axis=-1)


def residue_pseudo_atoms(
    atomic_numbers: Int[np.ndarray, " n_atoms"],
    b_factors_in_angstroms_squared: Float[np.ndarray, " n_atoms"] | None,
    residue_indices: Int[np.ndarray, " n_atoms"],
) -> Float[np.ndarray, "n_residues n_gaussians 2"]:
    """Gaussian tables of coarse-grained beads, one per residue.

    A bead's scattering factor is the sum of its residue's atoms' scattering factors, as if all
    of them sat at the bead position: its table concatenates the atoms' `(a_i, b_i + B)` rows.
    Residues with fewer atoms are padded with `(0, 1)` rows (zero amplitude), so all beads share
    `n_gaussians = 5 × (largest number of atoms in a residue)`.

    **Arguments:**

    - `atomic_numbers`: `(n_atoms,)` atomic numbers.
    - `b_factors_in_angstroms_squared`: `(n_atoms,)` B-factors, or `None` for zero.
    - `residue_indices`: `(n_atoms,)` residue index of each atom; beads are ordered by
        `np.unique(residue_indices)`.

    **Returns:**

    `(n_residues, n_gaussians, 2)` table for `make_image_model(..., gaussian_table=...)`.
    """
    table = atomic_gaussian_table(atomic_numbers, b_factors_in_angstroms_squared)
    residues, inverse = np.unique(np.asarray(residue_indices), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(residues))
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(inverse), dtype=int)
    rank[order] = np.arange(len(inverse)) - np.repeat(starts, counts)
    beads = np.zeros((len(residues), counts.max(), 5, 2))
    beads[..., 1] = 1.0
    beads[inverse, rank] = table
    return beads.reshape(len(residues), counts.max() * 5, 2)
