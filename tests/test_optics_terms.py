"""Every optics term of the particle files reaches the image model (GitHub issue 14, part 1).

The pipeline's own path is followed: star/cs file → `load_particles` → `ParticleDataset.batch` →
`atomicspi._batches.flat_batch` → `ctf_parameters` / `with_ctf_parameters` → the models'
`render_images`; references are RELION's formulas written out in numpy (tests/_relion_optics.py).
"""

import pathlib

import _relion_optics as relion
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.constants as constants

import atomicspi.io as io
from atomicspi._batches import ctf_parameters, flat_batch, with_ctf_parameters
from atomicspi.microscope import make_image_model
from atomicspi.models import ModelOptions, build_model_context, nma, render_images
from atomicspi.structure import load_structure

BOX, PIXEL = 32, 2.0  # Nyquist 0.25/Å: the aberrations below reach ~1 rad there

PARTICLE_COLUMNS = [
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
    "rlnCtfScalefactor", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
    "rlnOriginYAngst",
]
OPTICS_COLUMNS = [
    "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality",
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
]
# RELION 5 optics: beam tilt and default-order aberrations (6 odd, 9 even coefficients), sized so that
# each reaches ~0.5-2 rad at Nyquist (k = 0.25/Å: k ~ 0.25, k² ~ 0.06, k³ ~ 0.016, k⁴ ~ 0.004)
ODD = [[2.0, -1.5, 60.0, -40.0, 25.0, 70.0], [-1.0, 0.5, -30.0, 0.0, 45.0, 0.0]]
EVEN = [[0.2, -6.0, 5.0, 8.0, 250.0, -200.0, 120.0, 180.0, -300.0], [0.0, 4.0, -3.0, 0.0]]
TILT = [(0.6, -0.4), (0.0, 0.0)]
GROUP_OPTICS = [(300.0, 2.7, 0.07), (200.0, 2.0, 0.1)]  # voltage, Cs, amplitude contrast per group
PARTICLES = [  # defocus U, V, angle, phase shift, B-factor, scale, group, rot, tilt, psi, origin x, y
    (15000.0, 14200.0, 30.0, 0.0, 0.0, 1.0, 1, 10.0, 40.0, 70.0, 0.0, 0.0),
    (12000.0, 11500.0, 100.0, 35.0, 40.0, 0.8, 2, 120.0, 80.0, -30.0, 1.5, -2.0),
    (18000.0, 17000.0, -20.0, 90.0, -25.0, 1.2, 1, -60.0, 120.0, 15.0, -3.0, 0.5),
    (9000.0, 8800.0, 60.0, 10.0, 80.0, 0.6, 2, 200.0, 20.0, 95.0, 2.0, 2.5),
]


def _zernike_text(values) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def write_star(path: pathlib.Path, optics: dict, particles: dict) -> pathlib.Path:
    """A RELION 3.1+ star file: `optics` and `particles` map column names to per-row value lists."""
    def block(name, table):
        columns = list(table)
        rows = zip(*(table[c] for c in columns))
        header = "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(columns))
        return f"data_{name}\n\nloop_\n{header}" + "\n".join(" ".join(str(v) for v in row) for row in rows) + "\n\n"

    path.write_text("# version 50001\n\n" + block("optics", optics) + block("particles", particles))
    return path


def optics_table(pixel_sizes=(PIXEL, PIXEL)) -> dict:
    """The two optics groups' plain columns (no aberrations)."""
    return {
        "rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["og1", "og2"], "rlnImagePixelSize": list(pixel_sizes),
        "rlnImageSize": [BOX, BOX], "rlnImageDimensionality": [2, 2],
        "rlnVoltage": [g[0] for g in GROUP_OPTICS], "rlnSphericalAberration": [g[1] for g in GROUP_OPTICS],
        "rlnAmplitudeContrast": [g[2] for g in GROUP_OPTICS],
    }


