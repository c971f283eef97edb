"""The Socket scope, driven through the real WebSocket code in memory."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ws_events

from helpers import Peer, StreamServer, collect, living_tasks
from tenantry import (
    Batch,
    BufferConfig,
    ConnectFailed,
    FlushReason,
    ReasonCode,
    RejectReason,
    SocketClosed,
    SocketOptions,
    open_socket,
)
from tenantry._connect import open_connection
from tenantry.lowlevel import Gauges
from tenantry.testing import MemoryConnector
from tenantry.testing._pipe import pipe_pair

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


def frame(event_type: str, data: Any) -> str:
    return json.dumps({"type": event_type, "data": data})


def upstream(*frames: str, then: str = "close 4503", pause: float = 0.0) -> Handler:
    """A server that sends *frames*, then closes (``close N``), drops, or idles."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            for text in frames:
                await ws.send_message(text)
        except trio_websocket.ConnectionClosed:
            return  # the client left first
        await trio.sleep(pause)
        if then.startswith("close"):
            await ws.aclose(code=int(then.split()[1]), reason="scripted")
        elif then == "idle":  # read (and so answer pings) until the client leaves
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed:
                pass
        # "drop": return without a close frame

    return handler


@pytest.mark.parametrize(
    ("then", "code"),
    [("close 4503", 503), ("close 4515", 515), ("close 1000", 428), ("drop", 408)],
)
async def test_a_remote_close_delivers_everything_then_ends_the_body(
    autojump_clock: trio.testing.MockClock, then: str, code: int
) -> None:
    frames = [frame("chats.update", {"id": i % 3, "n": i}) for i in range(10)]
    batches: list[Batch] = []
    reached_the_end = False
    gauges = Gauges()
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(*frames, then=then, pause=1.0))
        before = living_tasks()
        config = BufferConfig(always_buffer=True)
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(buffer=config), gauges=gauges
        ) as sock:
            assert (gauges.sockets_alive, gauges.buffers_alive) == (1, 1)
            async with sock.events.subscribe() as channel:
                await collect(channel, batches)
            await trio.sleep_forever()
            reached_the_end = True  # pragma: no cover - the close cancels the body
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        server.cancel_scope.cancel()
    assert not reached_the_end
    assert gauges == Gauges(sockets_alive=0, buffers_alive=0)
    reason = sock.close_reason
    assert reason is not None
    assert (reason.code, reason.remote) == (code, True)
    stats = sock.buffer.stats
    assert stats.received == 10
    assert sum(batch.count for batch in batches) + stats.merged == 10
    assert batches[-1].reason.value == "close"
    assert sock.events.subscribers == 0
    assert len(sock.caches["user_devices"]) == 0


async def test_stream_error_closes_with_its_code(autojump_clock: trio.testing.MockClock) -> None:
    error = json.dumps({"type": "stream:error", "code": 515, "text": "restart required"})
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(frame("x", 1), error, then="idle"))
        async with open_socket(connector, tenant_id="acme") as sock:
            await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.message) == (
        ReasonCode.RESTART_REQUIRED,
        "restart required",
    )


async def test_leaving_the_body_is_a_local_close(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(then="idle"))
        before = living_tasks()
        async with open_socket(connector, tenant_id="acme") as sock:
            await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.remote) == (
        ReasonCode.CONNECTION_CLOSED,
        False,
    )


@pytest.mark.parametrize("abort", [True, False])
async def test_abort_ends_the_transport_first_then_drains_locally(
    autojump_clock: trio.testing.MockClock, abort: bool
) -> None:
    """The peer sees the end at once (no close frame), while a slow subscriber still drains."""
    seen_by_peer: list[tuple[float, int | None]] = []

    async def peer(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(5):
            await ws.send_message(frame("chats.update", {"id": i}))
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            code = None if closed.reason is None else closed.reason.code
            seen_by_peer.append((trio.current_time(), code))

    received: list[tuple[float, Batch]] = []

    async def slow(channel: trio.abc.ReceiveChannel[Batch]) -> None:
        async for batch in channel:
            await trio.sleep(1.0)  # the application is slow: the drain takes a while
            received.append((trio.current_time(), batch))

    options = SocketOptions(buffer=BufferConfig(always_buffer=True))
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, peer)
        async with (
            open_socket(connector, tenant_id="acme", options=options) as sock,
            sock.events.subscribe() as channel,
        ):
            await trio.sleep(1.0)  # the five frames are read and wait in the buffer
            ended_at = trio.current_time()
            if abort:
                sock.abort("lease lost")
                sock.abort("again")  # idempotent: the first reason stays
            else:
                sock.close("done here")
            with pytest.raises(SocketClosed):
                await sock.send("x", 1)  # nothing more is written either way
            await slow(channel)
        await trio.testing.wait_all_tasks_blocked()
        server.cancel_scope.cancel()
    assert sum(batch.count for _, batch in received) == 5  # the final flush was delivered
    assert sock.close_reason is not None
    assert sock.close_reason.message == ("lease lost" if abort else "done here")
    [(peer_saw_end_at, code)] = seen_by_peer
    if abort:
        assert (peer_saw_end_at, code) == (ended_at, 1006)  # before the drain, no close frame
        assert received[-1][0] > peer_saw_end_at
    else:
        assert code == 1000
        assert peer_saw_end_at >= received[-1][0]  # a close lets the drain finish first


