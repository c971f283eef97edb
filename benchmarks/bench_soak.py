"""Virtual soak speed: how long an hour of a hundred tenants' faulty traffic takes.

Issue #7: 100 tenants, one virtual hour, a fault every two minutes per
tenant (the soak's defaults otherwise: 0.5 events/s each, every fault kind),
on `trio.testing.MockClock` with the in-memory connector. The target is a
wall time of at most 60 s on the 2-core development machine; the soak
itself checks its invariants, and a broken one fails the benchmark. Also
shown: how many times faster than real time and the wall time per event.
It runs as the command does, under `tenantry.cli.collecting_less`;
``--default-gc`` measures it under CPython's default collector thresholds
(in a process of its own: a second soak in the same process would inherit
the first one's heap).

    python benchmarks/bench_soak.py [--tenants N] [--duration SECONDS] [--seed S] [--default-gc]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

import trio
import trio.testing

from tenantry.cli import SoakConfig, collecting_less, run_soak

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
    args = parser.parse_args()
    logging.getLogger("tenantry").setLevel(logging.ERROR)  # the faults' warnings are expected
    config = SoakConfig(tenants=args.tenants, duration=args.duration, seed=args.seed)
    collector = contextlib.nullcontext() if args.default_gc else collecting_less()
    with collector:
        start = time.perf_counter()
        report = trio.run(run_soak, config, clock=trio.testing.MockClock(autojump_threshold=0))
        wall = time.perf_counter() - start
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
    for invariant in report.broken:
        print(f"  BROKEN: {invariant.name}: {invariant.detail}")
    if report.broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
