"""Receive throughput over loopback TCP: tenantry against the trio-websocket loop it is built on.

Every contender receives the same stream of small JSON events
(``{"type": "messages.upsert", "data": {...}}``, about 260 bytes each, every
message its own key) from the same upstream, at 1 and at ``--many``
connections, in interleaved rounds (A B C D A B C D ...) after an uncounted
short run of each in-process contender; the figures are medians over the
rounds:

=====================  ==============================================================
contender              what the client does per event
=====================  ==============================================================
raw trio-websocket     ``get_message()``, ``json.loads``, a dict dispatch (the baseline)
tenantry transport     tenantry's own connection (what `UrlConnector` yields) alone:
                       ``receive()`` (one network read, every message it completed),
                       then ``json.loads`` and a dict dispatch per message; the floor
                       of tenantry's receive path, under its socket, buffer and stream
tenantry default       `open_socket` with default options; a subscriber's
                       ``async for batch in batches`` that dispatches every event
tenantry buffered      the same, ``BufferConfig(always_buffer=True)``
websockets (asyncio)   ``recv()``, ``json.loads``, a dict dispatch; in its own process
json floor             ``json.loads`` and a dict dispatch over a list of strings, no I/O
=====================  ==============================================================

The upstream must not be what is measured. It runs in a child process (its
own core), answers the WebSocket upgrade by hand and then writes one
pre-built buffer of unmasked server frames, the N events of the connection
followed by a close frame, with a few large ``send_all`` calls: it does no
per-event work at all. Each connection asks for its N in the request path
(``/N``) and the upstream starts writing when the client's first message
("go") arrives; a client sends it once all its connections are open, so the
timed window (wall clock and the client process's CPU time) holds receiving
only: from "go" until every connection has received its N events.

The harness checks itself, every run:

* ``upstream alone``: a client that reads and discards the bytes (no
  WebSocket parsing), i.e. the rate the upstream can write at;
* the upstream's CPU time as a share of one core during the raw loop's
  rounds (``/proc``, Linux only);
* the upstream must write at least twice as fast as the raw loop reads, on
  under half a core, else the benchmark says ``HARNESS-LIMITED``: the
  ratios then measure the upstream, not the client;
* the raw loop must reach 50,000 events/s; when it does not though the
  upstream keeps up, the client was slowed (by other processes: the load
  average is printed) and the benchmark says ``HARNESS CHECK FAILED``.
  "CPU x raw" (the raw loop's CPU time per event over the contender's)
  compares the clients even then.

Profiling tenantry's receive path (one run of one contender under cProfile;
the time of every function is put in a category, C functions in their
caller's category unless they are JSON or socket calls, and the categories
and the top functions are printed as percentages of the profiled time)::

    python benchmarks/bench_socket.py --profile default --connections 1
    python benchmarks/bench_socket.py --profile default --connections 100
    python benchmarks/bench_socket.py --profile buffered --connections 100 --events 200000

or with py-spy (sampling, so without cProfile's overhead per call; ``raw`` profiles
the baseline and ``transport`` tenantry's connection alone the same way)::

    py-spy record --format raw -o /tmp/default.txt -- \
        python benchmarks/bench_socket.py --profile default --sampled --events 300000
    python benchmarks/bench_socket.py --collapsed /tmp/default.txt

    python benchmarks/bench_socket.py [--events N] [--rounds R] [--many C]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import cProfile
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio_websocket

import tenantry

HARNESS_FLOOR = 50_000
"""Events/s the raw trio-websocket loop must reach for the ratios to mean anything."""
CHUNK = 256 * 1024
"""Bytes per ``send_all`` of the upstream."""
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "120"))
"""Bound on every wait on the network, in seconds."""
CLOSE_FRAME = b"\x88\x02\x03\xe8"
"""An unmasked close frame, code 1000: the last bytes the upstream writes."""
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Result = tuple[int, float, float]
"""(events received, wall seconds, client CPU seconds) of the timed window."""


# -- the events ---------------------------------------------------------------


def event(i: int) -> str:
    """The *i*-th event: a ``messages.upsert`` of about 260 bytes, with its own key."""
    return json.dumps(
        {
            "type": "messages.upsert",
            "data": {
                "key": {
                    "remoteJid": f"49151{i % 9973:07d}@s.whatsapp.net",
                    "id": f"3EB0{i:016X}",
                    "fromMe": i % 3 == 0,
                },
                "messageTimestamp": 1_700_000_000 + i,
                "pushName": "Alice Example",
                "status": 2,
                "message": {"conversation": f"message number {i}, hello there"},
            },
        },
        separators=(",", ":"),
    )


def server_frame(payload: bytes) -> bytes:
    """*payload* as one unmasked text frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        return bytes([0x81, size]) + payload
    if size < 1 << 16:
        return bytes([0x81, 126]) + size.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + size.to_bytes(8, "big") + payload


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """*payload* (< 126 bytes) as one masked frame, as a client sends it; the mask is zero."""
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def dispatcher() -> dict[str, Callable[[Any], None]]:
    """The application's dispatch table: one handler per event type, doing nothing."""

    def handle(data: Any) -> None:
        pass

    return {"messages.upsert": handle}


