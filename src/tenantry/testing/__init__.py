"""Tools for testing code built on tenantry: import them in your own tests.

`MemoryConnector` runs the real WebSocket protocol over in-memory streams, so
that reconnect scenarios run deterministically under
`trio.testing.MockClock(autojump_threshold=0) <trio.testing.MockClock>`.
"""

from ._memory import MemoryConnector
from ._upstream import FakeUpstream, UpstreamConnection, open_fake_upstream

__all__ = ["FakeUpstream", "MemoryConnector", "UpstreamConnection", "open_fake_upstream"]

for _name in __all__:
    globals()[_name].__module__ = "tenantry.testing"  # open_fake_upstream too: a function
del _name
