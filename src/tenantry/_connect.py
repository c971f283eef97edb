"""How a socket reaches its upstream: a URL, or any connector object.

A *connector* opens one WebSocket connection as an async context manager:
the connection and trio-websocket's background reader task live exactly as
long as the ``async with`` block, which the socket scope encloses. A
rejected handshake raises `trio_websocket.ConnectionRejected` plainly, not
wrapped in the exception group of a nursery the caller never saw.
`open_socket` accepts a ``ws://``/``wss://`` URL, which becomes
a `UrlConnector`, or a connector such as `tenantry.testing.MemoryConnector`,
which runs the same trio-websocket protocol code over in-memory streams so
that whole reconnect scenarios run under `trio.testing.MockClock`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, final

import attrs
import trio
import trio_websocket

__all__ = [
    "Connector",
    "UrlConnector",
    "as_connector",
    "encode_headers",
    "open_connection",
    "redact_url",
]

Connection = trio_websocket.WebSocketConnection

CLOSE_TIMEOUT = 5.0
"""Seconds a connection's close handshake may take when its block ends."""


class Connector(Protocol):
    """Opens WebSocket connections for a socket."""

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Connection]:
        """One connection, for the duration of an ``async with`` block.

        Raises:
            trio_websocket.ConnectionRejected: the server refused the handshake
                (its ``status_code`` says how).
            trio_websocket.HandshakeError, OSError: the server could not be reached.
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
) -> AsyncIterator[Connection]:
    """A WebSocket over the stream ``open_stream()`` makes, for the block.

    The stream, the connection and trio-websocket's reader task all end with
    the block: the connection is closed with a close handshake (shielded and
    bounded by `CLOSE_TIMEOUT`), the reader task is cancelled and the stream
    is closed, whatever happened -- a rejected handshake included, which
    trio-websocket reports from its reader task, i.e. through the nursery,
    and which is re-raised here as itself. Anything else (``Cancelled``
    included) propagates untouched.
    """
    stream = await open_stream()
    try:
        async with trio.open_nursery() as nursery:
            connection = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any trio Stream works
                host,
                resource,
                extra_headers=encode_headers(headers),
                max_message_size=max_message_size,
            )
            try:
                yield connection
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await connection.aclose()
                nursery.cancel_scope.cancel()
    except* trio_websocket.ConnectionRejected as rejected:
        raise rejected.exceptions[0] from None
    finally:
        await trio.aclose_forcefully(stream)


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as trio-websocket wants them."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


def redact_url(url: str) -> str:
    """*url* with its password and query values replaced by ``***``: safe to log."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urllib.parse.urlencode(
        [(name, "***") for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _ws_url(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or urllib.parse.urlsplit(value).scheme not in ("ws", "wss"):
        raise ValueError(f"{attribute.name} must be a ws:// or wss:// URL, got {value!r}")
    if urllib.parse.urlsplit(value).hostname is None:
        raise ValueError(f"{attribute.name} has no host: {redact_url(value)!r}")


@final
@attrs.frozen(repr=False)
class UrlConnector:
    """Connects to a ``ws://`` or ``wss://`` URL.

    ``wss://`` verifies the server's certificate with the system's trust
    store unless *ssl_context* says otherwise. The URL's password and query
    values (tokens often travel there) are redacted in the repr.
    """

    url: str = attrs.field(validator=_ws_url)
    ssl_context: ssl.SSLContext | None = None

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Connection]:
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
            return await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=context, https_compatible=True
            )

        return open_connection(
            open_stream,
            host=host if port in (80, 443) else f"{host}:{port}",
            resource=resource,
            headers=headers,
            max_message_size=max_message_size,
        )

    def __repr__(self) -> str:
        return f"UrlConnector({redact_url(self.url)!r})"


def as_connector(connect: str | Connector) -> Connector:
    """*connect* as a connector: a URL string becomes a `UrlConnector`."""
    if isinstance(connect, str):
        return UrlConnector(connect)
    if not callable(getattr(connect, "open", None)):
        raise TypeError(f"connect must be a ws:// or wss:// URL or a connector, got {connect!r}")
    return connect
