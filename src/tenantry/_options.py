"""One connection's options: the one place a per-connection setting is declared.

`open_socket` takes a `SocketOptions` for one connection; `TenantSpec`
holds one and passes it to `open_socket` for each of the tenant's
connections. A setting added here reaches both, checked once, at
construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import attrs

from ._buffer import BufferConfig
from ._connect import HeadersFactory
from ._protocol import DEFAULT_MAX_MESSAGE_SIZE, Session
from ._reasons import BAILEYS_CLOSE_CODES, CloseCodes
from ._rules import DEFAULT_EVENT_RULES, EventRules
from ._validate import (
    instance_of,
    nonnegative_count,
    optional_headers,
    optional_protocol,
    positive_count,
    seconds,
)

__all__ = ["SocketOptions"]


def _redacted_headers(headers: Mapping[str, str] | HeadersFactory | None) -> str:
    """The headers' names, never their values (often a token); a callable by its name only."""
    if headers is None:
        return "None"
    if not isinstance(headers, Mapping):  # a partial's repr would show its arguments
        return f"<{getattr(headers, '__qualname__', type(headers).__name__)}>"
    return "{" + ", ".join(f"{k!r}: '***'" for k in headers) + "}"


@final
@attrs.frozen(kw_only=True)
class SocketOptions:
    """How one connection runs: its protocol, buffer, limits and timeouts.

    Every field is checked here, so a setting that could never work raises
    `TypeError` or `ValueError` naming the field before anything connects.
    The repr shows header names but never their values.

    Raises:
        TypeError, ValueError: a field that could never work (a protocol
            that is not a session factory, rules that are not `EventRules`, a
            header that cannot be sent, a time that is not > 0, ...),
            naming the field.
    """

    # Called with the `Socket`; typed Any because the socket module imports this one.
    protocol: Callable[[Any], Session] | None = attrs.field(
        default=None, validator=optional_protocol, repr=False
    )
    """Frames to events and events to frames: a session factory, called with
    the `Socket` once per connection, after the handshake and before the
    first frame is read, to make that connection's `Session` (a function, a
    class taking the socket, or a `JsonProtocol`, its own session). None is
    a `JsonProtocol` that rejects frames over `max_message_size`. A factory
    that raises, or returns something without ``decode``/``encode``, is a
    bug in user code: `open_socket` raises it."""
    buffer: BufferConfig = attrs.field(factory=BufferConfig, validator=instance_of(BufferConfig))
    """How the socket's event buffer buffers and when it flushes."""
    rules: EventRules = attrs.field(
        default=DEFAULT_EVENT_RULES, validator=instance_of(EventRules), repr=False
    )
    """How buffered events merge, per event type."""
    keepalive: float = attrs.field(default=30.0, validator=seconds)
    """Ping interval in seconds. A ping goes out after an interval without any
    frame; no pong within 5 s closes the socket with reason 408. A silent peer
    is so detected after between ``keepalive + 5`` and ``2 * keepalive + 5``
    seconds of silence."""
    headers: Mapping[str, str] | HeadersFactory | None = attrs.field(
        default=None, validator=optional_headers, repr=_redacted_headers
    )
    """Sent with every handshake (e.g. an auth token): a mapping, or an async
    function of no arguments that returns one, awaited once per attempt
    within `connect_timeout` (a token that expires is then fetched fresh for
    each attempt). Never logged, and redacted in the repr. A name or value
    that cannot be sent (a token read from a file with its newline, say)
    raises `ValueError` here, naming the header but never showing the value;
    a function that raises or returns such headers fails that attempt
    (`ConnectFailed`, reason 408), and the tenant retries as for any failure."""
    max_message_size: int = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=positive_count)
    """Larger frames are rejected (and counted); the transport itself refuses
    frames over four times this size."""
    grace: float = attrs.field(default=5.0, validator=seconds)
    """Bound, in seconds, on the final flush and drain at close."""
    max_bad_frames: int = attrs.field(default=20, validator=nonnegative_count)
    """More than this many rejected frames within `bad_frame_window` seconds
    close the socket (reason 400)."""
    bad_frame_window: float = attrs.field(default=60.0, validator=seconds)
    """The window, in seconds, over which `max_bad_frames` counts."""
    max_pending_sends: int = attrs.field(default=16, validator=positive_count)
    """Frames `Socket.send` may queue before it waits; also how many frames
    queued by `Socket.reply` may wait before the reader stops reading."""
    connect_timeout: float = attrs.field(default=10.0, validator=seconds)
    """Bound, in seconds, on each whole attempt to connect: TCP connect, TLS
    handshake and WebSocket upgrade. An attempt that takes longer fails like
    a refused one (`ConnectFailed`, reason 408)."""
    close_codes: CloseCodes = attrs.field(
        default=BAILEYS_CLOSE_CODES, validator=instance_of(CloseCodes)
    )
    """The protocol's close codes: how the peer's close codes become reason
    codes, and their names (metric labels). The default is WhatsApp Web's,
    where close 4000 + N means reason N."""
