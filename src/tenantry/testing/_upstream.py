"""FakeUpstream: a scripted WebSocket server speaking `tenantry.JsonProtocol`.

Its memory is bounded however long it runs (``tenantry upstream`` serves
for days): it remembers every live connection and the last ``history``
that ended, and of each connection the last ``history`` events sent and
messages received. What it forgets is still counted: `FakeUpstream.accepted`,
`UpstreamConnection.sent_count` and `UpstreamConnection.received_count` are
exact. A path's count of connections is kept while the path has a
connection in memory, and for as long as the upstream runs for any path a
test asked for (`FakeUpstream.connector_to`, `FakeUpstream.wait_connections`).

With ``replace=True`` it behaves as WhatsApp Web does with a session
connected twice: a new connection to a path that already has a live one
closes the older with close code 4440 (reason 440, "connection replaced")
and counts it in `FakeUpstream.replacements`. A fleet that keeps its
promise of one connection per tenant never makes it count.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, final

import trio
import trio_websocket

from .._connect import CLOSE_TIMEOUT
from .._protocol import JsonProtocol
from .._validate import check_count
from ._memory import MemoryConnector

__all__ = ["FakeUpstream", "UpstreamConnection", "open_fake_upstream"]

REQUEST_TIMEOUT = 10.0
"""Seconds a client has, once connected, to send its opening request.

trio-websocket's server waits for the request and for nothing else: a
client that connects and leaves (or says nothing) would hold a task forever.
"""


def _text_frame(text: str | bytes) -> bytes:
    """One unmasked (server-to-client) WebSocket text frame, RFC 6455 section 5.2.

    *text* as bytes is sent as the payload unchecked, valid UTF-8 or not.
    """
    payload = text.encode() if isinstance(text, str) else text
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


class _Gate(trio.abc.Stream):
    """A stream whose reading can be stopped: a stalled peer reads nothing, answers no ping.

    Writes are serialised, so that frames written around trio-websocket
    (`UpstreamConnection.blast`) never interleave with its own.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._open = trio.Event()
        self._open.set()
        self._sending = trio.StrictFIFOLock()

    def stall(self) -> None:
        self._open = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._open.wait()
        data = await self._stream.receive_some(max_bytes)
        await self._open.wait()  # a stall that began during the read holds its data back
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._sending:
            try:
                await self._stream.send_all(data)
            except trio.ClosedResourceError:  # closed by the upstream as the connection ended
                raise trio.BrokenResourceError("the connection is over") from None

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._open.set()  # a stalled reader wakes to find the stream closed
        await self._stream.aclose()


