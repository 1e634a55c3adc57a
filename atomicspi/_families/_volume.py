"""`model: volume`: a density map fitted to the images at their poses, no atomic model (issue 16)."""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ._family import FittedModel, ModelFamily, ModelSetup

__all__ = ["Volume"]

_N_HALVES = 2  # independent half maps, particle i fitting map i mod 2 (the gold-standard FSC)
_PRIOR_IMAGES = 2048  # images whose half-set reconstructions set the map's prior (`Volume.set_up`)
_FITS_SHOWN = 4
# The whitened Hartley coefficients' guide (`atomicspi.models.volume`): Adam moves their mean by about
# unit × the learning rate a step, and they are O(1) (the prior is N(0, 1)). On the 300 images of
# tests/test_volume_family.py (SNR 1, 32², batches of 32) unit 10 converged in 150 steps at 5e-3,
# 250 at 3e-3 and within the default 2,000 at 1e-3 (600 steps: FSC 0.143 with the truth at 5.12 Å,
# the exact MAP's 5.18 Å); the cosine decay takes the steps' noise down with the learning rate.
_VOLUME_UNIT = 10.0
_VOLUME_INITIAL_SCALE = 0.1


class Volume(ModelFamily):
    """`volume`: the map's whitened Hartley coefficients are a global site (`atomicspi.models.volume`,
    two half maps); no atoms, so no ensembles, landscape or products: the run writes `map.mrc`, the
    half maps and their Fourier shell correlation instead (`write_outputs`)."""

    name = "volume"
    landscape_coordinate = None
    has_atoms = False

    @property
    def model(self):
        from atomicspi.models import volume

        return volume

    def local_sites(self, context) -> dict:
        return {}

    def global_sites(self, context) -> dict:
        from atomicspi.inference import GlobalSite

        size = context.image_model.box_size
        return {"volume": GlobalSite((_N_HALVES, size, size, size), _VOLUME_INITIAL_SCALE, _VOLUME_UNIT)}

    def set_up(self, config, dataset, context, *, key) -> ModelSetup:
        """The map's prior `τ` (`atomicspi.models.prior_standard_deviation_from_half_maps`) from the
        direct Fourier reconstructions (`atomicspi.products.backproject`, CTF-corrected, shifts
        undone) of the first images of even and of odd index, over the context's contrast; passed to
        the model as `decoder`. Their FSC goes to `run.json` (`volume_prior`) as a reference."""
        from atomicspi.models import VoxelDensity, prior_standard_deviation_from_half_maps
        from atomicspi.products import fourier_shell_correlation, resolution_at

        image_model = context.image_model
        size, pixel = image_model.box_size, image_model.pixel_size_in_angstroms
        indices = np.arange(min(_PRIOR_IMAGES, len(dataset)))
        halves = [_backprojection(dataset, indices[indices % _N_HALVES == h], size, pixel) for h in range(_N_HALVES)]
        halves = [half / context.options.contrast_guess for half in halves]
        amplitude = prior_standard_deviation_from_half_maps(halves[0], halves[1])
        density = VoxelDensity(jnp.asarray(amplitude, dtype=jnp.float32), size, pixel, n_halves=_N_HALVES)
        frequencies, fsc = fourier_shell_correlation(halves[0], halves[1], pixel)
        resolution = resolution_at(frequencies, fsc, 0.143)
        diagnostics = {"volume_prior": {
            "standard_deviation_per_shell": amplitude.tolist(), "images": len(indices),
            "shell_frequencies_in_inverse_angstroms": frequencies.tolist(),
            "backprojection_fsc": fsc.tolist(),
            "backprojection_resolution_at_0.143_in_angstroms": resolution if math.isfinite(resolution) else None,
        }}
        return ModelSetup(context, {"decoder": density}, diagnostics)

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        def of(particles):
            raise ValueError("model volume has no atoms: there are no atom positions")

        return of

    def write_outputs(self, config, dataset, output: pathlib.Path, parameters: dict, model_arguments: dict, local: dict) -> dict:
        """`map.mrc` (the mean of the half maps), `half_map_1.mrc`, `half_map_2.mrc` (the posterior
        mean maps of the particles of even and odd index, each times its particles' mean contrast),
        `fsc.png` (their Fourier shell correlation, with the 0.143 and 0.5 levels) and `fits.png`
        (the first particles beside their half map's projection times their posterior median
        contrast)."""
        from atomicspi._batches import ctf_parameters, flat_batch
        from atomicspi._outputs import plot_fits
        from atomicspi.products import fourier_shell_correlation, resolution_at, write_map

        density = model_arguments["decoder"]
        pixel = density.pixel_size_in_angstroms
        whitened = _VOLUME_UNIT * jnp.asarray(parameters["volume_loc"])
        maps = density.maps(whitened)
        # The images fix the product of the map and each particle's contrast, the priors their split
        # (measured: the contrast drifted to 1.49 and the map to 0.65 of the truth, product 0.97). Each
        # half map is written times its particles' mean contrast over the contrast's prior median: in
        # the unit that median converts to the images' (V when a reference gave it, the images' unit
        # per Å without one, median 1), for a particle of mean contrast.
        contrast = np.asarray(local["contrast"], dtype=np.float64).mean(axis=1) if "contrast" in local else np.ones(len(dataset))
        contrast = contrast / model_arguments["context"].options.contrast_guess
        particle_halves = np.arange(len(contrast)) % density.n_halves
        scales = np.array([contrast[particle_halves == h].mean() if np.any(particle_halves == h) else 1.0 for h in range(density.n_halves)])
        halves = np.asarray(maps, dtype=np.float64) * scales[:, None, None, None]
        write_map(output / "map.mrc", halves.mean(axis=0), pixel)
        names = [f"half_map_{h + 1}.mrc" for h in range(len(halves))]
        for name, half in zip(names, halves):
            write_map(output / name, half, pixel)
        frequencies, fsc = fourier_shell_correlation(halves[0], halves[1], pixel)
        resolutions = {level: resolution_at(frequencies, fsc, level) for level in (0.143, 0.5)}
        _plot_fsc(output / "fsc.png", frequencies, fsc, resolutions)

        shown = min(_FITS_SHOWN, len(dataset))
        first = flat_batch(dataset.batch(np.arange(shown)))
        rendered = density.render(
            maps, density.half_of(jnp.arange(shown), shown), jnp.asarray(first["rotations"]),
            jnp.asarray(first["shifts_in_angstroms"]), ctf_parameters(first),
        )
        shown_contrast = np.median(local["contrast"][:shown], axis=1) if "contrast" in local else np.ones(shown)
        plot_fits(output / "fits.png", np.asarray(first["images"]), np.asarray(rendered) * shown_contrast[:, None, None], pixel)

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "map": "map.mrc", "half_maps": names, "voxel_size_in_angstroms": pixel, "box_size": density.box_size,
            "halves": "particle index (input order) mod 2", "half_map_contrast_scales": scales.tolist(),
            "fsc": {
                "file": "fsc.png", "frequencies_in_inverse_angstroms": frequencies.tolist(), "fsc": fsc.tolist(),
                "resolution_at_0.143_in_angstroms": finite(resolutions[0.143]),
                "resolution_at_0.5_in_angstroms": finite(resolutions[0.5]),
            },
        }


