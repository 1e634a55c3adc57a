"""The model notebooks run, with tiny arguments."""

import pathlib
import runpy

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_tiny(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMICSPI_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("ATOMICSPI_NOTEBOOK_FOLDER", str(tmp_path))
    runpy.run_path(str(path), run_name="__main__")
    assert (tmp_path / "output" / "posterior.nc").exists()
    assert (tmp_path / "output" / "landscape.png").exists()
