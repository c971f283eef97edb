from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import tenantry._cache_specs
from helpers import living_tasks
from tenantry import BAILEYS_CACHE_SPECS, CacheSet, CacheSpec, Scope, capacity_plan
from tenantry._janitor import CacheJanitor


def test_seed_limits() -> None:
    limits = {name: spec.max_keys for name, spec in BAILEYS_CACHE_SPECS.items()}
    assert limits == {
        "signal_store": 10_000,
        "msg_retry": 10_000,
        "call_offer": 500,
        "user_devices": 5_000,
        "placeholder_resend": 5_000,
        "lid": 2_000,
        "lid_global": 10_000,
    }
    assert BAILEYS_CACHE_SPECS["user_devices"].ttl == 300.0
    assert BAILEYS_CACHE_SPECS["msg_retry"].ttl == 3_600.0
    assert BAILEYS_CACHE_SPECS["lid_global"].scope is Scope.GLOBAL
    with pytest.raises(TypeError):
        BAILEYS_CACHE_SPECS["x"] = CacheSpec(1)  # type: ignore[index]


def test_capacity_plan_matches_the_seeds_arithmetic() -> None:
    plan = capacity_plan(BAILEYS_CACHE_SPECS, tenants=100)
    assert plan.per_tenant == 32_500
    assert plan.total == 3_260_000
    assert plan.by_scope == {
        Scope.SOCKET: 2_250_000,
        Scope.TENANT: 1_000_000,
        Scope.GLOBAL: 10_000,
    }
    assert str(plan) == (
        "100 tenants x 32,500 keys + global = 3,260,000 keys "
        "(socket 2,250,000, tenant 1,000,000, global 10,000)"
    )
    assert capacity_plan(BAILEYS_CACHE_SPECS, tenants=0).total == 10_000
    assert capacity_plan({}, tenants=5).total == 0


def test_capacity_plan_rejects_bad_tenant_counts() -> None:
    with pytest.raises(ValueError, match="tenants"):
        capacity_plan(BAILEYS_CACHE_SPECS, tenants=-1)
    with pytest.raises(TypeError, match="tenants"):
        capacity_plan(BAILEYS_CACHE_SPECS, tenants=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_keys": 0}, ValueError, "max_keys"),
        ({"max_keys": None}, TypeError, "max_keys"),
        ({"max_keys": 10, "ttl": 0}, ValueError, "ttl"),
        ({"max_keys": 10, "ttl": "1"}, TypeError, "ttl"),
        ({"max_keys": 10, "scope": "socket"}, TypeError, "scope"),
    ],
)
def test_spec_validation_names_the_field(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        CacheSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_is_frozen_and_builds_caches() -> None:
    spec = CacheSpec(max_keys=3, ttl=5.0, scope=Scope.TENANT)
    assert repr(spec) == "CacheSpec(max_keys=3, ttl=5.0, scope=<Scope.TENANT: 'tenant'>)"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.max_keys = 4  # type: ignore[misc]
    cache = spec.build("signal_store", clock=lambda: 0.0)
    assert (cache.name, cache.max_keys, cache.ttl) == ("signal_store", 3, 5.0)
    for i in range(10):
        cache.set(i, i)
    assert len(cache) == 3


def test_cache_sets_build_one_scope_and_label_it() -> None:
    socket_caches = CacheSet(BAILEYS_CACHE_SPECS, Scope.SOCKET, label="acme", clock=lambda: 0.0)
    assert list(socket_caches) == [
        "msg_retry",
        "call_offer",
        "user_devices",
        "placeholder_resend",
        "lid",
    ]
    devices = socket_caches["user_devices"]
    assert (devices.name, devices.max_keys, devices.ttl) == ("acme/user_devices", 5_000, 300.0)
    devices.set("a", 1)
    assert [s.size for s in socket_caches.stats()] == [0, 0, 1, 0, 0]
    socket_caches.clear()
    assert len(devices) == 0
    assert socket_caches.scope is Scope.SOCKET
    assert repr(CacheSet(BAILEYS_CACHE_SPECS, Scope.GLOBAL)) == "<CacheSet global ['lid_global']>"
    assert len(CacheSet(BAILEYS_CACHE_SPECS, Scope.TENANT)) == 1


def test_cache_set_validation() -> None:
    with pytest.raises(TypeError, match="scope"):
        CacheSet(BAILEYS_CACHE_SPECS, "socket")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'x'"):
        CacheSet({"x": 5}, Scope.SOCKET)  # type: ignore[dict-item]


def test_a_cache_never_read_is_never_built_but_reports_as_empty() -> None:
    caches = CacheSet(BAILEYS_CACHE_SPECS, Scope.SOCKET, label="acme", clock=lambda: 0.0)
    assert len(caches) == 5
    assert "lid" in caches
    assert "signal_store" not in caches
    assert list(caches) == ["msg_retry", "call_offer", "user_devices", "placeholder_resend", "lid"]
    lid = caches.stats_of("lid")
    assert (lid.name, lid.size, lid.max_keys, lid.utilization, lid.hits) == (
        "acme/lid",
        0,
        2000,
        0.0,
        0,
    )
    assert [s.max_keys for s in caches.stats()] == [10_000, 500, 5_000, 5_000, 2_000]
    caches.clear()
    assert caches.built() == []
    built: list[str] = []
    caches._set_build_callback(lambda cache: built.append(cache.name))
    assert caches["lid"] is caches["lid"]
    assert built == ["acme/lid"]
    assert [c.name for c in caches.built()] == ["acme/lid"]
    with pytest.raises(RuntimeError, match="build callback"):
        caches._set_build_callback(print)
    with pytest.raises(KeyError):
        caches["nope"]
    assert len(list(caches.values())) == 5  # reading every cache builds every cache
    assert len(built) == 5


async def test_a_cache_set_janitor_is_made_with_the_first_cache_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[CacheJanitor] = []

    def counted(*args: Any, **kwargs: Any) -> CacheJanitor:
        made.append(CacheJanitor(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tenantry._cache_specs, "CacheJanitor", counted)
    caches = CacheSet(BAILEYS_CACHE_SPECS, Scope.SOCKET)
    async with trio.open_nursery() as nursery:
        with caches.janitor(nursery):
            assert made == []  # an idle scope's caches: nothing built, no janitor
            caches["lid"].set("a", 1)
            caches["call_offer"].set("b", 2)
            assert len(made) == 1
        with caches.janitor(nursery):  # built already: made at once
            assert len(made) == 2


async def test_a_cache_set_janitor_serves_caches_built_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caches = CacheSet(BAILEYS_CACHE_SPECS, Scope.SOCKET)
    async with trio.open_nursery() as nursery:
        idle = living_tasks()
        with caches.janitor(nursery):
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle  # nothing built: no janitor
            caches["lid"].set("a", 1, ttl=5.0)
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle + 1
            caches["call_offer"].set("b", 2, ttl=20.0)  # a second cache: one janitor still
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle + 1
            await trio.sleep(10)
            assert caches["lid"].next_housekeeping is None  # purged
            await trio.sleep(20)
            assert caches["call_offer"].next_housekeeping is None
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle  # nothing left to expire
            caches["msg_retry"].set("c", 3)
            await trio.testing.wait_all_tasks_blocked()
            assert living_tasks() == idle + 1
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == idle
    caches["user_devices"].set("d", 4)  # after the block: built, and no janitor is asked for
