"""`model: deformation`: a latent z per particle, decoded into a structure."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from atomicspi._batches import ctf_parameters

from ._family import FittedModel, ModelFamily, ModelSetup

__all__ = ["Deformation"]

_LINEAR_START_PARTICLES = 1024


def _noise_std_in_band(context, indices: np.ndarray, box_size: int, pixel_size_in_angstroms: float, resolution_in_angstroms: float) -> float:
    """The per-pixel white-noise level `principal_motions` should assume: `noise_std_guess` for
    white noise; with coloured noise, the root-mean-square of the noise spectrum over the frequencies
    it fits (below `resolution_in_angstroms`, `k = 0` left out) for the particles `indices`, where a
    falling spectrum is above its mean."""
    from atomicspi.microscope import rfft_frequencies
    from atomicspi.models import noise_power_on_grid

    noise_std = context.options.noise_std_guess
    if context.noise_power_spectrum is None:
        return noise_std
    frequencies = np.asarray(rfft_frequencies(box_size, pixel_size_in_angstroms))
    band = np.linalg.norm(frequencies, axis=-1) <= 1.0 / resolution_in_angstroms
    band[0, 0] = False
    power = np.asarray(noise_power_on_grid(context, box_size, jnp.asarray(indices)))
    return float(noise_std * np.sqrt(np.mean(power[..., band])))


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
        np.asarray(batch.shifts_in_angstroms), ctf_parameters(batch.ctf), context.options.contrast_guess,
        _noise_std_in_band(context, batch.indices, dataset.box_size, dataset.pixel_size_in_angstroms, resolution),
        context.options.latent_dim, resolution_in_angstroms=resolution,
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


def _fitted_decoder(fitted: FittedModel):
    """The trained decoder: learned weights in the initial module's structure."""
    import equinox as eqx

    initial = fitted.model_arguments["decoder"]
    return eqx.combine(fitted.parameters["decoder$params"], eqx.partition(initial, eqx.is_inexact_array)[1])


