"""Hostile peers against tenantry's own WebSocket client, through `open_socket` and a hub.

Each peer is scripted here, under `MockClock` over in-memory streams: an opening
handshake no server should send, frames that break RFC 6455, a stream that arrives
one byte per read. Every one must end in a clear, counted outcome, at once or
within its bound: a `ConnectFailed` that says why, or a close reason with the close
code RFC 6455 asks for sent to the peer (1002 for a protocol error, 1007 for
invalid UTF-8), and every event before the fault delivered.

trio-websocket's client, given the same peers, ends the same way on the frames (it
is wsproto underneath, as here), but it too keeps every empty fragment of an
unfinished message. On the handshakes it did worse: an upgrade missing a header,
with an extension or a subprotocol it never offered, a header that is not ASCII,
a redirect, a 100 Continue or a header block too long crashed its connection's
nursery with wsproto's or h11's own error; a connection reset during the answer
left it waiting for its caller's timeout.
"""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Callable, Mapping

import pytest
import trio
import trio.testing
import wsproto.events as ws_events
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from helpers import (
    BROKEN_HANDSHAKES,
    Peer,
    StreamServer,
    collect,
    connect_failure,
    event,
    idle,
    raw_server,
    scripted,
)
from tenantry import (
    Batch,
    CloseOrigin,
    RejectReason,
    TenantSpec,
    TenantState,
    open_hub,
    open_socket,
)
from tenantry._transport import _Core
from tenantry.testing import MemoryConnector

# -- the opening handshake ------------------------------------------------------------


def answering(make: Callable[[bytes], bytes]) -> StreamServer:
    """A server that reads the request, writes ``make(accept token)``, then holds."""

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            request = bytearray()
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some()
            found = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
            assert found is not None
            await stream.send_all(make(generate_accept_token(found[1])))
            await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    return serve


def upgrade(
    *, upgrade: bytes = b"websocket", connection: bytes = b"Upgrade", extra: bytes = b""
) -> StreamServer:
    """A server whose 101 has these Upgrade and Connection values (empty: none) and *extra*."""

    def make(accept: bytes) -> bytes:
        head = b"HTTP/1.1 101 Switching Protocols\r\n"
        if upgrade:
            head += b"Upgrade: " + upgrade + b"\r\n"
        if connection:
            head += b"Connection: " + connection + b"\r\n"
        return head + b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"

    return answering(make)


HUGE_HEAD = b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Junk: " + b"j" * 100 * 1000 + b"\r\n"
INVALID = "invalid handshake response: "

