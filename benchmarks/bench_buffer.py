"""EventBuffer emit + flush throughput against the least work any consolidating buffer must do.

Workload: 70 % messages.upsert, 20 % messages.update, 10 %
message-receipt.update over 1,000 message keys, buffering on, a flush every
1,000 events. The baseline, measured in the same run and interleaved with
the buffer: a plain function that computes the same message key and does one
dict upsert per event. Target: the buffer reaches >= 0.33 of the baseline's
events per second.

    python benchmarks/bench_buffer.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import tenantry

KEYS = 1_000
FLUSH_EVERY = 1_000
MIX = (("messages.upsert", 0.7), ("messages.update", 0.2), ("message-receipt.update", 0.1))


def make_events(n: int, seed: int = 3) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    keys = [
        {
            "remoteJid": f"55119{i % 97:05d}@s.whatsapp.net",
            "id": f"3EB0{i:08X}",
            "fromMe": i % 3 == 0,
        }
        for i in range(KEYS)
    ]
    types = rng.choices([t for t, _ in MIX], weights=[w for _, w in MIX], k=n)
    events = []
    for i, event_type in enumerate(types):
        key = keys[rng.randrange(KEYS)]
        if event_type == "messages.upsert":
            data = {"key": key, "message": {"conversation": f"hello {i}"}, "messageTimestamp": i}
        elif event_type == "messages.update":
            data = {"key": key, "update": {"status": rng.randrange(5)}}
        else:
            data = {"key": key, "receipt": {"userJid": "x@s.whatsapp.net", "readTimestamp": i}}
        events.append((event_type, data))
    return events


def run_buffer(events: Sequence[tuple[str, Any]]) -> float:
    buffer = tenantry.EventBuffer(
        tenantry.BufferConfig(always_buffer=True, max_items=10**9), clock=time.monotonic
    )
    emit, flush, take, settle = buffer.emit, buffer.flush, buffer.take_ready, buffer.settle
    gc.collect()
    start = time.perf_counter()
    for start_at in range(0, len(events), FLUSH_EVERY):
        for event_type, data in events[start_at : start_at + FLUSH_EVERY]:
            emit(event_type, data)
        flush()
        settle(take().count)  # received: this loop is the consumer
    elapsed = time.perf_counter() - start
    stats = buffer.stats
    assert stats.received == stats.delivered + stats.merged == len(events)
    return elapsed


def run_baseline(events: Sequence[tuple[str, Any]]) -> float:
    store: dict[Any, Any] = {}

    def upsert(event_type: str, data: Any) -> None:
        k = data["key"]
        store[(k["remoteJid"], k["id"], bool(k.get("fromMe", False)))] = data

    gc.collect()
    start = time.perf_counter()
    for start_at in range(0, len(events), FLUSH_EVERY):
        for event_type, data in events[start_at : start_at + FLUSH_EVERY]:
            upsert(event_type, data)
        store.clear()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=50_000)
    args = parser.parse_args()
    events = make_events(args.events)
    ratios, ours, base = [], [], []
    for r in range(args.rounds):
        # Alternate in chunks: this machine's speed drifts within seconds.
        t_ours = t_base = 0.0
        for start in range(0, len(events), args.chunk):
            part = events[start : start + args.chunk]
            if r % 2:
                t_base += run_baseline(part)
                t_ours += run_buffer(part)
            else:
                t_ours += run_buffer(part)
                t_base += run_baseline(part)
        ours.append(len(events) / t_ours)
        base.append(len(events) / t_base)
        ratios.append(t_base / t_ours)
    print(
        f"event buffer, {len(events):,} events (70% messages.upsert, 20% messages.update, "
        f"10% receipts; {KEYS:,} keys; flush every {FLUSH_EVERY:,}):"
    )
    print(f"  tenantry.EventBuffer   median {statistics.median(ours):>12,.0f} events/s")
    print(f"  baseline (dict upsert) median {statistics.median(base):>12,.0f} events/s")
    print(f"  ratio per round        {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"  median ratio           {statistics.median(ratios):.2f}   (target >= 0.33)")


if __name__ == "__main__":
    main()