async def test_a_socket_is_entered_once(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(then="idle"))
        async with open_socket(connector, tenant_id="acme") as sock:
            with pytest.raises(RuntimeError, match="entered once"):
                async with sock:
                    pytest.fail("entered twice")  # pragma: no cover
            assert sock.close_reason is None  # the refused entry touched nothing
        server.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="entered once"):
        async with sock:
            pytest.fail("entered after its life")  # pragma: no cover
    assert sock.close_reason is not None
    assert sock.close_reason.message == "closed by owner"


async def test_close_cancels_the_body_and_is_not_reraised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps: list[str] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(then="idle"))
        async with open_socket(connector, tenant_id="acme") as sock:
            steps.append("open")
            sock.close("done here")
            await trio.sleep(1)
            steps.append("after close")  # pragma: no cover
        server.cancel_scope.cancel()
    assert steps == ["open"]
    assert sock.close_reason is not None
    assert sock.close_reason.message == "done here"


async def test_an_outer_cancel_still_flushes_to_listeners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(frame("chats.update", {"id": 1}), then="idle"))
        with trio.move_on_after(5):
            async with open_socket(
                connector,
                tenant_id="acme",
                options=SocketOptions(buffer=BufferConfig(always_buffer=True, flush_interval=60)),
            ) as sock:
                sock.events.on("chats.update", seen.append)
                await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert seen == [{"id": 1}]


async def test_a_listener_error_is_reraised_after_the_ordered_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches: list[Batch] = []

    def broken(data: Any) -> None:
        raise ZeroDivisionError("listener bug")

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(frame("x", 1), frame("x", 2), then="idle"))

        async def run() -> None:
            async with open_socket(connector, tenant_id="acme") as sock:
                sockets.append(sock)
                sock.events.on("x", broken)
                async with sock.events.subscribe() as channel:
                    await collect(channel, batches)

        sockets: list[Any] = []
        with pytest.raises(ZeroDivisionError, match="listener bug"):
            await run()
        sock = sockets[0]
        server.cancel_scope.cancel()
    # The subscriber got the batch that met the broken listener, then the stream ended; an
    # event of a later read (the scheduler decides) is flushed to it on the close, not lost.
    assert sum(b.count for b in batches) == sock.buffer.stats.received >= 1
    assert sock.buffer.stats.lost == 0
    assert sock.close_reason is not None
    assert "ZeroDivisionError" in sock.close_reason.message


async def test_bad_frames_are_counted_and_survived(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bad = ["not json", "[1]", '{"type": "messages.upsert", "data": {"no": "key"}}', "x" * 500]
    good = frame("chats.update", {"id": 1})
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(*bad, good, then="close 1000", pause=1))
        with caplog.at_level(logging.WARNING, logger="tenantry.socket"):
            async with open_socket(
                connector,
                tenant_id="acme",
                options=SocketOptions(
                    max_message_size=200, buffer=BufferConfig(always_buffer=True)
                ),
            ) as sock:
                await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert sock.rejected == {
        RejectReason.BINARY: 0,
        RejectReason.INVALID_UTF8: 0,
        RejectReason.TOO_LARGE: 1,
        RejectReason.INVALID_JSON: 1,
        RejectReason.BAD_SHAPE: 1,
        RejectReason.UNDECODABLE: 0,
        RejectReason.INVALID_EVENT: 1,
        RejectReason.INVALID_FRAME: 0,
    }
    assert sock.buffer.stats.received == 1
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.CONNECTION_CLOSED
    assert "'not json'" in caplog.text


