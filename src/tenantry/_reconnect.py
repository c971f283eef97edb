"""When a tenant reconnects: the policy, and the per-tenant state machine that applies it.

Theory of operation
===================

A tenant's supervisor (``_tenant.py``) is a loop: connect, serve, close,
decide, wait. Everything it decides comes from a `Reconnector`, which sees
only three kinds of input and never does I/O:

* `Reconnector.connected` -- a handshake succeeded;
* `Reconnector.settle` -- time passes; a connection that has stayed up for
  ``stable_after`` seconds is *stable*: the failure count and the circuit
  breaker are reset. Nobody has to call it at that moment: every reading
  (`~Reconnector.failures`, `~Reconnector.breaker`, `~Reconnector.stable_at`)
  and every other method settles first, so a status or a metrics scrape
  sees the reset as soon as it is due, with no timer to keep;
* `Reconnector.healthy` -- the protocol declared the live connection
  healthy (its READY or RESUMED moment): it is stable from now, whatever
  its age;
* `Reconnector.disconnected` -- an attempt ended, with a `DisconnectReason`:
  a rejected handshake, a close, or a handler error (``failed=True``); and,
  for a rejection that said when to come back (a 429 or 503 with
  ``Retry-After``), that wait in seconds (``retry_after``).

An attempt is a *failure* unless it produced a stable (or healthy) connection. That is
a reconnect storm's cure in one rule: a server that accepts and closes at once
produces failures, so the delays grow and the breaker opens, however
"normal" each close looks. The reason then picks the `Decision`: its own
``decision``, if it carries one (a handler's or a protocol's
``Socket.close(decision=...)``), else the policy's ``decide`` (by default the
table in ``_reasons.py``):

=============  =============================================================
decision       next step
=============  =============================================================
STOP           no further attempt (nothing is counted)
RECONNECT      wait ``backoff.delay(failures)``, or until the breaker allows
RECONNECT_NOW  no backoff delay; the breaker still counts, and waits if open
=============  =============================================================

A ``retry_after`` lengthens either wait to at least itself, bounded by the
policy's ``max_retry_after`` (a server cannot park a tenant for a day); it
never shortens one.

So even a peer that answers every connection with 515 ("restart required")
gets ``fail_max`` immediate retries, then the breaker's timeout. A restart
asked for by the operator (`Reconnector.restarted`) is none of these: no
failure, no delay, no breaker.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import final

import attrs

from ._backoff import Backoff, RandomSource
from ._breaker import BreakerState, CircuitBreaker
from ._clock import Clock, resolve_clock
from ._reasons import Decision, DisconnectReason, default_decide
from ._validate import positive_count, seconds

__all__ = ["NextStep", "ReconnectPolicy", "Reconnector"]


def _function_name(value: object) -> str:
    """A function by its name: its repr's address changes every run."""
    return getattr(value, "__qualname__", None) or repr(value)


@final
@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """How a tenant reconnects. One policy may serve many tenants.

    Args:
        backoff: The delay schedule.
        fail_max: The circuit breaker each tenant gets opens after this
            many consecutive failures.
        reset_timeout: Seconds the open breaker waits before it lets one
            attempt through (half-open).
        stable_after: Seconds a connection must stay up to count as a
            success; earlier closes are failures.
        decide: Reason -> `Decision`; `default_decide` (stop on 401, 403 and
            440, at once on 515) unless given. A reason that carries its
            own ``decision`` (see `Socket.close`) is not passed to it. In a hub, a ``decide`` that
            raises (or returns something else) is logged with its traceback
            and the default decision applies.
        max_retry_after: The longest wait, in seconds, that a rejection's
            ``Retry-After`` (a 429 or 503) may impose before the next attempt.
    """

    backoff: Backoff = attrs.field(factory=Backoff, validator=attrs.validators.instance_of(Backoff))
    fail_max: int = attrs.field(default=5, validator=positive_count)
    reset_timeout: float = attrs.field(default=60.0, validator=seconds)
    stable_after: float = attrs.field(default=30.0, validator=seconds)
    decide: Callable[[DisconnectReason], Decision] = attrs.field(
        default=default_decide, validator=attrs.validators.is_callable(), repr=_function_name
    )
    max_retry_after: float = attrs.field(default=300.0, validator=seconds)

    def reconnector(
        self, *, clock: Clock | None = None, random: RandomSource | None = None
    ) -> Reconnector:
        """A fresh per-tenant state machine applying this policy."""
        return Reconnector(self, clock=clock, random=random)