def particle_table() -> dict:
    particles = {"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(len(PARTICLES))]}
    particles.update({column: [p[j] for p in PARTICLES] for j, column in enumerate(PARTICLE_COLUMNS[1:])})
    return particles


def relion5_star(folder: pathlib.Path, with_aberrations: bool = True) -> pathlib.Path:
    """The four particles above in two optics groups, with RELION 5's aberration columns or
    without; their images (noise unless already written) in `s.mrcs`."""
    if not (folder / "s.mrcs").exists():
        io.write_stack(folder / "s.mrcs", np.random.default_rng(0).normal(size=(len(PARTICLES), BOX, BOX)).astype(np.float32), PIXEL)
    optics = optics_table()
    if with_aberrations:
        optics["rlnBeamTiltX"] = [t[0] for t in TILT]
        optics["rlnBeamTiltY"] = [t[1] for t in TILT]
        optics["rlnOddZernike"] = [_zernike_text(c) for c in ODD]
        optics["rlnEvenZernike"] = [_zernike_text(c) for c in EVEN]
    return write_star(folder / ("aberrated.star" if with_aberrations else "plain.star"), optics, particle_table())


@pytest.fixture(scope="module")
def structure(example_structure_path):
    model = load_structure(example_structure_path).calpha()
    return model.with_positions(model.positions_in_angstroms - model.positions_in_angstroms.mean(axis=0))


@pytest.fixture(scope="module")
def image_model(structure):
    return make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)


def codata_wavelength(kilovolts: float) -> float:
    """λ = h c / √(E (E + 2 m c²)) from scipy's CODATA constants (RELION rounds them: 6e-6 relative)."""
    energy = kilovolts * 1e3 * constants.e
    rest = constants.m_e * constants.c**2
    return constants.h * constants.c / np.sqrt(energy * (energy + 2 * rest)) * 1e10


def rendered(image_model, structure, flat):
    """The models' `render_images` on a flat batch, through `ctf_parameters`."""
    n = len(flat["indices"])
    positions = jnp.broadcast_to(jnp.asarray(structure.positions_in_angstroms, dtype=jnp.float32), (n, structure.n_atoms, 3))
    return np.asarray(render_images(image_model, positions, jnp.asarray(flat["rotations"]), jnp.asarray(flat["shifts_in_angstroms"]), ctf_parameters(flat)))


def relion_images(image_model, structure, dataset):
    """Each particle's projection (atomicspi's, padding 1: not under test) times RELION's transfer:
    `CTF::getCTF` (with the even Zernike `gammaOffset`, B-factor and scale), `exp(i φ_odd)` with the
    beam tilt folded in by `insertTilt`, and the shift `exp(-2πi k·s)`, s = -rlnOrigin (Å)."""
    x, y = relion.rfft_grid(BOX, PIXEL)
    out = []
    for i, p in enumerate(PARTICLES):
        group = p[6] - 1
        kv, cs, q0 = GROUP_OPTICS[group]
        lam = codata_wavelength(kv)
        transfer = relion.ctf(x, y, p[0], p[1], p[2], kv, cs, q0, p[3], p[4], p[5], EVEN[group], wavelength=lam)
        phase = relion.odd_phase(x, y, ODD[group], *TILT[group], cs, wavelength=lam)
        shift = -np.array(p[10:12])
        phase = phase - 2 * np.pi * (x * shift[0] + y * shift[1])
        projection = np.asarray(image_model.projection(jnp.asarray(structure.positions_in_angstroms, dtype=jnp.float32), jnp.asarray(dataset.rotations[i], dtype=jnp.float32)), dtype=np.float64)
        out.append(np.fft.irfft2(np.fft.rfft2(projection) * transfer * np.exp(1j * phase), s=(BOX, BOX)))
    return np.array(out)