def _plot_fsc(path: pathlib.Path, frequencies: np.ndarray, fsc: np.ndarray, resolutions: dict) -> None:
    """The half maps' FSC against frequency, with the 0.143 and 0.5 levels and their resolutions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(frequencies, fsc, marker=".", lw=1.2, label="half maps")
    for level, style in ((0.143, ":"), (0.5, "--")):
        resolution = resolutions[level]
        label = f"{level:g}: {resolution:.2f} Å" if math.isfinite(resolution) else f"{level:g}: below at every shell"
        axis.axhline(level, color="grey", ls=style, lw=0.8, label=label)
    axis.set_xlabel("spatial frequency (1/Å)")
    axis.set_ylabel("Fourier shell correlation")
    axis.set_ylim(min(-0.1, float(np.min(fsc)) - 0.05), 1.05)
    axis.legend()
    axis.set_title("gold-standard FSC")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _backprojection(dataset, indices: np.ndarray, box_size: int, pixel_size_in_angstroms: float) -> np.ndarray:
    """`atomicspi.products.backproject` of the particles `indices`, their shifts undone (the phase
    `exp(+2πi k·s)`) and their CTFs corrected; `(D, D, D)` in the images' unit per Å."""
    from atomicspi._batches import ctf_parameters
    from atomicspi.microscope import compute_ctf, ctf_batch_axes, rfft_frequencies
    from atomicspi.products import backproject

    batch = dataset.batch(indices)
    frequencies = np.asarray(rfft_frequencies(box_size, pixel_size_in_angstroms), dtype=np.float64)
    shifts = np.asarray(batch.shifts_in_angstroms, dtype=np.float64)
    phase = 2.0 * np.pi * (frequencies[None, ..., 0] * shifts[:, None, None, 0] + frequencies[None, ..., 1] * shifts[:, None, None, 1])
    centred = np.fft.irfft2(np.fft.rfft2(np.asarray(batch.images, dtype=np.float64)) * np.exp(1j * phase), s=(box_size, box_size))
    ctf = ctf_parameters(batch.ctf)
    values = jax.vmap(compute_ctf, in_axes=(None, ctf_batch_axes(ctf, len(indices))))(jnp.asarray(frequencies, dtype=jnp.float32), ctf)
    return backproject(centred, np.asarray(batch.rotations), pixel_size_in_angstroms, ctfs=np.asarray(values))
