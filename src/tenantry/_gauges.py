"""Gauges of live objects, owned by whoever owns the sockets (a hub, or a test)."""

from __future__ import annotations

from typing import final

import attrs

__all__ = ["Gauges"]


@final
@attrs.define
class Gauges:
    """How many sockets and event buffers are alive right now.

    tenantry keeps no global state: pass one `Gauges` to every `~tenantry.open_socket`
    whose objects you want counted (the hub does this for its tenants).
    Invariant the tests hold: ``buffers_alive == sockets_alive`` at every
    instant, and both return to zero when every socket scope has exited.
    """

    sockets_alive: int = 0
    buffers_alive: int = 0
