"""Hostile servers, through `open_socket` and a hub's tenant: what tenantry's transport refuses.

Each server is scripted by the test with `helpers.Peer` (wsproto's server side), so it
can send what no well-behaved server would: a message too long in many fragments,
invalid UTF-8, a rejection cut short, a ping while it reads nothing. Under
`MockClock` over in-memory streams; one test over loopback TCP against the
``websockets`` library's server, a peer tenantry did not write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager

import pytest
import trio
import trio.testing
import wsproto.events as ws_events
from websockets.asyncio.server import ServerConnection

from helpers import (
    Peer,
    StreamServer,
    WebsocketsServer,
    collect,
    event,
    idle,
    raw_server,
    scripted,
    websockets_server,
)
from tenantry import (
    Batch,
    CloseOrigin,
    ConnectFailed,
    ReasonCode,
    RejectReason,
    SocketOptions,
    TenantSpec,
    TenantState,
    open_hub,
    open_socket,
)
from tenantry._connect import open_connection
from tenantry._socket import KEEPALIVE_GRACE
from tenantry._transport import Transport
from tenantry.testing import MemoryConnector

LIMIT = 100
"""The sockets' max_message_size: the transport refuses messages over four times it."""
TRANSPORT_LIMIT = 4 * LIMIT


def too_long_in_fragments(peer: Peer) -> bytes:
    """One text message of TRANSPORT_LIMIT + 1 characters, in 41 fragments of 10 or 1."""
    parts = ["x" * 10] * (TRANSPORT_LIMIT // 10) + ["x"]
    return peer.frames(
        *(ws_events.TextMessage(data=part, message_finished=False) for part in parts[:-1]),
        ws_events.TextMessage(data=parts[-1], message_finished=True),
    )


def invalid_utf8(peer: Peer) -> bytes:
    """A text frame whose payload is not UTF-8 (written by hand: wsproto would not)."""
    return b"\x81\x02\xff\xfe"


def peers_own_1009(peer: Peer) -> bytes:
    """The peer closes with 1009 itself: its close, not a message tenantry refused."""
    return peer.frames(ws_events.CloseConnection(code=1009, reason="too big for me"))


REFUSALS = [
    pytest.param(too_long_in_fragments, 1009, RejectReason.TOO_LARGE, id="1009 by fragments"),
    pytest.param(invalid_utf8, 1007, RejectReason.INVALID_UTF8, id="1007 invalid utf-8"),
]


def rejections(counts: Mapping[RejectReason, int]) -> dict[RejectReason, int]:
    return {reason: n for reason, n in counts.items() if n}


@pytest.mark.parametrize(("bad", "code", "rejected"), REFUSALS)
async def test_a_refused_message_closes_with_its_code_and_is_counted_once(
    autojump_clock: trio.testing.MockClock,
    bad: Callable[[Peer], bytes],
    code: int,
    rejected: RejectReason,
) -> None:
    closes: list[int] = []
    batches: list[Batch] = []
    with trio.fail_after(600):  # virtual time: a socket left open fails here
        async with trio.open_nursery() as server:
            connector = MemoryConnector(server, serve_stream=scripted(bad, closes))
            options = SocketOptions(max_message_size=LIMIT)
            async with (
                open_socket(connector, tenant_id="acme", options=options) as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, batches)
            server.cancel_scope.cancel()
    assert closes == [code]  # the peer saw the refusal's close frame, once
    reason = sock.close_reason
    assert reason is not None
    assert (reason.code, reason.raw_code) == (code, code)
    assert (reason.remote, reason.origin) == (False, CloseOrigin.LOCAL)  # this side refused it
    assert rejections(sock.rejected) == {rejected: 1}
    assert sock.frames_received == 1  # the message after the refused one is dropped
    assert [data for batch in batches for data in batch["x"]] == [1]


async def test_the_peers_own_1009_is_its_close_and_no_rejection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closes: list[int] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as server:
            connector = MemoryConnector(server, serve_stream=scripted(peers_own_1009, closes))
            async with open_socket(connector, tenant_id="acme") as sock:
                await trio.sleep_forever()
            server.cancel_scope.cancel()
    assert closes == [1009]  # the client's answer to the peer's close
    assert sock.close_reason is not None
    reason = sock.close_reason
    assert (reason.raw_code, reason.remote, reason.origin) == (1009, True, CloseOrigin.CLOSE_FRAME)
    assert rejections(sock.rejected) == {}


@pytest.mark.parametrize(("bad", "code", "rejected"), REFUSALS)
async def test_a_tenant_counts_a_refused_message_once_and_reconnects(
    autojump_clock: trio.testing.MockClock,
    bad: Callable[[Peer], bytes],
    code: int,
    rejected: RejectReason,
) -> None:
    closes: list[int] = []
    async with trio.open_nursery() as server, open_hub(seed=1) as hub:
        connector = MemoryConnector(server, serve_stream=scripted(bad, closes))
        options = SocketOptions(max_message_size=LIMIT)
        await hub.add(TenantSpec("acme", connector, idle, options=options))
        await trio.sleep(120)
        [status] = hub.status()
        metrics = hub.metrics()
        server.cancel_scope.cancel()
    assert closes == [code]
    assert (status.state, status.connections) == (TenantState.CONNECTED, 2)
    assert status.last_disconnect is not None
    assert status.last_disconnect.raw_code == code
    name = status.last_disconnect.name
    assert metrics.value("tenantry_reconnects_total", tenant="acme", reason=name) == 1
    assert metrics.value("tenantry_frames_rejected_total", tenant="acme") == 1
    assert (
        metrics.value("tenantry_frames_rejected_total", tenant="acme", reason=rejected.value) == 1
    )


async def test_a_rejection_cut_short_by_the_end_of_the_stream_keeps_what_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\nX-Error: go away\r\n\r\nnot y"
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=raw_server(answer))
        with pytest.raises(ConnectFailed) as failed:
            async with open_socket(connector, tenant_id="acme"):
                pytest.fail("the handshake was rejected")
        assert trio.current_time() == 0  # at the end of the stream: not the connect timeout
        server.cancel_scope.cancel()
    assert (failed.value.status, failed.value.body) == (403, b"not y")
    assert ("x-error", "go away") in failed.value.headers
    assert failed.value.reason.code == ReasonCode.FORBIDDEN


