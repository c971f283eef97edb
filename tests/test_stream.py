from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from helpers import auto_flush, collect_timed
from tenantry import Batch, BufferConfig, EventBuffer, EventStream, FlushReason


def stream(**config: Any) -> EventStream:
    return EventStream(EventBuffer(BufferConfig(**config), tenant_id="t"))


async def test_auto_flush_waits_one_interval_from_the_first_pending_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True, flush_interval=5.0)
    got: list[tuple[float, Batch]] = []
    async with trio.open_nursery() as nursery, events.subscribe() as channel:
        auto_flush(events, nursery)
        nursery.start_soon(collect_timed, channel, got)
        await trio.sleep(100)  # idle: nothing is ever flushed
        await events.emit("chats.update", {"id": 1})
        await trio.sleep(3)
        await events.emit("chats.update", {"id": 2})
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(when, batch.reason, batch.count) for when, batch in got] == [
        (105.0, FlushReason.INTERVAL, 2)
    ]
    assert events.buffer.stats.flushes[FlushReason.INTERVAL] == 1


async def test_flush_rate_is_bounded_by_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True, flush_interval=5.0)
    async with trio.open_nursery() as nursery:
        auto_flush(events, nursery)
        for i in range(600):  # an event every 0.1 s for a minute
            await events.emit("chats.update", {"id": i % 7})
            await trio.sleep(0.1)
        await trio.sleep(0.5)  # the last flush of the minute falls due at 60 s
        nursery.cancel_scope.cancel()
    flushes = events.buffer.stats.flushes
    assert flushes[FlushReason.INTERVAL] == 12  # 60 s / 5 s
    assert sum(flushes.values()) == 12


async def test_size_trigger_publishes_before_emit_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True, max_items=3)
    async with events.subscribe() as channel:
        for i in range(3):
            await events.emit("chats.update", {"id": i})
        batch = await channel.receive()
    assert (batch.reason, batch.count) == (FlushReason.SIZE, 3)


async def test_a_buffering_block_is_published_when_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream()
    got: list[tuple[float, Batch]] = []
    async with trio.open_nursery() as nursery, events.subscribe() as channel:
        auto_flush(events, nursery)
        nursery.start_soon(collect_timed, channel, got)
        await trio.sleep(1)
        with events.buffer.buffering():
            await events.emit("chats.update", {"id": 1})
            await events.emit("chats.update", {"id": 1})
            await trio.sleep(2)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert [(when, b.reason, b.count) for when, b in got] == [(3.0, FlushReason.EXPLICIT, 1)]


async def test_backpressure_waits_for_a_slow_subscriber_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream()
    emitted = 0

    async def produce() -> None:
        nonlocal emitted
        for i in range(10):
            await events.emit("x", i)
            emitted += 1

    async with events.subscribe(max_pending=2) as channel, trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await trio.testing.wait_all_tasks_blocked()
        assert emitted == 2  # the third publish waits for room
        received = [(await channel.receive()).seq for _ in range(10)]
    assert received == list(range(1, 11))
    assert emitted == 10


async def test_concurrent_publishers_keep_batch_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True, flush_interval=0.05, max_items=4)
    got: list[tuple[float, Batch]] = []

    async def feed(offset: int) -> None:
        for i in range(200):
            await events.emit("chats.update" if i % 3 else "connection.update", {"id": offset + i})
            await trio.sleep(0.01 * (i % 5))

    async with trio.open_nursery() as nursery, events.subscribe(max_pending=1) as channel:
        auto_flush(events, nursery)
        nursery.start_soon(collect_timed, channel, got)
        async with trio.open_nursery() as feeders:
            feeders.start_soon(feed, 0)
            feeders.start_soon(feed, 1000)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    seqs = [batch.seq for _, batch in got]
    assert seqs == list(range(1, len(seqs) + 1))
    stats = events.buffer.stats
    assert sum(batch.count for _, batch in got) == stats.delivered
    assert stats.received == stats.delivered + stats.merged


