"""Throughput of the SVI engine (`atomicspi.inference.fit`) against a plain loop over NumPyro's
jit-compiled `SVI.update`, on the same model, guide, optimizer and minibatches, in one process.

Model: linear-Gaussian latent model (latent dimension 8, 32x32 "images"), amortized by a small equinox
MLP encoder, 4096 particles, minibatches of 128. Reports images per second after compilation (a first
call is made outside the timing) and the ratio ours / plain; `steps_per_call` > 1 scans several steps
per compiled call.

    python bench/svi_engine.py [--steps 300]
"""

import argparse
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.module import eqx_module

from atomicspi.inference import fit, make_epoch_minibatches, make_svi

N_PARTICLES = 4096
BATCH_SIZE = 128
LATENT_DIMENSION = 8
PIXELS = 32 * 32
NOISE = 1.0


def model(*, indices, images, weights):
    with numpyro.plate("particle", N_PARTICLES, subsample_size=images.shape[0]):
        latent = numpyro.sample("latent", dist.Normal(0.0, 1.0).expand([LATENT_DIMENSION]).to_event(1))
        numpyro.sample("images", dist.Normal(latent @ weights.T, NOISE).to_event(1), obs=images)


def guide(*, indices, images, weights):
    encoder = eqx_module(
        "encoder",
        eqx.nn.MLP(PIXELS, 2 * LATENT_DIMENSION, width_size=128, depth=2, key=jax.random.PRNGKey(0)),
    )
    with numpyro.plate("particle", N_PARTICLES, subsample_size=images.shape[0]):
        output = jax.vmap(encoder)(images)
        loc, log_scale = output[:, :LATENT_DIMENSION], output[:, LATENT_DIMENSION:]
        numpyro.sample("latent", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    options = parser.parse_args()
    generator = np.random.default_rng(0)
    weights = generator.normal(size=(PIXELS, LATENT_DIMENSION)).astype(np.float32) / 4
    latents = generator.normal(size=(N_PARTICLES, LATENT_DIMENSION))
    stack = (latents @ weights.T + NOISE * generator.normal(size=(N_PARTICLES, PIXELS))).astype(np.float32)
    batches = make_epoch_minibatches(lambda indices: {"images": stack[indices]}, N_PARTICLES, BATCH_SIZE, 0)
    steps = options.steps
    print(f"machine: {platform.processor() or platform.machine()}, {jax.devices()}, shared with other jobs (noisy)")
    print(f"{N_PARTICLES} particles, {PIXELS} pixels, batch {BATCH_SIZE}, {steps} steps after warm-up")

    # Plain: NumPyro's SVI.update, jit-compiled, in a Python loop over the same minibatches.
    svi = make_svi(model, guide, optax.adam(1e-3), weights=jnp.asarray(weights))
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(0), **batches(0))
    state, loss = update(state, **batches(0))
    loss.block_until_ready()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        state, loss = update(state, **batches(step))
    loss.block_until_ready()
    plain = steps * BATCH_SIZE / (time.perf_counter() - start)
    print(f"plain jit(SVI.update) loop        : {plain:9.0f} images/s")

    for steps_per_call in (1, 10, 50):
        svi = make_svi(model, guide, optax.adam(1e-3), weights=jnp.asarray(weights))
        fit(svi, batches, steps_per_call, seed=0, steps_per_call=steps_per_call, progress=False)  # compile
        start = time.perf_counter()
        result = fit(svi, batches, steps, seed=0, steps_per_call=steps_per_call, progress=False)
        ours = steps * BATCH_SIZE / (time.perf_counter() - start)
        print(
            f"fit, steps_per_call={steps_per_call:3d}           : {ours:9.0f} images/s "
            f"(ratio ours/plain {ours / plain:.2f}; final ELBO {result.elbo_history[-20:].mean():.4g})"
        )


if __name__ == "__main__":
    main()
