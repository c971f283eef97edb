"""Metric accounting: what a hub and its tenants count, turned into `Sample` s.

The one place that decides what each metric family adds up. `_metrics.py`
declares the families and renders a snapshot; this module fills it:

==================================  =========================================
source                              families
==================================  =========================================
the hub's `Gauges`                  ``sockets_alive``, ``buffers_alive``
each tenant's state                 ``tenants`` (every state, zeros included)
a tenant's `Totals`                 ``events_*``, ``buffer_flush``,
                                    ``frames_rejected``
a tenant's reconnector              ``reconnects``, ``breaker_state``,
                                    ``breaker_trips``
every live cache set, plus the      ``cache_*``, summed by cache and scope
socket caches of ended connections
==================================  =========================================

A tenant keeps the `Totals` of its ended connections; a snapshot adds the
live connection's counters to a copy, so nothing is counted twice and
nothing runs in the background.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import attrs

from ._breaker import BreakerState
from ._cache_specs import CacheSet, Scope
from ._events import FlushReason
from ._gauges import Gauges
from ._metrics import Sample
from ._protocol import RejectReason
from ._socket import Socket
from ._status import TenantState

__all__ = ["CACHE_COUNTERS", "TenantCounts", "Totals", "hub_samples"]

CACHE_COUNTERS = ("hits", "misses", "evictions", "expirations")
"""The `CacheStats` counters that the metrics add up across connections."""

EVENT_COUNTERS = ("received", "delivered", "merged", "lost")
"""The `BufferStats` event counters, each a ``tenantry_events_<name>_total`` family."""


@attrs.define
class Totals:
    """Cumulative counters of a tenant's connections."""

    events: collections.Counter[str] = attrs.field(factory=collections.Counter)
    flushes: collections.Counter[FlushReason] = attrs.field(factory=collections.Counter)
    rejected: collections.Counter[RejectReason] = attrs.field(factory=collections.Counter)
    socket_cache_counts: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter
    )
    """(cache name, counter) -> count, over the socket-scoped caches."""

    def add_socket(self, sock: Socket) -> None:
        """Add what *sock* has counted so far."""
        stats = sock.buffer.stats
        self.events.update({name: getattr(stats, name) for name in EVENT_COUNTERS})
        self.flushes.update(stats.flushes)
        self.rejected.update(sock.rejected)
        for name in sock.caches:
            cache_stats = sock.caches.stats_of(name)
            for counter in CACHE_COUNTERS:
                self.socket_cache_counts[name, counter] += getattr(cache_stats, counter)

    def with_socket(self, sock: Socket | None) -> Totals:
        """A copy of these totals plus *sock*'s counters (the live connection, if any)."""
        totals = Totals(
            collections.Counter(self.events),
            collections.Counter(self.flushes),
            collections.Counter(self.rejected),
            collections.Counter(self.socket_cache_counts),
        )
        if sock is not None:
            totals.add_socket(sock)
        return totals


class TenantCounts(Protocol):
    """What the metrics read of a tenant (the hub's `Tenant` is one)."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def state(self) -> TenantState: ...
    @property
    def reconnects(self) -> Mapping[str, int]: ...
    @property
    def breaker_state(self) -> BreakerState: ...
    @property
    def breaker_trips(self) -> int: ...
    @property
    def retired_cache_counts(self) -> Mapping[tuple[str, str], int]: ...
    def totals(self) -> Totals: ...
    def cache_sets(self) -> Iterator[tuple[Scope, CacheSet]]: ...


def hub_samples(
    gauges: Gauges, global_caches: CacheSet, tenants: Iterable[TenantCounts]
) -> Iterator[Sample]:
    """Every sample of a hub with these gauges, global caches and tenants."""
    tenants = list(tenants)
    yield Sample("tenantry_sockets_alive", (), gauges.sockets_alive)
    yield Sample("tenantry_buffers_alive", (), gauges.buffers_alive)
    states = collections.Counter(t.state for t in tenants)
    for state in TenantState:
        yield Sample("tenantry_tenants", (("state", state.value),), states[state])
    retired: collections.Counter[tuple[str, str]] = collections.Counter()
    cache_sets: list[tuple[Scope, CacheSet]] = [(Scope.GLOBAL, global_caches)]
    for tenant in tenants:
        yield from _tenant_samples(tenant)
        retired.update(tenant.retired_cache_counts)  # the live caches are read below
        cache_sets += tenant.cache_sets()
    yield from _cache_samples(cache_sets, retired)


def _tenant_samples(tenant: TenantCounts) -> Iterator[Sample]:
    label = ("tenant", tenant.tenant_id)
    totals = tenant.totals()
    for event in EVENT_COUNTERS:
        yield Sample(f"tenantry_events_{event}_total", (label,), totals.events[event])
    for reason, count in totals.flushes.items():
        yield Sample("tenantry_buffer_flush_total", (label, ("reason", reason.value)), count)
    for reject, count in totals.rejected.items():
        yield Sample("tenantry_frames_rejected_total", (label, ("reason", reject.value)), count)
    for name, count in tenant.reconnects.items():
        yield Sample("tenantry_reconnects_total", (label, ("reason", name)), count)
    yield Sample("tenantry_breaker_state", (label,), tenant.breaker_state.gauge)
    yield Sample("tenantry_breaker_trips_total", (label,), tenant.breaker_trips)


def _cache_samples(
    cache_sets: Iterable[tuple[Scope, CacheSet]], retired: Mapping[tuple[str, str], int]
) -> Iterator[Sample]:
    """Cache series summed by (cache, scope); *retired*: counters of closed sockets' caches."""
    sums: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for scope, cache_set in cache_sets:
        for name in cache_set:
            stats = cache_set.stats_of(name)
            key = (name, scope.value)
            sums[(*key, "keys")] += stats.size
            sums[(*key, "max_keys")] += stats.max_keys
            for counter in CACHE_COUNTERS:
                sums[(*key, counter)] += getattr(stats, counter)
    for (name, counter), count in retired.items():
        sums[name, Scope.SOCKET.value, counter] += count
    for (name, scope_name, metric), value in sorted(sums.items()):
        suffix = metric if metric in ("keys", "max_keys") else f"{metric}_total"
        yield Sample(f"tenantry_cache_{suffix}", (("cache", name), ("scope", scope_name)), value)
