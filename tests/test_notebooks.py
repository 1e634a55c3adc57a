"""The model notebooks run, with tiny arguments."""

import ast
import pathlib
import runpy

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.slow  # each a whole (tiny) run of the pipeline: 25 s and 52 s on the 2-core machine
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_tiny(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMICSPI_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("ATOMICSPI_NOTEBOOK_FOLDER", str(tmp_path))
    runpy.run_path(str(path), run_name="__main__")
    assert (tmp_path / "output" / "posterior.nc").exists()
    assert (tmp_path / "output" / "landscape.png").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_only_public_modules(path):
    """The notebooks are examples for users: they import `atomicspi.api` and the public subpackages,
    never a module or a name whose path has a part starting with `_` (GitHub issue 21)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "atomicspi" and any(part.startswith("_") for part in name.split(".")):
                private.append(f"{path.name}:{node.lineno}: {name}")
    assert not private, "notebooks import private atomicspi modules or names:\n" + "\n".join(private)
    assert any(isinstance(node, ast.ImportFrom) and node.module == "atomicspi.api" for node in ast.walk(tree))
