"""Why a connection ended, and what to do about it: a table.

Theory of operation
===================

Every way a socket can end is translated, in one place, into a
`DisconnectReason`. It keeps three things apart:

* ``code``: the *meaning*, which a reconnect policy matches on -- a code as
  WhatsApp Web (Baileys) uses (HTTP-like: 401 logged out, 408 connection
  lost, 515 restart required, ...) or a protocol's own;
* ``raw_code`` and ``origin``: the number as it was received or sent, and
  where it came from (a `CloseOrigin`): so a WebSocket close 4401 and an
  HTTP 401 stay distinguishable even where both mean "logged out";
* ``name``: a bounded metric label (``label``), from the protocol's
  `CloseCodes`, then `ReasonCode`, then RFC 6455; ``other`` for the rest.

How raw close codes become codes is the protocol's `CloseCodes`
(`SocketOptions.close_codes`); the default, `BAILEYS_CLOSE_CODES`, folds
4000 + N into N. The translation rules, as data:

=================================  ===========  ============  =================================
what happened                      origin       raw_code      code
=================================  ===========  ============  =================================
WebSocket close 4000-4999          CLOSE_FRAME  close code    folded: code - 4000 (4503 -> 503);
                                                              else the close code itself
WebSocket close 1000, 1001         CLOSE_FRAME  close code    428 connection closed
other WebSocket close codes        CLOSE_FRAME  close code    the close code itself
abnormal drop (1006, no close)     TRANSPORT    1006 or None  408 connection lost
a ping unanswered for 5 s          TRANSPORT    None          408 connection lost
could not connect (TLS, timeout)   TRANSPORT    None          408 (400 for a garbled answer)
handshake rejected, HTTP N         HTTP_STATUS  N             N
``stream:error`` frame, code N     PROTOCOL     N             N
too many bad frames                LOCAL        1002 (sent)   400 protocol error (tenantry's)
a bug in user code (a listener)    LOCAL        1011 (sent)   428 connection closed
``Socket.close(code=C)``           LOCAL        C             428 connection closed
=================================  ===========  ============  =================================

A reconnect policy then maps a reason to a `Decision`: reconnect after a
backoff, reconnect at once, or stop. A reason that carries its own
``decision`` (``Socket.close(decision=...)``, or a protocol's
`CloseRequested`) has it honoured instead of the policy's. The default
decisions: stop on 401 (logged out), 403 (forbidden) and 440 (replaced by
another connection: reconnecting would fight it); reconnect at once on 515
(restart required, expected after pairing); reconnect with backoff on
everything else, unknown codes included.

Pure: no I/O, no clock; the socket and the supervisor call it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from ._validate import check_count, instance_of

__all__ = [
    "BAILEYS_CLOSE_CODES",
    "DEFAULT_DECISIONS",
    "CloseCodes",
    "CloseOrigin",
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


class CloseOrigin(enum.Enum):
    """Where a reason's raw code came from."""

    CLOSE_FRAME = "close_frame"
    """The peer's WebSocket close frame; ``raw_code`` is its close code."""
    HTTP_STATUS = "http_status"
    """A handshake the server rejected; ``raw_code`` is the HTTP status."""
    PROTOCOL = "protocol"
    """A protocol message, such as ``stream:error``; ``raw_code`` is its code."""
    TRANSPORT = "transport"
    """The connection dropped, timed out or could not be made; no code was
    sent (``raw_code`` is None, or 1006 for an abnormal closure)."""
    LOCAL = "local"
    """This side ended the connection; ``raw_code`` is the close code given to
    `~tenantry.Socket.close` (None when tenantry itself ended it, e.g. on too
    many bad frames)."""


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

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""What a reason's name (a metric label value) may be: a short snake_case identifier."""
_MAX_NAMES = 256
"""How many codes a `CloseCodes` may name: metric labels stay a bounded set."""


