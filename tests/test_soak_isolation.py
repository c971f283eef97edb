"""Soak: one bad tenant beside 99 healthy ones leaves their flushes and deliveries unchanged.

Invariant 5 of the design: one tenant's crash or reconnect storm never
touches another tenant. A hub runs 99 healthy tenants for 10 virtual minutes,
each receiving a burst of 2 events every 30 s (one interval flush per burst),
next to one bad tenant:

* ``storm``: its upstream refuses every other handshake (HTTP 503) and drops
  every connection it accepts (no close frame) 50 ms later, and its policy
  retries after 0.1 s with a breaker that opens after 10 failures for 2 s: about
  300 attempts and 300 breaker trips in 10 minutes, where the default policy
  would make about 15;
* ``raising``: its handler raises on every connection, with the same policy.

Each healthy tenant's timeline -- every batch its subscriber received, with
the virtual instant, the flush reason and the events -- must be identical to
a control run with the 99 healthy tenants alone, and so must its flush and
delivery counts per virtual minute.

Why equality, not a tolerance: under ``MockClock(autojump_threshold=0)`` both
runs are deterministic, and no healthy send falls on a healthy flush instant
(bursts at ``offset + 30 k``, flushes 5 s later), so Trio's random ordering of
simultaneous tasks cannot move an event between batches. What this can
catch: an exception or cancellation leaking out of the bad tenant (deliveries
stop), shared state between tenants (extra, missing or merged flushes, a
reconnect of a healthy socket), or a storm that starves the hub's shared
channels. What it cannot catch: CPU time spent on the storm, because virtual
time does not advance while tasks run -- the real-time cost of a storm is the
benchmarks' business.
"""

from __future__ import annotations

import functools
import logging

import attrs
import pytest
import trio
import trio.testing

from fleet import (
    FleetOutcome,
    add_healthy,
    assert_untouched,
    delivered_in_order,
    metric,
    observe,
    per_minute,
    read_sent,
    run_virtual,
)
from helpers import Handler, idle
from tenantry import (
    Backoff,
    BufferConfig,
    ReconnectPolicy,
    Socket,
    SocketOptions,
    TenantSpec,
    open_hub,
)
from tenantry.testing import FakeUpstream, open_fake_upstream

pytestmark = pytest.mark.soak

HEALTHY = tuple(f"h{n:02}" for n in range(99))
RUN_FOR = 600.0  # ten virtual minutes
BURST_EVERY = 30.0  # a frame at least every 30 s: the keepalive never needs a ping
BURST = 2
BURSTS = 20  # the last at offset + 570 s, flushed at offset + 575 s < RUN_FOR
CONFIG = BufferConfig(always_buffer=True)  # flush_interval 5 s
STORM_POLICY = ReconnectPolicy(
    backoff=Backoff((0.1,), jitter=0.0), fail_max=10, reset_timeout=2.0, stable_after=30.0
)


def offset(tenant_id: str) -> float:
    """When the tenant's first burst comes: 0.5 .. 9.5 s, spread over the tenants."""
    return int(tenant_id[1:]) % 10 + 0.5


@attrs.define
class Outcome(FleetOutcome):
    gauges: list[tuple[int, int]] = attrs.field(factory=list)
    """(sockets alive, buffers alive), sampled once a virtual second."""
    handler_calls: int = 0


async def feed(upstream: FakeUpstream, tenant_id: str) -> None:
    connection = await upstream.wait_connections(1, path=f"/{tenant_id}")
    for k in range(BURSTS):
        await trio.sleep_until(offset(tenant_id) + k * BURST_EVERY)
        await connection.stream(BURST, keys=10**9)  # distinct keys: nothing merges


async def storm(upstream: FakeUpstream) -> None:
    """Refuse a handshake, accept the next and drop it 50 ms later; again and again."""
    accepted = 0
    while True:
        upstream.reject_next(503, path="/bad")
        accepted += 1
        connection = await upstream.wait_connections(accepted, path="/bad")
        await trio.sleep(0.05)
        await connection.abort()