async def test_listeners_get_each_event_and_can_be_removed() -> None:
    events = stream(always_buffer=True)
    seen: list[Any] = []
    handle = events.on("chats.update", seen.append)
    events.on("chats.upsert", lambda data: seen.append(("upsert", data)))
    await events.emit("chats.update", {"id": 1})
    await events.emit("chats.update", {"id": 2})
    events.buffer.flush()
    await events.publish_ready()
    handle.remove()
    handle.remove()
    await events.emit("chats.update", {"id": 3})
    events.buffer.flush()
    await events.publish_ready()
    assert seen == [{"id": 1}, {"id": 2}]
    assert "chats.update" in repr(handle)


async def test_a_raising_listener_fails_the_publisher_after_subscribers_got_the_batch() -> None:
    events = stream()

    def broken(data: Any) -> None:
        raise ZeroDivisionError(data)

    events.on("x", broken)
    async with events.subscribe() as channel:
        with pytest.raises(ZeroDivisionError):
            await events.emit("x", 1)
        assert (await channel.receive()).count == 1


async def test_a_raising_listener_fails_the_owning_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True)
    events.on("x", lambda data: 1 / 0)
    with pytest.RaisesGroup(ZeroDivisionError):
        async with trio.open_nursery() as nursery:
            auto_flush(events, nursery)
            events.buffer.emit("x", 1)
            await trio.sleep(60)


async def test_close_delivers_everything_then_ends_subscribers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True)
    got: list[tuple[float, Batch]] = []
    events.on("x", lambda data: None)
    async with trio.open_nursery() as nursery, events.subscribe() as channel:
        nursery.start_soon(collect_timed, channel, got)
        await events.emit("x", 1)
        await events.emit("chats.update", {"id": 1})
        await events.aclose()
    assert [(b.reason, b.count) for _, b in got] == [(FlushReason.CLOSE, 2)]
    assert events.closed
    assert events.subscribers == 0
    with pytest.raises(trio.ClosedResourceError):
        await events.emit("x", 2)
    with pytest.raises(trio.ClosedResourceError):
        events.on("x", print)
    with pytest.raises(trio.ClosedResourceError):
        async with events.subscribe():
            pass
    await events.aclose()  # idempotent


async def test_close_waits_for_subscribers_to_drain(autojump_clock: trio.testing.MockClock) -> None:
    events = stream(always_buffer=True)
    drained_at: list[float] = []

    async def slow(channel: trio.abc.ReceiveChannel[Batch]) -> None:
        async for _ in channel:
            await trio.sleep(1)
        drained_at.append(trio.current_time())

    async with trio.open_nursery() as nursery, events.subscribe(max_pending=5) as channel:
        nursery.start_soon(slow, channel)
        for i in range(3):
            events.buffer.emit("x", i)
            events.buffer.flush()
        await events.aclose(grace=10)
        closed_at = trio.current_time()
    assert drained_at == [3.0]  # a second per batch; close itself had nothing left
    assert closed_at == 3.0


