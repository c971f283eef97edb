"""A member of a fleet: a plain `~tenantry.Hub` whose tenants are leased from a shared store.

Theory of operation
===================

`open_cluster_hub` wraps a `~tenantry.Hub` and runs, in its own nursery,
the member's life as a loop::

    join:  register a new incarnation (retrying), the first lease
    hold:  heartbeat | deadline watch | assignment       (until the lease ends)
    drop:  abort every socket, then flush and drain locally; leave if possible
    wait a renewal interval, then join again

*Heartbeat*: every ``ttl / 3`` it reads the clock (*t_send*), renews the
member row, and on success moves the lease deadline to ``t_send + ttl *
(1 - rho) - close_budget`` (the lease rule, ``_lease.py``). Each renewal is
bounded by the current deadline: an answer after it could only be
worthless. A renewal the store refuses (the row had expired) ends the lease
at once.

*Deadline watch*: when the deadline passes without a newer success, every
tenant's socket is aborted -- its transport closed at once, without a close
frame (`~tenantry.Socket.abort`) -- and only then flushed and drained
locally. A lost store, a partition and a frozen heartbeat all end here:
the member fails closed, because it cannot tell them apart from its own
death, and the store lets a successor take its tenants only after its row
has expired, which the lease rule places after the deadline.

*Assignment* (``_assignment.py``): read a view, compute what rendezvous
hashing gives this member, then: abort what the store says is no longer
ours; close what left the tenant list; hand off what another member now
wins (close the tenant first, then release its row, at the hand-off rate);
restart (close, then start again under the same epoch) what runs here
with a description that changed; acquire what this member wins and is
free. Then wait for a change
(`~Coordinator.wait_for_change`), at most ``poll_interval``.

Leaving the ``async with`` stops the assignment, closes every tenant the
ordinary way (subscribers drain), then deletes the member row, so the
tenants fail over at once instead of after the TTL.

Fencing
=======

Every acquisition bumps the tenant's *epoch* in the store, and the member
passes it to ``spec_factory(tenant_id, description, epoch)``, so the handler
it builds knows the epoch it runs under (`ClusterHub.epoch_of` tells it
too). A lease is a timer, not a fence: a process frozen past its deadline
(a long GC pause, SIGSTOP, a VM migration) wakes up believing it still owns
its tenants for a moment. Writes the application makes for a tenant (its
state, its credentials) must therefore carry the epoch and be refused by
the store when a newer one exists, in the same transaction::

    UPDATE tenant_state SET ... WHERE tenant_id = %s AND epoch <= %s

A zombie's write then changes nothing. What fencing cannot protect is the
upstream itself: the zombie's TCP socket stays open until the upstream
displaces it when the successor connects (WhatsApp Web closes the older
connection with 440). That case is counted as an *upstream conflict*,
never hidden.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, final

import attrs
import trio

from .._cache_specs import BAILEYS_CACHE_SPECS, CacheSpec
from .._hub import Hub, open_hub
from .._metrics import METRIC_FAMILIES, Metrics, Sample
from .._reasons import Decision, DisconnectReason, ReasonCode
from .._status import TenantStatus
from .._tenant import TenantSpec
from .._validate import check_instance, check_name
from ._assignment import Plan, Planner
from ._coordinator import Coordinator, CoordinatorError, Member, TenantRow
from ._lease import Lease, LeaseConfig

__all__ = ["CLUSTER_METRIC_FAMILIES", "ClusterHub", "SpecFactory", "open_cluster_hub"]

logger = logging.getLogger("tenantry.cluster")

SpecFactory = Callable[[str, Mapping[str, Any], int], TenantSpec]
"""``spec_factory(tenant_id, description, epoch) -> TenantSpec``: handlers are code."""

CLUSTER_METRIC_FAMILIES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "tenantry_cluster_members": ("gauge", "Live members in the member's last view."),
        "tenantry_cluster_tenants_owned": ("gauge", "Tenants this member runs."),
        "tenantry_cluster_renewals_total": (
            "counter",
            "Lease renewals, by result (ok, expired: the store refused, failed: no answer).",
        ),
        "tenantry_cluster_renewal_seconds_total": (
            "counter",
            "Round-trip seconds of the successful renewals (divide by the ok renewals).",
        ),
        "tenantry_cluster_deadline_margin_seconds": (
            "gauge",
            "Seconds that were left before the lease deadline when the last renewal succeeded.",
        ),
        "tenantry_cluster_lease_losses_total": (
            "counter",
            "Leases lost (deadline, expired) and tenants found taken (taken), by reason.",
        ),
        "tenantry_cluster_handoffs_total": ("counter", "Tenants closed and freed for another."),
        "tenantry_cluster_acquisitions_total": ("counter", "Tenants acquired from the store."),
        "tenantry_cluster_upstream_conflicts_total": (
            "counter",
            "Connections the upstream replaced (440) while this member held the lease.",
        ),
    }
)
"""The metrics a fleet member reports besides its hub's: name -> (type, help)."""

