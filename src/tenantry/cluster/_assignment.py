"""Who should connect which tenant: rendezvous hashing, the settle delay, rate-limited hand-offs.

Theory of operation
===================

There is no leader. Every member reads the same `View` of the store and
computes, for each tenant, the same winner: the live member whose name
gives the highest hash with the tenant's id (rendezvous, or
highest-random-weight, hashing; blake2b, so every process and every Python
computes the same). When a member joins, only the tenants it now wins move
to it (about 1/N of them); when one leaves, only its own tenants move.

A view is a snapshot, and members read theirs at different instants, so two
members may briefly disagree on the winner. That is harmless: the store's
`~Coordinator.acquire` succeeds only for a tenant that is free or whose
owner is dead, so a disagreement can delay a tenant, never connect it twice.

Two things damp the churn:

* the *settle delay*: a member counts in the hashing only once this member
  has seen it in views for ``settle_delay`` seconds (and a newcomer counts
  itself only after as long): a member that comes and goes quickly moves
  nothing, and a newcomer takes its share once the others agree it exists;
* the *hand-off rate*: a tenant that is connected here but now won by
  another member is closed and released at most ``handoff_rate`` times a
  second (a token bucket of ``handoff_burst``), so a member joining a large
  fleet does not drop a thousand connections at once. Acquiring a free
  tenant is never limited: failover must be fast.

`Planner` turns a view, this member's identity and what it holds into a
`Plan`; pure, on an injected clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import final

import attrs

from .._clock import Clock, resolve_clock
from ._coordinator import Member, View
from ._lease import LeaseConfig

__all__ = ["HandoffBucket", "Plan", "Planner", "rendezvous"]

_TOLERANCE = 1e-6
"""Seconds of rounding forgiven when a settle delay is compared: a wait computed from
the clock can end a hair early in floating point, and must not be followed by another
wait too short to move the clock at all."""


def _weight(member: str, tenant_id: str) -> int:
    key = f"{len(member)}:{member}:{tenant_id}".encode()  # unambiguous for any two names
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def rendezvous(tenant_id: str, members: Iterable[str]) -> str | None:
    """The member (by name) that wins *tenant_id* among *members*; None if there is none."""
    return max(members, key=lambda name: (_weight(name, tenant_id), name), default=None)


@final
class HandoffBucket:
    """A token bucket: *burst* hand-offs at once, then *rate* a second."""

    def __init__(self, rate: float, burst: int, *, clock: Clock | None = None) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = resolve_clock(clock)
        self._tokens = float(burst)
        self._at = self._clock()

    def take(self) -> bool:
        """Spend one token if there is one; whether a hand-off may start now."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@final
@attrs.frozen
class Plan:
    """What a member should do after reading one view."""

    acquire: tuple[str, ...] = ()
    """Free tenants (or tenants of a dead member) that this member wins."""
    adopt: tuple[tuple[str, int], ...] = ()
    """(tenant, epoch) the store says this member owns but that it does not run (an
    acquisition whose answer was lost) and that it still wins: start them."""
    release: tuple[tuple[str, int], ...] = ()
    """(tenant, epoch) the store says this member owns, that it does not run, and that
    another member wins: free them (nothing to close)."""
    hand_off: tuple[str, ...] = ()
    """Running here, won by another member, allowed now by the hand-off rate: close, release."""
    deferred: int = 0
    """Hand-offs the rate held back (the next view retries them)."""
    drop: tuple[str, ...] = ()
    """Running here but gone from the tenant list: close (there is no row to release)."""
    lost: tuple[str, ...] = ()
    """Running here while the store says this member does not own them: abort at once."""


@final
class Planner:
    """Turns views into plans for one member incarnation (make a new one after rejoining)."""

    def __init__(self, config: LeaseConfig, *, clock: Clock | None = None) -> None:
        self._config = config
        self._clock = resolve_clock(clock)
        self._joined = self._clock()
        self._first_seen: dict[Member, float] = {}
        self._bucket = HandoffBucket(config.handoff_rate, config.handoff_burst, clock=self._clock)

    def settled(self, view: View, me: Member) -> list[str]:
        """The names of the members that count in the hashing now (this one included, or not)."""
        now = self._clock()
        settle = self._config.settle_delay
        seen = {m: self._first_seen.get(m, now) for m in view.members}
        self._first_seen = seen  # members gone from the view are forgotten
        settle -= _TOLERANCE
        counted = [m.name for m, at in seen.items() if m != me and now - at >= settle]
        if me in seen and now - self._joined >= settle:
            counted.append(me.name)
        return counted

    def next_settle(self) -> float:
        """Seconds until a member seen so far (this one included) settles; inf if none will."""
        now = self._clock()
        settle = self._config.settle_delay
        pending = [at + settle - now for at in (self._joined, *self._first_seen.values())]
        return min((left for left in pending if left > _TOLERANCE), default=math.inf)

    def plan(self, view: View, me: Member, held: Mapping[str, int]) -> Plan:
        """The plan for *view*, given the tenants this member runs now (*held*: id -> epoch)."""
        members = self.settled(view, me)
        acquire: list[str] = []
        adopt: list[tuple[str, int]] = []
        release: list[tuple[str, int]] = []
        hand_off: list[str] = []
        lost: list[str] = []
        deferred = 0
        listed = set()
        for row in view.tenants:
            tid = row.tenant_id
            listed.add(tid)
            ours = rendezvous(tid, members) == me.name
            if tid in held:
                if row.owner != me or row.epoch != held[tid]:
                    lost.append(tid)
                elif not ours and members:
                    if self._bucket.take():
                        hand_off.append(tid)
                    else:
                        deferred += 1
            elif row.owner == me:
                (adopt if ours else release).append((tid, row.epoch))
            elif row.owner is None and ours:
                acquire.append(tid)
        drop = [tid for tid in held if tid not in listed]
        return Plan(
            acquire=tuple(acquire),
            adopt=tuple(adopt),
            release=tuple(release),
            hand_off=tuple(hand_off),
            deferred=deferred,
            drop=tuple(drop),
            lost=tuple(lost),
        )
