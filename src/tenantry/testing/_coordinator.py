"""MemoryCoordinator: the shared store of a fleet, in memory, for deterministic tests.

It keeps the same rules a database-backed coordinator keeps -- member
expiries set by the store's own clock, acquisition only of a free tenant
or one whose owner's row has expired, the epoch bumped by every
acquisition -- on a *store clock* that is the Trio clock by default, so a
whole fleet runs under `trio.testing.MockClock`. A test can give the store
a clock that runs faster or slower than the members' (a clock-rate error),
delay every round trip, and cut a member off (or the whole store) to see
what the members do.

Each member should have its own client (`MemoryCoordinator.client`) over
the one store, as each process has its own database connection: latency
and failures are set per client.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, final

import attrs
import trio

from .._clock import Clock, resolve_clock
from .._validate import check_seconds
from ..cluster._coordinator import CoordinatorError, Member, TenantRow, View

__all__ = ["MemoryCoordinator"]

T = TypeVar("T")

Latency = Callable[[], float]
"""Seconds one leg of a round trip takes (called once per leg)."""


@attrs.define
class _Row:
    description: Mapping[str, Any]
    owner: Member | None = None
    epoch: int = 0


@final
class _Store:
    """The shared state, on the store's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.members: dict[str, tuple[Member, float]] = {}  # name -> (member, expiry)
        self.tenants: dict[str, _Row] = {}
        self.incarnations = itertools.count(1)
        self.changed = trio.Event()
        self.version = 0  # of the tenants and members: one more at every change
        self.statements = 0
        self.down = False

    def notify(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = trio.Event()

    def live(self, member: Member | None) -> bool:
        if member is None:
            return False
        found = self.members.get(member.name)
        return found is not None and found[0] == member and found[1] > self.clock()

    def owner(self, row: _Row) -> Member | None:
        return row.owner if self.live(row.owner) else None


@final
class MemoryCoordinator:
    """A `~tenantry.cluster.Coordinator` in memory: one client of a shared store.

    Args:
        clock: The store's clock, from which member expiries are set (the
            Trio run's clock by default). A clock that runs at another rate
            than the members' simulates a clock-rate error.
        latency: Seconds each leg of a round trip takes (the request, then
            the answer): a number, or a callable drawn once per leg.
        timeout: The bound of one round trip (a statement timeout): a call
            that would take longer fails with `~tenantry.cluster.CoordinatorError`
            after *timeout* seconds, whether or not the store carried it out.

    Set `down` to cut this client off (a partition, a lost connection): its
    calls fail as they reach the store, or as their answer comes back -- a
    statement may have taken effect although its caller sees an error, as
    with a real database. Set `store_down` to stop the store for every client.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        latency: float | Latency = 0.0,
        timeout: float = 5.0,
    ) -> None:
        self._store = _Store(resolve_clock(clock))
        self._latency = latency if callable(latency) else _constant(latency)
        self._timeout = check_seconds(timeout, "timeout")
        self.down = False
        """Whether this client is cut off from the store."""
        self._seen = 0  # the store's version at this client's last view

    def client(self, *, latency: float | Latency = 0.0, timeout: float = 5.0) -> MemoryCoordinator:
        """Another client of the same store (give each member its own)."""
        other = MemoryCoordinator(clock=self._store.clock, latency=latency, timeout=timeout)
        other._store = self._store
        return other

    # -- the store, as a test reads and breaks it ------------------------------

    @property
    def store_down(self) -> bool:
        """Whether the store answers no client (an outage)."""
        return self._store.down

    @store_down.setter
    def store_down(self, down: bool) -> None:
        self._store.down = down

    @property
    def statements(self) -> int:
        """Statements the store has carried out, for every client."""
        return self._store.statements

    def owner_of(self, tenant_id: str) -> Member | None:
        """The live owner of *tenant_id* by the store's clock, now (no round trip)."""
        return self._store.owner(self._store.tenants[tenant_id])

    def epoch_of(self, tenant_id: str) -> int:
        """The epoch of *tenant_id* now (no round trip)."""
        return self._store.tenants[tenant_id].epoch

    def expiry_of(self, member: Member) -> float | None:
        """When *member*'s row expires, by the store's clock; None if it has no row."""
        found = self._store.members.get(member.name)
        return found[1] if found is not None and found[0] == member else None

    # -- the Coordinator protocol ------------------------------------------

    async def register(self, name: str, ttl: float) -> Member:
        """See `~tenantry.cluster.Coordinator.register`."""

        def run() -> Member:
            store = self._store
            member = Member(name, next(store.incarnations))
            store.members[name] = (member, store.clock() + ttl)
            store.notify()
            return member

        return await self._round_trip(run)

    async def renew(self, member: Member, ttl: float) -> bool:
        """See `~tenantry.cluster.Coordinator.renew`."""

        def run() -> bool:
            store = self._store
            if not store.live(member):
                return False
            store.members[member.name] = (member, store.clock() + ttl)
            return True

        return await self._round_trip(run)

    async def view(self) -> View:
        """See `~tenantry.cluster.Coordinator.view`."""

        def run() -> View:
            store = self._store
            self._seen = store.version
            now = store.clock()
            members = tuple(m for _, (m, expiry) in sorted(store.members.items()) if expiry > now)
            tenants = tuple(
                TenantRow(tid, row.description, store.owner(row), row.epoch)
                for tid, row in sorted(store.tenants.items())
            )
            return View(members, tenants)

        return await self._round_trip(run)

    async def acquire(self, member: Member, tenant_id: str) -> int | None:
        """See `~tenantry.cluster.Coordinator.acquire`."""

        def run() -> int | None:
            store = self._store
            row = store.tenants.get(tenant_id)
            if row is None or not store.live(member) or store.owner(row) is not None:
                return None
            row.owner = member
            row.epoch += 1
            store.notify()
            return row.epoch

        return await self._round_trip(run)

    async def release(self, member: Member, tenant_id: str, epoch: int) -> bool:
        """See `~tenantry.cluster.Coordinator.release`."""

        def run() -> bool:
            store = self._store
            row = store.tenants.get(tenant_id)
            if row is None or row.owner != member or row.epoch != epoch:
                return False
            row.owner = None
            store.notify()
            return True

        return await self._round_trip(run)

    async def leave(self, member: Member) -> None:
        """See `~tenantry.cluster.Coordinator.leave`."""

        def run() -> None:
            store = self._store
            found = store.members.get(member.name)
            if found is not None and found[0] == member:
                del store.members[member.name]
            for row in store.tenants.values():
                if row.owner == member:
                    row.owner = None
            store.notify()

        await self._round_trip(run)

    async def put_tenant(self, tenant_id: str, description: Mapping[str, Any]) -> None:
        """See `~tenantry.cluster.Coordinator.put_tenant`."""
        frozen = MappingProxyType(dict(description))

        def run() -> None:
            store = self._store
            row = store.tenants.get(tenant_id)
            if row is None:
                store.tenants[tenant_id] = _Row(frozen)
            else:
                row.description = frozen
            store.notify()

        await self._round_trip(run)

    async def remove_tenant(self, tenant_id: str) -> bool:
        """See `~tenantry.cluster.Coordinator.remove_tenant`."""

        def run() -> bool:
            store = self._store
            found = store.tenants.pop(tenant_id, None) is not None
            store.notify()
            return found

        return await self._round_trip(run)

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll bound
        """See `~tenantry.cluster.Coordinator.wait_for_change`.

        A change since this client's last `view` returns at once: a listening
        connection queues what it is told between two reads, so nothing that
        happens between a view and the wait is missed.
        """
        with trio.move_on_after(timeout):
            store = self._store
            missed = await self._round_trip(lambda: store.version > self._seen)
            if not missed:
                await store.changed.wait()

    async def aclose(self) -> None:
        """Nothing to let go of; a checkpoint, as any close is."""
        await trio.lowlevel.checkpoint()

    async def _round_trip(self, statement: Callable[[], T]) -> T:
        with trio.move_on_after(self._timeout):
            await trio.sleep(self._latency())
            self._check()
            result = statement()
            self._store.statements += 1
            await trio.sleep(self._latency())
            self._check()  # the statement took effect; its answer is lost
            return result
        raise CoordinatorError(f"no answer within {self._timeout:g} s")

    def _check(self) -> None:
        if self.down or self._store.down:
            raise CoordinatorError("the store cannot be reached")


def _constant(seconds: float) -> Latency:
    return lambda: seconds
