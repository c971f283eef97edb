"""The transport: tenantry's own WebSocket client connection (wsproto over a Trio stream).

Most tests run under `MockClock` over `trio.testing.memory_stream_pair`, with a
scripted peer (`Peer`: wsproto's server side, driven by the test, so that it
can put several frames, a ping or a close frame in one write); a few over
loopback TCP against trio-websocket's server and the ``websockets`` library's
(asyncio, in a thread: a peer tenantry did not write).
"""

from __future__ import annotations

import functools
import itertools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import trustme
import wsproto
import wsproto.events as ws_events
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import BROKEN_HANDSHAKES, Peer, StreamServer, raw_server, websockets_server
from tenantry._transport import (
    MAX_QUEUED_REPLIES,
    MAX_REJECTION_BODY,
    RECEIVE_BYTES,
    Closed,
    HandshakeFailed,
    Transport,
    TransportClosed,
    _Core,
    handshake,
)

LIMIT = 100
"""max_message_size of the transports here."""


async def connect(stream: trio.abc.Stream, max_message_size: int = LIMIT) -> Transport:
    return await handshake(
        stream,
        host="upstream",
        resource="/feed?v=1",
        headers={"Authorization": "Bearer abc"},
        max_message_size=max_message_size,
    )


@asynccontextmanager
async def connected(
    *then: ws_events.Event, pair: Any = trio.testing.memory_stream_pair
) -> AsyncIterator[tuple[Transport, Peer]]:
    client, server = pair()
    peer = Peer(server)
    with trio.fail_after(3600):  # virtual time: a test that would wait forever fails instead
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept, *then)
            transport = await connect(client)
        yield transport, peer


def text(data: str, finished: bool = True) -> ws_events.TextMessage:
    return ws_events.TextMessage(data=data, message_finished=finished)


# -- the opening handshake ------------------------------------------------------------


async def test_the_handshake_sends_the_request_and_returns_a_transport(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        [request] = [e for e in peer.seen if isinstance(e, ws_events.Request)]
        assert (request.host, request.target) == ("upstream", "/feed?v=1")
        assert (b"authorization", b"Bearer abc") in request.extra_headers
        assert transport.closed is None
        assert transport.pongs == 0


async def test_frames_in_the_handshakes_write_are_the_first_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(text("a"), text("b")) as (transport, _):
        assert await transport.receive() == ["a", "b"]


async def handshake_failure(server: StreamServer) -> HandshakeFailed:
    client, stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server, stream)
        with pytest.raises(HandshakeFailed) as failed:
            await connect(client)
        nursery.cancel_scope.cancel()
    return failed.value


@pytest.mark.parametrize(
    ("server", "code", "message"),
    BROKEN_HANDSHAKES,
)
async def test_a_failed_handshake_says_why(
    autojump_clock: trio.testing.MockClock, server: StreamServer, code: int, message: str
) -> None:
    failed = await handshake_failure(server)
    assert (failed.reason.code, failed.reason.message, failed.status) == (code, message, None)


@pytest.mark.parametrize(
    ("answer", "then", "body"),
    [
        pytest.param(b"Content-Length: 7\r\n\r\nnot you", "hold", b"not you", id="complete"),
        pytest.param(b"\r\nnot you", "close", b"not you", id="body until the close"),
        pytest.param(b"Content-Length: 99\r\n\r\nnot y", "close", b"not y", id="body cut short"),
        pytest.param(
            b"\r\n" + b"x" * 100_000, "hold", b"x" * MAX_REJECTION_BODY, id="body without end"
        ),
    ],
)
async def test_a_rejection_keeps_its_status_headers_and_body(
    autojump_clock: trio.testing.MockClock, answer: bytes, then: str, body: bytes
) -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nX-Error: slow down\r\n"
    failed = await handshake_failure(raw_server(head + answer, then=then))
    assert failed.status == 429
    assert failed.reason.code == 429
    assert ("retry-after", "7") in failed.headers
    assert ("x-error", "slow down") in failed.headers
    assert failed.body == body


async def test_a_rejection_without_a_body(autojump_clock: trio.testing.MockClock) -> None:
    failed = await handshake_failure(raw_server(b"HTTP/1.1 204 No Content\r\n\r\n", then="hold"))
    assert (failed.status, failed.body) == (204, b"")


async def test_a_header_that_cannot_be_sent_fails_before_any_io() -> None:
    client, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="headers"):
        await handshake(
            client, host="h", resource="/", headers={"X": "a\r\nb"}, max_message_size=LIMIT
        )


