"""Malformed inputs: each raises InputError with a one-line message naming the file and the field.

NaN/Inf images are detected when the images holding them are read (`images`, `batch`,
`minibatches`), not by a separate pass: the message names the stack and the image.
"""
import os
import pathlib
import pickle

import numpy as np
import pytest

import atomicspi.io as io

COLUMNS = [
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup",
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
]
OPTICS_COLUMNS = [
    "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize",
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
]


def stack(folder: pathlib.Path, name="s.mrcs", n=3, box=8, pixel_size=1.5, values=None):
    images = np.random.default_rng(0).normal(size=(n, box, box)).astype(np.float32) if values is None else values
    return io.write_stack(folder / name, images, pixel_size)


def star(folder: pathlib.Path, rows=None, columns=None, optics_rows=None, optics_columns=None, name="p.star"):
    columns = COLUMNS if columns is None else columns
    optics_columns = OPTICS_COLUMNS if optics_columns is None else optics_columns
    optics_rows = ["1 og1 1.5 8 300 2.7 0.1"] if optics_rows is None else optics_rows
    rows = [f"{i}@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5" for i in (1, 2, 3)] if rows is None else rows
    text = "data_optics\n\nloop_\n" + "".join(f"_{c}\n" for c in optics_columns) + "\n".join(optics_rows)
    text += "\n\ndata_particles\n\nloop_\n" + "".join(f"_{c}\n" for c in columns) + "\n".join(rows) + "\n"
    path = folder / name
    path.write_text(text)
    return path


def cs(folder: pathlib.Path, drop=(), name="p.cs", shapes=None, defocus=None):
    fields = [
        ("blob/path", "S8"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"),
        ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)),
    ]
    table = np.zeros(3, dtype=[f for f in fields if f[0] not in drop])
    values = {
        "blob/path": b"s.mrcs", "blob/idx": np.arange(3), "blob/shape": shapes if shapes is not None else 8,
        "blob/psize_A": 1.5, "ctf/accel_kv": 300, "ctf/cs_mm": 2.7, "ctf/amp_contrast": 0.1,
        "ctf/df1_A": defocus if defocus is not None else 1e4, "ctf/df2_A": 9e3, "ctf/df_angle_rad": 0.3,
        "alignments3D/pose": 0.1, "alignments3D/shift": 0.5,
    }
    for key in table.dtype.names:
        table[key] = values[key]
    path = folder / name
    with open(path, "wb") as file:
        np.save(file, table)
    return path


def config(folder: pathlib.Path, text: str):
    stack(folder)
    star(folder)
    (folder / "ref.pdb").write_text("ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n")
    path = folder / "dataset.yaml"
    path.write_text(text)
    return path


VALID_YAML = "particles: p.star\nreference: ref.pdb\nmodel: nma\nposes: given\noutput: out\n"


