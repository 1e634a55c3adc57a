"""One inference run, files → dataset → model → guide → posterior → products, in stages:
`prepare` (every check, before any output exists) → `set_up` → `train` → `draw` → `write` →
products. What differs between model families is in their `atomicspi._families` entries."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from atomicspi._batches import ctf_parameters, flat_batch, ordered_batches, with_ctf_parameters
from atomicspi._families import FAMILIES, FittedModel, ModelFamily

__all__ = ["Prepared", "Posterior", "SetUp", "draw", "prepare", "run_inference", "set_up", "train", "write", "write_particles_star"]

_FIT_PARTICLES_SHOWN = 4
_ctf_parameters, _ordered_batches = ctf_parameters, ordered_batches  # the names bench/ imports


# Settings added after checkpoints were first written, with their defaults: at their defaults they
# are left out of the configuration hash, so that older checkpoints stay valid.
_SETTINGS_ADDED_LATER = {
    "importance_proposals": None, "particle_fluctuation_in_angstroms": None, "noise": "white", "likelihood_resolution_in_angstroms": None,
    "max_shift_in_angstroms": None, "search_resolution_in_angstroms": 6.0, "learn_envelope": False,
}
_ENVELOPE_PRIOR_IN_ANGSTROMS_SQUARED = 50.0  # prior sd of the learned envelope B-factor (models' sample_envelope)


def _hashable_configuration(config) -> dict:
    """The settings a checkpoint must share with the run that resumes it."""
    settings = dataclasses.asdict(config)
    for name in ("output", "checkpoint_every", "samples_per_particle", "mode_candidates", "path_nodes", "importance_proposals", "yaml_path", "output_atoms",
                 "output_budget_in_gigabytes", "ensemble_size"):
        settings.pop(name, None)
    if settings.get("learning_rate_schedule") == "constant":  # else the schedule depends on num_steps
        settings.pop("num_steps", None)
    for name, default in _SETTINGS_ADDED_LATER.items():  # at their defaults they leave older checkpoints valid
        if settings.get(name) == default:
            settings.pop(name, None)
    return {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in settings.items()}


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
    ctf = ctf_parameters(batch.ctf)
    positions = jnp.broadcast_to(jnp.asarray(structure.positions_in_angstroms, dtype=jnp.float32), (n, structure.n_atoms, 3))
    predicted = np.asarray(
        render_images(image_model, positions, jnp.asarray(batch.rotations, dtype=jnp.float32),
                      jnp.asarray(batch.shifts_in_angstroms, dtype=jnp.float32), ctf)
    )
    images = np.asarray(batch.images, dtype=float)
    images = images - images.mean(axis=(1, 2), keepdims=True)
    return float(np.sum(images * predicted) / np.sum(predicted * predicted))


_NOISE_SPECTRUM_IMAGES = 512  # residual images per optics group for its noise power spectrum
_NOISE_SPECTRUM_SMALLEST_GROUP = 32  # groups with fewer particles share the pooled spectrum


def _estimate_noise_power_spectra(
    dataset, image_model, structure, n_images: int = _NOISE_SPECTRUM_IMAGES, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The radial power spectrum of each optics group's noise, from residuals: each of the group's
    first `n_images` particles minus the reference projected at its pose times the image's own
    least-squares contrast (fitted with an offset, which stays in the residual: the models have
    none, so `k = 0` holds the images' offsets).

    Residuals rather than the background outside the particle: they use every pixel, need no window
    correction, and keep the CTF-delocalised signal (which reaches the corners of small boxes) out
    of the noise. What they keep is the signal of the particles' differences from the reference:
    the spectrum is overestimated by it, relatively most where the noise is weakest (3–10 % at the
    high shells of `bench/coloured_noise.py`, 0.7 Å from the reference), which widens the posteriors
    rather than narrowing them; `noise_std` (the spectrum's level) is learned.

    Fitting each image's contrast takes out the noise along its projection p, most of it where p has
    its power (5 % of shell 1 for Cα adenylate kinase at 32² and 4 Å). That loss is known exactly: with
    `w` the share of p's power (centred) and `v` of the subtracted image at each frequency, the
    expected residual power at k is `P(k) (1 − 2 w(k)) + v(k) Σ_q w(q) P(q)`, per shell a linear
    map of the spectrum averaged over the images, which is inverted. Then
    `atomicspi.microscope.smoothed_power_spectrum` smooths and floors the shells; a group of fewer
    than `_NOISE_SPECTRUM_SMALLEST_GROUP` particles takes the estimate of all groups together.

    **Returns:** `(spectra (n_groups, n_shells) in image units² (the `atomicspi.microscope`
    normalisation, shells of `radial_shell_indices`), the optics group of each particle (n,),
    residual images used per group (n_groups,))`.
    """
    import functools

    from atomicspi.microscope import radial_shell_count, smoothed_power_spectrum
    from atomicspi.models import render_images

    groups = np.asarray(dataset.optics_group_indices, dtype=np.int64)
    n_groups = max(len(dataset.optics_groups), int(groups.max()) + 1 if len(groups) else 1)
    box_size = dataset.box_size
    n_pixels, n_shells = box_size * box_size, radial_shell_count(box_size)
    shells = _full_grid_shells(box_size, n_shells).ravel()  # the full frequency grid's shells and their sizes
    shell_sizes = np.maximum(np.bincount(shells, minlength=n_shells), 1)
    image_shells = (np.arange(batch_size)[:, None] * n_shells + shells[None, :]).ravel()

    def shell_means(values):  # (b, D, D) → (b, n_shells): the mean over each shell's frequencies
        count = values.shape[0]
        sums = np.bincount(image_shells[: count * n_pixels], weights=values.reshape(-1), minlength=count * n_shells)
        return sums.reshape(count, n_shells) / shell_sizes

    render = jax.jit(functools.partial(render_images, image_model))
    reference = jnp.broadcast_to(jnp.asarray(structure.positions_in_angstroms, dtype=jnp.float32), (batch_size, structure.n_atoms, 3))
    raw = np.zeros((n_groups, n_shells))  # Σ over images of the residual power per shell
    map_sums = np.zeros((n_groups, n_shells, n_shells))  # Σ over images of the expected-power map
    counts = np.zeros(n_groups, dtype=np.int64)
    for group in range(n_groups):
        members = np.flatnonzero(groups == group)[:n_images]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[-1])])  # one compiled shape
            batch = dataset.batch(padded)
            predicted = np.asarray(render(
                reference, jnp.asarray(batch.rotations, dtype=jnp.float32),
                jnp.asarray(batch.shifts_in_angstroms, dtype=jnp.float32), ctf_parameters(batch.ctf),
            ), dtype=np.float64)[: len(chunk)]
            images = np.asarray(batch.images, dtype=np.float64)[: len(chunk)]
            centred = predicted - predicted.mean(axis=(1, 2), keepdims=True)
            norms = np.sum(centred * centred, axis=(1, 2))
            safe = np.where(norms > 0, norms, 1.0)[:, None]
            contrast = np.where(norms > 0, np.sum(images * centred, axis=(1, 2)) / safe[:, 0], 0.0)
            residual = images - contrast[:, None, None] * predicted
            raw[group] += shell_means(np.abs(np.fft.fft2(residual)) ** 2).sum(axis=0) / n_pixels
            fitted = np.where(norms[:, None] > 0, shell_means(np.abs(np.fft.fft2(centred)) ** 2) / (n_pixels * safe), 0.0)
            subtracted = np.where(norms[:, None] > 0, shell_means(np.abs(np.fft.fft2(predicted)) ** 2) / (n_pixels * safe), 0.0)
            map_sums[group] += np.diag(-2.0 * fitted.sum(axis=0)) + np.einsum("bn,bm->nm", subtracted, fitted * shell_sizes)
            counts[group] += len(chunk)

    def estimate(raw_sum, map_sum, count):
        expected_power = np.eye(n_shells) + map_sum / count
        return np.asarray(smoothed_power_spectrum(jnp.asarray(np.linalg.solve(expected_power, raw_sum / count))), dtype=np.float64)

    pooled = estimate(raw.sum(axis=0), map_sums.sum(axis=0), max(int(counts.sum()), 1))
    spectra = np.stack([
        estimate(raw[group], map_sums[group], counts[group]) if counts[group] >= _NOISE_SPECTRUM_SMALLEST_GROUP else pooled
        for group in range(n_groups)
    ])
    return spectra, groups, counts


