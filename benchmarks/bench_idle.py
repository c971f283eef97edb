"""Idle cost over loopback TCP: tenantry's idle sockets against raw trio-websocket's.

Three clients hold ``--connections`` idle WebSocket connections each, to an
upstream in a child process (a bare trio-websocket server that accepts and
reads, the same for all three), one client kind per fresh process so that
their memory figures compare:

=================  ===========================================================
tenantry           one hub (its defaults: the Baileys caches), one
                   `TenantSpec` per connection with default options but the
                   keepalive; each handler subscribes to its batches and waits
trio-websocket     ``open_websocket_url`` per connection, a task awaiting
                   ``get_message`` and a task that pings every ``--keepalive``
                   seconds (and fails after 5 s without the pong)
websockets         asyncio: ``connect`` per connection (its own keepalive:
                   ``ping_interval=--keepalive``), a task awaiting ``recv``
=================  ===========================================================

Every client starts its connections at once and waits until all are up.
Figures per client, the median of ``--rounds`` interleaved rounds:

* RSS per idle connection: (RSS with all connected - RSS before the first
  connection) / connections, each read after ``gc.collect()``;
* connect all: from the first connection started until every one is up
  (tenantry: every handler has subscribed), with the CPU time the client
  (and, of it, the garbage collector) and the upstream spent on it; the
  upstream's CPU as a share of that wall time says whether it could be the
  limit (near 100 %: it is). "All started": when the last connection was
  started (tenantry: the last `Hub.add` returned);
* tasks per idle connection, in the client's event loop;
* CPU while idle for ``--idle`` seconds, as a share of one core, and the
  garbage collector's share of that time.

Then tenantry's ratios to raw trio-websocket, with the targets. ``--profile``
also runs one tenantry client under cProfile (the connect phase: where the
time goes, by package and by function) and one under tracemalloc (the bytes
each idle tenant keeps, by line and by the tenantry line that led to them).
RSS is read from ``/proc/self/statm`` (Linux).

    python benchmarks/bench_idle.py [--connections N] [--rounds R] [--idle SECONDS] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import functools
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
import trio_websocket

import tenantry
from bench_scale import Lines, count, cpu_seconds, raise_fd_limit, rss_kb, seconds

try:
    from websockets.asyncio.client import connect as websockets_connect
except ImportError:  # the reference client is optional: its row is then left out
    websockets_connect = None

KINDS = ("tenantry", "trio-websocket", "websockets")
BASELINE = "trio-websocket"
TARGETS = {"rss": 1.25, "connect": 1.5}
"""Tenantry's ratio to the baseline must be at most this, per figure."""

PING_TIMEOUT = 5.0
"""The raw trio-websocket client's bound on each pong, as tenantry's keepalive allows 5 s."""

TOP = 20
"""Rows in each profile table."""


# -- the upstream (child process of each client) ---------------------------------


