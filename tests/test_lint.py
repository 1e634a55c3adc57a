"""`ruff check` is clean on the repository (rules and exceptions in pyproject.toml, [tool.ruff])."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the package ships the binary; `python -m ruff` runs it)
    except ImportError:
        executable = shutil.which("ruff")
        if executable is None:
            pytest.skip("ruff is not installed (pip install -e '.[test]')")
        return [executable]
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    result = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
