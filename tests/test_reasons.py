from __future__ import annotations

import pytest
from wsproto.frame_protocol import CloseReason

from tenantry import Decision, DisconnectReason, ReasonCode, default_decide


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
