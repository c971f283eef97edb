"""BoundedCache against cachetools.TTLCache, measured in the same process.

Workload: 80 % get / 20 % set, keys drawn Zipf-like (exponent
0.99) from 20,000 keys, capacity 10,000, TTL 300 s, the clock advancing 1 ms
per operation. Both caches run the same operation list, interleaved over
several rounds (alternating which goes first), and the script prints the
median ratio of operations per second. Targets: >= 3.0x the throughput of
cachetools.TTLCache, and <= 200 bytes of memory overhead per entry at
1,000,000 entries (tracemalloc; keys and values created beforehand).

    python benchmarks/bench_cache.py [--ops N] [--rounds R] [--entries M]
"""

from __future__ import annotations

import argparse
import bisect
import functools
import gc
import itertools
import logging
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import cachetools

import tenantry

CAPACITY = 10_000
KEYSPACE = 20_000
TTL = 300.0
TICK = 0.001
ZIPF_EXPONENT = 0.99
GET_SHARE = 0.8


class Tick:
    """A clock the benchmark loop advances; read through a C-level callable."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def reader(self) -> Callable[[], float]:
        return functools.partial(getattr, self, "now")


def make_ops(n: int, seed: int = 2) -> list[tuple[str, bool]]:
    """*n* (key, is_set) pairs: Zipf-like keys, 20 % sets."""
    rng = random.Random(seed)
    weights = [1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, KEYSPACE + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    names = [f"key-{i}" for i in range(KEYSPACE)]
    rng.shuffle(names)  # popularity must not follow insertion order
    ops = []
    for _ in range(n):
        key = names[bisect.bisect_left(cumulative, rng.random() * total)]
        ops.append((key, rng.random() >= GET_SHARE))
    return ops


class Contender:
    """One cache under test, replaying the operation list chunk by chunk."""

    def __init__(self, name: str, make: Callable[[Callable[[], float]], Any], put: str) -> None:
        self.name = name
        self.tick = Tick()
        self.cache = make(self.tick.reader())
        self.get = self.cache.get
        self.put = getattr(self.cache, put)
        self.seconds = 0.0

    def replay(self, ops: Sequence[tuple[str, bool]]) -> None:
        tick, get, put, step = self.tick, self.get, self.put, TICK
        start = time.perf_counter()
        for key, is_set in ops:
            tick.now += step
            if is_set:
                put(key, key)
            else:
                get(key)
        self.seconds += time.perf_counter() - start


def contenders() -> tuple[Contender, Contender]:
    ours = Contender(
        "tenantry.BoundedCache",
        lambda clock: tenantry.BoundedCache("bench", CAPACITY, TTL, clock=clock),
        "set",
    )
    theirs = Contender(
        "cachetools.TTLCache",
        lambda clock: cachetools.TTLCache(CAPACITY, TTL, timer=clock),
        "__setitem__",
    )
    return ours, theirs


def one_round(ops: Sequence[tuple[str, bool]], chunk: int, ours_first: bool) -> tuple[float, float]:
    """Both caches replay *ops*, alternating every *chunk* operations.

    This machine's speed drifts by tens of percent within seconds; switching
    often makes both contenders see the same drift, so their ratio is stable
    even when the absolute rates are not.
    """
    ours, theirs = contenders()
    gc.collect()
    for start in range(0, len(ops), chunk):
        part = ops[start : start + chunk]
        first, second = (ours, theirs) if ours_first else (theirs, ours)
        first.replay(part)
        second.replay(part)
        ours_first = not ours_first
    assert len(ours.cache) <= CAPACITY
    return len(ops) / ours.seconds, len(ops) / theirs.seconds


def throughput(ops: Sequence[tuple[str, bool]], rounds: int, chunk: int) -> float:
    ratios, ours_rates, theirs_rates = [], [], []
    for r in range(rounds):
        ours, theirs = one_round(ops, chunk, ours_first=r % 2 == 0)
        ours_rates.append(ours)
        theirs_rates.append(theirs)
        ratios.append(ours / theirs)
    ratio = statistics.median(ratios)
    print(
        f"throughput, {len(ops):,} ops (80% get / 20% set, zipf {ZIPF_EXPONENT}, "
        f"{KEYSPACE:,} keys, capacity {CAPACITY:,}, TTL {TTL:.0f} s):"
    )
    print(f"  tenantry.BoundedCache  median {statistics.median(ours_rates):>12,.0f} ops/s")
    print(f"  cachetools.TTLCache    median {statistics.median(theirs_rates):>12,.0f} ops/s")
    print(f"  ratio per round        {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"  median ratio           {ratio:.2f}x   (target >= 3.0x)")
    return ratio


def overhead_per_entry(make: Callable[[Tick], Any], put_name: str, n: int) -> float:
    """Bytes the cache allocates per entry for *n* prepared keys and values."""
    keys = [f"entry-{i}" for i in range(n)]
    values = [object() for _ in range(n)]
    tick = Tick()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = make(tick)
    put = getattr(cache, put_name)
    for key, value in zip(keys, values, strict=True):
        tick.now += TICK / 1000  # its own write time, yet none expires during the fill
        put(key, value)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del cache
    return (after - before) / n


def memory(n: int) -> None:
    ours = overhead_per_entry(
        lambda t: tenantry.BoundedCache("mem", n, TTL, clock=t.reader()), "set", n
    )
    theirs = overhead_per_entry(
        lambda t: cachetools.TTLCache(n, TTL, timer=t.reader()), "__setitem__", n
    )
    print(f"memory overhead per entry at {n:,} entries (tracemalloc):")
    print(f"  tenantry.BoundedCache  {ours:7.1f} bytes   (target <= 200)")
    print(f"  cachetools.TTLCache    {theirs:7.1f} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args()
    logging.getLogger("tenantry").setLevel(logging.ERROR)  # the limit warning is expected here
    throughput(make_ops(args.ops), args.rounds, args.chunk)
    memory(args.entries)


if __name__ == "__main__":
    main()
