"""One inference run, files → dataset → model → guide → posterior → products."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run_inference"]

_FIT_PARTICLES_SHOWN = 4


def _flat_batch(batch) -> dict:
    """A `ParticleBatch` as the flat dict of float32 arrays the training loop streams."""
    from atomicspi.io import CTF_FIELDS

    flat = {
        "indices": np.asarray(batch.indices),
        "images": np.asarray(batch.images, dtype=np.float32),
        "rotations": np.asarray(batch.rotations, dtype=np.float32),
        "shifts_in_angstroms": np.asarray(batch.shifts_in_angstroms, dtype=np.float32),
    }
    flat.update({name: np.asarray(batch.ctf[name], dtype=np.float32) for name in CTF_FIELDS})
    return flat


def _ctf_parameters(fields: dict, count: int | None = None):
    """`CTFParameters` from the dataset's CTF arrays (named as `CTF_FIELDS`), the first `count` of each."""
    from atomicspi.io import CTF_FIELDS
    from atomicspi.microscope import CTFParameters

    return CTFParameters(**{name: jnp.asarray(fields[name][:count], dtype=jnp.float32) for name in CTF_FIELDS})


def _with_ctf_parameters(function):
    """Adapt a model or guide to the flat batch: gather the CTF fields into `CTFParameters`."""
    from atomicspi.io import CTF_FIELDS

    def adapted(**arguments):
        fields = {name: arguments.pop(name) for name in CTF_FIELDS}
        return function(ctf=_ctf_parameters(fields), **arguments)

    adapted.__name__ = getattr(function, "__name__", "function")
    return adapted


_SETTINGS_ADDED_LATER = ("importance_proposals",)


def _hashable_configuration(config) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    settings = dataclasses.asdict(config)
    for name in ("output", "checkpoint_every", "samples_per_particle", "mode_candidates"):
        settings.pop(name, None)
    if settings.get("learning_rate_schedule") == "constant":  # else the schedule depends on num_steps
        settings.pop("num_steps", None)
    for name in _SETTINGS_ADDED_LATER:  # at their defaults they leave older checkpoints valid
        if settings.get(name) is None:
            settings.pop(name, None)
    return {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in settings.items()}


