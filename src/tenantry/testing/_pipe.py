"""A lean in-memory byte pipe: the transport under `MemoryConnector`.

`trio.testing.memory_stream_pair` is built to shake out bugs in stream
*implementations*: every call runs extra checkpoints and a pump, so that
misuse shows up. The connector needs the opposite, a transport that costs
as little as possible, because a virtual soak pushes every frame of a
hundred tenants through it: an hour of traffic is hundreds of thousands of
``send_all`` and ``receive_some`` calls. Here a call is one schedule point:
``send_all`` appends to the peer's buffer and wakes its reader,
``receive_some`` takes what is buffered, parking only when there is
nothing. Buffers are unbounded, like the ``trio.testing`` pair's.

The semantics are those of `trio.abc.Stream`: after ``aclose`` the closing
end raises `trio.ClosedResourceError`, the peer reads what is left and then
``b""`` (end of file), and sending to a closed peer raises
`trio.BrokenResourceError`. A cancelled call has no effect.
"""

from __future__ import annotations

import operator
from typing import final

import trio

__all__ = ["pipe_pair"]


@final
class _Direction:
    """The bytes on their way from one end to the other, and who closed what."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.readable = trio.lowlevel.ParkingLot()
        self.reader_closed = False
        self.writer_closed = False

    def close_reader(self) -> None:
        self.reader_closed = True
        self.data.clear()
        self.readable.unpark_all()

    def close_writer(self) -> None:
        self.writer_closed = True
        self.readable.unpark_all()


@final
class _PipeEnd(trio.abc.Stream):
    """One end of a pipe: reads *inbound*, writes *outbound*."""

    def __init__(self, inbound: _Direction, outbound: _Direction) -> None:
        self._inbound = inbound
        self._outbound = outbound
        self._closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this pipe")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False
        if self._closed:
            raise trio.ClosedResourceError("this end of the pipe is closed")
        if self._outbound.reader_closed:
            raise trio.BrokenResourceError("the other end of the pipe is closed")
        self._outbound.data += data
        self._outbound.readable.unpark_all()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end of the pipe is closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this pipe")
        inbound = self._inbound
        self._receiving = True
        try:
            if inbound.data or inbound.writer_closed or inbound.reader_closed:
                await trio.lowlevel.checkpoint()
            while not (inbound.data or inbound.writer_closed or inbound.reader_closed):
                await inbound.readable.park()
        finally:
            self._receiving = False
        if self._closed:
            raise trio.ClosedResourceError("this end of the pipe is closed")
        size = len(inbound.data) if max_bytes is None else max_bytes
        data = bytes(inbound.data[:size])
        del inbound.data[:size]
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbound.close_reader()
            self._outbound.close_writer()
        await trio.lowlevel.checkpoint()


def pipe_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected `trio.abc.Stream` ends: what one sends, the other receives."""
    left_to_right, right_to_left = _Direction(), _Direction()
    return _PipeEnd(right_to_left, left_to_right), _PipeEnd(left_to_right, right_to_left)
