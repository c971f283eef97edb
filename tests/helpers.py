"""Small helpers shared by the Trio-level tests."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import wsproto
import wsproto.events as ws_events
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from wsproto.connection import ConnectionState

from tenantry import Batch, ConnectFailed, DisconnectReason, EventStream, Socket, open_socket
from tenantry.lowlevel import Gauges
from tenantry.testing import MemoryConnector

Handler = Callable[[Socket], Awaitable[None]]
StreamServer = Callable[[trio.abc.Stream], Awaitable[None]]

UPGRADE_WITH_A_WRONG_ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
)
"""An upgrade whose Sec-WebSocket-Accept answers no request."""


class FakeClock:
    """A hand-driven clock for the pure state machines."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def living_tasks() -> int:
    """How many Trio tasks are alive in this run."""
    return trio.lowlevel.current_statistics().tasks_living


async def collect(channel: trio.abc.ReceiveChannel[Batch], into: list[Batch]) -> None:
    """Append every batch of *channel* to *into* until the channel ends."""
    async for batch in channel:
        into.append(batch)


async def collect_timed(
    channel: trio.abc.ReceiveChannel[Batch], into: list[tuple[float, Batch]]
) -> None:
    """Append (Trio's clock at receipt, batch) for every batch of *channel* until it ends."""
    async for batch in channel:
        into.append((trio.current_time(), batch))


async def idle(sock: Socket) -> None:
    """A handler that leaves its socket open until something else closes it."""
    await trio.sleep_forever()


def collector(into: list[Batch]) -> Handler:
    """A handler that subscribes and appends every batch it receives to *into*."""

    async def handler(sock: Socket) -> None:
        async with sock.events.subscribe() as batches:
            await collect(batches, into)

    return handler


def auto_flush(events: EventStream, nursery: trio.Nursery) -> None:
    """Run the auto-flush of *events* in *nursery* as a socket does: a task while events wait."""
    events.flush_on_demand(lambda: nursery.start_soon(events.auto_flush_while_pending))


def raw_server(answer: bytes = b"", *, read: bool = True, then: str = "close") -> StreamServer:
    """A server that reads the request (or not), writes *answer*, then closes or holds."""

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            if read:
                await stream.receive_some()
            if answer:
                await stream.send_all(answer)
            if then == "hold":
                await trio.sleep_forever()
        finally:
            await trio.aclose_forcefully(stream)

    return serve


BROKEN_HANDSHAKES = [
    pytest.param(
        raw_server(read=False),
        408,
        "connection closed during handshake",
        id="closes before the request",
    ),
    pytest.param(raw_server(), 408, "connection closed during handshake", id="closes after it"),
    pytest.param(
        raw_server(b"HTTP/1.1 101 Switching Protocols\r\nUpgr"),
        408,
        "connection closed during handshake",
        id="closes within the answer",
    ),
    pytest.param(
        raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", then="hold"),
        400,
        "invalid handshake response: Bad HTTP message (illegal status line)",
        id="not HTTP",
    ),
    pytest.param(
        raw_server(UPGRADE_WITH_A_WRONG_ACCEPT, then="hold"),
        400,
        "invalid handshake response: Bad accept token",
        id="a wrong Sec-WebSocket-Accept",
    ),
]
"""Servers that break the opening handshake, the reason code each gives, and its message:
``(server, code, message)`` parameters."""


async def connect_failure(server: StreamServer, **kwargs: object) -> tuple[DisconnectReason, float]:
    """The reason `open_socket` gave up on *server*, and the (virtual) seconds it took."""
    gauges = Gauges()
    async with trio.open_nursery() as nursery:
        before = living_tasks()
        start = trio.current_time()
        with trio.fail_after(3600), pytest.raises(ConnectFailed) as failed:
            async with open_socket(
                MemoryConnector(nursery, serve_stream=server),
                tenant_id="acme",
                gauges=gauges,
                **kwargs,  # type: ignore[arg-type]
            ):
                pytest.fail("connected")  # pragma: no cover
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert gauges == Gauges()
    assert living_tasks() == before
    return failed.value.reason, took


