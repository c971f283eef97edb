"""Wire protocols: frames to events and back, and what counts as a bad frame.

A protocol is a *session factory*: `SocketOptions.protocol` is called with
the `Socket` once per connection, after the handshake and before the first
frame is read, and returns that connection's `Session`. Whatever the
session holds (a decompressor, a sequence number, a heartbeat task started
with `Socket.start_soon`) lives and dies with that one connection, so a
reconnect always starts from a fresh state.

A session's `~Session.decode` turns one received WebSocket message into zero
or more *application* ``(type, data)`` events. A frame that carries none (a
hello, a heartbeat ack, a partial compressed chunk) is no bad frame: decode
handles it there and then -- replying with `Socket.send_frame`, declaring the
connection healthy with `Socket.mark_healthy` -- and returns nothing, so
control messages never wait in the event buffer. `~Session.decode` may also
say why a frame cannot be decoded (`FrameRejected`, which the socket counts,
logs and survives) or that the peer asked to close (`CloseRequested`).
`~Session.encode` does the reverse for a socket's ``send``.

`JsonProtocol`, the default, needs no state: it is its own session (calling
it returns itself), and nothing a peer sends can make its ``decode`` raise
anything else: that is what lets a hub promise that bad input never crashes
it. Any other exception from a session is a bug in user code: the socket
closes in order and `open_socket` re-raises it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any, Protocol, final

import attrs

from ._reasons import CloseOrigin, DisconnectReason
from ._validate import check_count, check_name, positive_count

__all__ = ["CloseRequested", "FrameRejected", "JsonProtocol", "RejectReason", "Session"]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class RejectReason(enum.Enum):
    """Why a frame was rejected (the ``reason`` label of the rejection counter)."""

    BINARY = "binary"
    """A binary message where the protocol expects text."""
    TOO_LARGE = "too_large"
    """Over the protocol's size limit. A frame so large that the transport
    refuses it (close code 1009) also ends the socket."""
    INVALID_UTF8 = "invalid_utf8"
    """A text message that is not UTF-8: the WebSocket layer fails the
    connection (close code 1007), so this rejection also ends the socket."""
    INVALID_JSON = "invalid_json"
    BAD_SHAPE = "bad_shape"
    """Valid JSON, but not ``{"type": <non-empty string>, "data": ...}``."""
    UNDECODABLE = "undecodable"
    """A frame the protocol could not decode (a broken compressed stream, an
    unknown binary layout, ...)."""
    INVALID_EVENT = "invalid_event"
    """A well-formed frame whose data does not fit its type's rule."""
    INVALID_FRAME = "invalid_frame"
    """A frame that breaks the WebSocket protocol (a masked or reserved
    frame, a control frame fragmented or too long, a close code that may not
    be sent): the WebSocket layer fails the connection (close code 1002), so
    this rejection also ends the socket."""


class FrameRejected(Exception):
    """A frame that cannot be decoded. The connection survives it.

    Attributes:
        reason: A `RejectReason`.
        preview: A short, truncated, escaped rendering of the frame, safe to log.
    """

    def __init__(self, reason: RejectReason, preview: str) -> None:
        super().__init__(f"{reason.value}: {preview}")
        self.reason = reason
        self.preview = preview

    @classmethod
    def of(cls, reason: RejectReason, frame: object, limit: int = 80) -> FrameRejected:
        """The rejection of *frame*, with a safe preview of it: at most *limit* characters."""
        return cls(reason, preview(frame, limit))


class CloseRequested(Exception):
    """The peer asked to end the connection, with a reason (e.g. ``stream:error``)."""

    def __init__(self, reason: DisconnectReason) -> None:
        super().__init__(str(reason))
        self.reason = reason


def preview(frame: object, limit: int = 80) -> str:
    """*frame* as a short escaped string: at most *limit* characters of it, then ``...``."""
    if isinstance(frame, (str, bytes, bytearray)):
        head = repr(frame[:limit])
        return head + "..." if len(frame) > limit else head
    return f"<{type(frame).__name__}>"


# One shared encoder: json.dumps with separators= builds a new encoder per call.
# It holds no state between calls.
_encode_compact = json.JSONEncoder(separators=(",", ":")).encode


class Session(Protocol):
    """One connection's protocol state: what a socket needs from a protocol.

    `SocketOptions.protocol` makes one per connection (``protocol(sock)``).
    """

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        """One message to zero or more application ``(type, data)`` events.

        Control messages are handled here as they arrive, and yield no
        event. Called by the socket's reader, one frame after another; the
        next frame is read once the events of this one are in the buffer.

        Each item is a tuple (or a list) of two. An event type that is not
        a non-empty string (the peer's value, often) is rejected and counted
        as `RejectReason.INVALID_EVENT`, as data that does not fit its rule
        is; any other item is a bug in the session (`TypeError`). Events
        yielded before an exception are kept: delivered once, like any other.

        Raises:
            FrameRejected: the frame is not a valid message of this protocol.
            CloseRequested: the message asks to end the connection.
        """
        ...

    def encode(self, event_type: str, data: Any) -> str | bytes:
        """One event to one message (for `Socket.send`)."""
        ...


@final
@attrs.frozen
class JsonProtocol:
    """Text frames ``{"type": str, "data": ...}``, one event each.

    It keeps no state between frames, so it is its own session: a
    `JsonProtocol` is given as `SocketOptions.protocol` as is, and every
    connection shares it.

    A frame ``{"type": "stream:error", "code": N}`` (optionally with a
    ``"text"``) asks to close with reason N, as WhatsApp Web reports
    restart-required (515) and service-unavailable (503).

    Args:
        max_message_size: Longer text frames (in characters) are rejected.
        preview_chars: How much of a rejected frame its preview shows.
    """

    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=positive_count)
    preview_chars: int = attrs.field(default=80, validator=positive_count)

    def __call__(self, sock: object) -> JsonProtocol:
        """The session for a connection: this protocol itself, which keeps no state."""
        return self

    def decode(self, frame: str | bytes) -> tuple[tuple[str, Any]]:
        """The frame's one event; see `Session.decode`."""
        if frame.__class__ is not str:
            raise FrameRejected(RejectReason.BINARY, preview(frame, self.preview_chars))
        if len(frame) > self.max_message_size:
            raise FrameRejected(RejectReason.TOO_LARGE, preview(frame, self.preview_chars))
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise FrameRejected(
                RejectReason.INVALID_JSON, preview(frame, self.preview_chars)
            ) from None
        if message.__class__ is dict:
            event_type = message.get("type")
            if event_type.__class__ is str and event_type:
                if event_type == "stream:error":
                    raise CloseRequested(self._stream_error(message, frame))
                if "data" in message:
                    return ((event_type, message["data"]),)
        raise FrameRejected(RejectReason.BAD_SHAPE, preview(frame, self.preview_chars))

    def encode(self, event_type: str, data: Any) -> str:
        """See `Session.encode`. Raises `TypeError` for data JSON cannot hold."""
        check_name(event_type, "event type")
        # ASCII escapes: every string is then sendable, even one with lone surrogates.
        return _encode_compact({"type": event_type, "data": data})

    def _stream_error(self, message: dict[str, Any], frame: str) -> DisconnectReason:
        try:
            code = check_count(message.get("code"), "code", minimum=0)
        except (TypeError, ValueError):
            raise FrameRejected(
                RejectReason.BAD_SHAPE, preview(frame, self.preview_chars)
            ) from None
        text = message.get("text")
        detail = text if isinstance(text, str) else "stream:error"
        return DisconnectReason(code, detail, origin=CloseOrigin.PROTOCOL, raw_code=code)