async def test_a_flood_of_bad_frames_closes_with_a_protocol_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(*["garbage"] * 10, then="idle"))
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(max_bad_frames=3)
        ) as sock:
            await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.PROTOCOL_ERROR
    assert sock.rejected[RejectReason.INVALID_JSON] == 4


async def test_send_writes_in_order_and_fails_after_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[str] = []

    async def sink(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                received.append(str(await ws.get_message()))
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as server:
        async with open_socket(MemoryConnector(server, sink), tenant_id="acme") as sock:
            for i in range(5):
                await sock.send("ping", {"n": i})
        with pytest.raises(SocketClosed):
            await sock.send("late", {})
        server.cancel_scope.cancel()
    assert [json.loads(text)["data"]["n"] for text in received] == [0, 1, 2, 3, 4]


async def test_an_idle_socket_starts_its_writer_and_janitor_only_when_needed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def sink(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sink)
        async with open_socket(connector, tenant_id="acme") as sock:
            await trio.testing.wait_all_tasks_blocked()
            idle = living_tasks()
            await trio.sleep(100)  # keepalive pings, nothing else
            assert living_tasks() == idle
            await sock.send("ping", {})
            assert living_tasks() == idle + 1  # the writer, from the first send on
            sock.caches["user_devices"].set("a", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle + 2  # the janitor, while a key can expire
            sock.caches["user_devices"].delete("a")
            await trio.sleep(400)
            assert living_tasks() == idle + 1
        server.cancel_scope.cancel()


async def test_a_rejected_handshake_is_a_connect_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(401)

    gauges = Gauges()
    async with trio.open_nursery() as server:
        before = living_tasks()
        with pytest.raises(ConnectFailed) as failed:
            async with open_socket(
                MemoryConnector(server, reject), tenant_id="acme", gauges=gauges
            ):
                pytest.fail("not connected")
        assert gauges == Gauges()
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        server.cancel_scope.cancel()
    assert failed.value.reason.code == ReasonCode.LOGGED_OUT


async def test_keepalive_pings_keep_a_quiet_connection_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(then="idle"))
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(keepalive=30)
        ) as sock:
            await trio.sleep(3600)
            assert sock.close_reason is None
        server.cancel_scope.cancel()


async def test_a_body_exception_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(then="idle"))
        with pytest.raises(KeyError, match="body bug"):
            async with open_socket(connector, tenant_id="acme"):
                raise KeyError("body bug")
        server.cancel_scope.cancel()


async def test_headers_reach_the_server_and_never_the_repr(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen.append(request.headers)
        await upstream(then="idle")(request)

    async with trio.open_nursery() as server:
        headers = {"Authorization": "Bearer s3cret"}
        async with open_socket(
            MemoryConnector(server, handler),
            tenant_id="acme",
            options=SocketOptions(headers=headers),
        ) as sock:
            assert "s3cret" not in repr(sock)
        server.cancel_scope.cancel()
    assert (b"authorization", b"Bearer s3cret") in seen[0]


async def test_validation() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        async with open_socket("ws://h/", tenant_id="a", options=SocketOptions(keepalive=0)):
            pass
    with pytest.raises(ValueError, match="tenant_id"):
        async with open_socket("ws://h/", tenant_id=""):
            pass
    with pytest.raises(ValueError, match="ws://"):
        async with open_socket("http://h/", tenant_id="a"):
            pass


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("caches", {"x": {"max_keys": 10}}),
        ("options", {"buffer": {"flush_interval": 1.0}}),
    ],
)
async def test_arguments_are_checked_before_connecting(field: str, value: Any) -> None:
    def unreachable(request: trio_websocket.WebSocketRequest) -> Awaitable[None]:
        raise AssertionError("connected")

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, unreachable)
        with pytest.raises(TypeError, match=f"^{field}"):
            async with open_socket(connector, tenant_id="a", **{field: value}):
                pass


def tasks_named(suffix: str) -> int:
    """How many living tasks have a name ending in *suffix*."""

    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(task.name.endswith(suffix) for task in walk(root))


async def test_the_auto_flush_is_a_task_only_while_events_are_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def late(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await trio.sleep(10)
            await ws.send_message(frame("chats.update", {"id": 1}))
            while True:
                await ws.get_message()

    delivered: list[Any] = []
    config = BufferConfig(always_buffer=True, flush_interval=5.0)
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, late)
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(buffer=config)
        ) as sock:
            sock.events.on("chats.update", delivered.append)
            await trio.sleep(9)
            assert tasks_named("._auto_flush") == 0  # idle: no flush task
            await trio.sleep(2)
            assert tasks_named("._auto_flush") == 1  # an event is pending
            assert delivered == []
            await trio.sleep(5)
            assert delivered == [{"id": 1}]  # flushed at 15 s
            assert tasks_named("._auto_flush") == 0  # nothing pending: the task ended
        server.cancel_scope.cancel()


