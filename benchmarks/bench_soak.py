"""Virtual soak speed: how long an hour of a hundred tenants' faulty traffic takes.

100 tenants, one virtual hour, a fault every two minutes per
tenant (the soak's defaults otherwise: 0.5 events/s each, every fault kind),
on `trio.testing.MockClock` with the in-memory connector. The target is a
wall time of at most 60 s on the 2-core development machine; the soak
itself checks its invariants, and a broken one fails the benchmark. Also
shown: how many times faster than real time and the wall time per event.
It runs as the command does, under `tenantry.cli.collecting_less`;
``--default-gc`` measures it under CPython's default collector thresholds
(in a process of its own: a second soak in the same process would inherit
the first one's heap). The RSS growth after the warm-up is shown too.

``--trace-growth N`` finds what grows instead: it traces allocations
(several times slower) and prints the N source lines whose live memory grew
most from the end of the first quarter to the end of the run, after a full
collection at each end. A flat soak shows caches settling and noise of a few
KB; a leak shows its line at the top.

    python benchmarks/bench_soak.py [--tenants N] [--duration SECONDS] [--seed S] [--default-gc]
                                    [--trace-growth N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
import time
import tracemalloc

import trio
import trio.testing

from tenantry.cli import SoakConfig, SoakProgress, collecting_less, run_soak

TARGET_SECONDS = 60.0
"""For 100 tenants and one virtual hour."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3600.0, help="virtual seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--default-gc", action="store_true", help="CPython's collector thresholds, untouched"
    )
    parser.add_argument(
        "--trace-growth", type=int, metavar="N", help="show the N lines whose memory grew most"
    )
    args = parser.parse_args()
    logging.getLogger("tenantry").setLevel(logging.ERROR)  # the faults' warnings are expected
    config = SoakConfig(tenants=args.tenants, duration=args.duration, seed=args.seed)
    collector = contextlib.nullcontext() if args.default_gc else collecting_less()
    snapshots: list[tracemalloc.Snapshot] = []
    if args.trace_growth:
        tracemalloc.start()

    marks = (0.25, 0.99)  # the end of the first quarter; the last progress report

    def at_quarters(progress: SoakProgress) -> None:
        taken = len(snapshots)
        if taken < len(marks) and progress.elapsed >= marks[taken] * args.duration:
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())

    with collector:
        start = time.perf_counter()
        report = trio.run(
            lambda: run_soak(config, on_progress=at_quarters if args.trace_growth else None),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        wall = time.perf_counter() - start
    tracemalloc.stop()
    events = report.events()
    reconnects = sum(report.reconnects.values())
    print(f"virtual soak: {args.tenants} tenants, {args.duration:g} virtual s, faults every 2 min")
    print(f"  wall time              {wall:8.1f} s   ({args.duration / wall:.0f}x real time)")
    if (args.tenants, args.duration) == (100, 3600.0):
        ratio = wall / TARGET_SECONDS
        print(f"  target                 {TARGET_SECONDS:8.1f} s   wall / target {ratio:.2f}")
    print(f"  garbage collector      {'default' if args.default_gc else 'collecting_less()':>8}")
    per_event = wall / max(1, events["received"]) * 1e6
    print(f"  events received        {events['received']:8,}   {per_event:.0f} us wall each")
    print(f"  reconnects             {reconnects:8,}   breaker trips {report.breaker_trips:,}")
    print(f"  events lost            {events['lost']:8,}")
    if (growth := report.rss_growth_after_warmup) is not None and report.rss_quarters:
        quarters = ", ".join(f"{rss / 2**20:.1f}" for rss in report.rss_quarters)
        print(f"  RSS after warm-up      {growth:+8.1%}   by quarter {quarters} MiB")
    if len(snapshots) == 2:
        _print_growth(*snapshots, args.trace_growth)
    for invariant in report.broken:
        print(f"  BROKEN: {invariant.name}: {invariant.detail}")
    if report.broken:
        sys.exit(1)


def _print_growth(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, top: int) -> None:
    ours = [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    first, last = first.filter_traces(ours), last.filter_traces(ours)
    total = sum(s.size_diff for s in last.compare_to(first, "filename"))
    print(f"  traced growth from the first quarter to the end: {total / 1024:+,.0f} KB")
    for stat in last.compare_to(first, "lineno")[:top]:
        where = stat.traceback[0]
        print(f"    {stat.size_diff / 1024:+8,.1f} KB {stat.count_diff:+7,} blocks  {where}")


if __name__ == "__main__":
    main()
