"""A tiny linear-Gaussian latent model with an amortized guide, trained with `atomicspi.inference.fit`.

Model: for particle i, z_i ~ N(0, I_2) and x_i ~ N(W z_i, sigma^2 I_6) with W and sigma known, so the
exact posterior is Gaussian with precision I + W^T W / sigma^2 and mean (that precision)^-1 W^T x_i /
sigma^2 (`exact_posterior_mean`). Guide: q(z_i | x_i) = N(encoder(x_i), diag(scale^2)) with a linear
equinox encoder; a mean-field Gaussian fit to a Gaussian posterior has the exact posterior mean, and
the linear encoder can represent it, so training must converge to `exact_posterior_mean`.

Used in-process by tests/test_inference_engine.py and run as a script by its kill/resume tests:

    python tests/_toy_training.py OUTPUT_DIRECTORY --steps 300 --seed 0 [--resume]

writes OUTPUT_DIRECTORY/checkpoint.npz (every --checkpoint-every steps) and, when finished,
OUTPUT_DIRECTORY/parameters.npz; exits 130/143 after checkpointing on SIGINT/SIGTERM.
"""

import argparse
import functools
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.module import eqx_module

from atomicspi.inference import TrainingInterrupted, fit, make_epoch_minibatches, make_svi

N_PARTICLES = 64
LATENT_DIMENSION = 2
OBSERVATION_DIMENSION = 6
NOISE_STANDARD_DEVIATION = 0.5


def make_problem(data_seed: int = 1):
    """The loading matrix W (6, 2) and a stack of observations x (64, 6) drawn from the model."""
    generator = np.random.default_rng(data_seed)
    weights = generator.normal(size=(OBSERVATION_DIMENSION, LATENT_DIMENSION)).astype(np.float32)
    latents = generator.normal(size=(N_PARTICLES, LATENT_DIMENSION))
    noise = NOISE_STANDARD_DEVIATION * generator.normal(size=(N_PARTICLES, OBSERVATION_DIMENSION))
    images = (latents @ weights.T + noise).astype(np.float32)
    return weights, images


def exact_posterior_mean(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
    """E[z_i | x_i] for every particle, from the Gaussian conjugate formulas (float64)."""
    weights = weights.astype(np.float64)
    precision = np.eye(LATENT_DIMENSION) + weights.T @ weights / NOISE_STANDARD_DEVIATION**2
    return np.linalg.solve(precision, weights.T @ images.T.astype(np.float64) / NOISE_STANDARD_DEVIATION**2).T


def model(*, indices, images, weights, n_particles):
    batch_size = images.shape[0]
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        latent = numpyro.sample("latent", dist.Normal(0.0, 1.0).expand([LATENT_DIMENSION]).to_event(1))
        numpyro.sample(
            "images",
            dist.Normal(latent @ weights.T, NOISE_STANDARD_DEVIATION).to_event(1),
            obs=images,
        )


def guide(*, indices, images, weights, n_particles):
    encoder = eqx_module(
        "encoder",
        eqx.nn.Linear(OBSERVATION_DIMENSION, LATENT_DIMENSION, key=jax.random.PRNGKey(0)),
    )
    scale = numpyro.param("scale", jnp.full(LATENT_DIMENSION, 0.5), constraint=dist.constraints.positive)
    batch_size = images.shape[0]
    with numpyro.plate("particle", n_particles, subsample_size=batch_size):
        numpyro.sample("latent", dist.Normal(jax.vmap(encoder)(images), scale).to_event(1))


def encoder_means(parameters: dict, images: np.ndarray) -> np.ndarray:
    """The guide's posterior means q(z_i | x_i) for the given observations."""
    linear = parameters["encoder$params"]
    return np.asarray(images) @ np.asarray(linear.weight).T + np.asarray(linear.bias)


@functools.cache
def make_toy_svi(learning_rate: float):
    """The toy model's SVI (cached, so that runs in one process share its compiled training step)."""
    weights, _ = make_problem()
    return make_svi(
        model,
        guide,
        optax.adam(optax.exponential_decay(learning_rate, 100, 0.7)),
        num_particles=2,
        weights=jnp.asarray(weights),
        n_particles=N_PARTICLES,
    )


def train(
    output_directory,
    num_steps: int,
    *,
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 20,
    steps_per_call: int = 1,
    batch_size: int = 16,
    learning_rate: float = 0.02,
    seconds_per_step: float = 0.0,
    before_batch=None,
    progress: bool = False,
    mesh=None,
):
    """Train the toy model; returns the `FitResult`. `before_batch(step)`, if given, is called before
    each minibatch is read."""
    _, stack = make_problem()
    read_particles = lambda indices: {"images": stack[indices]}  # noqa: E731
    minibatches = make_epoch_minibatches(read_particles, N_PARTICLES, batch_size, seed)

    def batches(step):
        if seconds_per_step:
            time.sleep(seconds_per_step)
        if before_batch is not None:
            before_batch(step)
        return minibatches(step)

    return fit(
        make_toy_svi(learning_rate),
        batches,
        num_steps,
        seed=seed,
        checkpoint_path=None if output_directory is None else pathlib.Path(output_directory) / "checkpoint.npz",
        checkpoint_every=checkpoint_every,
        resume=resume,
        steps_per_call=steps_per_call,
        mesh=mesh,
        configuration={"model": "toy linear Gaussian", "batch_size": batch_size, "learning_rate": learning_rate},
        progress=progress,
    )


def flat_parameters(parameters: dict) -> dict[str, np.ndarray]:
    """The parameters as a flat dict of numpy arrays (equinox modules flattened leaf by leaf)."""
    flat = {}
    for name, value in parameters.items():
        for index, leaf in enumerate(jax.tree_util.tree_leaves(value)):
            flat[f"{name}/{index}"] = np.asarray(leaf)
    return flat


def touch_at_step_two(path: pathlib.Path, step: int) -> None:
    """Create `path` when the minibatch of step 2 is read (training has started)."""
    if step == 2:
        path.touch()


def main(arguments=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_directory", type=pathlib.Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--seconds-per-step", type=float, default=0.0)
    parser.add_argument("--started-file", type=pathlib.Path)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args(arguments)
    before_batch = None if options.started_file is None else functools.partial(touch_at_step_two, options.started_file)
    try:
        result = train(
            options.output_directory,
            options.steps,
            seed=options.seed,
            resume=options.resume,
            checkpoint_every=options.checkpoint_every,
            seconds_per_step=options.seconds_per_step,
            before_batch=before_batch,
            progress=True,
        )
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        return interrupted.exit_status
    np.savez(options.output_directory / "parameters.npz", **flat_parameters(result.parameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