async def test_a_listener_error_in_an_interval_flush_fails_the_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken(data: Any) -> None:
        raise ZeroDivisionError("listener bug")

    sockets: list[Any] = []
    config = BufferConfig(always_buffer=True, flush_interval=5.0)
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(frame("chats.update", {"id": 1}), then="idle"))

        async def run() -> None:
            async with open_socket(
                connector, tenant_id="acme", options=SocketOptions(buffer=config)
            ) as sock:
                sockets.append(sock)
                sock.events.on("chats.update", broken)
                await trio.sleep_forever()

        with pytest.raises(ZeroDivisionError, match="listener bug"):
            await run()
        assert trio.current_time() == pytest.approx(5.0, abs=0.1)  # raised by the interval flush
        assert tasks_named("._auto_flush") == 0
        server.cancel_scope.cancel()
    [sock] = sockets
    assert sock.close_reason is not None
    assert "ZeroDivisionError" in sock.close_reason.message


# -- sends racing a remote close -------------------------------------------------------


def closing_after(events: int, code: int, closed: trio.Event) -> StreamServer:
    """A server that sends *events* events and its close frame with *code* in one write
    (so they reach the client in one read), then sets *closed* once it has the answer."""

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        await peer.accept()
        await trio.sleep(1)
        messages = [
            ws_events.TextMessage(data=frame("chats.update", {"id": i})) for i in range(events)
        ]
        await peer.send(*messages, ws_events.CloseConnection(code=code, reason="logged out"))
        with trio.move_on_after(60):
            await peer.until(ws_events.CloseConnection)
        closed.set()
        await trio.aclose_forcefully(stream)

    return serve


async def test_a_send_racing_a_remote_close_carries_the_peers_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A subscriber that never reads holds the reader back at the second event, so the
    # close frame that came in the same read reaches the writer before the reader does.
    closed = trio.Event()
    failures: list[SocketClosed] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=closing_after(3, 4401, closed))
        async with (
            open_socket(connector, tenant_id="acme") as sock,
            sock.events.subscribe(max_pending=1),
        ):
            await closed.wait()
            try:
                await sock.send("presence.update", {"id": "me"})
            except SocketClosed as failure:
                failures.append(failure)
                raise  # the socket's own close: open_socket does not re-raise it
        server.cancel_scope.cancel()
    [raised] = failures
    assert raised.reason is sock.close_reason
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.remote) == (ReasonCode.LOGGED_OUT, True)


async def test_a_close_begun_by_a_send_still_reads_what_the_peer_sent_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Event 0 is with the subscriber, 1 in its channel, 2 and 3 with the reader (one
    # read, with the close frame) when the send meets the close.
    closed, sent = trio.Event(), trio.Event()
    got: list[Any] = []
    failures: list[SocketClosed] = []

    async def slow(sock: Any) -> None:
        async with sock.events.subscribe(max_pending=1) as batches:
            async for batch in batches:
                got.extend(data["id"] for data in batch["chats.update"])
                await sent.wait()

    async def sender(sock: Any) -> None:
        await closed.wait()
        try:
            await sock.send("presence.update", {"id": "me"})
        except SocketClosed as failure:
            failures.append(failure)
        sent.set()

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=closing_after(4, 4401, closed))
        async with open_socket(connector, tenant_id="acme") as sock, trio.open_nursery() as body:
            body.start_soon(slow, sock)
            body.start_soon(sender, sock)
        server.cancel_scope.cancel()
    [raised] = failures
    assert raised.reason is sock.close_reason
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.LOGGED_OUT
    assert got == [0, 1, 2, 3]
    stats = sock.buffer.stats
    assert (stats.received, stats.delivered, stats.lost) == (4, 4, 0)


async def test_a_local_close_after_the_peers_close_keeps_the_peers_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed = trio.Event()
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=closing_after(3, 4401, closed))
        async with (
            open_socket(connector, tenant_id="acme") as sock,
            sock.events.subscribe(max_pending=1),
        ):
            await closed.wait()  # the reader has not reached the close frame yet
        server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.remote) == (ReasonCode.LOGGED_OUT, True)


