"""`model: volume` (GitHub issue 16): a density map fitted to the particles at their given poses.

The references are independent of the model under test: six anisotropic Gaussian blobs, whose
map is sampled on the grid and whose images are their analytic 3D transforms sliced at the poses
(`slice_field`, tested against analytic projections in tests/test_volume_projection.py) times the
CTF and the shift's phase, plus white noise; `atomicspi.products.backproject` (direct Fourier
inversion with the true poses, CTFs and shifts) on the same images; numpy transforms; mrcfile.
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest
import yaml
from _gaussian_blobs import GaussianBlobs

from atomicspi.io import InputError, load_config, write_particles_star
from atomicspi.microscope import CTFParameters, compute_ctf, ctf_batch_axes, rfft_frequencies, slice_field
from atomicspi.products import backproject, fourier_shell_correlation, resolution_at

BOX, VOXEL = 32, 2.0  # Å
N_IMAGES, SNR = 300, 1.0


class Blobs(GaussianBlobs):
    """Six anisotropic Gaussians (σ 2-4 Å, centres within a quarter box of the centre): a map with
    signal up to about 5 Å, beyond the reach of 300 images at SNR 1 near Nyquist (4 Å)."""

    def __init__(self, seed: int = 0, n_blobs: int = 6):
        super().__init__(BOX, VOXEL, seed=seed, n_blobs=n_blobs, radial_range=(0.05, 0.25), width_range=(1.0, 2.0))


def _simulate(blobs: Blobs, n: int, snr: float, seed: int = 0):
    """Images of the blobs at uniform random poses, shifts up to 2 Å, defocus 0.5-1.5 µm, white
    noise of unit variance and the signal scaled to the SNR (clean variance over noise variance).

    **Returns:** `(images, rotations, shifts, ctf dict, ctf values (n, D, D // 2 + 1), scale)`,
    `scale` the factor from the blobs' unit to the images'."""
    from atomicspi._simulation import random_acquisition

    rng, rotations, shifts, ctf = random_acquisition(n, seed, defocus_range_in_angstroms=(5000.0, 15000.0))
    frequencies = rfft_frequencies(BOX, VOXEL)
    parameters = CTFParameters(**{name: jnp.asarray(values, jnp.float32) for name, values in ctf.items()})

    def transfer(shift, ctf_parameters):
        phase = -2 * jnp.pi * (frequencies[..., 0] * shift[0] + frequencies[..., 1] * shift[1])
        return compute_ctf(frequencies, ctf_parameters) * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))

    axes = ctf_batch_axes(parameters, n)
    sliced = jax.vmap(lambda rotation: slice_field(blobs.transform, rotation, BOX, VOXEL))(jnp.asarray(rotations))
    transfers = jax.vmap(transfer, in_axes=(0, axes))(jnp.asarray(shifts), parameters)
    clean = np.asarray(jnp.fft.irfft2(sliced * transfers, s=(BOX, BOX)), dtype=np.float64)
    scale = 1.0 / math.sqrt(np.mean(np.var(clean, axis=(1, 2))) / snr)
    images = scale * clean + rng.standard_normal(clean.shape)
    values = np.asarray(jax.vmap(compute_ctf, in_axes=(None, axes))(frequencies, parameters), dtype=np.float64)
    return images.astype(np.float32), rotations, shifts, ctf, values, scale


def _write_dataset(folder: pathlib.Path, images, rotations, shifts, ctf, **settings) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_particles_star(folder / "particles.star", images, folder / "particles.mrcs", VOXEL, ctf=ctf,
                         rotations=rotations, shifts_in_angstroms=shifts)
    path = folder / "dataset.yaml"
    path.write_text(yaml.safe_dump({"particles": "particles.star", "model": "volume", "poses": "given", "output": "output", **settings}))
    return path


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """One CLI run (`atomicspi.infer.main`) of `model: volume` on 300 blob images at SNR 1 (no
    reference), and the direct Fourier reconstruction of the same images with the true poses."""
    from atomicspi import infer

    blobs = Blobs()
    images, rotations, shifts, ctf, ctf_values, scale = _simulate(blobs, N_IMAGES, SNR)
    folder = tmp_path_factory.mktemp("volume")
    # 150 steps of 32 (16 epochs) at 5e-3: converged (FSC 0.143 with the truth at 5.17 Å; 250 steps at
    # 3e-3 5.14 Å, 600 at 1e-3 5.12 Å, the exact MAP of the same prior by conjugate gradients 5.18 Å)
    path = _write_dataset(folder, images, rotations, shifts, ctf, num_steps=150, batch_size=32, learning_rate=5e-3,
                          samples_per_particle=2, checkpoint_every=150)
    assert infer.main([str(path), "--quiet"]) == 0
    frequencies = np.asarray(rfft_frequencies(BOX, VOXEL), dtype=np.float64)
    undo = np.exp(2j * np.pi * (frequencies[None, ..., 0] * shifts[:, None, None, 0] + frequencies[None, ..., 1] * shifts[:, None, None, 1]))
    centred = np.fft.irfft2(np.fft.rfft2(images.astype(np.float64)) * undo, s=(BOX, BOX))
    reference = backproject(centred, rotations, VOXEL, ctfs=ctf_values)
    return {"output": folder / "output", "truth": blobs.density, "scale": scale, "backprojection": reference}


def test_the_fitted_map_recovers_the_blobs_as_well_as_backprojection(volume_run):
    """FSC of `map.mrc` with the true map: as high as the direct Fourier reconstruction's with the true
    poses on the same images. Measured: FSC 0.143 at 5.14 Å (backprojection 5.01 Å), 0.5 at 5.99 Å
    (5.95 Å), FSC ≥ 0.96 to shell 8 (8 Å); the bounds below (10 % in resolution, 0.9 to shell 8) fail
    for the voxel-white parametrisation (7.1 Å at 600 steps) and for a prior estimated from the
    images' power minus the noise's (8.0 Å: it floored every shell beyond 10)."""
    fitted = mrcfile.read(volume_run["output"] / "map.mrc").astype(np.float64)
    frequencies, fsc = fourier_shell_correlation(fitted, volume_run["truth"], VOXEL)
    _, reference_fsc = fourier_shell_correlation(volume_run["backprojection"], volume_run["truth"], VOXEL)
    fitted_resolution = {level: resolution_at(frequencies, fsc, level) for level in (0.143, 0.5)}
    reference_resolution = {level: resolution_at(frequencies, reference_fsc, level) for level in (0.143, 0.5)}
    print(f"FSC with the truth: fit {np.round(fsc, 3)}, backprojection {np.round(reference_fsc, 3)}; "
          f"resolutions fit {fitted_resolution}, backprojection {reference_resolution}")
    assert np.all(fsc[:9] >= 0.9), fsc
    for level in (0.143, 0.5):
        assert fitted_resolution[level] <= 1.1 * reference_resolution[level]
    # The map is in the images' unit per Å (no reference: the contrast's prior median is 1), folded
    # with the particles' mean contrast: the blobs times the simulation's scale (before the folding
    # the map was 0.65 of it, the contrast 1.49)
    ratio = float(np.sum(fitted * volume_run["truth"]) / np.sum(volume_run["truth"] ** 2)) / volume_run["scale"]
    print(f"map / truth scale: {ratio:.3f}")
    assert 0.8 < ratio < 1.2


def test_the_half_map_fsc_predicts_the_resolution_against_the_truth(volume_run):
    """The gold-standard FSC of the half maps (run.json) at 0.143 is where the full map's FSC with the
    truth is 0.5 (Rosenthal & Henderson 2003: FSC_truth = √(2 FSC_half / (1 + FSC_half))). Measured
    5.85 Å and 5.99 Å."""
    record = json.loads((volume_run["output"] / "run.json").read_text())
    fsc_record = record["outputs"]["volume"]["fsc"]
    half_a = mrcfile.read(volume_run["output"] / "half_map_1.mrc").astype(np.float64)
    half_b = mrcfile.read(volume_run["output"] / "half_map_2.mrc").astype(np.float64)
    frequencies, halves = fourier_shell_correlation(half_a, half_b, VOXEL)
    assert np.allclose(fsc_record["fsc"], halves, atol=1e-5)
    assert np.allclose(fsc_record["frequencies_in_inverse_angstroms"], frequencies)
    gold = fsc_record["resolution_at_0.143_in_angstroms"]
    assert gold == pytest.approx(resolution_at(frequencies, halves, 0.143), rel=1e-5)
    assert fsc_record["resolution_at_0.5_in_angstroms"] > gold
    fitted = mrcfile.read(volume_run["output"] / "map.mrc").astype(np.float64)
    _, truth_fsc = fourier_shell_correlation(fitted, volume_run["truth"], VOXEL)
    against_truth = resolution_at(frequencies, truth_fsc, 0.5)
    print(f"half maps 0.143: {gold:.2f} Å; map with truth 0.5: {against_truth:.2f} Å")
    assert abs(gold / against_truth - 1) < 0.1
    assert np.allclose(fitted, 0.5 * (half_a + half_b), atol=1e-6 * np.abs(fitted).max())


def test_the_run_writes_maps_and_fsc_and_skips_the_atomic_outputs(volume_run):
    output = volume_run["output"]
    for name in ("map.mrc", "half_map_1.mrc", "half_map_2.mrc"):
        with mrcfile.open(output / name) as handle:
            assert handle.data.shape == (BOX, BOX, BOX)
            assert tuple(float(v) for v in handle.voxel_size.tolist()) == (VOXEL, VOXEL, VOXEL)
    for name in ("fsc.png", "fits.png", "elbo.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (output / "particles.star").is_file() and (output / "posterior.nc").is_file()
    for name in ("topology.pdb", "ensemble_mean.dcd", "ensemble_samples.dcd", "posterior_ensemble.dcd", "landscape.npz"):
        assert not (output / name).exists(), name
    record = json.loads((output / "run.json").read_text())
    outputs = record["outputs"]
    assert "no atoms" in outputs["note"] and outputs["ensemble_samples_written"] is False
    assert outputs["volume"]["map"] == "map.mrc" and outputs["volume"]["voxel_size_in_angstroms"] == VOXEL
    assert "volume" not in record["global_posterior_means"] and "noise_std" in record["global_posterior_means"]
    assert record["volume_prior"]["images"] == N_IMAGES
    import arviz

    posterior = arviz.from_netcdf(str(output / "posterior.nc"))
    assert "volume" not in posterior.posterior and "contrast" in posterior.posterior


def test_the_prior_amplitude_is_the_signal_power_of_independent_half_maps():
    """`τ(s)² = Σ_shell |F[V]|² / (count · D³ · mean(M²))` for two maps that are the truth plus
    independent noise, against a direct sum over the full `fftn` grid (shells 2-10, where the
    blobs' power is far above the noise's 1/√count)."""
    from atomicspi.models import prior_standard_deviation_from_half_maps

    truth = Blobs().density
    rng = np.random.default_rng(1)
    noise = 1e-3 * truth.std()
    estimate = prior_standard_deviation_from_half_maps(truth + noise * rng.standard_normal(truth.shape),
                                                       truth + noise * rng.standard_normal(truth.shape))
    index = np.fft.fftfreq(BOX) * BOX
    shells = np.rint(np.sqrt(index[:, None, None] ** 2 + index[None, :, None] ** 2 + index[None, None, :] ** 2)).astype(int)
    power = np.abs(np.fft.fftn(truth)) ** 2
    axis = np.arange(BOX) - BOX // 2
    radius = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    edge = np.clip((radius - (BOX / 2 - 4)) / 3, 0, 1)
    mask_power = np.mean((0.5 * (1 + np.cos(np.pi * edge))) ** 2)
    variance = np.array([power[shells == s].mean() for s in range(BOX // 2 + 1)]) / (BOX**3 * mask_power)
    smoothed = np.convolve(np.concatenate([variance[1:2], variance[1:2], variance[1:], variance[-1:]]), [0.25, 0.5, 0.25], "valid")
    assert np.allclose(estimate[2:11], np.sqrt(smoothed[2:11]), rtol=1e-3)


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"domains": 3}, "field domains", "no residues"),
        ({"poses": "search"}, "field reference", "required by poses: search"),
        ({"noise": "colored"}, "field reference", "required by noise: coloured"),
    ],
)
def test_bad_volume_options_exit_2_with_one_line(settings, field, words, tmp_path, capsys):
    from atomicspi import infer

    rng = np.random.default_rng(0)
    n = 4
    ctf = {"defocus_u_in_angstroms": np.full(n, 1e4), "defocus_v_in_angstroms": np.full(n, 1e4),
           "astigmatism_angle_in_degrees": np.zeros(n), "voltage_in_kilovolts": np.full(n, 300.0),
           "spherical_aberration_in_millimeters": np.full(n, 2.7), "amplitude_contrast_ratio": np.full(n, 0.1),
           "phase_shift_in_degrees": np.zeros(n)}
    path = _write_dataset(tmp_path, rng.standard_normal((n, 8, 8)).astype(np.float32), np.broadcast_to(np.eye(3), (n, 3, 3)),
                          np.zeros((n, 2)), ctf, **settings)
    with pytest.raises(InputError, match=field):
        load_config(path)
    assert infer.main([str(path), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], lines
    assert field in lines[0] and words in lines[0], lines
    assert not (tmp_path / "output").exists()
    # the reference stays required by the atomic models
    path.write_text(path.read_text().replace("model: volume", "model: homogeneous"))
    with pytest.raises(InputError, match="field reference: required"):
        load_config(path)
