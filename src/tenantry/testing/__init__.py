"""Tools for testing code built on tenantry: import them in your own tests.

`MemoryConnector` runs the real WebSocket protocol over in-memory streams, so
that reconnect scenarios run deterministically under
`trio.testing.MockClock(autojump_threshold=0) <trio.testing.MockClock>`.
"""

from .._public import publish as _publish
from ._coordinator import MemoryCoordinator
from ._memory import MemoryConnector
from ._upstream import FakeUpstream, UpstreamConnection, open_fake_upstream

__all__ = [
    "FakeUpstream",
    "MemoryConnector",
    "MemoryCoordinator",
    "UpstreamConnection",
    "open_fake_upstream",
]

_publish(globals(), __all__, __name__)
