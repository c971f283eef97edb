"""Closing never waits for a close reply that cannot come, and still asks for one that can."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

from helpers import idle, living_tasks
from tenantry import (
    DisconnectReason,
    ReasonCode,
    SocketOptions,
    TenantSpec,
    open_hub,
    open_socket,
)
from tenantry.testing import MemoryConnector, open_fake_upstream


async def test_a_hub_of_100_tenants_cancelled_from_outside_exits_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        before = living_tasks()
        with trio.CancelScope() as outer:
            async with open_hub(seed=1) as hub:
                for n in range(100):
                    await hub.add(TenantSpec(f"t{n}", upstream.connector_to(f"/t{n}"), idle))
                await upstream.wait_connections(100)
                await trio.testing.wait_all_tasks_blocked()
                assert hub.gauges.sockets_alive == 100
                outer.cancel()  # as Ctrl-C or a crashing sibling task would
                cancelled_at = trio.current_time()
                await trio.sleep_forever()
        assert trio.current_time() - cancelled_at < 0.5  # the close replies are not waited for
        assert hub.gauges.sockets_alive == 0
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        assert all(connection.ended for connection in upstream.connections)


async def test_a_peer_declared_dead_is_not_asked_for_a_close_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        connector = upstream.connector_to("/a")
        async with open_socket(
            connector, tenant_id="a", options=SocketOptions(keepalive=10)
        ) as sock:
            (await upstream.wait_connections(1)).stall()  # reads nothing, answers no ping
            try:
                await trio.sleep_forever()
            finally:
                closed_at = trio.current_time()
        assert sock.close_reason is not None
        assert (sock.close_reason.code, sock.close_reason.remote) == (408, True)
        assert trio.current_time() - closed_at < 0.5  # not another 5 s for a close handshake


@pytest.mark.parametrize(
    ("reason", "server_sees"),
    [
        (DisconnectReason(ReasonCode.CONNECTION_CLOSED, "done", remote=False), 1000),
        (DisconnectReason(ReasonCode.CONNECTION_LOST, "declared dead", remote=False), 1006),
    ],
)
async def test_a_local_close_shakes_hands_unless_the_peer_is_dead(
    autojump_clock: trio.testing.MockClock, reason: DisconnectReason, server_sees: int
) -> None:
    seen: list[int | None] = []

    async def server(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            seen.append(None if closed.reason is None else closed.reason.code)

    async with trio.open_nursery() as nursery:
        async with open_socket(MemoryConnector(nursery, server), tenant_id="a") as sock:
            sock.close(reason)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert seen == [server_sees]
