"""`particles.star` in the output folder (GitHub issue 14, part 4): the input's RELION tables, columns
and order kept, with each particle's posterior summaries as extra columns; it reads back with the
stacks still resolving."""

import json

import arviz as az
import numpy as np
import pytest
import starfile

from atomicspi._pipeline import run_inference
from atomicspi.io import load_config, read_relion_star
from atomicspi.products import load_run_collective_variables

N_PARTICLES, SAMPLES = 12, 5


@pytest.fixture(scope="module")
def run(tmp_path_factory, write_tiny_calpha_dataset):
    yaml_path = write_tiny_calpha_dataset(
        tmp_path_factory.mktemp("star_output"), N_PARTICLES,
        config_overrides={"num_steps": 4, "batch_size": 4, "samples_per_particle": SAMPLES, "n_modes": 3, "output_atoms": "all"},
    )
    config = load_config(yaml_path)
    return config, run_inference(config, progress=False)


def test_particles_star_keeps_the_input_tables_and_adds_the_summaries(run):
    config, output = run
    source = starfile.read(config.particles, always_dict=True)
    written = starfile.read(output / "particles.star", always_dict=True)
    assert list(written) == list(source)
    assert written["optics"].equals(source["optics"])
    table, original = written["particles"], source["particles"]
    assert list(table.columns[: len(original.columns)]) == list(original.columns)  # input columns first, in order
    for column in original.columns:
        if column != "rlnImageName":  # rewritten relative to the output folder
            np.testing.assert_array_equal(table[column].to_numpy(), original[column].to_numpy(), err_msg=column)

    posterior = az.from_netcdf(str(output / "posterior.nc")).posterior
    amplitudes = np.asarray(posterior["amplitudes"])[0]  # (draw, particle, mode)
    np.testing.assert_allclose(table["atomicspiAmplitudes2"], amplitudes[:, :, 1].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table["atomicspiAmplitudes2StandardDeviation"], amplitudes[:, :, 1].std(axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    # The landscape coordinate, recomputed by the products' own reader of the run (motion:0 by default).
    coordinate = load_run_collective_variables(output, "motion:0").draws.reshape(N_PARTICLES, SAMPLES)
    np.testing.assert_allclose(table["atomicspiCoordinate1"], coordinate.mean(axis=1), rtol=1e-5, atol=1e-5)
    states = json.loads((output / "states.json").read_text())["states"]
    assert set(table["atomicspiState"]) <= set(range(len(states))) | {-1}
    assert np.all((table["atomicspiStateProbability"] >= 0) & (table["atomicspiStateProbability"] <= 1))
    assert np.all(table.loc[table["atomicspiState"] >= 0, "atomicspiStateProbability"] > 0)


def test_particles_star_reads_back_with_the_same_images(run):
    config, output = run
    original = read_relion_star(config.particles)
    written = read_relion_star(output / "particles.star")
    indices = np.arange(N_PARTICLES)
    np.testing.assert_array_equal(written.images(indices), original.images(indices))
    np.testing.assert_allclose(written.rotations, original.rotations, atol=1e-6)


def test_cryosparc_input_gets_a_particles_star_with_the_summaries(tmp_path, write_tiny_calpha_dataset):
    """A cryoSPARC `.cs` input gets a RELION 3.1 `particles.star` written afresh: the same images
    (resolving from the output folder), the input's poses, and the posterior summaries."""
    import yaml

    from atomicspi.io import load_particles, write_cryosparc

    yaml_path = write_tiny_calpha_dataset(
        tmp_path, 8, config_overrides={"num_steps": 2, "batch_size": 4, "samples_per_particle": 3, "n_modes": 3, "model": "nma"},
    )
    dataset = load_particles(tmp_path / "particles.star")
    write_cryosparc(tmp_path / "particles.cs", dataset)
    settings = yaml.safe_load(yaml_path.read_text())
    settings.update(particles="particles.cs", output="output_cs")
    yaml_path.write_text(yaml.safe_dump(settings))
    output = run_inference(load_config(yaml_path), progress=False)
    back = load_particles(output / "particles.star")
    np.testing.assert_allclose(back.images(), dataset.images(), atol=1e-6)
    np.testing.assert_allclose(back.rotations, dataset.rotations, atol=1e-4)
    np.testing.assert_allclose(back.shifts_in_angstroms, dataset.shifts_in_angstroms, atol=1e-4)
    particles = starfile.read(output / "particles.star", always_dict=True)["particles"]
    assert {"atomicspiAmplitudes1", "atomicspiAmplitudes1StandardDeviation", "atomicspiContrast1"} <= set(particles.columns)
