"""Close codes both ways: the code tenantry sends, a protocol's own codes, a handler's decision."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ws_events

from helpers import Peer, idle
from tenantry import (
    CloseCodes,
    CloseOrigin,
    Decision,
    DisconnectReason,
    ReasonCode,
    ReconnectPolicy,
    Socket,
    SocketOptions,
    TenantSpec,
    TenantState,
    default_decide,
    open_hub,
    open_socket,
)
from tenantry.testing import MemoryConnector, open_fake_upstream

Handler = Callable[[Socket], Awaitable[None]]

GATEWAY = CloseCodes(names={4004: "authentication_failed", 4009: "session_timed_out"})

Seen = list[tuple[int, str | None] | None]


async def serve_and_record(
    seen: Seen, done: trio.Event, request: trio_websocket.WebSocketRequest, first: str = ""
) -> None:
    """Accept, send *first* if given, read until the client closes, and record its close."""
    ws = await request.accept()
    if first:
        await ws.send_message(first)
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        record_close(seen, done, closed)


def record_close(seen: Seen, done: trio.Event, closed: trio_websocket.ConnectionClosed) -> None:
    """Record the close code and text the client sent (None: it sent no close frame)."""
    seen.append(None if closed.reason is None else (closed.reason.code, closed.reason.reason))
    done.set()


@pytest.mark.parametrize(
    ("text", "code", "server_sees"),
    [
        ("resume later", 4000, (4000, "resume later")),
        (None, 1000, (1000, None)),
        ("going away", 1001, (1001, "going away")),
        ("registered", 3000, (3000, "registered")),
        ("é" * 100, 4999, (4999, "é" * 61)),  # 123 bytes at most, cut between characters
    ],
)
async def test_the_server_sees_exactly_the_close_code_and_text_asked_for(
    autojump_clock: trio.testing.MockClock,
    text: str | None,
    code: int,
    server_sees: tuple[int, str | None],
) -> None:
    seen: Seen = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        connector = MemoryConnector(nursery, functools.partial(serve_and_record, seen, done))
        async with open_socket(connector, tenant_id="a") as sock:
            sock.close(text, code=code)
        await done.wait()
        nursery.cancel_scope.cancel()
    assert seen == [server_sees]
    reason = sock.close_reason
    assert reason is not None
    assert (reason.code, reason.remote, reason.origin, reason.raw_code) == (
        ReasonCode.CONNECTION_CLOSED,
        False,
        CloseOrigin.LOCAL,
        code,
    )


async def test_the_close_code_reaches_a_server_over_loopback_tcp() -> None:
    seen: Seen = []
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        handler = functools.partial(serve_and_record, seen, done)
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        with trio.fail_after(10):  # a bound on the network, not a timing assertion
            async with open_socket(url, tenant_id="a") as sock:
                sock.close("keep my session", code=4000)
            await done.wait()
        nursery.cancel_scope.cancel()
    assert seen == [(4000, "keep my session")]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"code": 999}, ValueError, "code must be a close code an endpoint may send"),
        ({"code": 1005}, ValueError, "got 1005"),
        ({"code": 1006}, ValueError, "got 1006"),
        ({"code": 1015}, ValueError, "got 1015"),
        ({"code": 1014}, ValueError, "got 1014"),  # wsproto's peers fail on it: 1002
        ({"code": 2999}, ValueError, "got 2999"),
        ({"code": 5000}, ValueError, "got 5000"),
        ({"code": True}, TypeError, "code must be an int"),
        ({"code": "4000"}, TypeError, "code must be an int"),
        ({"decision": "stop"}, TypeError, "decision must be a Decision"),
        ({"reason": 4000}, TypeError, "reason must be a DisconnectReason, a str or None"),
    ],
)
async def test_close_refuses_what_it_could_never_send_and_stays_open(
    autojump_clock: trio.testing.MockClock,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    async with open_fake_upstream() as upstream:
        async with open_socket(upstream.connector_to("/a"), tenant_id="a") as sock:
            with pytest.raises(error, match=match):
                sock.close(**kwargs)  # type: ignore[arg-type]
            assert sock.close_reason is None
        assert sock.close_reason is not None
        assert sock.close_reason.message == "closed by owner"


async def test_a_protocols_close_codes_name_the_peers_codes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        options = SocketOptions(close_codes=GATEWAY)
        async with open_socket(upstream.connector_to("/a"), tenant_id="a", options=options) as sock:
            await (await upstream.wait_connections(1)).close(4004, "bad token")
            await trio.sleep_forever()
        async with open_socket(upstream.connector_to("/b"), tenant_id="b") as baileys:
            await (await upstream.wait_connections(2)).close(4004, "bad token")
            await trio.sleep_forever()
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.label) == (4004, "authentication_failed")
    assert (sock.close_reason.origin, sock.close_reason.close_code) == (
        CloseOrigin.CLOSE_FRAME,
        4004,
    )
    assert baileys.close_reason is not None  # the default folds 4000 + N into N
    assert (baileys.close_reason.code, baileys.close_reason.label) == (4, "other")
    assert baileys.close_reason.close_code == 4004


async def test_a_stream_error_is_a_protocol_code(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_fake_upstream() as upstream,
        open_socket(upstream.connector_to("/a"), tenant_id="a") as sock,
    ):
        await (await upstream.wait_connections(1)).stream_error(515)
        await trio.sleep_forever()
    reason = sock.close_reason
    assert reason is not None
    assert (reason.code, reason.origin, reason.raw_code) == (515, CloseOrigin.PROTOCOL, 515)
    assert reason.close_code is None


async def test_a_protocols_close_codes_name_its_protocol_codes_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    options = SocketOptions(close_codes=GATEWAY)
    async with (
        open_fake_upstream() as upstream,
        open_socket(upstream.connector_to("/a"), tenant_id="a", options=options) as sock,
    ):
        await (await upstream.wait_connections(1)).stream_error(4009)
        await trio.sleep_forever()
    reason = sock.close_reason
    assert reason is not None
    assert (reason.code, reason.origin, reason.label) == (
        4009,
        CloseOrigin.PROTOCOL,
        "session_timed_out",
    )


def test_close_codes_must_be_close_codes() -> None:
    with pytest.raises(TypeError, match="close_codes must be a CloseCodes"):
        SocketOptions(close_codes={4004: "authentication_failed"})  # type: ignore[arg-type]


# -- a tenant's outcomes ---------------------------------------------------------------


def closing_with(decision: Decision, code: int = 1000) -> Handler:
    """A handler that ends each connection at once with *decision*."""

    async def handler(sock: Socket) -> None:
        sock.close(f"handler says {decision.value}", code=code, decision=decision)
        await trio.sleep_forever()

    return handler


async def test_a_handler_closing_with_stop_stops_the_tenant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        await hub.add(TenantSpec("a", upstream.connector_to("/a"), closing_with(Decision.STOP)))
        await upstream.wait_connections(1)
        await trio.sleep(3600)
        [status] = hub.status()
        metrics = hub.metrics()
    assert status.state is TenantState.STOPPED
    assert status.connections == 1
    assert status.failures == 0  # STOP counts nothing
    reason = status.last_disconnect
    assert reason is not None
    assert (reason.code, reason.origin, reason.decision) == (428, CloseOrigin.LOCAL, Decision.STOP)
    assert metrics.value("tenantry_reconnects_total", reason="connection_closed") == 1


@pytest.mark.parametrize("decision", [Decision.STOP, Decision.RECONNECT_NOW])
async def test_a_decision_given_as_the_peers_close_races_in_is_kept_with_the_peers_reason(
    autojump_clock: trio.testing.MockClock, decision: Decision
) -> None:
    """The peer's close frame came in the read that brought "go", and the handler closes
    before the reader reaches it: the peer's reason wins (it is what happened), and the
    handler's decision applies."""
    closing: list[bool] = []

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        go = ws_events.TextMessage(data='{"type": "go", "data": 1}')
        await peer.accept(go, ws_events.CloseConnection(code=4000, reason="peer"))
        await peer.until(ws_events.CloseConnection)

    async def handler(sock: Socket) -> None:
        async with sock.events.subscribe() as batches:
            async for _ in batches:
                closing.append(sock.closing)
                sock.close("handler", decision=decision)

    options = SocketOptions(close_codes=CloseCodes())
    async with trio.open_nursery() as nursery:
        connector = MemoryConnector(nursery, serve_stream=serve)
        async with open_socket(connector, tenant_id="a", options=options) as sock:
            await handler(sock)
        nursery.cancel_scope.cancel()
    assert closing == [False]  # the socket did not know of the peer's close yet
    reason = sock.close_reason
    assert reason is not None
    assert (reason.origin, reason.raw_code, reason.message) == (
        CloseOrigin.CLOSE_FRAME,
        4000,
        "peer",
    )
    assert reason.decision is decision


