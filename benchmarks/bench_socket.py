"""End to end over loopback TCP: open_socket against a raw trio-websocket loop.

One socket, small JSON events, ``always_buffer=True``: tenantry (decode +
buffer + deliver to a subscriber) against ``get_message`` + ``json.loads`` on
the same upstream, in the same run. The upstream runs in a child process and
writes pre-encoded frames straight to the transport, so that the clients are
what is measured. Target (issue #4): tenantry >= 0.85 of the raw loop.

    python benchmarks/bench_socket.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import trio
import trio_websocket

import tenantry
from tenantry.testing import open_fake_upstream


async def serve(events: int) -> None:
    frames = [
        json.dumps({"type": "chats.update", "data": {"id": i, "seq": i}}) for i in range(events)
    ]
    async with open_fake_upstream() as upstream:
        print(await upstream.serve_tcp(), flush=True)
        served = 0
        while True:
            connection = await upstream.wait_connections(served + 1)
            served += 1
            for start in range(0, events, 1000):
                await connection.blast(frames[start : start + 1000])
            await connection.close(1000)


async def raw(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    received = 0
    async with trio_websocket.open_websocket_url(url) as ws:
        try:
            while True:
                json.loads(await ws.get_message())
                received += 1
        except trio_websocket.ConnectionClosed:
            pass
    return received, time.perf_counter() - start


async def with_tenantry(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    received = 0
    config = tenantry.BufferConfig(always_buffer=True)
    async with (
        tenantry.open_socket(
            url, tenant_id="bench", options=tenantry.SocketOptions(buffer=config)
        ) as sock,
        sock.events.subscribe() as batches,
    ):
        async for batch in batches:
            received += batch.count
    return received, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.events)
        return
    command = [sys.executable, __file__, "--serve", "--events", str(args.events)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:  # noqa: S603 - this script
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            ratios, ours, theirs = [], [], []
            for r in range(args.rounds):
                order = (raw, with_tenantry) if r % 2 else (with_tenantry, raw)
                results = {}
                for client in order:
                    count, seconds = trio.run(client, url)
                    assert count == args.events, (client.__name__, count)
                    results[client] = count / seconds
                ours.append(results[with_tenantry])
                theirs.append(results[raw])
                ratios.append(results[with_tenantry] / results[raw])
        finally:
            server.kill()
    print(f"socket end to end, loopback TCP, {args.events:,} small JSON events per connection:")
    print(f"  tenantry open_socket   median {statistics.median(ours):>12,.0f} events/s")
    print(f"  raw trio-websocket     median {statistics.median(theirs):>12,.0f} events/s")
    print(f"  ratio per round        {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"  median ratio           {statistics.median(ratios):.2f}   (target >= 0.85)")


if __name__ == "__main__":
    main()
