"""The learned envelope B-factor (`learn_envelope`, `atomicspi.models.sample_envelope`): the
envelope it adds to every image is RELION's B-factor envelope exp(−B |k|²/4)."""

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from atomicspi.conventions import sample_uniform_rotations
from atomicspi.microscope import CTFParameters, make_image_model
from atomicspi.models import ModelOptions, build_model_context, render_images, sample_envelope
from atomicspi.structure import load_structure


def test_envelope_equals_adding_the_b_factor_to_every_atom(example_structure_path):
    structure = load_structure(example_structure_path).calpha()
    positions = jnp.asarray(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0), dtype=jnp.float32)
    n, box_size, pixel_size, extra = 4, 48, 2.0, 35.0
    rotations = jnp.asarray(sample_uniform_rotations(jax.random.key(0), n), dtype=jnp.float32)
    shifts = jnp.zeros((n, 2))
    ctf = CTFParameters(defocus_u_in_angstroms=jnp.full(n, 15000.0), defocus_v_in_angstroms=jnp.full(n, 14000.0),
                        astigmatism_angle_in_degrees=jnp.full(n, 30.0))
    sharp = make_image_model(structure.atomic_numbers, np.zeros(structure.n_atoms), box_size, pixel_size, method="fourier")
    options = ModelOptions(envelope_prior_in_angstroms_squared=50.0)
    context = build_model_context(structure, sharp, 4, 15.0, options)
    with handlers.substitute(data={"envelope_b_factor": jnp.asarray(extra)}):
        enveloped = sample_envelope(context, ctf)
    stack = jnp.broadcast_to(positions, (n, *positions.shape))
    # The rendered images' transforms are the sharp ones times exp(−B |k|²/4), RELION's B-factor envelope.
    before = np.fft.rfft2(np.asarray(render_images(sharp, stack, rotations, shifts, ctf)))
    after = np.fft.rfft2(np.asarray(render_images(sharp, stack, rotations, shifts, enveloped)))
    k = np.hypot(np.fft.fftfreq(box_size, pixel_size)[:, None], np.fft.rfftfreq(box_size, pixel_size)[None])
    np.testing.assert_allclose(after, before * np.exp(-extra * k**2 / 4), atol=1e-4 * np.abs(before).max())
    # Off, the CTF is returned as it was and nothing is sampled.
    plain = build_model_context(structure, sharp, 4, 15.0, ModelOptions())
    with handlers.trace() as trace:
        assert sample_envelope(plain, ctf) is ctf
    assert "envelope_b_factor" not in trace

