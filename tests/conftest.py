import importlib.util
import os
import pathlib
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ATOMICSPI_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))

# Runtime shape and type checks (GitHub issue 21): every function and dataclass of these packages
# imported during the tests is wrapped in `jaxtyping.jaxtyped(typechecker=...)` (beartype, see
# tests/_typechecking.py), so a call with an array of the wrong shape, dtype or type fails where it
# is made. Inside `jax.jit` the checks run once, at trace time. ATOMICSPI_TYPECHECK=0 turns them off
# (e.g. to time the tests without them); without beartype installed they are off.
TYPECHECKED_PACKAGES = ["atomicspi.models", "atomicspi.inference"]
TYPECHECKING = os.environ.get("ATOMICSPI_TYPECHECK", "1") != "0" and importlib.util.find_spec("beartype") is not None
if TYPECHECKING:
    from jaxtyping import install_import_hook

    already = [name for name in TYPECHECKED_PACKAGES if name in sys.modules]
    assert not already, f"imported before the type-checking import hook could be installed: {already}"
    tests = str(pathlib.Path(__file__).resolve().parent)
    if tests not in sys.path:  # the hook imports the checker by name (`--import-mode=importlib` leaves this out)
        sys.path.insert(0, tests)
    install_import_hook(TYPECHECKED_PACKAGES, "_typechecking.typechecker")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`../shared/data` (real files from RELION, cryoSPARC, cryoDRGN; example structures); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def example_structure_path() -> pathlib.Path:
    """The bundled adenylate kinase (closed, all atoms with hydrogens)."""
    return REPOSITORY / "atomicspi" / "data" / "adk_closed.pdb.gz"


@pytest.fixture
def x64():
    """Run a test in float64 (JAX's default is float32), restoring the previous setting after."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def write_tiny_calpha_dataset(example_structure_path):
    """A factory for the tiny Cα datasets of the pipeline tests: `write(folder, n_particles=12,
    config_overrides=...)` simulates closed → open adenylate kinase (Cα only, linear interpolation,
    24² at 4 Å/px, SNR 1, seed 0) into `folder` and returns its `dataset.yaml`."""
    import numpy as np

    from atomicspi._simulation import interpolated_conformations, simulate_particles, write_simulated_dataset
    from atomicspi.structure import load_structure

    closed = load_structure(example_structure_path).calpha()
    closed = closed.with_positions(closed.positions_in_angstroms - closed.positions_in_angstroms.mean(axis=0))
    opened = load_structure(example_structure_path.with_name("adk_open.pdb.gz")).calpha()

    def write(folder, n_particles: int = 12, config_overrides=None, **keywords):
        positions = interpolated_conformations(closed, opened, np.linspace(0.0, 1.0, n_particles))
        particles = simulate_particles(closed, positions, 24, 4.0, 1.0, seed=0)
        return write_simulated_dataset(folder, closed, particles, config_overrides=config_overrides, **keywords)

    return write


@pytest.fixture(scope="session")
def model_batch():
    """A factory for the model tests' minibatch arguments: `model_batch(n, seed=0)` gives `n` uniform
    random rotations, normal shifts (Å), astigmatic defoci spread over 0.9–1.5 µm and `indices` 0..n−1."""
    import jax
    import jax.numpy as jnp

    from atomicspi.microscope import CTFParameters, sample_uniform_rotations

    def make(n, seed=0):
        key = jax.random.key(seed)
        return {
            "rotations": sample_uniform_rotations(key, n),
            "shifts_in_angstroms": jax.random.normal(jax.random.fold_in(key, 1), (n, 2)),
            "ctf": CTFParameters(
                defocus_u_in_angstroms=jnp.linspace(9000.0, 15000.0, n),
                defocus_v_in_angstroms=jnp.linspace(8800.0, 14000.0, n),
                astigmatism_angle_in_degrees=jnp.linspace(0.0, 90.0, n),
            ),
            "indices": jnp.arange(n),
        }

    return make