RENEWAL_RESULTS = ("ok", "expired", "failed")
LOSS_REASONS = ("deadline", "expired", "taken")


@final
class ClusterHub:
    """One member of a fleet, around a plain `~tenantry.Hub`. Made by `open_cluster_hub`."""

    def __init__(
        self,
        hub: Hub,
        coordinator: Coordinator,
        *,
        name: str,
        spec_factory: SpecFactory,
        lease: LeaseConfig,
    ) -> None:
        self._hub = hub
        self._coordinator = coordinator
        self._name = name
        self._spec_factory = spec_factory
        self._config = lease
        self._lease = Lease(lease)
        self._member: Member | None = None
        self._held: dict[str, int] = {}  # tenant -> epoch, from before hub.add to after remove
        self._described: dict[str, Mapping[str, Any]] = {}  # tenant -> the description it runs
        self._members_seen = 0
        self._retiring = False
        self._assigning = trio.CancelScope()
        self._deadline = trio.CancelScope()
        self._lost_reason = "deadline"
        self._renewals: collections.Counter[str] = collections.Counter()
        self._losses: collections.Counter[str] = collections.Counter()
        self._renewal_seconds = 0.0
        self._last_margin = 0.0
        self._handoffs = 0
        self._acquisitions = 0
        self._conflicts = 0

    # -- reading ---------------------------------------------------------------

    @property
    def hub(self) -> Hub:
        """The plain hub running this member's tenants (do not add or remove tenants on it)."""
        return self._hub

    @property
    def name(self) -> str:
        """This member's name."""
        return self._name

    @property
    def member(self) -> Member | None:
        """This member's current incarnation; None while it is not registered."""
        return self._member

    @property
    def tenant_ids(self) -> list[str]:
        """The tenants this member runs now."""
        return list(self._held)

    def epoch_of(self, tenant_id: str) -> int:
        """The epoch under which this member runs *tenant_id*: its fencing token.

        Raises:
            KeyError: this member does not run it.
        """
        try:
            return self._held[tenant_id]
        except KeyError:
            raise KeyError(f"tenant {tenant_id!r} is not run by this member") from None

    @property
    def lease_margin(self) -> float:
        """Seconds until the lease deadline (negative or -inf without a lease)."""
        return self._lease.margin

    def status(self) -> list[TenantStatus]:
        """The hub's `~tenantry.Hub.status`."""
        return self._hub.status()

    def metrics(self) -> Metrics:
        """The hub's metrics and the member's (``tenantry_cluster_*``)."""
        families = {**METRIC_FAMILIES, **CLUSTER_METRIC_FAMILIES}
        return Metrics([*self._hub.metrics().samples, *self._samples()], families)

    def _samples(self) -> Iterator[Sample]:
        yield Sample("tenantry_cluster_members", (), self._members_seen)
        yield Sample("tenantry_cluster_tenants_owned", (), len(self._held))
        for result in RENEWAL_RESULTS:
            count = self._renewals[result]
            yield Sample("tenantry_cluster_renewals_total", (("result", result),), count)
        yield Sample("tenantry_cluster_renewal_seconds_total", (), self._renewal_seconds)
        yield Sample("tenantry_cluster_deadline_margin_seconds", (), self._last_margin)
        for reason in LOSS_REASONS:
            count = self._losses[reason]
            yield Sample("tenantry_cluster_lease_losses_total", (("reason", reason),), count)
        yield Sample("tenantry_cluster_handoffs_total", (), self._handoffs)
        yield Sample("tenantry_cluster_acquisitions_total", (), self._acquisitions)
        yield Sample("tenantry_cluster_upstream_conflicts_total", (), self._conflicts)

    # -- the member's life -------------------------------------------------------

    async def _run(self) -> None:
        config = self._config
        while True:
            member = await self._join()
            await self._hold(member)
            if self._retiring:
                return
            self._losses[self._lost_reason] += 1
            logger.error(
                "lease lost (%s): member %s dropped its tenants",
                self._lost_reason,
                self._name,
                extra={"member": self._name, "reason": self._lost_reason},
            )
            self._member = None
            with trio.move_on_after(config.renew_interval):
                with contextlib.suppress(CoordinatorError):  # frees our rows before the expiry
                    await self._coordinator.leave(member)
            await trio.sleep(config.renew_interval)

    async def _join(self) -> Member:
        """Register a new incarnation, retrying every renewal interval; the lease starts."""
        config = self._config
        while True:
            t_send = self._lease.sending()
            with trio.move_on_after(config.hold):  # an answer later than that is worthless
                try:
                    member = await self._coordinator.register(self._name, config.ttl)
                except CoordinatorError as error:
                    logger.warning(
                        "cannot join: member %s, %s",
                        self._name,
                        error,
                        extra={"member": self._name},
                    )
                else:
                    self._lease.renewed(t_send)
                    if self._lease.held:
                        logger.info(
                            "joined: member %s, incarnation %d",
                            self._name,
                            member.incarnation,
                            extra={"member": self._name, "incarnation": member.incarnation},
                        )
                        return member
            await trio.sleep(config.renew_interval)

    async def _hold(self, member: Member) -> None:
        """Run the heartbeat, the deadline watch and the assignment until the lease ends."""
        self._member = member
        self._lost_reason = "deadline"
        self._deadline = trio.CancelScope(deadline=self._lease.deadline)
        self._assigning = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, member)
            nursery.start_soon(self._assign, member)
            with self._deadline:
                await trio.sleep_forever()
            # The deadline passed, or the store refused a renewal: abort first, everything.
            nursery.cancel_scope.cancel()
            self._lease.lost()
            with trio.CancelScope(shield=True):
                await self._remove_all(abort=True)

    async def _heartbeat(self, member: Member) -> None:
        config, lease = self._config, self._lease
        while True:
            t_send = lease.sending()
            try:
                renewed = await self._coordinator.renew(member, config.ttl)
            except CoordinatorError as error:
                self._renewals["failed"] += 1
                logger.warning(
                    "renewal failed: member %s, %s; %.1f s of lease left",
                    self._name,
                    error,
                    lease.margin,
                    extra={"member": self._name, "margin": lease.margin},
                )
                await trio.sleep_until(t_send + config.renew_interval / 4)
                continue
            if not renewed:
                self._renewals["expired"] += 1
                self._lost_reason = "expired"
                self._deadline.cancel()
                return
            self._renewals["ok"] += 1
            self._renewal_seconds += lease.sending() - t_send
            self._last_margin = lease.margin
            self._deadline.deadline = lease.renewed(t_send)
            await trio.sleep_until(t_send + config.renew_interval)

    # -- assignment --------------------------------------------------------------

    async def _assign(self, member: Member) -> None:
        planner = Planner(self._config)
        if self._retiring:
            return
        with self._assigning:
            while True:
                wait = self._config.poll_interval
                try:
                    view = await self._coordinator.view()
                    self._members_seen = len(view.members)
                    plan = planner.plan(view, member, self._held)
                    await self._carry_out(
                        member, plan, {row.tenant_id: row for row in view.tenants}
                    )
                    if plan.deferred:
                        wait = min(wait, 1 / self._config.handoff_rate)
                    wait = min(wait, planner.next_settle())
                    await self._coordinator.wait_for_change(wait)
                except CoordinatorError as error:
                    logger.warning(
                        "assignment paused: member %s, %s",
                        self._name,
                        error,
                        extra={"member": self._name},
                    )
                    await trio.sleep(max(wait, self._config.renew_interval / 4))  # no hammering

    async def _carry_out(self, member: Member, plan: Plan, rows: Mapping[str, TenantRow]) -> None:
        if plan.lost:
            self._losses["taken"] += len(plan.lost)
            logger.error(
                "tenants taken: member %s no longer owns %s; aborting them",
                self._name,
                ", ".join(plan.lost),
                extra={"member": self._name, "tenants": list(plan.lost)},
            )
            async with trio.open_nursery() as nursery:
                for tenant_id in plan.lost:
                    nursery.start_soon(functools.partial(self._remove, tenant_id, abort=True))
        for tenant_id in plan.drop:
            await self._remove(tenant_id, abort=False)
        for tenant_id, epoch in list(self._held.items()):
            row = rows.get(tenant_id)
            if row is not None and row.description != self._described.get(tenant_id):
                await self._remove(tenant_id, abort=False)  # still ours: nobody else connects
                await self._start(member, row, epoch)  # with the new description
        for tenant_id in plan.hand_off:
            epoch = self._held[tenant_id]
            await self._remove(tenant_id, abort=False)  # close first, then free the row
            self._handoffs += 1
            logger.info(
                "handed off: tenant %s by member %s",
                tenant_id,
                self._name,
                extra={"member": self._name, "tenant": tenant_id, "epoch": epoch},
            )
            await self._coordinator.release(member, tenant_id, epoch)
        for tenant_id, epoch in plan.release:
            await self._coordinator.release(member, tenant_id, epoch)
        for tenant_id, epoch in plan.adopt:
            await self._start(member, rows[tenant_id], epoch)
        for tenant_id in plan.acquire:
            won = await self._coordinator.acquire(member, tenant_id)
            if won is not None:
                self._acquisitions += 1
                await self._start(member, rows[tenant_id], won)

    async def _start(self, member: Member, row: TenantRow, epoch: int) -> None:
        """Run a tenant this member owns at *epoch*; if it cannot run, free its row."""
        tenant_id = row.tenant_id
        try:
            spec = self._spec_factory(tenant_id, row.description, epoch)
            check_instance(spec, "spec_factory's result", TenantSpec)
            if spec.tenant_id != tenant_id:
                raise ValueError(  # noqa: TRY301 - one way out for every bad spec
                    f"spec_factory returned a spec for {spec.tenant_id!r}, not {tenant_id!r}"
                )
            spec = self._counting_conflicts(spec)
        except Exception:
            logger.exception(
                "spec_factory failed: tenant %s, member %s; the tenant is freed",
                tenant_id,
                self._name,
                extra={"member": self._name, "tenant": tenant_id},
            )
            await self._coordinator.release(member, tenant_id, epoch)
            return
        self._held[tenant_id] = epoch  # before the add: a lost lease finds it either way
        self._described[tenant_id] = row.description
        logger.info(
            "acquired: tenant %s by member %s, epoch %d",
            tenant_id,
            self._name,
            epoch,
            extra={"member": self._name, "tenant": tenant_id, "epoch": epoch},
        )
        with trio.CancelScope(shield=True):  # no network: it returns once the tenant started
            await self._hub.add(spec)

    def _counting_conflicts(self, spec: TenantSpec) -> TenantSpec:
        """*spec* whose policy counts a 440 (connection replaced) met while the lease holds."""
        decide = spec.policy.decide
        tenant_id = spec.tenant_id

        def counting(reason: DisconnectReason) -> Decision:
            if reason.code == ReasonCode.CONNECTION_REPLACED and self._lease.held:
                self._conflicts += 1
                logger.error(
                    "upstream conflict: tenant %s replaced upstream while member %s holds it",
                    tenant_id,
                    self._name,
                    extra={"member": self._name, "tenant": tenant_id},
                )
            return decide(reason)

        return attrs.evolve(spec, policy=attrs.evolve(spec.policy, decide=counting))

    async def _remove(self, tenant_id: str, *, abort: bool) -> None:
        with contextlib.suppress(KeyError):  # gone already (a removal that raced this one)
            await self._hub.remove(tenant_id, abort=abort)
        self._held.pop(tenant_id, None)
        self._described.pop(tenant_id, None)

    async def _remove_all(self, *, abort: bool) -> None:
        """Remove every tenant of the hub at once, and those that arrive meanwhile."""
        while self._hub.tenant_ids or self._held:
            async with trio.open_nursery() as nursery:
                for tenant_id in {*self._hub.tenant_ids, *self._held}:
                    nursery.start_soon(functools.partial(self._remove, tenant_id, abort=abort))

    async def _retire(self) -> None:
        """Leave the fleet: stop assigning, close every tenant (ordered), delete the row."""
        self._retiring = True
        self._assigning.cancel()
        await self._remove_all(abort=False)
        member = self._member
        if member is not None and self._lease.held:
            with trio.move_on_after(self._config.renew_interval):
                try:
                    await self._coordinator.leave(member)
                except CoordinatorError as error:
                    logger.warning(
                        "could not leave: member %s, %s; its row expires by itself",
                        self._name,
                        error,
                        extra={"member": self._name},
                    )
        self._member = None


