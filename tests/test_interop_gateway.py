"""Interop: the gateway example (examples/gateway.py) against a gateway tenantry did not write.

The server is tests/gateway_server.py (``websockets``, asyncio, its own thread), over
loopback in real time: every wait is bounded (``trio.fail_after``), and the server's record
is read through ``trio.to_thread`` (it blocks). Each test says what it proves; run with
``-s`` to see the figures (events dispatched / received / duplicates per tenant, how each
connection ended by raw close code).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest
import trio

import tenantry
from gateway_server import COMPRESSED, GatewayServer, Record, Scenario

Start = Callable[..., GatewayServer]
FAST = tenantry.Backoff(delays=(0.1,), jitter=0)  # reconnect soon: real time is short here
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gateway_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


def counting(received: Counter[int]) -> Callable[[tenantry.Socket], Awaitable[None]]:
    """A handler counting the events it receives by their ``n``."""

    async def handler(sock: tenantry.Socket) -> None:
        async with sock.events.subscribe() as batches:
            async for batch in batches:
                received.update(event.data["n"] for event in batch)

    return handler


def token_of(server: GatewayServer, tenant: str) -> Callable[[], Awaitable[str]]:
    async def token() -> str:  # a token endpoint, asked for every attempt
        return server.token(tenant)

    return token


async def record(server: GatewayServer, tenant: str) -> Record:
    return await trio.to_thread.run_sync(server.record, tenant)


def settled(record: Record, received: Counter[int], scenario: Scenario) -> bool:
    """Every event received, and the session attached once more than there are faults.

    Each fault here is applied to the k-th attach (READY or RESUMED, on a new connection
    or the same one) and leads to another; the last attach gets none.
    """
    sessions = {conn.session_id for conn in record.connections if conn.session_id}
    attaches = len(sessions) + len(record.replays)
    return set(received) >= set(range(1, scenario.events + 1)) and attaches > len(scenario.faults)


def ends_by_code(record: Record) -> Counter[str]:
    """How the tenant's connections ended, by the raw close code on the wire (live: open)."""
    ends: Counter[str] = Counter()
    for conn in record.connections[:-1]:
        if conn.server_close is not None:
            ends[f"server {conn.server_close}"] += 1
        elif conn.client_close is not None:
            ends[f"client {conn.client_close}"] += 1
        else:
            ends["dropped"] += 1
    return ends


def figures(name: str, record: Record, received: Counter[int]) -> str:
    duplicates = sum(count - 1 for count in received.values())
    ends = ", ".join(f"{code}: {n}" for code, n in sorted(ends_by_code(record).items()))
    return (
        f"{name:<16} dispatched {len(record.dispatched):>4}  received {sum(received.values()):>4}"
        f"  duplicates {duplicates}  connections {len(record.connections)}"
        f"  replays {sum(count for _, _, count in record.replays):>3}  ended: {ends}"
    )


async def wait_settled(
    server: GatewayServer,
    scenarios: dict[str, Scenario],
    received: dict[str, Counter[int]],
    hub: tenantry.Hub,
    within: float = 15.0,
) -> dict[str, Record]:
    """Every tenant's record once it has `settled` (else fail, showing where each one is)."""
    records = {name: await record(server, name) for name in scenarios}
    with trio.move_on_after(within):
        while not all(settled(records[n], received[n], s) for n, s in scenarios.items()):
            await trio.sleep(0.05)
            records = {name: await record(server, name) for name in scenarios}
        return records
    status = "\n".join(f"{s.tenant_id}: {s.state} {s.last_disconnect}" for s in hub.status())
    shown = "\n".join(figures(name, records[name], received[name]) for name in scenarios)
    conns = "\n".join(f"{name}: {records[name].connections}" for name in scenarios)
    pytest.fail(f"not settled after {within} s:\n{shown}\n{status}\n{conns}")


def show(line: str) -> None:
    """Print a line of figures (seen with ``pytest -s``)."""
    print(line)  # noqa: T201


SCENARIOS = {
    "close_4000": ("close_4000", "close_4000"),
    "reconnect": ("reconnect", "reconnect"),
    "drop": ("drop", "drop"),
    "invalid_session": ("invalid_session", "invalid_session"),
    "zombie": ("zombie",),
    "mixed": (
        "reconnect",
        "drop",
        "zombie",
        "invalid_session",
        "close_4000",
        "reconnect",
        "drop",
    ),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "zlib-stream"])