@final
class UpstreamConnection:
    """One client connection as the fake upstream sees it; script it from a test."""

    def __init__(
        self,
        index: int,
        ws: trio_websocket.WebSocketConnection,
        gate: _Gate,
        path: str,
        *,
        path_index: int,
        history: int,
    ) -> None:
        self.index = index
        """Its place among every connection the upstream accepted, from 0."""
        self.path = path
        """The resource the client asked for (``/`` unless `FakeUpstream.connector_to`)."""
        self.sent_count = 0
        """Events sent with `send_event` or `stream`, all of them."""
        self.received_count = 0
        """Messages the client sent, all of them."""
        self._path_index = path_index
        self._sent: collections.deque[tuple[str, Any]] = collections.deque(maxlen=history)
        self._received: collections.deque[str | bytes] = collections.deque(maxlen=history)
        self._link: tuple[trio_websocket.WebSocketConnection, _Gate] | None = (ws, gate)
        self._close_reason: trio_websocket.CloseReason | None = None
        self._protocol = JsonProtocol()
        self._ended = trio.Event()
        self._seq = itertools.count(1)
        self.replaced = False
        """Whether a newer connection to the same path replaced this one (``replace=True``)."""

    @property
    def sent(self) -> list[tuple[str, Any]]:
        """The events sent on this connection, in order: the last ``history`` of `sent_count`."""
        return list(self._sent)

    @property
    def received(self) -> list[str | bytes]:
        """The messages the client sent, in order: the last ``history`` of `received_count`."""
        return list(self._received)

    @property
    def ended(self) -> bool:
        """Whether this connection is over (closed, aborted or left by the client)."""
        return self._ended.is_set()

    @property
    def _ws(self) -> trio_websocket.WebSocketConnection:
        return self._live()[0]

    @property
    def _gate(self) -> _Gate:
        return self._live()[1]

    def _live(self) -> tuple[trio_websocket.WebSocketConnection, _Gate]:
        if self._link is None:  # as its WebSocket would have said
            raise trio_websocket.ConnectionClosed(self._close_reason)
        return self._link

    def _detach(self) -> None:
        """Let go of the transport once everything is over: only the record stays.

        A long-running upstream serves connection after connection; the
        record stays in `FakeUpstream.connections` for the tests to read, but
        without its WebSocket state, until ``history`` newer ones have ended.
        """
        if self._link is not None:
            self._close_reason = self._link[0].closed
        self._ended.set()
        self._link = None

    async def send_event(self, event_type: str, data: Any) -> None:
        """Send one event frame (recorded in `sent` and counted in `sent_count`)."""
        await self._ws.send_message(self._protocol.encode(event_type, data))
        self._sent.append((event_type, data))
        self.sent_count += 1

    async def stream(
        self,
        count: int,
        *,
        event_type: str = "chats.update",
        keys: int = 100,
        rate: float | None = None,
    ) -> None:
        """Send *count* events ``{"id": n % keys, "seq": n}``, *rate* per second (None: at once)."""
        for _ in range(count):
            seq = next(self._seq)
            await self.send_event(event_type, {"id": seq % keys, "seq": seq})
            if rate is not None:
                await trio.sleep(1 / rate)

    async def blast(self, frames: Sequence[str]) -> None:
        """Write many text frames in one go, below trio-websocket (for benchmarks).

        The frames are encoded by hand and written straight to the transport,
        so the upstream spends almost nothing per frame and the client is
        what gets measured. They are not recorded in `sent`.
        """
        await self._gate.send_all(b"".join(_text_frame(text) for text in frames))

    async def send_raw(self, frame: str | bytes, *, as_text: bool = False) -> None:
        """Send a frame as is: malformed JSON, binary, anything (not recorded in `sent`).

        With *as_text*, bytes go out as a *text* frame without any check,
        invalid UTF-8 included (the client's WebSocket layer then fails the
        connection with close code 1007, as RFC 6455 requires).
        """
        if as_text and isinstance(frame, bytes):
            await self._gate.send_all(_text_frame(frame))
        else:
            await self._ws.send_message(frame)

    async def stream_error(self, code: int, text: str = "") -> None:
        """Send ``{"type": "stream:error", "code": code}``, as WhatsApp Web's server does."""
        await self._ws.send_message(
            json.dumps({"type": "stream:error", "code": code, "text": text})
        )

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame and *code* (e.g. 4503 for "service unavailable").

        Waits for the client's answer at most ``CLOSE_TIMEOUT`` seconds (as a
        tenantry socket waits for its peer's); then the connection is closed
        without it.
        """
        if self._link is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(CLOSE_TIMEOUT):  # cut short, trio-websocket closes the stream
            await self._ws.aclose(code=code, reason=reason or None)
        self._ended.set()

    async def abort(self) -> None:
        """Drop the connection without a close frame (the client sees 1006)."""
        if self._link is None:
            await trio.lowlevel.checkpoint()
            return
        await trio.aclose_forcefully(self._gate)
        self._ended.set()

    def stall(self) -> None:
        """Stop reading and answering pings, keeping the connection open."""
        if self._link is not None:
            self._gate.stall()

    async def _serve(self) -> None:
        try:
            while True:
                self._received.append(await self._ws.get_message())
                self.received_count += 1
        except trio_websocket.ConnectionClosed:
            pass
        self._ended.set()


@final
class _Path:
    """The connections to one path: how many arrived, and those still remembered."""

    __slots__ = ("accepted", "records", "watched")

    def __init__(self) -> None:
        self.accepted = 0
        self.records: dict[int, UpstreamConnection] = {}
        """By their place among this path's connections."""
        self.watched = False
        """A test asked for this path: its count is kept even with no record left."""


