"""How a socket reaches its upstream: a URL, or any connector object.

A *connector* opens one WebSocket connection as an async context manager:
the connection lives exactly as long as the ``async with`` block, which the
socket scope encloses. The connectors here yield tenantry's own connection
(`tenantry.lowlevel.Transport`: wsproto driven by the socket's reader,
without a task of its own); a user's connector may yield a
``trio_websocket.WebSocketConnection`` instead, which the socket adapts.
`open_socket` accepts a ``ws://``/``wss://`` URL, which becomes
a `UrlConnector`, or a connector such as `tenantry.testing.MemoryConnector`,
which runs the same protocol code over in-memory streams so
that whole reconnect scenarios run under `trio.testing.MockClock`.

Every way an opening handshake can fail ends as an exception that says why,
never as a wait without end: the handshake runs in the caller's task, so
the end of the transport while it waits for the answer is seen where it
happens. Failures, and what the connectors here raise
(`~tenantry.lowlevel.HandshakeFailed` keeps the reason and the rejection):

=============================================  ==========================================
what happened                                  raised (the reason's code and message)
=============================================  ==========================================
TCP connect failed, name not resolved          `OSError`, from Trio
a TLS error (unknown CA, expired, wrong name)  `HandshakeFailed` (408, "certificate verify
                                               failed: ..." or "TLS handshake failed: ...")
the transport ended before the answer          `HandshakeFailed` (408, "connection closed
                                               during handshake", or "connection lost
                                               during handshake: ..." for a reset)
an HTTP error (body complete, cut short by     `HandshakeFailed` (the HTTP status, with
the close, or longer than `MAX_REJECTION`      the response's status, headers and body)
bytes)
not HTTP, or not a valid upgrade (a header     `HandshakeFailed` (400, "invalid handshake
missing or not ASCII, an extension or a        response: ..." saying what was wrong)
subprotocol never offered, a wrong
Sec-WebSocket-Accept)
=============================================  ==========================================

A rejection keeps its status, its headers and at most `MAX_REJECTION_BODY`
bytes of its body, for the caller to read (a ``Retry-After``, an error
code), never to log: a ``Set-Cookie`` or an echoed token may be among them.

A server that never answers is bounded by the caller (`open_socket`, by
`SocketOptions.connect_timeout`), around the whole attempt, whatever the connector.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, final

import attrs
import trio
import trio_websocket

from ._reasons import DisconnectReason, ReasonCode
from ._transport import (
    HandshakeFailed,
    Headers,
    Transport,
    describe_transport_error,
    encode_headers,
    handshake,
)
from ._validate import check_headers

__all__ = [
    "CLOSE_TIMEOUT",
    "Connector",
    "UrlConnector",
    "as_connector",
    "attempt_headers",
    "host_header",
    "open_connection",
    "redact_url",
    "retry_after",
]

CLOSE_TIMEOUT = 5.0
"""Seconds a connection's close handshake may take when its block ends."""


class Connector(Protocol):
    """Opens WebSocket connections for a socket."""

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Transport | trio_websocket.WebSocketConnection]:
        """One connection, for the duration of an ``async with`` block.

        The built-in connectors (`UrlConnector`, and
        `tenantry.testing.MemoryConnector`) yield a
        `tenantry.lowlevel.Transport`, which the socket reads a network read
        at a time: a connector of your own that wraps one of them yields
        what it yields. A ``trio_websocket.WebSocketConnection`` (a
        connector that builds its own) is accepted too; it works as before,
        but is read one message at a time.

        Raises:
            tenantry.lowlevel.HandshakeFailed: the handshake failed (a
                rejection, a TLS error included); its ``reason`` says why.
            trio_websocket.ConnectionRejected: the server refused the handshake
                (its ``status_code`` says how), from a trio-websocket connector.
            trio_websocket.HandshakeError, OSError: the server could not be
                reached. `open_socket` turns any exception raised before the
                connection is yielded into a `ConnectFailed`.
        """
        ...


@asynccontextmanager
async def open_connection(
    open_stream: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    host: str,
    resource: str,
    headers: Mapping[str, str],
    max_message_size: int,
) -> AsyncIterator[Transport]:
    """A WebSocket over the stream ``open_stream()`` makes, for the block.

    The handshake runs in the caller's task (`tenantry._transport.handshake`)
    and raises `HandshakeFailed` as itself (see the module docstring). The
    stream ends with the block, whatever happened. The connection closes
    with a close handshake (shielded and bounded by `CLOSE_TIMEOUT`; nothing
    more than closing the stream if the socket already closed it) -- unless
    the block was cancelled from outside: no close reply could be read, and
    the connection is closed at once. Anything else (``Cancelled``
    included) propagates untouched.
    """
    encode_headers(headers)  # a header that cannot be sent fails before any I/O
    stream = await open_stream()
    try:
        transport = await handshake(
            stream,
            host=host,
            resource=resource,
            headers=headers,
            max_message_size=max_message_size,
        )
        try:
            yield transport
        finally:
            if trio.current_effective_deadline() == -math.inf:  # cancelled from outside
                await transport.abort()
            else:
                with trio.CancelScope(shield=True):
                    await transport.aclose(1000, timeout=CLOSE_TIMEOUT)
    finally:
        await trio.aclose_forcefully(stream)