async def test_the_caller_bounds_a_handshake_that_gets_no_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with trio.move_on_after(7) as waited:
        await connect(client)
    assert waited.cancelled_caught
    assert trio.current_time() - start == 7  # no wait of its own, shorter or longer
    assert await server.receive_some()  # the request went out


# -- receiving ------------------------------------------------------------------------


async def test_one_read_returns_every_message_it_completes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        await peer.send(*(text(f"m{i}") for i in range(50)))
        assert await transport.receive() == [f"m{i}" for i in range(50)]
        await peer.send(ws_events.BytesMessage(data=b"\x00\x01"))
        assert await transport.receive() == [b"\x00\x01"]


async def test_fragments_are_joined_within_and_across_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        await peer.send(text("ab", finished=False), text("cd"), text("e", finished=False))
        assert await transport.receive() == ["abcd"]
        await peer.send(text("f"))
        assert await transport.receive() == ["ef"]
        await peer.send(ws_events.BytesMessage(data=b"x", message_finished=False))
        assert await transport.receive() == []  # a read that completes nothing
        await peer.send(ws_events.BytesMessage(data=b"y"))
        assert await transport.receive() == [b"xy"]


async def test_a_ping_is_answered_with_its_payload(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (transport, peer):
        await peer.send(text("before"), ws_events.Ping(payload=b"hb-1"))
        assert await transport.receive() == ["before"]
        pong = await peer.until(ws_events.Pong)
        assert pong.payload == b"hb-1"


async def test_a_pong_is_counted_and_wakes_its_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        await transport.ping(b"k1")
        ping = await peer.until(ws_events.Ping)
        assert ping.payload == b"k1"
        waited = False

        async def wait_for_pong() -> None:
            nonlocal waited
            await transport.wait_pong(0)
            waited = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_pong)
            await trio.testing.wait_all_tasks_blocked()
            assert not waited
            await peer.send(ping.response())
            assert await transport.receive() == []
        assert (waited, transport.pongs) == (True, 1)
        await transport.wait_pong(0)  # already there: returns at once


async def test_each_pong_wakes_the_waiter_of_its_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pong nobody waits for is counted; each later waiter is woken by the next pong."""
    woken: list[int] = []

    async def wait_for_pong(seen: int) -> None:
        await transport.wait_pong(seen)
        woken.append(seen)

    async with connected() as (transport, peer):
        await peer.send(ws_events.Pong(payload=b"unasked"))
        assert await transport.receive() == []
        assert transport.pongs == 1
        for seen in (1, 2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_pong, seen)
                await trio.testing.wait_all_tasks_blocked()
                assert woken == list(range(1, seen))  # still waiting
                await peer.send(ws_events.Pong(payload=b"k"))
                assert await transport.receive() == []
            assert (woken[-1], transport.pongs) == (seen, seen + 1)


async def test_the_peers_close_comes_after_the_messages_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        close = ws_events.CloseConnection(code=4000, reason="bye")
        after = b"\x81\x05after"  # a text frame after the close: not for wsproto to send
        await peer.stream.send_all(peer.frames(text("one"), text("two"), close) + after)
        assert transport.closed is None
        assert await transport.receive() == ["one", "two"]
        assert transport.closed == Closed(4000, "bye", remote=True)  # known at once
        answer = await peer.until(ws_events.CloseConnection)  # answered at once
        assert (answer.code, answer.reason) == (4000, "bye")
        for _ in range(2):  # and again: it stays closed
            with pytest.raises(TransportClosed) as ended:
                await transport.receive()
            assert (ended.value.code, ended.value.reason) == (4000, "bye")
        with pytest.raises(TransportClosed):
            await transport.send("late")


async def test_the_end_of_the_stream_is_a_drop(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (transport, peer):
        await peer.send(text("last"))
        await peer.stream.aclose()
        assert await transport.receive() == ["last"]
        with pytest.raises(TransportClosed) as ended:
            await transport.receive()
        assert ended.value.closed == Closed(1006, "", remote=True)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([text("x" * (LIMIT + 1))], id="one frame"),
        pytest.param([text("x" * 60, finished=False), text("x" * 60)], id="fragments"),
        pytest.param([ws_events.BytesMessage(data=b"x" * (LIMIT + 1))], id="binary"),
    ],
)
async def test_a_message_too_long_closes_with_1009(
    autojump_clock: trio.testing.MockClock, events: list[ws_events.Event]
) -> None:
    async with connected() as (transport, peer):
        await peer.send(text("x" * LIMIT), *events, text("dropped"))
        assert await transport.receive() == ["x" * LIMIT]  # the limit itself passes
        with pytest.raises(TransportClosed) as ended:
            await transport.receive()
        assert ended.value.code == 1009
        assert transport.closed == Closed(
            1009, f"Exceeded maximum message size: {LIMIT} bytes", remote=False
        )
        sent = await peer.until(ws_events.CloseConnection)
        assert sent.code == 1009


async def test_invalid_utf8_closes_with_1007(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (transport, peer):
        await peer.stream.send_all(peer.frames(text("fine")) + b"\x81\x02\xff\xfe")
        assert await transport.receive() == ["fine"]
        with pytest.raises(TransportClosed) as ended:
            await transport.receive()
        assert (ended.value.code, ended.value.closed.remote) == (1007, False)
        sent = await peer.until(ws_events.CloseConnection)
        assert sent.code == 1007


async def test_a_reply_behind_a_blocked_writer_is_left_to_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over a stream that blocks: the reader returns its messages; the writer sends the pong."""
    async with connected(pair=trio.testing.lockstep_stream_pair) as (transport, peer):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.send, "blocked")  # the peer reads nothing yet
            await trio.testing.wait_all_tasks_blocked()  # the writer holds the send lock
            nursery.start_soon(peer.send, text("a"), ws_events.Ping(payload=b"p"))
            assert await transport.receive() == ["a"]  # not waiting for the writer
            await peer.until(ws_events.Pong)
        assert [type(e).__name__ for e in peer.seen[-2:]] == ["TextMessage", "Pong"]


