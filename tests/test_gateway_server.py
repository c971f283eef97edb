"""The interop gateway server (tests/gateway_server.py), driven by a plain ``websockets`` client.

These prove the server behaves as its docstring says before tenantry is tested against it.
Real time over loopback: every wait is bounded (``recv`` timeouts, ``server.wait``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway_server import COMPRESSED, SYNC_FLUSH_SUFFIX, GatewayServer, Scenario, token

Start = Callable[..., GatewayServer]


def dial(
    server: GatewayServer, tenant: str, *, bearer: str = "", query: str = ""
) -> ClientConnection:
    headers = {"Authorization": f"Bearer {bearer or server.token(tenant)}"}
    return connect(
        server.url + query,
        additional_headers=headers,
        open_timeout=5,
        close_timeout=2,
        compression=None,
        ping_interval=None,
    )


def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=5))
    return frame


def identify(server: GatewayServer, ws: ClientConnection, tenant: str) -> str:
    assert recv(ws)["op"] == 10
    ws.send(json.dumps({"op": 2, "d": {"token": server.token(tenant)}}))
    ready = recv(ws)
    assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 0)
    session_id: str = ready["d"]["session_id"]
    return session_id


def read_until_closed(ws: ClientConnection) -> ConnectionClosed:
    """Read frames until the connection closes; its ConnectionClosed."""
    while True:
        try:
            recv(ws)
        except ConnectionClosed as closed:
            return closed


def events_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """The application events of a dispatch frame (a BATCH carries several)."""
    if frame["op"] != 0 or frame["t"] in ("READY", "RESUMED"):
        return []
    return frame["d"] if frame["t"] == "BATCH" else [frame]


def resume(
    server: GatewayServer, ws: ClientConnection, tenant: str, session_id: str, seq: int
) -> dict[str, Any]:
    """Send RESUME; return the answer (RESUMED or INVALID_SESSION), checking the replay."""
    ws.send(
        json.dumps(
            {"op": 6, "d": {"token": server.token(tenant), "session_id": session_id, "seq": seq}}
        )
    )
    while True:
        frame = recv(ws)
        if frame["op"] != 0 or frame["t"] == "RESUMED":
            return frame
        assert frame["s"] == seq + 1  # the replay: every event after seq, in order
        seq = frame["s"]


def test_every_event_once_in_order_with_batches_and_acks(gateway: Start) -> None:
    server = gateway({"t": Scenario(events=30, batch=3)})
    with dial(server, "t") as ws:
        session_id = identify(server, ws, "t")
        seen: list[dict[str, Any]] = []
        batches = 0
        while len(seen) < 30:
            frame = recv(ws)
            batches += frame["t"] == "BATCH"
            seen += events_of(frame)
        ws.send(json.dumps({"op": 1, "d": seen[-1]["s"]}))
        assert recv(ws)["op"] == 11
    assert [e["s"] for e in seen] == list(range(1, 31))
    assert [e["d"]["n"] for e in seen] == list(range(1, 31))
    assert batches > 0
    record = server.wait("t", lambda r: r.connections[0].client_close is not None)
    assert record.dispatched == [(session_id, n, n) for n in range(1, 31)]
    assert set(record.sent.values()) == {1}
    conn = record.connections[0]
    assert (conn.heartbeats, conn.acks, conn.client_close) == (1, 1, 1000)
    assert server.errors == []


def test_a_resume_replays_what_followed_the_clients_seq(gateway: Start) -> None:
    server = gateway({"t": Scenario(events=40)})
    with dial(server, "t") as ws:
        session_id = identify(server, ws, "t")
        while recv(ws)["s"] < 5:
            pass
        ws.close(4000)
    with dial(server, "t") as ws:
        assert recv(ws)["op"] == 10
        resumed = resume(server, ws, "t", session_id, 5)
        assert (resumed["op"], resumed["t"]) == (0, "RESUMED")
        last = resumed["s"]
        while last < 40:
            frame = recv(ws)
            assert frame["s"] == last + 1
            last = frame["s"]
    record = server.record("t")
    assert record.connections[0].client_close == 4000
    assert record.replays == [(session_id, 5, resumed["s"] - 5)]
    assert len(record.dispatched) == 40
    assert server.errors == []


def test_closing_with_1000_invalidates_the_session(gateway: Start) -> None:
    server = gateway()
    with dial(server, "t") as ws:
        session_id = identify(server, ws, "t")
    server.wait("t", lambda r: r.connections[0].client_close == 1000)
    with dial(server, "t") as ws:
        assert recv(ws)["op"] == 10
        assert resume(server, ws, "t", session_id, 0) == {"op": 9, "d": False, "s": None, "t": None}
        identify_again = json.dumps({"op": 2, "d": {"token": server.token("t")}})
        ws.send(identify_again)  # on the same connection
        assert recv(ws)["t"] == "READY"
    assert server.record("t").invalid_sessions == 1


def test_handshake_rejections_429_with_retry_after_and_401_for_a_stale_token(
    gateway: Start,
) -> None:
    server = gateway({"t": Scenario(throttle={1: 3})}, token_ttl=2.0)
    with pytest.raises(InvalidStatus) as throttled:
        dial(server, "t")
    assert throttled.value.response.status_code == 429
    assert throttled.value.response.headers["Retry-After"] == "3"
    with pytest.raises(InvalidStatus) as stale:
        dial(server, "t", bearer=token("t", 2.0, now=0.0))
    assert stale.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        dial(server, "t", bearer="no-epoch")
    with dial(server, "t"):
        pass
    record = server.record("t")
    assert [(h.status, h.retry_after) for h in record.handshakes] == [
        (429, 3),
        (401, None),
        (101, None),
    ]
    assert len(server.record("").handshakes) == 1  # the malformed one: no tenant


@pytest.mark.parametrize("scenario", [Scenario(revoked=True), Scenario()])
def test_4004_for_a_revoked_tenant_or_a_token_not_the_handshakes(
    gateway: Start, scenario: Scenario
) -> None:
    server = gateway({"t": scenario})
    with dial(server, "t") as ws:
        assert recv(ws)["op"] == 10
        bad = server.token("t") if scenario.revoked else server.token("u")
        ws.send(json.dumps({"op": 2, "d": {"token": bad}}))
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4004


def test_zlib_stream_with_split_messages(gateway: Start) -> None:
    server = gateway({"t": Scenario(events=12, split_every=2)})
    inflate, buffer, partial = zlib.decompressobj(), b"", 0
    messages: list[dict[str, Any]] = []
    with dial(server, "t", query=COMPRESSED) as ws:
        while not messages or messages[-1].get("s") != 12:
            chunk = ws.recv(timeout=5)
            assert isinstance(chunk, bytes)
            buffer += chunk
            if not buffer.endswith(SYNC_FLUSH_SUFFIX):
                partial += 1  # a frame that carries no message
                continue
            messages.append(json.loads(inflate.decompress(buffer)))
            buffer = b""
            if messages[-1]["op"] == 10:
                ws.send(json.dumps({"op": 2, "d": {"token": server.token("t")}}))
    assert partial >= 6
    assert [m["s"] for m in messages[2:]] == list(range(1, 13))
    assert server.record("t").connections[0].compressed


@pytest.mark.parametrize(
    ("fault", "seen", "resumable"),
    [
        ("close_4000", "close 4000", True),
        ("close_4009", "close 4009", False),
        ("reconnect", "op 7", True),
        ("invalid_session", "op 9 True", True),
        ("invalid_session_final", "op 9 False", False),
        ("drop", "dropped", True),
        ("heartbeat_request", "op 1", True),
        ("zombie", "no ack", True),
    ],
)
def test_scripted_faults_and_what_a_resume_gets_after_them(
    gateway: Start, fault: str, seen: str, resumable: bool
) -> None:
    server = gateway({"t": Scenario(events=10_000, faults=(fault,), fault_after=0.1)})
    with dial(server, "t") as ws:
        session_id, seq = identify(server, ws, "t"), 0
        if fault == "zombie":
            server.wait("t", lambda r: r.connections[0].fault == "zombie")
            ws.send(json.dumps({"op": 1, "d": None}))
            record = server.wait("t", lambda r: r.connections[0].heartbeats == 1)
            assert record.connections[0].acks == 0
            observed = "no ack"
        else:
            observed = ""
            while not observed:
                try:
                    frame = recv(ws)
                except ConnectionClosed as closed:
                    observed = f"close {closed.rcvd.code}" if closed.rcvd else "dropped"
                    break
                seq = frame["s"] if frame["op"] == 0 else seq
                if frame["op"] != 0:
                    d = frame["d"]
                    observed = f"op {frame['op']}" + ("" if d is None else f" {d}")
        ws.close(4000)
    assert observed == seen
    assert server.record("t").connections[0].fault == fault
    with dial(server, "t") as ws:
        assert recv(ws)["op"] == 10
        answer = resume(server, ws, "t", session_id, seq)
    assert answer["t" if resumable else "d"] == ("RESUMED" if resumable else False)
    assert server.errors == []


def test_no_heartbeat_closes_with_4009(gateway: Start) -> None:
    server = gateway({"t": Scenario(events=3, heartbeat_timeout=0.2)})
    with dial(server, "t") as ws:
        identify(server, ws, "t")
        closed = read_until_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4009
    assert server.record("t").connections[0].server_close == 4009


def test_a_failure_inside_the_server_fails_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: GatewayServer, link: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(GatewayServer, "_watchdog", broken)
    with ExitStack() as stack:
        server = stack.enter_context(GatewayServer())
        with dial(server, "t") as ws:
            assert recv(ws)["op"] == 10
        server.wait("t", lambda r: bool(server.errors))
        with pytest.raises(AssertionError, match="bug"):
            stack.close()
