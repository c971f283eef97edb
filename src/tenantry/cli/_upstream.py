"""``tenantry upstream``: the soak's fake upstream, served over TCP for your own application.

Every connection, whatever its path, gets its own chat-like `Traffic` at
``rate`` events per second and, if asked, a fault now and then; each fault
kind is described by `Fault`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import final

import attrs
import trio
import trio_websocket

from .._validate import check_between, check_count, check_seconds
from ..testing import FakeUpstream, UpstreamConnection, open_fake_upstream
from ._faults import Fault
from ._traffic import Traffic

__all__ = ["UpstreamConfig", "port_refusal", "serve_upstream"]

_CAP_NET_BIND_SERVICE = 10
"""The capability bit that lets a process listen below the unprivileged ports (Linux)."""


@final
@attrs.frozen
class UpstreamConfig:
    """What ``tenantry upstream`` serves.

    Args:
        port: TCP port (0: any free port).
        host: Interface to listen on; loopback by default.
        rate: Events per second sent on each connection.
        fault_every: Mean seconds between two faults on one connection;
            None for none.
        faults: The kinds of fault to draw from.
        seed: Traffic and faults derive from it and the connection's number.
        replace: A second connection to a path closes the older one with
            close code 4440 (connection replaced), as WhatsApp Web does;
            each such replacement is reported and counted.
    """

    port: int = 8765
    host: str = "127.0.0.1"
    rate: float = 1.0
    fault_every: float | None = None
    faults: tuple[Fault, ...] = tuple(Fault)
    seed: int = 1
    replace: bool = False

    def __attrs_post_init__(self) -> None:
        check_count(self.port, "port", minimum=0)
        if self.port > 65535:
            raise ValueError(f"port must be <= 65535, got {self.port}")
        check_between(self.rate, "rate", 0.001, 100_000)
        if self.fault_every is not None:
            check_seconds(self.fault_every, "fault_every")
        check_count(self.seed, "seed", minimum=0)


def port_refusal(port: int, *, proc: Path = Path("/proc")) -> str | None:
    """Why this process may not listen on *port*, or None if it may (or cannot tell).

    Linux lets a process listen below ``ip_unprivileged_port_start`` (1024 by
    default) only with the ``CAP_NET_BIND_SERVICE`` capability, which root
    has. Both are read from *proc*; elsewhere the answer is None and binding
    says what is wrong.
    """
    if port == 0:
        return None
    try:
        start = int((proc / "sys/net/ipv4/ip_unprivileged_port_start").read_text())
        status = (proc / "self/status").read_text()
        capabilities = next(
            int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    if port >= start or capabilities >> _CAP_NET_BIND_SERVICE & 1:
        return None
    return (
        f"port {port} is privileged: listening below {start} needs root "
        "(or CAP_NET_BIND_SERVICE); try --port 8765"
    )


async def serve_upstream(
    config: UpstreamConfig,
    say: Callable[[str], None],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the URL through *task_status* and events through *say*.

    It runs for days: the upstream remembers no connection once it has ended
    (``history=0``), only what it counts.
    """
    async with (
        open_fake_upstream(history=0, replace=config.replace) as upstream,
        trio.open_nursery() as nursery,
    ):
        url = await upstream.serve_tcp(config.port, host=config.host)
        task_status.started(url)
        served = 0
        while True:
            served += 1
            try:
                connection = await upstream.wait_connections(served)
            except LookupError:  # it came and went before this loop got to it
                say(f"connection {served - 1} ended before it was served")
                continue
            say(f"connection {connection.index} on {connection.path}")
            nursery.start_soon(_serve_connection, upstream, connection, config, say)


async def _serve_connection(
    upstream: FakeUpstream,
    connection: UpstreamConnection,
    config: UpstreamConfig,
    say: Callable[[str], None],
) -> None:
    """Serve *connection* until it ends; report it if a newer one replaced it."""
    await _feed_and_break(upstream, connection, config, say)
    if connection.replaced:
        say(
            f"connection {connection.index} on {connection.path} replaced by a newer one "
            f"({upstream.replacements} replacements so far)"
        )


async def _feed_and_break(
    upstream: FakeUpstream,
    connection: UpstreamConnection,
    config: UpstreamConfig,
    say: Callable[[str], None],
) -> None:
    """Stream events into *connection*, and break it now and then, until it ends."""
    seed = f"{config.seed}:{connection.index}"
    traffic, rng = Traffic(seed), random.Random(seed)  # noqa: S311 - reproducible, not secret
    with suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        async with trio.open_nursery() as nursery:
            feeding = trio.CancelScope()
            nursery.start_soon(_feed, connection, traffic, config.rate, feeding)
            if config.fault_every is None or not config.faults:
                return
            while True:
                await trio.sleep(rng.expovariate(1 / config.fault_every))
                if connection.ended:
                    return
                fault = rng.choice(config.faults)
                say(f"fault {fault.value} on connection {connection.index} ({connection.path})")
                if fault.ends_connection:
                    feeding.cancel()  # a closed or stalled upstream sends nothing more
                await fault.inject(upstream, connection)
                if fault.ends_connection:
                    return


async def _feed(
    connection: UpstreamConnection, traffic: Traffic, rate: float, scope: trio.CancelScope
) -> None:
    with scope, suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        while True:
            await connection.blast((traffic.next_frame(),))
            await trio.sleep(1 / rate)
