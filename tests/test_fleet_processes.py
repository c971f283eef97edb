"""A fleet of ``tenantry member`` processes on a real PostgreSQL, killed, frozen and cut off.

Each test starts a few member *processes* (``python -m tenantry member``,
the built-in ``fake_upstream_spec``), each reaching the session's PostgreSQL
through a loopback proxy of its own (so one member can be cut off), and a
440-replacing `FakeUpstream` served over TCP in the test's own Trio run.
The upstream is the judge:

* *replacements*: connections it closed with 4440 because a newer one
  came for the same tenant -- a tenant connected twice. Zero in every
  scenario, except the frozen process's old socket displaced by its
  successor (a lease is a timer, not a fence), counted apart;
* *zombie sends*: messages that arrived on a connection after a newer one
  to the same tenant was accepted. Zero, always;
* *failover*: from the fault until the last moved tenant's new connection
  was accepted, printed per scenario (``pytest -s`` shows it).

These tests run in real time, with a short TTL, and every wait has a
bound. ``TENANTRY_FLEET_FULL=1`` (``nox -s fleet``) runs them with more
members and tenants. The negative control gives one member a slow clock
(the test aid ``TENANTRY_TEST_CLOCK_RATE``): it must produce replacements,
or the suite could not see them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from postgres import PostgresServer, Proxy, database_stopped, open_proxy
from tenantry.cli._member import CLOCK_RATE_VARIABLE, DSN_VARIABLE
from tenantry.cluster import PostgresCoordinator
from tenantry.cluster._assignment import rendezvous
from tenantry.testing import FakeUpstream, UpstreamConnection, open_fake_upstream

FULL = os.environ.get("TENANTRY_FLEET_FULL") == "1"
MEMBERS = 5 if FULL else 3
TENANTS = 60 if FULL else 6
TTL = 3.0
BOUND = 60.0 if FULL else 30.0
"""Seconds any one wait may take before the test fails: generous, for a loaded machine."""


def lease_args(ttl: float) -> list[str]:
    return [
        *("--ttl", str(ttl), "--rho", "0.05", "--close-budget", "0.5"),
        *("--settle-delay", "1", "--poll-interval", "1", "--store-timeout", "1"),
        *("--handoff-rate", "20", "--handoff-burst", "20", "--status-every", "1"),
    ]


def hold(ttl: float) -> float:
    """The lease a renewal gives (ttl * (1 - rho) - close_budget), as `lease_args` sets it."""
    return ttl * 0.95 - 0.5


def report(scenario: str, ttl: float = TTL, **figures: Any) -> None:
    shown = ", ".join(
        f"{key} {value:.2f} s" if isinstance(value, float) else f"{key} {value}"
        for key, value in figures.items()
    )
    print(  # noqa: T201 - the measured figures, shown by pytest -s
        f"\nfleet [{scenario}] {MEMBERS} members, {TENANTS} tenants, ttl {ttl:g} s: {shown}"
    )


def report_clean(crew: Fleet, scenario: str, **figures: Any) -> None:
    """Report *figures* with the judge's, which must be clean: no tenant was connected twice
    (no replacement) and no member sent after its deadline (no zombie send)."""
    replacements, zombie_sends = crew.judge.replacements, crew.judge.zombie_sends()
    report(scenario, **figures, replacements=replacements, zombie_sends=zombie_sends)
    assert replacements == 0
    assert zombie_sends == 0


# -- the upstream: accepts, feeds, and judges -------------------------------------------


@attrs.define(eq=False)
class Wire(trio.abc.Stream):
    """The upstream's end of one TCP connection, counting the client's data frames.

    trio-websocket discards the messages that arrive once the upstream has
    started closing a connection (as it does to replace it), so the frames
    are counted here, below it, as they arrive: text and binary frames after
    the opening handshake (client frames are masked, RFC 6455 section 5.2).
    """

    stream: trio.abc.Stream
    frames: int = 0
    _pending: bytearray = attrs.field(factory=bytearray)
    _opened: bool = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self._pending += data
        self._count()
        return data

    def _count(self) -> None:
        if not self._opened:
            end = self._pending.find(b"\r\n\r\n")
            if end < 0:
                return
            del self._pending[: end + 4]
            self._opened = True
        while len(self._pending) >= 2:
            size, at = self._pending[1] & 0x7F, 2
            if size >= 126:
                width = 2 if size == 126 else 8
                if len(self._pending) < at + width:
                    return
                size, at = int.from_bytes(self._pending[at : at + width], "big"), at + width
            at += 4 if self._pending[1] & 0x80 else 0
            if len(self._pending) < at + size:
                return
            if self._pending[0] & 0x0F in (1, 2):
                self.frames += 1
            del self._pending[: at + size]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@attrs.define
class Judge:
    """The 440-replacing upstream, with what the verdicts need."""

    upstream: FakeUpstream
    url: str = ""
    accepted_at: dict[int, float] = attrs.field(factory=dict)
    """Connection index -> when it was accepted (the test's clock)."""
    wires: dict[int, Wire] = attrs.field(factory=dict)
    superseded: dict[int, int] = attrs.field(factory=dict)
    """Connection index -> the frames it had sent when a newer one to its path was accepted."""

    def live(self, tenant: str) -> list[UpstreamConnection]:
        return [c for c in self.upstream.connections_to(f"/{tenant}") if not c.ended]

    def newest(self, tenant: str) -> UpstreamConnection | None:
        connections = self.upstream.connections_to(f"/{tenant}")
        return connections[-1] if connections else None

    @property
    def replacements(self) -> int:
        return self.upstream.replacements

    def replaced(self) -> list[UpstreamConnection]:
        return [c for c in self.upstream.connections if c.replaced]

    def zombie_sends(self) -> int:
        """Data frames that came on a connection after a newer one to its tenant was accepted."""
        return sum(self.wires[index].frames - frames for index, frames in self.superseded.items())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def serve_wire(stream: trio.abc.Stream) -> None:
            await self.upstream._serve_stream(Wire(stream))

        served = 0
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, serve_wire, 0)
            host, port = listeners[0].socket.getsockname()[:2]
            self.url = f"ws://{host}:{port}/"
            task_status.started()
            while True:
                served += 1
                connection = await self.upstream.wait_connections(served)
                self.accepted_at[connection.index] = trio.current_time()
                with contextlib.suppress(trio_websocket.ConnectionClosed):  # already gone
                    wire = connection._gate._stream
                    assert isinstance(wire, Wire)
                    self.wires[connection.index] = wire
                for older in self.upstream.connections_to(connection.path)[:-1]:
                    if older.index in self.wires:
                        self.superseded.setdefault(older.index, self.wires[older.index].frames)
                nursery.start_soon(_feed, connection)


