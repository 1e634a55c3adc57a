import os
import pathlib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ATOMICSPI_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))


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
