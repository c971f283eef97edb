"""Ten thousand socket lifecycles through every close path, in virtual time.

Each tenant's driver waits for the tenant's next connection, sends it a few
events (some merge in the buffer), then ends it one of seven ways: the
upstream closes with 4503 or sends a 515 stream:error, drops the connection,
or stalls until the client's keepalive gives up; or, from the client's side,
the handler raises, the hub restarts the tenant, or removes and re-adds it.
Client-side ends wait for a flush interval first, so that everything sent
was read; an upstream's end is read up to the last frame anyway.

The run checks DESIGN.md's invariants across all of it: live buffers equal
live sockets at every sample, a tenant never holds two sockets, every event
decoded is handed to a handler or merged exactly once and none is lost, and
once the drivers are done the hub is back to the tasks it had with every
tenant connected and idle -- and to nothing when it closes.

``TENANTRY_SOAK_LIFECYCLES`` sets the number of lifecycles (default 10,000).
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import tenantry
from helpers import living_tasks
from tenantry.testing import FakeUpstream, UpstreamConnection, open_fake_upstream

pytestmark = pytest.mark.soak

LIFECYCLES = int(os.environ.get("TENANTRY_SOAK_LIFECYCLES", "2000"))
TENANTS = 50
EVENTS_PER_CONNECTION = 4
FLUSH_INTERVAL = 5.0
KEEPALIVE = 10.0
CLOSE_PATHS = ("503", "515", "abort", "stall", "handler error", "restart", "remove")
CLIENT_SIDE = {"handler error", "restart", "remove"}
BOOM = "boom"


@attrs.define
class Ledger:
    """What one tenant was sent and what its handlers were handed."""

    handed: list[int] = attrs.Factory(list)
    received: int = 0
    merged: int = 0
    lost: int = 0
    live_sockets: int = 0
    most_live_sockets: int = 0
    boom_raised: int = 0


class HandlerBoom(Exception):
    """The scripted handler error."""


def handler_for(ledger: Ledger) -> Callable[[tenantry.Socket], Any]:
    async def handler(sock: tenantry.Socket) -> None:
        ledger.live_sockets += 1
        ledger.most_live_sockets = max(ledger.most_live_sockets, ledger.live_sockets)
        try:
            async with sock.events.subscribe() as batches:
                async for batch in batches:
                    chats = batch["chats.update"]
                    ledger.handed += [chat["seq"] for chat in chats]
                    if any(chat["id"] == BOOM for chat in chats):
                        ledger.boom_raised += 1
                        raise HandlerBoom
        finally:
            ledger.live_sockets -= 1
            stats = sock.buffer.stats
            ledger.received += stats.received
            ledger.merged += stats.merged
            ledger.lost += sock.events.lost

    return handler


@attrs.define
class Run:
    hub: tenantry.Hub
    upstream: FakeUpstream
    specs: dict[str, tenantry.TenantSpec]
    sent: collections.Counter[str] = attrs.Factory(collections.Counter)
    ended: collections.Counter[str] = attrs.Factory(collections.Counter)
    samples: int = 0
    gauge_mismatches: int = 0
    seq: int = 0

    async def send_some(self, tenant_id: str, connection: UpstreamConnection) -> None:
        for n in range(EVENTS_PER_CONNECTION):
            self.seq += 1
            # Two ids per connection: the second update of an id merges into the first.
            await connection.send_event("chats.update", {"id": f"c{n % 2}", "seq": self.seq})
            self.sent[tenant_id] += 1

    async def end(self, how: str, tenant_id: str, connection: UpstreamConnection) -> None:
        if how in CLIENT_SIDE:
            await trio.sleep(FLUSH_INTERVAL + 1)  # everything sent has been read and handed
        if how == "503":
            await connection.close(4503, "service unavailable")
        elif how == "515":
            await connection.stream_error(515, "restart required")
        elif how == "abort":
            await connection.abort()
        elif how == "stall":
            connection.stall()
            await trio.sleep(2 * KEEPALIVE + 10)  # the client has given up by now
            await connection.abort()
        elif how == "handler error":
            self.seq += 1
            await connection.send_event("chats.update", {"id": BOOM, "seq": self.seq})
            self.sent[tenant_id] += 1
        elif how == "restart":
            await self.hub.restart(tenant_id)
        else:
            await self.hub.remove(tenant_id)
            await self.hub.add(self.specs[tenant_id])
        self.ended[how] += 1

    async def drive(self, tenant_id: str, lifecycles: int, rng: random.Random) -> None:
        path = f"/{tenant_id}"
        for count in range(1, lifecycles + 1):
            connection = await self.upstream.wait_connections(count, path=path)
            await self.send_some(tenant_id, connection)
            await self.end(rng.choice(CLOSE_PATHS), tenant_id, connection)
        await self.upstream.wait_connections(lifecycles + 1, path=path)

    async def sample_gauges(self) -> None:
        while True:
            gauges = self.hub.gauges
            self.samples += 1
            self.gauge_mismatches += gauges.buffers_alive != gauges.sockets_alive
            await trio.sleep(1)


async def settle(hub: tenantry.Hub) -> None:
    """Let (virtual) time pass until nothing is pending; every tenant must be connected."""
    await trio.sleep(FLUSH_INTERVAL + 1)
    await trio.testing.wait_all_tasks_blocked()
    assert {status.state for status in hub.status()} == {tenantry.TenantState.CONNECTED}


async def test_lifecycles_through_every_close_path_leave_nothing_and_lose_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    per_tenant = -(-LIFECYCLES // TENANTS)
    ledgers = {f"t{n:03}": Ledger() for n in range(TENANTS)}
    before_anything = living_tasks()
    async with open_fake_upstream() as upstream, tenantry.open_hub(seed=7) as hub:
        specs = {
            tenant_id: tenantry.TenantSpec(
                tenant_id,
                upstream.connector_to(f"/{tenant_id}"),
                handler_for(ledger),
                options=tenantry.SocketOptions(
                    buffer=tenantry.BufferConfig(flush_interval=FLUSH_INTERVAL, always_buffer=True),
                    keepalive=KEEPALIVE,
                ),
            )
            for tenant_id, ledger in ledgers.items()
        }
        for spec in specs.values():
            await hub.add(spec)
        for tenant_id in specs:
            await upstream.wait_connections(1, path=f"/{tenant_id}")
        await settle(hub)
        connected_and_idle = living_tasks()
        run = Run(hub, upstream, specs)
        async with trio.open_nursery() as script:
            script.start_soon(run.sample_gauges)
            async with trio.open_nursery() as drivers:
                for n, tenant_id in enumerate(specs):
                    drivers.start_soon(run.drive, tenant_id, per_tenant, random.Random(n))
            script.cancel_scope.cancel()
        await settle(hub)
        assert living_tasks() == connected_and_idle
        metrics = hub.metrics()
    assert living_tasks() == before_anything
    assert (hub.gauges.sockets_alive, hub.gauges.buffers_alive) == (0, 0)

    assert sum(run.ended.values()) == per_tenant * TENANTS >= LIFECYCLES
    assert set(run.ended) == set(CLOSE_PATHS)  # every path taken...
    assert min(run.ended.values()) > per_tenant * TENANTS / len(CLOSE_PATHS) / 2  # ...often
    assert run.gauge_mismatches == 0
    assert run.samples >= 100

    for tenant_id, ledger in ledgers.items():
        assert ledger.received == run.sent[tenant_id], tenant_id  # every frame sent was decoded
        assert len(ledger.handed) + ledger.merged == ledger.received, tenant_id
        assert len(set(ledger.handed)) == len(ledger.handed), tenant_id  # exactly once
        assert ledger.lost == 0, tenant_id
        assert ledger.most_live_sockets == 1, tenant_id
    assert sum(ledger.boom_raised for ledger in ledgers.values()) == run.ended["handler error"]
    assert sum(ledger.merged for ledger in ledgers.values()) > 0  # merging was exercised
    assert metrics.value("tenantry_frames_rejected_total") == 0