class LockstepConnector:
    """Connects over `trio.testing.lockstep_stream_pair`: a write waits for the peer's read."""

    def __init__(self, nursery: trio.Nursery, serve: StreamServer) -> None:
        self._nursery = nursery
        self._serve = serve

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Transport]:
        """See `tenantry.Connector.open`."""

        async def open_stream() -> trio.abc.Stream:
            client, server = trio.testing.lockstep_stream_pair()
            self._nursery.start_soon(self._serve, server)
            return client

        return open_connection(
            open_stream,
            host="upstream",
            resource="/",
            headers=headers,
            max_message_size=max_message_size,
        )


async def test_a_ping_behind_a_blocked_writer_leaves_the_reader_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The peer reads nothing while it sends: the socket's send waits, its reader does not."""
    reading, ponged = trio.Event(), trio.Event()
    seen: list[ws_events.Event] = []

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        try:
            await peer.accept()
            # Each write waits until the client reads it: the reader must keep reading.
            await peer.send(event(1))
            await peer.send(ws_events.Ping(payload=b"alive?"))
            await peer.send(event(2))
            await peer.send(event(3))
            await reading.wait()
            await peer.until(ws_events.Pong)
            seen.extend(peer.seen)
            ponged.set()
            await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    batches: list[Batch] = []
    with trio.fail_after(600):  # virtual time: a deadlock fails here instead of hanging
        async with trio.open_nursery() as server:
            connector = LockstepConnector(server, serve)
            async with open_socket(connector, tenant_id="acme") as sock:
                async with trio.open_nursery() as body, sock.events.subscribe() as channel:
                    body.start_soon(sock.send, "hello", 1)  # blocks: the peer reads nothing
                    while len(batches) < 3:
                        batches.append(await channel.receive())
                    assert sock.frames_received == 3
                    reading.set()  # the peer reads now: the send, then the pong, go out
                    await ponged.wait()
                sock.close()
            server.cancel_scope.cancel()
    assert [data for batch in batches for data in batch["x"]] == [1, 2, 3]
    message, pong = [e for e in seen if isinstance(e, (ws_events.TextMessage, ws_events.Pong))]
    assert isinstance(message, ws_events.TextMessage)  # the send first: it held the stream
    assert json.loads(message.data) == {"type": "hello", "data": 1}
    assert isinstance(pong, ws_events.Pong)
    assert pong.payload == b"alive?"


