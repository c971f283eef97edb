"""The fleet's pure parts: the lease rule, rendezvous hashing, settle delay, hand-off rate."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from types import MappingProxyType

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FakeClock
from tenantry.cluster import LeaseConfig, Member, TenantRow, View
from tenantry.cluster._assignment import HandoffBucket, Planner, rendezvous
from tenantry.cluster._lease import Lease

# -- LeaseConfig -----------------------------------------------------------------


def test_lease_config_defaults_and_derived_figures() -> None:
    config = LeaseConfig()
    assert (config.ttl, config.rho, config.close_budget) == (15.0, 0.05, 2.0)
    assert config.renew_interval == 5.0
    assert config.hold == pytest.approx(15 * 0.95 - 2)
    with pytest.raises(TypeError):
        LeaseConfig(20.0)  # type: ignore[call-arg]  # keyword-only: figures are never confused
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.ttl = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": math.inf}, "ttl must be finite"),
        ({"rho": -0.01}, "rho"),
        ({"rho": 0.6}, "rho"),
        ({"rho": "0.05"}, "rho"),
        ({"close_budget": 0}, "close_budget"),
        ({"settle_delay": -1}, "settle_delay"),
        ({"handoff_rate": 0}, "handoff_rate"),
        ({"handoff_burst": 0}, "handoff_burst"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"ttl": 6.0, "close_budget": 3.8}, "must be longer than the renewal interval"),
        ({"ttl": 15.0, "close_budget": 9.5}, "must be longer than the renewal interval"),
        ({"ttl": 15.0, "rho": 0.5, "close_budget": 2.6}, "raise ttl, or lower rho"),
    ],
)
def test_lease_config_refuses_figures_that_could_never_work(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        LeaseConfig(**kwargs)  # type: ignore[arg-type]


# -- the lease rule ----------------------------------------------------------------


def test_the_deadline_counts_from_the_send_and_never_moves_back(clock: FakeClock) -> None:
    lease = Lease(LeaseConfig(ttl=30.0, rho=0.1, close_budget=3.0), clock=clock)
    assert not lease.held
    assert lease.margin == -math.inf
    t_send = lease.sending()
    clock.now += 4.0  # a slow answer: the lease counts from the send all the same
    assert lease.renewed(t_send) == t_send + 30 * 0.9 - 3
    assert lease.held
    assert lease.margin == pytest.approx(24.0 - 4.0)
    assert lease.renewed(t_send - 10) == t_send + 24.0  # an older answer cannot shorten it
    clock.now = t_send + 24.0
    assert not lease.held  # the deadline itself is past: abort
    lease.lost()
    assert lease.deadline == -math.inf


@st.composite
def renewals(draw: st.DrawFn) -> list[tuple[float, float, float, bool]]:
    """(gap before the send, request latency, answer latency, answer arrives) per renewal."""
    return draw(
        st.lists(
            st.tuples(
                st.floats(0.0, 10.0),
                st.floats(0.0, 8.0),
                st.floats(0.0, 8.0),
                st.booleans(),
            ),
            min_size=1,
            max_size=30,
        )
    )


@settings(max_examples=300, deadline=None)
@given(
    steps=renewals(),
    rho=st.floats(0.0, 0.3),
    error=st.floats(-1.0, 1.0),
    offset=st.floats(-1e5, 1e5),
)
def test_the_local_deadline_always_falls_before_the_store_expiry(
    steps: list[tuple[float, float, float, bool]], rho: float, error: float, offset: float
) -> None:
    """Whatever the latencies and a clock-rate error up to rho, the abort ends before the expiry.

    Real time is the store's; the member's clock runs at *rate* (within rho of
    the store's) from an arbitrary *offset*. Requests reach the store and
    answers come back in any order, or not at all; the store renews a row
    only while it is live. After every event, the member's deadline plus its
    close budget (both on its own clock) ends no later than the store's
    expiry of its row.
    """
    config = LeaseConfig(ttl=15.0, rho=rho, close_budget=1.0)
    rate = 1 + error * rho
    now = 0.0
    lease = Lease(config, clock=lambda: offset + rate * now)
    expiry = -math.inf  # the store's expiry of the member's row
    queue: list[tuple[float, int, str, float, bool]] = []  # (time, n, kind, t_send, flag)
    sent = 0.0
    for n, (gap, _, _, _) in enumerate(steps):
        sent += gap
        heapq.heappush(queue, (sent, n, "send", 0.0, False))
    registered = False
    while queue:
        now, n, kind, t_send, flag = heapq.heappop(queue)
        _, there, back, arrives = steps[n]
        if kind == "send":
            heapq.heappush(queue, (now + there, n, "store", lease.sending(), False))
        elif kind == "store":  # the first is the registration; then renew only a live row
            live = not registered or expiry > now
            registered = True
            if live:
                expiry = now + config.ttl
            if arrives:
                heapq.heappush(queue, (now + back, n, "answer", t_send, live))
        elif flag:
            lease.renewed(t_send)
        else:
            lease.lost()  # the store said the row had expired
        if lease.deadline > -math.inf:
            abort_done = (lease.deadline - offset + config.close_budget) / rate
            assert abort_done <= expiry + 1e-6 * max(1.0, abs(offset))


# -- rendezvous hashing ----------------------------------------------------------------

NAMES = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


def test_rendezvous_is_the_same_in_every_process() -> None:
    """blake2b, not Python's salted hash: pinned values, the same on every machine and run."""
    members = ["m1", "m2", "m3"]
    assert [rendezvous(f"t{i}", members) for i in range(6)] == [
        rendezvous(f"t{i}", list(reversed(members))) for i in range(6)
    ]
    assert [rendezvous(f"t{i}", members) for i in range(6)] == PINNED
    assert rendezvous("t", []) is None


PINNED = ["m2", "m2", "m1", "m1", "m2", "m1"]


@given(members=NAMES, extra=st.text("xyz", min_size=1, max_size=3))
def test_a_member_joining_takes_tenants_only_for_itself(members: list[str], extra: str) -> None:
    tenants = [f"t{i}" for i in range(200)]
    before = {t: rendezvous(t, members) for t in tenants}
    after = {t: rendezvous(t, [*members, extra]) for t in tenants}
    assert all(after[t] in (before[t], extra) for t in tenants)  # nobody else's moves
    gone = members[0]
    rest = {t: rendezvous(t, members[1:]) for t in tenants}
    assert all(rest[t] == before[t] for t in tenants if before[t] != gone)


def test_rendezvous_spreads_tenants_evenly() -> None:
    members = [f"host{i}" for i in range(5)]
    counts = dict.fromkeys(members, 0)
    for i in range(5000):
        counts[rendezvous(f"tenant-{i}", members) or ""] += 1
    assert all(800 < count < 1200 for count in counts.values()), counts


# -- the planner: settle delay, hand-off rate ----------------------------------------------

ME = Member("a", 1)
B = Member("b", 7)


def rows(owner_of: Mapping[str, Member | None], epoch: int = 3) -> tuple[TenantRow, ...]:
    return tuple(
        TenantRow(t, MappingProxyType({}), owner, epoch) for t, owner in sorted(owner_of.items())
    )


def mine_and_bs(members: list[str]) -> tuple[list[str], list[str]]:
    tenants = [f"t{i}" for i in range(40)]
    mine = [t for t in tenants if rendezvous(t, members) == "a"]
    return mine, [t for t in tenants if t not in mine]


def test_a_newcomer_takes_nothing_before_the_settle_delay(clock: FakeClock) -> None:
    config = LeaseConfig(settle_delay=5.0)
    planner = Planner(config, clock=clock)
    tenants = {f"t{i}": None for i in range(10)}
    view = View((ME,), rows(tenants))
    assert planner.plan(view, ME, {}).acquire == ()
    assert planner.next_settle() == 5.0
    clock.now += 5.0
    assert set(planner.plan(view, ME, {}).acquire) == set(tenants)
    assert planner.next_settle() == math.inf


def test_a_settle_delay_ending_in_floating_point_rounding_still_ends(clock: FakeClock) -> None:
    """A wait of next_settle() seconds can end an ulp early: the member counts all the same."""
    clock.now = 60.019999999999996
    planner = Planner(LeaseConfig(settle_delay=5.0), clock=clock)
    view = View((ME,), rows({"t": None}))
    assert planner.plan(view, ME, {}).acquire == ()
    clock.now += planner.next_settle() - 1e-12  # an ulp or so short of the end
    assert planner.plan(view, ME, {}).acquire == ("t",)
    assert planner.next_settle() == math.inf  # no wait too short to move the clock


def test_a_member_seen_for_less_than_the_settle_delay_moves_nothing(clock: FakeClock) -> None:
    config = LeaseConfig(settle_delay=5.0, handoff_burst=100)
    planner = Planner(config, clock=clock)
    clock.now += 10.0  # "a" has settled
    mine, bs = mine_and_bs(["a", "b"])
    held = dict.fromkeys(mine + bs, 3)
    view = View((ME, B), rows(dict.fromkeys(held, ME)))
    assert planner.plan(view, ME, held).hand_off == ()  # b is new: not counted yet
    clock.now += 4.9
    assert planner.plan(view, ME, held).hand_off == ()
    clock.now += 0.1
    assert set(planner.plan(view, ME, held).hand_off) == set(bs)  # b's share, no more


def test_hand_offs_are_rate_limited_and_acquisitions_are_not(clock: FakeClock) -> None:
    config = LeaseConfig(settle_delay=1.0, handoff_rate=2.0, handoff_burst=3)
    planner = Planner(config, clock=clock)
    planner.plan(View((ME, B), ()), ME, {})
    clock.now += 1.0
    mine, bs = mine_and_bs(["a", "b"])
    held = dict.fromkeys(bs, 3)
    view = View((ME, B), rows({**dict.fromkeys(bs, ME), **dict.fromkeys(mine, None)}))
    first = planner.plan(view, ME, held)
    assert (len(first.hand_off), first.deferred) == (3, len(bs) - 3)
    assert set(first.acquire) == set(mine)
    clock.now += 1.0  # two more tokens
    second = planner.plan(view, ME, {t: 3 for t in bs if t not in first.hand_off})
    assert len(second.hand_off) == 2


def test_what_the_store_says_about_our_tenants_wins(clock: FakeClock) -> None:
    planner = Planner(LeaseConfig(settle_delay=1.0), clock=clock)
    clock.now += 1.0
    view = View(
        (ME,),
        (
            TenantRow("taken", MappingProxyType({}), B, 4),  # someone else owns it now
            TenantRow("newer", MappingProxyType({}), ME, 9),  # ours, but at another epoch
            TenantRow("lost-answer", MappingProxyType({}), ME, 5),  # acquired, answer lost
        ),
    )
    plan = planner.plan(view, ME, {"taken": 3, "newer": 3, "removed": 2})
    assert set(plan.lost) == {"taken", "newer"}
    assert plan.drop == ("removed",)
    assert plan.adopt == (("lost-answer", 5),)
    other = Planner(LeaseConfig(settle_delay=1.0), clock=clock)
    bs = mine_and_bs(["a", "b"])[1]
    elsewhere = View((ME, B), (TenantRow(bs[0], MappingProxyType({}), ME, 5),))
    other.plan(elsewhere, ME, {})
    clock.now += 1.0  # ours in the store, not running here, b's by the hashing: free it
    assert other.plan(elsewhere, ME, {}).release == ((bs[0], 5),)


def test_a_member_missing_from_the_view_acquires_nothing(clock: FakeClock) -> None:
    planner = Planner(LeaseConfig(settle_delay=1.0), clock=clock)
    clock.now += 2.0
    assert planner.plan(View((B,), rows({"t": None})), ME, {}).acquire == ()


def test_the_hand_off_bucket(clock: FakeClock) -> None:
    bucket = HandoffBucket(rate=1.0, burst=2, clock=clock)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert not bucket.take()
    clock.now += 0.5
    assert bucket.take()
    clock.now += 100
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # never more than the burst