async def test_a_ping_flood_behind_a_blocked_writer_stops_the_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that pings and reads nothing: the queued pongs stay bounded; the reader waits.

    Once the peer reads, every pong reaches it and the reader reads on to the end.
    """
    pings = 3000  # about 300 KiB of pongs, several times the bound
    async with (
        connected(pair=trio.testing.lockstep_stream_pair) as (transport, peer),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(transport.send, "blocked")  # the peer reads nothing yet
        await trio.testing.wait_all_tasks_blocked()  # the writer holds the send lock
        flood: list[ws_events.Event] = [ws_events.Ping(payload=b"p" * 100)] * pings
        flood.append(text("after"))
        nursery.start_soon(peer.send, *flood)
        nursery.start_soon(read_until, transport, "after")
        await trio.testing.wait_all_tasks_blocked()
        queued = len(transport._core.outgoing)
        while sum(isinstance(e, ws_events.Pong) for e in peer.seen) < pings:
            await peer.until(ws_events.Pong)  # the peer reads: everything flows again
    assert transport.closed is None
    # At most the bound and one read's pongs wait here; the rest of the flood waits on the peer.
    assert 0 < queued <= MAX_QUEUED_REPLIES + RECEIVE_BYTES * 106 // 102 < pings * 106


async def read_until(transport: Transport, last: str) -> None:
    while last not in await transport.receive():
        pass


async def test_a_cancelled_receive_loses_no_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A read whose pong cannot be written is cancelled: its messages come with the next call."""
    async with connected(pair=trio.testing.lockstep_stream_pair) as (transport, peer):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send, text("a"), text("b"), ws_events.Ping(payload=b"p"))
            with trio.move_on_after(5) as waited:
                await transport.receive()  # the peer reads nothing: the pong waits
            assert waited.cancelled_caught
        assert await transport.receive() == ["a", "b"]
        with pytest.raises(TransportClosed) as ended:  # the write's state is unknown: lost
            await transport.receive()
        assert ended.value.closed == Closed(1006, "a write was cancelled", remote=False)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=30), limit=st.integers(1, 40))
