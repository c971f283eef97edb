"""tenantry: many tenants' long-lived WebSocket connections in one Trio program.

Every resource -- cache, event buffer, timer, listener, connection -- is owned
by a Trio scope, and closing the scope destroys it. See the design document
for the scope tree and the invariants the test suite holds.

This module is the daily API. The building blocks it is made of (the pure
reconnect state machine, the circuit breaker, the cache janitor, the metric
samples) are in `tenantry.lowlevel`; tools for tests are in
`tenantry.testing`.
"""

from ._backoff import Backoff
from ._breaker import BreakerState
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
from ._connect import Connector, UrlConnector
from ._events import Batch, Event, FlushReason
from ._hub import Hub, open_hub
from ._metrics import Metrics
from ._options import SocketOptions
from ._protocol import CloseRequested, FrameRejected, JsonProtocol, RejectReason, Session
from ._public import publish as _publish
from ._reasons import (
    BAILEYS_CLOSE_CODES,
    DEFAULT_DECISIONS,
    CloseCodes,
    CloseOrigin,
    Decision,
    DisconnectReason,
    ReasonCode,
    default_decide,
)
from ._reconnect import ReconnectPolicy
from ._rules import DEFAULT_EVENT_RULES, EventRules, KeySpec, Rule, RuleKind, message_key
from ._socket import ConnectFailed, Socket, SocketClosed, open_socket
from ._status import TenantState, TenantStatus
from ._stream import EventStream, Listener
from ._tenant import TenantSpec
from ._version import __version__ as __version__

__all__ = [
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
]

_publish(globals(), __all__, __name__)

# The building blocks' tier comes with the package, as trio.lowlevel does with trio.
from . import lowlevel as lowlevel  # noqa: E402
