from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from tenantry import (
    CloseRequested,
    FrameRejected,
    JsonProtocol,
    ReasonCode,
    RejectReason,
    Session,
)

PROTOCOL = JsonProtocol()


def test_round_trip() -> None:
    frame = PROTOCOL.encode("messages.upsert", {"key": {"id": "1"}, "text": "olá"})
    assert frame == '{"type":"messages.upsert","data":{"key":{"id":"1"},"text":"ol\\u00e1"}}'
    assert PROTOCOL.decode(frame) == (("messages.upsert", {"key": {"id": "1"}, "text": "olá"}),)


def test_data_may_be_any_json_value() -> None:
    assert PROTOCOL.decode('{"type": "t", "data": null}') == (("t", None),)
    assert PROTOCOL.decode('{"type": "t", "data": [1, 2]}') == (("t", [1, 2]),)


def test_the_json_protocol_is_its_own_session() -> None:
    """It keeps no state between frames, so every connection may share it."""
    sock: Any = object()  # JsonProtocol never looks at the socket
    assert PROTOCOL(sock) is PROTOCOL
    session: Session = PROTOCOL(sock)  # and mypy agrees it is a Session
    assert session.decode('{"type": "t", "data": 1}') == (("t", 1),)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"type": "t", "data": 1}', RejectReason.BINARY),
        ("not json", RejectReason.INVALID_JSON),
        ("{" * 5, RejectReason.INVALID_JSON),
        ("[" * 100_000 + "]" * 100_000, RejectReason.INVALID_JSON),
        ("1" * 5000, RejectReason.INVALID_JSON),  # beyond Python's int digit limit
        ("[1, 2]", RejectReason.BAD_SHAPE),
        ('{"data": 1}', RejectReason.BAD_SHAPE),
        ('{"type": "", "data": 1}', RejectReason.BAD_SHAPE),
        ('{"type": 7, "data": 1}', RejectReason.BAD_SHAPE),
        ('{"type": "t"}', RejectReason.BAD_SHAPE),
        ('{"type": "stream:error"}', RejectReason.BAD_SHAPE),
        ('{"type": "stream:error", "code": "515"}', RejectReason.BAD_SHAPE),
        ('{"type": "stream:error", "code": true}', RejectReason.BAD_SHAPE),
    ],
)
def test_rejections(frame: str | bytes, reason: RejectReason) -> None:
    with pytest.raises(FrameRejected) as caught:
        PROTOCOL.decode(frame)
    assert caught.value.reason is reason
    assert len(caught.value.preview) <= 90


def test_size_limit() -> None:
    small = JsonProtocol(max_message_size=30)
    assert small.decode('{"type":"t","data":"abc"}') == (("t", "abc"),)
    with pytest.raises(FrameRejected) as caught:
        small.decode('{"type":"t","data":"' + "x" * 30 + '"}')
    assert caught.value.reason is RejectReason.TOO_LARGE


def test_previews_are_short_and_escaped() -> None:
    with pytest.raises(FrameRejected) as caught:
        JsonProtocol(preview_chars=10).decode("\x1b[31mred\n" + "y" * 500)
    assert caught.value.preview == "'\\x1b[31mred\\ny'..."


def test_stream_error_asks_to_close() -> None:
    with pytest.raises(CloseRequested) as caught:
        PROTOCOL.decode('{"type": "stream:error", "code": 515, "text": "restart required"}')
    reason = caught.value.reason
    assert (reason.code, reason.message, reason.remote) == (
        ReasonCode.RESTART_REQUIRED,
        "restart required",
        True,
    )


def test_encode_rejects_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        PROTOCOL.encode("t", {1, 2})
    with pytest.raises(ValueError, match="event type"):
        PROTOCOL.encode("", 1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        JsonProtocol(max_message_size=0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(frame=st.one_of(st.text(), st.binary(), json_values.map(json.dumps)))
def test_nothing_a_peer_sends_raises_anything_else(frame: str | bytes) -> None:
    try:
        [(event_type, _)] = PROTOCOL.decode(frame)
    except (FrameRejected, CloseRequested):
        return
    assert isinstance(event_type, str)
    assert event_type


@settings(max_examples=200, deadline=None)
@given(event_type=st.text(min_size=1), data=json_values)
def test_encode_decode_round_trip(event_type: str, data: Any) -> None:
    if event_type == "stream:error":
        return
    assert PROTOCOL.decode(PROTOCOL.encode(event_type, data)) == ((event_type, data),)
