"""Declared cache limits, the scope that owns each cache, and capacity planning.

Bounding a multi-tenant deployment's memory is, at heart, a table: every
cache gets a name, a key limit and a TTL, and the limits add up to a worst
case one can provision for (with the Baileys defaults, 32,500 keys per
tenant, 3.26 million for 100 tenants). tenantry keeps that
table as data, adds the *scope* that owns each cache (and so destroys it),
and computes the worst case instead of writing it in a comment.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType, TracebackType
from typing import Any, final

import attrs
import trio

from ._cache import BoundedCache, CacheStats, RemovalCause
from ._clock import Clock, resolve_clock
from ._janitor import CacheJanitor
from ._validate import check_count, check_name, optional_seconds, positive_count

__all__ = ["BAILEYS_CACHE_SPECS", "CacheSet", "CacheSpec", "CapacityPlan", "Scope", "capacity_plan"]


class Scope(enum.Enum):
    """Who owns a cache, and therefore when it is destroyed."""

    SOCKET = "socket"
    """One live connection: dropped when the socket scope exits."""
    TENANT = "tenant"
    """One tenant: survives reconnects, dropped when the tenant is removed."""
    GLOBAL = "global"
    """The hub: shared by all tenants, dropped when the hub exits."""


@final
@attrs.frozen
class CacheSpec:
    """The declared limit, default TTL and owning scope of one named cache."""

    max_keys: int = attrs.field(validator=positive_count)
    ttl: float | None = attrs.field(default=None, validator=optional_seconds)
    """Default TTL in seconds; None for entries that never expire."""
    scope: Scope = attrs.field(default=Scope.SOCKET, validator=attrs.validators.instance_of(Scope))

    def build(
        self,
        name: str,
        *,
        clock: Clock | None = None,
        on_remove: Callable[[Any, Any, RemovalCause], object] | None = None,
    ) -> BoundedCache[Any, Any]:
        """A new, empty `BoundedCache` with this spec's limits."""
        return BoundedCache(name, self.max_keys, self.ttl, clock=clock, on_remove=on_remove)


def check_cache_specs(value: object, field: str) -> None:
    """*value* is a mapping from cache name to `CacheSpec`, else raise naming the entry."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{field} must be a mapping of cache name to CacheSpec, got {type(value).__name__}"
        )
    for name, spec in value.items():
        check_name(name, f"{field} key")
        if not isinstance(spec, CacheSpec):
            raise TypeError(f"{field}[{name!r}] must be a CacheSpec, got {type(spec).__name__}")


def cache_specs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_cache_specs`."""
    check_cache_specs(value, attribute.name)


BAILEYS_CACHE_SPECS: Mapping[str, CacheSpec] = MappingProxyType(
    {
        # Limits: a production Baileys deployment's DEFAULT_CACHE_MAX_KEYS.
        # TTLs: Baileys' DEFAULT_CACHE_TTLS and per-cache constructors.
        "signal_store": CacheSpec(10_000, 300.0, Scope.TENANT),  # keys outlive a connection
        "msg_retry": CacheSpec(10_000, 3_600.0, Scope.SOCKET),
        "call_offer": CacheSpec(500, 300.0, Scope.SOCKET),
        "user_devices": CacheSpec(5_000, 300.0, Scope.SOCKET),
        "placeholder_resend": CacheSpec(5_000, 3_600.0, Scope.SOCKET),
        "lid": CacheSpec(2_000, 259_200.0, Scope.SOCKET),
        "lid_global": CacheSpec(10_000, 259_200.0, Scope.GLOBAL),
    }
)
"""The Baileys defaults: the caches of a production WhatsApp Web (Baileys) multi-tenant
deployment, by name. 32,500 keys per tenant plus 10,000 global."""


@final
@attrs.frozen
class CapacityPlan:
    """The worst case a set of `CacheSpec` can hold, for a number of tenants."""

    tenants: int
    per_tenant: int
    """Keys one tenant can hold: its socket-scoped and tenant-scoped caches."""
    by_scope: Mapping[Scope, int]
    """Keys across the whole fleet, per owning scope."""
    total: int
    """Keys across the whole fleet, global caches included."""

    def __str__(self) -> str:
        scopes = ", ".join(f"{scope.value} {keys:,}" for scope, keys in self.by_scope.items())
        return (
            f"{self.tenants:,} tenants x {self.per_tenant:,} keys + global = "
            f"{self.total:,} keys ({scopes})"
        )


def capacity_plan(specs: Mapping[str, CacheSpec], tenants: int = 1) -> CapacityPlan:
    """Worst-case keys for *tenants* tenants, each at every cache's limit.

    A tenant holds at most one socket at a time (its supervisor is
    sequential), so socket-scoped caches count once per tenant.

    >>> capacity_plan(BAILEYS_CACHE_SPECS, tenants=100).total
    3260000
    """
    check_count(tenants, "tenants", minimum=0)
    per_scope = dict.fromkeys(Scope, 0)
    for spec in specs.values():
        per_scope[spec.scope] += spec.max_keys
    per_tenant = per_scope[Scope.SOCKET] + per_scope[Scope.TENANT]
    by_scope = {
        Scope.SOCKET: per_scope[Scope.SOCKET] * tenants,
        Scope.TENANT: per_scope[Scope.TENANT] * tenants,
        Scope.GLOBAL: per_scope[Scope.GLOBAL],
    }
    return CapacityPlan(
        tenants=tenants,
        per_tenant=per_tenant,
        by_scope=MappingProxyType(by_scope),
        total=sum(by_scope.values()),
    )