def _path_posterior_draws(config, fitted: FittedModel, local: dict, global_: dict, *, key) -> tuple[dict, dict, FittedModel]:
    """Every particle's exact posterior along the principal curve of the latent means
    (`atomicspi.inference.path_posterior`), after `_CURVE_REFINEMENTS` rounds of EM that move the
    decoder so the curve's structures fit the particles their posteriors place on it
    (`atomicspi.inference.refine_curve`): its draws replace the guide's z, `path_position_in_angstroms`
    (the position along the curve) joins the local draws, and the refined decoder the parameters.

    Before the refinement the decoder gains finer fields (`Decoder.with_fine_fields`: the rigid
    motions of blocks of `_CURVE_FINE_BEADS_PER_BLOCK` beads, starting at zero), so the curve can
    follow deformations inside the training's blocks: on the adaptive-ANM benchmark the blocks of 12
    beads alone cannot come within 1.1 Å of the open state, blocks of 4 within 0.6 Å. The fine
    fields take their own Adam step (`_CURVE_FINE_LEARNING_RATE`, 1e-2 against the decoder's 3e-3)
    and every step falls along a cosine within each round (`_CURVE_FINAL_LEARNING_RATE_SHARE`).

    The curve is smooth (`_CURVE_BANDWIDTH_IN_NODES`, running lines): at a kernel of 2 node spacings
    it snaked through each state's cloud of latent means, so at the states' centres it spent its
    length on excursions off the path (the images' noise in the latent's other directions), and the
    particles there were placed too close to the centre, too confidently."""
    import equinox as eqx

    from atomicspi.inference import (
        arc_lengths,
        contrast_grid,
        curve_explained_variance,
        curve_grid,
        curve_image_statistics,
        extend_curve_along_structure,
        fit_node_structures,
        grid_log_likelihoods,
        grid_posterior_weights,
        node_responsibilities,
        path_population,
        path_posterior,
        posterior_windows,
        principal_curve,
        refine_curve,
        residual_power_ratio,
        unfolded_curve_structures,
        weighted_inner_product,
    )
    from atomicspi.microscope import axis_angle_to_matrix
    from atomicspi.models import decoded_structure, image_model_of, inverse_noise_power, render_images, with_envelope
    from atomicspi.structure import bead_turn_basis, block_rigid_basis, carried_block_rigid_basis

    started = time.perf_counter()
    means = np.asarray(local["z"], dtype=np.float64).mean(axis=1)
    nodes = principal_curve(means, config.path_nodes, bandwidth_in_nodes=_CURVE_BANDWIDTH_IN_NODES,
                            extension=0.0 if _CURVE_EXTEND_ALONG_STRUCTURE else _CURVE_EXTENSION, running_lines=_CURVE_RUNNING_LINES)
    context = fitted.model_arguments["context"]
    decoder = _fitted_decoder(fitted)
    if _CURVE_EXTEND_ALONG_STRUCTURE:  # the ends run on where the decoded structures were heading
        nodes = extend_curve_along_structure(nodes, lambda z: decoded_structure(context, decoder, z)[0], _CURVE_EXTENSION)
    explained = curve_explained_variance(means, nodes)
    if explained < _PATH_EXPLAINED_VARIANCE_WARNING:
        print(f"path posterior: warning: the principal curve explains only {explained:.2f} of the latent means' variance; "
              "if the particles move in more than one independent way, set path_nodes: 0 to keep the guide's latent draws",
              file=sys.stderr)
    if _CURVE_FINE_BEADS_PER_BLOCK and decoder.rigid_blocks is not None:
        # finer blocks' motions on top of the decoder's, refined along the curve only
        beads = np.asarray(context.bead_positions_in_angstroms)
        fine_basis = block_rigid_basis(beads, _CURVE_FINE_BEADS_PER_BLOCK)
        atom_positions, atom_to_bead = np.asarray(context.reference_positions_in_angstroms), np.asarray(context.atom_to_bead)
        atom_basis = carried_block_rigid_basis(beads, _CURVE_FINE_BEADS_PER_BLOCK, atom_positions, atom_to_bead) if _CURVE_FINE_ATOMS_TURN else None
        if _CURVE_RESIDUE_TURNS:  # and each residue's atoms turning about its bead
            carried = atom_basis if atom_basis is not None else fine_basis[:, atom_to_bead]
            atom_basis = np.concatenate([carried, bead_turn_basis(beads, atom_positions, atom_to_bead)])
        decoder = decoder.with_fine_fields(fine_basis, key=jax.random.fold_in(key, 1), atom_basis=atom_basis)
    weights_of, static = eqx.partition(decoder, eqx.is_inexact_array)
    image_model = image_model_of(context)
    box_size = image_model.box_size
    nodes_j = jnp.asarray(nodes, dtype=jnp.float32)
    corrections = {name: np.asarray(local[name]).mean(axis=1) for name in ("rotation_correction", "shift_correction") if name in local}
    noise_std = float(np.median(np.asarray(global_["noise_std"]))) if "noise_std" in global_ else context.options.noise_std_guess
    contrast_log_mean = float(np.log(context.options.contrast_guess))
    # the learned envelope (`learn_envelope`), at its posterior median
    envelope = float(np.median(np.asarray(global_["envelope_b_factor"]))) if "envelope_b_factor" in global_ else 0.0

    def decode(parameters, z):
        return decoded_structure(context, eqx.combine(parameters, static), z)

    decode_many = jax.vmap(decode, in_axes=(None, 0))  # (parameters, latents (m, d)) → beads, atoms (m, ...)
    decode_many_jit = jax.jit(decode_many)
    unfolded: dict[str, Any] = {"nodes": []}
    if _CURVE_UNFOLD_ENDS and decoder.fine_map is not None:
        # where the decoded structures fold back near an end, the fine fields continue them straight
        targets, folded = unfolded_curve_structures(np.asarray(decode_many_jit(weights_of, nodes_j)[0]))
        if folded.any():
            trainable = eqx.tree_at(
                lambda d: d.fine_map, jax.tree_util.tree_map(lambda _: False, weights_of),
                replace_fn=lambda m: jax.tree_util.tree_map(lambda _: True, m),
            )
            weights_of, rms = fit_node_structures(weights_of, lambda p: decode_many(p, nodes_j)[0], targets, trainable=trainable)
            unfolded = {"nodes": np.flatnonzero(folded).tolist(), "rms_from_targets_in_angstroms": rms}

    def render_each(atoms, batch):  # (B, n_atoms, 3): one structure per particle
        rotations, shifts = batch["rotations"], batch["shifts_in_angstroms"]
        if corrections:  # the posterior-mean pose corrections of `poses: infer` / `search`
            rotations = jax.vmap(axis_angle_to_matrix)(batch["rotation_correction"]) @ rotations
            shifts = shifts + batch["shift_correction"]
        return render_images(image_model, atoms, rotations, shifts, with_envelope(ctf_parameters(batch), envelope))

    def batches():
        for count, batch in fitted.ordered():
            extra = {name: values[np.asarray(batch["indices"])].astype(np.float32) for name, values in corrections.items()}
            yield count, {**batch, **extra}

    def model_inverse_power(batch):
        return inverse_noise_power(context, box_size, batch["indices"])

    # the residual power over the noise model's, per frequency shell (`residual_power_ratio`): 1 until measured
    noise_ratio = jnp.ones((box_size, box_size // 2 + 1), dtype=jnp.float32)

    def inverse_power(batch):
        return model_inverse_power(batch) / noise_ratio

    contrasts = jnp.asarray(contrast_grid(contrast_log_mean, _CONTRAST_LOG_STD, _CONTRASTS), dtype=jnp.float32)

    def node_log_likelihoods(parameters, batch, node_indices):
        images = jnp.fft.rfft2(batch["images"])
        weights = inverse_power(batch)

        def one(column):
            _, atoms = decode_many(parameters, nodes_j[column])  # (B, n_atoms, 3)
            rendered = jnp.fft.rfft2(render_each(atoms, batch))
            cross = weighted_inner_product(weights, images, rendered)
            energy = weighted_inner_product(weights, rendered, rendered)
            terms = (contrasts * cross[:, None] - 0.5 * contrasts**2 * energy[:, None]) / noise_std**2
            return jax.scipy.special.logsumexp(terms, axis=-1)

        return jax.vmap(one, in_axes=1, out_axes=1)(node_indices)

    stage_seconds: list[tuple[str, float]] = []  # (stage, seconds it took)

    def timed(stage, begun):
        stage_seconds.append((stage, round(time.perf_counter() - begun, 1)))

    def likelihoods_on_curve(parameters, windows=None):
        """log p(image | grid point) `(n, G)` under the decoder `parameters`."""
        print(f"path posterior: the images' likelihoods on the curve ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        begun = time.perf_counter()
        _, node_atoms = decode_many_jit(parameters, nodes_j)
        statistics = curve_image_statistics(
            render_each, inverse_power, node_atoms, batches(), starts=None if windows is None else windows[0],
            window=None if windows is None else windows[1],
        )
        log_likelihood = grid_log_likelihoods(
            statistics, substeps=_PATH_SUBSTEPS, noise_std=noise_std, contrast_log_mean=contrast_log_mean,
            contrast_log_std=_CONTRAST_LOG_STD, n_contrasts=_CONTRASTS,
        )
        timed(f"likelihoods on {statistics.cross.shape[1]} nodes per particle", begun)
        return log_likelihood

    log_likelihood = likelihoods_on_curve(weights_of)
    population = path_population(log_likelihood)
    if _CURVE_RESIDUAL_NOISE:
        # Noise as the images have it after the fit: its power per frequency shell, over the noise model's.
        begun = time.perf_counter()
        _, node_atoms = decode_many_jit(weights_of, nodes_j)
        best = np.argmax(grid_posterior_weights(log_likelihood, population), axis=1)
        noise_ratio = jnp.asarray(residual_power_ratio(
            render_each, model_inverse_power, node_atoms, batches(), best, substeps=_PATH_SUBSTEPS, noise_std=noise_std,
        ), dtype=jnp.float32)
        timed("residual power by shell", begun)  # used from the first refinement on
    # Adam's step: the fine fields may take their own (they start at zero and have the furthest to go)
    learning_rates: Any = _CURVE_LEARNING_RATE
    if decoder.fine_map is not None and _CURVE_FINE_LEARNING_RATE != _CURVE_LEARNING_RATE:
        learning_rates = eqx.tree_at(
            lambda d: d.fine_map, jax.tree_util.tree_map(lambda _: _CURVE_LEARNING_RATE, weights_of),
            replace_fn=lambda m: jax.tree_util.tree_map(lambda _: _CURVE_FINE_LEARNING_RATE, m),
        )
    losses = []
    for round_ in range(_CURVE_REFINEMENTS):
        print(f"path posterior: refining the curve, round {round_ + 1} of {_CURVE_REFINEMENTS} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)
        begun = time.perf_counter()
        weights = grid_posterior_weights(log_likelihood, population)
        weights_of, history = refine_curve(
            weights_of, node_log_likelihoods, node_responsibilities(weights, len(nodes)), batches, n_epochs=_CURVE_EPOCHS,
            learning_rate=learning_rates, final_learning_rate_share=_CURVE_FINAL_LEARNING_RATE_SHARE,
        )
        timed(f"refinement round {round_ + 1}", begun)
        losses.append(history)
        # After the first pass each particle's posterior spans a few nodes: only those are rendered again.
        log_likelihood = likelihoods_on_curve(weights_of, posterior_windows(weights, len(nodes), min(_PATH_WINDOW, len(nodes))))
        population = path_population(log_likelihood)
    beads, _ = decode_many_jit(weights_of, jnp.asarray(curve_grid(nodes, _PATH_SUBSTEPS), dtype=jnp.float32))
    arc = arc_lengths(np.asarray(beads) + np.asarray(context.bead_positions_in_angstroms)[None])
    samples_per_particle = local["z"].shape[1]
    result = path_posterior(log_likelihood, nodes, arc, samples_per_particle, key=key, population=population)
    local = {**local, "z": result.draw_latents.astype(local["z"].dtype),
             "path_position_in_angstroms": result.draws_in_angstroms.astype(np.float32)}
    parameters = {**fitted.parameters, "decoder$params": weights_of}
    diagnostics = {
        "nodes": config.path_nodes,
        "explained_variance": explained,
        "node_latents": nodes.tolist(),
        "unfolded_ends": unfolded,
        "substeps": _PATH_SUBSTEPS,
        "refinements": _CURVE_REFINEMENTS,
        "fine_beads_per_block": _CURVE_FINE_BEADS_PER_BLOCK if decoder.fine_map is not None else 0,
        "refinement_learning_rates": {"decoder": _CURVE_LEARNING_RATE, "fine_fields": _CURVE_FINE_LEARNING_RATE,
                                      "final_share": _CURVE_FINAL_LEARNING_RATE_SHARE},
        "refinement_losses": losses,
        "residual_power_ratio_by_shell": np.asarray(noise_ratio)[0].round(4).tolist(),
        "length_in_angstroms": float(arc[-1]),
        "noise_std": noise_std,
        "envelope_b_factor_in_angstroms_squared": envelope,
        "population": result.population.tolist(),
        "arc_length_in_angstroms": arc.tolist(),
        "median_interval_width_in_angstroms": float(np.median(result.high_in_angstroms - result.low_in_angstroms)),
        "stage_seconds": stage_seconds,
        "seconds": time.perf_counter() - started,
    }
    # the refined weights, and the decoder's structure (with its fine fields) they belong to
    refined = {"decoder": eqx.combine(weights_of, static)}
    return local, diagnostics, fitted._replace(parameters=parameters, model_arguments={**fitted.model_arguments, **refined})


_PATH_EXPLAINED_VARIANCE_WARNING = 0.6  # under this share of the latent means' variance, a warning (0.72-0.76 on the one-dimensional benchmark motions; 0.81-0.82 with the snaking curve of bandwidth 2)
_CURVE_BANDWIDTH_IN_NODES = 4.0  # the principal curve's kernel width in node spacings (2: the curve snaked through each state's cloud of latent means; the means' rms distance from the curve is ≈ 4 spacings on both benchmarks, so shorter bends are their noise; bench/RESULTS.md, sixteenth session)
_CURVE_RUNNING_LINES = True  # the principal curve's nodes are local straight-line fits, not local means (which cut a wide kernel's ends short)
_CURVE_EXTEND_ALONG_STRUCTURE = False  # the curve's ends run on straight in structure (extend_curve_along_structure), not in the latent
_CURVE_UNFOLD_ENDS = False  # where the decoded curve folds back near an end, the fine fields first continue it straight (unfolded_curve_structures)
_CURVE_EXTENSION = 0.25  # the curve runs on past the extreme latent means by this share of its length at each end (0.1: the path ends were cut off, bench/RESULTS.md)
_PATH_SUBSTEPS = 8  # grid points per interval between the curve's nodes
_PATH_WINDOW = 10  # at least this many nodes rendered per particle after the first pass (posterior_windows)
_CONTRAST_LOG_STD = 0.5  # the contrast prior's (models' observe_images)
_CONTRASTS = 41  # equal-mass grid the contrast is marginalised on
_CURVE_REFINEMENTS = 2  # EM rounds that move the decoder along the curve (the second: coverage +0.02 on both benchmarks)
_CURVE_EPOCHS = 3  # passes over the particles per round
_CURVE_LEARNING_RATE = 3e-3  # Adam's step for the decoder's weights in those rounds
_CURVE_FINE_LEARNING_RATE = 1e-2  # Adam's step for the fine fields' MLP (3e-2: the CI-sized stack's open state fitted noise; bench/RESULTS.md, fifteenth session)
_CURVE_FINAL_LEARNING_RATE_SHARE = 0.03  # the steps fall along a cosine to this share of their rate within each round (1: constant)
_CURVE_RESIDUAL_NOISE = True  # the likelihood along the curve counts the residual power per frequency shell as noise (residual_power_ratio)
_CURVE_FINE_ATOMS_TURN = True  # the fine fields move each atom with its block's rigid motion (False: by its bead's displacement)
_CURVE_RESIDUE_TURNS = False  # the fine fields also turn each residue's atoms about its bead (bead_turn_basis)
_CURVE_FINE_BEADS_PER_BLOCK = 4  # rigid motions of blocks of this many beads added to the decoder along the curve (0: none; bench/RESULTS.md, thirteenth session)


class Deformation(ModelFamily):
    """`deformation`: z ~ N(0, I) times the elastic prior of its decoded structure
    (`atomicspi.models.deformation`); the decoder's weights are point estimates.

    Before training, without hand-given domains, the decoder starts along the images' principal
    motions (`_linear_start`). After it, optionally, importance resampling (`importance_proposals`)
    and, by default, mode relocation (`mode_candidates`) correct the guide's unimodal draws.
    """

    name = "deformation"
    uses_domains = True

    @property
    def model(self):
        from atomicspi.models import deformation

        return deformation

    def local_sites(self, context) -> dict:
        from atomicspi.inference import LocalSite

        # Diagonal: with a full covariance (Cholesky or low-rank form) the full-size benchmark's
        # training diverged (non-finite losses after 400–800 steps); the diagonal one did not.
        sites = {"z": LocalSite(jnp.ones(context.options.latent_dim), covariance="diagonal")}
        if context.options.fluctuation_fields:  # a particle's own block field (set_up sets the count)
            sites["fluctuation"] = LocalSite(jnp.ones(context.options.fluctuation_fields), covariance="diagonal")
        return sites

    def global_sites(self, context) -> dict:
        from atomicspi.inference import GlobalSite

        return {"fluctuation_log_scale": GlobalSite(())} if context.options.fluctuation_fields else {}

    def set_up(self, config, dataset, context, *, key) -> ModelSetup:
        from atomicspi.models import Decoder
        from atomicspi.structure import BlockRigidMotion, block_rigid_basis

        basis = blocks = None
        if config.decoder_beads_per_block:
            beads = np.asarray(context.bead_positions_in_angstroms)
            basis = block_rigid_basis(beads, config.decoder_beads_per_block)
            blocks = BlockRigidMotion(beads, config.decoder_beads_per_block)
        decoder = Decoder(context.options.latent_dim, context.n_beads, key=key, basis=basis, rigid_blocks=blocks)
        if basis is not None and context.options.particle_fluctuation_in_angstroms is not None:
            options = dataclasses.replace(context.options, fluctuation_fields=int(basis.shape[0]))
            context = dataclasses.replace(context, options=options)
        diagnostics = {}
        if not config.domains:  # no hinges given: start from the motions the images show
            decoder, context, diagnostics["linear_start"] = _linear_start(dataset, context, decoder)
        return ModelSetup(context, {"decoder": decoder}, diagnostics)

    def refined_draws(self, config, fitted: FittedModel, local: dict, global_: dict, *, key) -> tuple[dict, dict, FittedModel]:
        from atomicspi.inference import relocated_modes

        from ._resampling import importance_resampled

        diagnostics = {}
        if config.importance_proposals:
            # The mean-field q(z) ignores correlations between latent dimensions: where importance
            # weights against the model's own posterior are reliable, those draws replace the guide's.
            local, diagnostics["importance_resampling"] = importance_resampled(
                fitted, local, key=jax.random.fold_in(key, 4), site="z", n_proposals=config.importance_proposals
            )
        if config.mode_candidates:
            # Particles whose unimodal q(z) stayed in the wrong basin move to the better mode.
            shifts, relocated, gains = relocated_modes(
                fitted.model, fitted.guide, fitted.parameters, fitted.ordered,
                key=jax.random.fold_in(key, 5), model_arguments=fitted.model_arguments, n_candidates=config.mode_candidates,
            )
            local = {**local, "z": local["z"] + shifts[:, None, :].astype(local["z"].dtype)}
            diagnostics["relocated_modes"] = {
                "candidates": config.mode_candidates,
                "share_of_particles_relocated": float(np.mean(relocated)),
                "median_log_joint_gain_in_nats": float(np.median(gains[relocated])) if np.any(relocated) else 0.0,
            }
        if config.path_nodes:
            local, diagnostics["path_posterior"], fitted = _path_posterior_draws(
                config, fitted, local, global_, key=jax.random.fold_in(key, 6)
            )
        return local, diagnostics, fitted

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        from atomicspi.models import deformation_positions, fluctuation_field, fluctuation_scale

        context = fitted.model_arguments["context"]
        decoder = _fitted_decoder(fitted)
        if "fluctuation" in local:
            # each draw's own fluctuation, at the posterior median of its scale
            scale = fluctuation_scale(context, decoder) * float(np.exp(np.median(np.asarray(global_["fluctuation_log_scale"]))))

            def positions_of(z, standardised):
                return deformation_positions(context, decoder, z) + fluctuation_field(context, decoder, scale * standardised)

            decode = jax.jit(positions_of)
        else:
            decode = jax.jit(lambda z, _: deformation_positions(context, decoder, z))

        def of(particles):
            standardised = local["fluctuation"][particles] if "fluctuation" in local else None
            samples = np.asarray(decode(jnp.asarray(local["z"][particles]), standardised))
            return samples.mean(axis=1), samples

        return of
