"""tenantry: many tenants' long-lived WebSocket connections in one Trio program.

Every resource -- cache, event buffer, timer, listener, connection -- is owned
by a Trio scope, and closing the scope destroys it. See the design document
for the scope tree and the invariants the test suite holds.
"""

from types import FunctionType as _FunctionType

from ._backoff import Backoff, RandomSource
from ._breaker import BreakerState, CircuitBreaker
from ._buffer import BufferConfig, BufferStats, EventBuffer, InvalidEvent
from ._cache import BoundedCache, CacheStats, RemovalCause
from ._cache_specs import (
    BAILEYS_CACHE_SPECS,
    CacheSet,
    CacheSpec,
    CapacityPlan,
    Scope,
    capacity_plan,
)
from ._clock import Clock
from ._connect import Connector, UrlConnector
from ._events import Batch, Event, FlushReason
from ._gauges import Gauges
from ._hub import Hub, open_hub
from ._janitor import run_janitor
from ._metrics import METRIC_FAMILIES, Metrics, Sample
from ._options import SocketOptions
from ._protocol import CloseRequested, FrameRejected, JsonProtocol, RejectReason, WireProtocol
from ._reasons import DEFAULT_DECISIONS, Decision, DisconnectReason, ReasonCode, default_decide
from ._reconnect import NextStep, Reconnector, ReconnectPolicy
from ._rules import DEFAULT_EVENT_RULES, EventRules, KeySpec, Rule, RuleKind, message_key
from ._socket import ConnectFailed, Socket, SocketClosed, open_socket
from ._stream import EventStream, Listener
from ._tenant import TenantSpec, TenantState, TenantStatus

__all__ = [
    "BAILEYS_CACHE_SPECS",
    "DEFAULT_DECISIONS",
    "DEFAULT_EVENT_RULES",
    "METRIC_FAMILIES",
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
    "CircuitBreaker",
    "Clock",
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
    "Gauges",
    "Hub",
    "InvalidEvent",
    "JsonProtocol",
    "KeySpec",
    "Listener",
    "Metrics",
    "NextStep",
    "RandomSource",
    "ReasonCode",
    "ReconnectPolicy",
    "Reconnector",
    "RejectReason",
    "RemovalCause",
    "Rule",
    "RuleKind",
    "Sample",
    "Scope",
    "Socket",
    "SocketClosed",
    "SocketOptions",
    "TenantSpec",
    "TenantState",
    "TenantStatus",
    "UrlConnector",
    "WireProtocol",
    "capacity_plan",
    "default_decide",
    "message_key",
    "open_hub",
    "open_socket",
    "run_janitor",
]

# Public names report the public module, as trio does, so that docs, reprs and
# tracebacks never send users into private files.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, (type, _FunctionType)) and _obj.__module__.startswith("tenantry._"):
        _obj.__module__ = "tenantry"
del _name, _obj, _FunctionType