async def _feed(connection: UpstreamConnection) -> None:
    with contextlib.suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
        await connection.stream(1_000_000_000, rate=4)


# -- the members ------------------------------------------------------------------------


@attrs.define
class MemberProcess:
    """One ``tenantry member`` process and the status lines it printed."""

    name: str
    process: trio.Process
    proxy: Proxy
    lines: list[tuple[float, dict[str, Any]]] = attrs.field(factory=list)

    @property
    def status(self) -> dict[str, Any]:
        return self.lines[-1][1] if self.lines else {"tenants": {}, "registered": False}

    @property
    def tenants(self) -> dict[str, int]:
        tenants: dict[str, int] = self.status["tenants"]
        return tenants

    def lines_since(self, instant: float) -> list[dict[str, Any]]:
        return [line for at, line in self.lines if at >= instant]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffered = b""
        async for chunk in self.process.stdout:
            buffered += chunk
            *whole, buffered = buffered.split(b"\n")
            now = trio.current_time()
            self.lines.extend((now, json.loads(line)) for line in whole if line.strip())


async def _kill_now(process: trio.Process) -> None:
    process.send_signal(signal.SIGCONT)  # a stopped process is killed all the same
    process.kill()
    await process.wait()


@attrs.define
class Fleet:
    """The members, the upstream and the store of one test."""

    postgres: PostgresServer
    schema: str
    judge: Judge
    nursery: trio.Nursery
    logs: Path
    members: dict[str, MemberProcess] = attrs.field(factory=dict)
    tenants: list[str] = attrs.field(factory=list)
    gone: set[str] = attrs.field(factory=set)
    """Members killed, stopped or cut off: their status lines are not the truth."""

    async def put_tenants(self, count: int) -> None:
        store = PostgresCoordinator(self.postgres.dsn(), schema=self.schema)
        try:
            for i in range(count):
                tenant = f"t{i}"
                await store.put_tenant(tenant, {"url": f"{self.judge.url}{tenant}"})
                self.tenants.append(tenant)
        finally:
            await store.aclose()

    async def start(
        self, name: str, *, ttl: float = TTL, env: Mapping[str, str] | None = None
    ) -> MemberProcess:
        proxy = await self.nursery.start(_serve_proxy, self.postgres.port)
        command = [
            *(sys.executable, "-m", "tenantry", "member", "--name", name),
            *("--spec-factory", "tenantry.cli:fake_upstream_spec", "--schema", self.schema),
            *lease_args(ttl),
            *("--log-level", "info"),
        ]
        environment = {
            **os.environ,
            DSN_VARIABLE: self.postgres.dsn(port=proxy.port),
            "PYTHONPATH": os.pathsep.join(sys.path),
            **(env or {}),
        }
        log = (self.logs / f"{name}.log").open("ab")
        process = await self.nursery.start(
            functools.partial(
                trio.run_process,
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                env=environment,
                check=False,
                deliver_cancel=_kill_now,
            )
        )
        log.close()  # the child has its own copy
        member = MemberProcess(name, process, proxy)
        self.members[name] = member
        self.nursery.start_soon(member.read)
        return member

    def alive(self) -> list[MemberProcess]:
        return [m for name, m in self.members.items() if name not in self.gone]

    def expected(self) -> dict[str, str | None]:
        """Tenant -> the live member rendezvous hashing gives it."""
        names = [m.name for m in self.alive()]
        return {tenant: rendezvous(tenant, names) for tenant in self.tenants}

    def owners(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {tenant: [] for tenant in self.tenants}
        for member in self.alive():
            for tenant in member.tenants:
                found[tenant].append(member.name)
        return found

    def settled(self) -> bool:
        """Every tenant run by the member hashing gives it, on exactly one live connection."""
        owners, expected = self.owners(), self.expected()
        return all(
            owners[tenant] == [expected[tenant]] and len(self.judge.live(tenant)) == 1
            for tenant in self.tenants
        )

    def moved_since(self, instant: float, tenants: list[str]) -> bool:
        """Each of *tenants* has a live connection accepted after *instant*, its only one."""
        for tenant in tenants:
            live = self.judge.live(tenant)
            if len(live) != 1 or self.judge.accepted_at.get(live[0].index, -1) < instant:
                return False
        return True

    def failover(self, instant: float, tenants: list[str]) -> float:
        """From *instant* to the last of *tenants*' new connections."""
        newest = (self.judge.newest(tenant) for tenant in tenants)
        return max(self.judge.accepted_at[c.index] for c in newest if c is not None) - instant


async def _serve_proxy(target: int, *, task_status: trio.TaskStatus[Proxy]) -> None:
    async with open_proxy(target) as proxy:
        task_status.started(proxy)
        await trio.sleep_forever()


async def wait_until(what: str, condition: Callable[[], bool], bound: float = BOUND) -> float:
    """Poll *condition* until it holds (every 50 ms, at most *bound* s); returns the time."""
    with trio.move_on_after(bound):
        while not condition():  # noqa: ASYNC110 - other processes' lines, the upstream's counts
            await trio.sleep(0.05)
        return trio.current_time()
    pytest.fail(f"not within {bound:g} s: {what}")


@contextlib.asynccontextmanager
async def fleet(postgres: PostgresServer, tmp_path: Path, tenants: int) -> AsyncIterator[Fleet]:
    async with (
        open_fake_upstream(replace=True, history=100_000) as upstream,
        trio.open_nursery() as nursery,
    ):
        judge = Judge(upstream)
        await nursery.start(judge.serve)
        crew = Fleet(postgres, f"fleet_{secrets.token_hex(4)}", judge, nursery, tmp_path)
        await crew.put_tenants(tenants)
        try:
            yield crew
        finally:
            nursery.cancel_scope.cancel()


def winning_name(prefix: str, crew: Fleet) -> str:
    """A member name that rendezvous hashing gives at least one tenant beside the live ones."""
    names = [m.name for m in crew.alive()]
    for i in range(1000):  # pragma: no branch - a few tries find one
        name = f"{prefix}{i}"
        if any(rendezvous(tenant, [*names, name]) == name for tenant in crew.tenants):
            return name
    raise AssertionError("no name wins a tenant")


async def started(crew: Fleet, count: int) -> float:
    """Start *count* members and wait until the tenants are spread; returns when they were."""
    for i in range(count):
        await crew.start(f"m{i}")
    return await wait_until("the tenants spread over the members", crew.settled)


# trio-websocket's open_websocket_url leaves its TCP socket to the garbage collector when the
# server closes first (here: the replaced connection).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_judge_counts_what_a_superseded_connection_sends() -> None:
    async with open_fake_upstream(replace=True) as upstream, trio.open_nursery() as nursery:
        judge = Judge(upstream)
        await nursery.start(judge.serve)
        url = f"{judge.url}t1"
        async with trio_websocket.open_websocket_url(url) as old:
            await old.send_message("before")
            await upstream.wait_connections(1)
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await old.get_message()  # the first event: the upstream read "before" by now
            assert judge.zombie_sends() == 0
            async with trio_websocket.open_websocket_url(url):
                await upstream.wait_connections(2)
                with contextlib.suppress(trio_websocket.ConnectionClosed):
                    await old.send_message("after" * 100)  # a 500-byte frame: 2 length bytes
                    await old.send_message("after")
                with trio.fail_after(BOUND):
                    while judge.zombie_sends() < 2:  # noqa: ASYNC110 - bytes on their way
                        await trio.sleep(0.01)
        assert judge.replacements == 1
        nursery.cancel_scope.cancel()


# -- the scenarios ----------------------------------------------------------------------


async def test_a_killed_members_tenants_move_within_about_the_ttl(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        await started(crew, MEMBERS)
        victim = max(crew.alive(), key=lambda m: len(m.tenants))
        moved = list(victim.tenants)
        killed_at = trio.current_time()
        victim.process.kill()
        crew.gone.add(victim.name)
        await wait_until("the killed member's tenants reconnect elsewhere", crew.settled)
        failover = crew.failover(killed_at, moved)
        report_clean(crew, "kill -9", moved=len(moved), failover=failover)


async def test_a_frozen_member_drops_its_tenants_on_waking_and_sends_nothing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        await started(crew, MEMBERS)
        frozen = max(crew.alive(), key=lambda m: len(m.tenants))
        moved = list(frozen.tenants)
        before = {tenant: crew.judge.newest(tenant) for tenant in moved}
        stopped_at = trio.current_time()
        frozen.signal(signal.SIGSTOP)
        crew.gone.add(frozen.name)
        await wait_until("the frozen member's tenants reconnect elsewhere", crew.settled)
        failover = crew.failover(stopped_at, moved)
        woken_at = trio.current_time()
        frozen.signal(signal.SIGCONT)
        await wait_until(
            "the woken member reports it lost its lease and dropped its tenants",
            lambda: any(
                not line["tenants"] and sum(line["losses"].values()) > 0
                for line in frozen.lines_since(woken_at)
            ),
        )
        crew.gone.discard(frozen.name)  # it rejoins: the tenants spread again
        await wait_until("the tenants spread again", crew.settled)
        displaced = [c for c in crew.judge.replaced() if c in before.values()]
        report(
            "SIGSTOP member",
            moved=len(moved),
            failover=failover,
            replacements=crew.judge.replacements,
            frozen_displaced=len(displaced),
            zombie_sends=crew.judge.zombie_sends(),
        )
        assert crew.judge.zombie_sends() == 0
        # The only replacements: the frozen process's sockets, displaced by the successors.
        assert crew.judge.replacements == len(displaced) <= len(moved)


async def test_a_frozen_database_makes_every_member_drop_everything_then_recover(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        await started(crew, MEMBERS)
        with database_stopped(postgres) as resume:
            stopped_at = trio.current_time()
            dropped_at = await wait_until(
                "every member drops every tenant (fail closed)",
                lambda: (
                    all(not m.tenants for m in crew.alive())
                    and not any(crew.judge.live(t) for t in crew.tenants)
                ),
            )
            resumed_at = trio.current_time()
            resume()
        recovered_at = await wait_until("the fleet recovers every tenant", crew.settled)
        report_clean(
            crew,
            "SIGSTOP database",
            dropped_after=dropped_at - stopped_at,
            recovered_after=recovered_at - resumed_at,
        )


async def test_a_member_cut_off_from_the_database_drops_and_the_others_take_over(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        await started(crew, MEMBERS)
        cut = max(crew.alive(), key=lambda m: len(m.tenants))
        moved = list(cut.tenants)
        cut_at = trio.current_time()
        cut.proxy.freeze()
        crew.gone.add(cut.name)
        await wait_until("the cut-off member's tenants reconnect elsewhere", crew.settled)
        failover = crew.failover(cut_at, moved)
        assert not cut.tenants  # it dropped them (its own status line says so)
        cut.proxy.thaw()
        crew.gone.discard(cut.name)
        await wait_until("it rejoins and the tenants spread again", crew.settled)
        report_clean(crew, "partitioned member", moved=len(moved), failover=failover)


async def test_a_member_joins_takes_its_share_and_leaves_handing_off(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        await started(crew, MEMBERS - 1)
        joined_at = trio.current_time()
        newcomer = await crew.start(winning_name("newcomer", crew))
        balanced_at = await wait_until("the newcomer takes its share", crew.settled)
        share = list(newcomer.tenants)
        left_at = trio.current_time()
        newcomer.signal(signal.SIGTERM)
        crew.gone.add(newcomer.name)
        await wait_until("the newcomer's tenants move back", crew.settled)
        handoff = crew.failover(left_at, share)
        with trio.fail_after(BOUND):
            status = await newcomer.process.wait()
        report_clean(
            crew,
            "join and leave",
            share=len(share),
            join=balanced_at - joined_at,
            leave_handoff=handoff,
        )
        assert share
        assert status == 0
        assert newcomer.tenants == {}  # its last line, written after it left


async def test_control_a_member_whose_clock_runs_slow_gets_tenants_connected_twice(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    ttl = 4.0  # at half speed it still renews in time (every 2.7 s of real time)
    async with fleet(postgres, tmp_path, TENANTS) as crew:
        for i in range(MEMBERS - 1):
            await crew.start(f"m{i}", ttl=ttl)
        slow_name = winning_name("slow", crew)
        slow = await crew.start(slow_name, ttl=ttl, env={CLOCK_RATE_VARIABLE: "0.5"})
        await wait_until("the tenants spread over the members", crew.settled)
        await wait_until("the slow member holds tenants", lambda: bool(slow.tenants))
        cut_at = trio.current_time()
        slow.proxy.freeze()
        crew.gone.add(slow.name)
        await wait_until("the others take the slow member's tenants", crew.settled)
        await wait_until("the upstream replaced a connection", lambda: crew.judge.replacements > 0)
        failover = crew.failover(cut_at, crew.tenants)
        await wait_until(
            "the slow member drops its tenants at its (late) deadline",
            lambda: any(not line["tenants"] for line in slow.lines_since(cut_at)),
        )
        report(
            "control: clock at 0.5x",
            ttl=ttl,
            failover=failover,
            replacements=crew.judge.replacements,
            slow_member_conflicts=slow.status["conflicts"],
            zombie_sends=crew.judge.zombie_sends(),
        )
        assert crew.judge.replacements > 0
        assert slow.status["conflicts"] > 0  # the member saw it too, and counted it
