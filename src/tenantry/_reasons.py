"""Why a connection ended, and what to do about it: a table.

Theory of operation
===================

Every way a socket can end is translated, in one place, into a
`DisconnectReason`: a numeric code as WhatsApp Web (Baileys) uses (HTTP-like: 401
logged out, 408 connection lost, 515 restart required, ...), its name, a
message, and whether the peer or the network ended it (*remote*) or this
side did (*local*). A reconnect policy then maps a reason to a `Decision`:
reconnect after a backoff, reconnect at once, or stop.

The translation rules, as data:

===============================  ==========================================
what happened                    reason code
===============================  ==========================================
WebSocket close 4000-4999        code - 4000 (4503 -> 503, 4515 -> 515)
WebSocket close 1000, 1001       428 connection closed
abnormal drop (1006, no close)   408 connection lost
other WebSocket close codes      the close code itself (name ``code_<N>``)
handshake rejected, HTTP N       N
``stream:error`` frame, code N   N
a ping unanswered for 5 s        408 connection lost
too many bad frames              400 protocol error (tenantry's own)
===============================  ==========================================

And the default decisions: stop on 401 (logged out), 403 (forbidden) and
440 (replaced by another connection: reconnecting would fight it);
reconnect at once on 515 (restart required, expected after pairing);
reconnect with backoff on everything else, unknown codes included.

Pure: no I/O, no clock; the socket and the supervisor call it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import final

import attrs

__all__ = [
    "DEFAULT_DECISIONS",
    "Decision",
    "DisconnectReason",
    "ReasonCode",
    "default_decide",
]


class ReasonCode(enum.IntEnum):
    """WhatsApp Web's (Baileys') disconnect codes, and tenantry's one addition."""

    PROTOCOL_ERROR = 400
    """tenantry: the peer sent too many frames that could not be decoded."""
    LOGGED_OUT = 401
    FORBIDDEN = 403
    CONNECTION_LOST = 408
    """Also "timed out": a keepalive ping unanswered, or an abnormal drop."""
    MULTIDEVICE_MISMATCH = 411
    CONNECTION_CLOSED = 428
    CONNECTION_REPLACED = 440
    BAD_SESSION = 500
    UNAVAILABLE_SERVICE = 503
    RESTART_REQUIRED = 515


class Decision(enum.Enum):
    """What a tenant's supervisor does after a disconnect."""

    RECONNECT = "reconnect"
    """After the backoff delay (and only if the circuit breaker allows)."""
    RECONNECT_NOW = "reconnect now"
    """At once, without the backoff delay. A connection that did not last
    still counts as a failure, so the circuit breaker can stop a peer that
    answers every connection this way."""
    STOP = "stop"
    """Not at all: the tenant stays stopped until restarted or removed."""


DEFAULT_DECISIONS: Mapping[int, Decision] = MappingProxyType(
    {
        ReasonCode.LOGGED_OUT: Decision.STOP,
        ReasonCode.FORBIDDEN: Decision.STOP,
        ReasonCode.CONNECTION_REPLACED: Decision.STOP,
        ReasonCode.RESTART_REQUIRED: Decision.RECONNECT_NOW,
    }
)
"""Codes whose default decision is not `Decision.RECONNECT`."""

_WS_NORMAL = frozenset({1000, 1001})
_WS_NAMES = MappingProxyType(
    {
        1002: "ws_protocol_error",
        1003: "unsupported_data",
        1007: "invalid_payload",
        1008: "policy_violation",
        1009: "message_too_big",
        1011: "internal_error",
    }
)
"""RFC 6455 close codes that pass through the table as themselves, by name."""
_WS_ABNORMAL = 1006
_WS_APPLICATION = range(4000, 5000)


def _plain_int(code: int) -> int:
    """*code* as a plain int: trio-websocket hands over wsproto's enum for known close codes."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, got {code!r}")
    return int(code)


@final
@attrs.frozen
class DisconnectReason:
    """Why a socket ended.

    Args:
        code: A `ReasonCode`, or any other int (unknown codes are kept as is);
            stored as a plain `int`, whatever int subclass it came as.
        message: Detail for humans and logs.
        remote: True if the peer or the network ended the connection, False
            if this side closed it.
    """

    code: int = attrs.field(converter=_plain_int)
    message: str = ""
    remote: bool = True

    @property
    def name(self) -> str:
        """``logged_out``, ``restart_required``, ``message_too_big``, ... or ``code_<N>``."""
        try:
            return ReasonCode(self.code).name.lower()
        except ValueError:
            return _WS_NAMES.get(self.code, f"code_{self.code}")

    @property
    def label(self) -> str:
        """`name` for the codes tenantry knows, ``other`` for the rest.

        A closed set, for metric labels: a peer choosing close codes must not
        be able to create time series without bound.
        """
        name = self.name
        return "other" if name.startswith("code_") else name

    def __str__(self) -> str:
        side = "remote" if self.remote else "local"
        detail = f": {self.message}" if self.message else ""
        return f"{self.code} {self.name} ({side}){detail}"

    @classmethod
    def from_close_code(
        cls, close_code: int | None, close_reason: str | None = None
    ) -> DisconnectReason:
        """The reason for a WebSocket the peer closed (None: dropped without a close frame)."""
        message = close_reason or ""
        if close_code is None or close_code == _WS_ABNORMAL:
            return cls(ReasonCode.CONNECTION_LOST, message or "connection dropped", remote=True)
        if close_code in _WS_NORMAL:
            return cls(ReasonCode.CONNECTION_CLOSED, message or f"closed by peer ({close_code})")
        if close_code in _WS_APPLICATION:
            return cls(close_code - 4000, message or f"closed by peer ({close_code})")
        return cls(close_code, message or f"websocket close code {close_code}")

    @classmethod
    def from_handshake_status(cls, status: int, message: str = "") -> DisconnectReason:
        """The reason for a handshake the server rejected with HTTP *status*."""
        return cls(status, message or f"handshake rejected with HTTP {status}")


def default_decide(reason: DisconnectReason) -> Decision:
    """The default policy: `DEFAULT_DECISIONS`, else `Decision.RECONNECT`."""
    return DEFAULT_DECISIONS.get(reason.code, Decision.RECONNECT)
