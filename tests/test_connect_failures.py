"""Connecting to servers that do not answer as they should: every attempt ends, and says why.

Hostile servers are written here: raw byte streams under MockClock (through
`MemoryConnector`), and TLS servers with real certificates over loopback TCP.
"""

from __future__ import annotations

import datetime
import functools
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
import trustme

from helpers import (
    UPGRADE_WITH_A_WRONG_ACCEPT,
    connect_failure,
    idle,
    raw_server,
)
from tenantry import (
    ConnectFailed,
    SocketOptions,
    TenantSpec,
    TenantState,
    UrlConnector,
    open_hub,
    open_socket,
)
from tenantry.testing import MemoryConnector


async def test_a_server_that_never_answers_is_bounded_by_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reason, took = await connect_failure(raw_server(then="hold"))
    assert (reason.code, reason.message) == (408, "handshake timed out after 10 s")
    assert took == 10
    reason, took = await connect_failure(
        raw_server(then="hold"), options=SocketOptions(connect_timeout=2.5)
    )
    assert (reason.message, took) == ("handshake timed out after 2.5 s", 2.5)


async def test_connect_timeout_bounds_any_connector(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stuck:
        @asynccontextmanager
        async def open(self, **_: object) -> AsyncIterator[trio_websocket.WebSocketConnection]:
            await trio.sleep_forever()
            yield  # pragma: no cover

    start = trio.current_time()
    with pytest.raises(ConnectFailed, match="handshake timed out after 3 s"):
        async with open_socket(Stuck(), tenant_id="acme", options=SocketOptions(connect_timeout=3)):
            pytest.fail("connected")  # pragma: no cover
    assert trio.current_time() - start == 3


async def test_a_connectors_own_error_is_a_connect_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Broken:
        @asynccontextmanager
        async def open(self, **_: object) -> AsyncIterator[trio_websocket.WebSocketConnection]:
            async with trio.open_nursery():
                raise RuntimeError("no route")
            yield  # pragma: no cover

    with pytest.raises(ConnectFailed) as failed:
        async with open_socket(Broken(), tenant_id="acme"):
            pytest.fail("connected")  # pragma: no cover
    assert failed.value.reason.code == 408
    assert failed.value.reason.message == "could not connect: RuntimeError: no route"


async def test_a_rejection_raised_through_a_connectors_nursery_keeps_its_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Rejected:
        @asynccontextmanager
        async def open(self, **_: object) -> AsyncIterator[trio_websocket.WebSocketConnection]:
            async with trio.open_nursery():
                raise trio_websocket.ConnectionRejected(
                    429, ((b"retry-after", b"7"),), b"slow down"
                )
            yield  # pragma: no cover

    with pytest.raises(ConnectFailed) as failed:
        async with open_socket(Rejected(), tenant_id="acme"):
            pytest.fail("connected")  # pragma: no cover
    assert (failed.value.status, failed.value.body, failed.value.retry_after) == (
        429,
        b"slow down",
        7.0,
    )


# trio-websocket's open_websocket_url leaves its TCP socket to the garbage collector
# when the handshake is rejected: collected at the end of the test, where it is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_trio_websocket_connectors_rejection_keeps_its_answer() -> None:
    """A connector of the user's own, built on trio-websocket, raises trio-websocket's
    rejection: the `ConnectFailed` keeps its status, headers, body and Retry-After."""

    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(429, extra_headers=[(b"Retry-After", b"7")], body=b"slow down")

    @attrs.frozen
    class OwnConnector:
        url: str

        @asynccontextmanager
        async def open(
            self, *, headers: Mapping[str, str], max_message_size: int
        ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
            extra = [(name.encode(), value.encode()) for name, value in headers.items()]
            async with trio_websocket.open_websocket_url(self.url, extra_headers=extra) as ws:
                yield ws

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, reject, "127.0.0.1", 0, None)
        connector = OwnConnector(f"ws://127.0.0.1:{server.port}/")
        with trio.fail_after(10), pytest.raises(ConnectFailed) as failed:
            async with open_socket(connector, tenant_id="acme"):
                pytest.fail("connected")  # pragma: no cover
        nursery.cancel_scope.cancel()
    rejected = failed.value
    del failed  # its traceback holds trio-websocket's socket
    assert rejected.reason.code == 429
    assert rejected.status == 429
    assert ("retry-after", "7") in rejected.headers
    assert rejected.body == b"slow down"
    assert rejected.retry_after == 7
    del rejected
    gc.collect()


async def test_the_timeout_ends_with_the_handshake(autojump_clock: trio.testing.MockClock) -> None:
    async def accept_then_idle(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()

    async with trio.open_nursery() as nursery:
        connector = MemoryConnector(nursery, accept_then_idle)
        async with open_socket(
            connector, tenant_id="acme", options=SocketOptions(connect_timeout=1)
        ) as sock:
            await trio.sleep(100)  # long after the connect timeout
            assert sock.close_reason is None
        nursery.cancel_scope.cancel()


def test_connect_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        SocketOptions(connect_timeout=0)
    with pytest.raises(TypeError, match="connect_timeout"):
        SocketOptions(connect_timeout="10")  # type: ignore[arg-type]
    assert TenantSpec("a", "ws://h/", idle).options.connect_timeout == 10


async def test_a_tenant_counts_logs_backs_off_and_trips_the_breaker(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry")
    async with trio.open_nursery() as nursery, open_hub(seed=1) as hub:
        silent = MemoryConnector(nursery, serve_stream=raw_server(then="hold"))
        await hub.add(TenantSpec("a", silent, idle, options=SocketOptions(connect_timeout=2)))
        garbage = MemoryConnector(nursery, serve_stream=raw_server(UPGRADE_WITH_A_WRONG_ACCEPT))
        await hub.add(TenantSpec("b", garbage, idle))
        await trio.sleep(60)  # five failures each, then the breaker's 60 s wait
        status = {s.tenant_id: s for s in hub.status()}
        nursery.cancel_scope.cancel()
    for tenant, message in [
        ("a", "handshake timed out after 2 s"),
        ("b", "invalid handshake response: Bad accept token"),
    ]:
        assert status[tenant].state is TenantState.CIRCUIT_OPEN
        assert (status[tenant].failures, status[tenant].connections) == (5, 0)
        last = status[tenant].last_disconnect
        assert last is not None
        assert last.message == message
        closed = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("connection closed")
        ]
        assert f"connection closed: tenant {tenant}, {last}" in closed
    assert not [r for r in caplog.records if "handler failed" in r.getMessage()]


# -- TLS, over loopback TCP ------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def serve_tls(cert: trustme.LeafCert, *, task_status: trio.TaskStatus[int]) -> None:
    """A WebSocket server over TLS with *cert*; it holds accepted connections."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                await request.accept()
                await trio.sleep_forever()
        except trio.BrokenResourceError:
            pass  # the client refused the certificate, or spoke no TLS
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)
    task_status.started(transport.socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def tls_failure(cert: trustme.LeafCert, url: str, client: ssl.SSLContext) -> str:
    """The message of `open_socket`'s failure to reach a TLS server with *cert* at *url*."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tls, cert)
        connector = UrlConnector(url.format(port=port), ssl_context=client)
        with trio.fail_after(10), pytest.raises(ConnectFailed) as failed:
            async with open_socket(connector, tenant_id="acme"):
                pytest.fail("connected")  # pragma: no cover
        nursery.cancel_scope.cancel()
    assert failed.value.reason.code == 408
    return failed.value.reason.message


async def test_wss_with_a_trusted_certificate_connects(ca: trustme.CA) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tls, ca.issue_cert("127.0.0.1"))
        connector = UrlConnector(f"wss://127.0.0.1:{port}/", ssl_context=client_trusting(ca))
        with trio.fail_after(10):
            async with open_socket(connector, tenant_id="acme") as sock:
                assert sock.close_reason is None
        nursery.cancel_scope.cancel()


async def test_an_unknown_ca_says_so(ca: trustme.CA) -> None:
    message = await tls_failure(
        ca.issue_cert("127.0.0.1"), "wss://127.0.0.1:{port}/", client_trusting(trustme.CA())
    )
    assert message == "certificate verify failed: unable to get local issuer certificate"


async def test_an_expired_certificate_says_so(ca: trustme.CA) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = ca.issue_cert("127.0.0.1", not_before=past, not_after=past + datetime.timedelta(1))
    message = await tls_failure(expired, "wss://127.0.0.1:{port}/", client_trusting(ca))
    assert message == "certificate verify failed: certificate has expired"


async def test_a_wrong_host_name_says_so(ca: trustme.CA) -> None:
    message = await tls_failure(
        ca.issue_cert("other.test"), "wss://127.0.0.1:{port}/", client_trusting(ca)
    )
    assert message.startswith("certificate verify failed: IP address mismatch")


async def test_wss_to_a_plain_server_says_so(ca: trustme.CA) -> None:
    async def accept(request: trio_websocket.WebSocketRequest) -> None:
        await request.accept()  # pragma: no cover - no handshake reaches it

    async with trio.open_nursery() as nursery:
        plain = await nursery.start(
            functools.partial(trio_websocket.serve_websocket, accept, "127.0.0.1", 0, None)
        )
        connector = UrlConnector(f"wss://127.0.0.1:{plain.port}/", ssl_context=client_trusting(ca))
        with trio.fail_after(10), pytest.raises(ConnectFailed) as failed:
            async with open_socket(connector, tenant_id="acme"):
                pytest.fail("connected")  # pragma: no cover
        nursery.cancel_scope.cancel()
    assert failed.value.reason.code == 408
    assert failed.value.reason.message.startswith("TLS handshake failed: ")


async def test_ws_to_a_tls_server_says_so(ca: trustme.CA) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tls, ca.issue_cert("127.0.0.1"))
        with trio.fail_after(10), pytest.raises(ConnectFailed) as failed:
            async with open_socket(f"ws://127.0.0.1:{port}/", tenant_id="acme"):
                pytest.fail("connected")  # pragma: no cover
        nursery.cancel_scope.cancel()
    # The TLS server closes on the plain request; as it had not read all of it,
    # its kernel may answer with a reset rather than an end of file.
    assert failed.value.reason.code == 408
    assert failed.value.reason.message.startswith(
        ("connection closed during handshake", "connection lost during handshake: ")
    )
