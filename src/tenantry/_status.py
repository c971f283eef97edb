"""What a tenant reports: where its supervisor loop is, and a snapshot of it.

Kept apart from the supervisor (``_tenant.py``) so that the metrics
(``_accounting.py``) read a tenant's state without importing the loop that
drives it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import final

import attrs

from ._breaker import BreakerState
from ._buffer import BufferStats
from ._reasons import DisconnectReason

__all__ = ["TenantState", "TenantStatus"]


class TenantState(enum.Enum):
    """Where a tenant's supervisor loop is."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSING = "closing"
    """The socket's ordered shutdown is running; it is still counted as alive."""
    BACKING_OFF = "backing_off"
    CIRCUIT_OPEN = "circuit_open"
    """Waiting for the circuit breaker's timeout."""
    STOPPED = "stopped"
    """The last reason's decision was STOP (only a restart or removal follows), or the
    tenant is being removed."""


@final
@attrs.frozen
class TenantStatus:
    """A snapshot of one tenant (`Hub.status`).

    Times are on Trio's clock (`trio.current_time`, seconds of the run that
    holds the hub, `trio.testing.MockClock` in tests), not wall-clock time:
    compare them with ``trio.current_time()``, never with `time.time`.
    """

    tenant_id: str
    """The tenant's id, as in its `TenantSpec`."""
    state: TenantState
    """Where the supervisor loop is (`TenantState`)."""
    breaker: BreakerState
    """The circuit breaker's state (`BreakerState`)."""
    failures: int
    """Failed attempts since the last stable connection."""
    breaker_trips: int
    """How many times the breaker has opened, over the tenant's life."""
    connections: int
    """Successful handshakes so far."""
    last_disconnect: DisconnectReason | None
    """Why the last connection or attempt ended; None before the first ended."""
    last_disconnect_at: float | None
    """When the last connection or attempt ended, on Trio's clock
    (``trio.current_time()``); None before the first ended."""
    next_retry_at: float | None
    """When the next attempt is due, on Trio's clock (``trio.current_time()``),
    while backing off or waiting for the breaker; None otherwise."""
    cache_utilization: Mapping[str, float]
    """Live tenant and socket caches by name: keys / max_keys."""
    buffer: BufferStats | None
    """The live socket's buffer, or None between connections."""