@final
@attrs.frozen
class NextStep:
    """What the supervisor does after an attempt ended."""

    decision: Decision
    delay: float
    """Seconds to wait before the next attempt (`math.inf` for STOP)."""
    failures: int
    """Consecutive failures since the last stable connection, this one included."""
    failure: bool
    """Whether this attempt counted as a failure."""
    breaker: BreakerState
    """The breaker after this attempt: OPEN means *delay* waits for it."""


@final
class Reconnector:
    """One tenant's reconnect state: failures, breaker, the live connection's age.

    Create it with `ReconnectPolicy.reconnector`. Pure: *clock* and *random*
    are injected (the Trio run's clock and a fresh `random.Random` by default).
    """

    def __init__(
        self,
        policy: ReconnectPolicy,
        *,
        clock: Clock | None = None,
        random: RandomSource | None = None,
    ) -> None:
        self.policy = policy
        self._clock = resolve_clock(clock)
        self._random = _random.Random() if random is None else random  # noqa: S311 - jitter
        self._breaker = CircuitBreaker(policy.fail_max, policy.reset_timeout, clock=self._clock)
        self._failures = 0
        self._connections = 0
        self._connected_at: float | None = None
        self._stable = False

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last stable connection."""
        self.settle()
        return self._failures

    @property
    def breaker(self) -> CircuitBreaker:
        """The tenant's circuit breaker (closed again once a connection is stable)."""
        self.settle()
        return self._breaker

    @property
    def connections(self) -> int:
        """Successful handshakes so far."""
        return self._connections

    @property
    def stable_at(self) -> float | None:
        """When the live connection becomes stable; None if none is live or it is stable."""
        self.settle()
        return self._stable_at()

    def connected(self) -> None:
        """A handshake succeeded: a connection is live from now."""
        self._connections += 1
        self._connected_at = self._clock()
        self._stable = False

    def settle(self) -> bool:
        """Mark the live connection stable if it has lasted; True if it just became so."""
        stable_at = self._stable_at()
        if stable_at is None or self._clock() < stable_at:
            return False
        self._stabilize()
        return True

    def healthy(self) -> bool:
        """The live connection was declared healthy: stable from now; True if it just became so.

        Resets the failure count and the breaker at once, as `settle` does
        after ``stable_after``; the connection's end is then no failure.
        """
        if self._connected_at is None or self._stable:
            return False
        self._stabilize()
        return True

    def _stabilize(self) -> None:
        self._stable = True
        self._failures = 0
        self._breaker.record_success()

    def _stable_at(self) -> float | None:
        if self._connected_at is None or self._stable:
            return None
        return self._connected_at + self.policy.stable_after

    def disconnected(
        self, reason: DisconnectReason, *, failed: bool = False, retry_after: float | None = None
    ) -> NextStep:
        """An attempt ended with *reason*; *failed* forces a failure (a handler error).

        *retry_after*: seconds the server asked to wait (a rejection's
        ``Retry-After``); the delay is then at least that, up to the policy's
        ``max_retry_after``. Negative or NaN counts as 0.

        The reason's own ``decision``, if it has one, overrides the policy's ``decide``.
        """
        self.settle()
        was_stable = self._stable
        self._stable, self._connected_at = False, None  # the next attempt starts unproven
        decision = reason.decision
        if decision is None:
            decision = self.policy.decide(reason)
        if decision is Decision.STOP:
            return NextStep(
                decision, math.inf, self._failures, failure=False, breaker=self._breaker.state
            )
        failure = failed or not was_stable
        if failure:
            self._failures += 1
            self._breaker.record_failure()
        if decision is Decision.RECONNECT_NOW:
            delay = 0.0
        else:
            delay = self.policy.backoff.delay(self._failures, self._random)
        state = self._breaker.state
        if state is BreakerState.OPEN:
            delay = max(delay, self._breaker.wait())
        if retry_after is not None and retry_after > 0:  # False for NaN
            delay = max(delay, min(retry_after, self.policy.max_retry_after))
        return NextStep(decision, delay, self._failures, failure=failure, breaker=state)

    def restarted(self) -> NextStep:
        """The operator asked for a fresh connection: reconnect at once, count nothing."""
        self.settle()
        self._stable, self._connected_at = False, None
        return NextStep(
            Decision.RECONNECT_NOW, 0.0, self._failures, failure=False, breaker=self._breaker.state
        )
