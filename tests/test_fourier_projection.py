"""Fourier-space projection (type-1 non-uniform FFT) against the dense pixel sums, direct sums and finite differences."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomicspi.io import InputError
from atomicspi.microscope import (
    PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED,
    CTFParameters,
    atomic_gaussian_table,
    euler_angles_to_matrix,
    make_fourier_projector,
    make_image_model,
    project_atoms_dense,
    project_atoms_fourier,
)
from atomicspi.microscope._fourier_projection import (
    _aliasing_bound,
    fold_aliases,
    form_factor_basis,
    nonuniform_fft,
    semicircle_kernel_beta,
)
from atomicspi.structure import load_structure

ADK = pathlib.Path(__file__).resolve().parents[1] / "atomicspi" / "data" / "adk_closed.pdb.gz"


@pytest.fixture(scope="module")
def adk():
    model = load_structure(ADK)
    return model, model.positions_in_angstroms - model.positions_in_angstroms.mean(axis=0)


def _adk_like_atoms(adk, n_atoms, box_size, pixel_size, seed=0, hydrogen_b_factor=None):
    """AdK's elements and B-factors (H, C, N, O, S; B from 25 to 124 Å², 0 for the hydrogens and a few oxygens) at
    random positions well inside the box; `hydrogen_b_factor` replaces the hydrogens' zero B-factors."""
    model, _ = adk
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(model.atomic_numbers), n_atoms, replace=False)
    numbers, b_factors = model.atomic_numbers[chosen], model.b_factors_in_angstroms_squared[chosen]
    if hydrogen_b_factor is not None:
        b_factors = np.where(numbers == 1, hydrogen_b_factor, b_factors)
    table = atomic_gaussian_table(numbers, b_factors)
    amplitudes = PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * table[..., 0]
    variances = table[..., 1] / (8.0 * np.pi**2)
    positions = rng.uniform(-0.35, 0.35, size=(n_atoms, 2)) * box_size * pixel_size
    return positions, amplitudes, variances


def _relative_error(estimate, reference):
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def _correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.parametrize("box_size, kernel_width", [(24, 4), (24, 6), (25, 6)])
def test_nonuniform_fft_matches_direct_sum(x64, box_size, kernel_width):
    rng = np.random.default_rng(1)
    positions = rng.uniform(-30.0, 50.0, size=(60, 2))  # in pixels, far outside one period too
    weights = rng.normal(size=(60, 3))
    max_frequency, grid_size = 18, 48
    beta = semicircle_kernel_beta(kernel_width, max_frequency / grid_size)
    result = np.asarray(
        nonuniform_fft(jnp.asarray(positions), jnp.asarray(weights), box_size, max_frequency, grid_size, kernel_width, beta)
    )
    m = np.arange(-max_frequency, max_frequency + 1)[:, None]
    n = np.arange(max_frequency + 1)[None, :]
    phases = np.exp(-2j * np.pi * (n * positions[:, 0, None, None] + m * positions[:, 1, None, None]) / box_size)
    direct = np.einsum("ac,amn->cmn", weights, phases)
    assert result.shape == direct.shape
    # every point's error is at most the kernel's aliasing bound (relative), so the sum's is at most Σ |w| times it
    bound = _aliasing_bound(beta, kernel_width, max_frequency / grid_size)
    errors = np.abs(result - direct)
    assert np.all(errors <= bound * np.abs(weights).sum(axis=0)[:, None, None])
    # and the root-mean-square error is below the per-point bound (measured 0.55-0.7 of it)
    assert _relative_error(result, direct) <= 0.85 * bound