async def test_close_is_bounded_by_grace_and_counts_what_it_lost(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    events = stream(always_buffer=True)
    async with events.subscribe(max_pending=1):  # never reads
        for i in range(3):
            events.buffer.emit("x", i)
            events.buffer.flush()
        with caplog.at_level(logging.WARNING, logger="tenantry.events"):
            await events.aclose(grace=2)
        assert trio.current_time() == 2.0
    assert events.lost == 3  # one batch sat in the channel, two could not be published
    assert "3 events lost, 1 subscribers had not drained" in caplog.text


async def test_close_runs_even_when_the_owner_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True)
    got: list[tuple[float, Batch]] = []
    async with trio.open_nursery() as nursery, events.subscribe() as channel:
        nursery.start_soon(collect_timed, channel, got)
        await events.emit("x", 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await events.aclose()
    assert [b.reason for _, b in got] == [FlushReason.CLOSE]


async def test_a_subscriber_that_leaves_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    events = stream()
    async with events.subscribe() as channel:
        await channel.aclose()
        await events.emit("x", 1)
        assert events.subscribers == 0


async def test_validation() -> None:
    with pytest.raises(TypeError, match="buffer"):
        EventStream("nope")  # type: ignore[arg-type]
    events = stream()
    with pytest.raises(ValueError, match="max_pending"):
        async with events.subscribe(max_pending=0):
            pass
    with pytest.raises(TypeError, match="listener"):
        events.on("x", 5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="owner"):
        EventStream(events.buffer)
    assert "open" in repr(events)


async def test_close_releases_listeners(autojump_clock: trio.testing.MockClock) -> None:
    events = stream()

    class Handler:
        def __call__(self, data: Any) -> None:
            pass

    handler = Handler()
    events.on("x", handler)
    ref = weakref.ref(handler)
    del handler
    await events.aclose()
    gc.collect()
    assert ref() is None


async def test_on_demand_auto_flush_runs_only_while_events_are_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True, flush_interval=5.0)
    got: list[tuple[float, Batch]] = []
    starts = 0
    async with trio.open_nursery() as nursery, events.subscribe() as channel:
        nursery.start_soon(collect_timed, channel, got)

        def start() -> None:
            nonlocal starts
            starts += 1
            nursery.start_soon(events.auto_flush_while_pending)

        events.flush_on_demand(start)
        await trio.sleep(100)
        assert starts == 0  # idle: no task, never woken
        for i in range(600):  # an event every 0.1 s for a minute
            await events.emit("chats.update", {"id": i % 7})
            await trio.sleep(0.1)
        await trio.sleep(10)
        assert starts == 12  # one task per interval: it ends each time the buffer is empty
        assert events.buffer.stats.flushes[FlushReason.INTERVAL] == 12
        with events.buffer.buffering():
            await events.emit("chats.update", {"id": 1})
        await trio.testing.wait_all_tasks_blocked()
        assert starts == 13  # the block's batch is published by a task of its own
        nursery.cancel_scope.cancel()
    flushes = events.buffer.stats.flushes
    assert (flushes[FlushReason.INTERVAL], flushes[FlushReason.EXPLICIT]) == (12, 1)
    assert [when for when, _ in got][:2] == pytest.approx([105.0, 110.0], abs=0.2)
    assert got[-1][1].reason is FlushReason.EXPLICIT


def accounted(events: EventStream) -> int:
    """Every event the buffer received, by where it is now: it must equal ``received``."""
    stats = events.buffer.stats
    return stats.delivered + stats.merged + stats.lost + stats.pending + stats.in_flight


async def test_batches_a_subscriber_never_took_are_lost_at_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True)
    async with events.subscribe(max_pending=4) as channel:
        for size in (5, 6, 6):  # 17 events in three batches: they fit in the channel
            for i in range(size):
                events.buffer.emit("x", i)
            events.buffer.flush()
            await events.publish_ready()
        assert events.buffer.stats.delivered == 0  # in the channel, not yet received
        assert events.buffer.stats.in_flight == 17
        first = await channel.receive()
        assert events.buffer.stats.delivered == first.count == 5
        await events.aclose(grace=2)  # the subscriber never takes the other two
        assert trio.current_time() == 2.0
    stats = events.buffer.stats
    assert (stats.delivered, stats.lost, stats.in_flight) == (5, 12, 0)
    assert events.lost == 12
    assert accounted(events) == stats.received == 17


async def test_with_several_subscribers_an_event_is_delivered_once_all_have_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream()
    async with events.subscribe() as fast, events.subscribe() as slow:
        for i in range(3):
            await events.emit("x", i)
        for _ in range(3):
            await fast.receive()
        assert (events.buffer.stats.delivered, events.buffer.stats.in_flight) == (0, 3)
        await slow.receive()
        assert (events.buffer.stats.delivered, events.buffer.stats.in_flight) == (1, 2)
        assert accounted(events) == 3
    # the slow subscriber left with two batches unread: they are lost, once each
    stats = events.buffer.stats
    assert (stats.delivered, stats.lost, stats.in_flight) == (1, 2, 0)
    assert accounted(events) == stats.received == 3


async def test_a_close_without_grace_waits_for_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = stream(always_buffer=True)
    async with events.subscribe() as channel:
        await events.emit("x", 1)
        await events.aclose(grace=0)
        assert trio.current_time() == 0.0
        with pytest.raises(trio.EndOfChannel):
            await channel.receive()
    assert (events.buffer.stats.lost, events.buffer.stats.delivered) == (1, 0)
    with pytest.raises(ValueError, match="grace"):
        await stream().aclose(grace=-1)
    with pytest.raises(TypeError, match="grace"):
        await stream().aclose(grace=False)
