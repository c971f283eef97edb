"""The public surface of each tier, pinned: a name added, moved or dropped fails here first.

Each tier's names report that tier as their module (classes, their methods
and properties, functions), so that docs, reprs and tracebacks never point
into a private file.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
from pathlib import Path
from types import FunctionType, ModuleType

import pytest

import tenantry

TIERS = {
    "tenantry": [
        "BAILEYS_CACHE_SPECS",
        "BAILEYS_CLOSE_CODES",
        "DEFAULT_DECISIONS",
        "DEFAULT_EVENT_RULES",
        "Backoff",
        "Batch",
        "BoundedCache",
        "BreakerState",
        "BufferConfig",
        "BufferStats",
        "CacheSet",
        "CacheSpec",
        "CacheStats",
        "CapacityPlan",
        "CloseCodes",
        "CloseOrigin",
        "CloseRequested",
        "ConnectFailed",
        "Connector",
        "Decision",
        "DisconnectReason",
        "Event",
        "EventBuffer",
        "EventRules",
        "EventStream",
        "FlushReason",
        "FrameRejected",
        "Hub",
        "InvalidEvent",
        "JsonProtocol",
        "KeySpec",
        "Listener",
        "Metrics",
        "ReasonCode",
        "ReconnectPolicy",
        "RejectReason",
        "RemovalCause",
        "Rule",
        "RuleKind",
        "Scope",
        "Session",
        "Socket",
        "SocketClosed",
        "SocketOptions",
        "TenantSpec",
        "TenantState",
        "TenantStatus",
        "UrlConnector",
        "capacity_plan",
        "default_decide",
        "message_key",
        "open_hub",
        "open_socket",
    ],
    "tenantry.lowlevel": [
        "METRIC_FAMILIES",
        "CircuitBreaker",
        "Clock",
        "Closed",
        "Gauges",
        "HandshakeFailed",
        "NextStep",
        "RandomSource",
        "Reconnector",
        "Sample",
        "Transport",
        "TransportClosed",
        "run_janitor",
    ],
    "tenantry.testing": [
        "FakeUpstream",
        "MemoryConnector",
        "MemoryCoordinator",
        "UpstreamConnection",
        "open_fake_upstream",
    ],
    "tenantry.prometheus": ["HubCollector"],
    "tenantry.cluster": [
        "CLUSTER_METRIC_FAMILIES",
        "ClusterHub",
        "Coordinator",
        "CoordinatorError",
        "LeaseConfig",
        "Member",
        "PostgresCoordinator",
        "SpecFactory",
        "TenantRow",
        "View",
        "open_cluster_hub",
    ],
}


def _tier(name: str) -> ModuleType:
    if name == "tenantry.prometheus":
        pytest.importorskip("prometheus_client")
    return importlib.import_module(name)


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_exports_exactly_its_names(tier: str) -> None:
    module = _tier(tier)
    assert module.__all__ == TIERS[tier]  # also in the order ruff keeps them
    assert all(hasattr(module, name) for name in module.__all__)


def test_no_name_is_in_two_tiers() -> None:
    names = [name for tier in TIERS.values() for name in tier]
    assert len(names) == len(set(names))


def _reported_modules(obj: object) -> list[tuple[str, str]]:
    """(qualified name, reported module) of *obj* and every function or class defined in it."""
    if isinstance(obj, FunctionType):
        return [(obj.__qualname__, obj.__module__)]
    if not isinstance(obj, type):
        return []  # a constant, or a type alias such as Clock
    found = [(obj.__qualname__, obj.__module__)]
    for member in vars(obj).values():
        inner: list[object] = [member]
        if isinstance(member, property):
            inner = [member.fget, member.fset, member.fdel]
        elif isinstance(member, (staticmethod, classmethod)):
            inner = [member.__func__]
        for item in inner:
            if isinstance(item, (FunctionType, type)) and item.__qualname__.startswith(
                f"{obj.__qualname__}."
            ):
                found += _reported_modules(item)
    return found


@pytest.mark.parametrize("tier", TIERS)
def test_every_public_name_reports_its_tier_methods_included(tier: str) -> None:
    module = _tier(tier)
    reported = [
        (qualname, where)
        for name in module.__all__
        for qualname, where in _reported_modules(getattr(module, name))
    ]
    # What tenantry wrote reports the tier; what Python made (a NamedTuple's
    # _replace, say) reports where Python made it.
    assert [
        (q, where) for q, where in reported if where.startswith("tenantry") and where != tier
    ] == []
    assert {
        getattr(module, name).__module__ for name in module.__all__ if _is_code(module, name)
    } == {tier}


def _is_code(module: ModuleType, name: str) -> bool:
    return isinstance(getattr(module, name), (FunctionType, type))


def test_methods_are_walked() -> None:
    """The walk above sees methods and properties, or the test before it proves nothing."""
    walked = dict(_reported_modules(tenantry.Hub))
    assert {"Hub.metrics", "Hub.gauges", "Hub.__init__"} <= walked.keys()


def test_the_version_has_one_source() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|a\d+|b\d+|rc\d+)?", tenantry.__version__)
    root = Path(__file__).resolve().parent.parent
    pyproject = (root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'path = "src/tenantry/_version.py"' in pyproject
    assert "release = version = __version__" in (root / "docs" / "conf.py").read_text()


def test_a_cache_sets_build_callback_is_wiring_not_api() -> None:
    """Only `CacheSet.janitor` sets it; a second owner would be refused anyway."""
    assert not hasattr(tenantry.CacheSet, "on_build")


def _signatures(obj: object) -> list[tuple[str, str]]:
    """(qualified name, signature) of *obj* and of each of its own public methods."""
    functions: list[object] = [obj]
    if isinstance(obj, type):
        for name, member in vars(obj).items():
            if name == "__init__" or not name.startswith("_"):
                functions.append(member.fget if isinstance(member, property) else member)
    found = []
    for function in functions:
        if callable(function):
            with contextlib.suppress(TypeError, ValueError):  # a builtin has no signature
                found.append(
                    (getattr(function, "__qualname__", ""), str(inspect.signature(function)))
                )
    return found


def test_no_building_block_names_a_private_type_in_its_signature() -> None:
    """`Transport`'s constructor, say, takes wsproto's connection, not the private core."""
    private = re.compile(r"(?<![\w.])_[A-Za-z]\w*")  # `_Core`, not `__init__` or `a_b`
    lowlevel = _tier("tenantry.lowlevel")
    assert [
        (qualname, signature)
        for name in lowlevel.__all__
        for qualname, signature in _signatures(getattr(lowlevel, name))
        if private.search(signature)
    ] == []