async def serve(fd_note: str) -> None:
    """Accept every WebSocket and read it until it closes; answer ``cpu`` and ``open`` on stdin."""
    open_now = 0

    async def accept(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal open_now
        ws = await request.accept()
        open_now += 1
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            open_now -= 1

    async with trio.open_nursery() as nursery:
        start = functools.partial(
            trio_websocket.serve_websocket, accept, "127.0.0.1", 0, ssl_context=None
        )
        server: trio_websocket.WebSocketServer = await nursery.start(start)
        print(json.dumps({"url": f"ws://127.0.0.1:{server.port}/", "fd": fd_note}), flush=True)
        commands = Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        while (command := await commands.readline()) is not None:
            reply = {"cpu": str(cpu_seconds()), "open": str(open_now)}.get(command, "?")
            print(reply, flush=True)
        nursery.cancel_scope.cancel()


# -- a client (one process per kind and round) ------------------------------------


class Probe:
    """The figures of one client run, read between its phases.

    The upstream is asked for its CPU time over its pipes, outside the timed
    spans; those blocking reads are fine in either event loop because nothing
    else is being measured then.
    """

    def __init__(self, args: argparse.Namespace, upstream: subprocess.Popen[str]) -> None:
        self.args = args
        self._upstream = upstream
        self.figures: dict[str, Any] = {"kind": args.client, "connections": args.connections}
        self._mark = (0.0, 0.0, 0.0)
        self._profile: cProfile.Profile | None = None
        self._snapshot: tracemalloc.Snapshot | None = None
        self._gc = GcTime()

    def ask(self, command: str) -> str:
        stdin, stdout = self._upstream.stdin, self._upstream.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(f"{command}\n")
        stdin.flush()
        return stdout.readline().strip()

    def _start(self) -> None:
        upstream = float(self.ask("cpu"))
        self._mark = (time.perf_counter(), cpu_seconds(), upstream)

    def _since(self) -> tuple[float, float, float]:
        wall, cpu = time.perf_counter() - self._mark[0], cpu_seconds() - self._mark[1]
        return wall, cpu, float(self.ask("cpu")) - self._mark[2]

    def connecting(self) -> None:
        """Just before the first connection starts."""
        self.figures["rss_before_kb"] = rss_kb()
        self.figures["tasks_before"] = live_tasks()
        if self.args.profile == "memory":
            tracemalloc.start(30)
        self._start()
        self._gc.start()
        if self.args.profile == "cpu":
            self._profile = cProfile.Profile()
            self._profile.enable()

    def all_started(self) -> None:
        """Just after the last connection was started (tenantry: the last `Hub.add` returned)."""
        self.figures["started_s"] = time.perf_counter() - self._mark[0]

    def connected(self) -> None:
        """Just after every connection is up."""
        if self._profile is not None:
            self._profile.disable()
        wall, cpu, upstream = self._since()
        self.figures.update(connect_s=wall, connect_cpu_s=cpu, upstream_connect_cpu_s=upstream)
        self.figures["connect_gc_s"] = self._gc.stop()
        self.figures["upstream_open"] = int(self.ask("open"))

    def settled(self) -> None:
        """After ``--settle`` seconds with every connection up."""
        self.figures["rss_connected_kb"] = rss_kb()
        self.figures["tasks_connected"] = live_tasks()
        if tracemalloc.is_tracing():
            self._snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
        self._start()
        self._gc.start()

    def idled(self) -> None:
        """After ``--idle`` seconds more."""
        wall, cpu, _ = self._since()
        self.figures.update(idle_s=wall, idle_cpu_s=cpu, idle_gc_s=self._gc.stop())

    def report(self) -> None:
        """The figures as one JSON line, after any profile."""
        if self._profile is not None:
            show_profile(self._profile)
        if self._snapshot is not None:
            show_allocations(self._snapshot, self.args.connections)
        print(json.dumps(self.figures), flush=True)


class GcTime:
    """Wall time spent in the cyclic garbage collector between `start` and `stop`."""

    def __init__(self) -> None:
        self._spent = 0.0
        self._began = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._note)

    def stop(self) -> float:
        """The time spent since `start`."""
        gc.callbacks.remove(self._note)
        spent, self._spent = self._spent, 0.0
        return spent

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self._spent += time.perf_counter() - self._began


def live_tasks() -> int:
    """Tasks alive in this process's event loop, Trio's or asyncio's."""
    try:
        return trio.lowlevel.current_statistics().tasks_living
    except RuntimeError:  # not in Trio
        return len(asyncio.all_tasks())


class Countdown:
    """Connections still to come up; `done` is set when none are."""

    def __init__(self, count: int, done: trio.Event | asyncio.Event) -> None:
        self.left = count
        self.done = done

    def up(self) -> None:
        self.left -= 1
        if not self.left:
            self.done.set()


def path(url: str, i: int) -> str:
    """Connection *i*'s own URL, so that the upstream could tell them apart."""
    return f"{url}c{i:05d}"


async def phases(
    probe: Probe, start_all: Callable[[], object], up: trio.Event | Awaitable[object]
) -> None:
    """Connect all (bounded by ``--timeout``), settle, idle: the probe reads between each."""
    args = probe.args
    probe.connecting()
    start_all()
    if isinstance(up, trio.Event):
        with trio.fail_after(args.timeout):
            await up.wait()
        probe.connected()
        await trio.sleep(args.settle)
        probe.settled()
        await trio.sleep(args.idle)
    else:
        await asyncio.wait_for(up, args.timeout)
        probe.connected()
        await asyncio.sleep(args.settle)
        probe.settled()
        await asyncio.sleep(args.idle)
    probe.idled()


