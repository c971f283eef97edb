"""The Hub scope: many tenants in one program, and the global caches.

`open_hub` is an async context manager around one nursery that owns the
global caches (and their janitor), the timer task its sockets' keepalives
share (``_timers.py``), and one task per tenant (``_tenant.py``).
Adding a tenant builds it and starts its task in the hub's nursery from the
caller's task (``nursery.start``), so whatever keeps it from starting fails
there, and the add returns as soon as the tenant's scope runs, with no
hand-off to a task of the hub's. The id is taken before that first
``await``, so two adds of one id cannot both pass the check.
Restarting or removing a tenant is a command the tenant carries out in the
caller's task, one at a time (`Tenant.restart`, `Tenant.stop`).
Leaving the ``async with`` stops every tenant the way `Hub.remove` does --
each socket's ordered shutdown, subscribers drained -- then the rest.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import final

import trio

from ._accounting import hub_samples
from ._cache_specs import BAILEYS_CACHE_SPECS, CacheSet, CacheSpec, Scope
from ._gauges import Gauges
from ._metrics import Metrics
from ._status import TenantStatus
from ._tenant import Tenant, TenantSpec
from ._timers import Timers

__all__ = ["Hub", "open_hub"]

logger = logging.getLogger("tenantry.hub")


@final
class Hub:
    """Many tenants' supervisors under one scope. Made by `open_hub`."""

    def __init__(self, nursery: trio.Nursery, global_caches: CacheSet, seed: int | None) -> None:
        self._nursery = nursery
        self._global_caches = global_caches
        self._seed = seed
        self._gauges = Gauges()
        self._tenants: dict[str, Tenant] = {}
        self._finished: dict[str, trio.Event] = {}  # of the tenants being removed
        self._removing: set[str] = set()
        self._closing = False
        self._timers = Timers()  # its sockets' keepalives: one task for them all

    @property
    def global_caches(self) -> CacheSet:
        """The caches of `Scope.GLOBAL`, shared by every tenant, gone with the hub."""
        return self._global_caches

    @property
    def gauges(self) -> Gauges:
        """Live sockets and buffers across the hub's tenants."""
        return self._gauges

    @property
    def tenant_ids(self) -> list[str]:
        """The tenants on the hub, in the order they were added."""
        return list(self._tenants)

    async def add(self, spec: TenantSpec) -> None:
        """Start a tenant; return once its scope is running (it connects in the background).

        Raises:
            ValueError: a tenant with this id is on the hub (or being removed).
            trio.ClosedResourceError: the hub is closing.
            Exception: whatever else keeps the tenant from starting; the hub
                and its other tenants carry on.
        """
        if not isinstance(spec, TenantSpec):
            raise TypeError(f"spec must be a TenantSpec, got {type(spec).__name__}")
        if self._closing:
            raise trio.ClosedResourceError("the hub is closing")
        tenant_id = spec.tenant_id
        if tenant_id in self._tenants:
            removing = " (being removed)" if tenant_id in self._removing else ""
            raise ValueError(f"tenant {tenant_id!r} is already on the hub{removing}")
        tenant = Tenant(
            spec,
            global_caches=self._global_caches,
            gauges=self._gauges,
            seed=self._seed,
            timers=self._timers,
        )
        self._tenants[tenant_id] = tenant  # taken before the first await: ids stay unique
        started = False
        try:
            await self._nursery.start(self._run_tenant, tenant)
            started = True
        finally:
            if not started and self._tenants.get(tenant_id) is tenant:
                self._forget(tenant_id)  # its task never ran, so it could not let go of the id

    async def restart(self, tenant_id: str) -> None:
        """Close the tenant's socket (ordered shutdown) and reconnect at once.

        Not a failure, no backoff, no breaker wait; a stopped tenant starts
        again. Returns once the old socket has closed.
        """
        await self._tenant(tenant_id).restart()

    async def remove(self, tenant_id: str, *, abort: bool = False) -> None:
        """Stop the tenant and return once its scope has fully exited.

        The live socket (if any) runs its ordered shutdown, so subscribers get
        the final batch; a connection attempt or a backoff wait is cancelled.
        No reconnect can follow: the supervisor loop is gone.

        With *abort*, the socket's transport is closed first, at once and
        without a close frame (`Socket.abort`), even if a removal is already
        under way; the flush and drain then run locally. For a connection
        that must be gone from the peer's side by a deadline.
        """
        tenant = self._tenant(tenant_id)
        if abort:
            tenant.abort()
        finished = self._finished.setdefault(tenant_id, trio.Event())
        self._removing.add(tenant_id)
        await tenant.stop()
        await finished.wait()

    def status(self) -> list[TenantStatus]:
        """One `TenantStatus` per tenant, in the order they were added."""
        return [tenant.status() for tenant in self._tenants.values()]

    def metrics(self) -> Metrics:
        """A snapshot of every metric in `~tenantry.lowlevel.METRIC_FAMILIES`."""
        return Metrics(hub_samples(self._gauges, self._global_caches, self._tenants.values()))

    def _tenant(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except KeyError:
            raise KeyError(f"no tenant {tenant_id!r} on this hub") from None

    # -- the hub's own tasks ---------------------------------------------------

    async def _run_tenant(
        self, tenant: Tenant, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        tenant_id = tenant.tenant_id
        logger.info("tenant added: %s", tenant_id, extra={"tenant": tenant_id})
        # The task status holds the nursery it started in: this frame lets go of it (`run` too).
        running = tenant.run(task_status=task_status)
        del task_status
        try:
            await running
        finally:
            self._forget(tenant_id)

    def _forget(self, tenant_id: str) -> None:
        """Let go of a tenant whose task has ended (or never ran); wake `remove`."""
        del self._tenants[tenant_id]
        self._removing.discard(tenant_id)
        finished = self._finished.pop(tenant_id, None)
        if finished is not None:
            finished.set()

    async def _stop_all(self) -> None:
        """Remove every tenant, shielded but bounded: each socket's own grace, plus slack."""
        self._closing = True
        bound = max((t.spec.options.grace for t in self._tenants.values()), default=0.0) + 5.0
        with trio.move_on_after(bound, shield=True) as scope:
            async with trio.open_nursery() as nursery:
                for tenant_id in list(self._tenants):
                    nursery.start_soon(self.remove, tenant_id)
        if scope.cancelled_caught:
            logger.warning(
                "hub closing: %d tenants did not stop within %g s; cancelling them",
                len(self._tenants),
                bound,
                extra={"tenants": len(self._tenants)},
            )


@asynccontextmanager
async def open_hub(
    global_caches: Mapping[str, CacheSpec] = BAILEYS_CACHE_SPECS, *, seed: int | None = None
) -> AsyncIterator[Hub]:
    """A hub for many tenants; everything it started is gone when the block ends.

    Args:
        global_caches: Cache specs; those of `Scope.GLOBAL` are built for the
            hub and shared by its tenants (`Socket.global_caches`).
        seed: Makes every tenant's backoff jitter reproducible (each tenant
            draws from its own generator, seeded from *seed* and its id, so
            scheduling order does not matter). None: unpredictable jitter.

    On exit every tenant is removed as by `Hub.remove`, concurrently.
    """
    caches = CacheSet(global_caches, Scope.GLOBAL)
    try:
        async with trio.open_nursery() as nursery:
            hub = Hub(nursery, caches, seed)
            nursery.start_soon(hub._timers.run)  # noqa: SLF001 - the scope that owns the hub
            try:
                with caches.janitor(nursery):
                    yield hub
            finally:
                await hub._stop_all()  # noqa: SLF001
                nursery.cancel_scope.cancel()
    finally:
        caches.clear()
