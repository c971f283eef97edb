"""Scale over loopback TCP: many idle tenant sockets on one hub, then a reconnect storm.

One hub holds ``--tenants`` sockets, one per tenant, each to its own path
(``ws://127.0.0.1:PORT/t0001``) so that the upstream tells tenants apart.
Every handler just waits; keepalive is 30 s; the caches are the defaults
(`tenantry.BAILEYS_CACHE_SPECS`), created empty (``--no-caches``: none at
all). The upstream, a `tenantry.testing.FakeUpstream`, runs in a child process driven through its
stdin and stdout, so that the client process's memory and CPU are what is
measured. Figures, and their targets:

* time to connect all: from the first `Hub.add` until every handler runs,
  and the CPU time both processes spent on it;
* RSS per idle socket: (RSS with all connected - RSS of the open hub before
  any tenant) / tenants, after ``gc.collect()``; the whole tenant counts
  (supervisor, socket, buffer, empty caches, the WebSocket connection), the
  kernel's socket buffers do not. Target <= 40 KB;
* CPU while idle for ``--idle`` seconds (user + sys of the client process)
  as a share of one core; 60 s with 30 s keepalives is about two pings per
  socket. Target <= 5 %;
* reconnect storm: the upstream aborts every connection at once, without a
  close frame (reason 408); the time until every handler runs again, and
  the CPU spent. For each tenant, seconds from the drop until its new
  attempt began (the client's connector is called: the backoff's jitter
  spreads these), until the upstream accepted it, and until its handler
  ran: percentiles, and histograms of the first two. The upstream notes
  arrivals once per pass of its scheduler, so when it is busy, many
  arrivals share one time;
* the most sockets any tenant ever held at once, as the upstream saw them at
  each arrival (and as the client's handlers saw them): must be 1;
* time to tear all down: leaving the hub block, and its CPU time.

The soft ``RLIMIT_NOFILE`` is raised where needed, in both processes. RSS is
read from ``/proc/self/statm`` (Linux); elsewhere it is not shown.

    python benchmarks/bench_scale.py [--tenants N] [--idle SECONDS] [--keepalive SECONDS]
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

import tenantry
from tenantry.testing import FakeUpstream, open_fake_upstream

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    sys.exit("bench_scale.py needs a Unix system (the resource module)")

FD_MARGIN = 256
"""File descriptors besides one per socket: the interpreter, pipes, the listener."""

PERCENTILES = (0, 10, 50, 90, 100)
HISTOGRAM_BINS = 10
HISTOGRAM_WIDTH = 40


# -- both processes -------------------------------------------------------------


def raise_fd_limit(sockets: int) -> str:
    """Raise the soft RLIMIT_NOFILE to fit *sockets*; say what was done.

    Exits with a message if the hard limit is too low.
    """
    needed = sockets + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return f"soft limit {soft:,} already >= {needed:,} needed"
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(
            f"bench_scale.py: {sockets:,} sockets need about {needed:,} file descriptors, "
            f"but the hard limit (ulimit -Hn) is {hard:,}: raise it, or use fewer --tenants"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return f"soft limit raised from {soft:,} to {needed:,} (hard limit {hard:,})"


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Lines:
    """Newline-terminated text lines from a Trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def readline(self) -> str | None:
        """The next line without its newline; None at the end of the stream."""
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._stream.receive_some()
            if not chunk:
                return None
            self._buffer += chunk
        line = self._buffer[:end].decode()
        del self._buffer[: end + 1]
        return line


# -- the upstream (child process) ------------------------------------------------


