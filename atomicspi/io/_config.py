"""`dataset.yaml`: the documented schema of a run, validated before any work starts."""

import dataclasses
import math
import os
import pathlib

import yaml

from ._errors import InputError

MODELS = ("nma", "deformation", "domains", "homogeneous", "volume")
POSE_MODES = ("given", "infer", "search")
COARSE_GRAININGS = ("calpha", "centroid")
GUIDES = ("semi_amortized", "amortized")
OUTPUT_ATOMS = ("auto", "heavy", "all", "calpha")
LEARNING_RATE_SCHEDULES = ("cosine", "constant")
NOISE_MODELS = ("white", "coloured")
_NOISE_ALIASES = {"colored": "coloured"}
_PARTICLE_SUFFIXES = (".star", ".cs", ".mrcs", ".mrc")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """The contents of `dataset.yaml`. Relative paths are relative to the yaml file's folder.

    **Required keys:**

    - `particles`: a RELION `.star`, a cryoSPARC `.cs`, or an `.mrcs`/`.mrc` stack (which then
      needs `poses_file` when `poses: given`).
    - `reference`: the atomic structure (PDB, mmCIF, ...) in the frame of the poses. Optional with
      `model: volume`, which fits a density map and no atoms: without it the map is in the images'
      units per Å (the contrast's prior median is 1), `poses: search` and `noise: coloured` (which
      project the reference) are refused, and `domains` is refused in any case.
    - `model`: one of `"nma"`, `"deformation"`, `"domains"`, `"homogeneous"`, `"volume"` (a density
      map, two half maps fitted to the particles of even and odd index, written as `map.mrc` with
      their Fourier shell correlation, `atomicspi.models.volume`).
    - `poses`: `"given"` (use the poses in the particle file or `poses_file`), `"infer"` (refine
      the given poses locally: each particle's rotation and shift corrections are latent
      variables) or `"search"` (find every particle's pose by a global search against the
      reference's projections, `atomicspi.inference.search_poses`, then refine it as `"infer"`
      does; the particle file need not have angles or origins).
    - `output`: folder for results (its parent must exist; it is created when the run starts).

    **Optional keys (default):**

    - `poses_file` (None): a cryoDRGN pose pickle; `ctf_file` (None): a cryoDRGN CTF pickle for
      a bare stack.
    - `datadir` (None): folder for the image paths named in the star/cs file.
    - `batch_size` (64), `num_steps` (2000), `learning_rate` (1e-3), `seed` (0; 0 ≤ seed < 2³²).
    - `per_particle_learning_rate` (None = 20 × learning_rate): Adam step of the semi-amortized
      guide's per-particle parameters, which see a gradient only once per epoch.
    - `learning_rate_schedule` ("cosine"): `"cosine"` (both learning rates decay along a cosine to
      1 % at `num_steps`, so that the decoder and the per-particle posteriors settle instead of
      ending on the noise of the last minibatches) or `"constant"`.
    - `n_modes` (10): normal modes; `latent_dim` (4): latent dimensions of the deformation model.
    - `coarse_grain` ("calpha"): the beads of the elastic network, one per residue: `"calpha"` (at
      the Cα) or `"centroid"` (at the residue's centroid); every atom follows its residue's bead.
    - `guide` ("semi_amortized"): `"amortized"` (the image encoder alone gives q(z | image)) or
      `"semi_amortized"` (the encoder plus a free correction per particle: better fits of a fixed
      dataset).
    - `cutoff_in_angstroms` (15.0): elastic network cutoff.
    - `spring_yield_in_angstroms` (1.0; null = harmonic springs): with `model: deformation`, the
      prior's springs yield beyond this stretch (`ElasticNetwork.yielding_energy`: harmonic below
      it, logarithmic above), so that contacts a large motion breaks cost a bounded amount.
    - `decoder_beads_per_block` (12): with `model: deformation`, the decoder moves blocks of this
      many consecutive beads rigidly (to first order: their rigid motions span its output,
      `atomicspi.structure.block_rigid_basis`), so that hinge and domain motions are easy to reach
      and distortions within blocks, which the images barely constrain, are left out; 0 lets every
      bead move freely.
    - `particle_fluctuation_in_angstroms` (None = off): with `model: deformation` and a block
      decoder, each particle also moves by its own small field of the decoder's block rigid motions
      about its decoded structure (`atomicspi.models.fluctuation_field`); this is the prior median of
      its root-mean-square bead displacement, whose scale is then learned.
    - `likelihood_resolution_in_angstroms` (None = every Fourier component up to Nyquist): the
      images' likelihood counts only their Fourier components up to this resolution (the exact
      density of the images low-pass filtered there). On the issue-19 hinge benchmark 6 Å brought
      the 90 % intervals' coverage from 0.75 to 0.86 at a cost of 0.009 in Spearman (bench/RESULTS.md).
    - `importance_proposals` (None = off): with `model: deformation` (its latent z) or `nma` (the
      mode amplitudes), importance-resample each particle's posterior draws from this many Laplace
      proposals (`atomicspi.inference.importance_resampled_draws`), where the effective sample size
      reaches half the draws: draws of the model's own posterior given the fitted globals instead of
      the guide's Gaussian. Costs about this many forward renders per particle after training. With
      few proposals the resampled draws repeat and their range narrows: on the coloured-noise
      benchmark (`nma`, 20 draws) 64 proposals covered 0.86 and 512 covered 0.90 (bench/RESULTS.md).
    - `mode_candidates` (8; 0 = off): with `model: deformation`, after training, move each
      particle's q(z) to the best of this many population modes (k-means centres of the guide
      means) where the model's posterior is higher there, then refine it
      (`atomicspi.inference.relocated_modes`): a unimodal q fitted by local steps can stay in the
      wrong state's basin.
    - `path_nodes` (32; 0 = off): with `model: deformation`, after training, replace each
      particle's draws by its exact posterior along the principal curve of the latent means
      (`atomicspi.inference.path_posterior`): the curve's `path_nodes` structures are rendered at
      every particle's pose, the position along it (in Å of bead displacement) is computed on a
      grid with the contrast marginalised and the population along the curve estimated from all
      particles, and the decoder, given finer fields (the rigid motions of 4-residue blocks, which
      carry each block's atoms with them) so it
      can bend where the motion bends, is refined along the curve by two rounds of EM, with the
      noise per frequency shell re-estimated from the images' residuals after the first pass (so
      noise that is not white, or signal the model lacks, does not make the intervals too narrow;
      `path_posterior.residual_power_ratio_by_shell` in run.json). The curve is the
      principal motion: where the particles move in more than one independent way, set 0 to keep
      the guide's latent draws (run.json's `path_posterior.explained_variance` is the share of the
      latent means' variance the curve explains, 0.81-0.82 on the one-dimensional benchmark
      motions; under 0.6 a warning is printed). Costs about `path_nodes` + 40 forward renders and
      18 renders with gradients per particle (8 of the 29 min of the issue-19 aanm run).
    - `learn_envelope` (true): every model learns the images' envelope B-factor (Å², the global
      `envelope_b_factor`, prior N(0, 50²)) beyond the reference's atomic B-factors: the data's
      high-frequency falloff is rarely the reference's (a model without B-factors, or crystal ones,
      against images blurred by drift and the particles' own motion), and images rendered too sharp
      make the posteriors too narrow (issue 19, bench/RESULTS.md). False: the reference's
      B-factors as they are. Not with `model: volume`, whose map's own spectrum carries the envelope.
    - `samples_per_particle` (8): posterior samples drawn per particle.
    - `checkpoint_every` (200): steps between checkpoints.
    - `n_particles` (None = all): use only the first n particles.
    - `device_count` (None = all local devices, or the most of them that divide `batch_size`):
      devices the minibatches are split over (data parallelism; parameters replicated). In a run
      over several processes (`jax.distributed`, README), the devices of all processes, the same
      number from each: a multiple of the process count.
    - `domains` (None; required by `model: domains`): rigid domains as lists of inclusive residue
      ranges, e.g. adenylate kinase `[[[1, 29], [60, 121], [160, 214]], [[30, 59]], [[122, 159]]]`
      (CORE, NMP, LID), or a number n ≥ 2: find n quasi-rigid domains from the elastic network's
      lowest modes (`atomicspi.structure.domains_from_normal_modes`). With `model: deformation` they
      are optional: the elastic prior then counts only the springs inside domains, so that hinge
      motions between domains are not priced as stretched springs.
    - `output_atoms` ("auto"): atoms written to the output trajectories, `"heavy"`, `"all"` or
      `"calpha"` (protein Cα only: about 8x smaller files than heavy atoms, for large particle counts;
      200,000 particles × 9 structures of AdK's 214 Cα take 4.6 GB); `"auto"`: heavy atoms when the
      per-particle ensembles (`ensemble_mean.dcd`, `ensemble_samples.dcd`) fit
      `output_budget_in_gigabytes`, else Cα.
    - `output_budget_in_gigabytes` (4.0; None = no limit): `ensemble_samples.dcd` (every particle's
      draws) is written only when it fits; otherwise the run says so and records it in `run.json`
      (`outputs`), and `posterior_ensemble.dcd` stands in for it.
    - `ensemble_size` (1000): structures in `posterior_ensemble.dcd`, exact samples of the
      aggregated posterior (a particle uniformly at random, then one of its draws; which ones is in
      `run.json`), whatever the number of particles: the ensemble for kinetic modelling.
    - `noise` ("white"): the images' noise model. `"white"`: independent Gaussian noise of one
      standard deviation per pixel. `"coloured"` (or `"colored"`): stationary Gaussian noise whose
      radial power spectrum, one per optics group, is estimated before training from the residuals
      of the images against the reference projected at their poses (each image's contrast fitted),
      smoothed and floored; the likelihood is then evaluated in Fourier space, and `noise_std` scales
      the spectrum (its shape is fixed, its level learned). Real micrographs' noise power falls with
      frequency, which white noise misweights.
    - `max_shift_in_angstroms` (None = a tenth of the box): with `poses: search`, the largest
      particle-centre offset from the box centre searched, in x and in y.
    - `search_resolution_in_angstroms` (6.0): with `poses: search`, the finest resolution the
      search compares images at (at most Nyquist).
    """

    particles: pathlib.Path
    reference: pathlib.Path | None
    model: str
    poses: str
    output: pathlib.Path
    poses_file: pathlib.Path | None = None
    ctf_file: pathlib.Path | None = None
    datadir: pathlib.Path | None = None
    batch_size: int = 64
    num_steps: int = 2000
    learning_rate: float = 1e-3
    per_particle_learning_rate: float | None = None
    learning_rate_schedule: str = "cosine"
    seed: int = 0
    n_modes: int = 10
    latent_dim: int = 4
    coarse_grain: str = "calpha"
    guide: str = "semi_amortized"
    cutoff_in_angstroms: float = 15.0
    samples_per_particle: int = 8
    checkpoint_every: int = 200
    n_particles: int | None = None
    device_count: int | None = None
    domains: tuple | int | None = None
    output_atoms: str = "auto"
    output_budget_in_gigabytes: float | None = 4.0
    ensemble_size: int = 1000
    spring_yield_in_angstroms: float | None = 1.0
    importance_proposals: int | None = None
    mode_candidates: int = 8
    path_nodes: int = 32
    learn_envelope: bool = True
    decoder_beads_per_block: int = 12
    particle_fluctuation_in_angstroms: float | None = None
    likelihood_resolution_in_angstroms: float | None = None
    noise: str = "white"
    max_shift_in_angstroms: float | None = None
    search_resolution_in_angstroms: float = 6.0
    # Not a yaml key: the file this configuration was read from, for error messages about its fields.
    yaml_path: pathlib.Path | None = dataclasses.field(default=None, compare=False)


