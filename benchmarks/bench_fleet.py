"""A fleet of member processes on a real PostgreSQL: failover, database load, rebalancing, outage.

The benchmark starts everything it measures on this machine: a PostgreSQL
server in a temporary directory (the tests' ``running_postgres``, with
``pg_stat_statements``), a fake upstream in this process that closes the
older of two connections to one tenant with 440 and counts it, and
``--members`` member processes over ``--tenants`` tenants. Then:

* **at rest**: statements per second and per tenant per minute, by kind
  (``pg_stat_statements``), over ``--rest`` seconds;
* **view**: the size and the round trip of one view (every tenant's row);
* **kills**: ``--kills`` times, a random member is killed with SIGKILL at a
  random phase of its heartbeat; failover = seconds from the kill until
  each of its tenants has a new upstream connection (per tenant, and per
  kill until the last one). The killed member then restarts under its name:
  the *rebalance fraction* is the share of tenants whose owner changed
  when it rejoined (ideal 1/N);
* **outage**: every PostgreSQL process is stopped (SIGSTOP) for
  ``--outage`` TTLs: seconds until every upstream connection is gone (the
  members fail closed), then, after SIGCONT, until every tenant is connected
  again on a balanced fleet;
* **projection**: to 10,000 tenants on 50 members with the default
  `LeaseConfig`, on paper, from the per-member and per-tenant figures.

Every time is also printed as a ratio to the TTL of the same run, the
figure the lease rule makes failover depend on. Upstream replacements
(a tenant connected twice) must stay 0.

    python benchmarks/bench_fleet.py [--tenants N] [--members M] [--kills K] [--ttl S]
    python benchmarks/bench_fleet.py --full      # 1,000 tenants, 50 kills

Needs the PostgreSQL server binaries (see tests/postgres.py) and psycopg 3.
Each member is a ``tenantry member`` process with the built-in spec factory
``tenantry.cli:fake_upstream_spec``, and the default lease scaled to
``--ttl`` (hand-offs faster, so that a rejoin does not take minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import trio

from tenantry.cluster import LeaseConfig, PostgresCoordinator
from tenantry.cluster._assignment import rendezvous
from tenantry.testing import FakeUpstream, UpstreamConnection, open_fake_upstream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import PostgresServer, database_stopped, running_postgres  # the tests'

SCHEMA = "tenantry"
PROJECTED_TENANTS = 10_000
PROJECTED_MEMBERS = 50
DEFAULT = LeaseConfig()
MONITOR = "/* bench */ "
"""Marks the benchmark's own queries, so that the statement counts leave them out."""


# -- one member ----------------------------------------------------------------------


def lease_from(args: argparse.Namespace) -> LeaseConfig:
    """The default lease scaled to ``--ttl`` (hand-offs faster, so that a rejoin is quick)."""
    scale = args.ttl / DEFAULT.ttl
    return LeaseConfig(
        ttl=args.ttl,
        rho=DEFAULT.rho,
        close_budget=DEFAULT.close_budget * scale,
        settle_delay=DEFAULT.settle_delay * scale,
        poll_interval=DEFAULT.poll_interval * scale,
        handoff_rate=200.0,
        handoff_burst=50,
    )


def member_command(name: str, args: argparse.Namespace) -> list[str]:
    """``tenantry member`` with the run's lease and the built-in spec factory for the upstream."""
    lease = lease_from(args)
    figures = {
        "--ttl": lease.ttl,
        "--rho": lease.rho,
        "--close-budget": lease.close_budget,
        "--settle-delay": lease.settle_delay,
        "--poll-interval": lease.poll_interval,
        "--handoff-rate": lease.handoff_rate,
        "--handoff-burst": lease.handoff_burst,
        "--store-timeout": lease.renew_interval,
    }
    return [
        sys.executable,
        "-m",
        "tenantry",
        "member",
        "--name",
        name,
        "--spec-factory",
        "tenantry.cli:fake_upstream_spec",
        *(str(part) for option, value in figures.items() for part in (option, value)),
    ]


