from __future__ import annotations

import attrs
import pytest
from wsproto.frame_protocol import CloseReason

from tenantry import (
    BAILEYS_CLOSE_CODES,
    CloseCodes,
    CloseOrigin,
    Decision,
    DisconnectReason,
    ReasonCode,
    default_decide,
)


@pytest.mark.parametrize(
    ("close_code", "expected"),
    [
        (1000, ReasonCode.CONNECTION_CLOSED),
        (1001, ReasonCode.CONNECTION_CLOSED),
        (1006, ReasonCode.CONNECTION_LOST),
        (None, ReasonCode.CONNECTION_LOST),
        (4503, ReasonCode.UNAVAILABLE_SERVICE),
        (4515, ReasonCode.RESTART_REQUIRED),
        (4401, ReasonCode.LOGGED_OUT),
        (4440, ReasonCode.CONNECTION_REPLACED),
        (4000, 0),
        (4999, 999),
        (1011, 1011),
    ],
)
def test_websocket_close_codes(close_code: int | None, expected: int) -> None:
    reason = DisconnectReason.from_close_code(close_code)
    assert reason.code == expected
    assert reason.remote


def test_close_reason_text_is_kept() -> None:
    reason = DisconnectReason.from_close_code(4515, "restart after pairing")
    assert reason.message == "restart after pairing"
    assert str(reason) == "515 restart_required (remote): restart after pairing"


def test_handshake_rejections_keep_the_http_status() -> None:
    reason = DisconnectReason.from_handshake_status(403)
    assert (reason.code, reason.name) == (403, "forbidden")
    assert "HTTP 403" in reason.message


def test_names() -> None:
    assert DisconnectReason(ReasonCode.CONNECTION_LOST).name == "connection_lost"
    assert DisconnectReason(ReasonCode.MULTIDEVICE_MISMATCH).name == "multidevice_mismatch"
    assert DisconnectReason(799).name == "code_799"
    assert DisconnectReason(799).label == "other"  # a closed set of metric labels
    assert DisconnectReason(-1).label == DisconnectReason(10**80).label == "other"
    assert DisconnectReason(ReasonCode.CONNECTION_LOST).label == "connection_lost"
    assert DisconnectReason(1009).label == DisconnectReason(1009).name == "message_too_big"
    assert str(DisconnectReason(428, remote=False)) == "428 connection_closed (local)"


@pytest.mark.parametrize(
    ("code", "decision"),
    [
        (401, Decision.STOP),
        (403, Decision.STOP),
        (440, Decision.STOP),
        (515, Decision.RECONNECT_NOW),
        (428, Decision.RECONNECT),
        (408, Decision.RECONNECT),
        (411, Decision.RECONNECT),
        (500, Decision.RECONNECT),
        (503, Decision.RECONNECT),
        (400, Decision.RECONNECT),
        (12345, Decision.RECONNECT),
    ],
)
def test_default_decisions(code: int, decision: Decision) -> None:
    assert default_decide(DisconnectReason(code)) is decision


def test_every_documented_code_has_a_name() -> None:
    assert {code.value for code in ReasonCode} == {400, 401, 403, 408, 411, 428, 440, 500, 503, 515}


@pytest.mark.parametrize(
    "reason",
    [
        DisconnectReason.from_close_code(CloseReason.INTERNAL_ERROR),  # trio-websocket's 1011
        DisconnectReason.from_close_code(CloseReason.NORMAL_CLOSURE),
        DisconnectReason.from_close_code(4401),
        DisconnectReason(ReasonCode.LOGGED_OUT),
        DisconnectReason.from_handshake_status(403),
    ],
    ids=str,
)
def test_codes_are_plain_ints(reason: DisconnectReason) -> None:
    assert type(reason.code) is int


@pytest.mark.parametrize("code", [True, 4.5, "401", None])
def test_a_code_that_is_not_an_int_is_refused(code: object) -> None:
    with pytest.raises(TypeError, match="code"):
        DisconnectReason(code)  # type: ignore[arg-type]


GATEWAY = CloseCodes(names={4004: "authentication_failed", 4009: "session_timed_out"})


@pytest.mark.parametrize(
    ("reason", "origin", "raw_code"),
    [
        (DisconnectReason.from_close_code(4401), CloseOrigin.CLOSE_FRAME, 4401),
        (DisconnectReason.from_close_code(1000), CloseOrigin.CLOSE_FRAME, 1000),
        (DisconnectReason.from_close_code(1006), CloseOrigin.TRANSPORT, 1006),
        (DisconnectReason.from_close_code(None), CloseOrigin.TRANSPORT, None),
        (DisconnectReason.from_handshake_status(401), CloseOrigin.HTTP_STATUS, 401),
        (DisconnectReason(408, "no pong"), CloseOrigin.TRANSPORT, None),
        (DisconnectReason(428, remote=False), CloseOrigin.LOCAL, None),
    ],
    ids=str,
)
def test_a_reason_keeps_its_raw_code_and_where_it_came_from(
    reason: DisconnectReason, origin: CloseOrigin, raw_code: int | None
) -> None:
    assert (reason.origin, reason.raw_code) == (origin, raw_code)


