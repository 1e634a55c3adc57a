"""Images per second of atomicspi's image model vs cryoJAX's, AdK (3,341 atoms), same inputs.

    python bench/microscope.py [--sizes 64 128 256] [--batch 16] [--pixel-size 1.0]

For each box size D: a batch of particles (own positions = AdK + small random displacements,
pose, shift, CTF) is simulated with `jax.jit(jax.vmap(...))`, forward and forward+gradient with
respect to the atom positions (gradient of Σ image · weights). Warm-up (compilation) excluded,
`block_until_ready`. cryoJAX uses its default `make_image_model` path (dense pixel-integrated
Gaussian sums, `GaussianMixtureVolume.from_tabulated_parameters` + `GaussianMixtureProjection`).
Both apply the CTF on the unpadded D × D grid. Prints images/s, ratios and the arithmetic cost
per image (dense: 5·N·D² multiply-adds and 10·N·(D+1) error functions; splat: Σ_groups 5·N_g·w_g²
and 10·N_g·(w_g+1)) with the time that each would imply per operation.
"""

import argparse
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from atomicspi.microscope import CTFParameters, euler_angles_to_matrix, make_image_model
from atomicspi.structure import load_structure


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time(function, *args, minimum_seconds=1.0, maximum_repeats=5):
    jax.block_until_ready(function(*args))  # compile + warm up
    repeats, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(function(*args))
        repeats += 1
        elapsed = time.perf_counter() - start
        if elapsed >= minimum_seconds or repeats >= maximum_repeats:
            return elapsed / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pixel-size", type=float, default=1.0)
    parser.add_argument("--skip-cryojax", action="store_true")
    options = parser.parse_args()

    model = load_structure(os.path.join(REPOSITORY, "atomicspi", "data", "adk_closed.pdb.gz"))
    positions = model.positions_in_angstroms - model.positions_in_angstroms.mean(axis=0)
    n_atoms = len(positions)
    rng = np.random.default_rng(0)
    batch = options.batch
    batch_positions = jnp.asarray(positions[None] + rng.normal(scale=0.5, size=(batch, n_atoms, 3)), dtype=jnp.float32)
    angles = jnp.asarray(rng.uniform([-180, 0, -180], [180, 180, 180], size=(batch, 3)), dtype=jnp.float32)
    shifts = jnp.asarray(rng.normal(scale=2.0, size=(batch, 2)), dtype=jnp.float32)
    defocus = jnp.asarray(rng.uniform(8000, 20000, size=batch), dtype=jnp.float32)
    ones = jnp.ones(batch, jnp.float32)
    ctf = CTFParameters(defocus, defocus - 300.0, 30.0 * ones, 300.0 * ones, 2.7 * ones, 0.1 * ones, 0.0 * ones, 0.0 * ones, ones)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"AdK {n_atoms} atoms, batch {batch}, pixel {options.pixel_size} Å, float32, images/s (higher is better)")

    for box in options.sizes:
        image_model = make_image_model(model.atomic_numbers, model.b_factors_in_angstroms_squared, box, options.pixel_size)
        weights = jnp.asarray(rng.normal(size=(box, box)), dtype=jnp.float32)

        def ours_one(positions, angles, shift, ctf):
            return image_model(positions, euler_angles_to_matrix(angles), shift, ctf)

        ours_forward = jax.jit(jax.vmap(ours_one))
        ours_gradient = jax.jit(
            jax.vmap(jax.value_and_grad(lambda p, a, s, c: jnp.sum(weights * ours_one(p, a, s, c))))
        )
        results = {
            "ours forward": _time(ours_forward, batch_positions, angles, shifts, ctf),
            "ours gradient": _time(ours_gradient, batch_positions, angles, shifts, ctf),
        }
        splat_cost = sum(5 * (stop - start) * window**2 for start, stop, window in image_model.groups)
        dense_cost = 5 * n_atoms * box * box
        # error functions: 5 Gaussians × 2 axes × (pixels + 1) edges per atom
        splat_erfs = sum(10 * (stop - start) * (window + 1) for start, stop, window in image_model.groups)
        dense_erfs = 10 * n_atoms * (box + 1)
        if not options.skip_cryojax:
            import cryojax.simulator as cxs
            from cryojax.constants import PengScatteringFactorParameters

            reference = cxs.GaussianMixtureVolume.from_tabulated_parameters(
                positions, PengScatteringFactorParameters(model.atomic_numbers),
                extra_b_factors=model.b_factors_in_angstroms_squared,
            )

            def theirs_one(positions, angles, shift, ctf):
                config = cxs.BasicImageConfig((box, box), options.pixel_size, 300.0)
                volume = cxs.GaussianMixtureVolume(positions, reference.amplitudes, reference.variances)
                pose = cxs.EulerAnglePose(shift[0], shift[1], -angles[0], -angles[1], -angles[2])
                transfer = cxs.ContrastTransferTheory(
                    cxs.AstigmaticCTF(
                        0.5 * (ctf.defocus_u_in_angstroms + ctf.defocus_v_in_angstroms),
                        ctf.defocus_u_in_angstroms - ctf.defocus_v_in_angstroms,
                        90.0 - ctf.astigmatism_angle_in_degrees,
                        ctf.spherical_aberration_in_millimeters,
                    ),
                    amplitude_contrast_ratio=ctf.amplitude_contrast_ratio,
                )
                return -cxs.make_image_model(volume, config, pose, transfer).simulate()

            theirs_forward = eqx.filter_jit(jax.vmap(theirs_one))
            theirs_gradient = eqx.filter_jit(
                jax.vmap(jax.value_and_grad(lambda p, a, s, c: jnp.sum(weights * theirs_one(p, a, s, c))))
            )
            results["cryoJAX forward"] = _time(theirs_forward, batch_positions, angles, shifts, ctf)
            results["cryoJAX gradient"] = _time(theirs_gradient, batch_positions, angles, shifts, ctf)
            ours_images = np.asarray(ours_forward(batch_positions, angles, shifts, ctf))
            their_images = np.asarray(theirs_forward(batch_positions, angles, shifts, ctf))
            correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours_images, their_images)])
        print(f"\nD = {box}  (splat windows {[(stop - start, window) for start, stop, window in image_model.groups]} as (atoms, w))")
        for name, seconds in results.items():
            cost, erfs = (dense_cost, dense_erfs) if name.startswith("cryoJAX") else (splat_cost, splat_erfs)
            nanoseconds = 1e9 * seconds / batch
            print(
                f"  {name:17s} {batch / seconds:8.1f} images/s {1e3 * seconds / batch:8.2f} ms/image | "
                f"{cost / 1e6:8.2f} M mult-adds + {erfs / 1e6:5.2f} M erf per image: "
                f"{nanoseconds / cost:6.3f} ns/mult-add, {nanoseconds / erfs:6.1f} ns/erf if all time went to either"
            )
        if not options.skip_cryojax:
            print(
                f"  ratio ours/cryoJAX: forward {results['cryoJAX forward'] / results['ours forward']:.1f}x, "
                f"forward+gradient {results['cryoJAX gradient'] / results['ours gradient']:.1f}x; "
                f"image correlation {correlation:.5f}; arithmetic ratio dense/splat {dense_cost / splat_cost:.1f}x"
            )


if __name__ == "__main__":
    main()