# -- the benchmark's view of the fleet ------------------------------------------------


class Upstream:
    """The fake upstream's connections by tenant, with their arrival times."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.latest: dict[str, UpstreamConnection] = {}
        self.arrivals: dict[str, list[float]] = {}

    async def watch(self) -> None:
        served = 0
        while True:
            served += 1
            try:
                connection = await self.upstream.wait_connections(served)
            except LookupError:
                continue
            tenant = connection.path.lstrip("/")
            self.latest[tenant] = connection
            self.arrivals.setdefault(tenant, []).append(trio.current_time())

    def live(self) -> int:
        return sum(not c.ended for c in self.latest.values())

    def first_after(self, tenant: str, t0: float) -> float | None:
        return next((t for t in self.arrivals.get(tenant, ()) if t > t0), None)


class Database:
    """The benchmark's own connection: ownership, statement counts, the server's processes."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.Connection.connect(dsn, autocommit=True, connect_timeout=5)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def query(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(MONITOR + text, params).fetchall()

    async def aquery(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await trio.to_thread.run_sync(self.query, text, params)

    async def owners(self) -> tuple[list[str], dict[str, str | None]]:
        """Live member names, and each tenant's live owner (None if free)."""
        members = [
            name
            for (name,) in await self.aquery(
                f"SELECT name FROM {SCHEMA}.members WHERE expires_at > now() ORDER BY name"  # noqa: S608
            )
        ]
        rows = await self.aquery(
            f"SELECT t.id, m.name FROM {SCHEMA}.tenants t LEFT JOIN {SCHEMA}.members m"  # noqa: S608
            " ON m.name = t.owner_name AND m.incarnation = t.owner_incarnation"
            " AND m.expires_at > now()"
        )
        return members, dict(rows)

    def statements(self) -> dict[str, int]:
        """Calls by kind of the members' statements since the last reset."""
        counts: dict[str, int] = {}
        for text, calls in self.query("SELECT query, calls FROM pg_stat_statements"):
            if "bench */" in text or SCHEMA not in text:
                continue
            kind = classify(text)
            counts[kind] = counts.get(kind, 0) + int(calls)
        return counts


def classify(text: str) -> str:
    for marker, kind in (
        ("SET expires_at", "renew"),
        ("json_agg", "view"),
        ("epoch = t.epoch + 1", "acquire"),
        ("owner_name = NULL", "release/leave"),
        ("INSERT INTO", "register/put"),
    ):
        if marker in text:
            return kind
    return "other"


def balanced(members: list[str], owners: Mapping[str, str | None]) -> bool:
    """Every tenant owned by the member that rendezvous hashing gives it."""
    return bool(members) and all(owner == rendezvous(tid, members) for tid, owner in owners.items())


async def until(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.05
) -> float:
    """Seconds until *condition()* is true; exits naming *what* after *within* seconds."""
    start = trio.current_time()
    with trio.move_on_after(within):
        # It samples the database and the upstream: there is no event to wait on.
        while not await condition():  # noqa: ASYNC110
            await trio.sleep(every)
        return trio.current_time() - start
    sys.exit(f"bench_fleet.py: {what} did not happen within {within:g} s")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the run -------------------------------------------------------------------------


class Run:
    """The fleet under test: the member processes, the upstream, the database; each phase."""

    def __init__(
        self,
        args: argparse.Namespace,
        server: PostgresServer,
        nursery: trio.Nursery,
        upstream: Upstream,
    ) -> None:
        self.args = args
        self.server = server
        self.dsn = dsn = server.dsn()
        self.nursery = nursery
        self.upstream = upstream
        self.db = Database(dsn)
        self.admin = PostgresCoordinator(dsn)
        self.names = [f"m{i}" for i in range(args.members)]
        self.processes: dict[str, trio.Process] = {}
        self.results: dict[str, Any] = {"ttl": args.ttl}
        self.patience = 60 + args.tenants / 20

    async def start(self, name: str) -> None:
        """Start member *name* (a process of its own)."""
        run = functools.partial(
            trio.run_process,
            member_command(name, self.args),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=self.args.log,
            env={**os.environ, "TENANTRY_DSN": self.dsn},
        )
        self.processes[name] = await self.nursery.start(run)

    def members_cpu(self) -> float:
        """CPU seconds the member processes have used so far (user + system)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for process in self.processes.values():
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    async def settled(self) -> bool:
        """Every member live, every tenant on its rendezvous member and connected once."""
        members, owners = await self.db.owners()
        return (
            len(members) == self.args.members
            and balanced(members, owners)
            and self.upstream.live() == self.args.tenants
        )

    async def first_assignment(self, url: str) -> None:
        for i in range(self.args.tenants):
            await self.admin.put_tenant(f"t{i:05}", {"url": f"{url}t{i:05}"})
        for name in self.names:
            await self.start(name)
        self.results["start"] = await until(self.settled, self.patience, "the first assignment")

    async def at_rest(self) -> None:
        """Statements by kind over ``--rest`` seconds, and one view's size and round trip."""
        self.db.query("SELECT pg_stat_statements_reset()")
        start, cpu = time.monotonic(), self.members_cpu()
        await trio.sleep(self.args.rest)
        self.results["rest_counts"] = await trio.to_thread.run_sync(self.db.statements)
        self.results["rest_seconds"] = time.monotonic() - start
        self.results["rest_cpu"] = (self.members_cpu() - cpu) / self.results["rest_seconds"]
        trips = []
        for _ in range(20):
            begin = trio.current_time()
            view = await self.admin.view()
            trips.append(trio.current_time() - begin)
        rows = [
            [t.tenant_id, dict(t.description), t.owner and t.owner.name, t.epoch]
            for t in view.tenants
        ]
        self.results["view_bytes"] = len(json.dumps(rows))
        self.results["view_seconds"] = statistics.median(trips)

    async def kill_one(self, k: int, rng: random.Random) -> None:
        """Kill a random member at a random phase, time its tenants' failover, restart it."""
        r = self.results
        await trio.sleep(rng.uniform(0, lease_from(self.args).renew_interval))
        victim = rng.choice(self.names)
        _, owners = await self.db.owners()
        lost = [tid for tid, owner in owners.items() if owner == victim]
        ((left,),) = await self.db.aquery(
            f"SELECT extract(epoch FROM expires_at - now()) FROM {SCHEMA}.members"  # noqa: S608
            " WHERE name = %s",
            [victim],
        )
        t0 = trio.current_time()
        self.processes.pop(victim).kill()

        async def back() -> bool:
            return all(self.upstream.first_after(tid, t0) is not None for tid in lost)

        await until(back, 10 * self.args.ttl, f"failover after kill {k + 1}")
        times = [(self.upstream.first_after(tid, t0) or t0) - t0 for tid in lost]
        r["per_tenant"] += times
        r["after_expiry"] += [t - float(left) for t in times]
        r["per_kill"].append(max(times, default=0.0))
        _, before = await self.db.owners()
        await self.start(victim)
        r["rejoin"].append(await until(self.settled, self.patience, f"rejoin {k + 1}"))
        _, after = await self.db.owners()
        r["moved"].append(sum(before[t] != after[t] for t in after) / len(after))
        print(
            f"  kill {k + 1}/{self.args.kills}: {victim} ({len(lost)} tenants) back in "
            f"{r['per_kill'][-1]:.2f} s; rejoined in {r['rejoin'][-1]:.2f} s, "
            f"moved {r['moved'][-1]:.1%}",
            flush=True,
        )

    async def kills(self) -> None:
        rng = random.Random(self.args.draw)
        for key in ("per_tenant", "after_expiry", "per_kill", "moved", "rejoin"):
            self.results[key] = []
        before = self.upstream.upstream.replacements
        for k in range(self.args.kills):
            await self.kill_one(k, rng)
        self.results["kill_replacements"] = self.upstream.upstream.replacements - before

    async def outage(self) -> None:
        """Stop every server process for ``--outage`` TTLs: time the drop and the recovery."""
        before = self.upstream.upstream.replacements

        async def dropped() -> bool:
            return self.upstream.live() == 0

        with database_stopped(self.server):
            t0 = trio.current_time()
            self.results["drop"] = await until(dropped, 3 * self.args.ttl, "every tenant dropped")
            await trio.sleep_until(t0 + self.args.outage * self.args.ttl)
        self.results["recover"] = await until(
            self.settled, self.patience, "every tenant back after the outage"
        )
        self.results["outage_replacements"] = self.upstream.upstream.replacements - before


async def bench(args: argparse.Namespace, server: PostgresServer) -> dict[str, Any]:
    async with open_fake_upstream(history=0, replace=True) as fake, trio.open_nursery() as nursery:
        url = await fake.serve_tcp()
        upstream = Upstream(fake)
        nursery.start_soon(upstream.watch)
        run = Run(args, server, nursery, upstream)
        await run.first_assignment(url)
        await run.at_rest()
        await run.kills()
        await run.outage()
        await run.admin.aclose()
        nursery.cancel_scope.cancel()
    return run.results


def report(args: argparse.Namespace, r: Mapping[str, Any]) -> None:
    ttl = r["ttl"]
    lease = lease_from(args)
    n, tenants = args.members, args.tenants

    def t(seconds: float) -> str:
        return f"{seconds:6.2f} s  ({seconds / ttl:4.2f} x TTL)"

    print(
        f"\n{tenants:,} tenants, {n} member processes, TTL {ttl:g} s (renewal every "
        f"{lease.renew_interval:g} s, poll {lease.poll_interval:g} s, hold "
        f"{lease.hold:.2f} s), {args.kills} kills"
    )
    print(f"first assignment           {t(r['start'])}")
    counts, seconds = r["rest_counts"], r["rest_seconds"]
    total = sum(counts.values())
    per_s = total / seconds
    per_member = per_s / n
    print(
        f"\nat rest, over {seconds:.0f} s: {per_s:.2f} statements/s "
        f"({per_member:.3f} per member; {per_s * 60 / tenants:.4f} per tenant per minute)"
    )
    for kind, calls in sorted(counts.items()):
        print(f"  {kind:14} {calls / seconds:8.3f}/s")
    print(f"  members' CPU at rest: {r['rest_cpu'] / n:.1%} of a core each")
    expected = 3 / ttl + 1 / lease.poll_interval
    print(
        f"  expected per member: 3/TTL + 1/poll = {expected:.3f}/s "
        f"(measured {per_member / expected:.2f} x that)"
    )
    per_row = r["view_bytes"] / tenants
    print(
        f"view: {r['view_bytes']:,} bytes ({per_row:.0f} per tenant), "
        f"round trip {r['view_seconds'] * 1000:.1f} ms (median of 20)"
    )

    per_tenant, per_kill = r["per_tenant"], r["per_kill"]
    if per_tenant:
        print(f"\nfailover after kill -9 ({len(per_kill)} kills, {len(per_tenant):,} tenants):")
        print(f"  per tenant p50        {t(quantile(per_tenant, 0.5))}")
        print(f"  per tenant p99        {t(quantile(per_tenant, 0.99))}")
        print(f"  per kill, last tenant p50 {t(quantile(per_kill, 0.5))}")
        print(f"  per kill, last tenant p99 {t(quantile(per_kill, 0.99))}")
        after = r["after_expiry"]
        print(f"  after the dead row expired, p50 {t(quantile(after, 0.5))}")
        print(f"  after the dead row expired, p99 {t(quantile(after, 0.99))}")
        print(
            f"  (the row lives {lease.ttl - lease.renew_interval:g}-{ttl:g} s after a kill, then "
            f"a survivor looks within {lease.poll_interval:g} s, acquires and connects)"
        )
        moved = statistics.mean(r["moved"])
        print(
            f"rebalance when a member rejoins: {moved:.1%} of tenants moved "
            f"(ideal 1/N = {1 / n:.1%}; ratio {moved * n:.2f}); "
            f"settled in p50 {t(quantile(r['rejoin'], 0.5))}"
        )
        print(f"upstream replacements during the kills: {r['kill_replacements']}")
    print(f"\ndatabase stopped (SIGSTOP) for {args.outage:g} x TTL:")
    print(
        f"  every tenant dropped in   {t(r['drop'])}  (at most ttl * (1 - rho) = "
        f"{ttl * (1 - lease.rho):.2f} s: the hold, then the close budget)"
    )
    print(f"  every tenant back in      {t(r['recover'])} after SIGCONT")
    print(f"  upstream replacements: {r['outage_replacements']}")

    default = DEFAULT
    members, projected = PROJECTED_MEMBERS, PROJECTED_TENANTS
    scale = per_member / expected
    rate = members * (3 / default.ttl + 1 / default.poll_interval) * scale
    view_bytes = per_row * projected
    view_seconds = r["view_seconds"] * projected / tenants
    after = r["after_expiry"] or [0.0]
    tail = quantile(after, 0.99) - lease.poll_interval  # acquisitions and connects
    print(
        f"\nprojection to {projected:,} tenants on {members} members, default lease "
        f"(TTL {default.ttl:g} s, poll {default.poll_interval:g} s):"
    )
    print(
        f"  statements/s at rest   {rate:.1f}  ({rate * 60 / projected:.3f} per tenant per "
        "minute): the rate grows with members, not tenants"
    )
    print(
        f"  view                   {view_bytes / 1e6:.2f} MB, ~{view_seconds * 1000:.0f} ms "
        f"each; {members / default.poll_interval:.0f} views/s = "
        f"{members / default.poll_interval * view_bytes / 1e6:.1f} MB/s read"
    )
    print(
        f"  failover               {default.ttl - default.renew_interval:g}-{default.ttl:g} s "
        f"(the dead row) + 0-{default.poll_interval:g} s (the poll) + acquisitions and "
        f"connects ({max(tail, 0.0):.2f} s p99 here, with {tenants / n / (n - 1):.0f} tenants per "
        f"survivor; {projected / members / (members - 1):.0f} there)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=200, help="tenants in the fleet")
    parser.add_argument("--members", type=int, default=4, help="member processes")
    parser.add_argument("--kills", type=int, default=10, help="members killed, one after another")
    parser.add_argument(
        "--ttl",
        type=float,
        default=3.0,
        help="the lease TTL in seconds; the other figures scale with it",
    )
    parser.add_argument("--rest", type=float, default=30.0, help="seconds measured at rest")
    parser.add_argument("--outage", type=float, default=2.0, help="TTLs the database is stopped")
    parser.add_argument(
        "--draw", type=int, default=1, help="which kills: the same number, the same kills"
    )
    parser.add_argument("--full", action="store_true", help="1,000 tenants and 50 kills")
    parser.add_argument(
        "--log",
        type=argparse.FileType("ab"),
        default=str(Path(tempfile.gettempdir()) / "bench_fleet_members.log"),
        help="where the members' logs go",
    )
    args = parser.parse_args()
    if args.full:
        args.tenants, args.kills = max(args.tenants, 1000), max(args.kills, 50)
    with running_postgres(extra="-c shared_preload_libraries=pg_stat_statements") as server:
        results = trio.run(bench, args, server)
    report(args, results)


if __name__ == "__main__":
    main()