def test_any_split_into_reads_gives_the_same_messages_and_replies(
    cuts: list[int], limit: int
) -> None:
    """The core alone (no I/O): however the bytes are cut into reads, the same outcome."""
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server.receive_data(client.send(ws_events.Request(host="h", target="/")))
    assert isinstance(next(server.events()), ws_events.Request)
    client.receive_data(server.send(ws_events.AcceptConnection()))
    assert isinstance(next(client.events()), ws_events.AcceptConnection)
    script: list[ws_events.Event] = [
        text("é" * 10),
        text("ab", finished=False),
        ws_events.Ping(payload=b"p1"),  # between two fragments
        text("cd"),
        ws_events.BytesMessage(data=b"\x00" * 30),
        text("x" * 30, finished=False),
        text("y" * 15),
        ws_events.CloseConnection(code=4000, reason="bye"),
    ]
    wire = b"".join(server.send(event) for event in script)
    expected = ["é" * 10, "abcd", b"\x00" * 30, "x" * 30 + "y" * 15]
    if limit < 45:  # the limit cuts the script short: 1009 at the first message over it
        over = next(i for i, m in enumerate(expected) if len(m) > limit)
        expected = expected[:over]
    assert client.connection is not None
    core = _Core(client.connection, max_message_size=limit)
    points = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    received: list[str | bytes] = []
    for start, end in itertools.pairwise(points):
        received += core.feed(wire[start:end])
    assert received == expected
    assert core.closed == (
        Closed(4000, "bye", remote=True)
        if limit >= 45
        else Closed(1009, f"Exceeded maximum message size: {limit} bytes", remote=False)
    )
    server.receive_data(bytes(core.outgoing))
    answers = [e for e in server.events() if not isinstance(e, ws_events.TextMessage)]
    pong = ws_events.Pong(payload=b"p1")
    if limit >= 45:
        assert answers == [pong, ws_events.CloseConnection(code=4000, reason="bye")]
    else:
        assert answers[-1] == ws_events.CloseConnection(
            code=1009, reason=f"Exceeded maximum message size: {limit} bytes"
        )


async def test_over_tls(autojump_clock: trio.testing.MockClock) -> None:
    """Any Trio stream will do: here TLS, whose reads are one record (16 KiB) at most."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_context, server_hostname="upstream")
    peer = Peer(trio.SSLStream(server_raw, server_context, server_side=True))
    events = [text(f"event {i:04d} " + "x" * 80) for i in range(600)]  # about 56 KB
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.accept, *events)
            transport = await connect(client)
        received: list[str | bytes] = []
        reads = 0
        while len(received) < len(events):
            received += await transport.receive()
            reads += 1
        assert received == [event.data for event in events]
        assert reads > 1  # a read is one record at most
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(transport.aclose, 4000, timeout=5))
            close = await peer.until(ws_events.CloseConnection)
            await peer.send(close.response())
    assert transport.closed == Closed(4000, "", remote=False)


# -- sending and closing -----------------------------------------------------------------


async def test_close_sends_the_chosen_code_and_waits_for_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer), trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(transport.aclose, 4000, "keep my session", timeout=5))
        close = await peer.until(ws_events.CloseConnection)
        assert (close.code, close.reason) == (4000, "keep my session")
        dropped = b"\x81\x07dropped"  # a text frame the peer sent before it read the close
        await peer.stream.send_all(dropped + peer.frames(close.response()))
    assert transport.closed == Closed(4000, "keep my session", remote=False)
    with pytest.raises(trio.ClosedResourceError):
        await transport._stream.send_all(b"x")  # the stream is closed
    await transport.aclose(timeout=5)  # again: nothing to do


async def test_close_is_bounded_by_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (transport, peer):
        start = trio.current_time()
        await transport.aclose(1000, timeout=3)  # the peer never answers
        assert trio.current_time() - start == 3
        assert (await peer.until(ws_events.CloseConnection)).code == 1000
        with pytest.raises(TransportClosed):
            await transport.ping()


async def test_close_after_the_peers_close_only_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        await peer.send(ws_events.CloseConnection(code=1001))
        with pytest.raises(TransportClosed):
            await transport.receive()
        start = trio.current_time()
        await transport.aclose(4000, timeout=3)
        assert trio.current_time() == start
        assert transport.closed == Closed(1001, "", remote=True)


async def test_close_while_the_reader_reads_waits_for_its_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (transport, peer):
        ended: list[Closed] = []

        async def reader() -> None:
            try:
                while True:
                    await transport.receive()
            except TransportClosed as closed:
                ended.append(closed.closed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(functools.partial(transport.aclose, 4001, timeout=5))
            close = await peer.until(ws_events.CloseConnection)
            await peer.send(close.response())
        assert ended == [Closed(4001, "", remote=False)]


async def test_abort_closes_the_stream_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (transport, _):
        await transport.abort()
        assert transport.closed == Closed(1006, "aborted locally", remote=False)
        with pytest.raises(TransportClosed):
            await transport.send("x")
        with pytest.raises(TransportClosed):
            await transport.receive()


async def test_writers_and_the_reader_share_the_stream_without_busy_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sends, pings, the reader's pongs and the close, at once over a stream that blocks.

    `lockstep_stream_pair`'s ``send_all`` waits for the peer's read, so every
    writer meets the others at the stream; without the send lock Trio raises
    `trio.BusyResourceError`.
    """
    async with connected(pair=trio.testing.lockstep_stream_pair) as (transport, peer):
        received: list[str | bytes] = []

        async def reader() -> None:
            try:
                while True:
                    received.extend(await transport.receive())
            except TransportClosed:
                pass

        async def writer(name: str) -> None:
            for i in range(20):
                await transport.send(f"{name}{i}")
                await transport.ping(name.encode())

        async def upstream() -> None:
            for i in range(20):
                await peer.send(text(f"u{i}"), ws_events.Ping(payload=b"%d" % i))
            while not any(isinstance(e, ws_events.CloseConnection) for e in peer.seen):
                await peer.until(ws_events.Event)
            await peer.send(ws_events.CloseConnection(code=1000))
            await peer.stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(upstream)
            async with trio.open_nursery() as writers:
                writers.start_soon(writer, "a")
                writers.start_soon(writer, "b")
            await transport.aclose(4000, timeout=60)
        assert received == [f"u{i}" for i in range(20)]
        sent = [e.data for e in peer.seen if isinstance(e, ws_events.TextMessage)]
        assert sorted(sent) == sorted(f"{n}{i}" for n in "ab" for i in range(20))
        pongs = [e.payload for e in peer.seen if isinstance(e, ws_events.Pong)]
        assert pongs == [b"%d" % i for i in range(20)]
        assert [e.code for e in peer.seen if isinstance(e, ws_events.CloseConnection)] == [4000]


