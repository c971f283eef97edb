"""How long closing takes, over loopback TCP, when no close reply can come.

Two figures, each the median of ``--rounds`` runs in one process, against
servers written here with trio-websocket:

* a hub cancelled from outside (Ctrl-C, a crashing sibling task): seconds
  from the cancel until the hub's block has exited, with ``--tenants``
  connected tenants whose server answers close frames. The tenants' readers
  are cancelled with everything else, so no close reply can be read: the
  hub must not wait for one;
* a socket whose peer was declared dead (closed with the keepalive's 408)
  while the peer reads nothing more: seconds from the close until
  `open_socket`'s block has exited. Waiting for a close handshake here
  waits for a reply that cannot come.

Target for both: well under a second.

    python benchmarks/bench_close.py [--tenants N] [--rounds R]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import trio
import trio_websocket

import tenantry


async def answer_until_closed(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        pass


async def accept_then_play_dead(stream: trio.SocketStream) -> None:
    """Complete the handshake, then read nothing more, holding the connection open."""
    async with trio.open_nursery() as nursery:
        request = await trio_websocket.wrap_server_stream(nursery, stream)
        await request.accept()
        nursery.cancel_scope.cancel()  # the server's reader ends: no pong, no close reply
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


async def cancelled_hub(port: int, tenants: int) -> float:
    """Seconds from cancelling a hub of *tenants* connected tenants until its block exits."""
    connected: list[str] = []
    all_connected = trio.Event()

    async def idle(sock: tenantry.Socket) -> None:
        connected.append(sock.tenant_id)
        if len(connected) == tenants:
            all_connected.set()
        await trio.sleep_forever()

    with trio.CancelScope() as outer:
        async with tenantry.open_hub() as hub:
            for n in range(tenants):
                await hub.add(tenantry.TenantSpec(f"t{n}", f"ws://127.0.0.1:{port}/", idle))
            await all_connected.wait()
            outer.cancel()
            start = time.perf_counter()
    return time.perf_counter() - start


async def dead_peer_close(port: int) -> float:
    """Seconds from closing with 408 (a dead peer) until `open_socket`'s block exits."""
    dead = tenantry.DisconnectReason(tenantry.ReasonCode.CONNECTION_LOST, "declared dead")
    async with tenantry.open_socket(f"ws://127.0.0.1:{port}/", tenant_id="t") as sock:
        await trio.sleep(0.05)  # the server has stopped reading by now
        start = time.perf_counter()
        sock.close(dead)
        await trio.sleep_forever()
    return time.perf_counter() - start


async def run(tenants: int, rounds: int) -> tuple[list[float], list[float]]:
    async with trio.open_nursery() as nursery:
        answering = await nursery.start(
            trio_websocket.serve_websocket, answer_until_closed, "127.0.0.1", 0, None
        )
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, accept_then_play_dead, 0, host="127.0.0.1")
        )
        dead_port = listeners[0].socket.getsockname()[1]
        hubs = [await cancelled_hub(answering.port, tenants) for _ in range(rounds)]
        sockets = [await dead_peer_close(dead_port) for _ in range(rounds)]
        nursery.cancel_scope.cancel()
    return hubs, sockets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    hubs, sockets = trio.run(run, args.tenants, args.rounds)
    print(f"closing without a close reply, loopback TCP, median of {args.rounds} rounds:")
    print(f"  hub of {args.tenants} tenants cancelled  {statistics.median(hubs):8.3f} s")
    print(f"  socket of a dead peer (408)  {statistics.median(sockets):8.3f} s")
    print("  (target: well under a second for both)")


if __name__ == "__main__":
    main()
