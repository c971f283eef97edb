"""The lease rule: how long a member may keep its tenants connected, on its own clock.

Theory of operation
===================

Each member has a row in the shared store whose expiry the *store* sets
from its own clock: "store now + ttl", at every renewal. A tenant counts as
owned only while its owner's row is live, so once the row has expired
another member may acquire the tenant and connect it. The member must
therefore have closed its sockets before that instant -- which it cannot
read, because it lives on another machine's clock. The lease rule makes
the member's own clock enough::

    t_send   = the member's clock, read *before* the renewal is sent
    deadline = t_send + ttl * (1 - rho) - close_budget

If the renewal succeeds, the member may keep its tenants connected until
*deadline*; when the deadline passes without a newer success, it aborts
every socket (the transport first, then the local flush and drain) and
rejoins later. Why this is safe:

* The store sets the expiry at some instant after *t_send*, so the expiry
  is at least *ttl* of the store's time after *t_send*, however slow the
  network or the store was.
* *rho* bounds the rate error between the two clocks: *ttl* of the
  store's time lasts at least ``ttl * (1 - rho)`` of the member's.
* *close_budget* is the time the abort may take: the deadline leaves it
  before the expiry, so the last socket is gone when a successor may start.

A reply that arrives late only shortens the lease (t_send is earlier than
the reply), never lengthens it. No wall-clock value is compared across
machines: the member compares its own monotonic clock with its own reading,
the store its own with its own. A lost store, a partition and the member's
own death look the same from outside: the member drops everything at the
deadline (fails closed), and its tenants fail over once the store says the
row has expired, within about *ttl* of its last successful renewal.

Renewals go out every ``ttl / 3`` (`LeaseConfig.renew_interval`); each one
is itself bounded by the deadline, since a success after it is worthless.
`LeaseConfig` refuses figures whose lease would not outlast one renewal
interval: the member would drop its tenants between two good renewals.

`Lease` is the rule as a pure state machine on an injected clock, with no
I/O; the member's heartbeat task (``_member.py``) does the sending.
"""

from __future__ import annotations

import math
from typing import final

import attrs

from .._clock import Clock, resolve_clock
from .._validate import check_between, positive_count, seconds

__all__ = ["Lease", "LeaseConfig"]


@final
@attrs.frozen(kw_only=True)
class LeaseConfig:
    """How a member holds its lease and moves tenants; all figures in seconds.

    Args:
        ttl: Lifetime of a member row after each renewal, by the store's clock.
            Failover after a member dies takes about this long.
        rho: Bound on the rate error between a member's clock and the store's
            (0.05: either may run 5 % fast or slow against the other).
        close_budget: Time the member keeps, before its deadline, for aborting
            its sockets.
        settle_delay: How long a member must have been seen (and a newcomer
            must have been registered) before assignment counts it: members
            that come and go quickly move no tenant.
        handoff_rate: Hand-offs per second (tenants closed here to move to
            another member); acquiring a free tenant is never limited.
        handoff_burst: Hand-offs allowed at once before the rate applies.
        poll_interval: Longest wait between two views of the store, when no
            change is announced.

    Raises:
        TypeError, ValueError: a figure that could never work, naming it;
            in particular a lease (``ttl * (1 - rho) - close_budget``) no
            longer than one renewal interval (``ttl / 3``).
    """

    ttl: float = attrs.field(default=15.0, validator=seconds)
    rho: float = attrs.field(default=0.05)
    close_budget: float = attrs.field(default=2.0, validator=seconds)
    settle_delay: float = attrs.field(default=5.0, validator=seconds)
    handoff_rate: float = attrs.field(default=5.0)
    handoff_burst: int = attrs.field(default=5, validator=positive_count)
    poll_interval: float = attrs.field(default=5.0, validator=seconds)

    def __attrs_post_init__(self) -> None:
        check_between(self.rho, "rho", 0.0, 0.5)
        check_between(self.handoff_rate, "handoff_rate", 1e-6, 1e6)
        if math.isinf(self.ttl):
            raise ValueError("ttl must be finite: a dead member's tenants would never fail over")
        if not self.hold > self.renew_interval:
            raise ValueError(
                f"the lease (ttl * (1 - rho) - close_budget = {self.hold:g} s) must be longer "
                f"than the renewal interval (ttl / 3 = {self.renew_interval:g} s): "
                "raise ttl, or lower rho or close_budget"
            )

    @property
    def renew_interval(self) -> float:
        """Seconds between two renewals: a third of the TTL."""
        return self.ttl / 3

    @property
    def hold(self) -> float:
        """Seconds after *t_send* that a successful renewal lets the member hold its tenants."""
        return self.ttl * (1 - self.rho) - self.close_budget


@final
class Lease:
    """The lease rule on an injected clock (the Trio run's by default); pure.

    Read `sending` just before sending a renewal, and pass what it returned
    to `renewed` when the renewal succeeds. `deadline` is -inf until the
    first success and after `lost`.
    """

    def __init__(self, config: LeaseConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = resolve_clock(clock)
        self.deadline = -math.inf

    def sending(self) -> float:
        """*t_send*: the clock now, read before the renewal goes out."""
        return self._clock()

    def renewed(self, t_send: float) -> float:
        """A renewal sent at *t_send* succeeded: the deadline moves (never back); returns it."""
        self.deadline = max(self.deadline, t_send + self.config.hold)
        return self.deadline

    def lost(self) -> None:
        """The lease is gone (deadline passed, or the store refused a renewal)."""
        self.deadline = -math.inf

    @property
    def held(self) -> bool:
        """Whether the deadline is still ahead."""
        return self._clock() < self.deadline

    @property
    def margin(self) -> float:
        """Seconds left until the deadline (negative once it has passed)."""
        return self.deadline - self._clock()
