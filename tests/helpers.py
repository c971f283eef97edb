"""Small helpers shared by the Trio-level tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import wsproto
import wsproto.events as ws_events

from tenantry import Batch, EventStream, Socket

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