class Watch:
    """The upstream's view of the tenants: arrivals, and the most open connections per path."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self._upstream = upstream
        self._arrivals: dict[str, list[float]] = collections.defaultdict(list)
        self._most_open: dict[str, int] = {}
        self._dropped_at: float | None = None
        self._seen = 0
        self._progress = trio.Event()

    async def run(self) -> None:
        """Note each connection as it is accepted, and how many its path then has open."""
        seen = 0
        while True:
            await self._upstream.wait_connections(seen + 1)
            now = trio.current_time()
            for connection in self._upstream.connections[seen:]:
                path = connection.path
                open_now = sum(not c.ended for c in self._upstream.connections_to(path))
                self._most_open[path] = max(self._most_open.get(path, 0), open_now)
                self._arrivals[path].append(now)
            seen = self._seen = len(self._upstream.connections)
            self._progress.set()
            self._progress = trio.Event()

    async def wait_seen(self, count: int) -> int:
        """Wait until *count* connections have been noted; how many have been."""
        while self._seen < count:
            await self._progress.wait()
        return self._seen

    async def drop(self) -> int:
        """Abort every open connection at once, without a close frame; how many."""
        live = [c for c in self._upstream.connections if not c.ended]
        self._dropped_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for connection in live:
                nursery.start_soon(connection.abort)
        return len(live)

    def stats(self) -> dict[str, Any]:
        """What the parent asks for, as JSON-ready data."""
        since_drop: dict[str, list[float]] = {}
        if (dropped_at := self._dropped_at) is not None:
            for path, times in self._arrivals.items():
                if after := [t - dropped_at for t in times if t >= dropped_at]:
                    since_drop[path] = after
        return {
            "open": sum(not c.ended for c in self._upstream.connections),
            "most_open": max(self._most_open.values(), default=0),
            "over_one": sorted(p for p, most in self._most_open.items() if most > 1),
            "since_drop": since_drop,
            "cpu": cpu_seconds(),
        }


async def serve(fd_note: str) -> None:
    """The upstream: a JSON hello line, then one reply line per command line on stdin.

    Commands: ``wait N`` (until N connections have been accepted and noted),
    ``drop`` (abort every open connection), ``stats``, ``cpu`` (seconds used
    so far). Ends at EOF.
    """
    async with open_fake_upstream() as upstream, trio.open_nursery() as nursery:
        watch = Watch(upstream)
        nursery.start_soon(watch.run)
        url = await upstream.serve_tcp()
        print(json.dumps({"url": url, "fd": fd_note}), flush=True)
        commands = Lines(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
        while (command := await commands.readline()) is not None:
            if command.startswith("wait "):
                reply = f"seen {await watch.wait_seen(int(command.removeprefix('wait ')))}"
            elif command == "drop":
                reply = f"dropped {await watch.drop()}"
            elif command == "cpu":
                reply = str(cpu_seconds())
            elif command == "stats":
                reply = json.dumps(watch.stats())
            else:
                reply = f"unknown command {command!r}"
            print(reply, flush=True)
        nursery.cancel_scope.cancel()


# -- the client (this process) ---------------------------------------------------


class Upstream:
    """The parent's end of the child's pipes: one command line, one reply line."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._lines = Lines(process.stdout)

    async def reply(self) -> str:
        line = await self._lines.readline()
        if line is None:
            raise RuntimeError("the upstream process has ended")
        return line

    async def ask(self, command: str) -> str:
        await self._stdin.send_all(f"{command}\n".encode())
        return await self.reply()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(await self.ask("stats"))
        return stats

    async def cpu(self) -> float:
        return float(await self.ask("cpu"))

    async def close(self) -> None:
        """Close the child's stdin: it then exits."""
        await self._stdin.aclose()


class Tracker:
    """The client's view of the tenants: connection attempts and live handlers.

    Attempts are seen through `connector`, which wraps each tenant's URL, and
    handlers through `handler`, the tenants' handler. Times are Trio's clock.
    """

    def __init__(self) -> None:
        self.live = 0
        self.most_live = 0
        """The most handlers any one tenant ever had running at once."""
        self.attempts: dict[str, list[float]] = collections.defaultdict(list)
        self.started: dict[str, list[float]] = collections.defaultdict(list)
        self._live: collections.Counter[str] = collections.Counter()
        self._reached: collections.Counter[int] = collections.Counter()
        self._changed = trio.Event()

    def connector(self, url: str, tenant_id: str) -> tenantry.Connector:
        """*url*'s connector, noting when each attempt begins."""
        return _NotingConnector(tenantry.UrlConnector(url), self.attempts[tenant_id])

    def started_at_least(self, times: int) -> int:
        """Tenants whose handler has started at least *times* times."""
        return self._reached[times]

    async def handler(self, sock: tenantry.Socket) -> None:
        """The tenants' handler: idle until the socket closes."""
        tenant_id = sock.tenant_id
        started = self.started[tenant_id]
        started.append(trio.current_time())
        self._reached[len(started)] += 1
        self._live[tenant_id] += 1
        self.live += 1
        self.most_live = max(self.most_live, self._live[tenant_id])
        self._notify()
        try:
            await trio.sleep_forever()
        finally:
            self._live[tenant_id] -= 1
            self.live -= 1
            self._notify()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until *condition* holds (it is checked whenever a handler starts or ends)."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class _NotingConnector:
    """A connector that notes the time of each attempt, then lets *inner* connect."""

    def __init__(self, inner: tenantry.Connector, attempts: list[float]) -> None:
        self._inner = inner
        self._attempts = attempts

    def open(
        self, *, headers: Mapping[str, str], max_message_size: int
    ) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        self._attempts.append(trio.current_time())
        return self._inner.open(headers=headers, max_message_size=max_message_size)


