"""Bounded caches that really evict.

Theory of operation
===================

A NodeCache configured with a key limit (``maxKeys``) is often documented as
"LRU eviction when the limit is reached"; NodeCache throws ``ECACHEFULL``
instead, so a full cache refuses every new key. A
`BoundedCache` has a hard limit and makes room: a `set` on a full cache
removes exactly one entry, an expired one if there is any, else the least
recently used one.

Three structures hold the state. An *entry* is a tuple ``(value, expires)``,
or ``(value, expires, ttl)`` for a key whose TTL differs from the cache's
default; ``expires`` is `math.inf` for a key that never expires.

``_data``
    An `collections.OrderedDict` from key to entry. Its order is recency:
    the first key is the least recently used. `get`, `set` and `touch` move
    a key to the end; eviction pops the front.

``_fifo_keys``, ``_fifo_expiry``
    Expiry *candidates* for keys on the default TTL, in write order: a key and
    its ``expires``. With a monotonic clock and one TTL, write order is expiry
    order, so these are two `collections.deque` and cost two appends per `set`
    instead of a sorted insert. An empty deque costs over 600 bytes, and an
    idle tenant has a dozen empty caches, so both are None until the first
    candidate, and again after `clear`.

``_heap``
    Candidates ``(expires, seq, key)`` for keys with their own TTL, in a binary
    heap (`heapq`); ``seq`` breaks ties so that keys are never compared.

A candidate is a *lower bound* on its key's expiry, and every key that can
expire has one. So a rewrite that only moves a key's expiry later -- the
common case: a `set` or `touch` on the default TTL -- writes no candidate at
all. Candidates are never searched for and removed either: when one reaches a
head it is resolved there. If its key is gone or expires earlier (a newer
candidate covers it), it is dropped; if its key now expires later, it is
replaced by an exact candidate in the heap; if it is exact, it is the next
expiry. Both structures are compacted when they grow past four times the key
limit, keeping only the earliest live candidate of each key, so memory stays
within a constant factor of `max_keys`. Candidates
hold keys, never values: a removed value is released at once.

Reading the clock is the expensive part of a lookup, so every public
operation reads it at most once. Expired entries are removed lazily by
whichever operation meets them first (`get`, ``in``, `len`, a full `set`),
or eagerly by `purge_expired`, which `~tenantry.lowlevel.run_janitor` calls as deadlines fall
due.

Prior art: `cachetools.TTLCache` (a Python linked list per entry and several
Python-level calls per lookup), Node's ``lru-cache`` (per-key TTL, disposal
callbacks with a reason), and Caffeine's removal causes.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, final, overload

import attrs

from ._clock import Clock, resolve_clock
from ._validate import check_count, check_name, check_seconds

__all__ = ["BoundedCache", "CacheStats", "RemovalCause"]

logger = logging.getLogger("tenantry.cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_INF = math.inf
# (value, expires), or (value, expires, ttl) off the default TTL.
# Indexed with literals in the hot paths: a named constant is a global lookup.
_Entry = tuple[Any, ...]
_GONE: _Entry = (None, -_INF)  # stands in for a missing entry: older than any candidate

DEFAULT_EVICTION_LOG_INTERVAL = 60.0


class RemovalCause(enum.Enum):
    """Why an entry left a `BoundedCache` (passed to its ``on_remove`` callback).

    Replacing a key's value with `BoundedCache.set` is not a removal.
    """

    EXPIRED = "expired"
    """Its TTL ran out (found by a lookup, a purge, or a full `set`)."""
    EVICTED = "evicted"
    """It was the least recently used key when a `set` needed room."""
    DELETED = "deleted"
    """`BoundedCache.delete` or `BoundedCache.take` removed it."""
    CLEARED = "cleared"
    """`BoundedCache.clear` removed it."""


@final
@attrs.frozen
class CacheStats:
    """A snapshot of one cache's size and counters.

    The counters only grow over a cache's lifetime, so two snapshots can be
    subtracted to get rates.
    """

    name: str
    """The cache's name, with its tenant where it has one (``acme/msg_retry``)."""
    size: int
    """Live (unexpired) entries."""
    max_keys: int
    """The hard limit on entries."""
    utilization: float
    """``size / max_keys``, between 0 and 1."""
    hits: int
    """Lookups (`~BoundedCache.get`, `~BoundedCache.take`) that found a live entry."""
    misses: int
    """Lookups that found nothing or an expired entry."""
    sets: int
    """Accepted writes (`~BoundedCache.set`), new keys and replacements alike."""
    deletes: int
    """Entries removed by `~BoundedCache.delete` or `~BoundedCache.take`."""
    evictions: int
    """Least recently used entries removed to make room."""
    expirations: int
    """Entries removed because their TTL ran out."""


