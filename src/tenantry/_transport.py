"""A WebSocket client connection that tenantry drives itself: wsproto over a Trio stream.

Theory of operation
===================

Two layers, as in h11 or websockets: a pure protocol core and a thin I/O
layer around it.

`_Core` holds no stream and never awaits. It owns the ``wsproto``
connection and turns the bytes of one network read into what the
connection saw: the complete messages (fragments joined), the bytes to
write back (a pong per ping, the answer to the peer's close frame, a close
frame of this side's when the peer broke the protocol), the number of pongs
received, and, once known, how the connection closed (`Closed`). It
enforces the two limits trio-websocket enforced: a message longer than
*max_message_size* (characters of text, bytes of binary, fragments
counted together) closes with 1009, and invalid UTF-8 in a text message
(wsproto's finding, as are other protocol errors, 1002) with 1007.
Messages that arrive after a close frame either side sent are dropped
without being returned.

`Transport` is the I/O: one object per connection, with no task of its own.
The socket's reader calls `Transport.receive`, which does *one*
``receive_some`` (at most `RECEIVE_BYTES`), feeds it to the core and
returns every message completed by that read, possibly none: a burst of
small events costs one schedule point, not one per message. Writers
(`Transport.send`, `Transport.ping`, the close handshake, and the reader's
own pongs and close replies) share one `trio.StrictFIFOLock`; a Trio
stream raises `trio.BusyResourceError` on a second concurrent
``send_all``. The reader never waits behind a writer: when the lock is
held, its replies are queued in the core, and the holder writes them
before it lets go (every write drains the queue). The queue is bounded:
past `MAX_QUEUED_REPLIES` bytes (a peer that floods pings and reads
nothing) the reader does wait for the lock, so it reads no further until
its replies are written, and the peer's flood waits on the peer. Bytes leave in the order
wsproto made them, which the protocol needs (a close frame is the last).

When the connection ends, `Transport.receive` first returns the messages
that came before the end, then raises `TransportClosed` (the peer's close
frame is answered before that, at once). `Transport.closed` says how it
ended as soon as it is known, whichever task noticed (`Closed` has the
table).

`handshake` runs the opening handshake in the caller's task, so the end of
the stream while it waits for the answer (end of file, a reset, a TLS
error) is seen where it happens and raised as `HandshakeFailed`, as are a
rejection (its status, headers and the start of its body; at most
`MAX_REJECTION` bytes of the answer are read) and an answer that is not a
valid upgrade, in `open_connection`'s terms (see `tenantry._connect`).

Nothing here sleeps or reads the clock: every wait is bounded by the
caller (``connect_timeout`` around `handshake`, the keepalive around the
wait for a pong); `Transport.aclose` takes its bound as an argument. A
cancelled ``receive`` loses nothing: messages already decoded stay for the
next call. A cancelled write leaves the stream unusable; the transport
counts it as lost (1006), and only closing it remains.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import NamedTuple, cast, final

import h11
import trio
import trio_websocket
import wsproto
import wsproto.events as ws_events
import wsproto.utilities
from wsproto.connection import Connection, ConnectionState

from ._reasons import DisconnectReason, ReasonCode
from ._validate import check_headers

__all__ = [
    "MAX_QUEUED_REPLIES",
    "MAX_REJECTION",
    "MAX_REJECTION_BODY",
    "RECEIVE_BYTES",
    "Closed",
    "HandshakeFailed",
    "Headers",
    "Link",
    "Transport",
    "TransportClosed",
    "WebSocketAdapter",
    "as_link",
    "describe_transport_error",
    "encode_headers",
    "handshake",
    "invalid_response_reason",
    "rejection_of",
]

MAX_REJECTION_BODY = 4096
"""Bytes of a rejected handshake's body that are kept; the rest is dropped."""

MAX_REJECTION = 65536
"""Bytes of a rejected handshake's answer (head and body) read before giving up on the rest."""

Headers = tuple[tuple[str, str], ...]
"""A response's headers: (name in lower case, value decoded as Latin-1) pairs, in order."""