def test_close_4401_and_http_401_mean_the_same_but_stay_distinguishable() -> None:
    closed, rejected = (
        DisconnectReason.from_close_code(4401),
        DisconnectReason.from_handshake_status(401),
    )
    assert closed.code == rejected.code == ReasonCode.LOGGED_OUT
    assert default_decide(closed) is default_decide(rejected) is Decision.STOP
    assert (closed.close_code, closed.http_status) == (4401, None)
    assert (rejected.close_code, rejected.http_status) == (None, 401)
    assert closed != rejected


def test_folding_4000_plus_n_is_the_baileys_default_not_a_rule() -> None:
    assert DisconnectReason.from_close_code(4004).code == 4
    assert BAILEYS_CLOSE_CODES.reason(4004) == DisconnectReason.from_close_code(4004)
    reason = GATEWAY.reason(4004, "bad token")
    assert (reason.code, reason.name, reason.label) == (4004, *["authentication_failed"] * 2)
    assert (reason.close_code, reason.message) == (4004, "bad token")
    assert str(reason) == "4004 authentication_failed (remote): bad token"
    unnamed = GATEWAY.reason(4999)
    assert (unnamed.code, unnamed.name, unnamed.label) == (4999, "code_4999", "other")
    assert GATEWAY.reason(1000).code == ReasonCode.CONNECTION_CLOSED  # the same either way
    assert GATEWAY.reason(None).code == ReasonCode.CONNECTION_LOST


def test_a_protocols_names_name_reasons_of_any_origin() -> None:
    stream_error = DisconnectReason(4009, origin=CloseOrigin.PROTOCOL, raw_code=9)
    assert GATEWAY.named(stream_error).name == "session_timed_out"
    assert GATEWAY.named(DisconnectReason(401)) == DisconnectReason(401)  # nothing to rename
    assert (
        CloseCodes(names={401: "unauthorized"}).named(DisconnectReason(401)).label == "unauthorized"
    )


def test_decide_can_match_a_gateways_raw_close_code() -> None:
    def decide(reason: DisconnectReason) -> Decision:
        if reason.close_code == 4004:
            return Decision.STOP
        return default_decide(reason)

    assert decide(GATEWAY.reason(4004)) is Decision.STOP
    assert decide(GATEWAY.reason(4009)) is Decision.RECONNECT
    assert decide(DisconnectReason.from_handshake_status(4004)) is Decision.RECONNECT


@pytest.mark.parametrize(
    ("names", "error", "match"),
    [
        ({4004: "AuthenticationFailed"}, ValueError, r"names\[4004\] must be a snake_case"),
        ({4004: "authentication failed"}, ValueError, "snake_case"),
        ({4004: "x" * 64}, ValueError, "at most 63"),
        ({4004: ""}, ValueError, "snake_case"),
        ({4004: "other"}, ValueError, "unnamed codes"),
        ({4004: "code_4004"}, ValueError, "unnamed codes"),
        ({"4004": "auth"}, TypeError, "names: each code must be an int"),
        ({True: "auth"}, TypeError, "names: each code must be an int"),
        ({-1: "auth"}, ValueError, "names: each code must be >= 0"),
        ({n: f"c{n}" for n in range(257)}, ValueError, "at most 256"),
        ([(4004, "auth")], TypeError, "names must be a mapping"),
    ],
)
def test_close_code_names_are_checked_naming_the_field(
    names: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        CloseCodes(names=names)  # type: ignore[arg-type]


def test_close_codes_are_frozen_and_keyword_only() -> None:
    codes = CloseCodes(names={4004: "authentication_failed"})
    with pytest.raises(TypeError):
        codes.names[4005] = "other_name"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        codes.fold = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        CloseCodes({4004: "authentication_failed"})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="fold"):
        CloseCodes(fold=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"remote": True, "origin": CloseOrigin.LOCAL}, ValueError, "only LOCAL is local"),
        ({"remote": False, "origin": CloseOrigin.CLOSE_FRAME}, ValueError, "only LOCAL"),
        ({"origin": "local"}, TypeError, "origin must be a CloseOrigin"),
        ({"raw_code": "4004"}, TypeError, "raw_code"),
        ({"name": "Bad Name"}, ValueError, "name must be a snake_case"),
        ({"decision": "stop"}, TypeError, "decision must be a Decision"),
    ],
)
def test_a_reasons_new_fields_are_checked(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DisconnectReason(500, **kwargs)  # type: ignore[arg-type]


def test_a_local_close_with_a_named_code_takes_its_name() -> None:
    codes = CloseCodes(names={4900: "keep_session"})
    sent = DisconnectReason(ReasonCode.CONNECTION_CLOSED, "zombie", remote=False, raw_code=4900)
    assert codes.named(sent).name == "keep_session"
    assert codes.named(sent).label == "keep_session"
    plain = DisconnectReason(ReasonCode.CONNECTION_CLOSED, "bye", remote=False, raw_code=1000)
    assert codes.named(plain).name == "connection_closed"
    # The peer's close frame is named by its reason code, not by this rule.
    peer = codes.reason(4900, "from the peer")
    assert peer.origin is CloseOrigin.CLOSE_FRAME
    assert peer.name == "keep_session"
