"""The coordinator contract, the same tests against every implementation.

A member relies on exactly this: a registration lives for its TTL of the
store's clock and renewals extend only a live one; acquisition bumps the
epoch and is won by one member at a time, only while the caller is live
and the owner is not; leaving frees; the tenant list is shared; a change
made through one coordinator wakes a waiter on another.

Each backend gives coordinators on one shared store. PostgreSQL runs on a
real server (a fresh schema per test) on the real clock, so TTLs that must
expire are short and those that must not are long; the in-memory one runs
on ``MockClock(autojump_threshold=0)``. To add a backend, add it to
`BACKENDS` and to `backend`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import attrs
import pytest
import trio
import trio.testing

from tenantry.cluster import Coordinator, Member, PostgresCoordinator, TenantRow
from tenantry.testing import MemoryCoordinator

SHORT_TTL = 0.3
"""A TTL a test waits out (twice over, on the real clock for PostgreSQL)."""
LONG_TTL = 60.0
"""A TTL that does not run out during a test."""
WAIT_BOUND = 20.0
"""A wait for a notified change ends well within this, or the wake-up is broken."""

BACKENDS = ["postgres", "memory"]


@attrs.frozen
class Backend:
    """Coordinators on one shared store, and the clock the test runs on."""

    open: Callable[[], AbstractAsyncContextManager[Coordinator]]
    clock: trio.testing.MockClock | None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        return Backend(
            lambda: contextlib.aclosing(
                PostgresCoordinator(server.dsn(), schema=schema, timeout=10.0)
            ),
            clock=None,
        )
    stores: list[MemoryCoordinator] = []  # one store, made inside the run (on its clock)

    @contextlib.asynccontextmanager
    async def shared() -> AsyncIterator[Coordinator]:
        if not stores:
            stores.append(MemoryCoordinator())
            yield stores[0]
        else:
            yield stores[0].client()  # another member's own client of the same store

    return Backend(shared, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def backend_clock(backend: Backend) -> trio.testing.MockClock | None:
    """The test's clock (pytest-trio takes a Clock among the arguments): mock or real."""
    return backend.clock


