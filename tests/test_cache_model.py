"""BoundedCache against a deliberately naive reference model, by hypothesis.

The model is a dict plus a recency list plus an expiry time per key, and does
everything the slow, obvious way. Random operations, random per-key TTLs and
random clock advances (including none, so that expiry times tie) must give
the same answers, the same removals and the same counters.
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tenantry import BoundedCache, RemovalCause

KEYS = st.sampled_from("abcd")
TTLS = st.sampled_from([None, 0.5, 1.0, 2.0, 3.0, math.inf])
ADVANCES = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 5.0])


class Model:
    """The obvious implementation."""

    def __init__(self, max_keys: int, ttl: float | None) -> None:
        self.max_keys = max_keys
        self.ttl = ttl
        self.values: dict[str, Any] = {}
        self.expires: dict[str, float] = {}
        self.own_ttl: dict[str, float | None] = {}
        self.recency: list[str] = []
        self.counts = dict.fromkeys(
            ["hits", "misses", "sets", "deletes", "evictions", "expirations"], 0
        )

    def expired(self, key: str, now: float) -> bool:
        return self.expires[key] <= now

    def remove(self, key: str) -> Any:
        self.recency.remove(key)
        self.expires.pop(key)
        self.own_ttl.pop(key)
        return self.values.pop(key)

    def refresh(self, key: str) -> None:
        self.recency.remove(key)
        self.recency.append(key)

    def store(self, key: str, value: Any, ttl: float | None, now: float) -> None:
        effective = self.ttl if ttl is None else ttl
        if key in self.values:
            self.recency.remove(key)
        self.values[key] = value
        self.expires[key] = math.inf if effective is None else now + effective
        self.own_ttl[key] = ttl if ttl not in (None, self.ttl) else None
        self.recency.append(key)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.removed: list[tuple[str, Any, RemovalCause]] = []

    @initialize(max_keys=st.integers(1, 5), ttl=st.sampled_from([None, 1.0, 2.0]))
    def create(self, max_keys: int, ttl: float | None) -> None:
        self.model = Model(max_keys, ttl)
        self.cache: BoundedCache[str, Any] = BoundedCache(
            "model",
            max_keys,
            ttl,
            clock=lambda: self.now,
            on_remove=lambda *removal: self.removed.append(removal),
        )
        self.values = 0

    def drain(self) -> list[tuple[str, Any, RemovalCause]]:
        removed, self.removed = self.removed, []
        return removed

    def expect_expired_access(self, key: str) -> bool:
        """If *key* is present but expired, the cache must drop it as EXPIRED."""
        model = self.model
        if key in model.values and model.expired(key, self.now):
            value = model.remove(key)
            model.counts["expirations"] += 1
            assert self.drain() == [(key, value, RemovalCause.EXPIRED)]
            return True
        return False

    @rule(advance=ADVANCES)
    def tick(self, advance: float) -> None:
        self.now += advance

    @rule(key=KEYS, ttl=TTLS)
    def set(self, key: str, ttl: float | None) -> None:
        model = self.model
        self.values += 1
        value = self.values
        self.cache.set(key, value, ttl=ttl)
        model.counts["sets"] += 1
        is_new = key not in model.values
        model.store(key, value, ttl, self.now)
        removed = self.drain()
        if not (is_new and len(model.values) > model.max_keys):
            assert removed == []
            return
        assert len(removed) == 1
        victim, victim_value, cause = removed[0]
        expired = [k for k in model.values if k != key and model.expired(k, self.now)]
        if expired:
            assert cause is RemovalCause.EXPIRED
            assert victim in expired
            assert model.expires[victim] == min(model.expires[k] for k in expired)
            model.counts["expirations"] += 1
        else:
            assert cause is RemovalCause.EVICTED
            assert victim == model.recency[0]
            model.counts["evictions"] += 1
        assert model.remove(victim) == victim_value

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        model = self.model
        result = self.cache.get(key, "missing")
        if key not in model.values or self.expect_expired_access(key):
            model.counts["misses"] += 1
            assert result == "missing"
            return
        model.counts["hits"] += 1
        model.refresh(key)
        assert result == model.values[key]
        assert self.drain() == []

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        present = key in self.cache
        live = key in self.model.values and not self.expect_expired_access(key)
        assert present == live
        assert self.drain() == []

    @rule(key=KEYS, ttl=TTLS)
    def touch(self, key: str, ttl: float | None) -> None:
        model = self.model
        touched = self.cache.touch(key, ttl)
        if key not in model.values or self.expect_expired_access(key):
            assert touched is False
            return
        assert touched is True
        own = model.own_ttl[key]
        model.store(key, model.values[key], ttl if ttl is not None else own, self.now)
        assert self.drain() == []

    @rule(key=KEYS)
    def ttl_of(self, key: str) -> None:
        model = self.model
        left = self.cache.ttl_of(key)
        if key not in model.values or self.expect_expired_access(key):
            assert left is None
            return
        expires = model.expires[key]
        assert left == (None if expires == math.inf else expires - self.now)

    @rule(key=KEYS, take=st.booleans())
    def delete(self, key: str, take: bool) -> None:
        model = self.model
        result = self.cache.take(key, "missing") if take else self.cache.delete(key)
        if key not in model.values or self.expect_expired_access(key):
            model.counts["misses"] += take
            assert result == ("missing" if take else False)
            return
        value = model.remove(key)
        model.counts["deletes"] += 1
        model.counts["hits"] += take
        assert result == (value if take else True)
        assert self.drain() == [(key, value, RemovalCause.DELETED)]

    @rule()
    def purge(self) -> None:
        model = self.model
        due = {key for key in model.values if model.expired(key, self.now)}
        assert self.cache.purge_expired() == len(due)
        removed = self.drain()
        assert {key for key, _, _ in removed} == due
        expiries = [model.expires[key] for key, _, _ in removed]
        assert expiries == sorted(expiries)
        for key, value, cause in removed:
            assert cause is RemovalCause.EXPIRED
            assert model.remove(key) == value
            model.counts["expirations"] += 1

    @precondition(lambda self: self.values % 7 == 0)
    @rule()
    def clear(self) -> None:
        model = self.model
        expected = {
            key: (
                model.values[key],
                RemovalCause.EXPIRED if model.expired(key, self.now) else RemovalCause.CLEARED,
            )
            for key in model.values
        }
        self.cache.clear()
        removed = self.drain()
        assert {key: (value, cause) for key, value, cause in removed} == expected
        model.counts["expirations"] += sum(c is RemovalCause.EXPIRED for _, c in expected.values())
        for key in list(model.values):
            model.remove(key)

    @invariant()
    def never_over_the_limit(self) -> None:
        if hasattr(self, "cache"):
            assert len(self.cache._data) <= self.model.max_keys

    @invariant()
    def next_expiry_is_the_earliest_live_one(self) -> None:
        if not hasattr(self, "cache"):
            return
        finite = [e for e in self.model.expires.values() if e != math.inf]
        # The model still holds entries the cache has not met since they
        # expired; the earliest of all is what next_expiry must report.
        assert self.cache.next_expiry == (min(finite) if finite else None)

    def teardown(self) -> None:
        if not hasattr(self, "cache"):
            return
        model = self.model
        live = [k for k in model.recency if not model.expired(k, self.now)]
        expired_count = len(model.values) - len(live)
        assert self.cache.keys() == live
        model.counts["expirations"] += expired_count
        stats = self.cache.stats
        assert stats.size == len(live)
        for name, count in model.counts.items():
            assert getattr(stats, name) == count, name


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = settings(max_examples=1000, stateful_step_count=40, deadline=None)
