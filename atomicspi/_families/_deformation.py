"""`model: deformation`: a latent z per particle, decoded into a structure."""

from __future__ import annotations

import dataclasses
import time

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

    def refined_draws(self, config, fitted: FittedModel, local: dict, *, key) -> tuple[dict, dict]:
        from atomicspi.inference import importance_resampled_draws, relocated_modes

        diagnostics = {}
        samples_per_particle = local["z"].shape[1]
        if config.importance_proposals:
            # The mean-field q(z) ignores correlations between latent dimensions: where importance
            # weights against the model's own posterior are reliable (an effective sample size of at
            # least half the draws), those draws replace the guide's.
            resampled, effective_sample_sizes = importance_resampled_draws(
                fitted.model, fitted.guide, fitted.parameters, (batch for _, batch in fitted.ordered()), samples_per_particle,
                key=jax.random.fold_in(key, 4), model_arguments=fitted.model_arguments, local_sites=list(local),
                n_proposals=config.importance_proposals,
            )
            effective_sample_sizes = effective_sample_sizes[fitted.keep]
            chosen = effective_sample_sizes >= 0.5 * samples_per_particle
            local = dict(local)
            for name, values in resampled.items():
                values = values[fitted.keep]
                local[name] = np.where(chosen.reshape(-1, *([1] * (values.ndim - 1))), values, local[name])
            diagnostics["importance_resampling"] = {
                "proposals_per_particle": config.importance_proposals,
                "effective_sample_size_median": float(np.median(effective_sample_sizes)),
                "effective_sample_size_10th_percentile": float(np.percentile(effective_sample_sizes, 10)),
                "share_of_particles_resampled": float(np.mean(chosen)),
            }
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
        return local, diagnostics

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        import equinox as eqx

        from atomicspi.models import deformation_positions, fluctuation_field, fluctuation_scale

        context = fitted.model_arguments["context"]
        initial = fitted.model_arguments["decoder"]  # the fitted decoder: learned weights, the initial module's structure
        decoder = eqx.combine(fitted.parameters["decoder$params"], eqx.partition(initial, eqx.is_inexact_array)[1])
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
