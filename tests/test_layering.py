"""Imports go one way, downward, through layers (GitHub issue 21).

    bottom (atomicspi, atomicspi._errors, atomicspi.conventions, atomicspi._quiet)
      < {atomicspi.io, atomicspi.structure, atomicspi.microscope}  (not each other)
      < atomicspi.models < atomicspi.inference
      < pipeline, command lines and their Python interface (_pipeline, api, _families, _batches, infer,
        simulate, landscape, _simulation, _tilt_series_simulation, _example, _outputs);
    atomicspi.products (reads outputs) imports only the bottom, io and structure.

Every module of the installed package is parsed with `ast`; every `import` and `from` statement,
including those inside functions and under `if TYPE_CHECKING`, is resolved (relative ones too)
and checked against the table below. A module that the table does not place fails the test, so
a new module has to be given a layer.
"""

import ast
import importlib.util
import pkgutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import atomicspi

BOTTOM = "bottom"
TOP = "pipeline"

# group -> the groups its modules may import (besides their own)
ALLOWED = {
    BOTTOM: set(),
    "io": {BOTTOM},
    "structure": {BOTTOM},
    "microscope": {BOTTOM},
    "products": {BOTTOM, "io", "structure"},
    "models": {BOTTOM, "io", "structure", "microscope"},
    "inference": {BOTTOM, "io", "structure", "microscope", "models"},
    TOP: {BOTTOM, "io", "structure", "microscope", "models", "inference", "products"},
}

_GROUP_OF_PREFIX = {
    "atomicspi": BOTTOM,
    "atomicspi._errors": BOTTOM,
    "atomicspi.conventions": BOTTOM,
    "atomicspi._quiet": BOTTOM,
    "atomicspi.io": "io",
    "atomicspi.structure": "structure",
    "atomicspi.microscope": "microscope",
    "atomicspi.products": "products",
    "atomicspi.models": "models",
    "atomicspi.inference": "inference",
    "atomicspi._pipeline": TOP,
    "atomicspi.api": TOP,  # the public Python interface to the pipeline, the simulator and the outputs
    "atomicspi._families": TOP,
    "atomicspi._batches": TOP,
    "atomicspi.infer": TOP,
    "atomicspi.simulate": TOP,
    "atomicspi.landscape": TOP,
    "atomicspi._simulation": TOP,
    "atomicspi._tilt_series_simulation": TOP,  # cryo-ET tilt-series simulator (issue 17)
    "atomicspi._example": TOP,
    "atomicspi._outputs": TOP,
    "atomicspi._transition_paths": TOP,  # benchmark paths (another session is adding it)
}


def group_of(module: str) -> str | None:
    """The layer group of a module of atomicspi (longest matching prefix), or None."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        group = _GROUP_OF_PREFIX.get(".".join(parts[:n]))
        if group is not None and (n > 1 or len(parts) == 1):
            return group
    return None


def unit_of(module: str) -> str:
    """The subpackage or top-level module a module belongs to (the nodes of the cycle check)."""
    return ".".join(module.split(".")[:2])


def package_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed atomicspi: name -> (source file, is package).

    Packages are those found under `atomicspi.__path__` plus those pyproject.toml declares (the
    `package-dir` mapping puts `atomicspi.models` and `atomicspi.inference` outside it).
    """
    package_names = {"atomicspi"}
    package_names |= {
        info.name for info in pkgutil.walk_packages(atomicspi.__path__, "atomicspi.") if info.ispkg
    }
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.exists():
        declared = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"]
        package_names |= set(declared)
    modules: dict[str, tuple[Path, bool]] = {}
    for package in sorted(package_names):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        modules[package] = (Path(spec.origin), True)
        for info in pkgutil.iter_modules(spec.submodule_search_locations, package + "."):
            if not info.ispkg:
                module_spec = importlib.util.find_spec(info.name)
                modules[info.name] = (Path(module_spec.origin), False)
    return modules


def imported_modules(name: str, path: Path, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """Every atomicspi module that `name` imports: (line, absolute module name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from package import submodule` imports the submodule
                found.append((node.lineno, candidate if candidate in known else base))
    return [(line, module) for line, module in found if module.split(".")[0] == "atomicspi"]


def import_graph():
    modules = package_modules()
    known = set(modules)
    return modules, {
        name: imported_modules(name, path, is_package, known) for name, (path, is_package) in modules.items()
    }


def test_the_walk_finds_every_layer():
    modules, _ = import_graph()
    groups = {group_of(name) for name in modules}
    assert groups >= set(ALLOWED), set(ALLOWED) - groups
    assert "atomicspi.models._context" in modules and "atomicspi.inference._fit" in modules


def test_every_module_has_a_layer_and_imports_only_downward():
    modules, graph = import_graph()
    unplaced = sorted(name for name in modules if group_of(name) is None)
    assert not unplaced, f"modules with no layer in tests/test_layering.py: {unplaced}"
    violations = []
    for name, imports in sorted(graph.items()):
        group = group_of(name)
        for line, target in imports:
            target_group = group_of(target)
            if target_group is None:
                violations.append(f"{modules[name][0]}:{line}: {name} imports unknown module {target}")
            elif target_group != group and target_group not in ALLOWED[group]:
                violations.append(
                    f"{modules[name][0]}:{line}: {name} ({group}) imports {target} ({target_group})"
                )
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in a directed graph, as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for successor in sorted(edges.get(node, ())):
            if state.get(successor) == 1:
                return stack[stack.index(successor) :] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cycle_between_subpackages():
    _, graph = import_graph()
    edges: dict[str, set[str]] = {}
    for name, imports in graph.items():
        for _, target in imports:
            # the root package `atomicspi` is imported implicitly by everything: not a unit
            if unit_of(name) != unit_of(target) and target != "atomicspi":
                edges.setdefault(unit_of(name), set()).add(unit_of(target))
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def test_importing_the_microscope_loads_no_file_format_libraries():
    code = textwrap.dedent(
        """
        import sys
        import atomicspi.microscope
        heavy = ["pandas", "starfile", "mrcfile", "yaml", "atomicspi.io", "atomicspi.structure"]
        print(" ".join(name for name in heavy if name in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("atomicspi.io._star", "atomicspi.conventions", True),
        ("atomicspi.io._star", "atomicspi.microscope", False),
        ("atomicspi.microscope._form_factors", "atomicspi.io", False),
        ("atomicspi.structure._domains", "atomicspi.microscope._ctf", False),
        ("atomicspi.products._run_products", "atomicspi.io._errors", True),
        ("atomicspi.products._run_products", "atomicspi.models", False),
        ("atomicspi.models._nma", "atomicspi.inference", False),
        ("atomicspi.inference._fit", "atomicspi._pipeline", False),
        ("atomicspi._pipeline", "atomicspi.products", True),
        ("atomicspi.conventions", "atomicspi.io", False),
    ],
)
def test_the_table_places_modules(module, target, allowed):
    group, target_group = group_of(module), group_of(target)
    assert (target_group == group or target_group in ALLOWED[group]) == allowed
