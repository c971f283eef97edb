"""Fixtures shared by the test modules.

Trio's own are there already (pytest-trio, with ``trio_mode = true`` in
pyproject.toml): ``autojump_clock`` runs a test on
``MockClock(autojump_threshold=0)``, so time jumps ahead whenever every task
waits. The fixtures here are for the pure, clock-injected parts, which run
without Trio; ``postgres`` is a real server, for the coordinator's tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import FakeClock
from postgres import PostgresServer, running_postgres


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock at 1000.0: advance it by setting ``clock.now``."""
    return FakeClock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback, started once per session (initdb takes a second)."""
    with running_postgres() as server:
        yield server
