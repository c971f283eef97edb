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

Every way an opening handshake can fail ends as an exception that says why,
never as a wait without end: trio-websocket's ``wrap_client_stream`` waits
for the server's answer and for nothing else, so `open_connection` watches
the transport (`_WatchedStream`) and ends the wait when the transport ends
first. Failures, and what the connectors here raise:

=============================================  ==========================================
what happened                                  raised (the reason's code and message)
=============================================  ==========================================
TCP connect failed, name not resolved          `OSError`, from Trio
a TLS error (unknown CA, expired, wrong name)  `HandshakeFailed` (408, "certificate verify
                                               failed: ..." or "TLS handshake failed: ...")
the transport ended before the answer          `HandshakeFailed` (408, "connection closed
                                               during handshake", or "connection lost
                                               during handshake: ..." for a reset)
an HTTP error, body complete                   `trio_websocket.ConnectionRejected`
an HTTP error, body cut short by the close,    `HandshakeFailed` (the HTTP status, with
or longer than `MAX_REJECTION` bytes           the response's status, headers and body)
not HTTP, or a wrong Sec-WebSocket-Accept      `HandshakeFailed` (400, "invalid handshake
                                               response: ..." saying what was wrong)
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
import re
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, final

import attrs
import h11
import trio
import trio_websocket
import wsproto.utilities

from ._reasons import DisconnectReason, ReasonCode
from ._validate import check_headers

__all__ = [
    "Connector",
    "HandshakeFailed",
    "UrlConnector",
    "as_connector",
    "attempt_headers",
    "encode_headers",
    "open_connection",
    "redact_url",
    "rejection_of",
    "retry_after",
]

Connection = trio_websocket.WebSocketConnection

CLOSE_TIMEOUT = 5.0
"""Seconds a connection's close handshake may take when its block ends."""

MAX_REJECTION_BODY = 4096
"""Bytes of a rejected handshake's body that are kept; the rest is dropped."""

MAX_REJECTION = 65536
"""Bytes of a rejected handshake's answer (head and body) read before giving up on the rest."""

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[ \r]")
"""The start of an HTTP response: its status code."""

Headers = tuple[tuple[str, str], ...]
"""A response's headers: (name in lower case, value decoded as Latin-1) pairs, in order."""


class HandshakeFailed(trio_websocket.HandshakeError):
    """The opening handshake failed; ``reason`` says why, as a disconnect reason.

    A rejection whose body was cut short (or too long to read) keeps the
    response's ``status``, ``headers`` and the start of its ``body`` as a
    `trio_websocket.ConnectionRejected` does; none of them is in ``str()``.
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


class Connector(Protocol):
    """Opens WebSocket connections for a socket."""

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Connection]:
        """One connection, for the duration of an ``async with`` block.

        Raises:
            trio_websocket.ConnectionRejected: the server refused the handshake
                (its ``status_code`` says how).
            HandshakeFailed: the handshake failed (a TLS error included);
                its ``reason`` says why.
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
) -> AsyncIterator[Connection]:
    """A WebSocket over the stream ``open_stream()`` makes, for the block.

    The stream, the connection and trio-websocket's reader task all end with
    the block, whatever happened. The connection closes with a close
    handshake (shielded and bounded by `CLOSE_TIMEOUT`) -- unless the block
    was cancelled from outside: trio-websocket's reader task is then
    cancelled too, no close reply can be read, and the connection is closed
    at once instead of waiting for one. A failed handshake raises as itself
    (see the module docstring), not wrapped in the exception group of a
    nursery the caller never saw. Anything else (``Cancelled`` included)
    propagates untouched.
    """
    extra_headers = encode_headers(headers)  # a header that cannot be sent fails before any I/O
    stream = await open_stream()
    handshaken = False
    try:
        async with trio.open_nursery() as nursery:
            connection = await _handshake(
                nursery,
                stream,
                host=host,
                resource=resource,
                extra_headers=extra_headers,
                max_message_size=max_message_size,
            )
            handshaken = True
            try:
                yield connection
            finally:
                await _close(connection)
                nursery.cancel_scope.cancel()
    except* trio_websocket.HandshakeError as failed:  # ConnectionRejected, HandshakeFailed
        if handshaken:
            raise
        raise failed.exceptions[0] from None
    except* Exception as crashed:  # trio-websocket's reader, on an invalid response
        if handshaken:
            raise
        raise HandshakeFailed(_invalid_response(crashed)) from None
    finally:
        await trio.aclose_forcefully(stream)


async def _handshake(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    *,
    host: str,
    resource: str,
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
) -> Connection:
    """trio-websocket's client handshake, ended early if the transport ends first."""
    with trio.CancelScope() as waiting:
        watched = _WatchedStream(stream, waiting)
        connection = await trio_websocket.wrap_client_stream(
            nursery,
            watched,  # type: ignore[arg-type]  # any trio Stream works
            host,
            resource,
            extra_headers=extra_headers,
            max_message_size=max_message_size,
        )
        watched.handshake_done()
        return connection
    raise watched.failure or HandshakeFailed(DisconnectReason(ReasonCode.CONNECTION_LOST))


async def _close(connection: Connection) -> None:
    if trio.current_effective_deadline() == -math.inf:  # cancelled: so is the reader
        await trio.aclose_forcefully(connection)
        return
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await connection.aclose()


def _invalid_response(crashed: BaseExceptionGroup[Exception]) -> DisconnectReason:
    """Why trio-websocket's reader crashed during the handshake.

    When the server's answer is not a valid upgrade, wsproto raises a
    `RemoteProtocolError` saying what was wrong; trio-websocket then tries
    to send a server's rejection from the client, which h11 refuses with a
    `LocalProtocolError`: the one that escapes. The first one is in its
    context. No byte of the answer is shown: a server that echoes the
    request would show the token in its query.
    """
    leaf: BaseException = crashed
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    error: BaseException | None = leaf
    while error is not None and not isinstance(error, wsproto.utilities.RemoteProtocolError):
        error = error.__context__
    if error is None:
        return DisconnectReason(
            ReasonCode.PROTOCOL_ERROR, f"handshake failed: {type(leaf).__name__}"
        )
    return invalid_response_reason(error)


def invalid_response_reason(error: BaseException) -> DisconnectReason:
    """The reason for wsproto's `RemoteProtocolError` *error* about the handshake's answer.

    It says what was wrong (with h11's reason for a "Bad HTTP message"),
    never a byte of the answer.
    """
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


@final
class _WatchedStream(trio.abc.Stream):
    """A transport whose end, while the opening handshake runs, ends the wait for it.

    trio-websocket's reader task sends the request and reads the answer. When
    it meets the end of the transport first (end of file, a reset, a failed
    send), it returns quietly, and ``wrap_client_stream`` would wait for the
    answer forever. This stream sees that end, keeps why (`failure`), and
    cancels the wait (*waiting*). It keeps the start of the response as well
    (up to `MAX_REJECTION` bytes), so that a rejection whose body runs until
    the connection closes keeps its HTTP status, headers and body; and it
    ends the wait for a rejection longer than that, whose body trio-websocket
    would otherwise gather whole. After `handshake_done` it only passes calls on.
    """

    def __init__(self, stream: trio.abc.Stream, waiting: trio.CancelScope) -> None:
        self._stream = stream
        self._waiting: trio.CancelScope | None = waiting
        self._head = bytearray()
        self.failure: HandshakeFailed | None = None

    def handshake_done(self) -> None:
        self._waiting = None
        self._head = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._ended(error)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._ended(error)
            raise
        if self._waiting is not None:
            if not data:
                self._ended(trio.BrokenResourceError("end of file"))
            elif len(self._head) < MAX_REJECTION:
                self._head += data[: MAX_REJECTION - len(self._head)]
            else:
                status = _STATUS_LINE.match(self._head)
                if status is not None and status[1] != b"101":  # a rejection without end
                    self._ended(trio.BrokenResourceError("rejection too long"))
        return data

    async def aclose(self) -> None:
        self._ended(trio.ClosedResourceError("closed by trio-websocket"))
        await self._stream.aclose()

    def _ended(self, error: Exception) -> None:
        if self._waiting is None or self.failure is not None:
            return
        status = _STATUS_LINE.match(self._head)
        if status is not None and status[1] != b"101":
            code = int(status[1])
            headers, body = rejection_of(bytes(self._head))
            reason = DisconnectReason.from_handshake_status(code)
            self.failure = HandshakeFailed(reason, status=code, headers=headers, body=body)
        else:
            message = describe_transport_error(error, during="handshake")
            self.failure = HandshakeFailed(DisconnectReason(ReasonCode.CONNECTION_LOST, message))
        self._waiting.cancel()


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


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as trio-websocket wants them; a header that cannot be sent raises `ValueError`."""
    check_headers(headers, "headers")
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


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
        raise TypeError(
            f"connect must be a ws:// or wss:// URL or a connector, got {type(connect).__name__}"
        )
    return connect
