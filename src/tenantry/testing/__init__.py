"""Tools for testing code built on tenantry: import them in your own tests.

`MemoryConnector` runs the real WebSocket protocol over in-memory streams, so
that reconnect scenarios run deterministically under
`trio.testing.MockClock(autojump_threshold=0) <trio.testing.MockClock>`.
"""

from ._memory import MemoryConnector

__all__ = ["MemoryConnector"]

for _name in __all__:
    globals()[_name].__module__ = "tenantry.testing"
del _name
