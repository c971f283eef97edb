"""A fleet in virtual time: members over a MemoryCoordinator, tenants on a 440-replacing upstream.

The upstream closes the older of two connections to one tenant with 4440
and counts it (``replacements``): the measure of a tenant connected twice.
Every scenario here must leave it at zero.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import idle
from tenantry import TenantSpec, open_socket
from tenantry.cluster import ClusterHub, LeaseConfig, open_cluster_hub
from tenantry.testing import FakeUpstream, MemoryCoordinator, open_fake_upstream

LEASE = LeaseConfig(ttl=15.0, rho=0.05, close_budget=2.0, settle_delay=5.0, poll_interval=5.0)


def factory(upstream: FakeUpstream, epochs: dict[str, list[int]] | None = None) -> Any:
    def spec_factory(tenant_id: str, description: Mapping[str, Any], epoch: int) -> TenantSpec:
        if epochs is not None:
            epochs.setdefault(tenant_id, []).append(epoch)
        return TenantSpec(tenant_id, upstream.connector_to(f"/{tenant_id}"), handler=idle)

    return spec_factory


@attrs.define
class Running:
    """One member running in the test's nursery, which the test can kill or cut off."""

    hub: ClusterHub
    client: MemoryCoordinator
    scope: trio.CancelScope

    def kill(self) -> None:
        """Die without leaving: the row stays until it expires; the sockets close."""
        self.client.down = True
        self.scope.cancel()