def retry_after(status: int, headers: Headers, *, now: float) -> float | None:
    """Seconds a 429 or 503 asks the client to wait (``Retry-After``), else None.

    The header is a number of seconds or an HTTP date, compared with *now*
    (seconds since the epoch, as `time.time` gives them); a date in the past
    is 0. A missing or unreadable header is None.
    """
    if status not in (429, 503):
        return None
    value = next((v.strip() for k, v in headers if k.lower() == "retry-after"), None)
    if value is None:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is in GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


HeadersFactory = Callable[[], Awaitable[Mapping[str, str]]]
"""An async callable that makes the headers for one attempt (a fresh token, say)."""


async def attempt_headers(headers: Mapping[str, str] | HeadersFactory | None) -> Mapping[str, str]:
    """The headers for this attempt: *headers*, or what its callable returns now.

    A callable that raises, or returns headers that cannot be sent, fails
    the attempt with `HandshakeFailed` (408; the error is its cause). The
    message names the error's type or the header, never a value: the
    error's text may hold the token it failed to fetch.
    """
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        return headers
    try:
        made = await headers()
    except Exception as error:
        message = f"headers could not be made: {type(error).__name__}"
        raise HandshakeFailed(_local_failure(message)) from error
    try:
        return check_headers(made, "headers")
    except (TypeError, ValueError) as error:
        raise HandshakeFailed(_local_failure(f"headers could not be made: {error}")) from None


def _local_failure(message: str) -> DisconnectReason:
    return DisconnectReason(ReasonCode.CONNECTION_LOST, message, remote=False)


def redact_url(url: str) -> str:
    """*url* with its user info and query values replaced by ``***``: safe to log.

    The user info goes whole (a token often travels as the user name), and a
    query item without ``=`` (a bare ``?<token>``) is redacted like a value;
    query names stay, the fragment goes.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    _, at, host_port = parts.netloc.rpartition("@")
    query = "&".join(
        f"{name}=***" if equals else "***"
        for name, equals, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    netloc = f"***@{host_port}" if at else host_port
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _ws_url(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    # The messages never show the URL: it may hold a password or a token.
    name = attribute.name
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a ws:// or wss:// URL, got {type(value).__name__}")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{name} is not a valid URL (not shown: it may hold a secret)") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{name} must be a ws:// or wss:// URL (not shown: it may hold a secret)")
    if not parts.hostname:
        raise ValueError(f"{name} has no host")


@final
@attrs.frozen(repr=False)
class UrlConnector:
    """Connects to a ``ws://`` or ``wss://`` URL.

    ``wss://`` verifies the server's certificate with the system's trust
    store unless *ssl_context* says otherwise; the TLS handshake runs before
    the WebSocket handshake, so that a TLS error (an unknown CA, an expired
    certificate, a wrong host name) is reported as itself. The URL's user
    info and query values (tokens often travel there) are redacted in the
    repr, and a URL that fails validation is never shown.
    """

    url: str = attrs.field(validator=_ws_url)
    ssl_context: ssl.SSLContext | None = None

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Transport]:
        """See `Connector.open`."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

        async def open_stream() -> trio.abc.Stream:
            if not secure:
                return await trio.open_tcp_stream(host, port)
            context = self.ssl_context or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=context, https_compatible=True
            )
            handshaken = False
            try:
                await stream.do_handshake()  # here, so that a TLS error arrives as itself
                handshaken = True
            except trio.BrokenResourceError as error:
                message = describe_transport_error(error, during="TLS handshake")
                raise HandshakeFailed(
                    DisconnectReason(ReasonCode.CONNECTION_LOST, message)
                ) from None
            finally:
                if not handshaken:
                    await trio.aclose_forcefully(stream)
            return stream

        return open_connection(
            open_stream,
            host=host_header(host, port, secure=secure),
            resource=resource,
            headers=headers,
            max_message_size=max_message_size,
        )

    def __repr__(self) -> str:
        return f"UrlConnector({redact_url(self.url)!r})"


def host_header(host: str, port: int, *, secure: bool) -> str:
    """The ``Host`` header for *host* and *port* (RFC 7230): an IPv6 address in
    brackets, the port left out only when it is the scheme's own."""
    name = f"[{host}]" if ":" in host else host
    return name if port == (443 if secure else 80) else f"{name}:{port}"


def as_connector(connect: str | Connector) -> Connector:
    """*connect* as a connector: a URL string becomes a `UrlConnector`."""
    if isinstance(connect, str):
        return UrlConnector(connect)
    if not callable(getattr(connect, "open", None)):
        raise TypeError(
            f"connect must be a ws:// or wss:// URL or a connector, got {type(connect).__name__}"
        )
    return connect
