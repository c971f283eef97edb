"""The Socket scope: one tenant connection that owns everything it starts.

Theory of operation
===================

`open_socket` is an async context manager: it checks its arguments, builds a
`Socket` and enters it. The Socket's own ``async with`` is the connection's
whole life, from the handshake to its caches being dropped. Inside it there
is one nursery, and everything the connection needs is a task in that
nursery or an object only its tasks touch: the WebSocket (a
transport with no task of its own), the *reader* (frames -> events -> buffer),
the *writer* (the outbox of `send`; started by the first send), the
keepalive's ping (a task only while a ping waits for its pong; the wait
between pings is an entry in a `Timers` heap: the hub's, which all its
sockets share, or else the socket's own), the buffer's auto-flush (a task
only while events are pending), the cache janitor (a task only while a
socket cache has a deadline), the socket-scoped caches (each built when
first read), the subscribers and the listeners, the protocol's *session*
and the tasks it starts. When the
``async with`` exits, none of them exists any more -- by structure, not by a
``destroy()`` someone must remember (a flush timer has nowhere else to live,
so none is orphaned).

The session is made once connected: ``options.protocol(sock)``, in the
nursery, before the reader starts and before the body runs, so its state
(a decompressor, a sequence number) is this connection's alone. A factory
that raises or makes no session is a bug in user code: the socket closes at
once and `open_socket` raises it instead of entering the body. The reader
hands each frame to the session's ``decode`` and puts the events it yields
(zero or more) in the buffer, in order; control messages are handled inside
``decode`` as they arrive, never buffered. Protocol code replies through
`Socket.reply` from ``decode`` (queued in order, without waiting) or
`Socket.send_frame` from a task (the same outbox and writer as
`Socket.send`, so in order) and runs per-connection work (a heartbeat loop) with
`Socket.start_soon`: a task in this nursery, so it lives exactly as long as
the connection. `Socket.mark_healthy` declares the connection healthy and
tells whoever opened the socket (a hub's tenant resets its backoff with it).

Every way a socket can end runs the same *ordered shutdown*:

1. stop reading (the reader's cancel scope) -- or, when the peer's close
   frame (or a drop) reached the transport first, read on to the end of
   what the peer sent before it;
2. cancel the auto-flush;
3. final flush into the subscribers, close their channels, and wait until
   each has drained (`EventStream.aclose`);
4. fail pending sends with `SocketClosed`;
5. cancel the body of the ``async with`` (like a cancel scope: not re-raised);
6. cancel the remaining tasks; close the WebSocket (shielded, bounded)
   with the close code and text `Socket.close` chose (1000 by default);
7. drop the socket caches.

Steps 1-3 share one *grace* period. Steps 1-5 run in a task of their own
when the end comes from inside (a remote close, ``stream:error``, a
keepalive timeout, too many bad frames, a listener's, session's or task's
error, `Socket.close`),
and inline when the body itself ends or is cancelled from outside.
`Socket.close_reason` says which end it was; once the transport has ended,
its reason is the socket's whichever task noticed first, so a send or a
local close racing the peer's close frame cannot replace the peer's reason.

A send that the close prevents raises `SocketClosed` with that reason. If it
ends the body (bare, or in an exception group with nothing else), the
``async with`` does not re-raise it: it is the close, like step 5's
cancellation.

A slow application slows its peer and loses nothing: the
reader publishes the batches of each network read before it reads again, so
a subscriber that does not keep up stops the reader; the transport reads
nothing more, TCP's window fills and the peer waits. Memory stays bounded
and nothing is dropped. Events held for a first subscriber stop the reader
the same way, at the end of the read that brings them to the buffer's
``max_items``: at most ``max_items - 1`` plus one read's events are held.
While the reader is held up, no pong could be read either: the keepalive
counts silence against the peer only while the reader is waiting for frames.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVarTuple, Unpack, final

import attrs
import trio
import trio_websocket

from ._buffer import EventBuffer, InvalidEvent
from ._cache_specs import BAILEYS_CACHE_SPECS, CacheSet, CacheSpec, Scope, check_cache_specs
from ._connect import CLOSE_TIMEOUT, Connector, as_connector, attempt_headers, retry_after
from ._gauges import Gauges
from ._options import SocketOptions
from ._protocol import (
    CloseRequested,
    FrameRejected,
    JsonProtocol,
    RejectReason,
    Session,
    preview,
)
from ._reasons import CloseOrigin, Decision, DisconnectReason, ReasonCode
from ._stream import EventStream
from ._timers import Timer, Timers
from ._transport import (
    MAX_REJECTION_BODY,
    Closed,
    HandshakeFailed,
    Link,
    TransportClosed,
    as_link,
    describe_transport_error,
)
from ._validate import check_async_function, check_instance, check_name, check_session

__all__ = ["ConnectFailed", "Socket", "SocketClosed", "open_socket"]

logger = logging.getLogger("tenantry.socket")

KEEPALIVE_GRACE = 5.0
"""Seconds a ping waits for its pong before a silent peer gets a 408."""

_Args = TypeVarTuple("_Args")

_INTERNAL_ERROR = 1011
"""The close code sent when user code failed (a listener, the session, a task)."""
_PROTOCOL_ERROR = 1002
"""The close code sent when the peer sent too many frames that could not be decoded."""

_REFUSED_BY_TRANSPORT = {
    1002: RejectReason.INVALID_FRAME,
    1007: RejectReason.INVALID_UTF8,
    1009: RejectReason.TOO_LARGE,
}
"""Close codes with which the transport itself fails a connection over one bad message."""


class SocketClosed(Exception):
    """The socket closed before a `Socket.send` could be written; ``reason`` says why."""

    def __init__(self, reason: DisconnectReason) -> None:
        super().__init__(f"socket closed: {reason}")
        self.reason = reason


class ConnectFailed(Exception):
    """`open_socket` could not connect; ``reason`` says why.

    For example 403 for a handshake rejected with HTTP 403, 400 for an answer
    that is not a valid upgrade, 408 for a server that could not be reached,
    a TLS error, a connection closed during the handshake, a handshake
    that took longer than *connect_timeout*, or headers that could not be
    made (`SocketOptions.headers` raised or returned headers that cannot be sent).

    When the server answered with an HTTP error, the answer is kept for the
    caller to read; it is never logged nor shown by ``str()`` or ``repr()``
    (a ``Set-Cookie`` or an echoed token may be in it):

    ===============  ==============================================================
    ``status``       the HTTP status (int), or None if there was no HTTP answer
    ``headers``      the response's headers: (name in lower case, value) pairs
    ``body``         the start of the response's body, at most 4 KiB (bytes)
    ``retry_after``  seconds a 429 or 503 asked to wait (``Retry-After``, as a number
                     of seconds or an HTTP date; a past date is 0), else None
    ===============  ==============================================================
    """

    def __init__(
        self,
        reason: DisconnectReason,
        *,
        status: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.status = status
        self.headers = headers
        self.body = body
        self.retry_after = retry_after


class _Outgoing:
    __slots__ = ("done", "frame", "written")

    def __init__(self, frame: str | bytes) -> None:
        self.frame = frame
        self.done = trio.Event()
        self.written = False


@final
class Socket:
    """One live connection, as seen from inside its `open_socket` block.

    `open_socket` (or a hub's tenant) builds it and enters it, once: its ``async with`` connects,
    starts its tasks, and at exit runs the ordered shutdown, closes the
    WebSocket and drops its caches.
    """

    __slots__ = (
        "_aborted",
        "_body",
        "_buffer",
        "_caches",
        "_close_frame",
        "_close_reason",
        "_connector",
        "_error",
        "_events",
        "_flushing",
        "_frames",
        "_gauges",
        "_global_caches",
        "_healthy",
        "_heard",
        "_keepalive",
        "_life",
        "_nursery",
        "_on_healthy",
        "_options",
        "_outbox",
        "_outbox_send",
        "_protocol",
        "_read_done",
        "_reading",
        "_recent_rejections",
        "_rejected",
        "_replies",
        "_replies_written",
        "_session",
        "_shut_down",
        "_stalled",
        "_tenant_caches",
        "_tenant_id",
        "_timers",
        "_ws",
    )

    def __init__(
        self,
        connector: Connector,
        *,
        tenant_id: str,
        options: SocketOptions,
        caches: CacheSet,
        tenant_caches: CacheSet | None,
        global_caches: CacheSet | None,
        gauges: Gauges,
        on_healthy: Callable[[], object] | None = None,
        timers: Timers | None = None,
    ) -> None:
        self._connector = connector
        self._tenant_id = tenant_id
        self._options = options
        protocol = options.protocol
        if protocol is None:
            protocol = JsonProtocol(max_message_size=options.max_message_size)
        self._protocol: Callable[[Socket], Session] = protocol
        self._session: Session | None = None  # made by the protocol once connected
        self._healthy = False
        self._on_healthy = on_healthy
        self._caches = caches
        self._tenant_caches = tenant_caches
        self._global_caches = global_caches
        self._gauges = gauges
        self._buffer = EventBuffer(options.buffer, options.rules, tenant_id=tenant_id)
        self._events = EventStream(self._buffer)
        self._life: AbstractAsyncContextManager[Socket] | None = None  # entered once
        self._ws: Link | None = None  # while connected
        # The outbox and its writer task come with the first send: many sockets never send.
        self._outbox_send: trio.MemorySendChannel[_Outgoing] | None = None
        self._outbox: trio.MemoryReceiveChannel[_Outgoing] | None = None
        self._replies: deque[str | bytes] | None = None  # `reply`'s queue, from its first use
        self._replies_written: trio.Event | None = None  # while its writer task runs
        self._reading = trio.CancelScope()
        self._read_done: trio.Event | None = None  # while a close waits for the last frames
        self._stalled = False  # whether the reader waits for the application, not the peer
        self._flushing: trio.CancelScope | None = None  # the auto-flush task's, while it runs
        self._body = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._shut_down: trio.Event | None = None  # made when the ordered shutdown begins
        self._close_reason: DisconnectReason | None = None
        self._close_frame = (1000, "")  # the WebSocket close code and text this side sends
        self._error: Exception | None = None
        self._rejected: dict[RejectReason, int] | None = None  # until the first rejection
        self._recent_rejections: deque[float] | None = None  # until the first rejection
        self._frames = 0
        self._aborted = False  # the transport is (being) closed without a close frame
        # The keepalive: an entry in the hub's timers (or, without, in the socket's own),
        # and the frames counted when it was set.
        self._timers = timers
        self._keepalive: Timer | None = None
        self._heard = 0

    # -- public ------------------------------------------------------------

    @property
    def tenant_id(self) -> str:
        """The tenant this connection belongs to."""
        return self._tenant_id

    @property
    def caches(self) -> CacheSet:
        """The socket-scoped caches: dropped when the socket closes."""
        return self._caches

    @property
    def tenant_caches(self) -> CacheSet | None:
        """The tenant's caches (owned by the tenant; they survive reconnects), if given."""
        return self._tenant_caches

    @property
    def global_caches(self) -> CacheSet | None:
        """The hub's caches (shared by all tenants), if given."""
        return self._global_caches

    @property
    def events(self) -> EventStream:
        """Subscribe to batches, or register listeners, here."""
        return self._events

    @property
    def buffer(self) -> EventBuffer:
        """The socket's event buffer (``with sock.buffer.buffering(): ...``)."""
        return self._buffer

    @property
    def close_reason(self) -> DisconnectReason | None:
        """Why the socket closed or is closing; None while it is open."""
        return self._close_reason

    @property
    def closing(self) -> bool:
        """Whether the ordered shutdown has begun."""
        return self._close_reason is not None

    @property
    def rejected(self) -> Mapping[RejectReason, int]:
        """Frames rejected so far, by reason."""
        return dict.fromkeys(RejectReason, 0) if self._rejected is None else dict(self._rejected)

    @property
    def frames_received(self) -> int:
        """Messages read from the WebSocket, rejected ones and those without events included."""
        return self._frames

    @property
    def healthy(self) -> bool:
        """Whether the connection was declared healthy (`mark_healthy`)."""
        return self._healthy

    def mark_healthy(self) -> None:
        """Declare the connection healthy: the protocol's READY (or RESUMED) moment.

        In a hub, the tenant's backoff and circuit breaker are reset at once
        (``hub.status()`` shows it), and the connection's end is then not
        counted as a failure, however soon it comes. A protocol that never
        calls it relies on ``ReconnectPolicy.stable_after``. Idempotent.
        """
        if self._healthy:
            return
        self._healthy = True
        logger.info(
            "connection healthy: tenant %s", self._tenant_id, extra={"tenant": self._tenant_id}
        )
        if self._on_healthy is not None:
            self._on_healthy()

    async def send(self, event_type: str, data: Any) -> None:
        """Encode an event and write it, in order, through the socket's writer.

        Waits while the outbox is full; returns once the frame is written.

        Raises:
            SocketClosed: the socket closed (or was closing) before the frame
                was written; its ``reason`` is `close_reason`. Raised in the
                ``async with`` body and not caught, it ends the body as the
                close would, and is not re-raised by `open_socket`.
            TypeError, ValueError: the protocol cannot encode the event.
        """
        if self._close_reason is not None:
            raise SocketClosed(self._close_reason)
        session = self._session
        if session is None:  # pragma: no cover - made before anyone can send
            raise RuntimeError("socket used before it started")
        await self._send(session.encode(event_type, data))

    async def send_frame(self, frame: str | bytes) -> None:
        """Write a frame as it is (text for `str`, binary for `bytes`), in order with `send`.

        For protocol code: a reply to a control message, a heartbeat, an
        identify. Waits and raises as `send` does.

        Raises:
            SocketClosed: the socket closed before the frame was written.
            TypeError: *frame* is neither `str` nor `bytes`.
        """
        if not isinstance(frame, (str, bytes)):
            raise TypeError(f"frame must be str or bytes, got {type(frame).__name__}")
        if self._close_reason is not None:
            raise SocketClosed(self._close_reason)
        await self._send(frame)

    def reply(self, frame: str | bytes) -> None:
        """Queue a raw frame to be written without waiting: for `Session.decode`.

        ``decode`` cannot await, so a protocol answers a control message
        (a hello, a heartbeat request) with ``reply``: the frames go out in
        the order they were queued, through the same writer as `send`. The
        reader does not read the next frame while more than
        `SocketOptions.max_pending_sends` replies wait, so a peer that asks
        for replies faster than they can be written is slowed down, and the
        queue stays bounded. Replies still queued when the socket closes are
        not written: the close ends the conversation.

        Raises:
            TypeError: *frame* is neither `str` nor `bytes`.
        """
        if not isinstance(frame, (str, bytes)):
            raise TypeError(f"frame must be str or bytes, got {type(frame).__name__}")
        if self._close_reason is not None:
            return
        replies = self._replies
        if replies is None:
            replies = self._replies = deque()
        replies.append(frame)
        if self._replies_written is None:
            nursery = self._nursery
            if nursery is None:  # pragma: no cover - the session is made once the nursery is
                raise RuntimeError("socket used before it started")
            self._replies_written = trio.Event()
            nursery.start_soon(self._write_replies, replies, self._replies_written)

    async def _write_replies(self, replies: deque[str | bytes], written: trio.Event) -> None:
        """`reply`'s writer: one at a time, in order, until the queue is empty."""
        try:
            while replies:
                await self._send(replies[0])
                replies.popleft()
        except SocketClosed:
            replies.clear()  # the close ends the conversation
        finally:
            self._replies_written = None
            written.set()

    async def _send(self, frame: str | bytes) -> None:
        outgoing = _Outgoing(frame)
        outbox = self._outbox_send or self._open_outbox()
        try:
            await outbox.send(outgoing)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed_error() from None
        await outgoing.done.wait()
        if not outgoing.written:
            raise self._closed_error()

    def start_soon(
        self, async_fn: Callable[[Unpack[_Args]], Awaitable[object]], *args: *_Args
    ) -> None:
        """Run ``await async_fn(*args)`` as a task of this connection (e.g. a heartbeat loop).

        The task lives in the socket's scope: it is cancelled when the
        socket ends (after the ordered shutdown's final flush). A
        `SocketClosed` of this socket's close ends it quietly; any other
        exception is a bug in user code, handled as a listener's is: the
        socket closes in order and `open_socket` re-raises it.

        Raises:
            TypeError: *async_fn* is not an async function.
            SocketClosed: the socket's scope has exited: its tasks are over.
        """
        check_async_function(async_fn, "async_fn")
        nursery = self._nursery
        if nursery is None:  # the socket's tasks are over (it was made once the nursery was)
            raise self._closed_error()
        nursery.start_soon(self._run_task, async_fn, args, name=async_fn)

    def close(
        self,
        reason: DisconnectReason | str | None = None,
        *,
        code: int = 1000,
        decision: Decision | None = None,
    ) -> None:
        """Begin the ordered shutdown; the ``async with`` body is then cancelled.

        Args:
            reason: A `DisconnectReason` (kept as given, but for the
                ``raw_code`` of a local one without: *code*), or a message
                for a local 428 (connection closed) whose ``raw_code`` is
                *code*.
            code: The WebSocket close code to send: 1000 (normal), one of
                RFC 6455's other codes a client may send (1001-1003,
                1007-1013), or 3000-4999 (registered and private codes,
                e.g. one a gateway reads as "keep the session for a
                resume"). The close frame carries it and the reason's
                message (up to 123 bytes of UTF-8).
            decision: What the tenant does next, overriding its policy's
                ``decide`` (``Decision.RECONNECT_NOW``, ``Decision.STOP``,
                ...); it becomes the reason's ``decision``. None lets the
                policy decide.

        Idempotent: the first reason wins, and if the peer's close frame (or
        a drop) has already reached the transport, the peer's reason does
        (and no close frame is sent); the *decision* then still applies,
        carried by the peer's reason. Once the socket is closing (`closing`),
        a close changes nothing, its decision included.

        Raises:
            TypeError, ValueError: a *reason*, *code* or *decision* that could
                never be sent, naming it.
        """
        code = _check_close_code(code)
        if decision is not None:
            check_instance(decision, "decision", Decision)
        if isinstance(reason, DisconnectReason):
            text = reason.message
            if decision is not None:
                reason = attrs.evolve(reason, decision=decision)
            if reason.origin is CloseOrigin.LOCAL and reason.raw_code is None:
                reason = attrs.evolve(reason, raw_code=code)
        elif reason is None or isinstance(reason, str):
            text = reason or ""
            reason = DisconnectReason(
                ReasonCode.CONNECTION_CLOSED,
                text or "closed locally",
                remote=False,
                raw_code=code,
                decision=decision,
            )
        else:
            raise TypeError(
                f"reason must be a DisconnectReason, a str or None, got {type(reason).__name__}"
            )
        if self._close_reason is None:
            self._close_frame = (code, _close_text(text))
        self._begin_close(reason)

    def abort(self, reason: DisconnectReason | str | None = None) -> None:
        """Close the transport at once, then run the ordered shutdown locally.

        Unlike `close`, nothing more reaches the peer: no pending send, no
        close frame; the connection is gone from the peer's side within
        this scheduling step. What was already read is still flushed into
        the subscribers and drained, as on any close. For a connection that
        must not outlive a deadline (a lost lease), or is already closing
        and must stop now. *reason* is as for `close` (default: "aborted
        locally"); idempotent.
        """
        if not isinstance(reason, DisconnectReason):
            reason = _local_close(reason or "aborted locally")
        self._begin_close(reason)
        self._fail_pending_sends()  # now, before any task runs: nothing more is written
        if not self._aborted and self._nursery is not None and self._ws is not None:
            self._aborted = True
            # If the tasks are over already, the scope's exit aborts it instead (`_live`).
            with contextlib.suppress(RuntimeError):
                self._nursery.start_soon(self._ws.abort)

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed ({self._close_reason})"
        return f"<Socket tenant={self._tenant_id!r} {state}>"

    # -- the scope ---------------------------------------------------------------

    async def __aenter__(self) -> Socket:
        """Connect and start the socket's tasks; `open_socket` enters it, once."""
        if self._life is not None:
            raise RuntimeError("a Socket is entered once, by open_socket")
        self._life = self._live()
        return await self._life.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        """Shut down in order, close the connection, drop the caches; see `open_socket`."""
        if self._life is None:  # pragma: no cover - an exit without an entry
            raise RuntimeError("a Socket is exited only after it was entered")
        return await self._life.__aexit__(exc_type, exc, traceback)

    @asynccontextmanager
    async def _live(self) -> AsyncIterator[Socket]:
        """The socket's whole life, from the handshake to its caches being dropped."""
        gauges = self._gauges
        body_error: Exception | None = None
        counted = False
        try:
            async with _connect(self._connector, self._options) as ws:
                gauges.sockets_alive += 1
                gauges.buffers_alive += 1
                counted = True
                async with trio.open_nursery() as nursery:
                    try:
                        if self._start(nursery, ws):  # else the protocol failed: self._error
                            with self._caches.janitor(nursery), self._body:
                                yield self
                    except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
                        body_error = None if self._is_own_close(exc) else exc
                    finally:
                        try:
                            await self._finish()
                        finally:
                            self._stop_keepalive()  # before the nursery closes: it starts pings
                            nursery.cancel_scope.cancel()
                self._nursery = None  # closed to new tasks: `start_soon` says so
                reason = self._close_reason
                lost = reason is not None and reason.code == ReasonCode.CONNECTION_LOST
                if lost or self._aborted:
                    await ws.abort()  # a peer declared dead answers no close
                else:
                    await self._close_websocket(ws)
        finally:
            if counted:  # counted until the WebSocket is closed: the scope's whole life
                gauges.sockets_alive -= 1
                gauges.buffers_alive -= 1
            self._caches.clear()  # the last step: after the WebSocket is closed
            self._on_healthy = None  # the opener's next connection is none of this one's business
        if body_error is not None:
            raise body_error
        if self._error is not None:
            raise self._error

    # -- tasks -----------------------------------------------------------------

    def _start(self, nursery: trio.Nursery, ws: Link) -> bool:
        """Make the connection's session, then start the reader; False if the protocol failed."""
        self._nursery, self._ws = nursery, ws
        try:
            session = self._protocol(self)
            check_session(session, "protocol")
        except Exception as exc:  # noqa: BLE001 - a bug in user code: closed in order, re-raised
            self._fail(exc)
            return False
        self._session = session
        nursery.start_soon(self._read, ws, session)
        self._events.flush_on_demand(self._start_auto_flush)
        if self._timers is None:  # no hub's timers to share: a timer task of the socket's own
            self._timers = Timers()
            nursery.start_soon(self._timers.run)
        self._arm_keepalive()  # the last step: nothing can fail between it and its finally
        return True

    async def _read(self, ws: Link, session: Session) -> None:
        """Read, decode and buffer; publish once per network read, before the next one."""
        decode, emit, events = session.decode, self._buffer.emit, self._events
        max_replies = self._options.max_pending_sends
        with self._reading as reading:
            try:
                while True:
                    ready = False
                    for frame in await ws.receive():  # every message of one read
                        if reading.cancel_called:  # a close of this side's: read no further
                            break
                        self._frames += 1
                        ready = self._take(frame, decode, emit) or ready
                        replies, written = self._replies, self._replies_written
                        if replies and len(replies) > max_replies and written is not None:
                            if ready:  # what is decoded goes on meanwhile
                                await self._publish(events)
                                ready = False
                            await written.wait()  # a flood of requests slows its peer
                    # Published before reading on: a slow application slows the peer. (A
                    # read cut short by the close or an error leaves its events to the
                    # shutdown's final flush.)
                    if ready and not reading.cancel_called:
                        await self._publish(events)
            except TransportClosed as closed:
                ended, closing = closed.closed, self._close_reason is not None
                self._begin_close(self._transport_reason(ended))
                refused = not ended.remote and not closing  # the transport's, not this side's close
                if refused and ended.code in _REFUSED_BY_TRANSPORT:  # over a bad message
                    self._reject(_REFUSED_BY_TRANSPORT[ended.code], ended.reason)
            except CloseRequested as request:
                self._begin_close(request.reason)
            except Exception as exc:  # noqa: BLE001 - a listener's (or a custom protocol's) bug
                self._fail(exc)
            finally:
                if self._read_done is not None:  # a close is waiting for the peer's last frames
                    self._read_done.set()

    async def _publish(self, events: EventStream) -> None:
        """Publish the ready batches; the reader waits for the application meanwhile."""
        self._stalled = True
        await events.publish_ready()
        self._stalled = False

    def _take(
        self,
        frame: str | bytes,
        decode: Callable[[str | bytes], Any],
        emit: Callable[[str, Any], bool],
    ) -> bool:
        """Decode one message into the buffer; whether the buffer asks to publish."""
        ready = False
        try:
            for item in decode(frame):  # zero or more events
                pair = item if item.__class__ is tuple and len(item) == 2 else _pair(item)
                try:
                    ready = emit(*pair) or ready
                except InvalidEvent as invalid:
                    self._reject(RejectReason.INVALID_EVENT, f"{preview(frame)} ({invalid})")
        except FrameRejected as rejection:
            self._reject(rejection.reason, rejection.preview)
        return ready

    def _open_outbox(self) -> trio.MemorySendChannel[_Outgoing]:
        nursery, ws = self._nursery, self._ws
        if nursery is None or ws is None:  # pragma: no cover - it starts before anyone can send
            raise RuntimeError("socket used before it started")
        self._outbox_send, self._outbox = trio.open_memory_channel[_Outgoing](
            self._options.max_pending_sends
        )
        nursery.start_soon(self._write, ws, self._outbox)
        return self._outbox_send

    async def _write(self, ws: Link, outbox: trio.MemoryReceiveChannel[_Outgoing]) -> None:
        async for outgoing in outbox:
            try:
                await ws.send(outgoing.frame)
                outgoing.written = True
            except TransportClosed as closed:
                # Often before the reader reaches the close frame: the close begins here,
                # with the peer's reason, so that the failed send can carry it.
                self._begin_close(self._transport_reason(closed.closed))
            finally:
                outgoing.done.set()

    # The keepalive. Frames count as signs of life, so the reader never reads
    # the clock: only an interval without any frame costs a ping. An interval
    # the reader spent waiting for the application is no silence of the peer's.

    def _arm_keepalive(self) -> None:
        """Look at the frames again after one more interval (`_keepalive_due`)."""
        timers = self._timers
        if timers is None:  # stopped (a pong that came as the nursery closed): no more
            return
        self._heard = self._frames
        due = trio.current_time() + self._options.keepalive
        self._keepalive = timers.call_at(due, self._keepalive_due)

    def _keepalive_due(self) -> None:
        """Called by the timers: frames (or a waiting reader) since, or else a ping."""
        if self._frames != self._heard or self._stalled:
            self._arm_keepalive()
        elif self._nursery is not None and self._ws is not None:
            self._nursery.start_soon(self._ping, self._ws)

    async def _ping(self, ws: Link) -> None:
        """Ping, and give the peer `KEEPALIVE_GRACE` seconds for its pong (or any frame).

        The reader reads the pong (the transport counts it): a reader held up
        by the application reads none. `_keepalive_due` does not ping then; and
        a hold-up that begins during the grace begins with messages just read,
        which count as life, so the grace ends in a new interval, not a 408.
        """
        heard = self._heard
        with trio.move_on_after(KEEPALIVE_GRACE):
            try:
                seen = ws.pongs
                await ws.ping()
                await ws.wait_pong(seen)
            except TransportClosed as closed:
                self._begin_close(self._transport_reason(closed.closed))
                return
            self._arm_keepalive()
            return
        if self._frames != heard:
            self._arm_keepalive()
            return
        silence = self._options.keepalive + KEEPALIVE_GRACE
        reason = f"no frame and no pong for {silence:g} s"
        self._begin_close(DisconnectReason(ReasonCode.CONNECTION_LOST, reason, remote=True))

    def _stop_keepalive(self) -> None:
        self._timers = None
        if self._keepalive is not None:
            self._keepalive.cancel()

    def _start_auto_flush(self) -> None:
        if self._nursery is None:  # pragma: no cover - the reader starts after the nursery
            raise RuntimeError("socket used before it started")
        self._flushing = trio.CancelScope()  # a scope is entered once: one per task
        self._nursery.start_soon(self._auto_flush, self._flushing)

    async def _auto_flush(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._events.auto_flush_while_pending()
            except Exception as exc:  # noqa: BLE001 - a listener's bug, raised while publishing
                self._fail(exc)

    # -- shutdown ----------------------------------------------------------------

    def _begin_close(self, reason: DisconnectReason) -> DisconnectReason:
        """Begin the ordered shutdown, once; returns the reason in effect.

        If the peer has already ended the transport (its close frame, or a
        drop), its reason wins over *reason*, and the reader reads on to the
        end of what the peer sent before it (`_shutdown` waits for it).
        """
        if self._close_reason is not None:
            return self._close_reason
        nursery, ws = self._nursery, self._ws
        if nursery is None or ws is None:  # pragma: no cover - it starts before anyone can close it
            raise RuntimeError("socket closed before it started")
        ended = ws.closed
        if ended is not None and ended.remote:
            decision = reason.decision  # a local close's, which the peer's reason then carries
            reason = self._transport_reason(ended)
            if decision is not None:
                reason = attrs.evolve(reason, decision=decision)
            self._read_done = trio.Event()
        else:
            self._reading.cancel()
            reason = self._options.close_codes.named(reason)
        self._close_reason = reason
        log = logger.info if reason.remote or self._error is None else logger.error
        log(
            "socket closing: tenant %s, %s",
            self._tenant_id,
            reason,
            extra={
                "tenant": self._tenant_id,
                "code": reason.code,
                "remote": reason.remote,
                "origin": reason.origin.value,
                "raw_code": reason.raw_code,
            },
        )
        self._shut_down = trio.Event()
        nursery.start_soon(self._shutdown, self._shut_down)
        return reason

    async def _shutdown(self, shut_down: trio.Event) -> None:
        """Steps 1-5 of the ordered shutdown (see the module docstring), after `_begin_close`."""
        try:
            deadline = trio.current_time() + self._options.grace
            if self._read_done is not None:  # the peer's last frames are still being read
                with trio.move_on_at(deadline, shield=True):
                    await self._read_done.wait()
                self._reading.cancel()
            if self._flushing is not None:
                self._flushing.cancel()
            final_flush = self._buffer.pending
            try:
                await self._events.aclose(max(deadline - trio.current_time(), 0.0))
            except Exception as exc:  # noqa: BLE001 - the final batch met a broken listener again
                self._error = self._error or exc
            self._log_destroyed(final_flush)
            self._fail_pending_sends()
            self._body.cancel()
        finally:
            shut_down.set()

    def _log_destroyed(self, final_flush: int) -> None:
        stats = self._buffer.stats
        logger.info(
            "event buffer destroyed: tenant %s, final flush of %d events"
            " (%d received, %d delivered, %d merged, %d lost)",
            self._tenant_id,
            final_flush,
            stats.received,
            stats.delivered,
            stats.merged,
            stats.lost,
            extra={
                "tenant": self._tenant_id,
                "final_flush": final_flush,
                "received": stats.received,
                "delivered": stats.delivered,
                "merged": stats.merged,
                "lost": stats.lost,
            },
        )

    def _fail_pending_sends(self) -> None:
        if self._outbox_send is None or self._outbox is None:
            return
        self._outbox_send.close()
        while True:
            try:
                self._outbox.receive_nowait().done.set()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break

    def _transport_reason(self, ended: Closed | None) -> DisconnectReason:
        """Why the transport ended, under the protocol's close codes: the peer's close
        frame, a drop (None, or 1006), or this side's refusal of a message (1009, 1007,
        1002: a local reason with the code sent)."""
        if ended is None:
            return self._options.close_codes.reason(None)
        reason = self._options.close_codes.reason(ended.code, ended.reason)
        if not ended.remote:
            reason = attrs.evolve(reason, remote=False, origin=CloseOrigin.LOCAL)
        return reason

    async def _close_websocket(self, ws: Link) -> None:
        """Close the WebSocket with this side's close code and text (shielded, bounded).

        No close frame is sent if the peer's came first. Cancelled from outside,
        it leaves the WebSocket to the connector, which closes it at once: no
        close reply could be read.
        """
        if trio.current_effective_deadline() == -math.inf:
            return
        code, text = self._close_frame
        with trio.CancelScope(shield=True):
            await ws.aclose(code, text, timeout=CLOSE_TIMEOUT)

    async def _finish(self) -> None:
        """Run from the body's exit: make sure the ordered shutdown ran, then wait for it."""
        self.close("closed by owner")
        shut_down = self._shut_down  # made by the first close
        with trio.move_on_after(self._options.grace + KEEPALIVE_GRACE, shield=True):
            if shut_down is not None:
                await shut_down.wait()

    def _closed_error(self) -> SocketClosed:
        """The error for a send that the close kept from being written."""
        reason = self._close_reason
        if reason is None:
            # A cancellation from outside reached the writer before the body's exit
            # closed the socket, which it is about to do, for this reason.
            reason = self._begin_close(_local_close("closed by owner"))
        return SocketClosed(reason)

    def _is_own_close(self, error: BaseException) -> bool:
        """Whether *error* is this socket's `SocketClosed`, bare or in a group of nothing else."""
        if isinstance(error, BaseExceptionGroup):
            return all(self._is_own_close(inner) for inner in error.exceptions)
        return isinstance(error, SocketClosed) and error.reason is self._close_reason

    async def _run_task(
        self, async_fn: Callable[[Unpack[_Args]], Awaitable[object]], args: tuple[*_Args]
    ) -> None:
        """A task of `start_soon`: its error is a bug in user code, unless it is the close."""
        try:
            await async_fn(*args)
        except Exception as exc:  # noqa: BLE001 - handled as a listener's
            if not self._is_own_close(exc):
                self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._close_locally(
            _INTERNAL_ERROR, _local_close(f"{type(exc).__name__} in user code: {exc}")
        )

    def _close_locally(self, code: int, reason: DisconnectReason) -> None:
        """Begin a close of tenantry's own making, whose close frame says *code*.

        Not 1000: a peer may read a normal close as "the session is over"
        (some gateways then refuse a resume), and this close is no such thing.
        """
        if self._close_reason is None:
            self._close_frame = (code, "")
            reason = attrs.evolve(reason, raw_code=code)
        self._begin_close(reason)

    def _reject(self, reason: RejectReason, shown: str) -> None:
        if self._rejected is None:
            self._rejected = dict.fromkeys(RejectReason, 0)
        self._rejected[reason] += 1
        logger.warning(
            "frame rejected (%s) on tenant %s: %s",
            reason.value,
            self._tenant_id,
            shown,
            extra={"tenant": self._tenant_id, "reason": reason.value, "preview": shown},
        )
        now = trio.current_time()
        recent = self._recent_rejections
        if recent is None:
            recent = self._recent_rejections = deque()
        recent.append(now)
        window = self._options.bad_frame_window
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) > self._options.max_bad_frames:
            self._close_locally(
                _PROTOCOL_ERROR,
                DisconnectReason(
                    ReasonCode.PROTOCOL_ERROR,
                    f"{len(recent)} bad frames within {window:g} s",
                    remote=False,
                ),
            )


@asynccontextmanager
async def open_socket(
    connect: str | Connector,
    *,
    tenant_id: str,
    options: SocketOptions | None = None,
    caches: Mapping[str, CacheSpec] = BAILEYS_CACHE_SPECS,
    tenant_caches: CacheSet | None = None,
    global_caches: CacheSet | None = None,
    gauges: Gauges | None = None,
    on_healthy: Callable[[], object] | None = None,
) -> AsyncIterator[Socket]:
    """Connect, and own everything the connection needs until the block ends.

    Args:
        connect: A ``ws://``/``wss://`` URL, or a connector such as
            `tenantry.testing.MemoryConnector`.
        tenant_id: Stamped on batches, logs and cache names.
        options: How the connection runs (protocol, buffer, keepalive,
            headers, limits, timeouts); `SocketOptions` with its defaults
            when None.
        caches: Cache specs; those of `Scope.SOCKET` are built for this socket
            and dropped when it closes.
        tenant_caches: Caches owned by the tenant, passed through for
            handlers (`Socket.tenant_caches`).
        global_caches: Caches owned by the hub, passed through for handlers
            (`Socket.global_caches`).
        gauges: Counts this socket and its buffer from the handshake until the
            WebSocket is closed, as the block exits.
        on_healthy: Called once, when the connection is declared healthy
            (`Socket.mark_healthy`) before the block has exited; a hub's
            tenant resets its backoff with it.

    Raises:
        ConnectFailed: anything that failed before the connection was made;
            its ``reason`` says what (the HTTP status of a rejected
            handshake, a TLS error, "handshake timed out after 10 s", ...).

    A remote or local close cancels the body like a cancel scope and is not
    re-raised; `Socket.close_reason` says why. Nor is a `SocketClosed` from
    this socket's `Socket.send` that ends the body (bare, or in an exception
    group of nothing else): it is the same close. An exception from a
    listener, the protocol's session or a task of `Socket.start_soon` is
    re-raised after the ordered shutdown: it is a bug in user code. So is
    a session factory that raises or makes no session: the block is then
    not entered, and `open_socket` raises it.

    The WebSocket closes with a close handshake (bounded) after a normal
    local or remote close, sending the code `Socket.close` was given (1000
    by default). A peer declared dead (reason 408) is not asked
    for one, and neither is any peer when the block is cancelled from
    outside: no reply could be read.
    """
    check_name(tenant_id, "tenant_id")
    check_cache_specs(caches, "caches")
    if options is None:
        options = SocketOptions()
    check_instance(options, "options", SocketOptions)
    sock = Socket(
        as_connector(connect),
        tenant_id=tenant_id,
        options=options,
        caches=CacheSet(caches, Scope.SOCKET, label=tenant_id),
        tenant_caches=tenant_caches,
        global_caches=global_caches,
        gauges=Gauges() if gauges is None else gauges,
        on_healthy=on_healthy,
    )
    async with sock:
        yield sock


@asynccontextmanager
async def _connect(connector: Connector, options: SocketOptions) -> AsyncIterator[Link]:
    """``connector.open()``, bounded by the connect timeout; failing to connect is `ConnectFailed`.

    Whatever fails before the connection is yielded (an exception group
    included) becomes a `ConnectFailed` whose reason says what. The bound is
    a cancel scope around the whole block whose deadline is lifted once
    connected: it bounds any connector, through every step it takes, and
    the headers' callable, awaited first.
    """
    connected = False
    connect_timeout = options.connect_timeout
    # Frames up to four times the limit reach the protocol, which rejects and counts them;
    # the transport refuses larger ones itself (close code 1009, counted by the reader).
    max_message_size = 4 * options.max_message_size
    with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as connecting:
        try:
            headers = await attempt_headers(options.headers)
        except HandshakeFailed as error:  # the headers' callable failed: its error is the cause
            raise ConnectFailed(error.reason) from error.__cause__
        try:
            async with connector.open(headers=headers, max_message_size=max_message_size) as ws:
                connecting.deadline = math.inf
                if connecting.cancel_called:  # the deadline passed as the handshake ended
                    await trio.sleep(0)  # noqa: ASYNC115 - lets the timeout's Cancelled out
                connected = True
                yield as_link(ws)
        except Exception as error:
            if connected:
                raise
            raise _connect_failed(error) from None
    if connecting.cancelled_caught:
        reason = f"handshake timed out after {connect_timeout:g} s"
        raise ConnectFailed(DisconnectReason(ReasonCode.CONNECTION_LOST, reason))


def _pair(item: object) -> tuple[str, Any]:
    """A decoded item as an ``(event type, data)`` pair; anything else is a bug in the session.

    A two-item list is taken as a pair too; a string, a mapping or any other
    iterable of two is not (unpacking would take it apart silently).
    """
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return (item[0], item[1])
    raise TypeError(f"decode yielded {type(item).__name__}, not an (event type, data) pair")


def _local_close(message: str) -> DisconnectReason:
    return DisconnectReason(ReasonCode.CONNECTION_CLOSED, message, remote=False)


_SENDABLE_CLOSE_CODES = (range(1000, 1004), range(1007, 1014), range(3000, 5000))
"""Close codes an endpoint may send (RFC 6455 section 7.4 and the IANA registry), but for
1014 (bad gateway): a peer built on wsproto (trio-websocket's servers) fails on it with 1002."""
_MAX_CLOSE_TEXT = 123
"""Bytes of UTF-8 a close frame's reason may carry (125 less the code's 2)."""


def _check_close_code(code: object) -> int:
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, got {type(code).__name__}")
    if not any(code in codes for codes in _SENDABLE_CLOSE_CODES):
        raise ValueError(
            f"code must be a close code an endpoint may send (1000-1003, 1007-1013,"
            f" 3000-4999), got {code}"
        )
    return int(code)


def _close_text(message: str) -> str:
    """*message* cut to what a close frame can carry, on a character boundary."""
    encoded = message.encode("utf-8", "replace")
    return encoded[:_MAX_CLOSE_TEXT].decode("utf-8", "ignore")


def _connect_failed(error: Exception) -> ConnectFailed:
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # a connector's nursery wrapped it: what happened is inside
    if isinstance(error, trio_websocket.ConnectionRejected):
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in error.headers)
        reason = DisconnectReason.from_handshake_status(error.status_code)
        return _rejected(reason, error.status_code, headers, error.body or b"")
    if isinstance(error, HandshakeFailed):
        if error.status is None:
            return ConnectFailed(error.reason)
        return _rejected(error.reason, error.status, error.headers, error.body)
    if isinstance(error, trio.BrokenResourceError):
        message = describe_transport_error(error, during="connect")
    elif isinstance(error, (OSError, trio_websocket.HandshakeError)):
        message = f"could not connect: {str(error) or type(error).__name__}"
    else:  # a connector's own error
        message = f"could not connect: {type(error).__name__}: {error}"
    return ConnectFailed(DisconnectReason(ReasonCode.CONNECTION_LOST, message))


def _rejected(
    reason: DisconnectReason, status: int, headers: tuple[tuple[str, str], ...], body: bytes
) -> ConnectFailed:
    return ConnectFailed(
        reason,
        status=status,
        headers=headers,
        body=body[:MAX_REJECTION_BODY],
        retry_after=retry_after(status, headers, now=time.time()),
    )
