from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket

from helpers import living_tasks
from tenantry import Batch, SocketOptions, UrlConnector, open_socket
from tenantry._connect import as_connector, host_header, redact_url
from tenantry._transport import HandshakeFailed, TransportClosed
from tenantry.testing import MemoryConnector

LIMIT = 1024 * 1024


async def echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


async def test_memory_connector_runs_the_real_protocol(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen_headers: list[list[tuple[bytes, bytes]]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen_headers.append(request.headers)
        await echo(request)

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, handler)
        headers = {"Authorization": "Bearer s3cret"}
        before = living_tasks()
        async with connector.open(headers=headers, max_message_size=LIMIT) as ws:
            await ws.send("hello")
            assert await ws.receive() == ["hello"]
            assert living_tasks() > before
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before  # the connection's tasks ended with the block
        server.cancel_scope.cancel()
    assert (b"authorization", b"Bearer s3cret") in seen_headers[0]


@pytest.mark.parametrize(
    ("server_side", "expected_code"),
    [("close 4503", 4503), ("close 1000", 1000), ("drop", 1006)],
)
async def test_memory_connector_close_paths(
    autojump_clock: trio.testing.MockClock, server_side: str, expected_code: int
) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        if server_side.startswith("close"):
            await ws.aclose(code=int(server_side.split()[1]), reason="bye")
        # "drop": return without a close frame

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, handler)
        async with connector.open(headers={}, max_message_size=LIMIT) as ws:
            with pytest.raises(TransportClosed) as closed:
                await ws.receive()
        assert closed.value.code == expected_code
        assert closed.value.closed.remote
        server.cancel_scope.cancel()


async def test_a_rejected_handshake_raises_plainly(autojump_clock: trio.testing.MockClock) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b"forbidden")

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, handler)
        with pytest.raises(HandshakeFailed) as rejected:
            async with connector.open(headers={}, max_message_size=LIMIT):
                pytest.fail("the handshake was rejected")
        assert rejected.value.status == 403
        assert rejected.value.body == b"forbidden"
        server.cancel_scope.cancel()


async def test_url_connector_over_loopback_tcp() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, echo, "127.0.0.1", 0, None)
        connector = UrlConnector(f"ws://127.0.0.1:{server.port}/events?token=abc")
        with trio.fail_after(10):
            async with connector.open(headers={"X-Tenant": "acme"}, max_message_size=LIMIT) as ws:
                await ws.send("over tcp")
                assert await ws.receive() == ["over tcp"]
        nursery.cancel_scope.cancel()


async def test_url_connector_rejection_over_loopback_tcp() -> None:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(503)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, reject, "127.0.0.1", 0, None)
        with trio.fail_after(10), pytest.raises(HandshakeFailed) as rejected:
            async with UrlConnector(f"ws://127.0.0.1:{server.port}/").open(
                headers={}, max_message_size=LIMIT
            ):
                pytest.fail("the handshake was rejected")
        assert rejected.value.status == 503
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        ("example.test", 443, True, "example.test"),
        ("example.test", 80, False, "example.test"),
        ("example.test", 80, True, "example.test:80"),  # not wss's own port
        ("example.test", 443, False, "example.test:443"),
        ("::1", 8443, True, "[::1]:8443"),
        ("2001:db8::1", 443, True, "[2001:db8::1]"),
    ],
)
def test_the_host_header_brackets_ipv6_and_names_a_port_not_the_schemes(
    host: str, port: int, secure: bool, expected: str
) -> None:
    assert host_header(host, port, secure=secure) == expected


async def test_url_connector_over_ipv6_loopback_sends_a_bracketed_host() -> None:
    heads: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        heads.append(await stream.receive_some())
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, record, 0, host="::1"))
        port = listener.socket.getsockname()[1]
        with trio.fail_after(10), pytest.raises(HandshakeFailed):
            async with UrlConnector(f"ws://[::1]:{port}/").open(headers={}, max_message_size=LIMIT):
                pytest.fail("the handshake was rejected")  # pragma: no cover
        nursery.cancel_scope.cancel()
    assert f"\r\nhost: [::1]:{port}\r\n".encode() in heads[0].lower()


def test_urls_are_validated_and_redacted() -> None:
    connector = UrlConnector("wss://user:pw@example.test/ws?token=abc&tenant=1")
    assert repr(connector) == "UrlConnector('wss://***@example.test/ws?token=***&tenant=***')"
    assert "abc" not in repr(connector)
    assert redact_url("ws://h/p") == "ws://h/p"
    with pytest.raises(ValueError, match="url"):
        UrlConnector("http://example.test/")
    with pytest.raises(ValueError, match="no host"):
        UrlConnector("ws:///path")
    assert isinstance(as_connector("ws://h/"), UrlConnector)
    with pytest.raises(TypeError, match="connector"):
        as_connector(42)  # type: ignore[arg-type]


async def test_memory_connector_takes_one_kind_of_server() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="handler"):
            MemoryConnector(nursery)
        with pytest.raises(TypeError, match="handler"):
            MemoryConnector(nursery, echo, serve_stream=trio.aclose_forcefully)


async def test_a_connector_yielding_its_own_trio_websocket_connection_still_works(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A user's connector that builds a trio-websocket connection itself: the socket
    adapts it (one message per read), pings through it, and closes it with its code."""
    seen: list[object] = []

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message('{"type": "chats.update", "data": {"id": 1}}')
        seen.append(await ws.get_message())
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            seen.append(None if closed.reason is None else closed.reason.code)

    class OwnConnector:
        def __init__(self, nursery: trio.Nursery) -> None:
            self.nursery = nursery

        @asynccontextmanager
        async def open(
            self, *, headers: Mapping[str, str], max_message_size: int
        ) -> AsyncIterator[trio_websocket.WebSocketConnection]:
            client, server = trio.testing.memory_stream_pair()

            async def accept() -> None:
                async with trio.open_nursery() as nursery:
                    await serve(await trio_websocket.wrap_server_stream(nursery, server))

            self.nursery.start_soon(accept)
            async with trio.open_nursery() as nursery:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    client,  # type: ignore[arg-type]  # any trio Stream works
                    "h",
                    "/",
                    max_message_size=max_message_size,
                )
                yield ws
                await ws.aclose()
                nursery.cancel_scope.cancel()

    batches: list[Batch] = []
    options = SocketOptions(keepalive=10)
    async with trio.open_nursery() as server:
        async with open_socket(OwnConnector(server), tenant_id="a", options=options) as sock:
            async with sock.events.subscribe() as channel:
                batches.append(await channel.receive())
                await sock.send_frame("hello")
                await trio.sleep(60)  # pings answered: no 408
                assert not sock.closing
            sock.close(code=4000)
        server.cancel_scope.cancel()
    assert [data for batch in batches for data in batch["chats.update"]] == [{"id": 1}]
    assert seen == ["hello", 4000]
    assert sock.close_reason is not None
    assert sock.close_reason.raw_code == 4000
