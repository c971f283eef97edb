"""The repository's own files agree with each other where a tool reads each."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pre_commit_runs_the_ruff_that_nox_pins() -> None:
    nox_pin = re.search(r'RUFF = "ruff==([\d.]+)"', (ROOT / "noxfile.py").read_text())
    hook = re.search(
        r"ruff-pre-commit\s+rev: v([\d.]+)", (ROOT / ".pre-commit-config.yaml").read_text()
    )
    assert nox_pin is not None
    assert hook is not None
    assert hook[1] == nox_pin[1]


def test_the_license_file_is_the_license_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    license_text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "MIT"
    assert license_text.startswith("MIT License")
    assert project["authors"][0]["name"] in license_text


def test_every_runtime_dependency_is_imported_by_the_library() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    source = "\n".join(path.read_text() for path in (ROOT / "src").rglob("*.py"))
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].replace("-", "_")
        imported = re.search(rf"^\s*(import|from) {name}\b", source, re.MULTILINE)
        assert imported is not None, f"{requirement} is declared but never imported"
