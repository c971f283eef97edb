"""The building blocks tenantry is made of, for code that assembles its own.

The daily API (`tenantry`) is built from these; most programs never import
this module. They are public because they are useful alone: the pure
`Reconnector` and `CircuitBreaker` answer "what happens next?" without any
I/O, `run_janitor` purges the expired entries of caches you own, and
`Sample` and `METRIC_FAMILIES` are what `tenantry.Metrics` is made of.
`Transport` is the WebSocket connection the built-in connectors yield (see
`tenantry.Connector`), with `Closed`, `TransportClosed` and
`HandshakeFailed` for how it ends or fails to open.
"""

from ._backoff import RandomSource
from ._breaker import CircuitBreaker
from ._clock import Clock
from ._gauges import Gauges
from ._janitor import run_janitor
from ._metrics import METRIC_FAMILIES, Sample
from ._public import publish as _publish
from ._reconnect import NextStep, Reconnector
from ._transport import Closed, HandshakeFailed, Transport, TransportClosed

__all__ = [
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
]

_publish(globals(), __all__, __name__)
