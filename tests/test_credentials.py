"""Credentials per attempt, and what a rejected handshake keeps: status, headers, body, Retry-After.

Rejecting servers are written here with trio-websocket, over loopback TCP or
in memory (`MemoryConnector`, under MockClock), and as raw byte streams for
answers trio-websocket would not send.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import itertools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Mapping

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
import trio_websocket
import trustme
from hypothesis import given

from helpers import StreamServer, idle, raw_server
from tenantry import (
    Backoff,
    ConnectFailed,
    ReconnectPolicy,
    SocketOptions,
    TenantSpec,
    TenantState,
    UrlConnector,
    open_hub,
    open_socket,
)
from tenantry._connect import retry_after
from tenantry._transport import MAX_REJECTION, MAX_REJECTION_BODY, rejection_of
from tenantry.testing import MemoryConnector

TOKEN = "tok-5ecr3t-value"  # noqa: S105 - a made-up secret that must show nowhere
COOKIE = "session=c00k1e-5ecr3t"

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[object]]


def rejecting(status: int, headers: Mapping[str, str], body: bytes) -> Handler:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        await request.reject(status, extra_headers=extra, body=body)

    return reject


async def failure_from(connect: object, options: SocketOptions | None = None) -> ConnectFailed:
    with trio.fail_after(3600), pytest.raises(ConnectFailed) as failed:
        async with open_socket(connect, tenant_id="acme", options=options):  # type: ignore[arg-type]
            pytest.fail("connected")  # pragma: no cover
    return failed.value


# -- what a rejection keeps ----------------------------------------------------------


async def test_a_401_over_loopback_keeps_status_headers_and_body_and_shows_none_of_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Set-Cookie": COOKIE, "WWW-Authenticate": f'Bearer error="{TOKEN}"'}
    body = b'{"error": "token expired: ' + TOKEN.encode() + b'"}'
    async with trio.open_nursery() as server:
        listener = await server.start(
            trio_websocket.serve_websocket, rejecting(401, headers, body), "127.0.0.1", 0, None
        )
        failed = await failure_from(f"ws://127.0.0.1:{listener.port}/")
        server.cancel_scope.cancel()
    assert (failed.status, failed.body, failed.retry_after) == (401, body, None)
    assert ("set-cookie", COOKIE) in failed.headers
    assert ("www-authenticate", f'Bearer error="{TOKEN}"') in failed.headers
    assert failed.reason.code == 401
    shown = [str(failed), repr(failed), repr(failed.reason), repr(failed.args)]
    shown += [record.getMessage() for record in caplog.records]
    assert not [text for text in shown if TOKEN in text or "c00k1e" in text]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_read_on_429_and_503(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    async with trio.open_nursery() as nursery:
        rejects = rejecting(status, {"Retry-After": "7"}, b"slow down")
        failed = await failure_from(MemoryConnector(nursery, rejects))
        nursery.cancel_scope.cancel()
    assert (failed.status, failed.retry_after, failed.body) == (status, 7.0, b"slow down")


async def test_a_rejection_cut_short_keeps_what_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answer = b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nSet-Cookie: " + COOKIE.encode()
    answer += b"\r\n\r\nslow"  # no length: the body runs until the close
    async with trio.open_nursery() as nursery:
        failed = await failure_from(MemoryConnector(nursery, serve_stream=raw_server(answer)))
        nursery.cancel_scope.cancel()
    assert (failed.reason.code, failed.status, failed.retry_after) == (429, 429, 3.0)
    assert failed.headers == (("retry-after", "3"), ("set-cookie", COOKIE))
    assert failed.body == b"slow"
    assert "c00k1e" not in str(failed) + repr(failed)


def endless_rejection() -> StreamServer:
    """A 403 whose body never ends: the client must stop reading it, not gather it whole."""

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            await stream.receive_some()
            await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 99999999\r\n\r\n")
            for _ in range(1000):
                await stream.send_all(b"x" * 4096)
            pytest.fail("the client read 4 MB of a rejection")  # pragma: no cover
        except trio.BrokenResourceError:
            pass  # the client stopped reading and closed
        finally:
            await trio.aclose_forcefully(stream)

    return serve


async def test_a_rejection_without_end_is_cut_at_a_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        connector = MemoryConnector(nursery, serve_stream=endless_rejection())
        failed = await failure_from(connector)
        assert trio.current_time() == start  # at once, not at the connect timeout
        nursery.cancel_scope.cancel()
    assert (failed.reason.code, failed.status) == (403, 403)
    assert failed.body == b"x" * MAX_REJECTION_BODY


def test_rejection_of_reads_what_there_is() -> None:
    head = b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    assert rejection_of(head + b"5\r\nhello\r\n3\r\nab") == (
        (("transfer-encoding", "chunked"), ("x-a", "1")),
        b"helloab",
    )
    assert rejection_of(head[:30]) == ((), b"")  # the head cut short
    assert rejection_of(b"HTTP/1.1 500 X\r\n\r\n" + b"y" * MAX_REJECTION)[1] == (
        b"y" * MAX_REJECTION_BODY
    )
    assert rejection_of(b"SSH-2.0\r\n\r\n") == ((), b"")


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "value", "expected"),
    [
        (429, "7", 7.0),
        (503, " 120 ", 120.0),
        (429, "0", 0.0),
        (429, email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (503, email.utils.formatdate(NOW - 30, usegmt=True), 0.0),  # in the past
        (429, "Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
        (429, "-5", None),
        (429, "1.5", None),
        (429, "soon", None),
        (429, "", None),
        (401, "7", None),
        (500, "7", None),
    ],
)
def test_retry_after_in_seconds_or_an_http_date(
    status: int, value: str, expected: float | None
) -> None:
    assert retry_after(status, (("x-other", "1"), ("Retry-After", value)), now=NOW) == expected
    assert retry_after(status, (), now=NOW) is None


@given(
    when=st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(9999, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
    seconds=st.integers(0, 10**30),
    junk=st.text(),
)
def test_retry_after_never_raises_and_is_never_negative(
    when: datetime.datetime, seconds: int, junk: str
) -> None:
    date = email.utils.format_datetime(when, usegmt=True)
    assert retry_after(429, (("retry-after", date),), now=NOW) == max(0.0, when.timestamp() - NOW)
    assert retry_after(503, (("retry-after", str(seconds)),), now=NOW) == float(seconds)
    parsed = retry_after(429, (("retry-after", junk),), now=NOW)
    assert parsed is None or parsed >= 0


# -- the tenant waits as asked -------------------------------------------------------


async def tenant_attempts(
    handler: Handler, policy: ReconnectPolicy, *, seconds: float
) -> tuple[list[float], list[float | None]]:
    """When each attempt reached *handler*, and the status's ``next_retry_at`` after each."""
    times: list[float] = []
    next_retry: list[float | None] = []
    seen = trio.Event()

    async def recording(request: trio_websocket.WebSocketRequest) -> None:
        times.append(trio.current_time())
        seen.set()
        await handler(request)

    async with trio.open_nursery() as nursery, open_hub(seed=1) as hub:
        await hub.add(TenantSpec("a", MemoryConnector(nursery, recording), idle, policy=policy))
        with trio.move_on_after(seconds):
            while True:
                await seen.wait()
                seen = trio.Event()
                await trio.sleep(0.001)  # the rejection reaches the tenant
                [status] = hub.status()
                next_retry.append(status.next_retry_at)
        nursery.cancel_scope.cancel()
    return times, next_retry