@pytest.mark.parametrize("box_size", [8, 9])
def test_fold_aliases_sums_congruent_frequencies(x64, box_size):
    rng = np.random.default_rng(2)
    max_frequency = box_size - 2
    spectrum = rng.normal(size=(2 * max_frequency + 1, max_frequency + 1)) + 1j * rng.normal(size=(2 * max_frequency + 1, max_frequency + 1))
    spectrum[max_frequency, 0] = spectrum[max_frequency, 0].real  # a real image's zero frequency
    expected = np.zeros((box_size, box_size), complex)
    for row, m in enumerate(range(-max_frequency, max_frequency + 1)):
        for n in range(max_frequency + 1):
            expected[m % box_size, n % box_size] += spectrum[row, n]
            if n > 0:  # the conjugate at (-m, -n) of a real image
                expected[-m % box_size, -n % box_size] += np.conj(spectrum[row, n])
    folded = np.asarray(fold_aliases(jnp.asarray(spectrum), box_size))
    np.testing.assert_allclose(folded, expected[:, : box_size // 2 + 1], rtol=0, atol=1e-12)


def test_form_factor_basis_is_exact_for_few_distinct_rows_and_within_tolerance_otherwise(adk):
    model, _ = adk
    nodes = np.linspace(0.0, 1.0, 200)
    node_weights = nodes + 0.01
    # elements without B-factors: five distinct rows, all atoms exactly represented by five channels
    table = atomic_gaussian_table(model.atomic_numbers)
    amplitudes, variances = table[..., 0], table[..., 1] / (8 * np.pi**2)
    exact = np.einsum("ai,aij->aj", amplitudes, np.exp(-2 * np.pi**2 * variances[..., None] * nodes**2))
    weights, basis = form_factor_basis(amplitudes, variances, nodes, node_weights, 1e-12, 12)
    assert weights.shape == (len(amplitudes), len(np.unique(model.atomic_numbers)))
    np.testing.assert_allclose(weights @ basis, exact, atol=1e-10 * np.abs(exact).max())
    # per-atom B-factors: every atom differs; the truncation meets the weighted tolerance with a few channels
    table = atomic_gaussian_table(model.atomic_numbers, model.b_factors_in_angstroms_squared)
    amplitudes, variances = table[..., 0], table[..., 1] / (8 * np.pi**2)
    exact = np.einsum("ai,aij->aj", amplitudes, np.exp(-2 * np.pi**2 * variances[..., None] * nodes**2))
    for tolerance in (1e-2, 1e-4):
        weights, basis = form_factor_basis(amplitudes, variances, nodes, node_weights, tolerance, 30)
        error = np.sqrt(np.sum(node_weights * (weights @ basis - exact) ** 2) / np.sum(node_weights * exact**2))
        assert 0.05 * tolerance <= error <= tolerance  # (not more channels than needed either)
        assert weights.shape[1] <= 8
    # off the nodes (the basis functions are combinations of the rows' form factors) the approximation holds as well
    between = 0.5 * (nodes[1:] + nodes[:-1])
    weights, basis_between = form_factor_basis(amplitudes, variances, nodes, node_weights, 1e-4, 30, between)
    exact_between = np.einsum("ai,aij->aj", amplitudes, np.exp(-2 * np.pi**2 * variances[..., None] * between**2))
    middle_weights = 0.5 * (node_weights[1:] + node_weights[:-1])
    error = np.sqrt(np.sum(middle_weights * (weights @ basis_between - exact_between) ** 2) / np.sum(middle_weights * exact_between**2))
    assert error <= 1e-4
    # a cap on the channels is a cap
    weights, _ = form_factor_basis(amplitudes, variances, nodes, node_weights, 1e-9, 3)
    assert weights.shape[1] == 3


@pytest.mark.parametrize("box_size", [32, 64])
@pytest.mark.parametrize("pixel_size", [1.0, 1.5])
@pytest.mark.parametrize("hydrogen_b_factor", [None, 30.0])
def test_projection_matches_rfft2_of_dense_projection(adk, box_size, pixel_size, hydrogen_b_factor):
    positions, amplitudes, variances = _adk_like_atoms(adk, 600, box_size, pixel_size, hydrogen_b_factor=hydrogen_b_factor)
    dense_image = np.asarray(
        project_atoms_dense(jnp.asarray(positions), jnp.asarray(amplitudes), jnp.asarray(variances), box_size, pixel_size)
    )
    reference = np.fft.rfft2(dense_image)
    fourier = np.asarray(
        jax.jit(lambda p: project_atoms_fourier(p, amplitudes, variances, box_size, pixel_size))(jnp.asarray(positions))
    )
    assert fourier.shape == (box_size, box_size // 2 + 1)
    image = np.fft.irfft2(fourier, s=(box_size, box_size))
    error = _relative_error(fourier, reference)
    if hydrogen_b_factor is None:
        # the hydrogens' B = 0 leaves Gaussians of σ = 0.08 Å, whose pixel averages have aliases far beyond the
        # kept |n'|, |m'| ≤ 0.75 D: measured 0.9-1.4 % (1 Å pixels), 1.6-2.4 % (1.5 Å)
        assert _correlation(image, dense_image) >= 0.999
        assert error <= {1.0: 0.02, 1.5: 0.035}[pixel_size]
    else:
        # measured 0.1 % (1 Å), 0.4-0.5 % (1.5 Å)
        assert _correlation(image, dense_image) >= 0.99995
        assert error <= {1.0: 0.002, 1.5: 0.007}[pixel_size]


def test_projection_matches_truncated_alias_sum_in_float64(adk, x64):
    """Against the exact sum over |n'|, |m'| ≤ K (numpy, float64): what is left is the NUFFT's and the basis' error."""
    box_size, pixel_size = 32, 1.2
    positions, amplitudes, variances = _adk_like_atoms(adk, 300, box_size, pixel_size, seed=3)
    projector = make_fourier_projector(amplitudes, variances, box_size, pixel_size)
    fourier = np.asarray(projector(jnp.asarray(positions)))
    max_frequency = projector.max_frequency
    frequencies = np.arange(-max_frequency, max_frequency + 1)
    q_squared = (frequencies[None, :] ** 2 + frequencies[:, None] ** 2) / (box_size * pixel_size) ** 2
    form_factors = np.einsum("ai,aimn->amn", amplitudes, np.exp(-2 * np.pi**2 * variances[..., None, None] * q_squared))
    u = positions / pixel_size + box_size // 2
    phases = np.exp(-2j * np.pi * (frequencies[None, None, :] * u[:, 0, None, None] + frequencies[None, :, None] * u[:, 1, None, None]) / box_size)
    spectrum = np.sum(form_factors * phases, axis=0) * np.outer(np.sinc(frequencies / box_size), np.sinc(frequencies / box_size)) / pixel_size**2
    expected = np.zeros((box_size, box_size), complex)
    np.add.at(expected, (frequencies[:, None] % box_size, frequencies[None, :] % box_size), spectrum)
    error = _relative_error(fourier, expected[:, : box_size // 2 + 1])
    assert error <= 1.5e-3  # measured ≈ 5·10⁻⁴ (kernel width 4); width 6 is ≈ 10⁻⁴
    sharper = make_fourier_projector(amplitudes, variances, box_size, pixel_size, kernel_width=6, basis_tolerance=1e-4)
    assert _relative_error(np.asarray(sharper(jnp.asarray(positions))), expected[:, : box_size // 2 + 1]) <= 0.5 * error


def test_gradient_matches_dense_gradient_and_finite_differences(adk, x64):
    box_size, pixel_size = 32, 1.0
    # (with the hydrogens' B = 0 the gradients, weighted towards high frequencies, correlate at about 0.99)
    positions, amplitudes, variances = _adk_like_atoms(adk, 200, box_size, pixel_size, seed=4, hydrogen_b_factor=30.0)
    projector = make_fourier_projector(amplitudes, variances, box_size, pixel_size)
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(box_size, box_size)))

    def fourier_loss(positions):
        return jnp.sum(weights * jnp.fft.irfft2(projector(positions), s=(box_size, box_size)))

    def dense_loss(positions):
        return jnp.sum(weights * project_atoms_dense(positions, jnp.asarray(amplitudes), jnp.asarray(variances), box_size, pixel_size))

    gradient = np.asarray(jax.jit(jax.grad(fourier_loss))(jnp.asarray(positions)))
    dense_gradient = np.asarray(jax.jit(jax.grad(dense_loss))(jnp.asarray(positions)))
    assert _correlation(gradient, dense_gradient) >= 0.999
    assert _relative_error(gradient, dense_gradient) <= 0.045  # measured 2.8 %: the gradient weights high frequencies
    loss = jax.jit(fourier_loss)
    step = 1e-5
    for atom, axis in [(0, 0), (0, 1), (17, 0), (101, 1), (199, 0)]:
        delta = np.zeros_like(positions)
        delta[atom, axis] = step
        numeric = (loss(jnp.asarray(positions + delta)) - loss(jnp.asarray(positions - delta))) / (2 * step)
        assert gradient[atom, axis] == pytest.approx(float(numeric), rel=1e-6, abs=1e-8 * np.abs(gradient).max())


def test_box_is_periodic_and_whole_pixel_shifts_are_phase_ramps(adk, x64):
    box_size, pixel_size = 24, 1.0
    table = atomic_gaussian_table(np.array([8, 6, 16]), np.array([20.0, 40.0, 60.0]))
    amplitudes = PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * table[..., 0]
    variances = table[..., 1] / (8.0 * np.pi**2)
    # atoms on and beyond the edges: the Fourier image is that of the periodic box
    positions = np.array([[-12.3, 0.4], [11.6, -11.8], [30.0, 2.0]])
    projector = make_fourier_projector(amplitudes, variances, box_size, pixel_size)
    fourier = np.asarray(projector(jnp.asarray(positions)))
    period = box_size * pixel_size
    copies = np.array([[i, j] for i in (-2, -1, 0, 1) for j in (-1, 0, 1)]) * period
    periodic = sum(
        np.asarray(project_atoms_dense(jnp.asarray(positions + copy), jnp.asarray(amplitudes), jnp.asarray(variances), box_size, pixel_size))
        for copy in copies
    )
    image = np.fft.irfft2(fourier, s=(box_size, box_size))
    assert _correlation(image, periodic) >= 0.99999
    assert _relative_error(fourier, np.fft.rfft2(periodic)) <= 0.006  # measured 0.36 %
    unwrapped = np.asarray(project_atoms_dense(jnp.asarray(positions), jnp.asarray(amplitudes), jnp.asarray(variances), box_size, pixel_size))
    assert _relative_error(fourier, np.fft.rfft2(unwrapped)) >= 0.2  # (the dense path drops what leaves the box)
    # a shift by a whole period changes nothing, one by a whole pixel multiplies by the phase ramp
    np.testing.assert_allclose(np.asarray(projector(jnp.asarray(positions + [period, -2 * period]))), fourier, atol=1e-9 * np.abs(fourier).max())
    shifted = np.asarray(projector(jnp.asarray(positions + [pixel_size, 0.0])))
    ramp = np.exp(-2j * np.pi * np.fft.rfftfreq(box_size))[None, :]
    np.testing.assert_allclose(shifted, fourier * ramp, atol=1e-9 * np.abs(fourier).max())


@pytest.mark.parametrize("box_size, padding_factor", [(48, 1.0), (33, 1.0), (40, 1.5)])
def test_image_model_fourier_matches_dense_with_ctf_and_shift(adk, box_size, padding_factor):
    model, positions = adk
    select = slice(0, 700)  # residues 1-44: inside a 48 × 1.4 Å box
    numbers, b_factors = model.atomic_numbers[select], model.b_factors_in_angstroms_squared[select]
    centred = positions[select] - positions[select].mean(axis=0)
    rotation = euler_angles_to_matrix(jnp.array([10.0, 100.0, 45.0]))
    ctf = CTFParameters(12000.0, 10000.0, 40.0, b_factor_in_angstroms_squared=20.0, beam_tilt_x_in_milliradians=0.4)
    args = (jnp.asarray(centred, dtype=jnp.float32), rotation, jnp.array([1.5, -2.5]), ctf)
    pixel = 1.4 if box_size != 40 else 1.2
    models = {
        method: make_image_model(numbers, b_factors, box_size, pixel, method=method, padding_factor=padding_factor)
        for method in ("fourier", "dense")
    }
    images = {method: np.asarray(eqx.filter_jit(image_model)(*args)) for method, image_model in models.items()}
    # AdK's PDB B-factors (the hydrogens' are 0): measured correlation 0.99993-0.99999, relative error 0.5-1.1 %
    assert _correlation(images["fourier"], images["dense"]) >= 0.9998
    assert _relative_error(images["fourier"], images["dense"]) <= 0.02
    # the transform and the projection are consistent with the image
    fourier_model = models["fourier"]
    np.testing.assert_allclose(
        np.asarray(eqx.filter_jit(fourier_model.fourier)(*args)), np.fft.rfft2(images["fourier"]),
        atol=2e-4 * np.abs(np.fft.rfft2(images["fourier"])).max(),
    )
    projections = {method: np.asarray(eqx.filter_jit(m.projection)(args[0], rotation)) for method, m in models.items()}
    assert _correlation(projections["fourier"], projections["dense"]) >= 0.9995
    # vmap over particles equals one at a time
    batch = jnp.stack([args[0], args[0] + 0.7])
    batched = jax.jit(jax.vmap(fourier_model, in_axes=(0, None, None, None)))(batch, *args[1:])
    np.testing.assert_allclose(np.asarray(batched[0]), images["fourier"], atol=1e-4 * np.abs(images["fourier"]).max())


def test_bad_options_are_rejected(adk):
    model, _ = adk
    numbers, b_factors = model.atomic_numbers[:10], model.b_factors_in_angstroms_squared[:10]
    with pytest.raises(InputError, match="method"):
        make_image_model(numbers, b_factors, 32, 1.0, method="nufft")
    with pytest.raises(InputError, match="fourier_options"):
        make_image_model(numbers, b_factors, 32, 1.0, fourier_options={"kernel_width": 6})
    with pytest.raises(InputError, match="oversampling"):
        make_image_model(numbers, b_factors, 32, 1.0, method="fourier", fourier_options={"oversampling": 1.25})


def test_auto_method_follows_the_documented_box_size_rule(adk):
    from atomicspi.microscope._image_model import AUTO_FOURIER_LARGEST_PADDED_BOX

    model, _ = adk
    numbers, b_factors = model.atomic_numbers[:10], model.b_factors_in_angstroms_squared[:10]
    small = make_image_model(numbers, b_factors, 64, 1.0, method="auto", fourier_options={"kernel_width": 6})
    assert small.method == "fourier" and small.fourier_projector is not None and small.fourier_projector.kernel_width == 6
    assert make_image_model(numbers, b_factors, AUTO_FOURIER_LARGEST_PADDED_BOX, 1.0, method="auto").method == "fourier"
    padded = make_image_model(numbers, b_factors, 128, 1.0, method="auto", padding_factor=1.5)
    assert padded.method == "splat" and padded.fourier_projector is None
    assert make_image_model(numbers, b_factors, 64, 1.0).method == "splat"  # the default is unchanged