# -- the keepalive and a reader the application holds up ----------------------------------

KEEPALIVE = 10.0


def pinged(*, answer: bool) -> StreamServer:
    """A server that, at the client's first ping, sends an event, then two more in a later
    write (two reads, so two batches), then (with *answer*) its pong a second later in a
    write of its own, and reads on."""

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        try:
            await peer.accept()
            ping = await peer.until(ws_events.Ping)
            if answer:
                await peer.send(event(1))
                await trio.sleep(0.5)
                await peer.send(event(2), event(3))
                await trio.sleep(1)
                await peer.send(ping.response())
            while not isinstance(await peer.until(ws_events.Event), ws_events.CloseConnection):
                pass  # a ping now goes unanswered
        finally:
            await trio.aclose_forcefully(stream)

    return serve


async def test_a_reader_held_up_during_a_pings_grace_is_no_dead_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The subscriber takes nothing while the pong is on its way: no pong is read, no 408."""
    batches: list[Batch] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as server:
            connector = MemoryConnector(server, serve_stream=pinged(answer=True))
            options = SocketOptions(keepalive=KEEPALIVE)
            async with open_socket(connector, tenant_id="acme", options=options) as sock:
                async with sock.events.subscribe(max_pending=1) as channel:
                    # Ping at 10 s, then two reads of events: the second batch waits for room.
                    await trio.sleep(KEEPALIVE + 100)
                    assert sock.close_reason is None
                    while sum(batch.count for batch in batches) < 3:
                        batches.append(await channel.receive())
                sock.close()
            server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert sock.close_reason.message == "closed locally"
    assert [data for batch in batches for data in batch["x"]] == [1, 2, 3]


async def test_a_silent_peer_is_dead_after_the_interval_and_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[float] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as server:
            connector = MemoryConnector(server, serve_stream=pinged(answer=False))
            options = SocketOptions(keepalive=KEEPALIVE)
            async with (
                open_socket(connector, tenant_id="acme", options=options) as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, [])
                ended.append(trio.current_time())  # the channel ends as the close begins
            server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.CONNECTION_LOST
    assert ended == [KEEPALIVE + KEEPALIVE_GRACE]  # the first ping at 10 s, 5 s for its pong


class SendsTooLong(WebsocketsServer):
    """Sends one text message of TRANSPORT_LIMIT + 1 characters in 41 fragments, then waits
    for the close; records the close code it got."""

    async def handle(self, ws: ServerConnection) -> None:
        try:
            await ws.send(["x" * 10] * (TRANSPORT_LIMIT // 10) + ["x"])  # an iterable: fragments
            await ws.wait_closed()
        finally:
            self.closes.put((ws.close_code, ws.close_reason))


async def test_a_message_too_long_in_fragments_from_the_websockets_library_over_tcp() -> None:
    with websockets_server(SendsTooLong()) as server, trio.fail_after(10):  # a bound, no timing
        url = f"ws://127.0.0.1:{server.port}/"
        options = SocketOptions(max_message_size=LIMIT)
        async with (
            open_socket(url, tenant_id="acme", options=options) as sock,
            sock.events.subscribe() as channel,
        ):
            await collect(channel, [])
        code, _ = await trio.to_thread.run_sync(server.closes.get, True, 5)
    assert code == 1009
    assert sock.close_reason is not None
    assert sock.close_reason.raw_code == 1009
    assert rejections(sock.rejected) == {RejectReason.TOO_LARGE: 1}
    assert sock.frames_received == 0
