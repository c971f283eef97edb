"""User-facing text speaks the user's language.

README, docs, examples, docstrings and ``--help`` text name things by what
they are (the Baileys defaults, the invariants in docs/design.rst), never by
words only the project's makers knew: the project it grew from ("the seed"),
a design file outside the repository, or an issue number. Random seeds
(``seed=``, ``--seed``, a seeded generator) are what they say and stay.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(
    [
        ROOT / "README.md",
        *ROOT.glob("docs/*.rst"),
        *ROOT.glob("examples/*.py"),
        *ROOT.glob("src/**/*.py"),
    ]
)
PRIVATE = re.compile(
    r"\bthe seed\b|\bseed's\b|\bseed (?:project|cache|limit|fork|library|table)"
    r"|DESIGN\.md|\bissue #?\d+|#\d+\b(?!\s*[-+*/])",
    re.IGNORECASE,
)


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_private_vocabulary(path: Path) -> None:
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert not found, "\n".join(found)