def rss_kb() -> float | None:
    """Resident set size of this process in KB, after a full collection; None without /proc."""
    gc.collect()
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted, non-empty *ordered*."""
    return ordered[round(p / 100 * (len(ordered) - 1))]


def histogram(ordered: Sequence[float], indent: str) -> list[str]:
    """A text histogram of sorted, non-empty *ordered*, in HISTOGRAM_BINS bins."""
    low, high = ordered[0], ordered[-1]
    bins = HISTOGRAM_BINS if high > low else 1
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in ordered:
        counts[min(int((value - low) / width), bins - 1)] += 1
    most = max(counts)
    return [
        f"{indent}{low + i * width:6.3f}-{low + (i + 1) * width:6.3f} s "
        f"{'#' * math.ceil(HISTOGRAM_WIDTH * count / most):<{HISTOGRAM_WIDTH}} {count:>6,}"
        for i, count in enumerate(counts)
    ]


def after(attempts: Iterable[list[float]], origin: float) -> list[float]:
    """For each list of times, the first at or after *origin*, less *origin*; sorted."""
    return sorted(next(t for t in times if t >= origin) - origin for times in attempts)


def show(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<30} {value:>12}   {note}".rstrip(), flush=True)


def states(hub: tenantry.Hub) -> str:
    counts = collections.Counter(status.state.value for status in hub.status())
    return ", ".join(f"{count:,} {state}" for state, count in sorted(counts.items()))


class PhaseFailed(Exception):
    """A phase could not finish; the benchmark stops and says why."""


class Scale:
    """The phases of the benchmark, run in order by `measure`; each prints its figures."""

    def __init__(self, args: argparse.Namespace, upstream: Upstream, url: str) -> None:
        self.args = args
        self.tenants: int = args.tenants
        self.upstream = upstream
        self.url = url
        self.caches = {} if args.no_caches else tenantry.BAILEYS_CACHE_SPECS
        self.tracker = Tracker()
        self.problems: list[str] = []
        self._teardown_from = (0.0, 0.0, 0.0)

    async def wait(self, condition: Callable[[], bool], hub: tenantry.Hub, what: str) -> None:
        with trio.move_on_after(self.args.timeout):
            await self.tracker.wait_until(condition)
            return
        raise PhaseFailed(f"{what} after {self.args.timeout:g} s: {states(hub)}")

    async def wait_upstream(self, accepted: int, hub: tenantry.Hub) -> None:
        """Wait until the upstream has noted *accepted* connections (it lags the client a bit)."""
        with trio.move_on_after(self.args.timeout):
            await self.upstream.ask(f"wait {accepted}")
            return
        raise PhaseFailed(f"the upstream has not seen {accepted:,} connections: {states(hub)}")

    @asynccontextmanager
    async def cpu_used(self, label: str) -> AsyncIterator[None]:
        """Show the CPU time both processes spent in the block."""
        client, upstream = cpu_seconds(), await self.upstream.cpu()
        yield
        client, upstream = cpu_seconds() - client, await self.upstream.cpu() - upstream
        show(label, f"{client:.2f} s", f"client CPU (the upstream: {upstream:.2f} s)")

    async def connect_all(self, hub: tenantry.Hub) -> None:
        width = max(4, len(str(self.tenants - 1)))
        async with self.cpu_used("  CPU"):
            start = time.perf_counter()
            for i in range(self.tenants):
                tenant_id = f"t{i:0{width}d}"
                spec = tenantry.TenantSpec(
                    tenant_id,
                    self.tracker.connector(self.url + tenant_id, tenant_id),
                    self.tracker.handler,
                    caches=self.caches,
                    options=tenantry.SocketOptions(keepalive=self.args.keepalive),
                )
                await hub.add(spec)
            await self.wait(lambda: self.tracker.live == self.tenants, hub, "not all connected")
            connect = time.perf_counter() - start
            await self.wait_upstream(self.tenants, hub)
            show("connect all", f"{connect:.2f} s", "first add -> every handler running")
        stats = await self.upstream.stats()
        if stats["open"] != self.tenants:
            self.problems.append(
                f"the upstream has {stats['open']:,} connections open, not {self.tenants:,}"
            )

    def memory(self, before: float | None) -> None:
        connected = rss_kb()
        if before is None or connected is None:
            show("RSS", "n/a", "(needs /proc/self/statm)")
            return
        show("RSS, hub open, no tenants", f"{before:,.0f} KB")
        show("RSS, all connected, idle", f"{connected:,.0f} KB")
        per_socket = (connected - before) / self.tenants
        show("RSS per idle socket", f"{per_socket:.1f} KB", "(target <= 40 KB)")

    async def idle(self) -> None:
        cpu_start, upstream_cpu_start = cpu_seconds(), await self.upstream.cpu()
        start = time.perf_counter()
        await trio.sleep(self.args.idle)
        cpu = cpu_seconds() - cpu_start
        idle = max(time.perf_counter() - start, 1e-9)
        upstream_cpu = await self.upstream.cpu() - upstream_cpu_start
        pings = self.args.idle / self.args.keepalive
        show(
            f"CPU idle over {idle:.1f} s",
            f"{100 * cpu / idle:.2f} %",
            f"of one core (target <= 5 %); {cpu:.2f} s CPU, ~{pings:.1f} pings per socket",
        )
        show("  the upstream's CPU, same", f"{100 * upstream_cpu / idle:.2f} %", "(not counted)")

    async def storm(self, hub: tenantry.Hub) -> None:
        tracker, tenants = self.tracker, self.tenants

        def all_back() -> bool:
            return tracker.live == tenants and tracker.started_at_least(2) == tenants

        async with self.cpu_used("  CPU"):
            start, dropped_at = time.perf_counter(), trio.current_time()
            dropped = (await self.upstream.ask("drop")).removeprefix("dropped ")
            print(f"  reconnect storm: the upstream aborted {dropped} connections at once")
            await self.wait(all_back, hub, "not all back after the drop")
            show("  all back after", f"{time.perf_counter() - start:.3f} s", "every handler again")
            await self.wait_upstream(2 * tenants, hub)
        stats = await self.upstream.stats()
        since_drop: dict[str, list[float]] = stats["since_drop"]
        rows = {
            "attempt began (client)": after(tracker.attempts.values(), dropped_at),
            "accepted (upstream)": sorted(times[0] for times in since_drop.values()),
            "handler running (client)": after(tracker.started.values(), dropped_at),
        }
        backoff = tenantry.ReconnectPolicy().backoff
        low, high = backoff.bounds(1)
        first = f"the first delay: {backoff.delays[0]:g} s ±{100 * backoff.jitter:g} %"
        show("  backoff window", f"{low:.2f}-{high:.2f} s", first)
        heads = "".join(f"{'p' + str(p):>8}" for p in PERCENTILES)
        print(f"    {'seconds after the drop':<28}{heads}")
        for label, times in rows.items():
            cells = "".join(f"{percentile(times, p):8.3f}" for p in PERCENTILES)
            print(f"    {label:<28}{cells}")
        for label in ("attempt began (client)", "accepted (upstream)"):
            print(f"    {label}, seconds after the drop:")
            print("\n".join(histogram(rows[label], indent="      ")), flush=True)
        again = sum(len(times) > 1 for times in since_drop.values())
        retried = sum(len(times) > 2 for times in tracker.attempts.values())
        if len(since_drop) != tenants or again or retried:
            self.problems.append(
                f"after the drop {len(since_drop):,} tenants reconnected, {again:,} of them more "
                f"than once; {retried:,} tenants made more than two attempts in all"
            )
        show("  max sockets per tenant", f"{stats['most_open']}", "at once, the upstream's view")
        show("  max handlers per tenant", f"{tracker.most_live}", "at once, the client's view")
        if stats["most_open"] > 1 or tracker.most_live > 1:
            self.problems.append(
                f"LIBRARY BUG: a tenant held two sockets at once ({stats['most_open']} at the "
                f"upstream, {tracker.most_live} client handlers); paths: {stats['over_one'][:10]}"
            )

    async def teardown_begins(self) -> None:
        """The last step in the hub block: note the time and the CPU used so far."""
        self._teardown_from = (time.perf_counter(), cpu_seconds(), await self.upstream.cpu())

    async def torn_down(self) -> None:
        """The first step after the hub block."""
        start, client, upstream = self._teardown_from
        show("tear all down", f"{time.perf_counter() - start:.2f} s", "leaving the hub block")
        client, upstream = cpu_seconds() - client, await self.upstream.cpu() - upstream
        show("  CPU", f"{client:.2f} s", f"client CPU (the upstream: {upstream:.2f} s)")
        stats = await self.upstream.stats()
        if (rss := rss_kb()) is not None:
            show("RSS after teardown", f"{rss:,.0f} KB")
        if stats["open"]:
            self.problems.append(f"the upstream still has {stats['open']:,} connections open")


async def measure(args: argparse.Namespace, upstream: Upstream, fd_note: str) -> list[str]:
    """Run every phase against *upstream*, printing figures; the problems found."""
    hello = json.loads(await upstream.reply())
    scale = Scale(args, upstream, hello["url"])
    caches = "no caches" if args.no_caches else f"the default {len(scale.caches)} caches, empty"
    print(
        f"scale: {scale.tenants:,} tenant sockets on one hub over loopback TCP, "
        f"keepalive {args.keepalive:g} s, idle handlers, {caches}"
    )
    print(f"  file descriptors: client: {fd_note}; upstream: {hello['fd']}", flush=True)
    failures: list[str] = []
    try:
        async with tenantry.open_hub(scale.caches) as hub:
            await trio.sleep(args.settle)
            before = rss_kb()
            await scale.connect_all(hub)
            await trio.sleep(args.settle)
            scale.memory(before)
            await scale.idle()
            await scale.storm(hub)
            await scale.teardown_begins()
    except* PhaseFailed as failed:  # the hub's nursery wraps it in a group
        failures = [str(failure) for failure in failed.exceptions]
    if failures:
        return [*scale.problems, *failures]
    await scale.torn_down()
    return scale.problems


async def run(args: argparse.Namespace, fd_note: str) -> list[str]:
    command = [sys.executable, __file__, "--serve", "--tenants", str(args.tenants)]
    async with trio.open_nursery() as nursery:
        start = functools.partial(
            trio.run_process, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        process: trio.Process = await nursery.start(start)
        upstream = Upstream(process)
        try:
            return await measure(args, upstream, fd_note)
        finally:
            await upstream.close()


def count(text: str) -> int:
    """An argument that must be an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def seconds(text: str) -> float:
    """An argument that must be a finite number of seconds >= 0."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=count, default=1000)
    parser.add_argument("--idle", type=seconds, default=60.0, help="seconds idle (CPU figure)")
    parser.add_argument("--keepalive", type=seconds, default=30.0, help="ping interval")
    parser.add_argument("--settle", type=seconds, default=2.0, help="seconds before reading RSS")
    parser.add_argument("--timeout", type=seconds, default=120.0, help="per phase, seconds")
    parser.add_argument("--no-caches", action="store_true", help="tenants without any cache")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keepalive <= 0:
        parser.error("--keepalive must be > 0")
    fd_note = raise_fd_limit(args.tenants)
    if args.serve:
        trio.run(serve, fd_note)
        return
    start = time.perf_counter()
    problems = trio.run(run, args, fd_note)
    print(f"  total wall time {time.perf_counter() - start:.1f} s", flush=True)
    for problem in problems:
        print(f"PROBLEM: {problem}", flush=True)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