async def test_every_dispatched_event_arrives_once_across_reconnects_and_resumes(
    gateway: Start, compressed: bool
) -> None:
    """Six tenants in one hub, each with scripted faults; all of them resume with no loss."""
    scenarios = {
        name: Scenario(events=150, interval=0.02, batch=3, faults=faults, split_every=3)
        for name, faults in SCENARIOS.items()
    }
    server = gateway(scenarios)
    received: dict[str, Counter[int]] = {name: Counter() for name in scenarios}
    async with tenantry.open_hub() as hub:
        for name in scenarios:
            handler = counting(received[name])
            spec = example.gateway_tenant(
                name,
                server.url + (COMPRESSED if compressed else ""),
                token_of(server, name),
                handler,
                backoff=FAST,
            )
            await hub.add(spec)
        records = await wait_settled(server, scenarios, received, hub)
        metrics = hub.metrics()
        statuses = {status.tenant_id: status for status in hub.status()}
    show(f"{'zlib-stream' if compressed else 'plain'}:")
    for name, scenario in scenarios.items():
        rec, got = records[name], received[name]
        show(figures(name, rec, got))
        assert sorted(n for _, _, n in rec.dispatched) == list(range(1, scenario.events + 1))
        assert set(got) == set(range(1, scenario.events + 1))
        assert max(got.values()) == 1, f"{name}: duplicates"
        assert statuses[name].state is not tenantry.TenantState.STOPPED
        assert statuses[name].breaker_trips == 0  # READY/RESUMED reset the failures
        assert all(h.status == 101 for h in rec.handshakes)
        assert all(conn.compressed is compressed for conn in rec.connections)
        sessions = {conn.session_id for conn in rec.connections}
        assert len(sessions) == 1, f"{name}: a reconnect did not resume: {sessions}"
        for conn in rec.connections:  # the close code the client sent is the one asked for
            if conn.fault in ("reconnect", "zombie"):
                assert conn.client_close == example.KEEP_SESSION, (name, conn)
            elif conn.fault == "close_4000":
                assert conn.server_close == 4000, (name, conn)
    assert metrics.value("tenantry_frames_rejected_total") == 0  # partial chunks are no bad frames
    for sample in metrics.samples:
        if sample.name == "tenantry_reconnects_total":
            show(f"  tenantry_reconnects_total {dict(sample.labels)} {sample.value:.0f}")


async def wait_stopped(
    hub: tenantry.Hub, tenant: str, within: float = 5.0
) -> tenantry.TenantStatus:
    with trio.fail_after(within):
        while True:
            [status] = [s for s in hub.status() if s.tenant_id == tenant]
            if status.state is tenantry.TenantState.STOPPED:
                return status
            await trio.sleep(0.02)


async def test_a_token_that_expires_every_second_never_stops_a_tenant(gateway: Start) -> None:
    """Tokens live 1-2 s; the tenant reconnects over 3+ s, with a fresh token every attempt.

    The control tenant sends the token it got first: its handshake is refused with 401
    once that token has expired, and 401 stops it.
    """
    scenario = Scenario(events=100, interval=0.03, faults=("close_4000",) * 5, fault_after=0.6)
    server = gateway({"fresh": scenario, "stale": scenario}, token_ttl=1.0)
    received: Counter[int] = Counter()
    first = server.token("stale")

    async def stale_token() -> str:
        return first

    async with tenantry.open_hub() as hub:
        await hub.add(
            example.gateway_tenant(
                "fresh", server.url, token_of(server, "fresh"), counting(received), backoff=FAST
            )
        )
        await hub.add(
            example.gateway_tenant(
                "stale", server.url, stale_token, counting(Counter()), backoff=FAST
            )
        )
        stale = await wait_stopped(hub, "stale")
        records = await wait_settled(server, {"fresh": scenario}, {"fresh": received}, hub)
        [fresh] = [s for s in hub.status() if s.tenant_id == "fresh"]
    rec = records["fresh"]
    show(figures("fresh token", rec, received))
    assert stale.last_disconnect is not None
    assert stale.last_disconnect.http_status == 401
    assert fresh.state is not tenantry.TenantState.STOPPED
    assert [h.status for h in rec.handshakes] == [101] * 6
    assert rec.handshakes[-1].at - rec.handshakes[0].at > 2 * server.token_ttl
    assert set(received) == set(range(1, 101))
    assert max(received.values()) == 1


async def test_authentication_failed_4004_stops_the_tenant(gateway: Start) -> None:
    server = gateway({"revoked": Scenario(revoked=True)})
    async with tenantry.open_hub() as hub:
        await hub.add(
            example.gateway_tenant(
                "revoked",
                server.url,
                token_of(server, "revoked"),
                counting(Counter()),
                backoff=FAST,
            )
        )
        status = await wait_stopped(hub, "revoked")
        metrics = hub.metrics()
    reason = status.last_disconnect
    assert reason is not None
    assert (reason.code, reason.close_code, reason.name) == (4004, 4004, "authentication_failed")
    assert len((await record(server, "revoked")).connections) == 1
    assert metrics.value("tenantry_reconnects_total", reason="authentication_failed") == 1


async def test_retry_after_of_a_429_is_honoured(gateway: Start) -> None:
    """The first handshake gets 429 Retry-After: 1; the next one comes no sooner (backoff 0.1)."""
    scenario = Scenario(events=20, throttle={1: 1})
    server = gateway({"throttled": scenario})
    received: Counter[int] = Counter()
    async with tenantry.open_hub() as hub:
        await hub.add(
            example.gateway_tenant(
                "throttled",
                server.url,
                token_of(server, "throttled"),
                counting(received),
                backoff=FAST,
            )
        )
        records = await wait_settled(server, {"throttled": scenario}, {"throttled": received}, hub)
    first, second = records["throttled"].handshakes[:2]
    assert (first.status, first.retry_after, second.status) == (429, 1, 101)
    assert second.at - first.at >= 1.0
    assert set(received) == set(range(1, 21))


def test_the_example_runs_as_a_command() -> None:
    """``python examples/gateway.py --help`` works: the example is a runnable client."""
    run = subprocess.run(  # noqa: S603 - the example, with this interpreter
        [sys.executable, EXAMPLE, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "--token-file" in run.stdout
