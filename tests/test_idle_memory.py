"""What an idle socket keeps: only what reading its next frame needs.

A hub holds thousands of idle connections, so every object each one keeps
is paid thousands of times. Two kinds of object are needed only while a
connection starts, and an idle connection keeps none of them:

=====================================  ==============================================
the opening handshake's state          wsproto's handshake and h11's HTTP connection
                                       (the transport keeps wsproto's frame parser)
the task status of ``nursery.start``   it holds the nursery the tenant's task started
                                       in, with its cancel scope
=====================================  ==============================================

The upstream runs in this process too, so its own (server side) handshake
objects are told apart by their role.
"""

from __future__ import annotations

import collections
import gc

import h11
import trio
import trio.testing
import wsproto
import wsproto.handshake

from tenantry import Socket, TenantSpec, open_hub
from tenantry.testing import open_fake_upstream

TENANTS = 3


def handshake_and_start_objects() -> collections.Counter[str]:
    """Client-side handshake state and task statuses in memory, by kind."""
    gc.collect()
    kept: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        if isinstance(o, (wsproto.WSConnection, wsproto.handshake.H11Handshake)) and o.client:
            kept[type(o).__name__] += 1
        elif isinstance(o, h11.Connection) and o.our_role is h11.CLIENT:
            kept["h11.Connection"] += 1
        elif type(o).__name__ == "_TaskStatus":  # trio's, for `nursery.start`
            kept["_TaskStatus"] += 1
    return kept


async def test_an_idle_socket_keeps_no_handshake_state_nor_its_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sockets: list[Socket] = []

    async def handler(sock: Socket) -> None:
        sockets.append(sock)
        async with sock.events.subscribe() as batches:
            async for _ in batches:
                pass

    async with open_fake_upstream() as upstream, open_hub() as hub:
        before = handshake_and_start_objects()
        for i in range(TENANTS):
            spec = TenantSpec(f"t{i}", upstream.connector_to(f"/t{i}"), handler)
            await hub.add(spec)
        await upstream.wait_connections(TENANTS)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sockets) == TENANTS
        assert handshake_and_start_objects() == before