async def test_a_tenant_waits_as_long_as_retry_after_asks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0), fail_max=100)
    times, next_retry = await tenant_attempts(
        rejecting(429, {"Retry-After": "7"}, b""), policy, seconds=30
    )
    assert [b - a for a, b in itertools.pairwise(times)] == [7, 7, 7, 7]
    assert next_retry[:4] == [t + 7 for t in times[:4]]


async def test_retry_after_is_bounded_by_max_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0), fail_max=100, max_retry_after=20)
    times, _ = await tenant_attempts(
        rejecting(503, {"Retry-After": "86400"}, b""), policy, seconds=70
    )
    assert [b - a for a, b in itertools.pairwise(times)] == [20, 20, 20]


# -- headers per attempt -------------------------------------------------------------


class TokenIssuer:
    """Issues tokens that live *ttl* seconds; the server accepts only live ones."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.issued: dict[str, float] = {}
        self.rejected = 0

    async def headers(self) -> dict[str, str]:
        await trio.sleep(0.5)  # a round trip to the issuer
        token = f"token-{len(self.issued)}"
        self.issued[token] = trio.current_time() + self.ttl
        return {"Authorization": f"Bearer {token}"}

    async def serve(self, request: trio_websocket.WebSocketRequest) -> None:
        """Accept a live token, then close when it expires (the server's session ends)."""
        values = [v.decode() for k, v in request.headers if k == b"authorization"]
        expires = self.issued.get(values[0].removeprefix("Bearer "), -math.inf) if values else 0
        if expires <= trio.current_time():
            self.rejected += 1
            await request.reject(401, body=b"token expired")
            return
        ws = await request.accept()
        await trio.sleep_until(expires)
        await ws.aclose(4000)  # a close the tenant reconnects after


@pytest.mark.parametrize("fresh", [True, False])
async def test_a_token_fetched_per_attempt_never_stops_the_tenant(
    autojump_clock: trio.testing.MockClock, fresh: bool
) -> None:
    issuer = TokenIssuer(ttl=3)
    if fresh:
        headers: object = issuer.headers
    else:
        headers = await issuer.headers()  # fetched once: stale after 3 s
    options = SocketOptions(headers=headers)  # type: ignore[arg-type]
    policy = ReconnectPolicy(stable_after=2)  # a connection that lives its token's life is fine
    async with trio.open_nursery() as nursery, open_hub(seed=1) as hub:
        connector = MemoryConnector(nursery, issuer.serve)
        await hub.add(TenantSpec("a", connector, idle, options=options, policy=policy))
        await trio.sleep(600)
        [status] = hub.status()
        nursery.cancel_scope.cancel()
    if fresh:
        assert issuer.rejected == 0
        assert status.state is not TenantState.STOPPED
        assert status.connections > 20
        assert len(issuer.issued) == status.connections  # one token per attempt
    else:  # the contrast: the same server stops a tenant whose token was fixed
        assert (status.state, status.connections, issuer.rejected) == (TenantState.STOPPED, 1, 1)
        assert status.last_disconnect is not None
        assert status.last_disconnect.code == 401


async def accept(request: trio_websocket.WebSocketRequest) -> None:
    await request.accept()
    await trio.sleep_forever()


async def fails(error: Exception) -> dict[str, str]:
    raise error


async def returns(headers: object) -> Mapping[str, str]:
    return headers  # type: ignore[return-value]  # what a buggy callable may return


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            functools.partial(fails, RuntimeError(TOKEN)),
            "headers could not be made: RuntimeError",
        ),
        (
            functools.partial(returns, {"Authorization": f"Bearer {TOKEN}\n"}),
            (
                "headers could not be made: headers['Authorization'] cannot be sent: it has a line"
                " break (a token read from a file keeps its newline: strip it) (value not shown)"
            ),
        ),
        (
            functools.partial(returns, f"Bearer {TOKEN}"),
            "headers could not be made: headers must be a mapping of names to values, got str",
        ),
    ],
)
async def test_headers_that_cannot_be_made_fail_the_attempt_and_say_why_without_a_value(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    make: Callable[[], Awaitable[Mapping[str, str]]],
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantry")
    options = SocketOptions(headers=make)
    assert TOKEN not in repr(options)
    async with trio.open_nursery() as nursery:
        connector = MemoryConnector(nursery, accept)
        failed = await failure_from(connector, options)
        assert (failed.reason.code, failed.reason.message, failed.status) == (408, message, None)
        assert isinstance(failed.__cause__, RuntimeError) == message.endswith("RuntimeError")
        async with open_hub(seed=1) as hub:  # a tenant retries, and the hub carries on
            await hub.add(TenantSpec("a", connector, idle, options=options))
            await trio.sleep(10)
            [status] = hub.status()
            assert status.state is TenantState.BACKING_OFF
            assert status.failures >= 3
        nursery.cancel_scope.cancel()
    assert TOKEN not in str(failed) + repr(failed)
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


async def test_the_headers_callable_runs_within_the_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never() -> dict[str, str]:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        options = SocketOptions(headers=never, connect_timeout=2)
        failed = await failure_from(MemoryConnector(nursery, accept), options)
        assert trio.current_time() - start == 2
        nursery.cancel_scope.cancel()
    assert failed.reason.message == "handshake timed out after 2 s"


def test_a_headers_callable_must_be_async_and_is_not_shown() -> None:
    with pytest.raises(TypeError, match="headers must be an async function"):
        SocketOptions(headers=lambda: {"Authorization": TOKEN})  # type: ignore[arg-type,return-value]
    options = SocketOptions(headers=functools.partial(returns, {"Authorization": TOKEN}))
    assert "headers=<partial>" in repr(options)
    assert "headers=<TokenIssuer.headers>" in repr(SocketOptions(headers=TokenIssuer(1).headers))


# -- TLS: a private CA and a client certificate, as the tutorial shows ----------------


async def test_a_client_certificate_through_an_ssl_context_reaches_the_server() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no service
    ca.configure_trust(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    ca.issue_cert("acme@clients.example").configure_cert(client_context)
    peers: list[object] = []

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            peers.append(stream.getpeercert())
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                await request.accept()
                await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as server:
        listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
        transport = listeners[0].transport_listener
        assert isinstance(transport, trio.SocketListener)
        port = transport.socket.getsockname()[1]
        server.start_soon(trio.serve_listeners, handle, listeners)
        connector = UrlConnector(f"wss://127.0.0.1:{port}/", ssl_context=client_context)
        with trio.fail_after(10):
            async with open_socket(connector, tenant_id="acme") as sock:
                assert sock.close_reason is None
        server.cancel_scope.cancel()
    assert "acme@clients.example" in repr(peers)
