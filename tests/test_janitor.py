from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from helpers import living_tasks
from tenantry import BoundedCache, RemovalCause
from tenantry._janitor import CacheJanitor
from tenantry.lowlevel import run_janitor


def timed_cache(
    name: str, ttl: float | None, log: list[tuple[str, float]], **kwargs: Any
) -> BoundedCache[str, int]:
    def on_remove(key: str, value: int, cause: RemovalCause) -> None:
        assert cause is RemovalCause.EXPIRED
        log.append((key, trio.current_time()))

    return BoundedCache(name, 100, ttl, on_remove=on_remove, **kwargs)


async def test_purges_as_entries_fall_due_in_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    purged: list[tuple[str, float]] = []
    cache = timed_cache("c", 10.0, purged)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        await trio.sleep(1)  # the janitor is asleep, with nothing to wait for
        cache.set("a", 1)
        await trio.sleep(0.2)
        cache.set("b", 2)
        await trio.sleep(4.8)
        cache.set("c", 3)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    # b falls due 0.2 s after a: it waits for the next batch, one resolution later.
    assert purged == [("a", 11.0), ("b", 12.0), ("c", 16.0)]


async def test_wakes_for_entries_written_while_it_sleeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    purged: list[tuple[str, float]] = []
    cache = timed_cache("c", None, purged)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        await trio.sleep(50)  # nothing to expire: the janitor sleeps forever
        cache.set("late", 1, ttl=3)
        await trio.sleep(10)
        cache.set("long", 2, ttl=100)
        await trio.sleep(1)
        cache.set("sooner", 3, ttl=2)  # earlier than the deadline it sleeps on
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert purged == [("late", 53.0), ("sooner", 63.0), ("long", 160.0)]


async def test_an_idle_janitor_does_not_poll(autojump_clock: trio.testing.MockClock) -> None:
    reads = 0

    def counting_clock() -> float:
        nonlocal reads
        reads += 1
        return trio.current_time()

    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=5, clock=counting_clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        await trio.sleep(86_400)
        nursery.cancel_scope.cancel()
    assert reads <= 2


async def test_detaches_when_its_scope_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=5)
    with trio.move_on_after(1):
        await run_janitor([cache])
    cache.set_wakeup(lambda delay: None)  # free again: no RuntimeError


async def test_one_janitor_per_cache(autojump_clock: trio.testing.MockClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already has a janitor"):
            await run_janitor([cache])
        nursery.cancel_scope.cancel()


async def test_deadlines_created_by_callbacks_during_a_purge_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    purged: list[tuple[str, float]] = []
    downstream = timed_cache("downstream", 5.0, purged)

    def forward(key: str, value: int, cause: RemovalCause) -> None:
        downstream.set(f"{key}'", value)

    upstream: BoundedCache[str, int] = BoundedCache("upstream", 10, 10.0, on_remove=forward)
    async with trio.open_nursery() as nursery:
        # downstream first: upstream's purge writes into a cache already purged.
        nursery.start_soon(run_janitor, [downstream, upstream])
        upstream.set("a", 1)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert purged == [("a'", 15.0)]


async def test_logs_a_pending_eviction_summary_when_due(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry.cache")
    cache: BoundedCache[int, int] = BoundedCache("small", 2, eviction_log_interval=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        for i in range(10):
            cache.set(i, i)
        await trio.sleep(59)
        assert [r.evicted for r in caplog.records if hasattr(r, "evicted")] == [1]
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [r.evicted for r in caplog.records if hasattr(r, "evicted")] == [1, 7]


async def test_serves_caches_on_other_clocks(autojump_clock: trio.testing.MockClock) -> None:
    purged: list[tuple[str, float]] = []
    offset = 1_000.0
    cache = timed_cache("c", 4.0, purged, clock=lambda: trio.current_time() + offset)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, [cache])
        cache.set("a", 1)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert purged == [("a", 4.0)]


@pytest.mark.parametrize("resolution", [0, -1, float("nan")])
async def test_rejects_a_bad_resolution(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        await run_janitor([], resolution=resolution)


# -- CacheJanitor: a task only while there is a deadline --------------------------


async def test_an_on_demand_janitor_has_no_task_while_nothing_can_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    purged: list[tuple[str, float]] = []
    cache = timed_cache("c", None, purged)
    async with trio.open_nursery() as nursery:
        before = living_tasks()
        with CacheJanitor(nursery, [cache, timed_cache("empty", 5.0, purged)]) as janitor:
            cache.set("forever", 1)
            await trio.sleep(3600)
            assert not janitor.running
            assert living_tasks() == before
            cache.set("a", 2, ttl=10)  # a deadline: the task starts
            await trio.testing.wait_all_tasks_blocked()
            assert janitor.running
            assert living_tasks() == before + 1
            await trio.sleep(20)
            assert not janitor.running  # nothing left to expire: the task ended
            assert living_tasks() == before
            cache.set("b", 3, ttl=5)  # and starts again
            await trio.sleep(10)
    assert purged == [("a", 3610.0), ("b", 3625.0)]


async def test_an_on_demand_janitor_starts_for_deadlines_it_finds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    purged: list[tuple[str, float]] = []
    cache = timed_cache("c", 5.0, purged)
    cache.set("a", 1)
    async with trio.open_nursery() as nursery:
        with CacheJanitor(nursery, [cache]) as janitor:
            assert janitor.running
            await trio.sleep(10)
            assert not janitor.running
    assert purged == [("a", 5.0)]


async def test_an_on_demand_janitor_logs_an_eviction_summary_when_due(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry.cache")
    cache: BoundedCache[int, int] = BoundedCache("small", 2, eviction_log_interval=60)
    async with trio.open_nursery() as nursery:
        with CacheJanitor(nursery, [cache]) as janitor:
            for i in range(10):
                cache.set(i, i)
            await trio.sleep(61)
            assert not janitor.running
    assert [r.evicted for r in caplog.records if hasattr(r, "evicted")] == [1, 7]


async def test_an_on_demand_janitor_detaches_and_ends_with_its_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=5)
    async with trio.open_nursery() as nursery:
        before = living_tasks()
        with CacheJanitor(nursery, [cache]) as janitor:
            cache.set("a", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert janitor.running
        await trio.testing.wait_all_tasks_blocked()
        assert not janitor.running
        assert living_tasks() == before
        cache.set("b", 2, ttl=1)  # no janitor to wake, and no error
        cache.set_wakeup(lambda delay: None)  # free again: no RuntimeError
        with (
            pytest.raises(RuntimeError, match="already has a janitor"),
            CacheJanitor(nursery, [cache]),
        ):
            pass  # pragma: no cover


async def test_an_on_demand_janitor_attaches_all_or_none() -> None:
    free: BoundedCache[str, int] = BoundedCache("free", 10, ttl=5)
    taken: BoundedCache[str, int] = BoundedCache("taken", 10, ttl=5)
    taken.set_wakeup(lambda delay: None)
    async with trio.open_nursery() as nursery:
        with (
            pytest.raises(RuntimeError, match="already has a janitor"),
            CacheJanitor(nursery, [free, taken]),
        ):
            pass  # pragma: no cover
    free.set_wakeup(lambda delay: None)  # left free