def test_relion5_optics_change_rendered_images_as_relion_computes_them(tmp_path, structure, image_model):
    """Beam tilt, odd and even Zernike terms (per optics group, of different lengths), per-group
    voltage, Cs and amplitude contrast, per-particle phase shift, B-factor and scale: the images the
    models render from the pipeline's flat batch are RELION's.

    Tolerance 1e-4 of the largest pixel: the rendering is float32 (arguments of sin up to ~40 rad
    carry ~40 · 6e-8 · a few operations ≈ 1e-5 rad; a float32 FFT of 32² adds ~1e-6 relative);
    measured 6e-6. Without the aberrations the images differ by more than their norm (checked
    below: at least 20 %)."""
    dataset = io.load_particles(relion5_star(tmp_path))
    flat = flat_batch(dataset.batch(np.arange(len(PARTICLES))))
    assert flat["odd_zernike_coefficients"].shape == (4, 6) and flat["even_zernike_coefficients"].shape == (4, 9)
    ours = rendered(image_model, structure, flat)
    reference = relion_images(image_model, structure, dataset)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(ours, reference, atol=1e-4 * scale)

    plain = rendered(image_model, structure, flat_batch(io.load_particles(relion5_star(tmp_path, with_aberrations=False)).batch(np.arange(4))))
    for i in range(4):
        assert np.linalg.norm(plain[i] - ours[i]) > 0.2 * np.linalg.norm(ours[i]), i


def test_the_flat_batch_carries_every_ctf_term_and_with_ctf_parameters_consumes_them(tmp_path):
    """Whatever `flat_batch` adds for the CTF, `with_ctf_parameters` gathers into `CTFParameters`
    (nothing reaches a model as a stray keyword, nothing is dropped)."""
    dataset = io.load_particles(relion5_star(tmp_path))
    flat = flat_batch(dataset.batch([3, 0]))
    ctf_keys = set(flat) - {"indices", "images", "rotations", "shifts_in_angstroms"}
    assert ctf_keys == set(io.CTF_FIELDS) | set(io.OPTIONAL_CTF_FIELDS)
    seen = {}

    def model(*, ctf, **rest):
        seen.update(ctf=ctf, rest=set(rest))

    with_ctf_parameters(model)(**flat)
    assert seen["rest"] == {"indices", "images", "rotations", "shifts_in_angstroms"}
    ctf = seen["ctf"]
    np.testing.assert_allclose(ctf.beam_tilt_x_in_milliradians, [0.0, 0.6], rtol=1e-6)
    np.testing.assert_allclose(ctf.b_factor_in_angstroms_squared, [80.0, 0.0])
    np.testing.assert_allclose(ctf.scale, [0.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ctf.even_zernike_coefficients, [EVEN[1] + [0.0] * 5, EVEN[0]], rtol=1e-6)
    np.testing.assert_allclose(ctf.voltage_in_kilovolts, [200.0, 300.0])
    # a dataset without the optional terms: the flat batch has the seven fields alone
    plain = flat_batch(io.load_particles(relion5_star(tmp_path, with_aberrations=False)).batch([0]))
    assert not set(plain) & set(io.OPTICS_GROUP_CTF_FIELDS)


def _likelihood(tmp_path, structure, image_model, star, images):
    """log p(images, globals, locals) of the `nma` model at fixed values, through `with_ctf_parameters`."""
    from numpyro import handlers
    from numpyro.infer.util import log_density

    io.write_stack(tmp_path / "s.mrcs", images.astype(np.float32), PIXEL)
    dataset = io.load_particles(star)
    flat = {k: jnp.asarray(v) for k, v in flat_batch(dataset.batch(np.arange(len(dataset)))).items()}
    options = ModelOptions(noise_std_guess=1.0, contrast_guess=1.0, latent_dim=2)
    context = build_model_context(structure, image_model, n_modes=3, options=options)
    values = {"spring_constant": 1.0, "noise_std": 1.0, "amplitudes": jnp.zeros((len(dataset), 3)), "contrast": jnp.ones(len(dataset))}
    with handlers.seed(rng_seed=0):
        value, _ = log_density(with_ctf_parameters(nma), (), dict(context=context, n_particles=len(dataset), **flat), values)
    return float(value)


def test_five_milliradians_of_beam_tilt_change_the_model_density(tmp_path, structure, image_model):
    """A run with 5 mrad beam tilt differs from one without (before, both fed the model the same
    CTF: the final ELBO agreed to the last digit). Checked on the `nma` model's log density at
    fixed values, which is what the ELBO averages: images made with the tilt are better explained
    with it, and an explicit zero tilt is the same as none. Size: 5 mrad shifts the phase by up to
    2π·10⁻³·C_s λ² k³ τ ≈ 5 rad at Nyquist here, so with unit noise the log density moves by
    ~10³; the threshold 100 is a tenth of that."""
    star_without = relion5_star(tmp_path, with_aberrations=False)
    flat = flat_batch(io.load_particles(star_without).batch(np.arange(4)))
    flat.update(beam_tilt_x_in_milliradians=np.full(4, 5.0, np.float32), beam_tilt_y_in_milliradians=np.zeros(4, np.float32))
    images = rendered(image_model, structure, flat) + np.random.default_rng(1).normal(size=(4, BOX, BOX))
    tilted, zero = (
        write_star(tmp_path / name, {**optics_table(), "rlnBeamTiltX": [t, t], "rlnBeamTiltY": [0.0, 0.0]}, particle_table())
        for name, t in (("tilted.star", 5.0), ("zero.star", 0.0))
    )
    with_tilt = _likelihood(tmp_path, structure, image_model, tilted, images)
    without = _likelihood(tmp_path, structure, image_model, star_without, images)
    explicit_zero = _likelihood(tmp_path, structure, image_model, zero, images)
    assert explicit_zero == without
    assert with_tilt - without > 100.0, (with_tilt, without)


def gaussian_blobs(box: int, pixel_size: float) -> np.ndarray:
    """Three Gaussian blobs (σ 3-4 Å, within 12 Å of the centre) sampled at the pixel centres
    `(i - box // 2) · pixel_size`, `[y, x]`: band-limited far below a 1.25 Å grid's Nyquist
    frequency (|FT| < exp(-2π² 3² 0.4²) ≈ 5e-13 beyond it) and ~1e-11 at the box edge."""
    coordinates = (np.arange(box) - box // 2) * pixel_size
    y, x = np.meshgrid(coordinates, coordinates, indexing="ij")
    blobs = [(1.0, -8.0, 5.0, 3.0), (0.7, 6.0, -4.0, 4.0), (-0.4, 2.0, 11.0, 3.5)]
    return sum(a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)) for a, cx, cy, s in blobs)


