"""Many deadlines, one task: the timer a hub's sockets share for their keepalive.

Theory of operation
===================

A socket's keepalive looks at one counter once per interval, and only an
interval without any frame costs a ping. A task per socket sleeping for
that costs about 3 KB and a task each; `Timers` does the sleeping for all
the sockets of a hub: a heap of (due, callback) entries and one task,
`Timers.run`, that sleeps until the earliest entry is due and then calls
each due callback, in the order they fell due. A callback is synchronous
and short: whatever has to wait (a ping, for its pong) it starts as a task
in its own scope's nursery, so that it dies with that scope.

An entry belongs to the scope that made it, which cancels it (`Timer.cancel`)
before its nursery closes; a cancelled entry holds nothing and is dropped
when it comes up. A callback runs once; to run again it makes a new entry.
The task is started by the owner of the `Timers` (the hub, or a socket on
its own) in its nursery, and ends with it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import NoReturn, final

import trio

__all__ = ["Timer", "Timers"]


@final
class Timer:
    """One entry of `Timers`: a callback that runs once when due, unless cancelled."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        """Do not run the callback (and let go of it now). Idempotent."""
        self.callback = None


@final
class Timers:
    """Deadlines for many scopes, slept on by one task (`run`)."""

    __slots__ = ("_heap", "_nap", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # equal deadlines run in the order they were set
        self._nap = trio.CancelScope()  # the sleep of `run`, whose deadline a nearer entry pulls in

    def call_at(self, due: float, callback: Callable[[], object]) -> Timer:
        """Call *callback* from `run`'s task at Trio time *due* (or as soon after as it runs)."""
        timer = Timer(callback)
        heapq.heappush(self._heap, (due, next(self._order), timer))
        self._nap.deadline = min(self._nap.deadline, due)
        return timer

    async def run(self) -> NoReturn:
        """Call the callbacks as they fall due, until cancelled."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)[2]
                callback, timer.callback = timer.callback, None
                if callback is not None:
                    callback()
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._nap:
                await trio.sleep_forever()
