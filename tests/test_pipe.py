"""The in-memory pipe under MemoryConnector: trio's own stream conformance checks, and more."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tenantry.testing._pipe import pipe_pair


async def test_passes_trios_two_way_stream_checks() -> None:
    async def make() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        return pipe_pair()

    await trio.testing.check_two_way_stream(make, None)


async def test_reads_at_most_max_bytes_and_keeps_the_rest() -> None:
    left, right = pipe_pair()
    await left.send_all(b"hello ")
    await left.send_all(b"world")
    assert await right.receive_some(3) == b"hel"
    assert await right.receive_some() == b"lo world"


async def test_the_peer_reads_what_was_sent_before_the_close_then_eof() -> None:
    left, right = pipe_pair()
    await left.send_all(b"last words")
    await left.aclose()
    assert await right.receive_some() == b"last words"
    assert await right.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await right.send_all(b"anyone?")
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")


async def test_a_cancelled_read_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    left, right = pipe_pair()
    with trio.move_on_after(1):  # autojump: the read parks, then is cancelled
        await right.receive_some()
    await left.send_all(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await right.receive_some()
    assert await right.receive_some() == b"kept"


async def test_closing_wakes_a_parked_reader(autojump_clock: trio.testing.MockClock) -> None:
    left, right = pipe_pair()
    async with trio.open_nursery() as nursery:
        outcomes: list[object] = []

        async def read() -> None:
            try:
                outcomes.append(await right.receive_some())
            except trio.ClosedResourceError as exc:
                outcomes.append(exc)

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], trio.ClosedResourceError)
    await left.aclose()