class CodeInPickle:
    """Pickles as a call to os.system: loading it with plain pickle would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def truncated_mrcs(tmp):
    path = stack(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return lambda: io.load_particles(path), "s.mrcs", "truncated"


def nan_image(tmp):
    values = np.zeros((3, 8, 8), dtype=np.float32)
    values[1, 3, 4] = np.nan
    path = stack(tmp, values=values)
    dataset = io.load_particles(path)
    return lambda: dataset.images([0, 1]), "s.mrcs", "image 2"


def inf_image_in_minibatch(tmp):
    values = np.zeros((3, 8, 8), dtype=np.float32)
    values[2, 0, 0] = np.inf
    stack(tmp, values=values)
    dataset = io.load_particles(star(tmp))
    return lambda: list(dataset.minibatches(2, prefetch=2)), "s.mrcs", "image 3"


def non_square_mrc(tmp):
    path = io.write_stack(tmp / "s.mrcs", np.zeros((2, 8, 8), dtype=np.float32), 1.0)
    import mrcfile

    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(np.zeros((2, 8, 6), dtype=np.float32))
    return lambda: io.load_particles(path), "s.mrcs", "not square"


def not_an_mrc(tmp):
    path = tmp / "s.mrcs"
    path.write_bytes(b"hello")
    return lambda: io.load_particles(path), "s.mrcs", "header"


def star_missing_optics_group(tmp):
    stack(tmp)
    rows = [f"{i}@s.mrcs 10000 9000 30 {g} 10 20 30 0.5 -0.5" for i, g in ((1, 1), (2, 2), (3, 1))]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnOpticsGroup"


def star_missing_column(tmp):
    stack(tmp)
    columns = [c for c in COLUMNS if c != "rlnDefocusV"]
    rows = [f"{i}@s.mrcs 10000 30 1 10 20 30 0.5 -0.5" for i in (1, 2, 3)]
    return lambda: io.load_particles(star(tmp, rows=rows, columns=columns)), "p.star", "rlnDefocusV"


def star_duplicate_column(tmp):
    stack(tmp)
    columns = COLUMNS + ["rlnDefocusU"]
    rows = [f"{i}@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5 12000" for i in (1, 2, 3)]
    return lambda: io.load_particles(star(tmp, rows=rows, columns=columns)), "p.star", "rlnDefocusU"


def star_non_numeric_field(tmp):
    stack(tmp)
    rows = ["1@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5", "2@s.mrcs 10000 9000 thirty 1 10 20 30 0.5 -0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnDefocusAngle"


def star_short_row(tmp):
    stack(tmp)
    rows = ["1@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5", "2@s.mrcs 10000 9000 30 1 10 20 30 0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnOriginYAngst"


def star_index_past_end(tmp):
    stack(tmp)
    rows = ["1@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5", "7@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnImageName"


def star_missing_stack(tmp):
    return lambda: io.load_particles(star(tmp)), "s.mrcs", "rlnImageName"


def star_bad_image_name(tmp):
    stack(tmp)
    rows = ["zero@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnImageName"


def star_mixed_box_sizes(tmp):
    stack(tmp)
    stack(tmp, name="t.mrcs", box=10)
    rows = ["1@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5", "1@t.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "box sizes"


def star_box_disagrees_with_stack(tmp):
    stack(tmp, box=10)
    return lambda: io.load_particles(star(tmp)), "p.star", "box size"


def star30_particles_disagree_in_pixel_size(tmp):
    # RELION 3.0 files (no optics table) must have one pixel size; 3.1 optics groups may differ
    # (they are resampled to the finest: tests/test_optics_terms.py)
    stack(tmp)
    path = tmp / "p.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n1@s.mrcs 1.5\n2@s.mrcs 1.6\n")
    return lambda: io.load_particles(path), "p.star", "rlnImagePixelSize"


MAGNIFICATION_COLUMNS = ["rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11"]


def star_anisotropic_magnification(tmp):
    stack(tmp)
    optics = ["1 og1 1.5 8 300 2.7 0.1 1.01 0.0 0.0 0.99"]
    return (
        lambda: io.load_particles(star(tmp, optics_rows=optics, optics_columns=OPTICS_COLUMNS + MAGNIFICATION_COLUMNS)),
        "p.star",
        "rlnMagMat00",
    )


def _flag_case(name: str, column: str):
    """A case: the valid star with `column` = 1 in its optics table, refused naming `column`."""

    def case(tmp):
        stack(tmp)
        loading = lambda: io.load_particles(  # noqa: E731
            star(tmp, optics_rows=["1 og1 1.5 8 300 2.7 0.1 1"], optics_columns=OPTICS_COLUMNS + [column])
        )
        return loading, "p.star", column

    case.__name__ = name
    return case


star_ctf_premultiplied = _flag_case("star_ctf_premultiplied", "rlnCtfDataAreCtfPremultiplied")
star_phase_flipped = _flag_case("star_phase_flipped", "rlnCtfDataArePhaseFlipped")
star_ctf_corrected = _flag_case("star_ctf_corrected", "rlnCtfDataAreCtfCorrected")


def star_nan_zernike(tmp):
    stack(tmp)
    optics = ["1 og1 1.5 8 300 2.7 0.1 [0.1,nan]"]
    return (
        lambda: io.load_particles(star(tmp, optics_rows=optics, optics_columns=OPTICS_COLUMNS + ["rlnOddZernike"])),
        "p.star",
        "rlnOddZernike",
    )


def star_missing_voltage(tmp):
    stack(tmp)
    optics_columns = [c for c in OPTICS_COLUMNS if c != "rlnVoltage"]
    optics = ["1 og1 1.5 8 2.7 0.1"]
    return (
        lambda: io.load_particles(star(tmp, optics_rows=optics, optics_columns=optics_columns)),
        "p.star",
        "rlnVoltage",
    )


def star30_magnification_missing(tmp):
    stack(tmp)
    path = tmp / "p.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnDetectorPixelSize\n1@s.mrcs 5.0\n")
    return lambda: io.load_particles(path), "p.star", "rlnMagnification"


def star_not_a_star_file(tmp):
    path = tmp / "p.star"
    path.write_text("this is not\na star file\n")
    return lambda: io.load_particles(path), "p.star", "data_particles"


def cs_missing_field(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs(tmp, drop=("blob/idx",))), "p.cs", "blob/idx"


def cs_missing_ctf_field(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs(tmp, drop=("ctf/cs_mm",))), "p.cs", "ctf/cs_mm"


def cs_mixed_box_sizes(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs(tmp, shapes=np.array([[8, 8], [8, 8], [10, 10]]))), "p.cs", "blob/shape"


def cs_nan_defocus(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs(tmp, defocus=np.array([1e4, np.nan, 1e4]))), "p.cs", "ctf/df1_A"


def cs_not_a_table(tmp):
    path = tmp / "p.cs"
    path.write_text("not numpy")
    return lambda: io.load_particles(path), "p.cs", "table"


def cs_object_array(tmp):
    path = tmp / "p.cs"
    with open(path, "wb") as file:
        np.save(file, np.array([{"blob/path": "x"}], dtype=object), allow_pickle=True)
    return lambda: io.load_particles(path), "p.cs", "table"


def pickle_carrying_code(tmp):
    path = tmp / "poses.pkl"
    marker = tmp / "executed"
    path.write_bytes(pickle.dumps(CodeInPickle(marker)))

    def load():
        try:
            io.read_cryodrgn_poses(path)
        finally:
            assert not marker.exists(), "the pickle's code ran"

    return load, "poses.pkl", "system"


def pickle_wrong_shape(tmp):
    path = tmp / "poses.pkl"
    path.write_bytes(pickle.dumps((np.zeros((3, 2, 3)), np.zeros((3, 2)))))
    return lambda: io.read_cryodrgn_poses(path), "poses.pkl", "rotations"


def poses_count_mismatch(tmp):
    stack(tmp)
    path = tmp / "poses.pkl"
    path.write_bytes(pickle.dumps((np.broadcast_to(np.eye(3), (5, 3, 3)).copy(), np.zeros((5, 2)))))
    return lambda: io.load_particles(tmp / "s.mrcs", poses=path), "poses.pkl", "poses"


def missing_particles_path(tmp):
    return lambda: io.load_particles(tmp / "absent.star"), "absent.star", "not found"


def unsupported_particles_suffix(tmp):
    path = tmp / "p.txt"
    path.write_text("x")
    return lambda: io.load_particles(path), "p.txt", "particles"


def yaml_unknown_model(tmp):
    path = config(tmp, VALID_YAML.replace("model: nma", "model: transformer"))
    return lambda: io.load_config(path), "dataset.yaml", "model"


def yaml_not_a_mapping(tmp):
    path = config(tmp, "- particles\n- reference\n")
    return lambda: io.load_config(path), "dataset.yaml", "mapping"


def yaml_python_tag(tmp):
    path = config(tmp, VALID_YAML + "seed: !!python/object/apply:os.system ['touch executed']\n")
    return lambda: io.load_config(path), "dataset.yaml", "python/object"


def yaml_unknown_key(tmp):
    path = config(tmp, VALID_YAML + "learning_rat: 0.1\n")
    return lambda: io.load_config(path), "dataset.yaml", "learning_rat"


def yaml_missing_required_key(tmp):
    path = config(tmp, VALID_YAML.replace("output: out\n", ""))
    return lambda: io.load_config(path), "dataset.yaml", "output"


def yaml_missing_particles_file(tmp):
    path = config(tmp, VALID_YAML.replace("p.star", "absent.star"))
    return lambda: io.load_config(path), "dataset.yaml", "particles"


def yaml_wrong_type(tmp):
    path = config(tmp, VALID_YAML + "batch_size: many\n")
    return lambda: io.load_config(path), "dataset.yaml", "batch_size"


def yaml_bare_stack_without_poses(tmp):
    path = config(tmp, VALID_YAML.replace("p.star", "s.mrcs"))
    return lambda: io.load_config(path), "dataset.yaml", "poses_file"


def yaml_one_domain(tmp):
    path = config(tmp, VALID_YAML + "domains: 1\n")
    return lambda: io.load_config(path), "dataset.yaml", "domains"


def yaml_negative_block_length(tmp):
    path = config(tmp, VALID_YAML + "decoder_beads_per_block: -3\n")
    return lambda: io.load_config(path), "dataset.yaml", "decoder_beads_per_block"


def yaml_syntax_error(tmp):
    path = config(tmp, "particles: [p.star\n")
    return lambda: io.load_config(path), "dataset.yaml", "yaml"


def star_negative_pixel_size(tmp):
    stack(tmp)
    return lambda: io.load_particles(star(tmp, optics_rows=["1 og1 -1.5 8 300 2.7 0.1"])), "p.star", "rlnImagePixelSize"


def star_zero_pixel_size(tmp):
    stack(tmp)
    return lambda: io.load_particles(star(tmp, optics_rows=["1 og1 0 8 300 2.7 0.1"])), "p.star", "rlnImagePixelSize"


def star_amplitude_contrast_above_one(tmp):
    stack(tmp)
    return lambda: io.load_particles(star(tmp, optics_rows=["1 og1 1.5 8 300 2.7 7"])), "p.star", "rlnAmplitudeContrast"


def star30_negative_amplitude_contrast(tmp):
    stack(tmp)
    path = tmp / "p.star"
    path.write_text(
        "data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n"
        "_rlnSphericalAberration\n_rlnAmplitudeContrast\n1@s.mrcs 1.5 10000 9000 30 300 2.7 -0.1\n"
    )
    return lambda: io.load_particles(path), "p.star", "rlnAmplitudeContrast"


def star_fractional_optics_group(tmp):
    stack(tmp)
    rows = [f"{i}@s.mrcs 10000 9000 30 1.7 10 20 30 0.5 -0.5" for i in (1, 2, 3)]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnOpticsGroup"


def star_nan_defocus(tmp):
    stack(tmp)
    rows = ["1@s.mrcs 10000 9000 30 1 10 20 30 0.5 -0.5", "2@s.mrcs nan 9000 30 1 10 20 30 0.5 -0.5"]
    return lambda: io.load_particles(star(tmp, rows=rows)), "p.star", "rlnDefocusU"


def cs_with(tmp, field, value, row=slice(None)):
    """The valid `.cs` of `cs()` with `field` set to `value` in `row` (all rows by default)."""
    path = cs(tmp)
    table = np.load(path)
    table[field][row] = value
    with open(path, "wb") as file:
        np.save(file, table)
    return path


def cs_with_field(tmp, field, width, value, row=1):
    """The valid `.cs` of `cs()` with an extra float32 `field` of `width` values per row, zero
    except `value` in `row`."""
    path = cs(tmp)
    table = np.load(path)
    extra = np.zeros(len(table), dtype=table.dtype.descr + [(field, "<f4", (width,))])
    for name in table.dtype.names:
        extra[name] = table[name]
    extra[field][row] = value
    with open(path, "wb") as file:
        np.save(file, extra)
    return path


def _cs_aberration_case(name: str, field: str, width: int, value):
    def case(tmp):
        stack(tmp)
        return lambda: io.load_particles(cs_with_field(tmp, field, width, value)), "p.cs", field

    case.__name__ = name
    return case


cs_trefoil = _cs_aberration_case("cs_trefoil", "ctf/trefoil_A", 2, [120.0, 0.0])
cs_tetrafoil = _cs_aberration_case("cs_tetrafoil", "ctf/tetra_A", 4, [0.0, 300.0, 0.0, 0.0])
cs_anisotropic_magnification = _cs_aberration_case("cs_anisotropic_magnification", "ctf/anisomag", 4, [0.01, 0.0, 0.0, -0.01])
cs_ctf_shift = _cs_aberration_case("cs_ctf_shift", "ctf/shift_A", 2, [0.5, 0.0])
cs_tilt_beyond_cs = _cs_aberration_case("cs_tilt_beyond_cs", "ctf/tilt_A", 2, [3e7, 0.0])  # |sin τ| > 1


def cs_negative_pixel_size(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs_with(tmp, "blob/psize_A", -1.5)), "p.cs", "blob/psize_A"


def cs_amplitude_contrast_above_one(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs_with(tmp, "ctf/amp_contrast", 7.0)), "p.cs", "ctf/amp_contrast"


def cs_path_not_utf8(tmp):
    stack(tmp)
    return lambda: io.load_particles(cs_with(tmp, "blob/path", b"s\xff.mrcs", row=1)), "p.cs", "blob/path"


def cryodrgn_ctf_amplitude_contrast_above_one(tmp):
    stack(tmp)
    path = tmp / "ctf.pkl"
    # cryoDRGN's columns: D, pixel size, defocus U, V, angle, voltage, Cs, amplitude contrast, phase shift
    path.write_bytes(pickle.dumps(np.tile([8, 1.5, 1e4, 9e3, 30, 300, 2.7, 7, 0], (3, 1)).astype(np.float64)))
    return lambda: io.load_particles(tmp / "s.mrcs", ctf=path), "ctf.pkl", "amplitude_contrast_ratio"


def mrc_negative_pixel_size(tmp):
    path = stack(tmp, pixel_size=-1.5)
    return lambda: io.load_particles(path), "s.mrcs", "pixel size"


def mrc_complex_images(tmp):
    import mrcfile

    path = tmp / "s.mrcs"
    with mrcfile.new(path) as handle:
        handle.set_data(np.ones((3, 8, 8), dtype=np.complex64) * (1 + 2j))
        handle.set_image_stack()
        handle.voxel_size = 1.5
    return lambda: io.load_particles(path), "s.mrcs", "mode 4"


def _yaml_case(name: str, extra_lines: str, field: str):
    """A case: the valid yaml plus `extra_lines`, refused naming `field`."""

    def case(tmp):
        path = config(tmp, VALID_YAML + extra_lines)
        return lambda: io.load_config(path), "dataset.yaml", field

    case.__name__ = name
    return case


yaml_duplicate_key = _yaml_case("yaml_duplicate_key", "model: deformation\n", "model")
yaml_infinite_cutoff = _yaml_case("yaml_infinite_cutoff", "cutoff_in_angstroms: .inf\n", "cutoff_in_angstroms")
yaml_infinite_learning_rate = _yaml_case("yaml_infinite_learning_rate", "learning_rate: .inf\n", "learning_rate")
yaml_nan_spring_yield = _yaml_case("yaml_nan_spring_yield", "spring_yield_in_angstroms: .nan\n", "spring_yield_in_angstroms")
yaml_negative_seed = _yaml_case("yaml_negative_seed", "seed: -1\n", "seed")
yaml_seed_beyond_32_bits = _yaml_case("yaml_seed_beyond_32_bits", f"seed: {2**70}\n", "seed")
yaml_unknown_schedule = _yaml_case("yaml_unknown_schedule", "learning_rate_schedule: linear\n", "learning_rate_schedule")
yaml_negative_mode_candidates = _yaml_case("yaml_negative_mode_candidates", "mode_candidates: -2\n", "mode_candidates")
yaml_two_path_nodes = _yaml_case("yaml_two_path_nodes", "path_nodes: 2\n", "path_nodes")
yaml_envelope_not_boolean = _yaml_case("yaml_envelope_not_boolean", "learn_envelope: 1\n", "learn_envelope")


def yaml_output_under_a_file(tmp):
    path = config(tmp, VALID_YAML.replace("output: out", "output: p.star/out"))
    return lambda: io.load_config(path), "dataset.yaml", "output"


def yaml_output_broken_link(tmp):
    path = config(tmp, VALID_YAML)
    (tmp / "out").symlink_to(tmp / "missing" / "out")
    return lambda: io.load_config(path), "dataset.yaml", "output"


CASES = [
    truncated_mrcs, nan_image, inf_image_in_minibatch, non_square_mrc, not_an_mrc,
    star_missing_optics_group, star_missing_column, star_duplicate_column, star_non_numeric_field,
    star_short_row, star_index_past_end, star_missing_stack, star_bad_image_name, star_mixed_box_sizes,
    star_box_disagrees_with_stack, star30_particles_disagree_in_pixel_size, star_missing_voltage,
    star_anisotropic_magnification, star_ctf_premultiplied, star_phase_flipped, star_ctf_corrected,
    star_nan_zernike, cs_trefoil, cs_tetrafoil, cs_anisotropic_magnification, cs_ctf_shift, cs_tilt_beyond_cs,
    star30_magnification_missing, star_not_a_star_file, cs_missing_field, cs_missing_ctf_field,
    cs_mixed_box_sizes, cs_nan_defocus, cs_not_a_table, cs_object_array, pickle_carrying_code,
    pickle_wrong_shape, poses_count_mismatch, missing_particles_path, unsupported_particles_suffix,
    yaml_unknown_model, yaml_not_a_mapping, yaml_python_tag, yaml_unknown_key, yaml_missing_required_key,
    yaml_missing_particles_file, yaml_wrong_type, yaml_bare_stack_without_poses, yaml_one_domain,
    yaml_negative_block_length, yaml_syntax_error,
    star_negative_pixel_size, star_zero_pixel_size, star_amplitude_contrast_above_one,
    star30_negative_amplitude_contrast, star_fractional_optics_group, star_nan_defocus, cs_negative_pixel_size,
    cs_amplitude_contrast_above_one, cs_path_not_utf8, cryodrgn_ctf_amplitude_contrast_above_one,
    mrc_negative_pixel_size, mrc_complex_images, yaml_duplicate_key, yaml_infinite_cutoff,
    yaml_infinite_learning_rate, yaml_nan_spring_yield, yaml_negative_seed, yaml_seed_beyond_32_bits,
    yaml_unknown_schedule, yaml_negative_mode_candidates, yaml_two_path_nodes, yaml_envelope_not_boolean,
    yaml_output_under_a_file, yaml_output_broken_link,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_raises_one_line_input_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a tag that ran `touch executed` would leave the file here
    action, file_name, field = case(tmp_path)
    with pytest.raises(io.InputError) as raised:
        action()
    message = str(raised.value)
    assert "\n" not in message
    assert file_name in message
    assert field in message
    assert not (tmp_path / "executed").exists()


def test_the_valid_inputs_behind_the_cases_load(tmp_path):
    """Control: the unmodified star, cs, stack and yaml used above are accepted."""
    stack(tmp_path)
    dataset = io.load_particles(star(tmp_path))
    assert len(dataset) == 3 and dataset.box_size == 8 and dataset.pixel_size_in_angstroms == 1.5
    assert len(io.load_particles(cs(tmp_path))) == 3
    path = config(tmp_path, VALID_YAML)
    assert io.load_config(path).model == "nma"
    poses = tmp_path / "poses.pkl"
    poses.write_bytes(pickle.dumps((np.broadcast_to(np.eye(3), (3, 3, 3)).copy(), np.zeros((3, 2))), protocol=5))
    assert io.load_particles(tmp_path / "s.mrcs", poses=poses).rotations.shape == (3, 3, 3)
    # what the optics refusals accept: an identity magnification matrix (as RELION writes it),
    # the processing flags at 0, zero cryoSPARC aberrations
    columns = OPTICS_COLUMNS + MAGNIFICATION_COLUMNS + ["rlnCtfDataAreCtfPremultiplied", "rlnCtfDataArePhaseFlipped"]
    plain = io.load_particles(star(tmp_path, optics_rows=["1 og1 1.5 8 300 2.7 0.1 1.000000 0.000000 0.000000 1.000000 0 0"], optics_columns=columns))
    assert len(plain) == 3 and dict(plain.optics_groups[0].extra)["rlnMagMat00"] == "1.0"
    for field, width in (("ctf/trefoil_A", 2), ("ctf/tetra_A", 4), ("ctf/anisomag", 4), ("ctf/shift_A", 2), ("ctf/tilt_A", 2)):
        assert len(io.load_particles(cs_with_field(tmp_path, field, width, 0.0))) == 3, field


# Run-level cases: `python -m atomicspi.infer dataset.yaml` (called in-process) must exit with status 2
# and one line, before anything is written. Every case fails before training starts.


def reference(folder: pathlib.Path, n_residues=3, name="ref.pdb"):
    """A Cα-only chain of `n_residues` alanines numbered from 1, 3.8 Å apart along x."""
    lines = [
        f"ATOM  {i:5d}  CA  ALA A{i:4d}    {3.8 * (i - (n_residues + 1) / 2):8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           C"
        for i in range(1, n_residues + 1)
    ]
    path = folder / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def run_folder(tmp, yaml_text=VALID_YAML, values=None, optics_rows=None, optics_columns=None):
    """stack + star + a 3-residue reference + dataset.yaml in `tmp`; returns the yaml."""
    stack(tmp, values=values)
    star(tmp, optics_rows=optics_rows, optics_columns=optics_columns)
    reference(tmp)
    path = tmp / "dataset.yaml"
    path.write_text(yaml_text)
    return path


def zero_background_images(n=3, box=8):
    """Noise inside the particle's circle, exactly zero outside (where the noise level is measured)."""
    y, x = np.indices((box, box)) - box // 2
    inside = np.hypot(x, y) <= 0.45 * box
    return (np.random.default_rng(0).normal(size=(n, box, box)) * inside).astype(np.float32)


