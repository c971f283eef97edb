from __future__ import annotations

import logging
import math
import time
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from helpers import FakeClock
from tenantry import BoundedCache, CacheStats, RemovalCause

Removal = tuple[Any, Any, RemovalCause]


def recording_cache(
    clock: FakeClock, max_keys: int = 3, ttl: float | None = 10.0
) -> tuple[BoundedCache[Any, Any], list[Removal]]:
    removed: list[Removal] = []
    cache: BoundedCache[Any, Any] = BoundedCache(
        "test", max_keys, ttl, clock=clock, on_remove=lambda *r: removed.append(r)
    )
    return cache, removed


# -- construction -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_keys": 0}, ValueError, "max_keys"),
        ({"max_keys": -5}, ValueError, "max_keys"),
        ({"max_keys": 2.5}, TypeError, "max_keys"),
        ({"max_keys": True}, TypeError, "max_keys"),
        ({"max_keys": "10"}, TypeError, "max_keys"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": "5"}, TypeError, "ttl"),
        ({"ttl": False}, TypeError, "ttl"),
        ({"eviction_log_interval": 0}, ValueError, "eviction_log_interval"),
        ({"on_remove": 42}, TypeError, "on_remove"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_invalid_arguments_name_the_field(
    kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    args: dict[str, Any] = {"name": "c", "max_keys": 10} | kwargs
    with pytest.raises(error, match=field):
        BoundedCache(**args)


def test_infinite_ttl_means_no_expiry(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 2, math.inf, clock=clock)
    assert cache.ttl is None
    cache.set("a", 1)
    clock.now += 1e9
    assert cache.get("a") == 1
    assert cache.ttl_of("a") is None


def test_repr_and_properties(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("user_devices", 5000, 300, clock=clock)
    cache.set("a", 1)
    assert repr(cache) == "<BoundedCache 'user_devices' entries=1 max_keys=5000 ttl=300.0>"
    assert (cache.name, cache.max_keys, cache.ttl, cache.clock) == (
        "user_devices",
        5000,
        300.0,
        clock,
    )


# -- the seed's own tests -----------------------------------------------------


def test_seed_overflow_keeps_the_limit(clock: FakeClock) -> None:
    cache: BoundedCache[str, str] = BoundedCache("user_devices", 5000, 300, clock=clock)
    for i in range(6000):
        cache.set(f"key_{i}", f"value_{i}")
    assert len(cache) == 5000
    assert cache.stats.evictions == 1000


def test_seed_lru_keeps_a_key_that_was_read(clock: FakeClock) -> None:
    cache: BoundedCache[str, str] = BoundedCache("user_devices", 5000, 300, clock=clock)
    for i in range(5000):
        cache.set(f"key_{i}", f"value_{i}")
    assert cache.get("key_0") == "value_0"
    for i in range(5000, 6000):
        cache.set(f"key_{i}", f"value_{i}")
    assert "key_0" in cache
    assert "key_1" not in cache
    assert "key_1000" not in cache
    assert "key_1001" in cache


# -- recency ------------------------------------------------------------------


def test_set_on_a_full_cache_evicts_exactly_the_lru(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    for key in "abc":
        cache.set(key, key.upper())
    cache.get("a")
    cache.set("b", "B2")  # a write refreshes too
    cache.set("d", "D")
    assert removed == [("c", "C", RemovalCause.EVICTED)]
    assert cache.keys() == ["a", "b", "d"]


def test_membership_does_not_refresh(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    for key in "abc":
        cache.set(key, key)
    assert "a" in cache
    cache.set("d", "d")
    assert removed == [("a", "a", RemovalCause.EVICTED)]


def test_touch_refreshes_recency_and_ttl(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    for key in "abc":
        cache.set(key, key)
    clock.now += 8
    assert cache.touch("a")
    clock.now += 8  # b and c are 16 s old, a was touched 8 s ago
    assert cache.keys() == ["a"]
    assert cache.ttl_of("a") == pytest.approx(2.0)
    assert {r[0] for r in removed} == {"b", "c"}


def test_replacing_a_value_is_not_a_removal(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    cache.set("a", 1)
    cache.set("a", 2)
    assert cache.get("a") == 2
    assert removed == []
    assert cache.stats.sets == 2


# -- expiry -------------------------------------------------------------------


def test_an_expired_entry_is_never_returned(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    cache.set("a", 1)
    clock.now += 9.999
    assert cache.get("a") == 1
    clock.now += 0.001
    assert cache.get("a", "gone") == "gone"
    assert removed == [("a", 1, RemovalCause.EXPIRED)]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.expirations) == (1, 1, 1)


@pytest.mark.parametrize("probe", ["len", "keys", "contains", "ttl_of", "touch", "delete", "take"])
def test_every_read_hides_and_removes_expired_entries(clock: FakeClock, probe: str) -> None:
    cache, removed = recording_cache(clock)
    cache.set("a", 1)
    cache.set("b", 2, ttl=100)
    clock.now += 10
    probes: dict[str, Callable[[], bool]] = {
        "len": lambda: len(cache) == 1,
        "keys": lambda: cache.keys() == ["b"],
        "contains": lambda: "a" not in cache,
        "ttl_of": lambda: cache.ttl_of("a") is None,
        "touch": lambda: cache.touch("a") is False,
        "delete": lambda: cache.delete("a") is False,
        "take": lambda: cache.take("a", "none") == "none",
    }
    assert probes[probe]()
    assert removed == [("a", 1, RemovalCause.EXPIRED)]
    assert cache.stats.expirations == 1
    assert cache.stats.deletes == 0


def test_per_key_ttl_and_ttl_of(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, ttl=None)
    cache.set("forever", 1)
    cache.set("short", 2, ttl=2)
    cache.set("long", 3, ttl=50)
    assert cache.ttl_of("forever") is None
    assert cache.ttl_of("short") == 2.0
    assert cache.ttl_of("missing") is None
    clock.now += 2
    assert cache.keys() == ["forever", "long"]
    assert cache.ttl_of("long") == 48.0


def test_per_key_ttl_on_a_cache_with_a_default(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, max_keys=10, ttl=10)
    cache.set("default", 1)
    cache.set("short", 2, ttl=1)
    cache.set("never", 3, ttl=math.inf)
    assert cache.next_expiry == clock.now + 1
    clock.now += 5
    assert cache.purge_expired() == 1
    assert cache.next_expiry == clock.now + 5
    clock.now += 1000
    assert cache.keys() == ["never"]
    assert cache.next_expiry is None


def test_touch_keeps_a_keys_own_ttl_unless_given_one(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, ttl=10)
    cache.set("a", 1, ttl=100)
    clock.now += 50
    assert cache.touch("a")
    assert cache.ttl_of("a") == 100
    assert cache.touch("a", ttl=3)
    assert cache.ttl_of("a") == 3
    assert not cache.touch("missing")
    assert cache.stats.sets == 1  # a touch is not a set


def test_touch_keeps_an_explicit_never_expires(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, ttl=1)
    cache.set("pinned", 1, ttl=math.inf)
    assert cache.touch("pinned")
    clock.now += 100
    assert cache.get("pinned") == 1


def test_full_cache_prefers_the_earliest_expired_entry(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock, max_keys=3, ttl=10)
    cache.set("a", 1)  # expires at +10
    cache.set("b", 2, ttl=5)  # expires at +5
    cache.set("c", 3, ttl=100)
    cache.get("b")
    cache.get("a")  # LRU order now c, b, a
    clock.now += 11  # a and b have expired, c has not
    cache.set("d", 4)
    assert removed == [("b", 2, RemovalCause.EXPIRED)]  # the earliest, not the LRU
    cache.set("e", 5)
    assert removed[-1] == ("a", 1, RemovalCause.EXPIRED)
    cache.set("f", 6)
    assert removed[-1] == ("c", 3, RemovalCause.EVICTED)
    stats = cache.stats
    assert (stats.expirations, stats.evictions, stats.size) == (2, 1, 3)


def test_purge_expired_counts_and_orders(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock, max_keys=10, ttl=10)
    cache.set("a", 1)
    clock.now += 1
    cache.set("b", 2)
    cache.set("c", 3, ttl=5)
    assert cache.purge_expired() == 0
    clock.now += 20
    assert cache.purge_expired() == 3
    assert [r[0] for r in removed] == ["c", "a", "b"]
    assert cache.purge_expired() == 0


# -- removal ------------------------------------------------------------------


def test_delete_take_and_clear(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock, max_keys=10)
    for key in "abcd":
        cache.set(key, key.upper())
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.take("b") == "B"
    assert cache.take("b", 0) == 0
    cache.clear()
    assert len(cache) == 0
    assert removed == [
        ("a", "A", RemovalCause.DELETED),
        ("b", "B", RemovalCause.DELETED),
        ("c", "C", RemovalCause.CLEARED),
        ("d", "D", RemovalCause.CLEARED),
    ]
    stats = cache.stats
    assert (stats.deletes, stats.hits, stats.misses) == (2, 1, 1)


def test_clear_reports_expired_entries_as_expired(clock: FakeClock) -> None:
    cache, removed = recording_cache(clock)
    cache.set("old", 1)
    clock.now += 10
    cache.set("new", 2)
    cache.clear()
    assert removed == [("old", 1, RemovalCause.EXPIRED), ("new", 2, RemovalCause.CLEARED)]
    assert cache.stats.expirations == 1


def test_a_raising_callback_is_logged_and_harmless(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(key: object, value: object, cause: RemovalCause) -> None:
        raise RuntimeError(f"boom {key}")

    cache: BoundedCache[str, int] = BoundedCache("c", 2, clock=clock, on_remove=explode)
    with caplog.at_level(logging.ERROR, logger="tenantry.cache"):
        for i in range(5):
            cache.set(f"k{i}", i)
        assert cache.delete("k4")
    assert cache.keys() == ["k3"]
    assert cache.stats.evictions == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert errors[0].exc_info is not None
    assert "boom k0" in caplog.text
    assert errors[0].cache == "c"  # type: ignore[attr-defined]


def test_a_callback_that_writes_back_cannot_overfill(clock: FakeClock) -> None:
    def reinsert(key: str, value: int, cause: RemovalCause) -> None:
        if value < 50:
            cache.set(f"{key}+", value + 10)
        assert len(cache._data) <= 2

    cache: BoundedCache[str, int] = BoundedCache("c", 2, clock=clock, on_remove=reinsert)
    for i in range(10):
        cache.set(f"k{i}", i)
        assert len(cache._data) <= 2
    assert len(cache) == 2


def test_cancelled_is_never_swallowed_by_the_callback_guard(clock: FakeClock) -> None:
    class Stop(BaseException):
        pass

    def stop(*_: object) -> None:
        raise Stop

    cache: BoundedCache[str, int] = BoundedCache("c", 1, clock=clock, on_remove=stop)
    cache.set("a", 1)
    with pytest.raises(Stop):
        cache.set("b", 2)
    assert cache.keys() == ["b"]  # the cache was consistent before the callback ran


# -- stats --------------------------------------------------------------------


def test_stats_snapshot(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, max_keys=4)
    for key in "abcde":
        cache.set(key, 0)
    cache.get("e")
    cache.get("zz")
    cache.delete("e")
    clock.now += 100
    assert cache.get("d") is None
    assert cache.stats == CacheStats(
        name="test",
        size=0,
        max_keys=4,
        utilization=0.0,
        hits=1,
        misses=2,
        sets=5,
        deletes=1,
        evictions=1,
        expirations=3,
    )


@pytest.mark.parametrize("default_ttl", [10.0, None])
@pytest.mark.parametrize(
    ("operation", "error"),
    [
        pytest.param(lambda c: c.set(["k"], 1), TypeError, id="set-unhashable"),
        pytest.param(lambda c: c.set(["k"], 1, ttl=5.0), TypeError, id="set-unhashable-ttl"),
        pytest.param(lambda c: c.set("new", 1, ttl=0), ValueError, id="set-zero-ttl"),
        pytest.param(lambda c: c.set("a", 1, ttl="5"), TypeError, id="set-string-ttl"),
        pytest.param(lambda c: c.get(["k"]), TypeError, id="get-unhashable"),
        pytest.param(lambda c: c.take(["k"]), TypeError, id="take-unhashable"),
        pytest.param(lambda c: c.delete(["k"]), TypeError, id="delete-unhashable"),
        pytest.param(lambda c: c.touch(["k"]), TypeError, id="touch-unhashable"),
        pytest.param(lambda c: c.touch("a", ttl=-1.0), ValueError, id="touch-negative-ttl"),
        pytest.param(lambda c: ["k"] in c, TypeError, id="in-unhashable"),
    ],
)
def test_a_refused_operation_counts_nothing_and_changes_nothing(
    clock: FakeClock, default_ttl: float | None, operation: Any, error: type[Exception]
) -> None:
    cache, removed = recording_cache(clock, max_keys=2, ttl=default_ttl)
    cache.set("a", 1)
    cache.set("b", 2)  # full: a new key would evict
    before = cache.stats
    with pytest.raises(error):
        operation(cache)
    assert cache.stats == before
    assert cache.keys() == ["a", "b"]
    assert removed == []


def test_utilization(clock: FakeClock) -> None:
    cache, _ = recording_cache(clock, max_keys=4)
    cache.set("a", 1)
    assert cache.stats.utilization == 0.25


# -- bounded bookkeeping -------------------------------------------------------


def test_rewrites_do_not_grow_the_expiry_index_without_bound(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=1e6, clock=clock)
    for i in range(10_000):
        clock.now += 0.001
        cache.set(f"k{i % 3}", i)
        cache.set(f"own{i % 3}", i, ttl=5e5)
        cache.touch("k0")
    assert cache._fifo_keys is not None
    assert len(cache._fifo_keys) <= 4 * 10 + 64 + 1
    assert len(cache._heap) <= 4 * 10 + 64 + 1
    assert cache.get("k0") is not None
    assert sorted(cache.keys()) == ["k0", "k1", "k2", "own0", "own1", "own2"]


def test_alternating_ttls_cannot_pile_up_candidates(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 4, ttl=50, clock=clock)
    for i in range(5_000):
        cache.set("k", i, ttl=1000)
        cache.set("k", i)  # earlier than before: a new candidate
        cache.set("k", i, ttl=2)  # earlier still, in the heap
    assert cache._fifo_keys is not None
    assert len(cache._fifo_keys) + len(cache._heap) <= 2 * (4 * 4 + 64 + 1)
    clock.now += 2
    assert "k" not in cache


def test_a_removed_value_is_released_at_once(clock: FakeClock) -> None:
    class Value:
        pass

    cache: BoundedCache[str, Value] = BoundedCache("c", 2, ttl=100, clock=clock)
    value = Value()
    ref = weakref.ref(value)
    cache.set("a", value)
    cache.set("a", Value())
    cache.set("b", value, ttl=50)
    cache.delete("b")
    del value
    assert ref() is None


# -- clocks -------------------------------------------------------------------


def test_default_clock_outside_trio_is_monotonic() -> None:
    assert BoundedCache("c", 1).clock is time.monotonic


async def test_default_clock_inside_trio_is_the_runs_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=30)
    cache.set("a", 1)
    await trio.sleep(29.5)
    assert cache.get("a") == 1
    await trio.sleep(0.5)
    assert "a" not in cache


# -- logging ------------------------------------------------------------------


def test_logs_creation_limit_and_eviction_summaries(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantry.cache")
    cache: BoundedCache[int, int] = BoundedCache(
        "msg_retry", 100, ttl=3600, clock=clock, eviction_log_interval=60
    )
    created = caplog.records[-1]
    assert created.levelno == logging.DEBUG
    assert (created.cache, created.max_keys, created.ttl) == ("msg_retry", 100, 3600.0)  # type: ignore[attr-defined]

    for i in range(1000):
        clock.now += 0.01
        cache.set(i, i)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cache limit reached" in warnings[0].getMessage()
    assert (warnings[0].size, warnings[0].max_keys) == (100, 100)  # type: ignore[attr-defined]

    summaries = [r for r in caplog.records if r.getMessage().startswith("cache eviction")]
    # 900 evictions over 9 s: the first is logged at once, the rest wait for
    # the interval -- never one line per eviction.
    assert len(summaries) == 1
    assert summaries[0].evicted == 1  # type: ignore[attr-defined]
    assert cache.next_housekeeping == pytest.approx(clock.now - 9 + 60, abs=0.02)

    clock.now += 60
    cache.purge_expired()
    summaries = [r for r in caplog.records if r.getMessage().startswith("cache eviction")]
    assert len(summaries) == 2
    assert (summaries[1].evicted, summaries[1].remaining) == (899, 100)  # type: ignore[attr-defined]
    assert sum(s.evicted for s in summaries) == cache.stats.evictions  # type: ignore[attr-defined]


def test_wakeup_is_told_of_earlier_deadlines(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 1, ttl=10, clock=clock)
    delays: list[float] = []
    cache.set_wakeup(delays.append)
    with pytest.raises(RuntimeError, match="already has a janitor"):
        cache.set_wakeup(delays.append)
    cache.set("a", 1)
    cache.set("b", 2, ttl=3)
    cache.set("c", 3, ttl=30)  # later than the known deadline 3 s: no wakeup for it...
    # ...but it evicted b, and that eviction's summary is due in a minute.
    assert delays == [10.0, 3.0, 60.0]
    cache.set_wakeup(None)
    cache.set_wakeup(delays.append)


# -- memory of an empty cache ---------------------------------------------------


def test_an_empty_cache_allocates_its_expiry_index_lazily(clock: FakeClock) -> None:
    cache: BoundedCache[str, int] = BoundedCache("c", 10, ttl=5, clock=clock)
    assert cache._fifo_keys is None
    assert cache._fifo_expiry is None
    assert cache.next_expiry is None
    assert cache.purge_expired() == 0
    assert len(cache) == 0
    cache.set("forever", 0, ttl=math.inf)  # no deadline: still nothing to index
    assert cache._fifo_keys is None
    cache.set("a", 1)
    assert cache.next_expiry == clock.now + 5
    cache.clear()
    assert cache._fifo_keys is None
    assert cache._fifo_expiry is None
    cache.set("b", 2)
    clock.now += 5
    assert "b" not in cache
    assert cache.stats.expirations == 1


def test_an_empty_cache_is_small() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        caches: list[BoundedCache[str, object]] = [
            BoundedCache(f"c{i}", 10_000, ttl=300.0) for i in range(100)
        ]
        per_cache = (tracemalloc.get_traced_memory()[0] - before) / len(caches)
    finally:
        tracemalloc.stop()
    assert per_cache < 700  # two empty deques alone would be over 1,200 bytes
