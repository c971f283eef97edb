"""Receive throughput of tenantry's own transport against the trio-websocket loop.

The same upstream and method as ``bench_socket.py`` (a child process writing
pre-built frames; interleaved rounds; the timed window holds receiving
only; medians), at 1 and at ``--many`` connections, three contenders:

======================  ================================================================
contender               what the client does per network read / per event
======================  ================================================================
raw trio-websocket      ``get_message()``, ``json.loads``, a dict dispatch (the baseline)
transport receive()     ``Transport.receive()`` (one read, its messages), then
                        ``json.loads`` and a dict dispatch per message
proto raw wsproto       ``bench_socket.py``'s prototype reader, the same loop
======================  ================================================================

It measures the transport alone: no socket, buffer or subscriber. ::

    python benchmarks/bench_transport.py [--events N] [--rounds R] [--many C]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

# a sibling script, found through the path above
import bench_socket
from tenantry._transport import handshake


async def transport_loop(url: str, n: int, window: bench_socket.Window) -> None:
    """`Transport.receive` in a loop: every message of a read decoded and dispatched."""
    dispatch = bench_socket.dispatcher()
    host, port, path = url.removeprefix("ws://").replace("/", ":", 1).split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        transport = await handshake(
            stream, host=f"{host}:{port}", resource=f"/{path}", headers={}, max_message_size=1 << 20
        )
        await window.opened()
        await transport.send("go")
        received = 0
        while received < n:
            messages = await transport.receive()
            for text in messages:
                message = json.loads(text)
                dispatch[message["type"]](message["data"])
            received += len(messages)
        window.finished()
        await transport.aclose(timeout=bench_socket.TIMEOUT)
    finally:
        await trio.aclose_forcefully(stream)


CONTENDERS: dict[str, bench_socket.Connection] = {
    "raw trio-websocket": bench_socket.raw,
    "transport receive()": transport_loop,
    "proto raw wsproto": bench_socket.raw_wsproto,
}


def measure(url: str, pid: int, n: int, conns: int, rounds: int) -> None:
    rates: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    for connection in CONTENDERS.values():  # a first, uncounted run of each
        trio.run(bench_socket.run_trio, connection, url, max(1, n // 10), conns, pid)
    for _ in range(rounds):
        for name, connection in CONTENDERS.items():
            window = trio.run(bench_socket.run_trio, connection, url, n, conns, pid)
            events, wall, seconds = window.result(n * conns)
            rates[name].append(events / wall)
            cpu[name].append(seconds / events)
    baseline, base_cpu = rates["raw trio-websocket"], cpu["raw trio-websocket"]
    print(
        f"\n{conns} connection(s) x {n:,} events, {rounds} interleaved rounds (medians),"
        f" load average {os.getloadavg()[0]:.2f}:\n"
        f"  {'contender':<22} {'events/s':>10} {'x raw':>7} {'CPU us/event':>13} {'CPU x raw':>10}"
    )
    for name in CONTENDERS:
        ratio = statistics.median(r / b for r, b in zip(rates[name], baseline, strict=True))
        by_cpu = statistics.median(b / c for c, b in zip(cpu[name], base_cpu, strict=True))
        print(
            f"  {name:<22} {statistics.median(rates[name]):>10,.0f} {ratio:>7.2f}"
            f" {statistics.median(cpu[name]) * 1e6:>13.2f} {by_cpu:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per round, in all")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--many", type=int, default=100, help="connections of the second run")
    args = parser.parse_args()
    command = [sys.executable, bench_socket.__file__, "--serve"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:  # noqa: S603
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            print(f"receive throughput, loopback TCP, ~{len(bench_socket.event(0))}-byte events")
            for conns in (1, args.many):
                measure(url, server.pid, max(1, args.events // conns), conns, args.rounds)
        finally:
            server.kill()


if __name__ == "__main__":
    main()