async def run_member(
    store: MemoryCoordinator,
    upstream: FakeUpstream,
    name: str,
    lease: LeaseConfig = LEASE,
    latency: float = 0.0,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    client = store.client(latency=latency)
    with trio.CancelScope() as scope:
        async with open_cluster_hub(
            client, member=name, spec_factory=factory(upstream), lease=lease
        ) as hub:
            task_status.started(Running(hub, client, scope))
            await trio.sleep_forever()


async def settled_members(
    store: MemoryCoordinator, upstream: FakeUpstream, nursery: trio.Nursery, names: str
) -> list[Running]:
    """Start a member per letter of *names*, and wait until their assignment has settled."""
    members = [await nursery.start(run_member, store, upstream, name) for name in names]
    await trio.sleep(LEASE.settle_delay + 1)
    return members


@asynccontextmanager
async def fleet(
    tenants: int, **store_kwargs: Any
) -> AsyncIterator[tuple[MemoryCoordinator, FakeUpstream, trio.Nursery]]:
    store = MemoryCoordinator(**store_kwargs)
    for i in range(tenants):
        await store.put_tenant(f"t{i}", {"n": i})
    async with open_fake_upstream(replace=True, history=0) as upstream, trio.open_nursery() as n:
        yield store, upstream, n
        n.cancel_scope.cancel()


def owners(members: list[Running]) -> dict[str, str]:
    """tenant -> member name, over the members' own views (no tenant may be run twice)."""
    seen: dict[str, str] = {}
    for m in members:
        for tenant_id in m.hub.tenant_ids:
            assert tenant_id not in seen, f"{tenant_id} on {seen[tenant_id]} and {m.hub.name}"
            seen[tenant_id] = m.hub.name
    return seen


async def until(condition: Callable[[], bool], within: float = 100.0) -> None:
    """Sample *condition* every 0.1 virtual seconds until it holds; fail after *within*."""
    for _ in range(int(within / 0.1)):
        if condition():
            return
        await trio.sleep(0.1)
    pytest.fail(f"not within {within:g} s")


def live_connections(upstream: FakeUpstream) -> int:
    return sum(not c.ended for c in upstream.connections)


async def test_one_member_runs_every_tenant_and_the_epoch_reaches_the_factory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    epochs: dict[str, list[int]] = {}
    async with fleet(5) as (store, upstream, _):
        async with open_cluster_hub(
            store.client(), member="a", spec_factory=factory(upstream, epochs), lease=LEASE
        ) as hub:
            await trio.sleep(1.0)
            assert hub.tenant_ids == []  # a newcomer waits the settle delay
            await trio.sleep(LEASE.settle_delay)
            assert sorted(hub.tenant_ids) == [f"t{i}" for i in range(5)]
            assert epochs == {f"t{i}": [1] for i in range(5)}
            assert hub.epoch_of("t0") == store.epoch_of("t0") == 1
            assert live_connections(upstream) == 5
            await trio.sleep(100.0)  # renewals keep it
            m = hub.metrics()
            assert m.value("tenantry_cluster_tenants_owned") == 5
            assert m.value("tenantry_cluster_members") == 1
            assert m.value("tenantry_cluster_acquisitions_total") == 5
            assert m.value("tenantry_cluster_renewals_total", result="ok") >= 100 // 5
            assert m.value("tenantry_cluster_lease_losses_total") == 0
            assert m.value("tenantry_sockets_alive") == 5
            assert 'tenantry_cluster_renewals_total{result="ok"}' in m.to_text()
            with pytest.raises(KeyError, match="not run by this member"):
                hub.epoch_of("nope")
        assert store.owner_of("t0") is None  # leaving freed the rows at once
        assert live_connections(upstream) == 0
    assert upstream.replacements == 0


async def test_members_share_the_tenants_and_failover_follows_a_death_within_the_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fleet(30) as (store, upstream, nursery):
        members = await settled_members(store, upstream, nursery, "abc")
        first = owners(members)
        assert len(first) == 30
        assert set(first.values()) == {"a", "b", "c"}
        victim = members[0]
        theirs = [t for t, name in first.items() if name == "a"]
        victim.kill()
        died_at = trio.current_time()
        await until(lambda: all(t in owners(members[1:]) for t in theirs))
        failover = trio.current_time() - died_at
        assert failover <= LEASE.ttl + LEASE.poll_interval + 1
        assert len(owners(members[1:])) == 30
        assert live_connections(upstream) == 30
    assert upstream.replacements == 0


async def test_a_member_cut_off_from_the_store_drops_its_tenants_before_they_move(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fleet(20) as (store, upstream, nursery):
        members = await settled_members(store, upstream, nursery, "ab")
        cut = members[0]
        theirs = [t for t, name in owners(members).items() if name == "a"]
        assert theirs
        cut.client.down = True  # a partition: "a" runs on, but hears nothing
        await trio.sleep(LEASE.ttl + LEASE.poll_interval + 1)
        assert cut.hub.tenant_ids == []  # failed closed at its deadline
        assert sorted(owners(members[1:])) == sorted(f"t{i}" for i in range(20))
        m = cut.hub.metrics()
        assert m.value("tenantry_cluster_lease_losses_total", reason="deadline") == 1
        assert m.value("tenantry_cluster_renewals_total", result="failed") >= 2
        assert m.value("tenantry_sockets_alive") == 0
        cut.client.down = False  # healed: it rejoins, settles, and takes its share back
        await trio.sleep(LEASE.renew_interval + LEASE.settle_delay + 30)
        assert sorted(cut.hub.tenant_ids) == sorted(theirs)  # the hashing gives it the same
        assert members[1].hub.metrics().value("tenantry_cluster_handoffs_total") == len(theirs)
        assert live_connections(upstream) == 20
    assert upstream.replacements == 0


async def test_a_store_outage_drops_every_tenant_and_they_come_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fleet(12) as (store, upstream, nursery):
        members = await settled_members(store, upstream, nursery, "abc")
        assert live_connections(upstream) == 12
        store.store_down = True
        down_at = trio.current_time()
        await until(lambda: live_connections(upstream) == 0)
        assert trio.current_time() - down_at <= LEASE.hold  # fail closed within the lease
        await trio.sleep(60)
        store.store_down = False
        up_at = trio.current_time()
        await until(lambda: live_connections(upstream) == 12)
        recovery = trio.current_time() - up_at
        assert recovery <= LEASE.renew_interval * 2 + LEASE.settle_delay + LEASE.poll_interval
        assert len(owners(members)) == 12
    assert upstream.replacements == 0


async def test_a_member_joining_takes_its_share_at_the_hand_off_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lease = attrs.evolve(LEASE, handoff_rate=1.0, handoff_burst=2)
    async with fleet(40) as (store, upstream, nursery):
        start = functools.partial(run_member, store, upstream, lease=lease)
        members: list[Running] = [await nursery.start(start, name) for name in "ab"]
        await trio.sleep(lease.settle_delay + 1)
        before = owners(members)
        members.append(await nursery.start(start, "c"))

        def handoffs() -> list[float]:
            return [m.hub.metrics().value("tenantry_cluster_handoffs_total") for m in members]

        await trio.sleep(lease.settle_delay - 0.5)
        assert handoffs() == [0, 0, 0]  # c has not settled yet: nothing moves
        await trio.sleep(3.5)  # c has counted for 3 s: the burst, then one a second each
        early = handoffs()
        assert sum(early) > 0
        assert all(n <= lease.handoff_burst + 3 * lease.handoff_rate for n in early)
        await trio.sleep(60)
        after = owners(members)
        assert len(after) == 40
        changed = [t for t in after if after[t] != before[t]]
        assert all(after[t] == "c" for t in changed)  # only c's share moved
        assert sum(early) < len(changed) == sum(handoffs())  # the rate held them back
        assert 40 / 3 / 2 < len(changed) < 40 * 2 / 3
    assert upstream.replacements == 0


@pytest.mark.parametrize(("rate", "replaced"), [(1.05, False), (0.95, False), (1.5, True)])
async def test_clock_rate_error_within_rho_is_safe_and_beyond_it_is_seen(
    autojump_clock: trio.testing.MockClock, rate: float, replaced: bool
) -> None:
    """The store's clock runs at *rate* against the members'; a member is cut off.

    Within rho (5 %) the cut-off member has aborted before its row expires.
    At 1.5 the row expires long before its deadline, a successor connects,
    and the upstream counts the replacement: the negative control, proof
    that the measure can see a tenant connected twice.
    """
    async with fleet(10, clock=lambda: trio.current_time() * rate) as (store, upstream, nursery):
        members = await settled_members(store, upstream, nursery, "ab")
        members[0].client.down = True
        await trio.sleep(LEASE.ttl * 3)
        assert len(owners(members)) == 10
    assert (upstream.replacements > 0) is replaced


async def test_a_slow_answer_shortens_the_lease_never_lengthens_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The member counts its lease from the send: 2 s each way cost it 4 s, never the store."""
    lease = attrs.evolve(LEASE, poll_interval=0.25)
    async with fleet(10) as (store, upstream, nursery):
        start = functools.partial(run_member, store, upstream, lease=lease)
        slow: Running = await nursery.start(functools.partial(start, "a", latency=2.0))
        fast: Running = await nursery.start(start, "b")
        await trio.sleep(lease.settle_delay + 60)
        assert slow.hub.tenant_ids
        slow.client.down = True
        await trio.sleep(lease.ttl * 3)
        assert len(owners([slow, fast])) == 10
        assert slow.hub.tenant_ids == []
    assert upstream.replacements == 0


ACTIONS = st.lists(
    st.tuples(
        st.floats(0.0, 40.0),  # virtual seconds before the action
        st.sampled_from(["join", "leave", "kill", "cut", "heal"]),
        st.integers(0, 3),  # which member
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=ACTIONS,
    max_latency=st.floats(0.0, 2.0),
    rate_error=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_no_tenant_is_ever_connected_twice_across_the_fleet(
    actions: list[tuple[float, str, int]], max_latency: float, rate_error: float, seed: int
) -> None:
    """Members join, leave, die and are cut off, over slow links and a store clock within rho.

    Members poll often, so that a successor acquires a tenant as soon as the
    store lets it: any slack in the lease rule would show as a replacement.
    """
    lease = attrs.evolve(LEASE, poll_interval=0.25)
    rate = 1 + rate_error * LEASE.rho
    rng = random.Random(seed)

    async def scenario() -> None:
        async with fleet(16, clock=lambda: trio.current_time() * rate) as (store, up, nursery):
            running: dict[int, Running] = {}
            for gap, action, i in [(0.0, "join", 0), *actions]:
                await trio.sleep(gap)
                owners(list(running.values()))  # never one tenant on two members
                member = running.get(i)
                if action == "join" and member is None:
                    latency = rng.uniform(0, max_latency)
                    start = functools.partial(run_member, lease=lease, latency=latency)
                    running[i] = await nursery.start(start, store, up, f"m{i}")
                elif action in ("leave", "kill") and member is not None:
                    if action == "leave":
                        member.scope.cancel()
                    else:
                        member.kill()
                    del running[i]
                elif member is not None:
                    member.client.down = action == "cut"
            for member in running.values():
                member.client.down = False
            round_trip = 2 * max_latency  # acquisitions are one round trip each, in turn
            await trio.sleep(LEASE.ttl * 3 + 20 * round_trip)
            if running:  # the fleet settles: every tenant on exactly one member
                assert len(owners(list(running.values()))) == 16
                assert live_connections(up) == 16
        assert up.replacements == 0

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_440_while_holding_the_lease_is_counted_as_an_upstream_conflict(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Something outside the fleet connects a tenant: the member's connection is replaced."""
    async with fleet(2) as (store, upstream, nursery):
        member: Running = await nursery.start(run_member, store, upstream, "a")
        await trio.sleep(LEASE.settle_delay + 1)
        assert member.hub.metrics().value("tenantry_cluster_upstream_conflicts_total") == 0
        async with open_socket(upstream.connector_to("/t0"), tenant_id="t0"):
            await trio.sleep(1)
        m = member.hub.metrics()
        assert m.value("tenantry_cluster_upstream_conflicts_total") == 1
        assert m.value("tenantry_reconnects_total", tenant="t0", reason="connection_replaced") == 1
    assert upstream.replacements == 1


async def test_members_starting_together_agree_at_once_and_move_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No change is missed between a view and the wait: nobody plans on a stale view."""
    async with fleet(60) as (store, upstream, nursery):
        members: list[Running] = [
            await nursery.start(run_member, store, upstream, f"m{i}") for i in range(3)
        ]
        await trio.sleep(LEASE.settle_delay + 30)
        assert len(owners(members)) == 60
        assert [m.hub.metrics().value("tenantry_cluster_handoffs_total") for m in members] == [
            0,
            0,
            0,
        ]
    assert upstream.replacements == 0


async def test_a_change_between_a_view_and_the_wait_is_not_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryCoordinator()
    watcher, other = store.client(), store.client()
    await watcher.view()
    await other.put_tenant("t", {})  # after the view, before the wait
    started = trio.current_time()
    await watcher.wait_for_change(10.0)
    assert trio.current_time() == started
    await watcher.view()
    await watcher.wait_for_change(10.0)  # nothing new: the whole timeout
    assert trio.current_time() == started + 10.0


async def test_a_changed_description_restarts_the_tenant_under_the_same_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    made: list[tuple[str, dict[str, Any], int]] = []

    def spec_factory(tenant_id: str, description: Mapping[str, Any], epoch: int) -> TenantSpec:
        made.append((tenant_id, dict(description), epoch))
        return TenantSpec(tenant_id, upstream.connector_to(f"/{tenant_id}"), handler=idle)

    async with (
        fleet(1) as (store, upstream, _),
        open_cluster_hub(store.client(), member="a", spec_factory=spec_factory, lease=LEASE) as hub,
    ):
        await trio.sleep(LEASE.settle_delay + 1)
        await store.put_tenant("t0", {"n": 99})
        await trio.sleep(1)
        assert made == [("t0", {"n": 0}, 1), ("t0", {"n": 99}, 1)]
        assert hub.tenant_ids == ["t0"]
        assert (upstream.accepted, live_connections(upstream)) == (2, 1)  # closed, then anew
        await store.remove_tenant("t0")
        await trio.sleep(1)
        assert hub.tenant_ids == []
        assert live_connections(upstream) == 0
    assert upstream.replacements == 0
