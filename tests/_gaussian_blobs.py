"""A map of anisotropic 3D Gaussians with its analytic projections and 3D transform: the independent
reference of the volume tests (tests/test_volume_projection.py, tests/test_volume_family.py)."""

import jax
import jax.numpy as jnp
import numpy as np


def gaussian(points, mean, covariance):
    """Normalised Gaussian density at `points` (`(..., d)`)."""
    offset = points - mean
    inverse = np.linalg.inv(covariance)
    exponent = -0.5 * np.einsum("...i,ij,...j->...", offset, inverse, offset)
    return np.exp(exponent) / np.sqrt((2 * np.pi) ** len(mean) * np.linalg.det(covariance))


def coordinates(box_size, voxel_size, dimensions):
    """Voxel or pixel centres `(..., (x, y[, z]))` in Å, index `[(z,) y, x]`, the origin at `D // 2`."""
    axis = (np.arange(box_size) - box_size // 2) * voxel_size
    grids = np.meshgrid(*([axis] * dimensions), indexing="ij")  # [(z,) y, x]
    return np.stack(grids[::-1], axis=-1)  # (x, y[, z])


class GaussianBlobs:
    """`n_blobs` anisotropic 3D Gaussians: centres at `radial_range` × the box's width from its
    centre, widths (σ per principal axis) of `width_range` voxels, weights in [0.5, 1.5]."""

    def __init__(self, box_size, voxel_size, *, seed=0, n_blobs=4, radial_range=(0.1, 0.25), width_range=(1.5, 3.0)):
        rng = np.random.default_rng(seed)
        self.box_size, self.voxel_size = box_size, voxel_size
        self.blobs = []
        for _ in range(n_blobs):
            direction = rng.normal(size=3)
            mean = direction / np.linalg.norm(direction) * rng.uniform(*radial_range) * box_size * voxel_size
            axes, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            widths = rng.uniform(*width_range, size=3) * voxel_size
            self.blobs.append((rng.uniform(0.5, 1.5), mean, axes @ np.diag(widths**2) @ axes.T))
        points = coordinates(box_size, voxel_size, 3)
        self.density = sum(weight * gaussian(points, mean, cov) for weight, mean, cov in self.blobs)

    def projection(self, rotation):
        """`∫ V(Aᵀ (x, y, z)) dz` at the pixel centres: the rotated Gaussians' (x, y) marginals."""
        a = np.asarray(rotation, dtype=np.float64)
        points = coordinates(self.box_size, self.voxel_size, 2)
        return sum(
            weight * gaussian(points, (a @ mean)[:2], (a @ cov @ a.T)[:2, :2]) for weight, mean, cov in self.blobs
        )

    def transform(self, frequencies):
        """`∫ V(r) exp(-2πi k·r) d³r = Σ w exp(-2πi k·μ - 2π² kᵀΣk)`, `frequencies` `(n, 3)` in 1/Å."""
        total = 0.0
        for weight, mean, cov in self.blobs:
            quadratic = jnp.einsum("ni,ij,nj->n", frequencies, jnp.asarray(cov, frequencies.dtype), frequencies)
            phase = -2 * jnp.pi * (frequencies @ jnp.asarray(mean, frequencies.dtype))
            total = total + weight * jnp.exp(-2 * jnp.pi**2 * quadratic) * jax.lax.complex(jnp.cos(phase), jnp.sin(phase))
        return total