def _ordered_batches(dataset, batch_size: int):
    """Minibatches in input order (the last one padded by repeating its final particle)."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        indices = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([indices, np.full(batch_size - len(indices), indices[-1])])
        yield len(indices), _flat_batch(dataset.batch(padded))


def _estimate_noise_std(dataset, n_images: int = 256) -> float:
    """Per-pixel noise level from the corners of the images (outside the particle's circle)."""
    images = np.asarray(dataset.images(np.arange(min(n_images, len(dataset)))), dtype=float)
    d = images.shape[-1]
    y, x = np.indices((d, d)) - d // 2
    outside = np.hypot(x, y) > 0.45 * d
    values = images[:, outside]
    values = values - values.mean(axis=1, keepdims=True)
    return float(np.std(values))


def _estimate_contrast(dataset, image_model, structure, n_images: int = 64) -> float:
    """Least-squares scale from the microscope's units (V·Å) to the images' units, fitting the
    reference structure's images to the first particles at their given poses."""
    from atomicspi.models import render_images

    batch = dataset.batch(np.arange(min(n_images, len(dataset))))
    n = len(batch.indices)
    ctf = _ctf_parameters(batch.ctf)
    positions = jnp.broadcast_to(jnp.asarray(structure.positions_in_angstroms, dtype=jnp.float32), (n, structure.n_atoms, 3))
    predicted = np.asarray(
        render_images(image_model, positions, jnp.asarray(batch.rotations, dtype=jnp.float32),
                      jnp.asarray(batch.shifts_in_angstroms, dtype=jnp.float32), ctf)
    )
    images = np.asarray(batch.images, dtype=float)
    images = images - images.mean(axis=(1, 2), keepdims=True)
    return float(np.sum(images * predicted) / np.sum(predicted * predicted))


_DECODED_STRUCTURES_PER_CHUNK = 2048


def _positions_from_draws(model_name, context, draws, decoder):
    """Atom positions for per-particle draws: `(n_particles, n_samples, n_atoms, 3)`."""
    from atomicspi.models import deformation_positions, domain_positions, nma_positions

    if model_name == "domains":
        return jax.jit(functools.partial(domain_positions, context))(
            jnp.asarray(draws["domain_motion"]), jnp.asarray(draws["amplitudes"])
        )
    if model_name == "nma":
        return jax.jit(functools.partial(nma_positions, context))(jnp.asarray(draws["amplitudes"]))
    if model_name == "deformation":
        # In chunks of particles: decoding every draw at once held several copies of
        # particles × draws × atoms × 3 floats (10 GB peak for 2,000 × 20 draws of AdK).
        decode = jax.jit(functools.partial(deformation_positions, context, decoder))
        z = np.asarray(draws["z"])
        chunk = max(1, _DECODED_STRUCTURES_PER_CHUNK // z.shape[1])
        return np.concatenate([np.asarray(decode(jnp.asarray(z[start : start + chunk]))) for start in range(0, len(z), chunk)])
    raise AssertionError(model_name)


_LINEAR_START_PARTICLES = 1024


def _linear_start(dataset, context, decoder):
    """Start the deformation decoder along the population's principal motions (EM for a
    linear-Gaussian model of the images in mode space, `atomicspi.inference.principal_motions`), and
    centre the spring-constant hyperprior where the elastic network's Boltzmann spread along the
    main motion equals its estimated variance."""
    from atomicspi.inference import principal_motions
    from atomicspi.models import decoder_along_motions, spring_constant_for_spread

    started = time.perf_counter()
    batch = dataset.batch(np.arange(min(_LINEAR_START_PARTICLES, len(dataset))))
    resolution = max(12.0, 4.0 * dataset.pixel_size_in_angstroms)
    motions = principal_motions(
        context, np.asarray(batch.images, dtype=np.float32), np.asarray(batch.rotations),
        np.asarray(batch.shifts_in_angstroms), _ctf_parameters(batch.ctf), context.options.contrast_guess,
        context.options.noise_std_guess, context.options.latent_dim, resolution_in_angstroms=resolution,
    )
    decoder = decoder_along_motions(decoder, motions.directions, motions.variances_in_angstroms_squared)
    spring_constant = spring_constant_for_spread(context, motions.directions[0], motions.variances_in_angstroms_squared[0])
    options = dataclasses.replace(context.options, spring_constant_guess=spring_constant)
    context = dataclasses.replace(context, options=options)
    record = {
        "seconds": time.perf_counter() - started,
        "particles": len(batch.indices),
        "resolution_in_angstroms": resolution,
        "variances_in_angstroms_squared": motions.variances_in_angstroms_squared.tolist(),
        "spring_constant_guess": spring_constant,
    }
    return decoder, context, record


def _check_domains(config, structure) -> None:
    """Refuse residue-range `domains` that do not fit the reference before anything is written: a
    range beyond its residues, a domain holding none of its beads, overlapping domains, or beads in
    no domain. Domains are numbered from 1 in the messages, in the order of the yaml."""
    from atomicspi.io import InputError
    from atomicspi.structure import calpha_beads, centroid_beads

    try:
        beads = {"calpha": calpha_beads, "centroid": centroid_beads}[config.coarse_grain](structure)
    except InputError as error:
        raise InputError(f"{config.reference}: {error}") from None
    numbers = np.asarray(beads.bead_residue_numbers)
    lowest, highest = int(numbers.min()), int(numbers.max())
    owner = np.zeros(numbers.shape, dtype=int)  # the domain (from 1) of each bead, 0 for none
    for domain, ranges in enumerate(config.domains, start=1):
        for first, last in ranges:
            where = f"{config.reference}: field domains: residue range {first}-{last} of domain {domain}"
            if first < lowest or last > highest:
                raise InputError(f"{where} reaches beyond this structure's residues {lowest}-{highest}")
            inside = (numbers >= first) & (numbers <= last)
            if np.any(owner[inside] > 0):
                raise InputError(f"{where} overlaps domain {int(owner[inside][owner[inside] > 0][0])}")
            owner[inside] = domain
        if not np.any(owner == domain):
            raise InputError(f"{config.reference}: field domains: domain {domain} holds no residue of this structure")
    if np.any(owner == 0):
        missing = numbers[owner == 0]
        raise InputError(
            f"{config.reference}: field domains: residues {missing[:5].tolist()}{'...' if missing.size > 5 else ''} "
            "are in no domain"
        )


def _refuse_noiseless_images(config, dataset) -> None:
    """Raise `InputError` for images whose background has no noise (`_estimate_noise_std` is 0)."""
    from atomicspi.io import InputError

    count = min(256, len(dataset))  # the images _estimate_noise_std looked at
    images = dataset.images(np.arange(count))
    if np.ptp(images) == 0:
        raise InputError(f"{config.particles}: field images: the first {count} images are blank (every pixel is {float(images.flat[0]):g})")
    raise InputError(
        f"{config.particles}: field images: the background (beyond 0.45 of the box from the centre) is constant in "
        f"the first {count} images, so the noise level cannot be estimated (noiseless images cannot be fitted)"
    )


def run_inference(config, resume: bool = False, progress: bool = True) -> pathlib.Path:
    """Run the inference described by a validated `DatasetConfig` and write its output folder.

    **Returns:** the output folder, holding `topology.pdb`, `ensemble_mean.dcd`,
    `ensemble_samples.dcd`, `posterior.nc`, `run.json`, `elbo.png`, `fits.png`, and the landscape
    products.
    """
    import equinox as eqx

    from atomicspi import __version__
    from atomicspi._outputs import plot_elbo, plot_fits, write_ensemble, write_posterior, write_run_record
    from atomicspi.inference import (
        AmortizedGuide,
        draw_posterior,
        fit,
        importance_resampled_draws,
        latent_information,
        make_batch_mesh,
        make_epoch_minibatches,
        make_optimizer,
        make_svi,
        relocated_modes,
    )
    from atomicspi.io import InputError, load_particles
    from atomicspi.microscope import make_image_model
    from atomicspi.models import MODELS, Decoder, ModelOptions, build_model_context, render_images
    from atomicspi.structure import BlockRigidMotion, block_rigid_basis, load_structure

    timings, diagnostics = {}, {}
    started = time.perf_counter()
    dataset = load_particles(config.particles, poses=config.poses_file, datadir=config.datadir, ctf=config.ctf_file)
    if config.n_particles is not None:
        dataset = dataset.subset(np.arange(min(config.n_particles, len(dataset))))
    if dataset.ctf is None:
        raise InputError(f"{config.particles}: field ctf: the particles have no CTF parameters (give ctf_file)")
    if dataset.rotations is None:
        raise InputError(f"{config.particles}: field rotations: `poses: {config.poses}` needs poses in the particle file")
    structure = load_structure(config.reference)
    if isinstance(config.domains, tuple):
        _check_domains(config, structure)
    image_model = make_image_model(
        structure.atomic_numbers, structure.b_factors_in_angstroms_squared, dataset.box_size, dataset.pixel_size_in_angstroms
    )
    noise_std = _estimate_noise_std(dataset)
    if not noise_std > 0:
        _refuse_noiseless_images(config, dataset)
    contrast = _estimate_contrast(dataset, image_model, structure)
    if not contrast > 0:
        raise InputError(
            f"{config.particles}: field images: the particles correlate negatively ({contrast:.3g}) with the reference "
            "projected at their poses: is the contrast inverted (protein must be bright), or are the poses or "
            "the reference's frame wrong?"
        )
    output = pathlib.Path(config.output)  # created only once every check above has passed
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{output}: field output: cannot create the folder ({error.strerror or error})") from None

    options = ModelOptions(
        contrast_guess=contrast,
        noise_std_guess=noise_std,
        refine_poses=config.poses == "infer",
        latent_dim=config.latent_dim,
        spring_yield_in_angstroms=config.spring_yield_in_angstroms,
    )
    context = build_model_context(
        structure, image_model, config.n_modes, config.cutoff_in_angstroms, options, coarse_grain=config.coarse_grain,
        domain_residue_ranges=config.domains if config.model in ("domains", "deformation") else None,
    )
    key = jax.random.key(config.seed)
    model = MODELS[config.model]
    model_arguments = {"context": context, "n_particles": len(dataset)}
    decoder = None
    if config.model == "deformation":
        basis = blocks = None
        if config.decoder_beads_per_block:
            beads = np.asarray(context.bead_positions_in_angstroms)
            basis = block_rigid_basis(beads, config.decoder_beads_per_block)
            blocks = BlockRigidMotion(beads, config.decoder_beads_per_block)
        decoder = Decoder(options.latent_dim, context.n_beads, jax.random.fold_in(key, 1), basis=basis, rigid_blocks=blocks)
        if not config.domains:  # no hinges given: start from the motions the images show
            decoder, context, diagnostics["linear_start"] = _linear_start(dataset, context, decoder)
        model_arguments["decoder"] = decoder
        model_arguments["context"] = context
    guide = AmortizedGuide(
        config.model, context, dataset.box_size, jax.random.fold_in(key, 2),
        per_particle_offsets=config.guide == "semi_amortized",
    )
    timings["setup_seconds"] = time.perf_counter() - started

    batch_size = min(config.batch_size, len(dataset))
    batches = make_epoch_minibatches(
        lambda indices: {k: v for k, v in _flat_batch(dataset.batch(indices)).items() if k != "indices"},
        len(dataset), batch_size, config.seed,
    )
    model = _with_ctf_parameters(model)
    guide_function = _with_ctf_parameters(guide)
    optimizer = make_optimizer(
        config.learning_rate, config.per_particle_learning_rate,
        decay_steps=config.num_steps if config.learning_rate_schedule == "cosine" else None,
    )
    svi = make_svi(model, guide_function, optimizer, **model_arguments)
    mesh = make_batch_mesh(jax.devices()[: config.device_count]) if (config.device_count or 1) > 1 else None
    started = time.perf_counter()
    result = fit(
        svi, batches, config.num_steps, seed=config.seed,
        checkpoint_path=output / "checkpoint.npz", checkpoint_every=config.checkpoint_every,
        resume=resume, mesh=mesh, configuration=_hashable_configuration(config), progress=progress,
    )
    timings["training_seconds"] = time.perf_counter() - started
    params = result.parameters

    started = time.perf_counter()
    local_sites = list(guide.local_sizes)
    ordered = list(_ordered_batches(dataset, batch_size))
    local, global_ = draw_posterior(
        guide_function, params, (batch for _, batch in ordered), config.samples_per_particle,
        jax.random.fold_in(key, 3), model_arguments, local_sites,
    )
    resampled_particles = None
    if config.model == "deformation" and config.importance_proposals:
        # The mean-field q(z) ignores correlations between latent dimensions: where importance
        # weights against the model's own posterior are reliable (an effective sample size of at
        # least half the draws), those draws replace the guide's.
        resampled, effective_sample_sizes = importance_resampled_draws(
            model, guide_function, params, (batch for _, batch in ordered), config.samples_per_particle,
            jax.random.fold_in(key, 4), model_arguments, local_sites, n_proposals=config.importance_proposals,
        )
        resampled_particles = effective_sample_sizes >= 0.5 * config.samples_per_particle
        for name, values in resampled.items():
            local[name] = np.where(resampled_particles.reshape(-1, *([1] * (values.ndim - 1))), values, local[name])
    counts = [count for count, _ in ordered]
    keep = np.concatenate([np.arange(count) + i * batch_size for i, count in enumerate(counts)])
    local = {name: values[keep] for name, values in local.items()}
    if config.model == "deformation" and config.mode_candidates:
        # Particles whose unimodal q(z) stayed in the wrong basin move to the better mode.
        shifts, relocated, gains = relocated_modes(
            model, guide_function, params, lambda: ordered, jax.random.fold_in(key, 5), model_arguments,
            n_candidates=config.mode_candidates,
        )
        local["z"] = local["z"] + shifts[:, None, :].astype(local["z"].dtype)
        diagnostics["relocated_modes"] = {
            "candidates": config.mode_candidates,
            "share_of_particles_relocated": float(np.mean(relocated)),
            "median_log_joint_gain_in_nats": float(np.median(gains[relocated])) if np.any(relocated) else 0.0,
        }
    if resampled_particles is not None:
        effective_sample_sizes, resampled_particles = effective_sample_sizes[keep], resampled_particles[keep]
        diagnostics["importance_resampling"] = {
            "proposals_per_particle": config.importance_proposals,
            "effective_sample_size_median": float(np.median(effective_sample_sizes)),
            "effective_sample_size_10th_percentile": float(np.percentile(effective_sample_sizes, 10)),
            "share_of_particles_resampled": float(np.mean(resampled_particles)),
        }
    if "z" in local:
        diagnostics["latent_information"] = latent_information(local["z"])
        if diagnostics["latent_information"]["active_dimensions"] == 0:
            print(
                "warning: posterior collapse: no latent dimension varies between particles (run.json: "
                "latent_information); the images did not inform the conformations", file=sys.stderr,
            )

    if config.model == "homogeneous":
        displacement = np.asarray(params["displacement_loc"])
        mean_structure = np.asarray(context.atoms_from_bead_displacements(jnp.asarray(displacement)))
        mean_positions = np.broadcast_to(mean_structure, (len(dataset), *mean_structure.shape))
        sample_positions = np.asarray(
            jax.vmap(context.atoms_from_bead_displacements)(jnp.asarray(global_["displacement"]))
        )
        sample_positions = np.broadcast_to(sample_positions[None], (len(dataset), *sample_positions.shape))
    else:
        if decoder is not None:  # the fitted decoder: learned weights, the initial module's structure
            decoder = eqx.combine(params["decoder$params"], eqx.partition(decoder, eqx.is_inexact_array)[1])
        sample_positions = np.asarray(_positions_from_draws(config.model, context, local, decoder))
        mean_positions = sample_positions.mean(axis=1)
    atom_indices = np.flatnonzero(structure.atomic_numbers != 1) if config.output_atoms == "heavy" else np.arange(structure.n_atoms)
    write_ensemble(output, structure.take(atom_indices), mean_positions[:, atom_indices], sample_positions[:, :, atom_indices])
    write_posterior(output / "posterior.nc", local, global_)
    timings["posterior_seconds"] = time.perf_counter() - started

    plot_elbo(output / "elbo.png", -result.elbo_history)
    _, first = ordered[0]
    shown = min(_FIT_PARTICLES_SHOWN, counts[0])
    ctf = _ctf_parameters(first, shown)
    rendered = render_images(
        image_model, jnp.asarray(mean_positions[:shown], dtype=jnp.float32), jnp.asarray(first["rotations"][:shown]),
        jnp.asarray(first["shifts_in_angstroms"][:shown]), ctf,
    )
    images = np.asarray(first["images"][:shown])
    contrast = np.median(local["contrast"][:shown], axis=1) if "contrast" in local else np.ones(shown)
    plot_fits(output / "fits.png", images, np.asarray(rendered) * contrast[:, None, None], dataset.pixel_size_in_angstroms)

    record = {
        "config": dataclasses.asdict(config),
        "versions": {"atomicspi": __version__, "jax": jax.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "devices": [str(d) for d in jax.devices()]},
        "n_particles": len(dataset),
        "box_size": dataset.box_size,
        "pixel_size_in_angstroms": dataset.pixel_size_in_angstroms,
        "samples_per_particle": config.samples_per_particle,
        "output_atoms": config.output_atoms,
        "timings": timings,
        "images_per_second": result.images_per_second,
        "final_elbo": float(np.nanmean(result.elbo_history[-max(1, len(result.elbo_history) // 20):])),
        "skipped_steps": int(result.state.skipped_steps),
        "global_posterior_means": {name: np.asarray(v).mean(axis=0) for name, v in global_.items()},
        **diagnostics,
    }
    write_run_record(output / "run.json", record)
    if config.model != "homogeneous":
        from atomicspi.products import run_products

        started = time.perf_counter()
        run_products(output, seed=config.seed)  # default: position along the principal motion, Å
        record["timings"]["products_seconds"] = time.perf_counter() - started
        write_run_record(output / "run.json", record)
    return output