def test_optics_groups_with_different_pixel_sizes_read_as_one_group(tmp_path):
    """Groups at 1.24 and 1.25 Å (as a RELION 3.1 file may mix them) give the images and flat
    batches of one group at 1.24 Å: the coarser group's images are resampled to the finest grid.
    Tolerance 1e-5 of the largest pixel: the source images are float32 (6e-8 relative) and the
    interpolation kernel's ℓ1 norm is ~4 per axis, so ~1e-6 (measured 5e-8); the blobs' spectrum
    beyond the coarse grid's band is below 1e-12. Not resampling misplaces the blobs by 0.8 % of
    their distance from the centre, an error of 2 % of the largest pixel (measured)."""
    box = 64
    fine, coarse = 1.24, 1.25
    sizes = [fine, coarse, fine, coarse]
    io.write_stack(tmp_path / "s.mrcs", np.array([gaussian_blobs(box, p) for p in sizes], dtype=np.float32), fine)
    io.write_stack(tmp_path / "one.mrcs", np.array([gaussian_blobs(box, fine)] * 4, dtype=np.float32), fine)
    optics = {**optics_table((fine, coarse)), "rlnImageSize": [box, box]}
    particles = particle_table()
    mixed = io.load_particles(write_star(tmp_path / "mixed.star", optics, particles))
    one_group = {**optics_table((fine, fine)), "rlnImageSize": [box, box], "rlnVoltage": [300.0] * 2}
    single = io.load_particles(write_star(tmp_path / "one.star", one_group, {**particles, "rlnImageName": [f"{i + 1}@one.mrcs" for i in range(4)]}))

    assert mixed.pixel_size_in_angstroms == fine
    assert [g.pixel_size_in_angstroms for g in mixed.optics_groups] == [fine, coarse]
    images = mixed.images()
    expected = gaussian_blobs(box, fine)
    np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(images[[0, 2]], mixed.image_stacks.read([0, 2]))  # the finest group untouched
    flat_mixed, flat_single = flat_batch(mixed.batch([1, 2])), flat_batch(single.batch([1, 2]))
    np.testing.assert_allclose(flat_mixed["images"], flat_single["images"], atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(flat_mixed["shifts_in_angstroms"], flat_single["shifts_in_angstroms"])

    # written back: the original stacks keep their own pixel sizes; copied images are on the common grid
    io.write_relion_star(tmp_path / "again.star", mixed)
    again = io.load_particles(tmp_path / "again.star")
    assert [g.pixel_size_in_angstroms for g in again.optics_groups] == pytest.approx([fine, coarse])
    np.testing.assert_array_equal(again.images(), images)
    io.write_relion_star(tmp_path / "copied.star", mixed, tmp_path / "copied.mrcs")
    copied = io.load_particles(tmp_path / "copied.star")
    assert [g.pixel_size_in_angstroms for g in copied.optics_groups] == pytest.approx([fine, fine])
    np.testing.assert_array_equal(copied.images(), images)
    # a cryoSPARC table of the same particles: one optics group per pixel size, read the same way
    io.write_cryosparc(tmp_path / "mixed.cs", mixed)
    from_cs = io.load_particles(tmp_path / "mixed.cs")
    assert from_cs.pixel_size_in_angstroms == pytest.approx(fine)
    np.testing.assert_allclose(from_cs.images(), images, atol=1e-6)
    np.testing.assert_allclose(from_cs.shifts_in_angstroms, mixed.shifts_in_angstroms, atol=1e-5)


def test_resampling_equals_fourier_padding_for_commensurate_pixel_sizes():
    """Independent check of `resample_to_pixel_size`: from 2 Å to 1 Å (box kept) it is the
    centre of the image Fourier-padded to twice the box (numpy's FFT, Nyquist split in half)."""
    from atomicspi.io._dataset import resample_to_pixel_size

    box = 16
    image = np.random.default_rng(3).normal(size=(box, box))
    spectrum = np.fft.fftshift(np.fft.fft2(image))
    padded = np.zeros((2 * box, 2 * box), dtype=complex)
    padded[box // 2 : box // 2 + box, box // 2 : box // 2 + box] = spectrum
    # the Nyquist row and column of the small grid are split between +/- Nyquist on the big one
    padded[box // 2, :] *= 0.5
    padded[box // 2 + box, :] = padded[box // 2, :]
    padded[:, box // 2] *= 0.5
    padded[:, box // 2 + box] = padded[:, box // 2]
    big = np.real(np.fft.ifft2(np.fft.ifftshift(padded))) * 4
    expected = big[box - box // 2 : box + box // 2, box - box // 2 : box + box // 2]
    ours = resample_to_pixel_size(image[None].astype(np.float32), 2.0, 1.0)[0]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_simulated_optics_are_rendered_and_written(tmp_path, structure):
    """`atomicspi.simulate` renders beam tilt, Zernike terms and a B-factor, writes them to the star
    file, and what is read back renders the same clean images (SNR 1e12: noise 1e-6 of the signal)."""
    from atomicspi._simulation import simulate_particles, write_simulated_dataset

    optics = {
        "beam_tilt_x_in_milliradians": 0.8, "beam_tilt_y_in_milliradians": -0.5,
        "odd_zernike_coefficients": ODD[0], "even_zernike_coefficients": EVEN[0], "b_factor_in_angstroms_squared": 30.0,
    }
    positions = np.broadcast_to(structure.positions_in_angstroms, (3, structure.n_atoms, 3))
    particles = simulate_particles(structure, positions, BOX, PIXEL, 1e12, seed=2, optics=optics)
    plain = simulate_particles(structure, positions, BOX, PIXEL, 1e12, seed=2)
    assert np.linalg.norm(particles.images - plain.images) > 0.2 * np.linalg.norm(plain.images)
    write_simulated_dataset(tmp_path, structure, particles)
    dataset = io.load_particles(tmp_path / "particles.star")
    assert dataset.optics_groups[0].beam_tilt_in_milliradians == pytest.approx((0.8, -0.5))
    assert dataset.optics_groups[0].odd_zernike == pytest.approx(tuple(ODD[0]))
    assert dataset.optics_groups[0].even_zernike == pytest.approx(tuple(EVEN[0]))
    np.testing.assert_allclose(dataset.ctf["b_factor_in_angstroms_squared"], 30.0)
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    again = rendered(image_model, structure, flat_batch(dataset.batch(np.arange(3))))
    # the images are clean / noise_std + unit noise (noise 1e-6 of the signal at this SNR): equal up
    # to that scale; the star file's 6 decimals and float32 leave ~1e-6 relative, the bound is 1e-5
    scale = np.sum(again * particles.images) / np.sum(again * again)
    assert np.linalg.norm(scale * again - particles.images) < 1e-5 * np.linalg.norm(particles.images)


def test_simulate_command_line_writes_the_optics(tmp_path, example_structure_path):
    from atomicspi import simulate

    pdb = tmp_path / "ref.pdb"
    load_structure(example_structure_path).calpha().to_mdtraj().save_pdb(str(pdb))
    status = simulate.main([
        str(tmp_path / "out"), "--structures", str(pdb), "--prior", "nma", "--n-particles", "2", "--box-size", "16",
        "--pixel-size", "4", "--beam-tilt", "0.5", "-0.25", "--odd-zernike", "1", "2", "--even-zernike", "0.1",
        "--b-factor", "20",
    ])
    assert status == 0
    dataset = io.load_particles(tmp_path / "out" / "particles.star")
    group = dataset.optics_groups[0]
    assert group.beam_tilt_in_milliradians == (0.5, -0.25) and group.odd_zernike == (1.0, 2.0) and group.even_zernike == (0.1,)
    np.testing.assert_allclose(dataset.ctf["b_factor_in_angstroms_squared"], 20.0)


def test_cryosparc_beam_tilt_and_b_factor_reach_the_batch(tmp_path):
    """`ctf/tilt_A` = C_s sin τ (Å) becomes RELION's beam tilt τ = arcsin(tilt_A / C_s) in mrad (pyem's
    conversion), `ctf/bfactor` and `ctf/scale` the CTF's B-factor and scale; written back the same."""
    io.write_stack(tmp_path / "s.mrcs", np.zeros((3, 8, 8), dtype=np.float32), 1.5)
    fields = [("blob/path", "S8"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
              ("ctf/exp_group_id", "<u4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
              ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/tilt_A", "<f4", (2,)),
              ("ctf/bfactor", "<f4"), ("ctf/scale", "<f4"), ("ctf/trefoil_A", "<f4", (2,))]
    table = np.zeros(3, dtype=fields)
    table["blob/path"], table["blob/idx"], table["blob/shape"], table["blob/psize_A"] = b"s.mrcs", np.arange(3), 8, 1.5
    table["ctf/exp_group_id"] = [1, 2, 1]
    table["ctf/accel_kv"], table["ctf/cs_mm"], table["ctf/amp_contrast"] = 300, 2.7, 0.1
    table["ctf/df1_A"], table["ctf/df2_A"] = 1e4, 9e3
    tilt_a = 2.7e7 * np.sin(np.array([[0.5e-3, -0.2e-3], [0.0, 0.0], [0.5e-3, -0.2e-3]]))
    table["ctf/tilt_A"] = tilt_a
    table["ctf/bfactor"] = [10.0, 20.0, 30.0]
    table["ctf/scale"] = [1.0, 0.9, 0.8]
    with open(tmp_path / "p.cs", "wb") as file:
        np.save(file, table)
    dataset = io.load_particles(tmp_path / "p.cs")
    ctf = flat_batch(dataset.batch([0, 1, 2]))
    np.testing.assert_allclose(ctf["beam_tilt_x_in_milliradians"], [0.5, 0.0, 0.5], rtol=1e-5)  # float32 tilt_A
    np.testing.assert_allclose(ctf["beam_tilt_y_in_milliradians"], [-0.2, 0.0, -0.2], rtol=1e-5)
    np.testing.assert_allclose(ctf["b_factor_in_angstroms_squared"], [10.0, 20.0, 30.0])
    np.testing.assert_allclose(ctf["scale"], [1.0, 0.9, 0.8], rtol=1e-7)
    io.write_cryosparc(tmp_path / "again.cs", dataset)
    written = np.load(tmp_path / "again.cs")
    np.testing.assert_allclose(written["ctf/tilt_A"], tilt_a, rtol=1e-6)
    np.testing.assert_allclose(written["ctf/bfactor"], table["ctf/bfactor"])


def test_b_factor_and_scale_come_from_the_particle_else_its_optics_group(tmp_path):
    """RELION's `CTF::readValue`: the particle's column wins, else the optics group's, else absent
    (B = 0, scale 1). Written back per particle."""
    io.write_stack(tmp_path / "s.mrcs", np.zeros((4, BOX, BOX), dtype=np.float32), PIXEL)
    particles = {k: v for k, v in particle_table().items() if k not in ("rlnCtfBfactor", "rlnPhaseShift")}
    optics = {**optics_table(), "rlnCtfBfactor": [15.0, 45.0], "rlnPhaseShift": [0.0, 90.0]}
    dataset = io.load_particles(write_star(tmp_path / "p.star", optics, particles))
    np.testing.assert_allclose(dataset.ctf["b_factor_in_angstroms_squared"], [15.0, 45.0, 15.0, 45.0])
    np.testing.assert_allclose(dataset.phase_shift_in_degrees, [0.0, 90.0, 0.0, 90.0])
    np.testing.assert_allclose(dataset.ctf["scale"], [p[5] for p in PARTICLES])  # the particles' own column
    io.write_relion_star(tmp_path / "again.star", dataset)
    again = io.load_particles(tmp_path / "again.star")
    np.testing.assert_allclose(again.ctf["b_factor_in_angstroms_squared"], dataset.ctf["b_factor_in_angstroms_squared"])
    np.testing.assert_allclose(again.ctf["scale"], dataset.ctf["scale"])
    assert "rlnCtfBfactor" not in again.extra_columns
    both = io.load_particles(write_star(tmp_path / "both.star", optics, particle_table()))
    np.testing.assert_allclose(both.ctf["b_factor_in_angstroms_squared"], [p[4] for p in PARTICLES])


def test_real_tilt_series_b_factors_and_scales_reach_ctf_parameters(shared_data):
    """sta_testing.star (a RELION 3.0 subtomogram file) gives every tilt its dose B-factor and cos(tilt)
    scale; both reach `CTFParameters` (its images are not included: no batch is read)."""
    import starfile

    path = shared_data / "formats" / "sta_testing.star"
    table = starfile.read(path)
    dataset = io.read_relion_star(path)
    parameters = ctf_parameters(dataset.ctf)
    np.testing.assert_allclose(parameters.b_factor_in_angstroms_squared, table["rlnCtfBfactor"], rtol=1e-6)
    np.testing.assert_allclose(parameters.scale, table["rlnCtfScalefactor"], rtol=1e-6)
    assert np.ptp(table["rlnCtfBfactor"]) > 100  # per tilt, not constant