@asynccontextmanager
async def open_cluster_hub(
    coordinator: Coordinator,
    *,
    member: str,
    spec_factory: SpecFactory,
    lease: LeaseConfig | None = None,
    global_caches: Mapping[str, CacheSpec] = BAILEYS_CACHE_SPECS,
    seed: int | None = None,
) -> AsyncIterator[ClusterHub]:
    """Join a fleet as *member*; run the tenants the fleet gives it; leave at the end.

    Args:
        coordinator: The shared store (`Coordinator`), e.g. PostgreSQL.
        member: This member's name, unique in the fleet and stable across
            restarts (e.g. the host name).
        spec_factory: ``spec_factory(tenant_id, description, epoch)`` returns
            the `~tenantry.TenantSpec` to run a tenant of the shared list
            (*description* is its JSON object; *epoch* its fencing token, see
            the module's "Fencing"). Called each time this member acquires
            the tenant; if it raises, the error is logged and the tenant freed.
        lease: `LeaseConfig` (TTL, clock-rate bound, settle delay, hand-off
            rate, ...).
        global_caches, seed: As for `~tenantry.open_hub`.

    The lease rule: this member keeps a tenant connected only until ``t_send
    + ttl * (1 - rho) - close_budget`` after the send of its last successful
    renewal; past it, every socket is aborted (see `LeaseConfig`).
    """
    name = check_name(member, "member")
    if not callable(spec_factory):
        raise TypeError(f"spec_factory must be callable, got {type(spec_factory).__name__}")
    config = LeaseConfig() if lease is None else lease
    check_instance(config, "lease", LeaseConfig)
    async with open_hub(global_caches, seed=seed) as hub:
        cluster = ClusterHub(hub, coordinator, name=name, spec_factory=spec_factory, lease=config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cluster._run)  # noqa: SLF001 - the scope that owns it
            try:
                yield cluster
            finally:
                with trio.CancelScope(shield=True):
                    await cluster._retire()  # noqa: SLF001
                nursery.cancel_scope.cancel()
