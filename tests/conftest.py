"""Fixtures shared by the test modules.

Trio's own are there already (pytest-trio, with ``trio_mode = true`` in
pyproject.toml): ``autojump_clock`` runs a test on
``MockClock(autojump_threshold=0)``, so time jumps ahead whenever every task
waits. The fixtures here are for the pure, clock-injected parts, which run
without Trio; ``gateway`` is a real gateway server in its own thread, for interop tests,
and ``postgres`` a real PostgreSQL server, for the coordinator's tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from gateway_server import GatewayServer
from helpers import FakeClock
from postgres import PostgresServer, running_postgres


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock at 1000.0: advance it by setting ``clock.now``."""
    return FakeClock()


@pytest.fixture
def gateway() -> Iterator[Callable[..., GatewayServer]]:
    """Start a ``GatewayServer(...)`` (real time, its own thread); stopped at teardown."""
    with ExitStack() as stack:
        yield lambda *args, **kwargs: stack.enter_context(GatewayServer(*args, **kwargs))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback, started once per session (initdb takes a second)."""
    with running_postgres() as server:
        yield server
