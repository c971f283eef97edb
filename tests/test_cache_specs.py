from __future__ import annotations

import attrs
import pytest

from tenantry import SEED_CACHE_SPECS, CacheSet, CacheSpec, Scope, capacity_plan


def test_seed_limits() -> None:
    limits = {name: spec.max_keys for name, spec in SEED_CACHE_SPECS.items()}
    assert limits == {
        "signal_store": 10_000,
        "msg_retry": 10_000,
        "call_offer": 500,
        "user_devices": 5_000,
        "placeholder_resend": 5_000,
        "lid": 2_000,
        "lid_global": 10_000,
    }
    assert SEED_CACHE_SPECS["user_devices"].ttl == 300.0
    assert SEED_CACHE_SPECS["msg_retry"].ttl == 3_600.0
    assert SEED_CACHE_SPECS["lid_global"].scope is Scope.GLOBAL
    with pytest.raises(TypeError):
        SEED_CACHE_SPECS["x"] = CacheSpec(1)  # type: ignore[index]


def test_capacity_plan_matches_the_seeds_arithmetic() -> None:
    plan = capacity_plan(SEED_CACHE_SPECS, tenants=100)
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
    assert capacity_plan(SEED_CACHE_SPECS, tenants=0).total == 10_000
    assert capacity_plan({}, tenants=5).total == 0


def test_capacity_plan_rejects_bad_tenant_counts() -> None:
    with pytest.raises(ValueError, match="tenants"):
        capacity_plan(SEED_CACHE_SPECS, tenants=-1)
    with pytest.raises(TypeError, match="tenants"):
        capacity_plan(SEED_CACHE_SPECS, tenants=1.5)  # type: ignore[arg-type]


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
    socket_caches = CacheSet(SEED_CACHE_SPECS, Scope.SOCKET, label="acme", clock=lambda: 0.0)
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
    assert repr(CacheSet(SEED_CACHE_SPECS, Scope.GLOBAL)) == "<CacheSet global ['lid_global']>"
    assert len(CacheSet(SEED_CACHE_SPECS, Scope.TENANT)) == 1


def test_cache_set_validation() -> None:
    with pytest.raises(TypeError, match="scope"):
        CacheSet(SEED_CACHE_SPECS, "socket")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'x'"):
        CacheSet({"x": 5}, Scope.SOCKET)  # type: ignore[dict-item]
