"""A convolutional image encoder: particle image (and its CTF parameters) → a feature vector."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ImageEncoder"]


class ImageEncoder(eqx.Module):
    """Strided convolutions, then an MLP; the image is normalised per image and average-pooled to at
    most `max_input_size` pixels a side first, so cost does not grow with the box.

    **Arguments:**

    - `box_size`: D, the side of the (square) particle images.
    - `output_size`: length of the output vector.
    - `n_context`: length of the per-image context vector (e.g. defocus in µm), appended before the MLP.
    - `key`: PRNG key for the initial weights (keyword only).
    - `width`: channels of the first convolution (doubling each layer).
    - `depth`: number of stride-2 convolutions.
    - `hidden_size`: width of the MLP's hidden layers.
    - `max_input_size`: images are average-pooled to at most this many pixels a side.
    """

    convolutions: tuple[eqx.nn.Conv2d, ...]
    head: eqx.nn.MLP
    pool: int = eqx.field(static=True)
    def __init__(
        self,
        box_size: int,
        output_size: int,
        n_context: int,
        *,
        key: PRNGKeyArray,
        width: int = 16,
        depth: int = 3,
        hidden_size: int = 128,
        max_input_size: int = 64,
    ):
        keys = jax.random.split(key, depth + 1)
        self.pool = max(1, -(-box_size // max_input_size))
        size = box_size // self.pool
        channels = [1] + [width * 2**i for i in range(depth)]
        convolutions = []
        for i in range(depth):
            convolutions.append(eqx.nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1, key=keys[i]))
            size = (size + 1) // 2
        self.convolutions = tuple(convolutions)
        self.head = eqx.nn.MLP(
            channels[-1] * size * size + n_context, output_size, hidden_size, depth=2, activation=jax.nn.gelu, key=keys[-1]
        )

    def __call__(self, image: Float[Array, "y x"], context: Float[Array, " n_context"]) -> Float[Array, " output"]:
        x = (image - jnp.mean(image)) / (jnp.std(image) + 1e-6)
        if self.pool > 1:
            d = (x.shape[0] // self.pool) * self.pool
            x = x[:d, :d].reshape(d // self.pool, self.pool, d // self.pool, self.pool).mean(axis=(1, 3))
        x = x[None]
        for convolution in self.convolutions:
            x = jax.nn.gelu(convolution(x))
        return self.head(jnp.concatenate([x.ravel(), context]))