class HandshakeFailed(trio_websocket.HandshakeError):
    """The opening handshake failed; ``reason`` (a `tenantry.DisconnectReason`) says why.

    `tenantry.UrlConnector.open` and `tenantry.testing.MemoryConnector.open`
    raise it for every way a handshake fails: a rejection, an answer that is
    not a valid upgrade, the end of the connection or a TLS error before the
    answer. `tenantry.open_socket` turns it into a `tenantry.ConnectFailed`
    that keeps the same reason and answer. When the server answered with an
    HTTP error, the answer is kept for the caller to read, never logged nor
    shown by ``str()`` (a ``Set-Cookie`` or an echoed token may be in it):

    ============  =================================================================
    ``status``    the HTTP status (int), or None if there was no HTTP answer
    ``headers``   the response's headers: (name in lower case, value) pairs
    ``body``      the start of the response's body, at most 4 KiB (bytes), however
                  it ended (complete, cut short by the close, or too long to read)
    ============  =================================================================

    It is a ``trio_websocket.HandshakeError``, so code written for the
    trio-websocket connections these connectors yielded before still
    catches it.
    """

    def __init__(
        self,
        reason: DisconnectReason,
        *,
        status: int | None = None,
        headers: Headers = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.status = status
        self.headers = headers
        self.body = body


RECEIVE_BYTES = 65536
"""Bytes asked of the stream per read: about 250 small events, or 4 TLS records."""

MAX_QUEUED_REPLIES = 65536
"""Bytes of pongs and close replies left to a blocked writer before the reader waits for it."""

_ABNORMAL = 1006
"""The close code of a connection that ended without a close frame (never sent)."""

_OPEN = ConnectionState.OPEN
_TEXT = ws_events.TextMessage
_BYTES = ws_events.BytesMessage
_STREAM_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError)

Message = str | bytes


class Closed(NamedTuple):
    """How a `Transport` closed: the close code, its reason, and whether the peer closed it.

    The first end known is the connection's, whichever task noticed it:

    ===========================================  ==========================================
    what happened                                ``(code, reason, remote)``
    ===========================================  ==========================================
    the peer's close frame                       its code and reason; remote
    the stream's end (no close frame), a reset   1006, what ended it (or ""); remote
    a TLS error while reading or writing         1006, the TLS error; remote
    a message longer than *max_message_size*     1009, sent to the peer; local
    invalid UTF-8 / another protocol error       1007 / 1002, sent to the peer; local
    `Transport.aclose`                           its code and reason; local
    `Transport.abort`, a cancelled write         1006, why; local
    ===========================================  ==========================================

    For a trio-websocket connection a connector yielded, ``remote`` is a
    guess: 1007 and 1009 are taken as trio-websocket's own refusals (local),
    any other close as the peer's.
    """

    code: int
    """The close code (1006 when no close frame ended it)."""
    reason: str
    """The close frame's reason, or what ended the connection; may be empty."""
    remote: bool
    """True if the peer ended the connection, False if this side did."""


class TransportClosed(Exception):
    """The connection is closed; ``closed`` (a `Closed`) says how.

    `Transport.receive` raises it only once every message that came
    before the close has been returned; `Transport.send` and
    `Transport.ping` raise it at once.
    """

    def __init__(self, closed: Closed) -> None:
        super().__init__(f"connection closed: {closed.code} {closed.reason}".rstrip())
        self.closed = closed

    @property
    def code(self) -> int:
        """The close code, as ``closed.code``."""
        return self.closed.code

    @property
    def reason(self) -> str:
        """The close reason, as ``closed.reason``."""
        return self.closed.reason