def _plain_int(code: int) -> int:
    """*code* as a plain int: trio-websocket hands over wsproto's enum for known close codes."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"code must be an int, got {code!r}")
    return int(code)


def _optional_plain_int(code: int | None) -> int | None:
    if code is None:
        return None
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"raw_code must be an int or None, got {code!r}")
    return int(code)


def _builtin_name(code: int) -> str:
    """The name tenantry itself gives *code*: `ReasonCode`'s, RFC 6455's, or ``code_<N>``."""
    try:
        return ReasonCode(code).name.lower()
    except ValueError:
        return _WS_NAMES.get(code, f"code_{code}")


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"{field} must be a snake_case identifier of at most 63 characters"
            f" (a metric label), got {value!r}"
        )
    return value


def _default_origin(reason: Any) -> CloseOrigin:
    return CloseOrigin.TRANSPORT if reason.remote else CloseOrigin.LOCAL


def _default_name(reason: Any) -> str:
    return _builtin_name(reason.code)


def _reason_name(reason: DisconnectReason, attribute: attrs.Attribute[str], value: object) -> None:
    if value != _builtin_name(reason.code):  # ``code_<N>`` for any int, even a negative one
        _check_name(value, attribute.name)


def _origin_matches_side(reason: DisconnectReason, _: object, origin: CloseOrigin) -> None:
    if (origin is CloseOrigin.LOCAL) == reason.remote:
        side = "remote" if reason.remote else "local"
        raise ValueError(f"origin {origin.name} does not fit a {side} reason: only LOCAL is local")


def _optional_decision(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Decision):
        raise TypeError(f"{attribute.name} must be a Decision or None, got {type(value).__name__}")


@final
@attrs.frozen
class DisconnectReason:
    """Why a socket ended.

    Args:
        code: What it means, the code a policy matches on: a `ReasonCode`,
            or any other int (a protocol's own codes are kept as they are);
            stored as a plain `int`, whatever int subclass it came as.
        message: Detail for humans and logs.
        remote: True if the peer or the network ended the connection, False
            if this side closed it.
        origin: Where the code came from (keyword-only); by default
            `CloseOrigin.LOCAL` for a local reason, else
            `CloseOrigin.TRANSPORT`. It must agree with *remote*: only a
            local reason is LOCAL.
        raw_code: The number as received or sent (keyword-only): the close
            code, the HTTP status, the protocol's code; None if there was
            none.
        name: A snake_case name for logs and metric labels (keyword-only);
            by default `ReasonCode`'s or RFC 6455's, else ``code_<N>``. A
            socket names its reasons by its `CloseCodes`.
        decision: What to do next, overriding the reconnect policy's
            ``decide`` (keyword-only); None lets the policy decide.

    Raises:
        TypeError, ValueError: a field that could never be right, naming it.
    """

    code: int = attrs.field(converter=_plain_int)
    message: str = ""
    remote: bool = True
    origin: CloseOrigin = attrs.field(
        kw_only=True,
        default=attrs.Factory(_default_origin, takes_self=True),
        validator=[instance_of(CloseOrigin), _origin_matches_side],
    )
    raw_code: int | None = attrs.field(kw_only=True, default=None, converter=_optional_plain_int)
    name: str = attrs.field(
        kw_only=True,
        default=attrs.Factory(_default_name, takes_self=True),
        validator=_reason_name,
    )
    decision: Decision | None = attrs.field(
        kw_only=True, default=None, validator=_optional_decision
    )

    @property
    def label(self) -> str:
        """`name` for the codes that have one, ``other`` for the rest.

        A closed set, for metric labels: a peer choosing close codes must not
        be able to create time series without bound.
        """
        name = self.name
        return "other" if name.startswith("code_") else name

    @property
    def close_code(self) -> int | None:
        """The peer's WebSocket close code, if a close frame ended it (else None)."""
        return self.raw_code if self.origin is CloseOrigin.CLOSE_FRAME else None

    @property
    def http_status(self) -> int | None:
        """The HTTP status of a rejected handshake (else None)."""
        return self.raw_code if self.origin is CloseOrigin.HTTP_STATUS else None

    def __str__(self) -> str:
        side = "remote" if self.remote else "local"
        detail = f": {self.message}" if self.message else ""
        return f"{self.code} {self.name} ({side}){detail}"

    @classmethod
    def from_close_code(
        cls, close_code: int | None, close_reason: str | None = None
    ) -> DisconnectReason:
        """The reason for a WebSocket the peer closed, under `BAILEYS_CLOSE_CODES`.

        None means dropped without a close frame. `CloseCodes.reason` does
        the same under a protocol's own codes.
        """
        return BAILEYS_CLOSE_CODES.reason(close_code, close_reason)

    @classmethod
    def from_handshake_status(cls, status: int, message: str = "") -> DisconnectReason:
        """The reason for a handshake the server rejected with HTTP *status*."""
        message = message or f"handshake rejected with HTTP {status}"
        return cls(status, message, origin=CloseOrigin.HTTP_STATUS, raw_code=status)


def _names(value: Mapping[int, str]) -> Mapping[int, str]:
    """*value* as a read-only copy of valid code names, else raise naming the field."""
    if not isinstance(value, Mapping):
        raise TypeError(f"names must be a mapping of codes to names, got {type(value).__name__}")
    if len(value) > _MAX_NAMES:
        raise ValueError(f"names may name at most {_MAX_NAMES} codes, got {len(value)}")
    names: dict[int, str] = {}
    for key, name in value.items():
        code = int(check_count(key, "names: each code", minimum=0))
        _check_name(name, f"names[{code}]")
        if name == "other" or name.startswith("code_"):
            raise ValueError(f"names[{code}] may not be {name!r}: unnamed codes are labelled so")
        names[code] = name
    return MappingProxyType(names)


@final
@attrs.frozen(kw_only=True)
class CloseCodes:
    """A protocol's codes: how raw close codes become reason codes, and their names.

    Give it to `SocketOptions.close_codes`. A gateway that keeps its own close
    codes names them, e.g. ``CloseCodes(names={4004: "authentication_failed"})``:
    its reasons then carry code 4004, name ``authentication_failed`` and that
    metric label, while codes it does not name are labelled ``other``.

    Args:
        names: Reason code -> name, for logs and metric labels (a snake_case
            identifier; at most 256 of them). They take
            precedence over tenantry's own names.
        fold: Whether close codes 4000-4999 carry an HTTP-like reason as
            code - 4000 (4503 -> 503), as WhatsApp Web does
            (`BAILEYS_CLOSE_CODES`). False keeps them as they are.

    Close 1000 and 1001 are 428 (connection closed) and an abnormal drop
    is 408 (connection lost) either way.

    Raises:
        TypeError, ValueError: a name that is not a snake_case identifier,
            a code that is not an int >= 0, too many names.
    """

    names: Mapping[int, str] = attrs.field(factory=dict, converter=_names)
    fold: bool = attrs.field(default=False, validator=instance_of(bool))

    def name_of(self, code: int) -> str:
        """*code*'s name: its name here, else tenantry's (``code_<N>`` if none)."""
        return self.names.get(code) or _builtin_name(code)

    def reason(self, close_code: int | None, close_reason: str | None = None) -> DisconnectReason:
        """The reason for a WebSocket the peer closed (None: dropped without a close frame)."""
        message = close_reason or ""
        if close_code is None or close_code == _WS_ABNORMAL:
            return DisconnectReason(
                ReasonCode.CONNECTION_LOST,
                message or "connection dropped",
                origin=CloseOrigin.TRANSPORT,
                raw_code=close_code,
                name=self.name_of(ReasonCode.CONNECTION_LOST),
            )
        close_code = int(close_code)
        if close_code in _WS_NORMAL:
            code = int(ReasonCode.CONNECTION_CLOSED)
        elif self.fold and close_code in _WS_APPLICATION:
            code = close_code - 4000
        else:
            code = close_code
        return DisconnectReason(
            code,
            message or f"closed by peer ({close_code})",
            origin=CloseOrigin.CLOSE_FRAME,
            raw_code=close_code,
            name=self.name_of(code),
        )

    def named(self, reason: DisconnectReason) -> DisconnectReason:
        """*reason* with its name from `names`, if its code has one here.

        A local close sent with a close code named here (``Socket.close(code=...)``)
        takes that code's name, so that its metric label says which close it was.
        """
        name = self.names.get(reason.code)
        if name is None and reason.origin is CloseOrigin.LOCAL and reason.raw_code is not None:
            name = self.names.get(reason.raw_code)
        if name is None or name == reason.name:
            return reason
        return attrs.evolve(reason, name=name)


BAILEYS_CLOSE_CODES = CloseCodes(fold=True)
"""WhatsApp Web's (Baileys') close codes: 4000 + N carries reason N (4401 -> 401)."""


def default_decide(reason: DisconnectReason) -> Decision:
    """The default policy: `DEFAULT_DECISIONS`, else `Decision.RECONNECT`."""
    return DEFAULT_DECISIONS.get(reason.code, Decision.RECONNECT)