@final
class BoundedCache(Generic[K, V]):
    """A TTL + LRU cache that never holds more than *max_keys* entries.

    Args:
        name: Shown in logs, stats and metrics.
        max_keys: The hard limit, an int ≥ 1. There is no unbounded cache.
        ttl: Default time to live in seconds (> 0), or None for entries that
            never expire. `set` can override it per key.
        clock: Returns the current time in seconds. None means the clock of
            the Trio run the cache is created in (so `trio.testing.MockClock`
            drives expiry), or `time.monotonic` outside Trio. It must never go
            backwards.
        on_remove: Called as ``on_remove(key, value, cause)`` after an entry
            has left the cache (see `RemovalCause`). An exception it raises is
            logged with its traceback and does not disturb the cache.
        eviction_log_interval: Evictions are logged as one summary line at
            most this often (seconds), never one line per eviction.

    Raises:
        ValueError, TypeError: for an invalid argument, naming it.

    A cache is not thread-safe; like everything in a Trio program it belongs
    to the task (and scope) that owns it.
    """

    __slots__ = (
        "_clock",
        "_compact_at",
        "_data",
        "_deletes",
        "_eviction_log_due",
        "_eviction_log_interval",
        "_evictions",
        "_expirations",
        "_fifo_expiry",
        "_fifo_keys",
        "_full_warned",
        "_heap",
        "_hits",
        "_max_keys",
        "_misses",
        "_name",
        "_on_remove",
        "_seq",
        "_sets",
        "_ttl",
        "_unlogged_evictions",
        "_wakeup",
    )

    def __init__(
        self,
        name: str,
        max_keys: int,
        ttl: float | None = None,
        *,
        clock: Clock | None = None,
        on_remove: Callable[[K, V, RemovalCause], object] | None = None,
        eviction_log_interval: float = DEFAULT_EVICTION_LOG_INTERVAL,
    ) -> None:
        check_name(name, "name")
        check_count(max_keys, "max_keys", minimum=1)  # there is no unbounded cache
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
            if ttl == _INF:
                ttl = None
        if on_remove is not None and not callable(on_remove):
            raise TypeError(f"on_remove must be callable, got {on_remove!r}")
        self._name = name
        self._max_keys = max_keys
        self._ttl = ttl
        self._clock = resolve_clock(clock)
        self._on_remove = on_remove
        self._eviction_log_interval = check_seconds(eviction_log_interval, "eviction_log_interval")

        self._data: OrderedDict[K, _Entry] = OrderedDict()
        # Created by the first candidate: most caches of an idle tenant stay empty.
        self._fifo_keys: deque[K] | None = None
        self._fifo_expiry: deque[float] | None = None
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0
        self._compact_at = 4 * max_keys + 64

        self._hits = self._misses = self._sets = self._deletes = 0
        self._evictions = self._expirations = 0
        self._full_warned = False
        self._unlogged_evictions = 0
        self._eviction_log_due = -_INF
        self._wakeup: Callable[[float], object] | None = None

        logger.debug(
            "cache created: %s (max_keys=%d, ttl=%s)",
            name,
            max_keys,
            ttl,
            extra={"cache": name, "max_keys": max_keys, "ttl": ttl},
        )

    # -- reading ---------------------------------------------------------

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        """Return the value of *key* and mark it most recently used.

        A missing or expired key gives *default*; an expired one is removed
        on the way (`RemovalCause.EXPIRED`).
        """
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return default
        if entry[1] <= self._clock():
            self._misses += 1
            self._expire(key, entry)
            return default
        self._data.move_to_end(key)
        self._hits += 1
        return entry[0]

    def __contains__(self, key: K) -> bool:
        """Whether *key* holds a live value. Does not change recency."""
        entry = self._data.get(key)
        if entry is None:
            return False
        if entry[1] <= self._clock():
            self._expire(key, entry)
            return False
        return True

    def ttl_of(self, key: K) -> float | None:
        """Seconds until *key* expires.

        None if the key never expires, and also None if it is missing or
        already expired (use ``key in cache`` to tell those apart).
        """
        entry = self._data.get(key)
        if entry is None:
            return None
        now = self._clock()
        if entry[1] <= now:
            self._expire(key, entry)
            return None
        if entry[1] == _INF:
            return None
        return float(entry[1] - now)

    def __len__(self) -> int:
        """The number of live entries (expired ones are purged first)."""
        self.purge_expired()
        return len(self._data)

    def keys(self) -> list[K]:
        """The live keys, least recently used first (expired ones are purged first)."""
        self.purge_expired()
        return list(self._data)

    # -- writing ---------------------------------------------------------

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        """Store *value* under *key* and mark it most recently used.

        *ttl* overrides the cache's default TTL for this key (seconds > 0;
        `math.inf` for a key that never expires). If the key is new and the
        cache is full, exactly one other entry is removed: the
        earliest-expiring expired entry if there is one, else the least
        recently used entry.
        """
        now = self._clock()
        if ttl is not None or self._ttl is None:
            self._set_with_ttl(key, value, ttl, now, count=True)
            return
        # The default TTL, i.e. most writes: `_set_with_ttl` specialised and
        # inlined, because a Python-level call costs as much as its work.
        expires = now + self._ttl
        data = self._data
        old = data.get(key)  # hashes the key: a refused key is not counted
        self._sets += 1
        data[key] = (value, expires)
        if old is not None:
            data.move_to_end(key)
            if old[1] <= expires:  # its candidate is still a lower bound
                return
        self._push_fifo(key, expires, self._ttl)
        if old is None and len(data) >= self._max_keys:
            self._on_full(now)

    def touch(self, key: K, ttl: float | None = None) -> bool:
        """Restart *key*'s TTL and mark it most recently used.

        The TTL restarts from now with *ttl* if given, else with the TTL the
        key was last set with. Returns False (and changes nothing) if the key
        is missing or expired.
        """
        entry = self._data.get(key)
        if entry is None:
            return False
        now = self._clock()
        if entry[1] <= now:
            self._expire(key, entry)
            return False
        if ttl is None and len(entry) == 3:
            ttl = entry[2]
        self._set_with_ttl(key, entry[0], ttl, now, count=False)
        return True

    def delete(self, key: K) -> bool:
        """Remove *key*. Returns whether a live entry was removed."""
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        if entry[1] <= self._clock():
            self._expirations += 1
            self._notify(key, entry[0], RemovalCause.EXPIRED)
            return False
        self._deletes += 1
        self._notify(key, entry[0], RemovalCause.DELETED)
        return True

    @overload
    def take(self, key: K) -> V | None: ...
    @overload
    def take(self, key: K, default: D) -> V | D: ...

    def take(self, key: K, default: Any = None) -> Any:
        """Remove *key* and return its value, or *default* if it was not live."""
        entry = self._data.pop(key, None)
        if entry is None:
            self._misses += 1
            return default
        if entry[1] <= self._clock():
            self._misses += 1
            self._expirations += 1
            self._notify(key, entry[0], RemovalCause.EXPIRED)
            return default
        self._hits += 1
        self._deletes += 1
        self._notify(key, entry[0], RemovalCause.DELETED)
        return entry[0]

    def clear(self) -> None:
        """Remove every entry (`RemovalCause.CLEARED`, or EXPIRED for expired ones)."""
        items = list(self._data.items())
        self._data.clear()
        self._fifo_keys = self._fifo_expiry = None
        self._heap = []
        now = self._clock()
        for key, entry in items:
            if entry[1] <= now:
                self._expirations += 1
                self._notify(key, entry[0], RemovalCause.EXPIRED)
            else:
                self._notify(key, entry[0], RemovalCause.CLEARED)

    # -- housekeeping ----------------------------------------------------

    def purge_expired(self) -> int:
        """Remove every expired entry now; return how many were removed.

        Also writes a pending eviction summary to the log once it is due.
        """
        now = self._clock()
        removed = 0
        while self._expire_earliest(now):
            removed += 1
        if self._unlogged_evictions and now >= self._eviction_log_due:
            self._log_evictions(now)
        return removed

    @property
    def next_expiry(self) -> float | None:
        """When (on this cache's clock) the earliest live entry expires, or None."""
        head = self._earliest()
        return None if head is None else head[1]

    @property
    def next_housekeeping(self) -> float | None:
        """When `purge_expired` next has work: an expiry or a due eviction summary."""
        due = self.next_expiry
        if self._unlogged_evictions:
            log_due = self._eviction_log_due
            return log_due if due is None else min(due, log_due)
        return due

    def set_wakeup(self, callback: Callable[[float], object] | None) -> None:
        """Install the function told when housekeeping falls due sooner than before.

        ``callback(delay)`` is called with the seconds from now until the new
        deadline, whenever an operation creates a deadline that may precede
        every deadline the cache had (an expiry, or an eviction summary to
        log). `~tenantry.lowlevel.run_janitor` uses this to sleep until exactly the next
        deadline instead of polling. One callback at a time: installing a
        second raises `RuntimeError`; pass None to remove it.
        """
        if callback is not None and self._wakeup is not None:
            raise RuntimeError(f"cache {self._name!r} already has a janitor")
        self._wakeup = callback

    # -- introspection ---------------------------------------------------

    @property
    def name(self) -> str:
        """The cache's name."""
        return self._name

    @property
    def max_keys(self) -> int:
        """The hard limit on entries."""
        return self._max_keys

    @property
    def ttl(self) -> float | None:
        """The default TTL in seconds, or None if entries do not expire by default."""
        return self._ttl

    @property
    def clock(self) -> Clock:
        """The clock this cache reads."""
        return self._clock

    @property
    def stats(self) -> CacheStats:
        """A `CacheStats` snapshot (expired entries are purged first)."""
        size = len(self)
        return CacheStats(
            name=self._name,
            size=size,
            max_keys=self._max_keys,
            utilization=size / self._max_keys,
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            deletes=self._deletes,
            evictions=self._evictions,
            expirations=self._expirations,
        )

    def __repr__(self) -> str:
        return (
            f"<BoundedCache {self._name!r} entries={len(self._data)} "
            f"max_keys={self._max_keys} ttl={self._ttl}>"
        )

    # -- internals -------------------------------------------------------

    def _set_with_ttl(
        self, key: K, value: V, ttl: float | None, now: float, *, count: bool
    ) -> None:
        """The general `set`: any TTL, including the default and none.

        *count*: a `set` (not a `touch`), counted once the key and TTL are accepted.
        """
        default = _INF if self._ttl is None else self._ttl
        ttl = default if ttl is None else check_seconds(ttl, "ttl")
        expires = now + ttl
        entry = (value, expires) if ttl == default else (value, expires, ttl)
        data = self._data
        old = data.get(key)  # hashes the key: a refused key is not counted
        self._sets += count
        data[key] = entry
        if old is not None:
            data.move_to_end(key)
        if expires != _INF and (old is None or old[1] > expires):
            if ttl == default:
                self._push_fifo(key, expires, ttl)
            else:
                self._push_heap(key, expires, ttl)
        if old is None and len(data) >= self._max_keys:
            self._on_full(now)

    def _push_fifo(self, key: K, expires: float, ttl: float) -> None:
        fifo_keys, fifo_expiry = self._fifo_keys, self._fifo_expiry
        if not fifo_keys or not fifo_expiry:  # empty, or not created yet
            fifo_keys, fifo_expiry = self._first_fifo_candidate(ttl)
        fifo_keys.append(key)
        fifo_expiry.append(expires)
        if len(fifo_keys) > self._compact_at:
            self._compact_fifo(fifo_keys, fifo_expiry)

    def _first_fifo_candidate(self, ttl: float) -> tuple[deque[K], deque[float]]:
        if self._fifo_keys is None or self._fifo_expiry is None:
            self._fifo_keys, self._fifo_expiry = deque(), deque()
        if self._wakeup is not None:
            self._wakeup(ttl)
        return self._fifo_keys, self._fifo_expiry

    def _push_heap(self, key: K, expires: float, ttl: float) -> None:
        heap = self._heap
        if self._wakeup is not None and (not heap or expires < heap[0][0]):
            self._wakeup(ttl)
        heapq.heappush(heap, (expires, self._next_seq(), key))
        if len(heap) > self._compact_at:
            self._compact_heap()

    def _on_full(self, now: float) -> None:
        """A new key made the cache full, or one over full: make room, warn once."""
        if len(self._data) > self._max_keys:
            self._make_room(now)
        if not self._full_warned:
            self._warn_full()

    def _make_room(self, now: float) -> None:
        """Remove one entry: the earliest expired one, else the least recently used."""
        fifo_expiry, heap = self._fifo_expiry, self._heap
        # Only the heads can have expired; look closer only if one has.
        may_have_expired = (fifo_expiry and fifo_expiry[0] <= now) or (heap and heap[0][0] <= now)
        if may_have_expired and self._expire_earliest(now):
            return
        key, entry = self._data.popitem(last=False)
        self._evictions += 1
        self._unlogged_evictions += 1
        if now >= self._eviction_log_due:
            self._log_evictions(now)
        elif self._unlogged_evictions == 1 and self._wakeup is not None:
            self._wakeup(self._eviction_log_due - now)
        if self._on_remove is not None:
            self._notify(key, entry[0], RemovalCause.EVICTED)

    def _earliest(self) -> tuple[K, float, bool] | None:
        """The entry that expires first: ``(key, expires, from_heap)``, or None.

        Resolves the candidates at both heads on the way: a stale one is
        dropped, and one that is only a lower bound (its key was rewritten
        with a later expiry) is replaced by an exact candidate in the heap.
        """
        data, keys, expiry, heap = self._data, self._fifo_keys, self._fifo_expiry, self._heap
        if keys is None or expiry is None:
            return self._earliest_in_heap()
        while keys:
            entry = data.get(keys[0])
            if entry is not None and entry[1] == expiry[0]:
                break
            key, lower = keys.popleft(), expiry.popleft()
            if entry is not None and lower < entry[1] < _INF:
                heapq.heappush(heap, (entry[1], self._next_seq(), key))
        head = self._earliest_in_heap()
        if head is not None and (not keys or head[1] < expiry[0]):
            return head
        return (keys[0], expiry[0], False) if keys else None

    def _earliest_in_heap(self) -> tuple[K, float, bool] | None:
        data, heap = self._data, self._heap
        while heap:
            lower, _, key = heap[0]
            entry = data.get(key)
            if entry is not None and entry[1] == lower:
                break
            heapq.heappop(heap)
            if entry is not None and lower < entry[1] < _INF:
                heapq.heappush(heap, (entry[1], self._next_seq(), key))
        return (heap[0][2], heap[0][0], True) if heap else None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _expire_earliest(self, now: float) -> bool:
        """Remove the earliest-expiring entry if it has expired by *now*."""
        head = self._earliest()
        if head is None or head[1] > now:
            return False
        key, _, from_heap = head
        if from_heap:
            heapq.heappop(self._heap)
        elif self._fifo_keys is not None and self._fifo_expiry is not None:
            self._fifo_keys.popleft()
            self._fifo_expiry.popleft()
        self._expire(key, self._data[key])
        return True

    def _expire(self, key: K, entry: _Entry) -> None:
        del self._data[key]
        self._expirations += 1
        self._notify(key, entry[0], RemovalCause.EXPIRED)

    def _compact_fifo(self, keys: deque[K], expiry: deque[float]) -> None:
        """Drop stale candidates, and all but the earliest candidate of each key."""
        get, seen = self._data.get, set()
        needed = []
        for key, lower in zip(keys, expiry, strict=True):
            keep = key not in seen and lower <= get(key, _GONE)[1] < _INF
            if keep:
                seen.add(key)
            needed.append(keep)
        self._fifo_keys = deque(itertools.compress(keys, needed))
        self._fifo_expiry = deque(itertools.compress(expiry, needed))

    def _compact_heap(self) -> None:
        """Drop stale candidates, and all but the earliest candidate of each key."""
        get = self._data.get
        earliest: dict[K, tuple[float, int, K]] = {}
        for item in sorted(self._heap, reverse=True):
            if item[0] <= get(item[2], _GONE)[1] < _INF:
                earliest[item[2]] = item
        self._heap = list(earliest.values())
        heapq.heapify(self._heap)

    def _notify(self, key: K, value: V, cause: RemovalCause) -> None:
        if self._on_remove is None:
            return
        try:
            self._on_remove(key, value, cause)
        except Exception:
            logger.exception(
                "on_remove callback of cache %s failed (entry %s)",
                self._name,
                cause.value,
                extra={"cache": self._name, "cause": cause.value},
            )

    def _warn_full(self) -> None:
        self._full_warned = True
        logger.warning(
            "cache limit reached: %s (size=%d, max_keys=%d); least recently used keys "
            "will be evicted",
            self._name,
            self._max_keys,
            self._max_keys,
            extra={"cache": self._name, "size": self._max_keys, "max_keys": self._max_keys},
        )

    def _log_evictions(self, now: float) -> None:
        evicted, self._unlogged_evictions = self._unlogged_evictions, 0
        self._eviction_log_due = now + self._eviction_log_interval
        remaining = len(self._data)
        logger.info(
            "cache eviction: %s evicted %d keys, %d remaining",
            self._name,
            evicted,
            remaining,
            extra={"cache": self._name, "evicted": evicted, "remaining": remaining},
        )