async def test_a_body_ending_with_its_sockets_close_in_a_group_ends_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def sender(sock: Any) -> None:
        while True:
            await sock.send("presence.update", {"id": "me"})
            await trio.sleep(0.05)

    closed = trio.Event()
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=closing_after(3, 4401, closed))
        async with (
            open_socket(connector, tenant_id="acme") as sock,
            sock.events.subscribe(max_pending=1),
            trio.open_nursery() as body,
        ):
            body.start_soon(sender, sock)
            body.start_soon(sender, sock)
        server.cancel_scope.cancel()
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.LOGGED_OUT


class Choked(trio.abc.Stream):
    """A client transport whose writes block while *choked* (a peer that stopped reading)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.choked = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.choked:
            await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_send_cut_short_by_an_outer_cancel_still_carries_a_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures: list[SocketClosed] = []

    async def send_from_outside(sock: Any) -> None:
        try:
            await sock.send("presence.update", {"id": "me"})
        except SocketClosed as failure:
            failures.append(failure)

    async def serve(stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            await upstream(then="idle")(await trio_websocket.wrap_server_stream(nursery, stream))

    async with trio.open_nursery() as server:
        transports: list[Choked] = []

        async def open_stream() -> trio.abc.Stream:
            client, far_end = pipe_pair()
            server.start_soon(serve, far_end)
            transports.append(Choked(client))
            return transports[0]

        class ChokedConnector:
            def open(self, *, headers: Any, max_message_size: int) -> Any:
                return open_connection(
                    open_stream, host="h", resource="/", headers={}, max_message_size=1 << 20
                )

        async with trio.open_nursery() as outside:
            with trio.CancelScope() as scope:
                async with open_socket(ChokedConnector(), tenant_id="acme") as sock:
                    transports[0].choked = True
                    outside.start_soon(send_from_outside, sock)
                    await trio.testing.wait_all_tasks_blocked()  # the writer is stuck in the write
                    scope.cancel()
                    try:
                        await trio.sleep_forever()
                    finally:  # the body's own clean-up delays the close that its exit begins
                        with trio.CancelScope(shield=True):
                            await trio.sleep(1)
        server.cancel_scope.cancel()
    [raised] = failures
    assert raised.reason is sock.close_reason
    assert sock.close_reason is not None
    assert sock.close_reason.message == "closed by owner"


# -- a slow application --------------------------------------------------------------------

STEADY_EVENTS = 200


async def steady_peer(ws: trio_websocket.WebSocketConnection) -> None:
    """A healthy peer: one event a second, answering pings, then a 4503 close."""
    try:
        for i in range(STEADY_EVENTS):
            await ws.send_message(frame("chats.update", {"id": i}))
            await trio.sleep(1)
        await ws.aclose(code=4503, reason="scripted")
    except trio_websocket.ConnectionClosed:
        pass  # the client left first


async def stall_once(
    sock: Any, seen: list[int], frames_during_stall: list[int], stall: float = 120.0
) -> None:
    """A subscriber that pauses once, for *stall* seconds, after its tenth event."""
    async with sock.events.subscribe() as batches:
        async for batch in batches:
            seen.extend(data["id"] for data in batch["chats.update"])
            if len(seen) == 10:
                await trio.sleep(30)
                frames_during_stall.append(sock.frames_received)
                await trio.sleep(stall - 30)
                frames_during_stall.append(sock.frames_received)


@pytest.mark.parametrize("transport", ["memory", "tcp"])
async def test_a_slow_subscriber_slows_the_peer_and_loses_nothing(
    autojump_clock: trio.testing.MockClock, transport: str
) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await steady_peer(await request.accept())

    seen: list[int] = []
    frames: list[int] = []
    async with trio.open_nursery() as server:
        connect: str | MemoryConnector = MemoryConnector(server, handler)
        if transport == "tcp":
            listener = await server.start(
                functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
            )
            connect = f"ws://127.0.0.1:{listener.port}/"
        async with open_socket(connect, tenant_id="acme") as sock:
            await stall_once(sock, seen, frames)
        server.cancel_scope.cancel()
    reason = sock.close_reason
    assert reason is not None
    assert (len(seen), reason.code, reason.message) == (
        STEADY_EVENTS,
        ReasonCode.UNAVAILABLE_SERVICE,
        "scripted",
    )
    assert seen == list(range(STEADY_EVENTS))
    assert frames[0] == frames[1]  # while the application stalls, nothing more is read


# -- events before the first subscriber -------------------------------------------------------


async def test_events_before_the_first_subscriber_are_held_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches: list[Batch] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(frame("x", 1), then="close 4503", pause=1))
        async with open_socket(connector, tenant_id="acme") as sock:
            await trio.sleep(0.05)  # the first event arrives meanwhile
            assert sock.buffer.stats.delivered == 0  # held: nobody has received it yet
            async with sock.events.subscribe() as channel:
                await collect(channel, batches)
        server.cancel_scope.cancel()
    stats = sock.buffer.stats
    assert [list(batch.events) for batch in batches] == [[("x", 1)]]
    assert (stats.received, stats.delivered, stats.lost) == (1, 1, 0)


async def test_a_socket_nobody_subscribes_to_counts_its_events_lost(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    frames = [frame("x", i) for i in range(3)]
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(*frames, then="close 4503", pause=1))
        with caplog.at_level(logging.WARNING, logger="tenantry.events"):
            async with open_socket(connector, tenant_id="acme") as sock:
                await trio.sleep_forever()
        server.cancel_scope.cancel()
    stats = sock.buffer.stats
    assert (stats.received, stats.delivered, stats.lost, stats.in_flight) == (3, 0, 3, 0)
    assert sock.events.lost == 3
    assert "3 events lost: no subscriber" in caplog.text


async def test_held_events_stop_the_reader_at_the_buffers_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def serve(stream: trio.abc.Stream) -> None:  # 50 events, 3 to a read
        peer = Peer(stream)
        await peer.accept()
        for first in range(0, 50, 3):
            await trio.sleep(1)
            numbers = range(first, min(first + 3, 50))
            await peer.send(*(ws_events.TextMessage(data=frame("x", i)) for i in numbers))
        await peer.send(ws_events.CloseConnection(code=4503))
        with trio.move_on_after(60):
            await peer.until(ws_events.CloseConnection)
        await trio.aclose_forcefully(stream)

    batches: list[Batch] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=serve)
        config = BufferConfig(max_items=10)
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(buffer=config)
        ) as sock:
            await trio.sleep(60)
            # Held, then backpressure from the end of the read that reached the limit:
            # 9 held, then a read of 3. At most max_items - 1 plus one read's events.
            assert sock.buffer.stats.in_flight == sock.frames_received == 10 - 1 + 3
            async with sock.events.subscribe() as channel:
                await collect(channel, batches)
        server.cancel_scope.cancel()
    assert [data for batch in batches for data in batch["x"]] == list(range(50))
    stats = sock.buffer.stats
    assert (stats.received, stats.delivered, stats.lost) == (50, 50, 0)


async def test_listeners_alone_receive_their_types_and_the_rest_is_lost(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    frames = [frame("x", 1), frame("y", 2), frame("x", 3)]
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, upstream(*frames, then="close 4503", pause=1))
        with caplog.at_level(logging.WARNING, logger="tenantry.events"):
            async with open_socket(connector, tenant_id="acme") as sock:
                sock.events.on("x", seen.append)
                await trio.sleep_forever()
        server.cancel_scope.cancel()
    stats = sock.buffer.stats
    assert seen == [1, 3]
    assert (stats.received, stats.delivered, stats.lost) == (3, 2, 1)
    assert caplog.text.count("no subscriber and no listener") == 1


async def test_one_reads_events_travel_together_and_wait_for_no_later_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server writes each burst in one write, and the next only once the
    # subscriber has had the last: an event held for a later read would hang here.
    go = trio.Event()

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        await peer.accept()
        upserts = [
            frame("messages.upsert", {"key": {"remoteJid": "j", "id": f"M{n}"}}) for n in range(5)
        ]
        updates = [frame("chats.update", {"id": f"c{n}"}) for n in range(2)]
        await peer.send(*(ws_events.TextMessage(data=text) for text in upserts + updates))
        await go.wait()
        await peer.send(*(ws_events.TextMessage(data=text) for text in upserts[:3]))
        await peer.until(ws_events.CloseConnection)

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve_stream=serve)
        async with (
            open_socket(connector, tenant_id="acme") as sock,
            sock.events.subscribe() as batches,
        ):
            with trio.fail_after(10):
                first, second = await batches.receive(), await batches.receive()
                go.set()
                third = await batches.receive()
            stats = sock.buffer.stats
        server.cancel_scope.cancel()
    assert [(b.types, b.count) for b in (first, second, third)] == [
        (("messages.upsert",), 5),
        (("chats.update",), 2),
        (("messages.upsert",), 3),
    ]
    assert stats.flushes[FlushReason.IMMEDIATE] == 3
    assert (stats.received, stats.delivered) == (10, 10)
