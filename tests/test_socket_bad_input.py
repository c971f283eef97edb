"""Whatever a peer sends, a live socket counts it and survives, or closes cleanly.

Generated frames go through the real WebSocket code (in memory, under
`MockClock`) into `open_socket`; each frame is either decoded into the buffer
or rejected with a counted reason, and the scope always ends with a reason,
never with an exception.
"""

from __future__ import annotations

import json

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import example, given, settings

from helpers import collect
from tenantry import (
    DEFAULT_EVENT_RULES,
    Batch,
    BufferConfig,
    ReasonCode,
    RejectReason,
    SocketOptions,
    open_socket,
)
from tenantry.testing import open_fake_upstream

MAX_MESSAGE_SIZE = 2000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
sendable_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
event_types = st.sampled_from([*DEFAULT_EVENT_RULES.keys(), "unknown.type", ""])
frames = st.one_of(
    sendable_text,
    st.binary(max_size=300),
    json_values.map(json.dumps),
    st.builds(lambda t, d: json.dumps({"type": t, "data": d}), event_types, json_values),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 9000).map(lambda size: '{"type": "chats.update", "data": "' + "x" * size),
)


TRANSPORT_LIMIT = 4 * MAX_MESSAGE_SIZE  # bytes; the WebSocket layer fails bigger messages


def size(frame: str | bytes) -> int:
    return len(frame.encode() if isinstance(frame, str) else frame)


async def run_peer(peer_frames: list[str | bytes], last: bytes | None) -> None:
    delivered: list[Batch] = []
    async with open_fake_upstream() as upstream:
        config = BufferConfig(always_buffer=True)
        async with (
            open_socket(
                upstream.connector,
                tenant_id="t",
                options=SocketOptions(
                    buffer=config, max_message_size=MAX_MESSAGE_SIZE, max_bad_frames=10_000
                ),
            ) as sock,
            sock.events.subscribe() as channel,
            trio.open_nursery() as body,
        ):
            body.start_soon(collect, channel, delivered)
            connection = await upstream.wait_connections(1)
            for frame in peer_frames:
                await connection.send_raw(frame)
                if size(frame) > TRANSPORT_LIMIT:
                    # The client fails the connection. (Closing right behind
                    # the frame could race it: trio-websocket then reports
                    # whichever close it processed last.)
                    await trio.sleep_forever()
            if last is not None:
                await connection.send_raw(last, as_text=True)
                await trio.sleep_forever()
            await connection.close(1000)
            await trio.sleep_forever()

    assert sock.close_reason is not None
    stats = sock.buffer.stats
    refused = next((i for i, f in enumerate(peer_frames) if size(f) > TRANSPORT_LIMIT), None)
    if refused is not None:
        assert sock.close_reason.name == "message_too_big"
        assert sock.frames_received == refused
    elif last is not None:
        assert sock.close_reason.name == "invalid_payload"
        assert sock.rejected[RejectReason.INVALID_UTF8] == 1
        assert sock.frames_received == len(peer_frames)
    else:
        assert sock.close_reason.code == ReasonCode.CONNECTION_CLOSED
        assert sock.frames_received == len(peer_frames)
    transport_refusals = int(refused is not None or last is not None)
    assert sum(sock.rejected.values()) + stats.received == sock.frames_received + transport_refusals
    assert sum(batch.count for batch in delivered) + stats.merged == stats.received


@settings(max_examples=150, deadline=None)
@given(
    peer_frames=st.lists(frames, max_size=25),
    last=st.none() | st.sampled_from([b"\xff\xfe", b'{"type": "a\xc3', b"\xed\xa0\x80"]),
)
@example(peer_frames=["ok", "x" * (TRANSPORT_LIMIT + 1)], last=None)  # refused: 1009
@example(peer_frames=["ok"], last=b"\xff\xfe")  # not UTF-8: 1007
def test_no_frame_escapes_a_live_socket(peer_frames: list[str | bytes], last: bytes | None) -> None:
    trio.run(run_peer, peer_frames, last, clock=trio.testing.MockClock(autojump_threshold=0))
