"""Images per second of atomicspi's image model vs cryoJAX's, AdK (3,341 atoms), same inputs.

    python bench/microscope.py [--sizes 64 128 256] [--batch 16] [--pixel-size 1.0] [--methods splat fourier] [--rounds 5]

For each box size D: a batch of particles (own positions = AdK + small random displacements,
pose, shift, CTF) is simulated with `jax.jit(jax.vmap(...))`, forward and forward+gradient with
respect to the atom positions (gradient of Σ image · weights), by each of our `--methods`
(`make_image_model(..., method=...)`: "splat", "fourier", "dense") and by cryoJAX. All functions
are compiled and warmed up first (compilation excluded), then timed in interleaved rounds (one
call of each per round, `block_until_ready`), so that a change of the machine's load hits all of
them alike; the median round is reported. cryoJAX uses its default `make_image_model` path (dense
pixel-integrated Gaussian sums, `GaussianMixtureVolume.from_tabulated_parameters` +
`GaussianMixtureProjection`). All apply the CTF on the unpadded D × D grid. Prints images/s,
ratios, each method's image correlation with cryoJAX's, and the arithmetic cost per image (dense:
5·N·D² multiply-adds and 10·N·(D+1) error functions; splat: Σ_groups 5·N_g·w_g² and
10·N_g·(w_g+1); fourier: N·C·w² spread values for C form-factor channels and a width-w kernel,
plus C real FFTs of G × G).
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


def _time_interleaved(functions, args, rounds):
    """Median seconds per call of each function, timed one call each per round after a warm-up call."""
    for function in functions.values():
        jax.block_until_ready(function(*args))  # compile + warm up
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(function(*args))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pixel-size", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", default=["splat", "fourier"], choices=["splat", "fourier", "dense"])
    parser.add_argument("--rounds", type=int, default=5)
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
        weights = jnp.asarray(rng.normal(size=(box, box)), dtype=jnp.float32)
        functions, image_models = {}, {}
        for method in options.methods:
            image_model = make_image_model(
                model.atomic_numbers, model.b_factors_in_angstroms_squared, box, options.pixel_size, method=method
            )
            image_models[method] = image_model

            def ours_one(positions, angles, shift, ctf, image_model=image_model):
                return image_model(positions, euler_angles_to_matrix(angles), shift, ctf)

            functions[f"{method} forward"] = jax.jit(jax.vmap(ours_one))
            functions[f"{method} gradient"] = jax.jit(
                jax.vmap(jax.value_and_grad(lambda p, a, s, c, one=ours_one: jnp.sum(weights * one(p, a, s, c))))
            )
        if not options.skip_cryojax:
            import cryojax.simulator as cxs
            from cryojax.constants import PengScatteringFactorParameters

            reference = cxs.GaussianMixtureVolume.from_tabulated_parameters(
                positions, PengScatteringFactorParameters(model.atomic_numbers),
                extra_b_factors=model.b_factors_in_angstroms_squared,
            )

            def theirs_one(positions, angles, shift, ctf, box=box):
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

            functions["cryoJAX forward"] = eqx.filter_jit(jax.vmap(theirs_one))
            functions["cryoJAX gradient"] = eqx.filter_jit(
                jax.vmap(jax.value_and_grad(lambda p, a, s, c: jnp.sum(weights * theirs_one(p, a, s, c))))
            )
        arguments = (batch_positions, angles, shifts, ctf)
        results = _time_interleaved(functions, arguments, options.rounds)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

        # arithmetic per image, per method
        costs = {"dense": (5 * n_atoms * box * box, f"{10 * n_atoms * (box + 1) / 1e6:5.2f} M erf")}
        if "splat" in image_models:
            groups = image_models["splat"].groups
            splat_erfs = sum(10 * (stop - start) * (window + 1) for start, stop, window in groups)
            costs["splat"] = (sum(5 * (stop - start) * window**2 for start, stop, window in groups), f"{splat_erfs / 1e6:5.2f} M erf")
        if "fourier" in image_models:
            projector = image_models["fourier"].fourier_projector
            assert projector is not None
            channels = projector.weights.shape[1]
            costs["fourier"] = (
                n_atoms * channels * projector.kernel_width**2,
                f"{channels} × rfft2 {projector.grid_size}²",
            )
        print(f"\nD = {box}  (load average {load:.1f} after the timings)")
        if "splat" in image_models:
            print(f"  splat windows {[(stop - start, window) for start, stop, window in image_models['splat'].groups]} as (atoms, w)")
        if "fourier" in image_models:
            projector = image_models["fourier"].fourier_projector
            assert projector is not None
            print(
                f"  fourier: {projector.weights.shape[1]} form-factor channels, kernel width {projector.kernel_width}, "
                f"grid G = {projector.grid_size}, frequencies |n|, |m| ≤ K = {projector.max_frequency}"
            )
        for name, seconds in results.items():
            method = "dense" if name.startswith("cryoJAX") else name.split()[0]
            cost, other = costs[method]
            print(
                f"  {name:18s} {batch / seconds:8.1f} images/s {1e3 * seconds / batch:8.2f} ms/image | "
                f"{cost / 1e6:8.2f} M mult-adds (or spread values) + {other} per image"
            )
        if not options.skip_cryojax:
            their_images = np.asarray(functions["cryoJAX forward"](*arguments))
            for method in image_models:
                ours_images = np.asarray(functions[f"{method} forward"](*arguments))
                correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours_images, their_images)])
                print(
                    f"  ratio {method}/cryoJAX: forward {results['cryoJAX forward'] / results[f'{method} forward']:.1f}x, "
                    f"forward+gradient {results['cryoJAX gradient'] / results[f'{method} gradient']:.1f}x; "
                    f"image correlation {correlation:.5f}"
                )
        if "splat" in image_models and "fourier" in image_models:
            print(
                f"  ratio fourier/splat: forward {results['splat forward'] / results['fourier forward']:.2f}x, "
                f"forward+gradient {results['splat gradient'] / results['fourier gradient']:.2f}x"
            )

if __name__ == "__main__":
    main()
