"""`python -m atomicspi.simulate`: the dataset it writes reads back through dataset.yaml, and its
truth.npz is what the images hold: conformations checked against a hand-written superposition and
interpolation, or against ProDy's normal modes; poses against the star file; images against the
microscope rendering the truth, with the stated SNR and unit noise."""

import subprocess
import sys

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from atomicspi.io import CTF_FIELDS, load_config, load_particles
from atomicspi.microscope import CTFParameters, make_image_model
from atomicspi.structure import load_structure

BOX_SIZE, PIXEL_SIZE = 24, 4.0  # Cα-only AdK (about 50 Å across) in a 96 Å box


@pytest.fixture(scope="module")
def calpha_pdbs(tmp_path_factory, example_structure_path):
    """Cα-only closed and open AdK as PDB files (so the truth's Cα positions are all the atoms)."""
    folder = tmp_path_factory.mktemp("structures")
    paths = []
    for name in ("adk_closed", "adk_open"):
        path = folder / f"{name}.pdb"
        load_structure(example_structure_path.with_name(f"{name}.pdb.gz")).calpha().to_mdtraj().save_pdb(str(path))
        paths.append(path)
    return paths


def _simulate(*arguments):
    result = subprocess.run([sys.executable, "-m", "atomicspi.simulate", *map(str, arguments)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def _kabsch(mobile, target):
    """`mobile` rotated and translated onto `target` (least squares, by SVD)."""
    mobile_centre, target_centre = mobile.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((mobile - mobile_centre).T @ (target - target_centre))
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return (mobile - mobile_centre) @ rotation + target_centre


def _check_images_hold_the_truth(folder, dataset, positions, snr):
    """The images are c · (the truth rendered at the star's poses and CTF) + unit white noise, with
    mean signal variance / noise variance = snr (the simulator's definition)."""
    reference = load_structure(folder / "reference.pdb")
    image_model = eqx.filter_jit(
        make_image_model(reference.atomic_numbers, reference.b_factors_in_angstroms_squared, BOX_SIZE, PIXEL_SIZE)
    )
    clean = np.stack([
        np.asarray(image_model(
            jnp.asarray(positions[i], dtype=jnp.float32), jnp.asarray(dataset.rotations[i], dtype=jnp.float32),
            jnp.asarray(dataset.shifts_in_angstroms[i], dtype=jnp.float32),
            CTFParameters(**{name: jnp.float32(dataset.ctf[name][i]) for name in CTF_FIELDS}),
        ), dtype=np.float64)
        for i in range(len(dataset))
    ])
    images = np.asarray(dataset.images(), dtype=np.float64)
    scale = np.sum(images * clean) / np.sum(clean * clean)
    residual = images - scale * clean
    # Unit noise: the sample standard deviation of n pixels has standard error 1/sqrt(2n) (0.85 % for
    # the 12 × 24² pixels of the smaller stack); 5 % is six of them.
    assert np.std(residual) == pytest.approx(1.0, abs=0.05)
    # SNR: the fitted scale's relative error is ~1/sqrt(snr · n) (0.6 % for 12 images), doubled in a variance,
    # plus the noise's own 0.85 %: 6 % is four standard errors.
    assert np.mean(np.var(scale * clean, axis=(1, 2))) == pytest.approx(snr, rel=0.06)
    # Each image holds its own particle: fitted with its neighbour's truth instead (another pose and
    # defocus), the residual is far above the unit noise (measured 2.06 and 2.15 at SNR 4, against
    # 1.00 with their own; 1.3 is 35 standard errors of the noise's 0.85 % above 1).
    shuffled = np.roll(clean, 1, axis=0)
    shuffled_residual = images - np.sum(images * shuffled) / np.sum(shuffled * shuffled) * shuffled
    assert np.std(shuffled_residual) > 1.3


def test_interpolation_dataset_holds_the_truth_it_writes(tmp_path, calpha_pdbs):
    closed, opened = calpha_pdbs
    folder = tmp_path / "simulated"
    n, snr = 12, 4.0
    result = _simulate(folder, "--structures", closed, opened, "--n-particles", n, "--box-size", BOX_SIZE,
                       "--pixel-size", PIXEL_SIZE, "--snr", snr, "--fraction-range", 0.2, 0.9, "--seed", 5,
                       "--model", "deformation")
    assert f"wrote {folder / 'dataset.yaml'}" in result.stderr
    config = load_config(folder / "dataset.yaml")
    assert config.model == "deformation" and config.poses == "given"
    dataset = load_particles(config.particles)
    assert (len(dataset), dataset.box_size, dataset.pixel_size_in_angstroms) == (n, BOX_SIZE, PIXEL_SIZE)
    truth = np.load(folder / "truth.npz")
    fractions, positions = truth["interpolation_fraction"], truth["calpha_positions_in_angstroms"]
    assert fractions.shape == (n,) and np.all((fractions >= 0.2) & (fractions <= 0.9))
    assert float(truth["noise_std"]) == 1.0

    # Conformations: the reference (the start, centred) moved the fraction f of the way to the end
    # superposed onto it, superposed here by hand. PDB files hold 3 decimals (±5e-4 Å per coordinate,
    # in the reference and in both inputs): 2e-3 Å covers them; the fractions span 0.2-0.9, so a
    # mismatch of fractions and conformations would show in Å.
    reference = load_structure(folder / "reference.pdb").positions_in_angstroms
    end = _kabsch(load_structure(opened).positions_in_angstroms, reference)
    assert np.sqrt(np.mean(np.sum((end - reference) ** 2, axis=-1))) > 3.0  # closed and open differ by Å
    expected = reference[None] + fractions[:, None, None] * (end - reference)[None]
    np.testing.assert_allclose(positions, expected, atol=2e-3)

    # Poses: the truth's are the star file's (6 decimals of degrees and Å, float32 truth: 1e-5).
    np.testing.assert_allclose(dataset.rotations, truth["rotations"], atol=1e-5)
    np.testing.assert_allclose(dataset.shifts_in_angstroms, truth["shifts_in_angstroms"], atol=1e-5)
    _check_images_hold_the_truth(folder, dataset, positions, snr)


def test_prior_dataset_draws_amplitudes_of_prodys_modes_with_the_stated_spread(tmp_path, calpha_pdbs):
    """`--prior nma`: each conformation is the reference plus Σ aₖ vₖ over the lowest ANM modes
    (ProDy's, 15 Å cutoff, unit γ), aₖ ~ N(0, 1/(γ λₖ)) with the given γ."""
    prody = pytest.importorskip("prody")
    prody.confProDy(verbosity="none")
    closed, _ = calpha_pdbs
    folder = tmp_path / "prior"
    n, n_modes, gamma, snr = 64, 3, 0.25, 4.0
    _simulate(folder, "--structures", closed, "--prior", "nma", "--n-particles", n, "--n-modes", n_modes,
              "--spring-constant", gamma, "--box-size", BOX_SIZE, "--pixel-size", PIXEL_SIZE, "--snr", snr, "--seed", 2)
    truth = np.load(folder / "truth.npz")
    reference = load_structure(folder / "reference.pdb").positions_in_angstroms
    anm = prody.ANM()
    anm.buildHessian(reference, cutoff=15.0, gamma=1.0)
    anm.calcModes(n_modes)
    # float32 eigen-decomposition against ProDy's float64 one of a reference rounded to 1e-3 Å.
    np.testing.assert_allclose(truth["mode_eigenvalues"], anm.getEigvals(), rtol=1e-3)
    assert float(truth["spring_constant"]) == gamma
    amplitudes = truth["amplitudes"]
    displacements = (truth["calpha_positions_in_angstroms"] - reference[None]).reshape(n, -1)
    coefficients = displacements @ anm.getEigvecs()  # (n, n_modes), each mode up to its sign
    signs = np.sign(np.sum(coefficients * amplitudes, axis=0))
    # PDB rounding (±5e-4 Å on 642 coordinates) projects to ~1e-2 Å at most on a unit mode.
    np.testing.assert_allclose(coefficients * signs, amplitudes, atol=2e-2)
    residual = displacements - coefficients @ anm.getEigvecs().T
    assert np.max(np.linalg.norm(residual, axis=1)) < 2e-2  # nothing outside the modes (rounding only)
    # Spread: Σ γ λₖ aₖ² over n × n_modes draws is χ² with 192 degrees of freedom (sd 19.6): ±4 sd.
    # (γ = 0.25 far from 1, so that a prior drawn for γ = 1 would sit 7 sd below.)
    chi_squared = float(np.sum(gamma * anm.getEigvals() * amplitudes**2))
    assert abs(chi_squared - n * n_modes) < 4 * np.sqrt(2 * n * n_modes), chi_squared
    dataset = load_particles(load_config(folder / "dataset.yaml").particles)
    assert len(dataset) == n
    _check_images_hold_the_truth(folder, dataset, truth["calpha_positions_in_angstroms"], snr)