_NOT_YAML_KEYS = ("yaml_path",)
_REQUIRED = ("particles", "reference", "model", "poses", "output")
_PATHS = ("particles", "reference", "output", "poses_file", "ctf_file", "datadir")
_POSITIVE_INTEGERS = ("batch_size", "num_steps", "n_modes", "latent_dim", "samples_per_particle", "checkpoint_every", "n_particles", "device_count", "importance_proposals", "ensemble_size")
_POSITIVE_FLOATS = ("learning_rate", "per_particle_learning_rate", "cutoff_in_angstroms", "spring_yield_in_angstroms", "output_budget_in_gigabytes", "particle_fluctuation_in_angstroms",
                    "likelihood_resolution_in_angstroms", "max_shift_in_angstroms", "search_resolution_in_angstroms")
_SEED_LIMIT = 2**32  # seeds are 32-bit: 0 <= seed < 2**32


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping key given twice in the yaml: `key`, and the lines of its first and second appearance."""

    def __init__(self, key, first_line: int, second_line: int):
        super().__init__(f"key {key!r} appears twice")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping key given twice (PyYAML silently keeps the last value)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first_line = lines.get(key)
                except TypeError:  # an unhashable key: the SafeLoader reports it
                    continue
                line = key_node.start_mark.line + 1
                if first_line is not None:
                    raise _DuplicateKeyError(key, first_line, line)
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _domains(value, path: pathlib.Path):
    """`domains` as a tuple (per domain) of tuples of (first, last) residue numbers, or an integer ≥ 2
    (that many domains, found from the elastic network's modes)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 2:
            raise InputError(f"{path}: field domains: a number of domains must be at least 2, got {value}")
        return value
    message = (
        f"{path}: field domains: must be a number of domains (≥ 2) or a list of domains, each a list of "
        "[first, last] residue ranges"
    )
    if not isinstance(value, list) or len(value) < 2:
        raise InputError(message + " (at least two domains)")
    domains = []
    for domain in value:
        if not isinstance(domain, list) or not domain:
            raise InputError(message)
        ranges = []
        for pair in domain:
            if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                    or pair[0] > pair[1]):
                raise InputError(message + f", got {pair!r}")
            ranges.append((pair[0], pair[1]))
        domains.append(tuple(ranges))
    return tuple(domains)


