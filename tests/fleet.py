"""The soak tests' shared harness: healthy tenants beside a bad one, against a control run.

A soak of invariant 5 (one tenant's trouble never touches another) runs the
same fleet of healthy tenants twice under ``MockClock(autojump_threshold=0)``:
once alone (the *control*), once beside a misbehaving tenant (the
*treatment*). Both runs are deterministic, so each healthy tenant's
`Timeline` -- every batch its subscriber received, with the virtual instant,
the flush reason and the events' ``seq`` -- must be equal in the two runs,
and so must its figures. `assert_untouched` checks exactly that; what each
soak does to the bad tenant, and how its healthy traffic is timed, stays in
its own module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio
import trio.testing

from helpers import Handler
from tenantry import Hub, Metrics, Socket, TenantSpec, TenantState, TenantStatus
from tenantry.testing import FakeUpstream

Timeline = list[tuple[float, str, tuple[int, ...]]]
"""(virtual time, flush reason, event seqs) of each batch a subscriber received."""

A = TypeVar("A")
T = TypeVar("T")

Feed = Callable[[FakeUpstream, str], Awaitable[None]]
"""Streams a healthy tenant's traffic into its upstream connection."""


@attrs.define
class FleetOutcome:
    """What one run observed of its healthy tenants."""

    timelines: dict[str, Timeline]
    """Healthy tenant -> what its subscriber received."""
    sent: dict[str, list[int]] = attrs.field(factory=dict)
    """Healthy tenant -> seqs its upstream sent (read once the hub has closed)."""
    metrics: Metrics | None = None
    statuses: dict[str, TenantStatus] = attrs.field(factory=dict)


def recorder(into: Timeline) -> Handler:
    """A handler that subscribes and records each batch into *into*."""

    async def handler(sock: Socket) -> None:
        async with sock.events.subscribe() as batches:
            async for batch in batches:
                seqs = tuple(data["seq"] for _, data in batch.events)
                into.append((trio.current_time(), batch.reason.value, seqs))

    return handler


async def add_healthy(
    hub: Hub,
    upstream: FakeUpstream,
    script: trio.Nursery,
    outcome: FleetOutcome,
    *,
    spec: Callable[[str, Handler], TenantSpec],
    feed: Feed,
) -> None:
    """Add each healthy tenant of *outcome* (built by *spec*) and start its *feed*."""
    for tenant_id, timeline in outcome.timelines.items():
        await hub.add(spec(tenant_id, recorder(timeline)))
        script.start_soon(feed, upstream, tenant_id)


def observe(outcome: FleetOutcome, hub: Hub) -> None:
    """Take the hub's metrics and statuses into *outcome*, while the hub runs."""
    outcome.metrics = hub.metrics()
    outcome.statuses = {status.tenant_id: status for status in hub.status()}


def read_sent(outcome: FleetOutcome, upstream: FakeUpstream) -> None:
    """Take what the upstream sent each healthy tenant (over its one connection)."""
    for tenant_id in outcome.timelines:
        [connection] = upstream.connections_to(f"/{tenant_id}")
        outcome.sent[tenant_id] = [data["seq"] for _, data in connection.sent]


def run_virtual(scenario: Callable[[A], Awaitable[T]], argument: A) -> T:
    """Run *scenario* (*argument*) under a fresh ``MockClock(autojump_threshold=0)``."""
    return trio.run(scenario, argument, clock=trio.testing.MockClock(autojump_threshold=0))


def per_minute(timeline: Timeline) -> dict[int, tuple[int, int]]:
    """Virtual minute -> (interval flushes, events delivered) in it."""
    minutes: dict[int, tuple[int, int]] = {}
    for at, reason, seqs in timeline:
        flushes, events = minutes.get(int(at // 60), (0, 0))
        minutes[int(at // 60)] = (flushes + (reason == "interval"), events + len(seqs))
    return minutes


def delivered_in_order(outcome: FleetOutcome, tenant_id: str) -> bool:
    """Whether the tenant's subscriber received exactly what was sent, in order."""
    received = [seq for _, _, seqs in outcome.timelines[tenant_id] for seq in seqs]
    return received == outcome.sent[tenant_id]


def metric(outcome: FleetOutcome, name: str, **labels: str) -> float:
    """One figure of the run (zero where no sample matches)."""
    assert outcome.metrics is not None
    return outcome.metrics.value(name, **labels)


UNTOUCHED_ZERO = (
    "tenantry_reconnects_total",
    "tenantry_frames_rejected_total",
    "tenantry_events_lost_total",
)
"""Figures a healthy tenant keeps at zero whatever its neighbour does."""

UNTOUCHED_EQUAL = ("tenantry_buffer_flush_total", "tenantry_events_delivered_total")
"""Figures a healthy tenant has equal in the control and the treatment."""


def assert_untouched(outcome: FleetOutcome, baseline: FleetOutcome) -> None:
    """Each healthy tenant of *outcome* saw exactly what it saw in *baseline*."""
    for tenant_id, timeline in outcome.timelines.items():
        assert delivered_in_order(outcome, tenant_id), tenant_id
        assert per_minute(timeline) == per_minute(baseline.timelines[tenant_id]), tenant_id
        assert timeline == baseline.timelines[tenant_id], tenant_id
        status = outcome.statuses[tenant_id]
        assert status.state is TenantState.CONNECTED, tenant_id
        assert (status.connections, status.failures, status.breaker_trips) == (1, 0, 0)
        for name in UNTOUCHED_ZERO:
            assert metric(outcome, name, tenant=tenant_id) == 0, (name, tenant_id)
        for name in UNTOUCHED_EQUAL:
            expected = metric(baseline, name, tenant=tenant_id)
            assert metric(outcome, name, tenant=tenant_id) == expected, (name, tenant_id)
