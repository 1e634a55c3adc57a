"""Projection and image model against analytic results, cryoJAX and finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atomicspi.microscope import (
    PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED,
    CTFParameters,
    euler_angles_to_matrix,
    make_image_model,
    rfft_frequencies,
    scattering_factor,
)
from atomicspi.structure import load_structure

# CTF(k) = 1 everywhere: sin(90°) with no aberrations
NO_CTF = dict(
    defocus_u_in_angstroms=0.0, defocus_v_in_angstroms=0.0, spherical_aberration_in_millimeters=0.0,
    amplitude_contrast_ratio=0.0, phase_shift_in_degrees=90.0,
)


@pytest.fixture(scope="module")
def adk():
    model = load_structure(
        __import__("pathlib").Path(__file__).resolve().parents[1] / "atomicspi" / "data" / "adk_closed.pdb.gz"
    )
    masses = np.where(model.atomic_numbers == 1, 1.008, 2.0 * model.atomic_numbers)
    centre = np.sum(masses[:, None] * model.positions_in_angstroms, axis=0) / masses.sum()
    return model, model.positions_in_angstroms - centre


@pytest.mark.parametrize("method", ["splat", "dense"])
@pytest.mark.parametrize("element, b_factor", [(6, 0.0), (1, 0.0), (16, 35.0), (79, 12.0)])
def test_integral_of_one_atom_is_scattering_factor_at_zero(x64, method, element, b_factor):
    pixel = 0.7
    model = make_image_model(np.array([element]), np.array([b_factor]), 40, pixel, method=method)
    image = eqx.filter_jit(model.projection)(jnp.array([[0.3, -1.2, 4.0]]), jnp.eye(3))
    expected = PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * scattering_factor(np.array([element]), 0.0)[0]
    assert float(jnp.sum(image)) * pixel**2 == pytest.approx(expected, rel=2e-4)


def test_fourier_slice_theorem_for_gaussian_density(x64):
    """2D FT of the projection = central slice A^T (k_x, k_y, 0) of the analytic 3D FT."""
    centres = np.array([[4.0, -2.0, 3.0], [-3.0, 5.0, -1.0], [1.0, 1.0, -6.0]])
    weights = np.array([1.0, 0.6, 1.4])
    widths = np.array([150.0, 220.0, 180.0])  # b in Å² (σ ≈ 1.4-1.7 Å)
    table = np.stack([weights, widths], axis=-1)[:, None, :]
    box, pixel = 64, 1.0
    rotation = euler_angles_to_matrix(jnp.array([37.0, 71.0, -122.0]))
    model = make_image_model(None, None, box, pixel, gaussian_table=table)
    image = np.asarray(eqx.filter_jit(model.projection)(jnp.asarray(centres), rotation))
    frequencies = np.asarray(rfft_frequencies(box, pixel))
    kx, ky = frequencies[..., 0], frequencies[..., 1]
    # continuous FT of the pixel-averaged image, with pixel (i, j) at ((j - D//2) p, (i - D//2) p)
    origin_phase = np.exp(2j * np.pi * (kx + ky) * (box // 2) * pixel)
    measured = np.fft.rfft2(image) * pixel**2 * origin_phase / (np.sinc(kx * pixel) * np.sinc(ky * pixel))
    k3 = np.stack([kx, ky, np.zeros_like(kx)], axis=-1) @ np.asarray(rotation)  # A^T k
    analytic = PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED * np.sum(
        weights * np.exp(-widths * np.sum(k3**2, axis=-1)[..., None] / 4)
        * np.exp(-2j * np.pi * (k3 @ centres.T)),
        axis=-1,
    )
    low = np.hypot(kx, ky) < 0.2
    np.testing.assert_allclose(measured[low], analytic[low], atol=1e-4 * np.abs(analytic).max())


def test_atom_lands_on_documented_pixel_and_shift_moves_it(x64):
    box, pixel = 32, 1.0
    model = make_image_model(np.array([8]), np.array([20.0]), box, pixel)
    ctf = CTFParameters(**NO_CTF)
    image = np.asarray(model(jnp.array([[3.0, -5.0, 7.0]]), jnp.eye(3), jnp.zeros(2), ctf))
    assert np.unravel_index(np.argmax(image), image.shape) == (box // 2 - 5, box // 2 + 3)
    shifted = np.asarray(model(jnp.array([[3.0, -5.0, 7.0]]), jnp.eye(3), jnp.array([2.0, 4.0]), ctf))
    np.testing.assert_allclose(shifted, np.roll(image, (4, 2), axis=(0, 1)), atol=1e-9 * image.max())


def test_splat_and_dense_agree_with_ctf_and_padding(adk):
    model, positions = adk
    select = slice(0, 400)
    args = (jnp.asarray(positions[select], dtype=jnp.float32), euler_angles_to_matrix(jnp.array([10.0, 100.0, 45.0])),
            jnp.array([1.5, -2.5]), CTFParameters(12000.0, 10000.0, 40.0, b_factor_in_angstroms_squared=20.0))
    images = {
        method: np.asarray(
            eqx.filter_jit(make_image_model(model.atomic_numbers[select], model.b_factors_in_angstroms_squared[select], 48, 1.2,
                             method=method, padding_factor=1.5))(*args)
        )
        for method in ("splat", "dense")
    }
    scale = np.abs(images["dense"]).max()
    np.testing.assert_allclose(images["splat"], images["dense"], atol=1e-3 * scale)


@pytest.mark.parametrize("padding_factor", [1.0, 1.5])
def test_fourier_is_rfft2_of_image(adk, padding_factor):
    model, positions = adk
    image_model = make_image_model(model.atomic_numbers[:300], model.b_factors_in_angstroms_squared[:300], 33 if padding_factor == 1.0 else 32, 1.3, padding_factor=padding_factor)
    args = (jnp.asarray(positions[:300], dtype=jnp.float32), euler_angles_to_matrix(jnp.array([0.0, 30.0, 60.0])),
            jnp.array([0.7, 0.2]), CTFParameters(9000.0, 8000.0, beam_tilt_x_in_milliradians=0.5))
    image = eqx.filter_jit(image_model)(*args)
    np.testing.assert_allclose(np.asarray(eqx.filter_jit(image_model.fourier)(*args)), np.fft.rfft2(np.asarray(image)), atol=1e-3 * float(jnp.abs(image).max()))


def test_even_box_fourier_is_rfft2_of_image(adk):
    model, positions = adk
    image_model = make_image_model(model.atomic_numbers[:300], model.b_factors_in_angstroms_squared[:300], 32, 1.3)
    args = (jnp.asarray(positions[:300], dtype=jnp.float32), jnp.eye(3), jnp.array([0.7, 0.2]),
            CTFParameters(9000.0, 8000.0, beam_tilt_y_in_milliradians=0.5))
    image = eqx.filter_jit(image_model)(*args)
    np.testing.assert_allclose(np.asarray(eqx.filter_jit(image_model.fourier)(*args)), np.fft.rfft2(np.asarray(image)), atol=1e-3 * float(jnp.abs(image).max()))


def test_vmap_over_particles_equals_loop(adk):
    model, positions = adk
    image_model = make_image_model(model.atomic_numbers[:200], model.b_factors_in_angstroms_squared[:200], 32, 1.5)
    batch_positions = jnp.asarray(positions[:200], dtype=jnp.float32)[None] + jnp.arange(3.0)[:, None, None]
    rotations = euler_angles_to_matrix(jnp.array([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0], [60.0, 70.0, 80.0]]))
    shifts = jnp.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 2.0]])
    ctf = CTFParameters(jnp.array([8000.0, 9000.0, 10000.0]), jnp.array([7000.0, 9000.0, 11000.0]),
                        jnp.zeros(3), jnp.full(3, 300.0), jnp.full(3, 2.7), jnp.full(3, 0.1), jnp.zeros(3),
                        jnp.zeros(3), jnp.ones(3))
    batched = jax.jit(jax.vmap(image_model))(batch_positions, rotations, shifts, ctf)
    for i in range(3):
        single = eqx.filter_jit(image_model)(batch_positions[i], rotations[i], shifts[i], jax.tree.map(lambda x: x[i], ctf))
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), atol=1e-4 * float(jnp.abs(single).max()))


def test_adk_image_matches_cryojax(adk):
    cxs = pytest.importorskip("cryojax.simulator")
    from cryojax.constants import PengScatteringFactorParameters

    model, positions = adk
    box, pixel = 64, 1.5
    angles = np.array([30.0, 60.0, -20.0])
    shift = np.array([3.0, -2.0])
    U, V, angle = 15000.0, 13000.0, 30.0
    ours = np.asarray(
        eqx.filter_jit(make_image_model(model.atomic_numbers, model.b_factors_in_angstroms_squared, box, pixel))(
            jnp.asarray(positions, dtype=jnp.float32), euler_angles_to_matrix(jnp.asarray(angles)), jnp.asarray(shift),
            CTFParameters(U, V, angle, 300.0, 2.7, 0.07),
        )
    )
    volume = cxs.GaussianMixtureVolume.from_tabulated_parameters(
        positions, PengScatteringFactorParameters(model.atomic_numbers),
        extra_b_factors=model.b_factors_in_angstroms_squared,
    )
    theirs = np.asarray(eqx.filter_jit(lambda image_model: image_model.simulate())(
        cxs.make_image_model(
            volume,
            cxs.BasicImageConfig((box, box), pixel, 300.0),
            cxs.EulerAnglePose(*shift, *(-angles)),  # cryoJAX: negate RELION's angles
            cxs.ContrastTransferTheory(cxs.AstigmaticCTF((U + V) / 2, U - V, 90.0 - angle, 2.7), amplitude_contrast_ratio=0.07),
        )
    ))
    # cryoJAX's CTF is -RELION's and its potential is ours / 47.878 (units of 1/Å per Å²)
    assert np.corrcoef(ours.ravel(), -theirs.ravel())[0, 1] >= 0.999
    ratio = np.sum(ours * theirs) / np.sum(theirs**2)
    assert ratio == pytest.approx(-PROJECTED_POTENTIAL_CONSTANT_IN_VOLT_ANGSTROMS_SQUARED, rel=0.01)


def test_gradients_match_finite_differences(x64):
    rng = np.random.default_rng(0)
    numbers = np.array([6, 7, 8, 16, 1])
    positions = jnp.asarray(rng.normal(scale=4.0, size=(5, 3)))
    model = make_image_model(numbers, np.full(5, 15.0), 32, 1.0, truncation_in_standard_deviations=7.0)
    weights = jnp.asarray(rng.normal(size=(32, 32)))

    @jax.jit
    def loss(positions, angles, shift, defocus, scale):
        ctf = CTFParameters(defocus, defocus - 500.0, 20.0, scale=scale)
        return jnp.sum(weights * model(positions, euler_angles_to_matrix(angles), shift, ctf))

    args = (positions, jnp.array([20.0, 50.0, -30.0]), jnp.array([0.4, -0.8]), jnp.asarray(8000.0), jnp.asarray(1.3))
    gradients = jax.grad(loss, argnums=range(5))(*args)
    step = 1e-5
    for index, gradient in enumerate(gradients):
        flat = np.ravel(np.asarray(args[index]))
        for entry in range(min(flat.size, 6)):
            delta = np.zeros_like(flat)
            delta[entry] = step * max(1.0, abs(flat[entry]))
            plus, minus = list(args), list(args)
            plus[index] = jnp.asarray((flat + delta).reshape(np.shape(args[index])))
            minus[index] = jnp.asarray((flat - delta).reshape(np.shape(args[index])))
            numeric = (loss(*plus) - loss(*minus)) / (2 * delta[entry])
            assert float(np.ravel(gradient)[entry]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-6 * float(jnp.abs(loss(*args)) + 1))


def test_splat_handles_atoms_at_and_beyond_box_edges(x64):
    box, pixel = 24, 1.0
    positions = jnp.array([
        [-12.4, 0.0, 0.0], [11.6, 3.0, 0.0], [0.0, -14.0, 1.0], [13.5, 13.5, 0.0], [60.0, 0.0, 0.0], [-2.0, -40.0, 0.0],
    ])
    numbers, b_factors = np.full(6, 8), np.full(6, 30.0)
    images = [
        make_image_model(numbers, b_factors, box, pixel, method=method, truncation_in_standard_deviations=6.0).projection(positions, jnp.eye(3))
        for method in ("splat", "dense")
    ]
    np.testing.assert_allclose(np.asarray(images[0]), np.asarray(images[1]), atol=1e-7 * float(jnp.max(images[1])))


def test_pseudo_atom_image_equals_its_atoms_at_the_bead_position(adk):
    from atomicspi.microscope import residue_pseudo_atoms

    model, positions = adk
    members = model.residue_indices < 3
    numbers, b_factors, residues = (
        model.atomic_numbers[members], model.b_factors_in_angstroms_squared[members], model.residue_indices[members]
    )
    beads = jnp.array([[2.0, -3.0, 1.0], [-4.0, 5.0, 0.0], [7.0, 1.0, -2.0]])
    table = residue_pseudo_atoms(numbers, b_factors, residues)
    args = (euler_angles_to_matrix(jnp.array([20.0, 40.0, 60.0])), jnp.array([1.0, -0.5]), CTFParameters(9000.0, 8500.0))
    bead_image = eqx.filter_jit(make_image_model(None, None, 32, 1.2, gaussian_table=table))(beads, *args)
    atom_image = eqx.filter_jit(make_image_model(numbers, b_factors, 32, 1.2))(beads[np.searchsorted(np.unique(residues), residues)], *args)
    np.testing.assert_allclose(np.asarray(bead_image), np.asarray(atom_image), atol=1e-4 * float(jnp.abs(atom_image).max()))


def test_make_image_model_rejects_bad_input():
    from atomicspi.io import InputError

    with pytest.raises(InputError, match="gaussian_table"):
        make_image_model(np.array([6]), None, 16, 1.0, gaussian_table=np.ones((1, 5, 2)))
    with pytest.raises(InputError, match="gaussian_table"):
        make_image_model(None, None, 16, 1.0, gaussian_table=np.ones((1, 5)))
    with pytest.raises(InputError, match="b_factors"):
        make_image_model(np.array([6, 7]), np.array([1.0]), 16, 1.0)
    with pytest.raises(InputError, match="padding_factor"):
        make_image_model(np.array([6]), None, 16, 1.0, padding_factor=0.5)