async def test_a_registered_member_is_live_and_renews(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as store:
        a = await store.register("a", LONG_TTL)
        b = await store.register("b", LONG_TTL)
        assert a.name == "a"
        assert a.incarnation != b.incarnation
        assert (await store.view()).members == (a, b)
        assert await store.renew(a, LONG_TTL)
        assert (await store.view()).members == (a, b)


async def test_a_member_expires_by_the_stores_clock_and_cannot_renew(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as store:
        a = await store.register("a", SHORT_TTL)
        b = await store.register("b", LONG_TTL)
        await trio.sleep(2 * SHORT_TTL)
        assert (await store.view()).members == (b,)
        assert not await store.renew(a, LONG_TTL)
        assert (await store.view()).members == (b,)


async def test_registering_again_is_a_new_incarnation_and_ends_the_old(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as store:
        old = await store.register("a", LONG_TTL)
        await store.put_tenant("t", {})
        assert await store.acquire(old, "t") == 1
        new = await store.register("a", LONG_TTL)
        assert new.incarnation != old.incarnation
        assert not await store.renew(old, LONG_TTL)
        view = await store.view()
        assert view.members == (new,)
        assert view.tenants == (TenantRow("t", {}, None, 1),)
        assert await store.acquire(new, "t") == 2


async def test_acquire_release_and_the_epoch(backend: Backend, backend_clock: object) -> None:
    async with backend.open() as store:
        a = await store.register("a", LONG_TTL)
        b = await store.register("b", LONG_TTL)
        await store.put_tenant("t", {"url": "wss://example.test/"})
        assert await store.acquire(a, "t") == 1
        assert await store.acquire(b, "t") is None
        assert await store.acquire(a, "t") is None  # owned, even by the caller
        assert (await store.view()).tenants == (
            TenantRow("t", {"url": "wss://example.test/"}, a, 1),
        )
        assert not await store.release(b, "t", 1)  # not the owner
        assert not await store.release(a, "t", 0)  # not the epoch
        assert await store.release(a, "t", 1)
        assert not await store.release(a, "t", 1)  # already free
        assert (await store.view()).tenants[0].owner is None
        assert await store.acquire(b, "t") == 2
        assert (await store.view()).tenants[0] == TenantRow(
            "t", {"url": "wss://example.test/"}, b, 2
        )


async def test_a_dead_owners_tenant_is_free_and_a_dead_member_acquires_nothing(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as store:
        a = await store.register("a", SHORT_TTL)
        b = await store.register("b", LONG_TTL)
        await store.put_tenant("t", {})
        await store.put_tenant("u", {})
        assert await store.acquire(a, "t") == 1
        await trio.sleep(2 * SHORT_TTL)
        assert (await store.view()).tenants[0].owner is None
        assert await store.acquire(a, "u") is None  # the caller is dead
        assert await store.acquire(b, "t") == 2
        assert not await store.release(a, "t", 1)


async def test_two_members_racing_for_each_tenant_one_wins(
    backend: Backend, backend_clock: object
) -> None:
    tenants = [f"t{index:02}" for index in range(20)]
    won: dict[str, list[tuple[str, int]]] = {tenant: [] for tenant in tenants}
    async with backend.open() as first, backend.open() as second:
        a = await first.register("a", LONG_TTL)
        b = await second.register("b", LONG_TTL)
        for tenant in tenants:
            await first.put_tenant(tenant, {})

        async def race(store: Coordinator, member: Member, tenant: str) -> None:
            epoch = await store.acquire(member, tenant)
            if epoch is not None:
                won[tenant].append((member.name, epoch))

        async with trio.open_nursery() as nursery:
            for tenant in tenants:
                nursery.start_soon(race, first, a, tenant)
                nursery.start_soon(race, second, b, tenant)
        assert all(len(winners) == 1 and winners[0][1] == 1 for winners in won.values())
        owners = {row.tenant_id: row.owner for row in (await first.view()).tenants}
        assert owners == {tenant: {"a": a, "b": b}[won[tenant][0][0]] for tenant in tenants}


async def test_leaving_frees_the_members_tenants(backend: Backend, backend_clock: object) -> None:
    async with backend.open() as store:
        a = await store.register("a", LONG_TTL)
        b = await store.register("b", LONG_TTL)
        for tenant in ("t", "u"):
            await store.put_tenant(tenant, {})
        await store.acquire(a, "t")
        await store.acquire(b, "u")
        await store.leave(a)
        view = await store.view()
        assert view.members == (b,)
        assert [row.owner for row in view.tenants] == [None, b]
        assert not await store.renew(a, LONG_TTL)
        assert await store.acquire(b, "t") == 2


async def test_the_tenant_list_is_shared(backend: Backend, backend_clock: object) -> None:
    async with backend.open() as first, backend.open() as second:
        a = await first.register("a", LONG_TTL)
        await first.put_tenant("t", {"n": 1, "nested": {"list": [1, "x", None]}})
        await first.put_tenant("s", {})
        assert [row.tenant_id for row in (await second.view()).tenants] == ["s", "t"]
        assert await second.acquire(a, "t") == 1
        await second.put_tenant("t", {"n": 2})  # a new description keeps owner and epoch
        assert (await first.view()).tenants[1] == TenantRow("t", {"n": 2}, a, 1)
        assert await second.remove_tenant("t")
        assert not await first.remove_tenant("t")
        assert await first.acquire(a, "t") is None  # no such tenant
        assert [row.tenant_id for row in (await first.view()).tenants] == ["s"]


async def test_a_change_through_one_coordinator_wakes_a_waiter_on_another(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as waiting, backend.open() as changing:

        async def wakes(change: Callable[[], Awaitable[object]]) -> None:
            with trio.fail_after(WAIT_BOUND / 2):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiting.wait_for_change, WAIT_BOUND)
                    await trio.testing.wait_all_tasks_blocked()
                    await change()

        await waiting.view()
        await waiting.wait_for_change(0.01)  # connected and listening from here on
        await wakes(lambda: changing.put_tenant("t", {}))
        joined: list[Member] = []

        async def join() -> None:
            joined.append(await changing.register("b", LONG_TTL))

        await wakes(join)
        epoch = await changing.acquire(joined[0], "t")
        assert epoch is not None
        await wakes(lambda: changing.release(joined[0], "t", epoch))  # a tenant freed
        await wakes(lambda: changing.put_tenant("t", {"n": 2}))  # a new description
        await changing.acquire(joined[0], "t")
        await wakes(lambda: changing.leave(joined[0]))
        await wakes(lambda: changing.remove_tenant("t"))


async def test_a_wait_without_change_ends_at_its_timeout(
    backend: Backend, backend_clock: object
) -> None:
    async with backend.open() as store:
        await store.wait_for_change(0.01)
        start = trio.current_time()
        await store.wait_for_change(SHORT_TTL)
        assert trio.current_time() - start >= SHORT_TTL
