"""The faults a soak injects, each done to one upstream connection."""

from __future__ import annotations

import enum

import trio

from ..testing import FakeUpstream, UpstreamConnection
from ._traffic import MALFORMED_FRAMES

__all__ = ["REJECTED_HANDSHAKES", "Fault"]

REJECTED_HANDSHAKES = 5
"""An outage rejects this many handshakes in a row: enough to open a default breaker."""


class Fault(enum.Enum):
    """A way for the upstream to misbehave; the value is its name on the command line.

    See `Fault.description` for what each one does.
    """

    UNAVAILABLE = "503"
    RESTART = "515"
    ABORT = "abort"
    STALL = "stall"
    OUTAGE = "reject"
    MALFORMED = "malformed"

    @property
    def description(self) -> str:
        """What the upstream does, and what the client should make of it."""
        return _DESCRIPTIONS[self]

    @property
    def ends_cleanly(self) -> bool:
        """Whether the connection ends with a frame the client reads after every event."""
        return self in (Fault.UNAVAILABLE, Fault.RESTART, Fault.OUTAGE)

    @property
    def ends_connection(self) -> bool:
        """Whether the connection is over (or doomed) once the fault is done."""
        return self is not Fault.MALFORMED

    async def inject(
        self, upstream: FakeUpstream, connection: UpstreamConnection, *, stall_for: float = 120.0
    ) -> None:
        """Do this fault to *connection*; a stall lasts *stall_for* seconds, then aborts."""
        if self is Fault.UNAVAILABLE:
            await connection.close(4503)
        elif self is Fault.RESTART:
            await connection.stream_error(515, "restart required")
        elif self is Fault.ABORT:
            await connection.abort()
        elif self is Fault.STALL:
            connection.stall()
            await trio.sleep(stall_for)
            await connection.abort()
        elif self is Fault.OUTAGE:
            for _ in range(REJECTED_HANDSHAKES):
                upstream.reject_next(503, path=connection.path)
            await connection.close(4503)
        else:
            for frame in MALFORMED_FRAMES:
                await connection.send_raw(frame)


_DESCRIPTIONS = {
    Fault.UNAVAILABLE: "close with code 4503, service unavailable: reconnect after a backoff",
    Fault.RESTART: "a stream:error frame with code 515, restart required: reconnect at once",
    Fault.ABORT: "drop the connection without a close frame: the client sees 408",
    Fault.STALL: "stop reading and answering pings until the client gives up (408), then drop",
    Fault.OUTAGE: (
        f"close with 4503 and reject the next {REJECTED_HANDSHAKES} handshakes with HTTP 503: "
        "the breaker opens"
    ),
    Fault.MALFORMED: "one bad frame of each kind: the connection survives, each is counted",
}