async def consume(
    batches: trio.abc.ReceiveChannel[tenantry.Batch],
    n: int,
    dispatch: dict[str, Callable[[Any], None]],
) -> None:
    """Hand every event of *batches* to the application until *n* have come."""
    received = 0
    async for batch in batches:
        for item in batch:
            dispatch[item.type](item.data)
        received += batch.count
        if received >= n:
            break


# -- the upstream (child process) ---------------------------------------------


class Upstream:
    """Answers the upgrade, waits for "go", writes the pre-built frames of ``/N``."""

    def __init__(self) -> None:
        self._blobs: dict[int, bytes] = {}

    def blob(self, n: int) -> bytes:
        if n not in self._blobs:
            frames = b"".join(server_frame(event(i).encode()) for i in range(n))
            self._blobs[n] = frames + CLOSE_FRAME
        return self._blobs[n]

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(TIMEOUT):
                request = await read_head(stream)
                n, key = parse_request(request)
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324
                await stream.send_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                await stream.receive_some()  # the client's "go"
                view = memoryview(self.blob(n))
                for start in range(0, len(view), CHUNK):
                    await stream.send_all(view[start : start + CHUNK])
                await stream.receive_some()  # the client's close frame (or EOF): the end
        except (trio.BrokenResourceError, trio.TooSlowError, ValueError):
            pass  # a client that went away early: nothing to serve
        finally:
            await trio.aclose_forcefully(stream)

    async def serve(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        print(f"ws://127.0.0.1:{port}", flush=True)
        await trio.serve_listeners(self.handle, listeners)


async def read_head(stream: trio.SocketStream) -> bytes:
    """Bytes up to the end of an HTTP head (at most 16 KB)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some()
        if not chunk or len(head) > 16 * 1024:
            raise ValueError("no HTTP head")
        head += chunk
    return head


def parse_request(head: bytes) -> tuple[int, bytes]:
    """(N from the path ``/N``, the Sec-WebSocket-Key) of an upgrade request."""
    lines = head.split(b"\r\n")
    path = lines[0].split(b" ")[1]
    fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
    key = {name.strip().lower(): value.strip() for name, value in fields.items()}
    return int(path.strip(b"/")), key[b"sec-websocket-key"]


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process *pid* so far, from ``/proc`` (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the clients ----------------------------------------------------------------


class Window:
    """The timed window of one run: opens when every connection is ready, closes at the last."""

    def __init__(self, connections: int, upstream_pid: int) -> None:
        self.waiting = connections
        self.running = connections
        self.ready = trio.Event()
        self.upstream_pid = upstream_pid
        self.start = self.cpu = self.end = self.cpu_end = 0.0
        self.upstream: float | None = None
        self.upstream_end: float | None = None

    async def opened(self) -> None:
        """Called by each connection once open; returns when all are."""
        self.waiting -= 1
        if self.waiting == 0:
            self.upstream = process_cpu(self.upstream_pid)
            self.start, self.cpu = time.perf_counter(), time.process_time()
            self.ready.set()
        await self.ready.wait()

    def finished(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()
            self.upstream_end = process_cpu(self.upstream_pid)

    def result(self, events: int) -> Result:
        return events, self.end - self.start, self.cpu_end - self.cpu

    def upstream_share(self) -> float | None:
        """The upstream's CPU time in the window, as a share of one core."""
        if self.upstream is None or self.upstream_end is None:
            return None
        return (self.upstream_end - self.upstream) / (self.end - self.start)


Connection = Callable[[str, int, Window], Awaitable[None]]


async def run_trio(connection: Connection, url: str, n: int, conns: int, pid: int) -> Window:
    window = Window(conns, pid)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(conns):
                nursery.start_soon(connection, f"{url}/{n}", n, window)
    return window


async def raw(url: str, n: int, window: Window) -> None:
    dispatch = dispatcher()
    async with trio_websocket.open_websocket_url(url) as ws:
        await window.opened()
        await ws.send_message("go")
        for _ in range(n):
            message = json.loads(await ws.get_message())
            dispatch[message["type"]](message["data"])
        window.finished()


def with_tenantry(options: tenantry.SocketOptions) -> Connection:
    async def receive(url: str, n: int, window: Window) -> None:
        dispatch = dispatcher()
        async with (
            tenantry.open_socket(url, tenant_id="bench", options=options) as sock,
            sock.events.subscribe() as batches,
        ):
            await window.opened()
            await sock.send("go", {})
            await consume(batches, n, dispatch)
            window.finished()
            sock.close()

    return receive


async def transport(url: str, n: int, window: Window) -> None:
    """tenantry's connection alone: every message of each ``receive()`` decoded and dispatched."""
    dispatch = dispatcher()
    async with tenantry.UrlConnector(url).open(headers={}, max_message_size=1 << 20) as link:
        await window.opened()
        await link.send("go")
        received = 0
        while received < n:
            messages = await link.receive()
            for text in messages:
                message = json.loads(text)
                dispatch[message["type"]](message["data"])
            received += len(messages)
        window.finished()


async def discard(url: str, n: int, window: Window) -> None:
    """Reads the upstream's bytes and throws them away: the rate the upstream writes at."""
    host, port, path = url.removeprefix("ws://").replace("/", ":", 1).split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /" + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        await read_head(stream)
        await window.opened()
        await stream.send_all(client_frame(b"go"))
        tail = b""
        while tail[-4:] != CLOSE_FRAME:
            chunk = await stream.receive_some(CHUNK)
            if not chunk:
                raise RuntimeError("the upstream closed before its close frame")
            tail = tail[-4:] + chunk[-4:]
        window.finished()
        await stream.send_all(client_frame(b"\x03\xe8", opcode=0x8))


CONTENDERS: dict[str, Connection] = {
    "raw trio-websocket": raw,
    "tenantry transport": transport,
    "tenantry default": with_tenantry(tenantry.SocketOptions()),
    "tenantry buffered": with_tenantry(
        tenantry.SocketOptions(buffer=tenantry.BufferConfig(always_buffer=True))
    ),
}


def run_in_process(name: str, url: str, n: int, conns: int, pid: int) -> tuple[Result, Window]:
    window = trio.run(run_trio, CONTENDERS[name], url, n, conns, pid)
    return window.result(n * conns), window


async def run_websockets(url: str, n: int, conns: int) -> Result:
    """The asyncio `websockets` client; run by the child started with ``--websockets``."""
    import websockets  # noqa: PLC0415 - only this child imports it

    ready, waiting, running = asyncio.Event(), [conns], [conns]
    marks: dict[str, float] = {}

    async def receive() -> None:
        dispatch = dispatcher()
        async with websockets.connect(f"{url}/{n}", compression=None, max_size=None) as ws:
            waiting[0] -= 1
            if waiting[0] == 0:
                marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()
                ready.set()
            await ready.wait()
            await ws.send("go")
            for _ in range(n):
                message = json.loads(await ws.recv())
                dispatch[message["type"]](message["data"])
            running[0] -= 1
            if running[0] == 0:
                marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    await asyncio.wait_for(asyncio.gather(*(receive() for _ in range(conns))), TIMEOUT)
    return n * conns, marks["end"] - marks["start"], marks["cpu_end"] - marks["cpu"]


def run_websockets_child(url: str, n: int, conns: int) -> Result:
    command = [sys.executable, __file__, "--websockets", url, "--events", str(n)]
    command += ["--connections", str(conns)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=TIMEOUT)  # noqa: S603
    events, wall, cpu = json.loads(out.stdout)
    return int(events), float(wall), float(cpu)


def run_floor(n: int, conns: int) -> Result:
    messages = [event(i) for i in range(n)] * conns
    dispatch = dispatcher()
    start, cpu = time.perf_counter(), time.process_time()
    for text in messages:
        message = json.loads(text)
        dispatch[message["type"]](message["data"])
    return len(messages), time.perf_counter() - start, time.process_time() - cpu


# -- the rounds -------------------------------------------------------------------


def measure(url: str, pid: int, n: int, conns: int, rounds: int) -> None:
    names = [*CONTENDERS, "websockets (asyncio)", "json floor"]
    rates: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    shares: list[float] = []
    alone: list[float] = []
    for name in CONTENDERS:  # a first, uncounted run of each: the first is slower
        run_in_process(name, url, max(1, n // 10), conns, pid)
    for _ in range(rounds):
        for name in names:
            if name == "websockets (asyncio)":
                result = run_websockets_child(url, n, conns)
            elif name == "json floor":
                result = run_floor(n, conns)
            else:
                result, window = run_in_process(name, url, n, conns, pid)
                share = window.upstream_share()
                if name == "raw trio-websocket" and share is not None:
                    shares.append(share)
            events, wall, seconds = result
            rates[name].append(events / wall)
            cpu[name].append(seconds / events)
        window = trio.run(run_trio, discard, url, n, conns, pid)
        alone.append(n * conns / (window.end - window.start))
    report(n, conns, rounds, names=names, rates=rates, cpu=cpu, shares=shares, alone=alone)


def report(
    n: int,
    conns: int,
    rounds: int,
    *,
    names: list[str],
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    shares: list[float],
    alone: list[float],
) -> None:
    baseline, base_cpu = rates["raw trio-websocket"], cpu["raw trio-websocket"]
    print(
        f"\n{conns} connection(s) x {n:,} events, {rounds} interleaved rounds (medians),"
        f" load average {os.getloadavg()[0]:.2f}:\n"
        f"  {'contender':<22} {'events/s':>10} {'x raw':>7} {'CPU us/event':>13} {'CPU x raw':>10}"
    )
    for name in names:
        ratio = statistics.median(r / b for r, b in zip(rates[name], baseline, strict=True))
        by_cpu = statistics.median(b / c for c, b in zip(cpu[name], base_cpu, strict=True))
        print(
            f"  {name:<22} {statistics.median(rates[name]):>10,.0f} {ratio:>7.2f}"
            f" {statistics.median(cpu[name]) * 1e6:>13.2f} {by_cpu:>10.2f}"
        )
    print(f"  raw loop per round: {', '.join(f'{x:,.0f}' for x in baseline)} events/s")
    for name in (name for name in names if name.startswith("tenantry")):
        ratios = (r / b for r, b in zip(rates[name], baseline, strict=True))
        print(f"  ratio per round, {name}: {', '.join(f'{x:.2f}' for x in ratios)}")
    busy = statistics.median(r * c for r, c in zip(baseline, base_cpu, strict=True))
    print(f"  client CPU during the raw loop         {busy:>11.0%} of a core")
    upstream = statistics.median(shares) if shares else None
    if upstream is not None:
        print(f"  upstream CPU during the raw loop       {upstream:>11.0%} of a core")
    print(f"  upstream alone (client discards bytes) {statistics.median(alone):>12,.0f} events/s")
    harness_check(statistics.median(baseline), statistics.median(alone), upstream, busy)


def harness_check(raw: float, alone: float, upstream: float | None, busy: float) -> None:
    """Says whether the raw loop, and the upstream, were fast enough for the ratios to mean much.

    The upstream limits when it cannot write at least twice the raw loop's
    rate or is busy for more than half a core. A raw loop under
    `HARNESS_FLOOR` with an upstream that does not limit means that the
    client was slowed (other processes on the cores): "CPU x raw" still
    compares the clients then, events/s less so.
    """
    if alone < 2 * raw or (upstream is not None and upstream > 0.5):
        print(
            f"  HARNESS-LIMITED: ratios measure the upstream (raw loop {raw:,.0f} events/s;"
            f" the upstream must write at least twice that on under half a core)"
        )
    elif raw < HARNESS_FLOOR:
        print(
            f"  HARNESS CHECK FAILED: the raw loop reached {raw:,.0f} events/s, under"
            f" {HARNESS_FLOOR:,}, though the upstream is not the limit: the client was slowed"
            f" (busy {busy:.0%} of a core; see the load average); compare by CPU x raw"
        )
    else:
        print(f"  harness check: ok (raw loop >= {HARNESS_FLOOR:,} events/s, upstream >= 2x it)")


# -- the profile ------------------------------------------------------------------

CATEGORIES = (
    ("wsproto", ("wsproto/",)),
    ("trio-websocket", ("trio_websocket/",)),
    ("channel hand-offs", ("trio/_channel.py",)),
    ("trio I/O wait (epoll)", ("trio/_core/_io_epoll.py",)),
    ("socket syscalls", ("trio/_socket.py",)),  # py-spy: recv's time is its Python caller's
    ("trio scheduling", ("trio/", "outcome", "sniffio/")),
    ("json", ("json/",)),
    ("tenantry transport", ("tenantry/_transport.py",)),
    ("tenantry buffer", ("tenantry/_buffer.py",)),
    ("rules + protocol decode", ("tenantry/_rules.py", "tenantry/_protocol.py")),
    ("tenantry stream", ("tenantry/_stream.py",)),
    ("batch objects", ("tenantry/_events.py",)),
    ("connect wrapper", ("tenantry/_connect.py",)),
    ("socket reader", ("tenantry/_socket.py",)),
    ("tenantry, other", ("tenantry/",)),
    ("application loop", ("bench_socket.py",)),
)
"""Categories of a function's time by its file, first match wins."""


def category(function: tuple[str, int, str], caller: tuple[str, int, str] | None) -> str:
    """The category of *function*'s own time; if it has none, its *caller*'s.

    A C function's time is its caller's too, except JSON's, the socket
    calls and epoll's.
    """
    filename, _, name = function
    if filename == "~":
        if "json" in name or "scan" in name:
            return "json"
        if "_socket.socket" in name:
            return "socket syscalls"
        if "epoll" in name:
            return "trio I/O wait (epoll)"
    filename = filename.replace(os.sep, "/")
    for label, parts in CATEGORIES:
        if any(part in filename for part in parts):
            return label
    return "other" if caller is None else category(caller, None)


PROFILED = {
    "default": "tenantry default",
    "buffered": "tenantry buffered",
    "raw": "raw trio-websocket",
    "transport": "tenantry transport",
}


def profile(url: str, pid: int, name: str, n: int, conns: int, *, sampled: bool) -> None:
    """One run of contender *name*: under cProfile, or bare for a sampling profiler (py-spy)."""
    key = PROFILED[name]
    if sampled:
        (events, wall, _), _ = run_in_process(key, url, n, conns, pid)
        print(f"{key}, {conns} connection(s): {events / wall:,.0f} events/s (no cProfile)")
        return
    profiler = cProfile.Profile()
    profiler.enable()
    result, _ = run_in_process(key, url, n, conns, pid)
    profiler.disable()
    events, wall, _ = result
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    shares: dict[str, float] = collections.defaultdict(float)
    own: dict[str, float] = collections.defaultdict(float)
    for function, (_, _, tottime, _, callers) in stats.items():
        own[f"{Path(function[0]).name}:{function[1]}({function[2]})"] += tottime
        if callers and (function[0] == "~" or category(function, None) == "other"):
            for caller, (_, _, caller_tt, _) in callers.items():  # one level up
                shares[category(function, caller)] += caller_tt
        else:
            shares[category(function, None)] += tottime
    total = sum(shares.values())
    print(f"profile of {key}, {conns} connection(s), {events:,} events, {events / wall:,.0f}/s")
    print(f"(under cProfile; {total / events * 1e6:.1f} us of profiled time per event)")
    print_shares(shares, own)


def print_shares(shares: dict[str, float], own: dict[str, float]) -> None:
    total = sum(shares.values())
    for label, seconds in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {label:<24} {seconds / total:>6.1%}")
    print("top functions by own time:")
    for label, seconds in sorted(own.items(), key=lambda item: -item[1])[:25]:
        print(f"  {seconds / total:>6.1%}  {label}")


def classify_collapsed(path: str) -> None:
    """Categories of a py-spy ``--format raw`` file.

    Each sample counts for its innermost frame; a frame of no category (the
    standard library's helpers: contextlib, codecs, attrs' and dataclasses'
    generated methods) for the nearest caller that has one.
    """
    shares: dict[str, float] = collections.defaultdict(float)
    own: dict[str, float] = collections.defaultdict(float)
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "run_in_process (" not in stack:
            continue  # start-up and the upstream's spawning: not the receive path
        frames = [frame.rpartition(" (") for frame in reversed(stack.split(";"))]
        places = [(where.rstrip(")").rsplit(":", 1)[0], name) for name, _, where in frames]
        found = (category((file, 0, name), None) for file, name in places)
        shares[next((label for label in found if label != "other"), "other")] += int(count)
        own[f"{Path(places[0][0]).name}({places[0][1]})"] += int(count)
    print(f"py-spy samples from {path}: {int(sum(shares.values())):,}")
    print_shares(shares, own)


# -- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per round, in all")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--many", type=int, default=100, help="connections of the second run")
    parser.add_argument("--profile", choices=tuple(PROFILED))
    parser.add_argument("--connections", type=int, default=1, help="with --profile")
    parser.add_argument(
        "--sampled", action="store_true", help="with --profile: no cProfile (run under py-spy)"
    )
    parser.add_argument("--collapsed", metavar="FILE", help="categorize a py-spy raw profile")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--websockets", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(Upstream().serve)
        return
    if args.collapsed:
        classify_collapsed(args.collapsed)
        return
    if args.websockets:
        print(
            json.dumps(asyncio.run(run_websockets(args.websockets, args.events, args.connections)))
        )
        return
    command = [sys.executable, __file__, "--serve"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:  # noqa: S603
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if args.profile:
                per = max(1, args.events // args.connections)
                profile(url, server.pid, args.profile, per, args.connections, sampled=args.sampled)
                return
            print(f"receive throughput, loopback TCP, ~{len(event(0))}-byte JSON events")
            for conns in (1, args.many):
                per = max(1, args.events // conns)
                measure(url, server.pid, per, conns, args.rounds)
        finally:
            server.kill()


if __name__ == "__main__":
    main()
