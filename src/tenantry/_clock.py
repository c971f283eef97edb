"""Which clock a sans-IO component reads when the caller does not inject one."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

Clock = Callable[[], float]
"""A zero-argument callable returning monotonic seconds as a float."""


def resolve_clock(clock: Clock | None) -> Clock:
    """Return *clock*, or the clock of the Trio run we are in, or `time.monotonic`.

    Inside a Trio run the run's own clock is bound directly (one call per
    read, no context lookup), so a `trio.testing.MockClock` drives every
    timeout and expiry of components created under it. Outside a run there
    is no Trio clock, and the process's monotonic clock is the only sane
    default.
    """
    if clock is not None:
        return clock
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return time.monotonic
