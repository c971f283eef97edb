"""A circuit breaker on an injected clock.

Theory of operation
===================

The classic three states (Nygard, *Release It!*, 2007)::

    CLOSED --(fail_max consecutive failures)--> OPEN
    OPEN --(reset_timeout elapsed)--> HALF_OPEN
    HALF_OPEN --(the one trial succeeds)--> CLOSED
    HALF_OPEN --(the trial fails)--> OPEN (the timeout starts again)

OPEN becomes HALF_OPEN lazily: the state is computed from the clock when it
is read, so nothing has to wake up to flip it. In HALF_OPEN exactly one
caller of `CircuitBreaker.allow` gets through until an outcome is recorded.

Pure: it never sleeps and never sees an exception. What counts as a failure
is the caller's decision -- for a tenant's supervisor, a failed handshake or
a connection that did not last (see ``_reconnect.py``); a cancellation is
never one, because the supervisor only records outcomes of attempts that
ended by themselves. (The Python breaker libraries wrap calls and catch
exceptions, none on an injectable clock or aware of Trio's cancellation;
that is why this one is a bare state machine.)
"""

from __future__ import annotations

import enum
import math
from typing import final

from ._clock import Clock, resolve_clock
from ._validate import check_count, check_seconds

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    """The state of a `~tenantry.lowlevel.CircuitBreaker`."""

    CLOSED = "closed"
    """Attempts go through; failures are counted."""
    OPEN = "open"
    """No attempt until ``reset_timeout`` has passed since it opened."""
    HALF_OPEN = "half_open"
    """One trial attempt decides: success closes, failure reopens."""

    @property
    def gauge(self) -> int:
        """0 closed, 1 open, 2 half-open (the ``tenantry_breaker_state`` metric)."""
        return _GAUGE[self]


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@final
class CircuitBreaker:
    """Stops attempts after *fail_max* consecutive failures, for *reset_timeout* seconds.

    Args:
        fail_max: Consecutive failures that open the circuit.
        reset_timeout: Seconds from opening until a trial is allowed.
        clock: Monotonic seconds; the Trio run's clock by default.
    """

    def __init__(
        self, fail_max: int = 5, reset_timeout: float = 60.0, *, clock: Clock | None = None
    ):
        self._fail_max = check_count(fail_max, "fail_max", minimum=1)
        self._reset_timeout = check_seconds(reset_timeout, "reset_timeout")
        self._clock = resolve_clock(clock)
        self._open = False
        self._trial_taken = False
        self._failures = 0
        self._opened_at: float | None = None
        self._changed_at = self._clock()
        self._trips = 0

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN by itself once the timeout is over)."""
        if not self._open:
            return BreakerState.CLOSED
        if self._clock() < self.retry_at:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    @property
    def trips(self) -> int:
        """How many times the circuit has opened (reopening after a failed trial included)."""
        return self._trips

    @property
    def opened_at(self) -> float | None:
        """When the circuit last opened, or None while it is closed."""
        return self._opened_at if self._open else None

    @property
    def retry_at(self) -> float:
        """When the next attempt may be made: now if closed, else the end of the timeout."""
        if self._opened_at is None or not self._open:
            return -math.inf
        return self._opened_at + self._reset_timeout

    @property
    def changed_at(self) -> float:
        """When the state last changed (OPEN -> HALF_OPEN counts at the timeout's end)."""
        if self._open and self._clock() >= self.retry_at:
            return self.retry_at
        return self._changed_at

    def allow(self) -> bool:
        """Whether an attempt may be made now. In HALF_OPEN, True once per trial."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._trial_taken:
            return False
        self._trial_taken = True
        return True

    def wait(self) -> float:
        """Seconds until an attempt may be made (0 if now)."""
        return max(0.0, self.retry_at - self._clock())

    def record_success(self) -> None:
        """An attempt succeeded: close the circuit and forget the failures."""
        if self._open:
            self._changed_at = self._clock()
        self._open = False
        self._trial_taken = False
        self._failures = 0

    def record_failure(self) -> None:
        """An attempt failed: count it; open (or reopen) the circuit if it must."""
        self._failures += 1
        if self._open or self._failures >= self._fail_max:
            self._open = True
            self._trial_taken = False
            self._opened_at = self._changed_at = self._clock()
            self._trips += 1

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state.value} failures={self._failures}/{self._fail_max}"
            f" reset_timeout={self._reset_timeout:g}>"
        )