HANDSHAKES = [
    *BROKEN_HANDSHAKES,
    pytest.param(
        raw_server(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nnot you"),
        403,
        "handshake rejected with HTTP 403",
        id="an HTTP error whose body runs until the close",
    ),
    pytest.param(
        raw_server(HUGE_HEAD, then="hold"),
        400,
        INVALID + "Bad HTTP message (Receive buffer too long)",
        id="a header block past h11's limit",
    ),
    pytest.param(
        upgrade(upgrade=b""),
        400,
        INVALID + "Missing header, 'Upgrade: websocket'",
        id="101 without Upgrade",
    ),
    pytest.param(
        upgrade(connection=b""),
        400,
        INVALID + "Missing header, 'Connection: Upgrade'",
        id="101 without Connection",
    ),
    pytest.param(
        upgrade(extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        400,
        INVALID + "unrecognized extension permessage-deflate",
        id="an extension never offered",
    ),
    pytest.param(
        upgrade(extra=b"Sec-WebSocket-Protocol: chat\r\n"),
        400,
        INVALID + "unrecognized subprotocol chat",
        id="a subprotocol never offered",
    ),
    pytest.param(
        upgrade(connection=b"\xffUpgrade"),
        400,
        INVALID + "a header that is not ASCII",
        id="a Connection header that is not ASCII",
    ),
    pytest.param(
        upgrade(extra=b"Sec-WebSocket-Protocol: \xff\r\n"),
        400,
        INVALID + "a header that is not ASCII",
        id="a subprotocol that is not ASCII",
    ),
    pytest.param(
        upgrade(extra=b"Sec-WebSocket-Extensions: \xff\r\n"),
        400,
        INVALID + "a header that is not ASCII",
        id="an extension that is not ASCII",
    ),
    pytest.param(
        raw_server(b"HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\nContent-Length: 0\r\n\r\n"),
        302,
        "handshake rejected with HTTP 302",
        id="a redirect, not followed",
    ),
    pytest.param(
        raw_server(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            then="hold",
        ),
        403,
        "handshake rejected with HTTP 403",
        id="a rejection after 100 Continue",
    ),
    pytest.param(
        raw_server(b"HTTP/1.0 200 OK\r\n\r\nhello"),
        200,
        "handshake rejected with HTTP 200",
        id="HTTP/1.0 with a body until the close",
    ),
]


@pytest.mark.parametrize(("server", "code", "message"), HANDSHAKES)
async def test_a_hostile_handshake_fails_at_once_and_says_why(
    autojump_clock: trio.testing.MockClock, server: StreamServer, code: int, message: str
) -> None:
    reason, took = await connect_failure(server)
    assert (reason.code, reason.message, reason.remote) == (code, message, True)
    assert took == 0


def trickle(chunks: list[bytes]) -> StreamServer:
    """A server that reads the request, then writes *chunks*, one a second."""

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            await stream.receive_some()
            for chunk in chunks:
                await stream.send_all(chunk)
                await trio.sleep(1)
        finally:
            await trio.aclose_forcefully(stream)

    return serve


SLOW_HEAD = b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Slow: " + b"s" * 100 + b"\r\n"


@pytest.mark.parametrize(
    "server",
    [
        pytest.param(trickle([bytes([byte]) for byte in SLOW_HEAD]), id="one byte a second"),
        pytest.param(trickle([b"HTTP/1.1 100 Continue\r\n\r\n"] * 100), id="a 100 a second"),
    ],
)
async def test_a_slow_answer_is_bounded_by_connect_timeout(
    autojump_clock: trio.testing.MockClock, server: StreamServer
) -> None:
    reason, took = await connect_failure(server)
    assert (reason.code, reason.message, took) == (408, "handshake timed out after 10 s", 10)


def upgrade_after(interim: bytes, then: bytes) -> StreamServer:
    """A server that answers *interim* (1xx responses), then the upgrade and *then*."""

    def make(accept: bytes) -> bytes:
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        return (
            interim
            + head
            + b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + then
        )

    return answering(make)


@pytest.mark.parametrize(
    "interim",
    [
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="100 Continue"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            id="100, then 103 with a header",
        ),
    ],
)
async def test_interim_responses_before_the_upgrade_are_skipped(
    autojump_clock: trio.testing.MockClock, interim: bytes
) -> None:
    message = b'{"type": "x", "data": 1}'
    then = b"\x81" + bytes([len(message)]) + message + CLOSE_1000
    got, code, rejected = await delivered(upgrade_after(interim, then))
    assert (got, code, rejected) == ([1], 1000, {})


# -- frames that break RFC 6455 -------------------------------------------------------


def raw(data: bytes) -> Callable[[Peer], bytes]:
    return lambda _: data


def close_frame(payload: bytes) -> bytes:
    return bytes([0x88, len(payload)]) + payload


def masked(peer: Peer) -> bytes:
    return b"\x81\x83abcd" + bytes(x ^ y for x, y in zip(b"xyz", b"abcd", strict=False))


INVALID_FRAME: Mapping[RejectReason, int] = {RejectReason.INVALID_FRAME: 1}

BROKEN_FRAMES = [
    pytest.param(masked, 1002, INVALID_FRAME, id="a masked frame"),
    pytest.param(raw(b"\xc1\x03abc"), 1002, INVALID_FRAME, id="RSV1 set"),
    pytest.param(raw(b"\x83\x03abc"), 1002, INVALID_FRAME, id="a reserved data opcode"),
    pytest.param(raw(b"\x8b\x00"), 1002, INVALID_FRAME, id="a reserved control opcode"),
    pytest.param(raw(b"\x09\x01a\x80\x01b"), 1002, INVALID_FRAME, id="a fragmented ping"),
    pytest.param(raw(b"\x89\x7e\x00\x80" + b"p" * 128), 1002, INVALID_FRAME, id="a 128-byte ping"),
    pytest.param(raw(b"\x80\x03abc"), 1002, INVALID_FRAME, id="a continuation without a start"),
    pytest.param(
        raw(b"\x02\x01a\x81\x01b\x80\x01c"), 1002, INVALID_FRAME, id="text inside a binary message"
    ),
    pytest.param(raw(b"\x81\x7e\x00\x05hello"), 1002, INVALID_FRAME, id="a length not minimal"),
    pytest.param(
        raw(b"\x82\x7f" + (1 << 63).to_bytes(8, "big")), 1002, INVALID_FRAME, id="length MSB set"
    ),
    *(
        pytest.param(
            raw(close_frame(code.to_bytes(2, "big"))), 1002, INVALID_FRAME, id=f"close {code}"
        )
        for code in (1005, 1006, 1015, 999, 5000)
    ),
    pytest.param(raw(close_frame(b"\x03")), 1002, INVALID_FRAME, id="a 1-byte close frame"),
    pytest.param(
        raw(close_frame(b"\x03\xe8\xff\xfe")),
        1007,
        {RejectReason.INVALID_UTF8: 1},
        id="a close reason not UTF-8",
    ),
]


@pytest.mark.parametrize(("bad", "code", "rejected"), BROKEN_FRAMES)
async def test_a_frame_that_breaks_the_protocol_closes_with_its_code(
    autojump_clock: trio.testing.MockClock,
    bad: Callable[[Peer], bytes],
    code: int,
    rejected: Mapping[RejectReason, int],
) -> None:
    closes: list[int] = []
    batches: list[Batch] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as server:
            connector = MemoryConnector(server, serve_stream=scripted(bad, closes))
            async with (
                open_socket(connector, tenant_id="acme") as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, batches)
            server.cancel_scope.cancel()
    assert closes == [code]  # sent to the peer, once
    reason = sock.close_reason
    assert reason is not None
    assert (reason.raw_code, reason.remote, reason.origin) == (code, False, CloseOrigin.LOCAL)
    assert {r: n for r, n in sock.rejected.items() if n} == rejected
    assert [data for batch in batches for data in batch["x"]] == [1]  # what came before


async def test_a_tenant_reconnects_after_a_protocol_error_and_counts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closes: list[int] = []
    async with trio.open_nursery() as server, open_hub(seed=1) as hub:
        await hub.add(
            TenantSpec("acme", MemoryConnector(server, serve_stream=scripted(masked, closes)), idle)
        )
        await trio.sleep(120)
        [status] = hub.status()
        metrics = hub.metrics()
        server.cancel_scope.cancel()
    assert closes == [1002]
    assert (status.state, status.connections) == (TenantState.CONNECTED, 2)
    assert status.last_disconnect is not None
    name = status.last_disconnect.name
    assert status.last_disconnect.raw_code == 1002
    assert metrics.value("tenantry_reconnects_total", tenant="acme", reason=name) == 1


# -- streams that are valid, if unkind ------------------------------------------------


def serving(*events: ws_events.Event, then: bytes = b"", bytewise: bool = False) -> StreamServer:
    """A server that accepts, writes *events* and then *then* (one byte a write if
    *bytewise*), then answers the client's close, or ends the stream if *then* is cut."""

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        try:
            await peer.accept()
            data = peer.frames(*events) + then
            for start in range(0, len(data), 1 if bytewise else len(data)):
                await stream.send_all(data[start : start + (1 if bytewise else len(data))])
                await trio.testing.wait_all_tasks_blocked()  # read before the next is written
            if then.startswith(b"\x88"):
                await peer.until(ws_events.CloseConnection)
        finally:
            await trio.aclose_forcefully(stream)

    return serve


async def delivered(
    server: StreamServer,
) -> tuple[list[object], int | None, Mapping[RejectReason, int]]:
    """What a socket served by *server* delivered, the raw close code, and its rejections."""
    batches: list[Batch] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            async with (
                open_socket(
                    MemoryConnector(nursery, serve_stream=server), tenant_id="acme"
                ) as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, batches)
            nursery.cancel_scope.cancel()
    assert sock.close_reason is not None
    rejected = {r: n for r, n in sock.rejected.items() if n}
    return [data for batch in batches for data in batch["x"]], sock.close_reason.raw_code, rejected


CLOSE_1000 = close_frame(b"\x03\xe8")


async def test_a_stream_one_byte_a_read_delivers_every_event_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = [event(n) for n in range(50)]
    got, code, rejected = await delivered(serving(*events, then=CLOSE_1000, bytewise=True))
    assert (got, code, rejected) == (list(range(50)), 1000, {})


async def test_zero_length_messages_are_messages(autojump_clock: trio.testing.MockClock) -> None:
    zero = b"\x81\x00\x82\x00"  # an empty text message, an empty binary one
    got, code, rejected = await delivered(serving(event(1), then=zero + CLOSE_1000))
    assert (got, code) == ([1], 1000)
    assert rejected == {RejectReason.INVALID_JSON: 1, RejectReason.BINARY: 1}


async def test_the_end_of_the_stream_within_a_frame_is_a_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got, code, rejected = await delivered(serving(event(1), then=b"\x81\x10abc"))
    assert (got, code, rejected) == ([1], 1006, {})


def test_empty_fragments_hold_no_memory() -> None:
    """A message held open by empty continuation frames (two bytes each on the wire,
    never nearer max_message_size) keeps nothing for them: their flood cannot grow
    the connection's memory."""
    core = _Core(Connection(ConnectionType.CLIENT), max_message_size=100)
    assert core.feed(b"\x01\x01a") == []  # a text message begins
    empty = b"\x00\x00" * 5_000  # 5,000 empty continuation frames
    core.feed(empty)  # the first pass allocates what any read does
    tracemalloc.start()
    try:
        for _ in range(10):
            assert core.feed(empty) == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 50_000  # 50,000 empty frames: 400 KB of list entries if they were kept
    assert core.feed(b"\x80\x01b") == ["ab"]
    assert core.closed is None