@final
class FakeUpstream:
    """A scripted upstream for tests and the soak demo.

    Make one with `open_fake_upstream`. Clients reach it through `connector`
    (in memory: deterministic under `trio.testing.MockClock`) or through
    `serve_tcp` (real loopback TCP). Each accepted connection appears in
    `connections` as an `UpstreamConnection` to script: stream events,
    close with a code, abort, stall, send malformed frames. `reject_next`
    makes the next handshake fail with an HTTP status.

    Args:
        nursery: Where the server's tasks run.
        history: How many ended connections stay in `connections`, and how
            many events sent and messages received each connection keeps
            (the most recent). Counts are exact whatever it is.
        replace: A second live connection to a path closes the older one
            with close code 4440 (reason 440, connection replaced), counted
            in `replacements`.
    """

    def __init__(
        self, nursery: trio.Nursery, *, history: int = 1000, replace: bool = False
    ) -> None:
        self._nursery = nursery
        self.history = check_count(history, "history", minimum=0)
        self.replace = replace
        self.accepted = 0
        """Connections accepted so far, all of them (`connections` holds the recent ones)."""
        self.replacements = 0
        """Older connections closed with 4440 because a newer one arrived (``replace=True``)."""
        self._records: dict[int, UpstreamConnection] = {}
        self._ended: collections.deque[UpstreamConnection] = collections.deque()
        """The remembered connections that are over, in the order they ended."""
        self._paths: dict[str, _Path] = {}
        self._rejections: list[tuple[str | None, int]] = []
        self._arrivals: dict[str | None, trio.Event] = {}
        """Wakes the waiters for one path (None: any path) when a connection arrives."""
        self.connector = self.connector_to("/")
        """Connects clients over in-memory streams."""

    @property
    def connections(self) -> list[UpstreamConnection]:
        """The connections remembered, in the order they were accepted.

        Every live connection, and the last ``history`` that ended.
        """
        return list(self._records.values())

    def connector_to(self, path: str) -> MemoryConnector:
        """An in-memory connector asking for *path*: one per tenant tells tenants apart."""
        self._watch(path)
        return MemoryConnector(self._nursery, serve_stream=self._serve_stream, resource=path)

    def connections_to(self, path: str) -> list[UpstreamConnection]:
        """The remembered connections that asked for *path*, in order."""
        state = self._paths.get(path)
        return [] if state is None else list(state.records.values())

    def reject_next(self, status: int, *, path: str | None = None) -> None:
        """Reject the next handshake (to *path*, or any) with HTTP *status*; queued."""
        self._rejections.append((path, status))

    async def wait_connections(self, count: int, *, path: str | None = None) -> UpstreamConnection:
        """Wait until *count* connections (to *path*, or any) were accepted; return the last.

        Raises `LookupError` if that one has ended and ``history`` newer
        connections have ended since: the upstream no longer remembers it.
        """
        state = None if path is None else self._watch(path)
        while (self.accepted if state is None else state.accepted) < count:
            await self._arrivals.setdefault(path, trio.Event()).wait()
        records = self._records if state is None else state.records
        if (connection := records.get(count - 1)) is None:
            where = "" if path is None else f" to {path}"
            raise LookupError(
                f"connection {count}{where} is forgotten: it ended before the last "
                f"{self.history:,} that ended (the upstream's history)"
            )
        return connection

    def _watch(self, path: str) -> _Path:
        state = self._paths.setdefault(path, _Path())
        state.watched = True
        return state

    async def serve_tcp(self, port: int = 0, *, host: str = "127.0.0.1") -> str:
        """Also serve over TCP (by default on a free loopback port); returns the ``ws://`` URL."""
        serve = functools.partial(trio.serve_tcp, self._serve_stream, port, host=host)
        listeners: list[trio.SocketListener] = await self._nursery.start(serve)
        host, port = listeners[0].socket.getsockname()[:2]
        return f"ws://{host}:{port}/"

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        gate = _Gate(stream)
        accepted: list[UpstreamConnection] = []
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(REQUEST_TIMEOUT) as waiting:
                    request = await trio_websocket.wrap_server_stream(nursery, gate)
                if waiting.cancelled_caught:  # the client left, or never asked
                    nursery.cancel_scope.cancel()
                    return
                # Its reader task ends by itself once the connection is over; cancelling
                # it early could interrupt a close handshake this side started.
                with contextlib.suppress(trio_websocket.ConnectionClosed):
                    await self._handshake(request, gate, accepted)  # the client may leave early
        finally:
            for connection in accepted:
                connection._detach()  # noqa: SLF001
                self._remember_ended(connection)
            await trio.aclose_forcefully(gate)

    def _replace(self, old: UpstreamConnection) -> None:
        """Close *old* with 4440 (connection replaced): a newer connection took its path."""
        self.replacements += 1
        old.replaced = True
        self._nursery.start_soon(_close_replaced, old)

    def _remember_ended(self, connection: UpstreamConnection) -> None:
        """Keep *connection*'s record among the last ``history`` ended; forget the oldest."""
        self._ended.append(connection)
        while len(self._ended) > self.history:
            old = self._ended.popleft()
            del self._records[old.index]
            state = self._paths[old.path]
            del state.records[old._path_index]  # noqa: SLF001
            if not state.records and not state.watched:
                del self._paths[old.path]

    async def _handshake(
        self,
        request: trio_websocket.WebSocketRequest,
        gate: _Gate,
        accepted: list[UpstreamConnection],
    ) -> None:
        path = request.path
        for i, (wanted, status) in enumerate(self._rejections):
            if wanted in (None, path):
                del self._rejections[i]
                await request.reject(status)
                return
        ws = await request.accept()
        state = self._paths.setdefault(path, _Path())
        connection = UpstreamConnection(
            self.accepted, ws, gate, path, path_index=state.accepted, history=self.history
        )
        accepted.append(connection)
        self._records[self.accepted] = connection
        self.accepted += 1
        older = [c for c in state.records.values() if not c.ended]
        state.records[state.accepted] = connection
        state.accepted += 1
        if self.replace:
            for old in older:
                self._replace(old)
        for key in (None, path):  # each waiter then checks its own count
            if (arrived := self._arrivals.pop(key, None)) is not None:
                arrived.set()
        await connection._serve()  # noqa: SLF001


async def _close_replaced(old: UpstreamConnection) -> None:
    with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        await old.close(4440, "connection replaced")


@asynccontextmanager
async def open_fake_upstream(
    *, history: int = 1000, replace: bool = False
) -> AsyncIterator[FakeUpstream]:
    """A `FakeUpstream` whose tasks live in this block; *history* bounds what it remembers.

    *replace*: a second connection to a path replaces the first (see `FakeUpstream`).
    """
    check_count(history, "history", minimum=0)  # here, not as an error of the nursery
    async with trio.open_nursery() as nursery:
        yield FakeUpstream(nursery, history=history, replace=replace)
        nursery.cancel_scope.cancel()
