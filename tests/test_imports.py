"""The library's and the command line's modules form no import cycle.

The package is split by concept (configuration, running, rendering, units,
the upstream, the console); a module that reached back into one that
imports it would tie two concepts together again. The graph counts every
relative import, also those under ``TYPE_CHECKING`` or inside a function,
because each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import tenantry
import tenantry.cli

PACKAGE = Path(tenantry.cli.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
LIBRARY = Path(tenantry.__file__).parent


def modules_of(package: Path) -> list[str]:
    return sorted(path.stem for path in package.glob("*.py") if path.stem != "__init__")


def sibling_imports(module: str, package: Path = PACKAGE) -> set[str]:
    """The modules of *package* (the cli's by default) that *module* imports."""
    tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is not None:
                found.add(node.module)
            else:
                found.update(alias.name for alias in node.names)
    return found & set(modules_of(package))


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            found = visit(target, [*path, node])
            if found is not None:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_command_line() -> None:
    graph = {module: sibling_imports(module) for module in MODULES}
    assert cycle(graph) is None


def test_no_import_cycle_in_the_library() -> None:
    graph = {module: sibling_imports(module, LIBRARY) for module in modules_of(LIBRARY)}
    assert len(graph) > 20
    assert cycle(graph) is None


def test_units_and_configuration_import_no_running_or_rendering() -> None:
    assert sibling_imports("_units") == set()
    assert sibling_imports("_config") <= {"_faults"}
    assert "_soak" not in sibling_imports("_report")
    assert "_report" not in sibling_imports("_plan")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    name = f"tenantry.cli.{module}"
    done = subprocess.run(  # noqa: S603 - this interpreter, importing one module
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert importlib.import_module(name).__name__ == name


def test_the_fleet_is_not_imported_by_the_daily_api() -> None:
    """A program on one machine never loads the fleet's modules (nor a database client)."""
    code = "import sys, tenantry; assert 'tenantry.cluster' not in sys.modules"
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed statement
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