def run_negative_pixel_size(tmp):
    return run_folder(tmp, optics_rows=["1 og1 -1.5 8 300 2.7 0.1"]), "p.star", "rlnImagePixelSize"


def run_zero_pixel_size(tmp):
    return run_folder(tmp, optics_rows=["1 og1 0 8 300 2.7 0.1"]), "p.star", "rlnImagePixelSize"


def run_amplitude_contrast_seven(tmp):
    return run_folder(tmp, optics_rows=["1 og1 1.5 8 300 2.7 7"]), "p.star", "rlnAmplitudeContrast"


def run_duplicate_key(tmp):
    return run_folder(tmp, VALID_YAML + "output: elsewhere\n"), "dataset.yaml", "output"


def run_domains_beyond_the_reference(tmp):
    text = VALID_YAML.replace("model: nma", "model: domains") + "domains: [[[1, 2]], [[3, 5000]]]\n"
    return run_folder(tmp, text), "ref.pdb", "domains"


def run_overlapping_domains(tmp):
    text = VALID_YAML.replace("model: nma", "model: domains") + "domains: [[[1, 2]], [[2, 3]]]\n"
    return run_folder(tmp, text), "ref.pdb", "domains"


def run_zero_background(tmp):
    return run_folder(tmp, values=zero_background_images()), "p.star", "images"