async def test_a_handler_closing_with_reconnect_now_skips_the_delay_but_counts_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    async def watch() -> None:
        while True:
            await upstream.wait_connections(len(times) + 1)
            times.append(trio.current_time())

    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        await hub.add(
            TenantSpec("a", upstream.connector_to("/a"), closing_with(Decision.RECONNECT_NOW))
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await upstream.wait_connections(6)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        [status] = hub.status()
    # Five at once (no backoff delay); each was short, so each is a failure: the fifth
    # opens the breaker, whose 60 s the sixth (the half-open trial, which fails too) waits for.
    assert times[:5] == [times[0]] * 5
    assert times[5] - times[0] == pytest.approx(60)
    assert (status.failures, status.breaker_trips) == (6, 2)


async def test_a_gateway_stops_on_its_own_authentication_failed_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def decide(reason: DisconnectReason) -> Decision:
        if reason.close_code == 4004:
            return Decision.STOP
        return default_decide(reason)

    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        await hub.add(
            TenantSpec(
                "a",
                upstream.connector_to("/a"),
                idle,
                policy=ReconnectPolicy(decide=decide),
                options=SocketOptions(close_codes=GATEWAY),
            )
        )
        await (await upstream.wait_connections(1)).close(4009, "session timed out")
        await (await upstream.wait_connections(2)).close(4999, "a code nobody named")
        await (await upstream.wait_connections(3)).close(4004, "authentication failed")
        await trio.sleep(3600)
        [status] = hub.status()
        metrics = hub.metrics()
    assert status.state is TenantState.STOPPED
    assert status.connections == 3
    assert status.last_disconnect is not None
    assert (status.last_disconnect.code, status.last_disconnect.name) == (
        4004,
        "authentication_failed",
    )
    reconnects = {
        dict(s.labels)["reason"]: s.value
        for s in metrics.samples
        if s.name == "tenantry_reconnects_total"
    }
    assert reconnects == {"session_timed_out": 1, "other": 1, "authentication_failed": 1}


async def test_a_local_reason_given_to_close_records_the_code_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        async with open_socket(upstream.connector_to("/a"), tenant_id="a") as sock:
            sock.close(DisconnectReason(428, "restart", remote=False), code=4000)
        async with open_socket(upstream.connector_to("/b"), tenant_id="b") as given:
            given.close(DisconnectReason(428, "restart", remote=False, raw_code=4001))
    assert sock.close_reason is not None
    assert sock.close_reason.raw_code == 4000
    assert given.close_reason is not None
    assert given.close_reason.raw_code == 4001  # kept as given


async def test_a_close_of_tenantrys_own_making_is_no_normal_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bug in user code sends 1011: a peer must not read it as "the session is over"."""
    seen: Seen = []
    done = trio.Event()

    async def one_event(request: trio_websocket.WebSocketRequest) -> None:
        await serve_and_record(seen, done, request, first='{"type": "t", "data": 1}')

    def broken(data: object) -> None:
        raise ZeroDivisionError("listener bug")

    async def listen(connector: MemoryConnector) -> None:
        async with open_socket(connector, tenant_id="a") as sock:
            sock.events.on("t", broken)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        with pytest.raises(ZeroDivisionError):
            await listen(MemoryConnector(nursery, one_event))
        await done.wait()
        nursery.cancel_scope.cancel()
    assert seen == [(1011, None)]


async def test_a_flood_of_bad_frames_closes_with_a_protocol_error_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: Seen = []
    done = trio.Event()

    async def garble(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message("not json")
        except trio_websocket.ConnectionClosed as closed:
            record_close(seen, done, closed)

    async with trio.open_nursery() as nursery:
        connector = MemoryConnector(nursery, garble)
        options = SocketOptions(max_bad_frames=3)
        async with open_socket(connector, tenant_id="a", options=options) as sock:
            await trio.sleep_forever()
        await done.wait()
        nursery.cancel_scope.cancel()
    assert seen == [(1002, None)]
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.PROTOCOL_ERROR
    assert sock.close_reason.raw_code == 1002