# -- over loopback TCP, against servers we did not write ---------------------------------


async def test_against_trio_websockets_server_over_tcp() -> None:
    seen: list[tuple[int, str | None]] = []

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = str(await ws.get_message())
                for i in range(3):
                    await ws.send_message(f"{message}-{i}")
                await ws.ping(b"server")
        except trio_websocket.ConnectionClosed as closed:
            reason = closed.reason
            seen.append((reason.code, reason.reason) if reason else (0, "no reason"))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, serve, "127.0.0.1", 0, None)
        with trio.fail_after(10):  # a bound on the network, not a timing assertion
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            transport = await connect(stream)
            await transport.send("hello")
            received: list[str | bytes] = []
            while len(received) < 3:
                received += await transport.receive()
            assert received == ["hello-0", "hello-1", "hello-2"]
            await transport.ping(b"me")
            while transport.pongs < 1:
                assert await transport.receive() == []
            await transport.aclose(4000, "keep my session", timeout=5)
        nursery.cancel_scope.cancel()
    assert seen == [(4000, "keep my session")]


async def test_against_the_websockets_librarys_server_over_tcp() -> None:
    with websockets_server() as server, trio.fail_after(10):  # a bound, not a timing assertion
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        transport = await connect(stream)
        await transport.send("hi")
        received: list[str | bytes] = []
        while len(received) < 3:  # answering the server's ping on the way
            received += await transport.receive()
        assert received == ["hi!", "hi?", "ponged"]
        await transport.send("close")
        with pytest.raises(TransportClosed) as ended:
            await transport.receive()
        assert ended.value.closed == Closed(4001, "asked to", remote=True)
        await transport.aclose(timeout=5)
        assert await trio.to_thread.run_sync(server.closes.get, True, 5) == (4001, "asked to")

        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        transport = await connect(stream)
        await transport.aclose(4000, "keep my session", timeout=5)
        assert transport.closed == Closed(4000, "keep my session", remote=False)
        seen = await trio.to_thread.run_sync(server.closes.get, True, 5)
        assert seen == (4000, "keep my session")


async def test_the_websockets_librarys_rejection_over_tcp() -> None:
    with websockets_server() as server, trio.fail_after(10):  # a bound, not a timing assertion
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        with pytest.raises(HandshakeFailed) as failed:
            await handshake(
                stream, host="h", resource="/refused", headers={}, max_message_size=LIMIT
            )
        await stream.aclose()
    assert (failed.value.status, failed.value.body) == (403, b"not you")
    assert ("x-error", "go away") in failed.value.headers