@final
class _Core:
    """The protocol: bytes in, messages, replies and the close out. No I/O, no clock.

    *ws* is wsproto's connection of the frames, without the handshake's
    (HTTP) state: an idle connection keeps only what reading frames needs.
    """

    __slots__ = ("_parts", "_size", "closed", "done", "max_message_size", "outgoing", "pongs", "ws")

    def __init__(self, ws: Connection, *, max_message_size: int) -> None:
        self.ws = ws
        self.max_message_size = max_message_size
        self.outgoing = bytearray()  # made by wsproto, not yet written: written in this order
        self.pongs = 0
        self.closed: Closed | None = None
        self.done = False  # nothing more will be read: the peer's close (or EOF) is in
        self._parts: list[Message] = []  # the fragments of a message so far
        self._size = 0  # their length

    def feed(self, data: bytes | None) -> list[Message]:
        """The messages that *data* (None: end of stream) completes; replies go to `outgoing`."""
        if self.done:
            return []
        self.ws.receive_data(data)
        return self.drain()

    def drain(self) -> list[Message]:
        """The messages of what wsproto has parsed so far (bytes after the handshake's answer)."""
        messages: list[Message] = []
        for event in self.ws.events():
            kind = event.__class__  # exact classes: cheaper than isinstance, per message
            if kind is _TEXT or kind is _BYTES:
                if self.closed is None:
                    self._message(event, messages)  # type: ignore[arg-type]
            elif kind is ws_events.Ping:
                if self.ws.state is _OPEN:
                    self.outgoing += self.ws.send(event.response())  # type: ignore[attr-defined]
            elif kind is ws_events.Pong:
                self.pongs += 1
            elif kind is ws_events.CloseConnection:
                self._close_event(event)  # type: ignore[arg-type]
        return messages

    def _message(
        self, event: ws_events.TextMessage | ws_events.BytesMessage, into: list[Message]
    ) -> None:
        data = event.data
        if not isinstance(data, str):
            data = bytes(data)  # wsproto may give a bytearray
        if event.message_finished and not self._parts:
            if len(data) > self.max_message_size:
                self._too_big()
            else:
                into.append(data)
            return
        if not data and not event.message_finished:
            return  # an empty fragment adds nothing; kept, a flood of them would grow unbounded
        self._parts.append(data)
        self._size += len(data)
        if self._size > self.max_message_size:
            self._too_big()
        elif event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            into.append(_join(parts))

    def _too_big(self) -> None:
        self._parts, self._size = [], 0
        self.close_locally(1009, f"Exceeded maximum message size: {self.max_message_size} bytes")

    def _close_event(self, event: ws_events.CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer's close frame: answered now
            self.outgoing += self.ws.send(event.response())
            self._closed(Closed(event.code, event.reason or "", remote=True))
            self.done = True
        elif state is _OPEN:  # wsproto found the peer's frames invalid (1002, 1007)
            self.close_locally(event.code, event.reason or "")
        else:  # CLOSED: the answer to ours, or the end of the stream (1006); or a protocol
            # error after this side's close frame, when nothing more is worth reading
            self._closed(Closed(event.code, event.reason or "", remote=True))
            self.done = True

    def close_locally(self, code: int, reason: str) -> None:
        """Send this side's close frame (if the connection is open): the peer's answer ends it."""
        if self.ws.state is _OPEN:
            self.outgoing += self.ws.send(ws_events.CloseConnection(code=code, reason=reason))
        self._closed(Closed(code, reason, remote=False))

    def lose(self, reason: str, *, remote: bool = True) -> None:
        """The stream ended or broke: nothing more is read or written."""
        self._closed(Closed(_ABNORMAL, reason, remote=remote))
        self.done = True
        self.outgoing.clear()

    def ended(self) -> Closed:
        """How the connection closed (a drop, if nothing closed it yet)."""
        return self.closed or Closed(_ABNORMAL, "", remote=True)

    def _closed(self, closed: Closed) -> None:
        if self.closed is None:  # the first end known is the connection's
            self.closed = closed
        self._parts, self._size = [], 0


@final
class Transport:
    """One WebSocket client connection, driven by the task that reads it: no task of its own.

    `tenantry.UrlConnector.open` and `tenantry.testing.MemoryConnector.open`
    yield one once the opening handshake is done (wsproto over a Trio
    stream: TCP, TLS or in memory). A socket's reader calls `receive` in a
    loop; any task may `send` and `ping`; `aclose` or `abort` ends it.
    Its shape is what makes it cheap and safe to share:

    * **One read, every message.** `receive` does one network read and
      returns every message that read completes, so a burst of small
      events costs one schedule point, not one per message, and no task
      hand-off: the caller's task does the reading.
    * **One send lock; the reader never waits behind a writer.** A Trio
      stream refuses two concurrent writes, so every writer (`send`,
      `ping`, the close handshake) takes one FIFO lock. The reader's own
      writes -- the pong a ping needs, the answer to the peer's close --
      never wait for it: when a writer holds the lock, they are queued
      and that writer writes them before it lets go. Bytes leave in the
      order they were made, as the protocol needs.
    * **Limits, as trio-websocket's.** A message longer than
      *max_message_size* (characters of text, bytes of binary, fragments
      counted together) closes with 1009, invalid UTF-8 with 1007, any
      other protocol error with 1002. Messages after a close frame are
      dropped.
    * **Every wait has the caller's bound.** Nothing here sleeps or reads
      the clock: the caller bounds `receive` and `wait_pong`, and `aclose`
      takes its bound as an argument. A cancelled `receive` loses nothing
      (what it decoded is returned by the next call); a cancelled write
      leaves the stream unusable, and the connection counts as lost
      (1006, local).
    * **How it ended is known, not guessed.** `closed` is a `Closed` once
      the end is known, with ``remote`` saying which side ended it.

    Not constructed directly: *ws* is a wsproto client connection whose
    opening handshake is done over *stream*.
    """

    __slots__ = (
        "_core",
        "_pong",
        "_pongs_seen",
        "_ready",
        "_receiving",
        "_sending",
        "_stream",
        "_subprotocol",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: wsproto.WSConnection,
        *,
        max_message_size: int,
        subprotocol: str | None = None,
    ) -> None:
        self._stream = stream
        # The frames' connection only: the handshake's HTTP state (h11) is not kept.
        frames = cast("Connection", ws.connection)
        self._core = core = _Core(frames, max_message_size=max_message_size)
        self._subprotocol = subprotocol
        self._sending = trio.StrictFIFOLock()  # every writer, the reader's replies included
        self._receiving = trio.Lock()  # the reader, or the close handshake's reads
        self._ready: list[Message] = core.drain()  # frames that came with the handshake's answer
        self._pongs_seen = 0
        self._pong: trio.Event | None = None  # while `wait_pong` waits: set when a pong arrives

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose, if any."""
        return self._subprotocol

    @property
    def closed(self) -> Closed | None:
        """How the connection closed, once known (whichever task noticed); None while open."""
        return self._core.closed

    @property
    def pongs(self) -> int:
        """Pongs received so far, any payload: counted by `receive`, as it reads them."""
        return self._core.pongs

    async def wait_pong(self, seen: int) -> None:
        """Return once more than *seen* pongs (a `pongs` read before the ping) have arrived.

        A keepalive reads `pongs`, sends a `ping`, and waits here within its
        own bound. The pong is read by whichever task calls `receive`: this
        does no reading, so a reader that stopped reading sees no pong.
        """
        while self._core.pongs <= seen:
            if self._pong is None:
                self._pong = trio.Event()
            await self._pong.wait()

    async def receive(self) -> list[Message]:
        """Every message one network read completes (possibly none), in order.

        One read of at most 64 KiB, however many messages it holds: a
        caller that handles a list per call pays for the schedule point
        once per read, not per message. Text arrives as `str`, binary as
        `bytes`, fragments joined. Pings are answered and the peer's close
        frame is answered on the way. Raises `TransportClosed` once the
        connection is closed and every message before the close has been
        returned. Cancelled, it loses nothing: what it decoded is returned
        by the next call. One reader at a time.
        """
        core = self._core
        if self._ready or self._must_write():
            return await self._deliver([])  # left by the handshake, or by a cancelled call
        if core.closed is not None:
            await trio.sleep(0)  # noqa: ASYNC115 - a checkpoint, as every call makes: the tasks
            # woken by the messages before the close run before the close is raised
            raise TransportClosed(core.closed)
        async with self._receiving:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _STREAM_ENDED as error:
                core.lose(describe_transport_error(error, during="reading"))
                raise TransportClosed(core.ended()) from None
            messages = core.feed(bytes(data) if data else None)
        if core.pongs != self._pongs_seen:
            self._pongs_seen = core.pongs
            if self._pong is not None:
                self._pong.set()
                self._pong = None
        if core.outgoing or not messages:
            return await self._deliver(messages)
        return messages

    def _must_write(self) -> bool:
        """Whether the reader writes its replies: no writer holds the lock, or too many wait."""
        queued = len(self._core.outgoing)
        return queued > 0 and (not self._sending.locked() or queued > MAX_QUEUED_REPLIES)

    async def _deliver(self, messages: list[Message]) -> list[Message]:
        """Write the replies (unless a writer holds the lock: it writes them), then *messages*."""
        self._ready += messages  # kept for the next call if the write is cancelled
        if self._must_write():
            async with self._sending:  # past the bound, behind the writer: the peer waits too
                with contextlib.suppress(TransportClosed):  # raised after the messages
                    await self._flush()
        messages, self._ready = self._ready, []
        if not messages and self._core.closed is not None:
            raise TransportClosed(self._core.closed)
        return messages

    async def send(self, message: Message) -> None:
        """Send one message: text for a `str`, binary for `bytes`.

        Waits for the send lock (FIFO), so concurrent senders are written in
        turn, whole. Raises `TransportClosed` if the connection is closed or
        closing. Cancelled during the write, the stream is in an unknown
        state: the connection counts as lost (1006, local).
        """
        if isinstance(message, str):
            await self._send_event(ws_events.TextMessage(data=message))
        else:
            await self._send_event(ws_events.BytesMessage(data=message))

    async def ping(self, payload: bytes = b"") -> None:
        """Send a ping and return once it is written: its pong counts in `pongs` when read.

        It does not wait for the pong (the reader reads it); see `wait_pong`.
        """
        await self._send_event(ws_events.Ping(payload=payload))

    async def _send_event(self, event: ws_events.Event) -> None:
        async with self._sending:
            if self._core.ws.state is not _OPEN:
                raise TransportClosed(self._core.ended())
            self._core.outgoing += self._core.ws.send(event)
            await self._flush()

    async def _flush(self) -> None:
        """Write everything made so far, and what is made meanwhile; the send lock is held."""
        core = self._core
        while core.outgoing:
            chunk = bytes(core.outgoing)
            core.outgoing.clear()
            written = False
            try:
                await self._stream.send_all(chunk)
                written = True
            except _STREAM_ENDED as error:
                core.lose(describe_transport_error(error, during="sending"))
                raise TransportClosed(core.ended()) from None
            finally:
                if not written and not core.done:  # cancelled: the stream's state is unknown
                    core.lose("a write was cancelled", remote=False)

    async def aclose(
        self,
        code: int = 1000,
        reason: str = "",
        *,
        timeout: float,  # noqa: ASYNC109 - a close handshake always has a bound: the caller's
    ) -> None:
        """The close handshake, bounded: send a close frame, await the peer's, close the stream.

        It reads on until the peer's close frame or the end of the stream,
        dropping messages, after a `receive` already under way. No frame is
        sent if the connection is already closing or closed. It takes at
        most *timeout* seconds, because a peer that never answers must not
        hold a closing socket; the stream is closed whatever happens,
        cancellation included.
        """
        core = self._core
        try:
            with trio.move_on_after(timeout):
                async with self._sending:
                    if core.ws.state is _OPEN:
                        core.close_locally(code, reason)
                        try:
                            await self._flush()
                        except TransportClosed:
                            return
                async with self._receiving:  # after the reader's read, if one is under way
                    while not core.done:
                        try:
                            data = await self._stream.receive_some(RECEIVE_BYTES)
                        except _STREAM_ENDED as error:
                            core.lose(describe_transport_error(error, during="closing"))
                            return
                        core.feed(bytes(data) if data else None)
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Close the stream at once, without a close frame: nothing is sent, nothing waited for.

        For a connection that must end now (cancelled from outside, a lease
        lost); `closed` becomes 1006, local, unless it was already known.
        """
        self._core.lose("aborted locally", remote=False)
        await trio.aclose_forcefully(self._stream)


@final
class WebSocketAdapter:
    """A trio-websocket connection (a user's own connector's) with `Transport`'s surface.

    It reads one message per `receive`, at trio-websocket's speed.
    trio-websocket waits for a ping's pong inside ``ping``, so `pongs` counts
    it as soon as `ping` returns. Whether a close was the peer's is a guess
    here: a 1007 or 1009 is taken as trio-websocket's own refusal of a bad
    message (local), any other close as the peer's. The connector that made
    the connection closes it when its block ends; `aclose` only sends the
    close frame and waits (bounded) for the answer.
    """

    _REFUSALS = (1007, 1009)

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self.pongs = 0
        self._pong = trio.Event()

    @property
    def closed(self) -> Closed | None:
        """How the connection closed, once known; None while it is open."""
        ended = self._ws.closed
        if ended is None:
            return None
        return Closed(ended.code, ended.reason or "", remote=ended.code not in self._REFUSALS)

    def _ended(self) -> TransportClosed:
        return TransportClosed(self.closed or Closed(_ABNORMAL, "", remote=True))

    async def receive(self) -> list[Message]:
        """One message, as a list; `TransportClosed` once the connection is closed."""
        try:
            return [await self._ws.get_message()]
        except trio_websocket.ConnectionClosed:
            raise self._ended() from None

    async def send(self, message: Message) -> None:
        """Send one message; `TransportClosed` if the connection is closed."""
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            raise self._ended() from None

    async def ping(self, payload: bytes = b"") -> None:
        """Ping, and wait for its pong (trio-websocket's way); then it counts in `pongs`."""
        try:
            await self._ws.ping(payload or None)
        except trio_websocket.ConnectionClosed:
            raise self._ended() from None
        self.pongs += 1
        self._pong.set()
        self._pong = trio.Event()

    async def wait_pong(self, seen: int) -> None:
        """Return once more than *seen* pongs have been received."""
        while self.pongs <= seen:
            await self._pong.wait()

    async def aclose(
        self,
        code: int = 1000,
        reason: str = "",
        *,
        timeout: float,  # noqa: ASYNC109 - a close handshake always has a bound: the caller's
    ) -> None:
        """Send a close frame and wait for the answer, at most *timeout* seconds."""
        with trio.move_on_after(timeout):
            await self._ws.aclose(code, reason or None)

    async def abort(self) -> None:
        """Close the connection at once, without a close handshake."""
        await trio.aclose_forcefully(self._ws)


Link = Transport | WebSocketAdapter
"""A socket's connection: tenantry's own, or a user connector's trio-websocket one, adapted."""


def as_link(connection: Transport | trio_websocket.WebSocketConnection) -> Link:
    """*connection* as a `Link`: a trio-websocket connection is adapted."""
    if isinstance(connection, trio_websocket.WebSocketConnection):
        return WebSocketAdapter(connection)
    return connection


def _join(parts: list[Message]) -> Message:
    if isinstance(parts[0], str):
        return "".join(parts)  # type: ignore[arg-type]  # a message's parts are of one kind
    return b"".join(parts)  # type: ignore[arg-type]


async def handshake(
    stream: trio.abc.Stream,
    *,
    host: str,
    resource: str,
    headers: Mapping[str, str],
    subprotocols: Iterable[str] = (),
    max_message_size: int,
) -> Transport:
    """The opening handshake over *stream*, in the caller's task: a `Transport`, or raises.

    Raises `HandshakeFailed` for a rejection (its ``status``, ``headers``
    and the start of its ``body``), for an answer that is not a valid
    upgrade, and for the end of the stream before the answer; `ValueError`
    for a header that cannot be sent (before any I/O). Interim (1xx)
    responses before the answer are skipped. The caller bounds the wait
    and owns *stream* (it is not closed here).
    """
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws_events.Request(
        host=host,
        target=resource,
        extra_headers=encode_headers(headers),
        subprotocols=list(subprotocols),
    )
    interim: bytearray | None = bytearray()  # the answer, while it may begin with a 1xx
    answer = bytearray()  # the start of the answer: a rejection's status, headers and body
    status: int | None = None  # a rejection's, once its head is in
    try:
        await stream.send_all(ws.send(request))
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:  # the end, before the answer did (or during a rejection's body)
                raise trio.BrokenResourceError("end of file")
            if interim is not None:
                interim += data
                if _skip_interim(interim):
                    continue  # what came may still be the start of an interim response
                data, interim = bytes(interim), None
            answer += data[: MAX_REJECTION - len(answer)]
            try:
                ws.receive_data(bytes(data))
                for event in ws.events():
                    if isinstance(event, ws_events.AcceptConnection):
                        return Transport(
                            stream,
                            ws,
                            max_message_size=max_message_size,
                            subprotocol=event.subprotocol,
                        )
                    if isinstance(event, ws_events.RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise _rejected(status, answer)
                    elif isinstance(event, ws_events.RejectData) and event.body_finished:
                        raise _rejected(status or 0, answer)
            except (wsproto.utilities.RemoteProtocolError, UnicodeDecodeError) as error:
                raise HandshakeFailed(invalid_response_reason(error)) from None
            if status is not None and len(answer) >= MAX_REJECTION:
                raise _rejected(status, answer)  # longer than is read
    except _STREAM_ENDED as error:
        if status is not None:
            raise _rejected(status, answer) from None
        message = describe_transport_error(error, during="handshake")
        raise HandshakeFailed(DisconnectReason(ReasonCode.CONNECTION_LOST, message)) from None


_INTERIM = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9][0-9][ \r]")
"""The start of an interim response: a 1xx status other than 101."""
_STATUS_START = len(b"HTTP/1.1 100 ")
"""Bytes of an answer that tell whether it is an interim response."""


def _skip_interim(answer: bytearray) -> bool:
    """Drop the interim responses *answer* begins with; True while it may begin with one.

    A client must accept 1xx responses before the final one (RFC 9110,
    section 15.2), and wsproto takes any but 101 for a rejection: a 100
    Continue or a 103 Early Hints before the 101 is skipped here. One
    longer than `MAX_REJECTION` bytes is left to wsproto, which refuses it.
    """
    while len(answer) >= _STATUS_START and _INTERIM.match(answer):
        end = answer.find(b"\r\n\r\n")
        if end < 0:  # its end is still to come, unless it is too long to be read
            return len(answer) < MAX_REJECTION
        del answer[: end + 4]
    return len(answer) < _STATUS_START and answer[:7] == b"HTTP/1."[: len(answer)]


def _rejected(status: int, answer: bytearray) -> HandshakeFailed:
    headers, body = rejection_of(bytes(answer))
    reason = DisconnectReason.from_handshake_status(status)
    return HandshakeFailed(reason, status=status, headers=headers, body=body)


def invalid_response_reason(error: BaseException) -> DisconnectReason:
    """The reason for wsproto's `RemoteProtocolError` *error* about the handshake's answer.

    It says what was wrong (with h11's reason for a "Bad HTTP message"),
    never a byte of the answer. A `UnicodeDecodeError` is wsproto's too: it
    reads the Connection, Sec-WebSocket-Protocol and Sec-WebSocket-Extensions
    headers of an upgrade as ASCII.
    """
    if isinstance(error, UnicodeDecodeError):
        detail = "a header that is not ASCII"
    else:
        detail = str(error)
        if error.__context__ is not None:  # h11's reason for wsproto's "Bad HTTP message"
            detail += f" ({str(error.__context__).partition(':')[0]})"
    return DisconnectReason(ReasonCode.PROTOCOL_ERROR, f"invalid handshake response: {detail}")


def describe_transport_error(error: Exception, *, during: str) -> str:
    """What ended a transport *during* a step, for a reason (a TLS error by its cause)."""
    cause = error.__cause__ if isinstance(error, trio.BrokenResourceError) else error
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.strerror or cause}"
    if isinstance(cause, OSError):  # a reset, say
        return f"connection lost during {during}: {cause}"
    return f"connection closed during {during}"


def rejection_of(answer: bytes) -> tuple[Headers, bytes]:
    """The headers and the start of the body of the HTTP response that *answer* begins.

    As far as *answer* goes: a head cut short gives no headers, a body cut
    short what there is of it (dechunked), at most `MAX_REJECTION_BODY` bytes.
    """
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(answer)
    body = bytearray()
    headers: Headers = ()
    try:
        event = parser.next_event()
        if not isinstance(event, h11.Response):
            return (), b""
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        while len(body) < MAX_REJECTION_BODY:
            event = parser.next_event()
            if not isinstance(event, h11.Data):
                break
            body += event.data
    except h11.RemoteProtocolError:
        pass  # what was read so far stands
    return headers, bytes(body[:MAX_REJECTION_BODY])


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as trio-websocket wants them; a header that cannot be sent raises `ValueError`."""
    check_headers(headers, "headers")
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
