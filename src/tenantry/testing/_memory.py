"""An in-memory connector: the real WebSocket code, no network, no real time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import final

import trio
import trio_websocket

from .._connect import open_connection
from .._transport import Transport
from ._pipe import pipe_pair

__all__ = ["MemoryConnector"]

Handler = Callable[[trio_websocket.WebSocketRequest], Awaitable[object]]
StreamServer = Callable[[trio.abc.Stream], Awaitable[object]]


@final
class MemoryConnector:
    """Connects clients to *handler* over an in-memory pipe.

    Each `open` makes a pair of connected in-memory streams, runs the client's
    handshake over one end (as `tenantry.UrlConnector` does over TCP), wraps the
    server end with trio-websocket's ``wrap_server_stream``, and runs
    ``handler(request)`` for the server side in *server_nursery*. The full
    WebSocket protocol -- handshake, frames, pings, close codes -- runs as
    over TCP, but deterministically, so tests can drive reconnects with
    `trio.testing.MockClock`.

    Instead of a *handler*, a server that needs the raw transport can pass
    ``serve_stream(stream)``, which then owns the stream (`FakeUpstream` does).

    When the handler returns, its end of the stream is closed. A handler
    that returns without closing the WebSocket therefore looks, to the
    client, like a connection dropped without a close frame (code 1006).
    """

    def __init__(
        self,
        server_nursery: trio.Nursery,
        handler: Handler | None = None,
        *,
        serve_stream: StreamServer | None = None,
        host: str = "tenantry.test",
        resource: str = "/",
    ) -> None:
        if (handler is None) == (serve_stream is None):
            raise TypeError("give a handler, or serve_stream for a server of raw streams")
        self._server_nursery = server_nursery
        self._handler = handler
        # serve_stream: for servers that need the transport itself (FakeUpstream
        # stalls by no longer reading it); it owns the stream it is given.
        self._serve_stream: StreamServer = serve_stream or self._serve
        self._host = host
        self._resource = resource

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[Transport]:
        """See `tenantry.Connector.open`."""

        async def open_stream() -> trio.abc.Stream:
            client, server = pipe_pair()
            self._server_nursery.start_soon(self._serve_stream, server)
            return client

        return open_connection(
            open_stream,
            host=self._host,
            resource=self._resource,
            headers=headers,
            max_message_size=max_message_size,
        )

    async def _serve(self, stream: trio.abc.Stream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
                assert self._handler is not None  # noqa: S101 - _serve is only used with a handler
                await self._handler(request)
                nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    def __repr__(self) -> str:
        server = self._handler if self._handler is not None else self._serve_stream
        return f"<MemoryConnector {self._host}{self._resource} -> {server!r}>"
