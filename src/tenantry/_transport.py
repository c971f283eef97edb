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
before it lets go (every write drains the queue). Bytes leave in the order
wsproto made them, which the protocol needs (a close frame is the last).

When the connection ends, `Transport.receive` first returns the messages
that came before the end, then raises `TransportClosed` (the peer's close
frame is answered before that, at once). `Transport.closed` says how it
ended as soon as it is known, whichever task noticed:

==============================================  =======================================
what happened                                   `Closed` (code, reason, remote)
==============================================  =======================================
the peer's close frame                          its code and reason; remote
the end of the stream without a close frame,    1006, "" or what ended it (a reset, a
a reset, a TLS error                            TLS error); remote
a message too long                              1009, sent to the peer; local
invalid UTF-8, another protocol error           1007 / 1002, sent to the peer; local
`Transport.aclose`                              its code and reason; local
`Transport.abort`, a cancelled write            1006, why; local
==============================================  =======================================

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
from collections.abc import Iterable, Mapping
from typing import NamedTuple, final

import trio
import wsproto
import wsproto.events as ws_events
import wsproto.utilities
from wsproto.connection import ConnectionState

from ._connect import (
    MAX_REJECTION,
    HandshakeFailed,
    describe_transport_error,
    encode_headers,
    invalid_response_reason,
    rejection_of,
)
from ._reasons import DisconnectReason, ReasonCode

__all__ = ["RECEIVE_BYTES", "Closed", "Transport", "TransportClosed", "handshake"]

RECEIVE_BYTES = 65536
"""Bytes asked of the stream per read: about 250 small events, or 4 TLS records."""

_ABNORMAL = 1006
"""The close code of a connection that ended without a close frame (never sent)."""

_OPEN = ConnectionState.OPEN
_TEXT = ws_events.TextMessage
_BYTES = ws_events.BytesMessage
_STREAM_ENDED = (trio.BrokenResourceError, trio.ClosedResourceError)

Message = str | bytes


class Closed(NamedTuple):
    """How a connection closed: the close code, its reason, and whether the peer closed it."""

    code: int
    reason: str
    remote: bool


class TransportClosed(Exception):
    """The connection is closed (`closed` says how); raised once its messages are all read."""

    def __init__(self, closed: Closed) -> None:
        super().__init__(f"connection closed: {closed.code} {closed.reason}".rstrip())
        self.closed = closed

    @property
    def code(self) -> int:
        return self.closed.code

    @property
    def reason(self) -> str:
        return self.closed.reason


@final
class _Core:
    """The protocol: bytes in, messages, replies and the close out. No I/O, no clock."""

    def __init__(self, ws: wsproto.WSConnection, *, max_message_size: int) -> None:
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
    """One WebSocket client connection; see the module docstring. Made by `handshake`."""

    def __init__(self, stream: trio.abc.Stream, core: _Core, subprotocol: str | None) -> None:
        self._stream = stream
        self._core = core
        self.subprotocol = subprotocol
        self._sending = trio.StrictFIFOLock()  # every writer, the reader's replies included
        self._receiving = trio.Lock()  # the reader, or the close handshake's reads
        self._ready: list[Message] = core.drain()  # frames that came with the handshake's answer
        self._pongs_seen = 0
        self._pong = trio.Event()  # set (and replaced) when a pong arrives

    @property
    def closed(self) -> Closed | None:
        """How the connection closed, once known; None while it is open."""
        return self._core.closed

    @property
    def pongs(self) -> int:
        """Pongs received so far (any payload)."""
        return self._core.pongs

    async def wait_pong(self, seen: int) -> None:
        """Return once more than *seen* pongs have been received (a reader must be reading)."""
        while self._core.pongs <= seen:
            await self._pong.wait()

    async def receive(self) -> list[Message]:
        """The messages one network read completes (possibly none), in order.

        Answers pings and the peer's close frame on the way. Raises
        `TransportClosed` once the connection is closed and every message
        before the close has been returned.
        """
        core = self._core
        if self._ready or (core.outgoing and not self._sending.locked()):
            return await self._deliver([])  # left by the handshake, or by a cancelled call
        if core.closed is not None:
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
            self._pong.set()
            self._pong = trio.Event()
        if core.outgoing or not messages:
            return await self._deliver(messages)
        return messages

    async def _deliver(self, messages: list[Message]) -> list[Message]:
        """Write the replies (unless a writer holds the lock: it writes them), then *messages*."""
        self._ready += messages  # kept for the next call if the write is cancelled
        if self._core.outgoing and not self._sending.locked():
            async with self._sending:
                with contextlib.suppress(TransportClosed):  # raised after the messages
                    await self._flush()
        messages, self._ready = self._ready, []
        if not messages and self._core.closed is not None:
            raise TransportClosed(self._core.closed)
        return messages

    async def send(self, message: Message) -> None:
        """Send one message (text for `str`); `TransportClosed` if the connection is closed."""
        if isinstance(message, str):
            await self._send_event(ws_events.TextMessage(data=message))
        else:
            await self._send_event(ws_events.BytesMessage(data=message))

    async def ping(self, payload: bytes = b"") -> None:
        """Send a ping; its pong counts in `pongs` when a reader reads it."""
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
        """Close: send a close frame, read until the peer's (dropping messages), close the stream.

        A no-op for the frame if the connection is already closing or
        closed. At most *timeout* seconds; the stream is closed whatever
        happens, cancellation included.
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
        """Close the stream at once, without a close handshake."""
        self._core.lose("aborted locally", remote=False)
        await trio.aclose_forcefully(self._stream)


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
    for a header that cannot be sent (before any I/O). The caller bounds
    the wait and owns *stream* (it is not closed here).
    """
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws_events.Request(
        host=host,
        target=resource,
        extra_headers=encode_headers(headers),
        subprotocols=list(subprotocols),
    )
    answer = bytearray()  # the start of the answer: a rejection's status, headers and body
    status: int | None = None  # a rejection's, once its head is in
    try:
        await stream.send_all(ws.send(request))
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:  # the end, before the answer did (or during a rejection's body)
                raise trio.BrokenResourceError("end of file")
            answer += data[: MAX_REJECTION - len(answer)]
            try:
                ws.receive_data(bytes(data))
                for event in ws.events():
                    if isinstance(event, ws_events.AcceptConnection):
                        core = _Core(ws, max_message_size=max_message_size)
                        return Transport(stream, core, event.subprotocol)
                    if isinstance(event, ws_events.RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise _rejected(status, answer)
                    elif isinstance(event, ws_events.RejectData) and event.body_finished:
                        raise _rejected(status or 0, answer)
            except wsproto.utilities.RemoteProtocolError as error:
                raise HandshakeFailed(invalid_response_reason(error)) from None
            if status is not None and len(answer) >= MAX_REJECTION:
                raise _rejected(status, answer)  # longer than is read
    except _STREAM_ENDED as error:
        if status is not None:
            raise _rejected(status, answer) from None
        message = describe_transport_error(error, during="handshake")
        raise HandshakeFailed(DisconnectReason(ReasonCode.CONNECTION_LOST, message)) from None


def _rejected(status: int, answer: bytearray) -> HandshakeFailed:
    headers, body = rejection_of(bytes(answer))
    reason = DisconnectReason.from_handshake_status(status)
    return HandshakeFailed(reason, status=status, headers=headers, body=body)