def load_config(path: str | os.PathLike) -> DatasetConfig:
    """Read and validate `dataset.yaml` (with a `yaml.SafeLoader` that also refuses repeated keys; no Python tags).

    **Arguments:**

    - `path`: the yaml file.

    **Returns:**

    A `DatasetConfig` with absolute paths. Raises `InputError` naming the file and the key for
    unknown keys, keys given twice, missing required keys, wrong types or values (numbers must be
    finite), and missing input files.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        document = yaml.load(path.read_text(), Loader=_UniqueKeySafeLoader)  # a SafeLoader: no Python tags
    except _DuplicateKeyError as error:
        raise InputError(
            f"{path}: field {error.key}: given twice (lines {error.first_line} and {error.second_line}); give it once"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise InputError(f"{path}: yaml: {problem}{where}".replace("\n", " ")) from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: yaml: not UTF-8 text") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: yaml: the document must be a mapping of keys to values, got {type(document).__name__}")
    known = {field.name for field in dataclasses.fields(DatasetConfig)} - set(_NOT_YAML_KEYS)
    for key in document:
        if key not in known:
            raise InputError(f"{path}: field {key}: unknown key (known: {', '.join(sorted(known))})")
    for key in _REQUIRED:
        if document.get(key) is None and not (key == "reference" and document.get("model") == "volume"):
            raise InputError(f"{path}: field {key}: required")
    values = dict(document)
    folder = path.parent.resolve()
    for key in _PATHS:
        if values.get(key) is not None:
            if not isinstance(values[key], str) or not values[key].strip():
                raise InputError(f"{path}: field {key}: must be a path, got {values[key]!r}")
            values[key] = folder / pathlib.Path(values[key]).expanduser()
    choices = {"model": MODELS, "poses": POSE_MODES, "coarse_grain": COARSE_GRAININGS, "output_atoms": OUTPUT_ATOMS, "guide": GUIDES,
               "learning_rate_schedule": LEARNING_RATE_SCHEDULES, "noise": NOISE_MODELS}
    if isinstance(values.get("noise"), str):
        values["noise"] = _NOISE_ALIASES.get(values["noise"], values["noise"])
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise InputError(f"{path}: field {key}: {values[key]!r} is not one of {', '.join(allowed)}")
    for key in _POSITIVE_INTEGERS:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{path}: field {key}: must be a positive integer, got {value!r}")
    seed = values.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_LIMIT:
        raise InputError(f"{path}: field seed: must be an integer from 0 to {_SEED_LIMIT - 1}, got {seed!r}")
    if values.get("path_nodes") in (1, 2):
        raise InputError(f"{path}: field path_nodes: a curve needs at least 3 nodes (0 turns the path posterior off), got {values['path_nodes']}")
    if not isinstance(values.get("learn_envelope", True), bool):
        raise InputError(f"{path}: field learn_envelope: must be true or false, got {values['learn_envelope']!r}")
    for key in ("decoder_beads_per_block", "mode_candidates", "path_nodes"):
        value = values.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{path}: field {key}: must be a non-negative integer, got {value!r}")
    for key in _POSITIVE_FLOATS:
        value = values.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise InputError(f"{path}: field {key}: must be a positive finite number, got {value!r}")
            values[key] = float(value)
    values["domains"] = _domains(values.get("domains"), path)
    if values["model"] == "domains" and values["domains"] is None:
        raise InputError(f"{path}: field domains: required by model domains (lists of [first, last] residue ranges)")
    if values["model"] == "volume":
        _check_volume_options(values, path)
    values.setdefault("reference", None)
    config = DatasetConfig(**values, yaml_path=path.resolve())
    _check_files(config, path)
    return config


def _check_volume_options(values: dict, path: pathlib.Path) -> None:
    """`model: volume` fits a map, no atoms: refuse the settings that need residues, and those that
    project the reference when none is given."""
    if values.get("domains") is not None:
        raise InputError(f"{path}: field domains: model volume fits a density map, which has no residues to group into domains")
    if values.get("reference") is None:
        for key, value, needs in (("poses", "search", "searches the poses against the reference's projections"),
                                  ("noise", "coloured", "estimates the noise from the images minus the reference's projections")):
            if values.get(key) == value:
                raise InputError(f"{path}: field reference: required by {key}: {value} with model volume (it {needs})")


def _check_files(config: DatasetConfig, path: pathlib.Path) -> None:
    for key in ("particles", "reference", "poses_file", "ctf_file"):
        target = getattr(config, key)
        if target is not None and not target.is_file():
            raise InputError(f"{path}: field {key}: file {target} not found")
    if config.datadir is not None and not config.datadir.is_dir():
        raise InputError(f"{path}: field datadir: folder {config.datadir} not found")
    if config.particles.suffix.lower() not in _PARTICLE_SUFFIXES:
        raise InputError(f"{path}: field particles: {config.particles.name} is not a .star, .cs, .mrcs or .mrc file")
    if config.poses == "given" and config.particles.suffix.lower() in (".mrcs", ".mrc") and config.poses_file is None:
        raise InputError(f"{path}: field poses_file: required with poses: given and a bare stack as particles")
    if config.output.parent.exists() and not config.output.parent.is_dir():
        raise InputError(f"{path}: field output: {config.output.parent} is not a folder, so {config.output.name} cannot be created in it")
    if not config.output.parent.is_dir():
        raise InputError(f"{path}: field output: parent folder {config.output.parent} not found")
    if config.output.is_symlink() and not config.output.exists():
        raise InputError(f"{path}: field output: {config.output} is a symbolic link to a missing folder")
    if config.output.exists() and not config.output.is_dir():
        raise InputError(f"{path}: field output: {config.output} exists and is not a folder")