@final
class CacheSet(Mapping[str, BoundedCache[Any, Any]]):
    """The caches one scope owns: those of *specs* whose scope is *scope*.

    A socket makes the set of `Scope.SOCKET` caches when it opens and clears
    it when it closes; a tenant, its `Scope.TENANT` set; the hub, the global
    one. Reading ``caches["user_devices"]`` gives the `BoundedCache`.

    Each cache is built the first time it is read (most of an idle tenant's
    caches never are); until then `stats` and `stats_of` report it as empty,
    with its declared limit. Iterating over the names, ``len`` and ``in``
    build nothing.

    Args:
        specs: Cache specs by name (e.g. `BAILEYS_CACHE_SPECS`).
        scope: Which of them this set holds.
        label: Prefixed to each cache's name in logs and stats
            (``"acme/user_devices"``), so that many tenants' caches can be
            told apart.
        clock: Passed to every cache.
    """

    __slots__ = ("_caches", "_clock", "_on_build", "_prefix", "_scope", "_specs")

    def __init__(
        self,
        specs: Mapping[str, CacheSpec],
        scope: Scope,
        *,
        label: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(scope, Scope):
            raise TypeError(f"scope must be a Scope, got {scope!r}")
        check_cache_specs(specs, "specs")
        self._scope = scope
        self._specs = {name: spec for name, spec in specs.items() if spec.scope is scope}
        self._prefix = "" if label is None else f"{label}/"
        # Caches are built on first read, maybe elsewhere: they keep the clock of where
        # the set is made. Inside Trio that is Trio's, looked up when each cache is built
        # (no bound method kept per set); outside, the one resolved here.
        self._clock = clock if clock is not None or _in_trio_run() else resolve_clock(None)
        self._caches: dict[str, BoundedCache[Any, Any]] = {}
        self._on_build: Callable[[BoundedCache[Any, Any]], object] | None = None

    @property
    def scope(self) -> Scope:
        """The scope that owns these caches."""
        return self._scope

    def built(self) -> list[BoundedCache[Any, Any]]:
        """The caches built so far (read at least once), in declaration order."""
        return [self._caches[name] for name in self._specs if name in self._caches]

    def _set_build_callback(
        self, callback: Callable[[BoundedCache[Any, Any]], object] | None
    ) -> None:
        """Call *callback* with each cache built from now on (None: stop calling it).

        Raises:
            RuntimeError: another callback is set (one owner at a time).
        """
        if callback is not None and self._on_build is not None:
            raise RuntimeError(f"{self!r} already has a build callback")
        self._on_build = callback

    def janitor(self, nursery: trio.Nursery) -> AbstractContextManager[None]:
        """A ``with`` block during which a `CacheJanitor` in *nursery* serves these caches.

        Caches built during the block are served too. The janitor's task
        runs only while some cache has a deadline, and the janitor itself
        is made when the first cache is built: most idle tenants never
        build one.
        """
        return _JanitorBlock(self, nursery)

    def stats(self) -> list[CacheStats]:
        """A `CacheStats` snapshot of each cache."""
        return [self.stats_of(name) for name in self._specs]

    def stats_of(self, name: str) -> CacheStats:
        """A `CacheStats` snapshot of one cache, without building it."""
        cache = self._caches.get(name)
        if cache is not None:
            return cache.stats
        return _empty_stats(self._prefix + name, self._specs[name].max_keys)

    def clear(self) -> None:
        """Empty every cache (the owner does this as its scope ends)."""
        for cache in self._caches.values():
            cache.clear()

    def __getitem__(self, name: str) -> BoundedCache[Any, Any]:
        try:
            return self._caches[name]
        except KeyError:
            return self._build(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"<CacheSet {self._scope.value} {list(self._specs)}>"

    def _build(self, name: str) -> BoundedCache[Any, Any]:
        cache = self._specs[name].build(self._prefix + name, clock=resolve_clock(self._clock))
        self._caches[name] = cache
        if self._on_build is not None:
            self._on_build(cache)
        return cache


@final
class _JanitorBlock:
    """`CacheSet.janitor`'s block: its `CacheJanitor` comes with the first cache built."""

    __slots__ = ("_caches", "_janitor", "_nursery")

    def __init__(self, caches: CacheSet, nursery: trio.Nursery) -> None:
        self._caches = caches
        self._nursery = nursery
        self._janitor: CacheJanitor | None = None

    def __enter__(self) -> None:
        built = self._caches.built()
        if built:
            self._open(built)
        self._caches._set_build_callback(self._serve)  # noqa: SLF001 - the set's own helper

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._caches._set_build_callback(None)  # noqa: SLF001
        if self._janitor is not None:
            self._janitor.__exit__(exc_type, exc, tb)

    def _serve(self, cache: BoundedCache[Any, Any]) -> None:
        if self._janitor is None:
            self._open([cache])
        else:
            self._janitor.serve(cache)

    def _open(self, caches: list[BoundedCache[Any, Any]]) -> None:
        janitor = CacheJanitor(self._nursery, caches)
        janitor.__enter__()
        self._janitor = janitor


def _in_trio_run() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _empty_stats(name: str, max_keys: int) -> CacheStats:
    return CacheStats(
        name=name,
        size=0,
        max_keys=max_keys,
        utilization=0.0,
        hits=0,
        misses=0,
        sets=0,
        deletes=0,
        evictions=0,
        expirations=0,
    )
