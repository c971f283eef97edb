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

`CacheJanitor` is the same janitor started on demand: its task exists only
while some cache has a deadline, so an idle tenant whose caches are empty
(or hold nothing that expires) has no janitor task at all.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NoReturn, final

import trio

from ._cache import BoundedCache
from ._validate import check_seconds

__all__ = ["CacheJanitor", "run_janitor"]


async def run_janitor(
    caches: Iterable[BoundedCache[Any, Any]], *, resolution: float = 1.0
) -> NoReturn:
    """Purge expired entries of *caches* as they fall due, until cancelled.

    Start it in the nursery of the scope that owns the caches::

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tenantry.lowlevel.run_janitor, caches)

    Args:
        caches: The caches to serve. Each can have one janitor at a time
            (`RuntimeError` otherwise).
        resolution: The janitor wakes at most once per *resolution* seconds,
            so keys expiring close together are purged in one batch rather
            than one wakeup each.
    """
    janitor = _Janitor(tuple(caches), check_seconds(resolution, "resolution"))
    with contextlib.ExitStack() as attached:
        janitor.attach()
        attached.callback(janitor.detach)
        while True:
            await janitor.purge_and_sleep(forever=True)


@final
class CacheJanitor:
    """A janitor whose task runs in *nursery* only while *caches* have deadlines.

    Use it as a ``with`` block inside the ``async with`` of the nursery that
    owns the caches: the block attaches it (and starts the task at once if a
    cache already has a deadline); its exit detaches it and ends the task.
    Between deadlines no task exists; a cache's next deadline starts one.
    Arguments as for `run_janitor`.
    """

    __slots__ = ("_janitor",)

    def __init__(
        self,
        nursery: trio.Nursery,
        caches: Iterable[BoundedCache[Any, Any]],
        *,
        resolution: float = 1.0,
    ) -> None:
        self._janitor = _Janitor(tuple(caches), check_seconds(resolution, "resolution"), nursery)

    @property
    def running(self) -> bool:
        """Whether the janitor's task exists now."""
        return self._janitor.running

    def serve(self, cache: BoundedCache[Any, Any]) -> None:
        """Serve *cache* too, from now on (inside the block: a cache built late)."""
        self._janitor.add(cache)

    def __enter__(self) -> CacheJanitor:
        self._janitor.attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._janitor.detach()


class _Janitor:
    __slots__ = (
        "_attached",
        "_caches",
        "_nap",
        "_not_before",
        "_nursery",
        "_resolution",
        "running",
    )

    def __init__(
        self,
        caches: tuple[BoundedCache[Any, Any], ...],
        resolution: float,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._caches = caches
        self._resolution = resolution
        self._nursery = nursery  # None: the caller's task is the janitor (run_janitor)
        self._nap = trio.CancelScope()
        self._not_before = -math.inf
        self._attached = False
        self.running = False

    def attach(self) -> None:
        attached: list[BoundedCache[Any, Any]] = []
        try:
            for cache in self._caches:
                cache.set_wakeup(self._wake)
                attached.append(cache)
        except BaseException:
            for cache in attached:
                cache.set_wakeup(None)
            raise
        self._attached = True
        if self._nursery is not None and self._next_due(trio.current_time()) < math.inf:
            self._start(self._nursery)

    def add(self, cache: BoundedCache[Any, Any]) -> None:
        if self._attached:
            cache.set_wakeup(self._wake)
        self._caches = (*self._caches, cache)
        if self._attached and self._nursery is not None and cache.next_housekeeping is not None:
            self._wake(0.0)

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            for cache in self._caches:
                cache.set_wakeup(None)
        self._nap.cancel()  # a task asleep now sees it is detached, and ends

    def _wake(self, delay: float) -> None:
        if self._nursery is not None and not self.running:
            self._start(self._nursery)
            return
        deadline = max(trio.current_time() + delay, self._not_before)
        self._nap.deadline = min(self._nap.deadline, deadline)

    def _start(self, nursery: trio.Nursery) -> None:
        self.running = True
        nursery.start_soon(self._run_while_due)

    async def _run_while_due(self) -> None:
        try:
            while self._attached and await self.purge_and_sleep(forever=False):
                pass
        finally:
            self.running = False

    async def purge_and_sleep(self, *, forever: bool) -> bool:
        """Purge what is due, then sleep until the next deadline.

        Returns False at once, without sleeping, if there is no deadline and
        not *forever*.
        """
        # Purge everything first: an on_remove callback may write to a
        # cache already purged, and its new deadline must count.
        for cache in self._caches:
            cache.purge_expired()
        now = trio.current_time()
        due = self._next_due(now)
        if due == math.inf and not forever:
            return False
        self._not_before = now + self._resolution
        with trio.CancelScope(deadline=max(due, self._not_before)) as self._nap:
            await trio.sleep_forever()
        return True

    def _next_due(self, now: float) -> float:
        due = math.inf
        for cache in self._caches:
            at = cache.next_housekeeping
            if at is not None:
                due = min(due, now + (at - cache.clock()))
        return due
