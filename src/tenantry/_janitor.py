"""The cache janitor: a task that purges expired entries as they fall due.

Expired entries are never *returned* by a `BoundedCache` whether or not
anyone purges them; the janitor exists to give their memory back. It is a
plain task the owner of some caches starts in its own nursery, so it lives
exactly as long as the scope that owns the caches, and it sleeps until the
next deadline instead of polling: an idle socket's janitor costs nothing.

How it learns of new deadlines: each cache it serves calls its wakeup
callback (`BoundedCache.set_wakeup`) when an operation creates a deadline
that may come before all others. The janitor sleeps in a cancel scope and
the callback just pulls that scope's deadline in, which is the Trio way to
make a sleeping task wake sooner.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any, NoReturn

import trio

from ._cache import BoundedCache
from ._validate import check_seconds

__all__ = ["run_janitor"]


async def run_janitor(
    caches: Iterable[BoundedCache[Any, Any]], *, resolution: float = 1.0
) -> NoReturn:
    """Purge expired entries of *caches* as they fall due, until cancelled.

    Start it in the nursery of the scope that owns the caches::

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tenantry.run_janitor, caches)

    Args:
        caches: The caches to serve. Each can have one janitor at a time
            (`RuntimeError` otherwise).
        resolution: The janitor wakes at most once per *resolution* seconds,
            so keys expiring close together are purged in one batch rather
            than one wakeup each.
    """
    await _Janitor(tuple(caches), check_seconds(resolution, "resolution")).run()


class _Janitor:
    def __init__(self, caches: tuple[BoundedCache[Any, Any], ...], resolution: float) -> None:
        self._caches = caches
        self._resolution = resolution
        self._nap = trio.CancelScope()
        self._not_before = -math.inf

    def _wake(self, delay: float) -> None:
        deadline = max(trio.current_time() + delay, self._not_before)
        self._nap.deadline = min(self._nap.deadline, deadline)

    async def run(self) -> NoReturn:
        with contextlib.ExitStack() as attached:
            for cache in self._caches:
                cache.set_wakeup(self._wake)
                attached.callback(cache.set_wakeup, None)
            while True:
                # Purge everything first: an on_remove callback may write to a
                # cache already purged, and its new deadline must count.
                for cache in self._caches:
                    cache.purge_expired()
                now = trio.current_time()
                self._not_before = now + self._resolution
                with trio.CancelScope(
                    deadline=max(self._next_due(now), self._not_before)
                ) as self._nap:
                    await trio.sleep_forever()

    def _next_due(self, now: float) -> float:
        due = math.inf
        for cache in self._caches:
            at = cache.next_housekeeping
            if at is not None:
                due = min(due, now + (at - cache.clock()))
        return due