def _full_grid_shells(box_size: int, n_shells: int) -> np.ndarray:
    """`(D, D)` shell index `round(|k|)` of every `fft2` frequency (in cycles per box), the last shell
    holding everything beyond it (the full-grid twin of `atomicspi.microscope.radial_shell_indices`)."""
    index = np.fft.fftfreq(box_size) * box_size
    return np.minimum(np.round(np.hypot(index[:, None], index[None, :])).astype(np.int64), n_shells - 1)


def _pixel_variance(spectrum: np.ndarray, box_size: int) -> float:
    """Noise variance per pixel of a radial power spectrum: its mean over the full `D × D` frequency grid."""
    return float(np.mean(np.asarray(spectrum)[_full_grid_shells(box_size, len(spectrum))]))


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


_SEARCH_CHUNK = 256  # images read and searched at a time


def _search_poses(config, dataset, image_model, structure, noise_std: float):
    """`poses: search`: every particle's pose by `atomicspi.inference.search_poses` against the
    reference, a chunk of images at a time; the `PoseSearchResult` in input order."""
    from atomicspi.inference import PoseSearchResult, make_fourier_volume, search_poses

    box_size, pixel = dataset.box_size, dataset.pixel_size_in_angstroms
    max_frequency = max(1, min(int(box_size * pixel / config.search_resolution_in_angstroms), box_size // 2 - 1))
    max_shift = config.max_shift_in_angstroms if config.max_shift_in_angstroms is not None else 0.1 * box_size * pixel
    volume = make_fourier_volume(image_model, structure.positions_in_angstroms, max_frequency)
    pieces = []
    for start in range(0, len(dataset), _SEARCH_CHUNK):
        batch = dataset.batch(np.arange(start, min(start + _SEARCH_CHUNK, len(dataset))))
        pieces.append(search_poses(
            volume, batch.images, ctf_parameters(batch.ctf), noise_std, max_shift_in_angstroms=max_shift,
            initial_max_frequency=min(6, max_frequency),
        ))
    return PoseSearchResult(*(np.concatenate(arrays) for arrays in zip(*pieces)))


class Prepared(NamedTuple):
    """A validated run's inputs: the particles, the reference, the image model, the noise and
    contrast estimated from the images, the (now existing) output folder, and with `noise:
    coloured` the noise power spectra of `_estimate_noise_power_spectra`."""

    dataset: Any
    structure: Any
    image_model: Any
    noise_std: float
    contrast: float
    output: pathlib.Path
    noise_power_spectra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # `noise: coloured`
    pose_search: Any = None  # `poses: search`: the `PoseSearchResult` the dataset's poses came from
    pose_search_seconds: float = 0.0


class SetUp(NamedTuple):
    """The family's model and guide ready to train, with their keyword arguments."""

    family: ModelFamily
    model: Any
    guide: Any
    model_arguments: dict[str, Any]
    diagnostics: dict[str, Any]


class Posterior(NamedTuple):
    """Per-particle draws (input order), global draws, the family's function from particle indices
    to atom positions (`ModelFamily.positions`), diagnostics, and with pose refinement the
    particles' `PoseSummaries` (`_pose_summaries`)."""

    local: dict[str, np.ndarray]
    global_: dict[str, np.ndarray]
    positions: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    diagnostics: dict[str, Any]
    poses: Any = None


def prepare(config) -> Prepared:
    """Load and check everything a run needs; create the output folder only once all checks pass.

    **Raises:** `InputError` (one line naming the file and field) for input that cannot be fitted.
    """
    from atomicspi.io import InputError, load_particles
    from atomicspi.microscope import make_image_model
    from atomicspi.structure import load_structure

    dataset = load_particles(config.particles, poses=config.poses_file, datadir=config.datadir, ctf=config.ctf_file)
    if config.n_particles is not None:
        dataset = dataset.subset(np.arange(min(config.n_particles, len(dataset))))
    if dataset.ctf is None:
        raise InputError(f"{config.particles}: field ctf: the particles have no CTF parameters (give ctf_file)")
    if dataset.rotations is None and config.poses != "search":
        raise InputError(
            f"{config.particles}: field rotations: `poses: {config.poses}` needs poses in the particle file "
            "(`poses: search` finds them)"
        )
    # `model: volume` may come without a reference (`load_config` refuses the settings that need one)
    structure = load_structure(config.reference) if config.reference is not None else None
    if isinstance(config.domains, tuple) and structure is not None:
        _check_domains(config, structure)
    box_size, pixel_size = dataset.box_size, dataset.pixel_size_in_angstroms
    if box_size is None or pixel_size is None:  # load_particles checks the stacks, so this is an internal error
        raise AssertionError(f"{config.particles}: no box or pixel size after loading")
    image_model = None
    if structure is not None:
        image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, box_size, pixel_size)
    noise_std = _estimate_noise_std(dataset)
    if not noise_std > 0:
        _refuse_noiseless_images(config, dataset)
    pose_search, search_seconds = None, 0.0
    if config.poses == "search":
        started = time.perf_counter()
        pose_search = _search_poses(config, dataset, image_model, structure, noise_std)
        search_seconds = time.perf_counter() - started
        dataset = dataclasses.replace(dataset, rotations=pose_search.rotations, shifts_in_angstroms=pose_search.shifts_in_angstroms)
    # without a reference (a volume), the map takes the images' units: contrast 1
    contrast = _estimate_contrast(dataset, image_model, structure) if structure is not None else 1.0
    if not contrast > 0:
        raise InputError(
            f"{config.particles}: field images: the particles correlate negatively ({contrast:.3g}) with the reference "
            "projected at their poses: is the contrast inverted (protein must be bright), or are the poses or "
            "the reference's frame wrong?"
        )
    noise_power_spectra = None
    if config.noise == "coloured":
        noise_power_spectra = _estimate_noise_power_spectra(dataset, image_model, structure)
        if not np.all(np.isfinite(noise_power_spectra[0]) & (noise_power_spectra[0] > 0)):
            raise InputError(
                f"{config.particles}: field images: the images minus the reference projected at their poses leave no "
                "noise, so the noise power spectrum cannot be estimated (noise: coloured; noiseless images cannot be fitted)"
            )
    batch_size, processes, local_count = min(config.batch_size, len(dataset)), jax.process_count(), len(jax.local_devices())
    yaml_name = config.yaml_path or "dataset.yaml"
    if config.device_count is not None and (
        config.device_count > local_count * processes or config.device_count % processes or batch_size % config.device_count
    ):
        in_processes = f" in each of {processes} processes" if processes > 1 else ""
        of_processes = ", and the device count a multiple of the process count" if processes > 1 else ""
        raise InputError(
            f"{yaml_name}: field device_count: {config.device_count} devices for minibatches of {batch_size} "
            f"({local_count} local devices{in_processes}; the batch size must be a multiple of the device count{of_processes})"
        )
    if batch_size % processes:
        raise InputError(f"{yaml_name}: field batch_size: minibatches of {batch_size} cannot be split over {processes} processes")
    output = pathlib.Path(config.output)  # created only once every check above has passed, by process 0 alone
    try:
        if jax.process_index() == 0:
            output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{output}: field output: cannot create the folder ({error.strerror or error})") from None
    return Prepared(dataset, structure, image_model, noise_std, contrast, output, noise_power_spectra, pose_search, search_seconds)


# Widths of the pose-correction priors around searched poses: wide beside the likelihood's own
# width (≈ 1-2° and 0.3 Å at 64², SNR 0.1), so that the search's use of the images is not counted
# twice, and wide enough for its errors (median 2.5°, a few percent beyond 5°, tests/test_pose_search.py).
_SEARCHED_ROTATION_PRIOR_IN_DEGREES, _SEARCHED_SHIFT_PRIOR_IN_ANGSTROMS = 5.0, 2.0


def set_up(config, prepared: Prepared, family: ModelFamily, *, key) -> SetUp:
    """The model context, the family's extras (`ModelFamily.set_up`) and the amortized guide."""
    from atomicspi.inference import AmortizedGuide
    from atomicspi.models import ModelOptions, build_model_context

    noise_std_guess, noise_record = prepared.noise_std, {"model": config.noise}
    if prepared.noise_power_spectra is not None:
        # noise_std becomes the square root of the factor on the spectra; its prior median σ₀ is the
        # root-mean-square noise per pixel of the estimate, averaged over the particles' groups
        spectra, groups, counts = prepared.noise_power_spectra
        variances = np.array([_pixel_variance(spectrum, prepared.dataset.box_size) for spectrum in spectra])
        noise_std_guess = float(np.sqrt(np.mean(variances[groups])))
        noise_record.update(
            power_spectra=spectra.tolist(), residual_images_per_group=counts.tolist(),
            pixel_noise_std_per_group=np.sqrt(variances).tolist(), noise_std_guess=noise_std_guess,
        )
    searched_priors: dict[str, Any] = {}
    if config.poses == "search":
        searched_priors = {"rotation_prior_in_degrees": _SEARCHED_ROTATION_PRIOR_IN_DEGREES,
                           "shift_prior_in_angstroms": _SEARCHED_SHIFT_PRIOR_IN_ANGSTROMS}
    options = ModelOptions(
        contrast_guess=prepared.contrast,
        noise_std_guess=noise_std_guess,
        refine_poses=config.poses in ("infer", "search"),
        **searched_priors,
        latent_dim=config.latent_dim,
        spring_yield_in_angstroms=config.spring_yield_in_angstroms,
        particle_fluctuation_in_angstroms=config.particle_fluctuation_in_angstroms if family.name == "deformation" else None,
        likelihood_resolution_in_angstroms=config.likelihood_resolution_in_angstroms,
        # a map's own spectrum carries the images' envelope: for families without atoms it would be redundant
        envelope_prior_in_angstroms_squared=_ENVELOPE_PRIOR_IN_ANGSTROMS_SQUARED if config.learn_envelope and family.has_atoms else None,
    )
    if family.has_atoms:
        context = build_model_context(
            prepared.structure, prepared.image_model, config.n_modes, config.cutoff_in_angstroms, options,
            coarse_grain=config.coarse_grain, domain_residue_ranges=config.domains if family.uses_domains else None,
        )
    else:
        from atomicspi.models import atomless_context

        context = atomless_context(prepared.dataset.box_size, prepared.dataset.pixel_size_in_angstroms, options)
    if prepared.noise_power_spectra is not None:
        context = dataclasses.replace(
            context,
            noise_power_spectrum=jnp.asarray(spectra / noise_std_guess**2, dtype=jnp.float32),
            particle_noise_groups=jnp.asarray(groups, dtype=jnp.int32) if len(spectra) > 1 else None,
        )
    context, extra_arguments, diagnostics = family.set_up(config, prepared.dataset, context, key=jax.random.fold_in(key, 1))
    guide = AmortizedGuide(
        family.local_sites(context), context, prepared.dataset.box_size, key=jax.random.fold_in(key, 2),
        global_sites=family.global_sites(context), per_particle_offsets=config.guide == "semi_amortized",
    )
    model_arguments = {"context": context, "n_particles": len(prepared.dataset), **extra_arguments}
    diagnostics = {**diagnostics, "noise": noise_record}
    return SetUp(family, with_ctf_parameters(family.model), guide, model_arguments, diagnostics)


def _mesh_devices(config, batch_size: int) -> list:
    """Devices to split minibatches over, the same number from every process (`jax.distributed`):
    `device_count` in all, or by default the most local devices per process whose total divides the
    batch evenly (all of them for the usual powers of two). `prepare` has checked `device_count`."""
    processes = jax.process_count()
    if config.device_count is not None:
        per_process = config.device_count // processes
    else:
        available = len(jax.local_devices())
        per_process = max(count for count in range(1, available + 1) if batch_size % (count * processes) == 0)
    devices = jax.devices()
    return [device for process in range(processes) for device in [d for d in devices if d.process_index == process][:per_process]]


def train(config, prepared: Prepared, setup: SetUp, *, resume: bool, progress: bool):
    """SVI on shuffled minibatches (`atomicspi.inference.fit`), checkpointed in the output folder;
    with several processes (`jax.distributed`) over the devices of all of them, each process reading
    its own rows of every minibatch and process 0 alone writing the checkpoints.

    **Returns:** the `FitResult`.
    """
    from atomicspi.inference import (
        fit,
        make_batch_mesh,
        make_epoch_minibatches,
        make_optimizer,
        make_svi,
        process_batch_rows,
    )

    dataset = prepared.dataset
    batch_size = min(config.batch_size, len(dataset))
    devices = _mesh_devices(config, batch_size)
    mesh = make_batch_mesh(devices) if len(devices) > 1 else None
    batches = make_epoch_minibatches(  # with several processes, each reads its own rows of every minibatch
        lambda indices: {k: v for k, v in flat_batch(dataset.batch(indices)).items() if k != "indices"},
        len(dataset), batch_size, config.seed, rows=process_batch_rows(mesh, batch_size) if mesh is not None else slice(None),
    )
    optimizer = make_optimizer(
        config.learning_rate, config.per_particle_learning_rate,
        decay_steps=config.num_steps if config.learning_rate_schedule == "cosine" else None,
    )
    svi = make_svi(setup.model, with_ctf_parameters(setup.guide), optimizer, **setup.model_arguments)
    return fit(
        svi, batches, config.num_steps, seed=config.seed,
        checkpoint_path=prepared.output / "checkpoint.npz", checkpoint_every=config.checkpoint_every,
        resume=resume, mesh=mesh, configuration=_hashable_configuration(config), progress=progress and jax.process_index() == 0,
    )


def draw(config, prepared: Prepared, setup: SetUp, parameters: dict, *, key) -> Posterior:
    """Posterior draws from the guide in input order and the family's corrections to them
    (`ModelFamily.refined_draws`). Images are read from the stack a minibatch at a time."""
    from atomicspi.inference import draw_posterior, latent_information

    dataset = prepared.dataset
    batch_size = min(config.batch_size, len(dataset))

    def ordered():
        return ordered_batches(dataset, batch_size)

    guide = with_ctf_parameters(setup.guide)
    local_sites = list(setup.guide.local_sizes)
    local, global_ = draw_posterior(
        guide, parameters, (batch for _, batch in ordered()), config.samples_per_particle,
        key=jax.random.fold_in(key, 3), model_arguments=setup.model_arguments, local_sites=local_sites,
    )
    counts = [min(batch_size, len(dataset) - start) for start in range(0, len(dataset), batch_size)]
    keep = np.concatenate([np.arange(count) + i * batch_size for i, count in enumerate(counts)])
    local = {name: values[keep] for name, values in local.items()}
    fitted = FittedModel(setup.model, guide, parameters, setup.model_arguments, ordered, keep)
    local, diagnostics, fitted = setup.family.refined_draws(config, fitted, local, global_, key=key)
    if "z" in local:
        diagnostics["latent_information"] = latent_information(local["z"])
        if diagnostics["latent_information"]["active_dimensions"] == 0:
            print(
                "warning: posterior collapse: no latent dimension varies between particles (run.json: "
                "latent_information); the images did not inform the conformations", file=sys.stderr,
            )
    return Posterior(
        local, global_, setup.family.positions(fitted, local, global_), diagnostics, _pose_summaries(dataset, local)
    )


_STRUCTURES_PER_CHUNK = 2048  # structures decoded and written at a time (82 MB for all-atom AdK)


def write(config, prepared: Prepared, posterior: Posterior) -> dict:
    """`topology.pdb`, the ensembles (`ensemble_mean.dcd`, `ensemble_samples.dcd` when it fits the
    output budget, appended a chunk of particles at a time; `posterior_ensemble.dcd`, a bounded
    sample of the aggregated posterior) and `posterior.nc`.

    **Returns:** what was written, for `run.json` (`outputs`)."""
    from atomicspi._outputs import EnsembleWriter, output_plan, write_posterior
    from atomicspi.products import sample_aggregated_posterior

    structure = prepared.structure
    n_particles, n_draws = len(prepared.dataset), config.samples_per_particle
    plan = output_plan(
        structure, n_particles, n_draws, output_atoms=config.output_atoms,
        budget_in_gigabytes=config.output_budget_in_gigabytes, ensemble_size=config.ensemble_size,
    )
    if plan.note is not None:
        print(f"note: {plan.note}", file=sys.stderr)
    ensemble_size = min(config.ensemble_size, n_particles * n_draws)
    particles, draws = sample_aggregated_posterior(n_particles, n_draws, ensemble_size, seed=config.seed)
    atom_indices = plan.atom_indices
    chunk = max(1, _STRUCTURES_PER_CHUNK // n_draws)
    with EnsembleWriter(
        prepared.output, structure.take(atom_indices), write_samples=plan.write_samples, ensemble_draws=(particles, draws)
    ) as writer:
        for start in range(0, n_particles, chunk):
            means, samples = posterior.positions(np.arange(start, min(start + chunk, n_particles)))
            writer.append(means[:, atom_indices], samples[:, :, atom_indices])
    write_posterior(prepared.output / "posterior.nc", posterior.local, posterior.global_, posterior.poses)
    return {
        "output_atoms": plan.atom_selection,
        "n_output_atoms": len(atom_indices),
        "ensemble_samples_written": plan.write_samples,
        "expected_sizes_in_bytes": plan.sizes_in_bytes,
        "note": plan.note,
        "posterior_ensemble": {"file": "posterior_ensemble.dcd", "particles": particles, "draws": draws},
    }


def _write_without_atoms(config, prepared: Prepared, setup: SetUp, posterior: Posterior, parameters: dict) -> tuple[Posterior, dict]:
    """For a family without atoms (`volume`): `posterior.nc` without the family's global sites (a
    map's coefficients: the maps are in the family's own files) and the family's files
    (`ModelFamily.write_outputs`); no topology, ensembles or landscape.

    **Returns:** the posterior without those global draws, and what was written for `run.json` (`outputs`)."""
    from atomicspi._outputs import write_posterior

    family = setup.family
    dropped = set(family.global_sites(setup.model_arguments["context"]))
    posterior = posterior._replace(global_={name: v for name, v in posterior.global_.items() if name not in dropped})
    write_posterior(prepared.output / "posterior.nc", posterior.local, posterior.global_, posterior.poses)
    record = family.write_outputs(config, prepared.dataset, prepared.output, parameters, setup.model_arguments, posterior.local)
    note = (
        f"model {family.name} has no atoms: no topology.pdb, ensemble_mean.dcd, ensemble_samples.dcd, "
        "posterior_ensemble.dcd or landscape products are written; posterior.nc holds the per-particle draws "
        f"and the scalar globals, the map is in {record.get('map', 'the family outputs')}"
    )
    return posterior, {"note": note, "ensemble_samples_written": False, family.name: record}


_POSES_PER_CHUNK = 4096  # particles whose pose draws are summarised at a time


def _pose_summaries(dataset, local: dict[str, np.ndarray]):
    """With pose refinement (`poses: infer` or `search`), the `PoseSummaries` of the particles'
    pose draws (the refined corrections `local` around the dataset's poses); None otherwise."""
    from atomicspi.products import PoseSummaries, pose_draws, pose_summaries

    if "rotation_correction" not in local:
        return None
    pieces = []
    for start in range(0, len(dataset), _POSES_PER_CHUNK):
        chosen = slice(start, min(start + _POSES_PER_CHUNK, len(dataset)))
        rotations, shifts = pose_draws(
            dataset.rotations[chosen], dataset.shifts_in_angstroms[chosen], local["rotation_correction"][chosen],
            local["shift_correction"][chosen],
        )
        pieces.append(pose_summaries(rotations, shifts))
    return PoseSummaries(
        rotations=np.concatenate([piece.rotations for piece in pieces]),
        angular_spread_in_degrees=np.concatenate([piece.angular_spread_in_degrees for piece in pieces]),
        shifts_in_angstroms=np.concatenate([piece.shifts_in_angstroms for piece in pieces]),
        shift_standard_deviation_in_angstroms=np.concatenate([piece.shift_standard_deviation_in_angstroms for piece in pieces]),
        level=pieces[0].level,
    )


def _write_pose_search(prepared: Prepared) -> dict:
    """`pose_search.npz`: the search's result before refinement (`PoseSearchResult`'s arrays, input
    order); returns its summary for `run.json`."""
    result = prepared.pose_search
    np.savez(prepared.output / "pose_search.npz", **result._asdict())
    spread = np.degrees(np.linalg.norm(result.rotation_spread_in_radians, axis=1))
    return {
        "file": "pose_search.npz", "seconds": prepared.pose_search_seconds,
        "median_gain": float(np.median(result.gain)),
        "median_best_hypothesis_weight": float(np.median(np.exp(result.hypothesis_log_weights[:, 0]))),
        "median_local_spread_in_degrees": float(np.median(spread[np.isfinite(spread)])) if np.isfinite(spread).any() else None,
    }


def _write_figures(config, prepared: Prepared, posterior: Posterior, elbo_history, *, fits: bool = True) -> None:
    """`elbo.png`, and with `fits` (families with atoms; the others write their own) `fits.png`:
    the first particles beside their posterior-mean images."""
    from atomicspi._outputs import plot_elbo, plot_fits
    from atomicspi.models import render_images

    plot_elbo(prepared.output / "elbo.png", -elbo_history)
    if not fits:
        return
    shown = min(_FIT_PARTICLES_SHOWN, len(prepared.dataset))
    first = flat_batch(prepared.dataset.batch(np.arange(shown)))
    means, _ = posterior.positions(np.arange(shown))
    rendered = render_images(
        prepared.image_model, jnp.asarray(means, dtype=jnp.float32), jnp.asarray(first["rotations"]),
        jnp.asarray(first["shifts_in_angstroms"]), ctf_parameters(first),
    )
    local = posterior.local
    contrast = np.median(local["contrast"][:shown], axis=1) if "contrast" in local else np.ones(shown)
    plot_fits(
        prepared.output / "fits.png", np.asarray(first["images"]), np.asarray(rendered) * contrast[:, None, None],
        prepared.dataset.pixel_size_in_angstroms,
    )


def _run_record(config, prepared: Prepared, result, posterior: Posterior, diagnostics: dict, timings: dict) -> dict:
    """What `run.json` holds: settings, versions, machine, timings and diagnostics."""
    from atomicspi import __version__

    return {
        "config": dataclasses.asdict(config),
        "versions": {"atomicspi": __version__, "jax": jax.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()},
        "n_particles": len(prepared.dataset),
        "box_size": prepared.dataset.box_size,
        "pixel_size_in_angstroms": prepared.dataset.pixel_size_in_angstroms,
        "samples_per_particle": config.samples_per_particle,
        "output_atoms": config.output_atoms,
        "timings": timings,
        "images_per_second": result.images_per_second,
        "final_elbo": float(np.nanmean(result.elbo_history[-max(1, len(result.elbo_history) // 20):])),
        "skipped_steps": int(result.state.skipped_steps),
        "global_posterior_means": {name: np.asarray(v).mean(axis=0) for name, v in posterior.global_.items()},
        **diagnostics,
    }


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def write_particles_star(config, prepared: Prepared, posterior: Posterior) -> None:
    """`particles.star`, in input order, with each particle's posterior summaries as extra columns:
    per local site, entry k's mean and standard deviation over the draws (`atomicspiZ1`,
    `atomicspiZ1StandardDeviation`, ...); with a landscape, the coordinates' (`atomicspiCoordinate1`,
    ...) and the most probable state of `states.json` with its probability (`atomicspiState`, −1 for
    none; `atomicspiStateProbability`); with `poses: infer` or `search`, the posterior mean poses as
    `rlnAngleRot/Tilt/Psi` and `rlnOriginX/YAngst` (replacing the input's) with
    `atomicspiAngularSpread` (degrees, 90 %) and the origins' standard deviations. For a RELION input
    it holds the input's tables (columns and order kept); for a cryoSPARC `.cs` or a bare stack, a
    RELION 3.1 file written afresh from the dataset, referring to the input's stacks."""
    from atomicspi.io import write_relion_star, write_star_with_columns

    poses = posterior.poses
    replaced: dict[str, np.ndarray] = {}
    if poses is not None:
        from atomicspi.conventions import matrix_to_euler_angles

        angles = np.asarray(matrix_to_euler_angles(poses.rotations), dtype=np.float64)
        replaced = {
            "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": -poses.shifts_in_angstroms[:, 0], "rlnOriginYAngst": -poses.shifts_in_angstroms[:, 1],
            "atomicspiAngularSpread": poses.angular_spread_in_degrees,
            "atomicspiOriginXAngstStandardDeviation": poses.shift_standard_deviation_in_angstroms[:, 0],
            "atomicspiOriginYAngstStandardDeviation": poses.shift_standard_deviation_in_angstroms[:, 1],
        }
    columns = {}
    for name, values in posterior.local.items():
        flat = np.asarray(values, dtype=np.float64).reshape(values.shape[0], values.shape[1], -1)
        for k in range(flat.shape[-1]):
            columns[f"atomicspi{_camel(name)}{k + 1}"] = flat[:, :, k].mean(axis=1)
            columns[f"atomicspi{_camel(name)}{k + 1}StandardDeviation"] = flat[:, :, k].std(axis=1, ddof=1) if flat.shape[1] > 1 else 0.0 * flat[:, 0, k]
    landscape = prepared.output / "landscape.npz"
    if landscape.is_file():
        with np.load(landscape) as arrays:
            for k in range(arrays["particle_coordinate_mean"].shape[1]):
                columns[f"atomicspiCoordinate{k + 1}"] = arrays["particle_coordinate_mean"][:, k]
                columns[f"atomicspiCoordinate{k + 1}StandardDeviation"] = arrays["particle_coordinate_standard_deviation"][:, k]
            state = arrays["particle_state"]
            probabilities = arrays["particle_state_probabilities"]
            columns["atomicspiState"] = state
            columns["atomicspiStateProbability"] = np.where(state >= 0, probabilities[np.arange(len(state)), np.maximum(state, 0)], 0.0)
    path = prepared.output / "particles.star"
    if pathlib.Path(config.particles).suffix != ".star":
        dataset = prepared.dataset
        if poses is not None:
            dataset = dataclasses.replace(dataset, rotations=poses.rotations, shifts_in_angstroms=poses.shifts_in_angstroms)
        extra = {label: values for label, values in {**replaced, **columns}.items() if label.startswith("atomicspi")}
        write_relion_star(path, dataclasses.replace(dataset, extra_columns={**dataset.extra_columns, **extra}))
        return
    write_star_with_columns(
        config.particles, path, columns, datadir=config.datadir,
        replaced=replaced, dropped=("rlnOriginX", "rlnOriginY") if poses is not None else (),
    )


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def run_inference(config, resume: bool = False, progress: bool = True) -> pathlib.Path:
    """Run the inference described by a validated `DatasetConfig` and write its output folder.

    With several processes (`jax.distributed` initialised, every process calling `run_inference`
    with the same config), they train together, then shut `jax.distributed` down; process 0 alone
    draws the posterior and writes the output folder, the others return at once, writing nothing.

    **Returns:** the output folder, holding `topology.pdb`, `ensemble_mean.dcd`,
    `ensemble_samples.dcd`, `posterior.nc`, `run.json`, `elbo.png`, `fits.png`, the landscape
    products, and for a RELION input `particles.star` (its tables with posterior summaries). For a
    family without atoms (`model: volume`) no topology, ensembles or landscape, and the family's
    files instead (`map.mrc`, half maps, `fsc.png`; `run.json`'s `outputs` says so).
    """
    from atomicspi._outputs import write_run_record

    family, key = FAMILIES[config.model], jax.random.key(config.seed)
    timings: dict[str, float] = {}
    with _timed(timings, "setup_seconds"):
        prepared = prepare(config)
        setup = set_up(config, prepared, family, key=key)
    with _timed(timings, "training_seconds"):
        result = train(config, prepared, setup, resume=resume, progress=progress)
    if jax.process_count() > 1:  # the rest runs in process 0 alone, on its copy of the parameters
        result = result._replace(parameters=jax.tree_util.tree_map(jnp.asarray, jax.device_get(result.parameters)))
        jax.distributed.shutdown()
        if jax.process_index() != 0:
            return prepared.output
    with _timed(timings, "posterior_seconds"):
        posterior = draw(config, prepared, setup, result.parameters, key=key)
        if family.has_atoms:
            outputs = write(config, prepared, posterior)
        else:  # a map: its files instead of ensembles (`ModelFamily.write_outputs`)
            posterior, outputs = _write_without_atoms(config, prepared, setup, posterior, result.parameters)
    _write_figures(config, prepared, posterior, result.elbo_history, fits=family.has_atoms)
    if prepared.pose_search is not None:
        timings["pose_search_seconds"] = prepared.pose_search_seconds
    record = _run_record(config, prepared, result, posterior, {**setup.diagnostics, **posterior.diagnostics, "outputs": outputs}, timings)
    if prepared.pose_search is not None:
        record["pose_search"] = _write_pose_search(prepared)
    write_run_record(prepared.output / "run.json", record)
    if family.landscape_coordinate is not None:
        from atomicspi.products import run_products

        with _timed(timings, "products_seconds"):
            # Structural coordinates need every draw's structure: without ensemble_samples.dcd (over the
            # output budget) the products fall back to the posterior's own variables.
            coordinate = family.landscape_coordinate if outputs["ensemble_samples_written"] else None
            if "path_position_in_angstroms" in posterior.local:  # the exact posterior along the curve (path_nodes)
                coordinate = "path:0"
            run_products(prepared.output, cv=coordinate, seed=config.seed)
        write_run_record(prepared.output / "run.json", record)
    write_particles_star(config, prepared, posterior)
    return prepared.output
