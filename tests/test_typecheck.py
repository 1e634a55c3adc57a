"""Static and runtime type checks (GitHub issue 21).

- `mypy` (configured in pyproject.toml, [tool.mypy]) is clean on the three source trees, and on the
  installed layout of the package, where `atomicspi.models` and `atomicspi.inference` are
  subpackages of `atomicspi` (a tree of symbolic links in a temporary folder: mypy cannot follow
  pyproject's package-dir mapping of `models/` and `inference/`, so from the source trees alone the
  calls from `atomicspi` into them go unchecked).
- The tests import `atomicspi.models` and `atomicspi.inference` through jaxtyping's import hook
  with beartype (tests/conftest.py), so a call with an array of the wrong shape fails at once.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _mypy(arguments: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPOSITORY / "pyproject.toml"), *arguments],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


def test_mypy_is_clean_on_the_source_trees():
    result = _mypy([], REPOSITORY)
    assert result.returncode == 0, result.stdout + result.stderr


def _installed_layout(folder: pathlib.Path) -> pathlib.Path:
    """`folder/atomicspi`: links to every file and subpackage of the installed package, with
    `models` and `inference` inside it wherever they are installed from."""
    package = pathlib.Path(importlib.util.find_spec("atomicspi").origin).parent
    stage = folder / "atomicspi"
    stage.mkdir()
    try:
        for entry in package.iterdir():
            if entry.name != "__pycache__":
                (stage / entry.name).symlink_to(entry)
        for name in ("models", "inference"):
            if not (stage / name).exists():
                location = importlib.util.find_spec(f"atomicspi.{name}").submodule_search_locations[0]
                (stage / name).symlink_to(pathlib.Path(location))
    except OSError as error:  # e.g. no symbolic links on this file system
        pytest.skip(f"cannot build the installed layout with symbolic links: {error}")
    return stage


def test_mypy_is_clean_on_the_installed_layout(tmp_path):
    stage = _installed_layout(tmp_path)
    cache = REPOSITORY / ".mypy_cache" / "installed-layout"
    result = _mypy(["--cache-dir", str(cache), "-p", "atomicspi"], tmp_path)
    report = (result.stdout + result.stderr).replace(f"{stage}{os.sep}", "(installed) atomicspi/")
    assert result.returncode == 0, report


def test_the_import_hook_checks_shapes_in_models_and_inference():
    if not any(type(finder).__name__ == "_JaxtypingFinder" for finder in sys.meta_path):
        pytest.skip("runtime type checks are off (ATOMICSPI_TYPECHECK=0, or beartype is not installed)")
    from jaxtyping import TypeCheckError

    from atomicspi.inference import latent_information
    from atomicspi.models import nma_positions

    with pytest.raises(TypeCheckError, match="draws"):
        latent_information(np.ones((3, 4)))  # (particle, draw, latent) expected
    with pytest.raises(TypeCheckError, match="context"):
        nma_positions(None, np.ones((2, 3)))
