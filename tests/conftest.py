"""Fixtures shared by the test modules.

Trio's own are there already (pytest-trio, with ``trio_mode = true`` in
pyproject.toml): ``autojump_clock`` runs a test on
``MockClock(autojump_threshold=0)``, so time jumps ahead whenever every task
waits. The fixtures here are for the pure, clock-injected parts, which run
without Trio.
"""

from __future__ import annotations

import pytest

from helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock at 1000.0: advance it by setting ``clock.now``."""
    return FakeClock()