def exit_status(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code  # type: ignore[return-value]


class Peer:
    """The server's end, scripted by the test: wsproto's server side over a stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.seen: list[ws_events.Event] = []

    async def accept(self, *then: ws_events.Event) -> None:
        """Answer the upgrade; *then*'s frames go out in the same write."""
        await self.until(ws_events.Request)
        await self.stream.send_all(self.frames(ws_events.AcceptConnection(), *then))

    def frames(self, *events: ws_events.Event) -> bytes:
        return b"".join(self.ws.send(event) for event in events)

    async def send(self, *events: ws_events.Event) -> None:
        """*events* in one write."""
        await self.stream.send_all(self.frames(*events))

    async def until(self, kind: type[ws_events.Event]) -> Any:
        """Read until an event of *kind* arrives (kept in `seen`, as every event read)."""
        while True:
            for event in self.ws.events():
                self.seen.append(event)
                if isinstance(event, kind):
                    return event
            self.ws.receive_data(bytes(await self.stream.receive_some()) or None)


def event(n: int) -> ws_events.TextMessage:
    return ws_events.TextMessage(data=json.dumps({"type": "x", "data": n}))


def scripted(bad: Callable[[Peer], bytes], closes: list[int]) -> StreamServer:
    """A server whose first connection gets an event, then *bad* and another event, in one
    write, and records the close code the client sends. Later connections idle. Each
    answers pings, and the client's close."""
    connections = 0

    async def serve(stream: trio.abc.Stream) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        peer = Peer(stream)
        try:
            await peer.accept()
            if first:
                await trio.sleep(1)
                data = peer.frames(event(1)) + bad(peer)
                if peer.ws.state is ConnectionState.OPEN:
                    data += peer.frames(event(2))
                await peer.stream.send_all(data)
            while not isinstance(
                received := await peer.until(ws_events.Event), ws_events.CloseConnection
            ):
                if isinstance(received, ws_events.Ping):
                    await peer.send(received.response())
            if first:
                closes.append(received.code)
            if peer.ws.state is ConnectionState.REMOTE_CLOSING:
                await peer.send(received.response())
        finally:
            await trio.aclose_forcefully(stream)

    return serve


class WebsocketsServer:
    """An asyncio ``websockets`` server in a thread of its own, for one test: a peer tenantry
    did not write. `handle` serves each connection (override it for another script)."""

    def __init__(self) -> None:
        self.closes: queue.Queue[tuple[int | None, str | None]] = queue.Queue()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    async def handle(self, ws: ServerConnection) -> None:
        try:
            async for received in ws:
                message = str(received)
                if message == "close":
                    await ws.close(4001, "asked to")
                    return
                await ws.send(message + "!")
                await ws.send(message + "?")
                pong = await ws.ping(b"srv")
                await pong
                await ws.send("ponged")
        finally:
            self.closes.put((ws.close_code, ws.close_reason))  # each connection's close

    def refuse(self, _: ServerConnection, request: Request) -> Response | None:
        if request.path != "/refused":
            return None
        headers = Headers([("X-Error", "go away"), ("Content-Type", "text/plain")])
        return Response(403, "Forbidden", headers, b"not you")

    async def run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self.handle, "127.0.0.1", 0, process_request=self.refuse) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()


@contextmanager
def websockets_server(server: WebsocketsServer | None = None) -> Iterator[WebsocketsServer]:
    """Run *server* (a plain `WebsocketsServer` if None) for the block; stop it after."""
    server = server or WebsocketsServer()
    thread = threading.Thread(target=asyncio.run, args=(server.run(),), daemon=True)
    thread.start()
    assert server._ready.wait(timeout=5)
    try:
        yield server
    finally:
        assert server._loop is not None
        assert server._stop is not None
        server._loop.call_soon_threadsafe(server._stop.set)
        thread.join(timeout=10)