def run_blank_stack(tmp):
    return run_folder(tmp, values=np.zeros((3, 8, 8), dtype=np.float32)), "p.star", "blank"


def run_anisotropic_magnification(tmp):
    optics = ["1 og1 1.5 8 300 2.7 0.1 1.0 0.02 0.0 1.0"]
    return run_folder(tmp, optics_rows=optics, optics_columns=OPTICS_COLUMNS + MAGNIFICATION_COLUMNS), "p.star", "rlnMagMat01"


def run_ctf_premultiplied(tmp):
    optics = ["1 og1 1.5 8 300 2.7 0.1 1"]
    columns = OPTICS_COLUMNS + ["rlnCtfDataAreCtfPremultiplied"]
    return run_folder(tmp, optics_rows=optics, optics_columns=columns), "p.star", "rlnCtfDataAreCtfPremultiplied"


RUN_CASES = [
    run_negative_pixel_size, run_zero_pixel_size, run_amplitude_contrast_seven, run_duplicate_key,
    run_domains_beyond_the_reference, run_overlapping_domains, run_zero_background, run_blank_stack,
    run_anisotropic_magnification, run_ctf_premultiplied,
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.__name__ for c in RUN_CASES])
def test_bad_run_input_exits_2_with_one_line_and_creates_no_output(case, tmp_path, capsys):
    from atomicspi import infer

    path, file_name, field = case(tmp_path)
    status = infer.main([str(path), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert file_name in lines[0] and field in lines[0], lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere").exists()


def test_zero_background_is_refused_naming_the_images_field(tmp_path, capsys):
    """A background without noise is not mistaken for a blank stack (and vice versa)."""
    from atomicspi import infer

    assert infer.main([str(run_zero_background(tmp_path)[0]), "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "field images" in message and "background" in message and "blank" not in message


def test_literal_nan_is_reported_as_a_non_finite_value_not_a_short_row(tmp_path):
    action, _, _ = star_nan_defocus(tmp_path)
    with pytest.raises(io.InputError, match="rlnDefocusU: row 2 of data_particles is 'nan', not a finite number"):
        action()
    action, _, _ = star_short_row(tmp_path)
    with pytest.raises(io.InputError, match="short row"):
        action()


def test_output_folder_that_cannot_be_created_is_a_one_line_error(tmp_path):
    """`run_inference` itself (the yaml check aside): a folder under a regular file cannot be made."""
    import dataclasses

    from atomicspi._pipeline import run_inference
    from atomicspi._simulation import simulate_particles, write_simulated_dataset
    from atomicspi.structure import load_structure

    structure = load_structure(reference(tmp_path))
    conformations = np.broadcast_to(structure.positions_in_angstroms, (8, structure.n_atoms, 3))
    particles = simulate_particles(structure, conformations, 8, 1.5, 100.0, seed=0)
    config = io.load_config(write_simulated_dataset(tmp_path / "data", structure, particles))
    blocker = tmp_path / "data" / "blocker"
    blocker.write_text("a regular file where the output's parent folder should be")
    with pytest.raises(io.InputError) as raised:
        run_inference(dataclasses.replace(config, output=blocker / "out"), progress=False)
    message = str(raised.value)
    assert "\n" not in message and "field output" in message and "blocker" in message
    assert blocker.is_file() and not (tmp_path / "data" / "output").exists()