async def with_tenantry(probe: Probe, url: str) -> None:
    args, countdown = probe.args, Countdown(probe.args.connections, trio.Event())
    options = tenantry.SocketOptions(keepalive=args.keepalive)

    async def handler(sock: tenantry.Socket) -> None:
        async with sock.events.subscribe() as batches:
            countdown.up()
            async for _ in batches:
                pass

    async with tenantry.open_hub() as hub, trio.open_nursery() as nursery:
        await trio.sleep(args.settle)

        async def add_all() -> None:
            for i in range(args.connections):
                await hub.add(
                    tenantry.TenantSpec(f"c{i:05d}", path(url, i), handler, options=options)
                )
            probe.all_started()

        await phases(probe, lambda: nursery.start_soon(add_all), countdown.done)
        nursery.cancel_scope.cancel()


async def with_trio_websocket(probe: Probe, url: str) -> None:
    args, countdown = probe.args, Countdown(probe.args.connections, trio.Event())

    async def ping(ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await trio.sleep(args.keepalive)
            with trio.fail_after(PING_TIMEOUT):
                await ws.ping()

    async def hold(i: int) -> None:
        async with (
            trio_websocket.open_websocket_url(path(url, i)) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(ping, ws)
            countdown.up()
            while True:
                await ws.get_message()

    async with trio.open_nursery() as nursery:
        await trio.sleep(args.settle)

        def start_all() -> None:
            for i in range(args.connections):
                nursery.start_soon(hold, i)
            probe.all_started()

        await phases(probe, start_all, countdown.done)
        nursery.cancel_scope.cancel()


async def with_websockets(probe: Probe, url: str) -> None:
    args, countdown = probe.args, Countdown(probe.args.connections, asyncio.Event())
    tasks: set[asyncio.Task[None]] = set()

    assert websockets_connect is not None  # the parent asks for it only when installed

    async def hold(i: int) -> None:
        async with websockets_connect(path(url, i), ping_interval=args.keepalive) as ws:
            countdown.up()
            while True:
                await ws.recv()

    def start_all() -> None:
        tasks.update(asyncio.create_task(hold(i)) for i in range(args.connections))
        probe.all_started()

    await asyncio.sleep(args.settle)
    try:
        await phases(probe, start_all, countdown.done.wait())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def client(args: argparse.Namespace, fd_note: str) -> None:
    """One client run: start the upstream, measure, print the figures as a JSON line."""
    command = [sys.executable, __file__, "--serve", "--connections", str(args.connections)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, **pipes) as up:  # noqa: S603 - this script
        assert up.stdout is not None
        hello = json.loads(up.stdout.readline())
        probe = Probe(args, up)
        probe.figures["fd"] = f"client: {fd_note}; upstream: {hello['fd']}"
        if args.client == "tenantry":
            trio.run(with_tenantry, probe, hello["url"])
        elif args.client == "trio-websocket":
            trio.run(with_trio_websocket, probe, hello["url"])
        else:
            asyncio.run(with_websockets(probe, hello["url"]))
        probe.report()
        assert up.stdin is not None
        up.stdin.close()


# -- profiles (printed by a tenantry client run with --profile) --------------------


def area(filename: str, name: str) -> str:
    """The package (or built-in) a profiled function belongs to."""
    if filename == "~":
        return f"built-in {name.split(' of ', maxsplit=1)[0].strip('<>')}"
    if filename.startswith("<attrs generated"):
        return filename.rsplit(maxsplit=1)[-1].split(".", maxsplit=1)[0]
    parts = Path(filename).parts
    for marker in ("site-packages", "src"):
        if marker in parts:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return f"stdlib {Path(filename).stem}"


def show_profile(profile: cProfile.Profile) -> None:
    """The connect phase's own time (tottime) by package, then the top functions."""
    stats = pstats.Stats(profile)
    rows: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in rows.values()) or 1e-9
    by_area: collections.Counter[str] = collections.Counter()
    for (filename, _, name), row in rows.items():
        by_area[area(filename, name)] += row[2]
    print(f"cProfile of the connect phase: {total:.2f} s of profiled time, by package")
    for name, spent in by_area.most_common(TOP):
        print(f"  {100 * spent / total:5.1f} %  {spent:7.3f} s  {name}")
    print(f"  top {TOP} functions by own time (calls, own s, cumulative s):")
    ranked = sorted(rows.items(), key=lambda item: -item[1][2])[:TOP]
    for (filename, line, name), (_, calls, own, cumulative, _) in ranked:
        where = f"{area(filename, name)}:{Path(filename).name}:{line}:{name}"
        print(f"  {100 * own / total:5.1f} % {calls:>9,} {own:7.3f} {cumulative:7.3f}  {where}")


def show_allocations(snapshot: tracemalloc.Snapshot, connections: int) -> None:
    """Bytes still held per connection, allocated since the first one started, three ways."""
    snapshot = snapshot.filter_traces(
        [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    )
    traces = snapshot.traces
    total = sum(trace.size for trace in traces)
    print(f"tracemalloc: {total / connections:,.0f} bytes held per idle tenant")
    by_area: collections.Counter[str] = collections.Counter()
    by_tenantry_line: collections.Counter[str] = collections.Counter()
    for trace in traces:
        frames = list(reversed(trace.traceback))  # the most recent call first
        by_area[area(frames[0].filename, "")] += trace.size
        mine = next((f for f in frames if f"{os.sep}tenantry{os.sep}" in f.filename), None)
        key = f"{Path(mine.filename).name}:{mine.lineno}" if mine else "(no tenantry frame)"
        by_tenantry_line[key] += trace.size
    print("  by the package that allocated (bytes per tenant):")
    for name, size in by_area.most_common(TOP):
        print(f"  {size / connections:9,.0f}  {name}")
    print("  by the innermost tenantry line on the stack (bytes per tenant):")
    for name, size in by_tenantry_line.most_common(TOP):
        print(f"  {size / connections:9,.0f}  {name}")
    print("  by the line that allocated (bytes, blocks per tenant):")
    for stat in snapshot.statistics("lineno")[:TOP]:
        frame = stat.traceback[0]
        where = f"{area(frame.filename, '')}:{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {stat.size / connections:9,.0f} {stat.count / connections:6.1f}  {where}")


# -- the parent: rounds of fresh client processes, then the table -----------------


def run_client(args: argparse.Namespace, kind: str, profile: str | None = None) -> dict[str, Any]:
    """One client process; its figures (what it printed before them is passed on)."""
    command = [sys.executable, __file__, "--client", kind, *client_args(args)]
    if profile:  # the connect phase only: no idle time
        command += ["--profile-client", profile, "--idle", "0"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        sys.exit(f"bench_idle.py: the {kind} client failed ({done.returncode}):\n{done.stderr}")
    if profile:
        print("\n".join(lines[:-1]), flush=True)
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def client_args(args: argparse.Namespace) -> list[str]:
    names = ("connections", "idle", "keepalive", "settle", "timeout")
    return [item for name in names for item in (f"--{name}", str(getattr(args, name)))]


def derived(figures: dict[str, Any]) -> dict[str, float]:
    """The table's figures from one client run's raw ones."""
    n = figures["connections"]
    before, after = figures["rss_before_kb"], figures["rss_connected_kb"]
    return {
        "rss": (after - before) / n if before and after else float("nan"),
        "connect": figures["connect_s"],
        "started": figures["started_s"],
        "connect_cpu": figures["connect_cpu_s"],
        "connect_gc": figures["connect_gc_s"],
        "upstream_cpu": figures["upstream_connect_cpu_s"],
        "upstream_share": figures["upstream_connect_cpu_s"] / figures["connect_s"],
        "idle": figures["idle_cpu_s"] / figures["idle_s"],
        "idle_gc": figures["idle_gc_s"] / figures["idle_s"],
        "tasks": (figures["tasks_connected"] - figures["tasks_before"]) / n,
    }


COLUMNS = (
    ("rss", "RSS/conn KB", "{:.1f}"),
    ("tasks", "tasks/conn", "{:.1f}"),
    ("connect", "connect all s", "{:.3f}"),
    ("started", "all started s", "{:.3f}"),
    ("connect_cpu", "its CPU s", "{:.3f}"),
    ("connect_gc", "its GC s", "{:.3f}"),
    ("upstream_cpu", "upstream CPU s", "{:.3f}"),
    ("upstream_share", "upstream busy", "{:.0%}"),
    ("idle", "idle CPU", "{:.3%}"),
    ("idle_gc", "of it GC", "{:.3%}"),
)


def load() -> str:
    """The load average, against the cores: other work on the machine skews the timings."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average n/a"
    return f"load average {one:.2f} (5 min: {five:.2f}) on {os.cpu_count()} cores"


def table(medians: dict[str, dict[str, float]]) -> None:
    print(f"  {'client':<16}" + "".join(f"{head:>15}" for _, head, _ in COLUMNS))
    for kind, row in medians.items():
        print(f"  {kind:<16}" + "".join(f"{fmt.format(row[k]):>15}" for k, _, fmt in COLUMNS))


def parent(args: argparse.Namespace) -> list[str]:
    """The rounds, the medians and the ratios; the targets missed."""
    print(
        f"idle cost: {args.connections:,} connections per client over loopback TCP, "
        f"{args.rounds} rounds, keepalive {args.keepalive:g} s, idle {args.idle:g} s; {load()}"
    )
    kinds = KINDS if websockets_connect is not None else KINDS[:-1]
    if websockets_connect is None:
        print("  websockets is not installed: its row is left out")
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    missed = []
    for round_ in range(args.rounds):
        order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
        for kind in order:
            figures = run_client(args, kind)
            if figures["upstream_open"] != args.connections:
                sys.exit(f"bench_idle.py: the upstream saw {figures['upstream_open']} open")
            runs[kind].append(derived(figures))
            row = runs[kind][-1]
            print(
                f"  round {round_ + 1} {kind:<15} RSS/conn {row['rss']:6.1f} KB, connect all "
                f"{row['connect']:.3f} s, idle CPU {row['idle']:.3%}",
                flush=True,
            )
    medians = (
        {}
        if not args.rounds
        else {
            kind: {key: statistics.median(run[key] for run in rows) for key in rows[0]}
            for kind, rows in runs.items()
        }
    )
    if medians:
        print(f"medians; {load()} (upstream busy: its CPU during connect all, share of it)")
        table(medians)
    for key, label in (("rss", "RSS per idle connection"), ("connect", "connect all")):
        if not medians:
            break
        ratio = medians["tenantry"][key] / medians[BASELINE][key]
        verdict = "ok" if ratio <= TARGETS[key] else "MISSED"
        print(f"tenantry / {BASELINE}, {label}: {ratio:.2f}x (target <= {TARGETS[key]}x) {verdict}")
        if ratio > TARGETS[key]:
            missed.append(f"{label}: {ratio:.2f}x")
    if args.profile:
        for kind in ("tenantry", BASELINE):
            for profile in ("cpu", "memory"):
                print(f"{kind}, {profile} profile:")
                run_client(args, kind, profile)
    return missed


def rounds(text: str) -> int:
    """An argument that must be an int >= 0."""
    return 0 if text == "0" else count(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=count, default=1000)
    parser.add_argument("--rounds", type=rounds, default=3, help="0: only the profiles")
    parser.add_argument("--idle", type=seconds, default=60.0, help="seconds idle (CPU figure)")
    parser.add_argument("--keepalive", type=seconds, default=30.0, help="ping interval")
    parser.add_argument("--settle", type=seconds, default=2.0, help="seconds before reading RSS")
    parser.add_argument("--timeout", type=seconds, default=120.0, help="to connect all, seconds")
    parser.add_argument("--profile", action="store_true", help="profile tenantry's connect-all")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--profile-client", choices=("cpu", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keepalive <= 0:
        parser.error("--keepalive must be > 0")
    if args.serve:
        trio.run(serve, raise_fd_limit(args.connections))
    elif args.client:
        args.profile = args.profile_client
        client(args, raise_fd_limit(args.connections))
    elif (missed := parent(args)) and args.strict:
        sys.exit(f"targets missed: {'; '.join(missed)}")


if __name__ == "__main__":
    main()