async def scenario(bad: str | None) -> Outcome:
    outcome = Outcome({t: [] for t in HEALTHY})

    async def raising(sock: Socket) -> None:
        outcome.handler_calls += 1
        raise RuntimeError(f"handler bug #{outcome.handler_calls}")

    def healthy(tenant_id: str, handler: Handler) -> TenantSpec:
        connect = upstream.connector_to(f"/{tenant_id}")
        return TenantSpec(tenant_id, connect, handler=handler, options=SocketOptions(buffer=CONFIG))

    async with open_fake_upstream() as upstream, open_hub(seed=5) as hub:
        async with trio.open_nursery() as script:
            await add_healthy(hub, upstream, script, outcome, spec=healthy, feed=feed)
            if bad is not None:
                if bad == "storm":
                    script.start_soon(storm, upstream)
                await hub.add(
                    TenantSpec(
                        "bad",
                        upstream.connector_to("/bad"),
                        handler=raising if bad == "raising" else idle,
                        options=SocketOptions(buffer=CONFIG),
                        policy=STORM_POLICY,
                    )
                )

            async def sample() -> None:
                for second in range(int(RUN_FOR)):  # at 0.25, 1.25, ...: off the healthy deadlines
                    await trio.sleep_until(second + 0.25)
                    outcome.gauges.append((hub.gauges.sockets_alive, hub.gauges.buffers_alive))

            script.start_soon(sample)
            await trio.sleep_until(RUN_FOR)
            script.cancel_scope.cancel()
        observe(outcome, hub)
    read_sent(outcome, upstream)
    return outcome


@functools.cache
def control() -> Outcome:
    return run_virtual(scenario, None)


def check_healthy(outcome: Outcome, baseline: Outcome) -> None:
    assert_untouched(outcome, baseline)
    # live buffers == live sockets at every sample, and every healthy socket stayed up
    assert len(outcome.gauges) == RUN_FOR
    assert all(buffers == sockets for sockets, buffers in outcome.gauges)
    assert all(len(HEALTHY) <= sockets <= len(HEALTHY) + 1 for sockets, _ in outcome.gauges)


def test_the_control_run_is_steady() -> None:
    baseline = control()
    for tenant_id in HEALTHY:
        timeline = baseline.timelines[tenant_id]
        assert len(baseline.sent[tenant_id]) == BURSTS * BURST
        assert delivered_in_order(baseline, tenant_id)
        # one interval flush per burst, 5 s after it: 2 flushes and 4 events a minute
        assert per_minute(timeline) == dict.fromkeys(range(10), (2, 4))
        first = offset(tenant_id)
        assert [at for at, _, _ in timeline] == [first + 5 + BURST_EVERY * k for k in range(BURSTS)]
    assert metric(baseline, "tenantry_buffer_flush_total", reason="interval") == 99 * BURSTS
    assert all(gauge == (99, 99) for gauge in baseline.gauges)


def test_a_reconnect_storm_beside_99_tenants_changes_nothing_for_them() -> None:
    outcome = run_virtual(scenario, "storm")
    check_healthy(outcome, control())

    # the bad tenant really stormed: hundreds of attempts, the breaker tripping again and again
    bad = outcome.statuses["bad"]
    refused = metric(
        outcome, "tenantry_reconnects_total", tenant="bad", reason="unavailable_service"
    )
    dropped = metric(outcome, "tenantry_reconnects_total", tenant="bad", reason="connection_lost")
    assert refused >= 100
    assert dropped >= 100
    assert abs(refused - dropped) <= 1  # they alternate
    assert bad.connections in (dropped, dropped + 1)
    assert bad.breaker_trips >= 200
    assert bad.failures == refused + dropped  # never a stable connection


def test_a_raising_handler_beside_99_tenants_changes_nothing_for_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="tenantry"):
        outcome = run_virtual(scenario, "raising")
    check_healthy(outcome, control())

    # the handler raised on every connection, and each failure was counted and logged
    bad = outcome.statuses["bad"]
    failures = [r for r in caplog.records if r.getMessage() == "handler failed: tenant bad"]
    assert outcome.handler_calls >= 200
    assert bad.connections == outcome.handler_calls
    assert len(failures) == outcome.handler_calls
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)
    ended = metric(outcome, "tenantry_reconnects_total", tenant="bad")
    assert ended == outcome.handler_calls  # every connection ended by the handler's failure
    assert bad.failures == outcome.handler_calls
    assert bad.breaker_trips >= 200
