"""FakeUpstream, through open_socket: the scenarios the soak and the hub are built from."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

from helpers import collect, living_tasks
from tenantry import (
    Batch,
    BufferConfig,
    ConnectFailed,
    DisconnectReason,
    ReasonCode,
    RejectReason,
    Socket,
    SocketOptions,
    open_socket,
)
from tenantry._connect import CLOSE_TIMEOUT
from tenantry._transport import TransportClosed
from tenantry.lowlevel import Gauges
from tenantry.testing import FakeUpstream, MemoryConnector, open_fake_upstream
from tenantry.testing._upstream import REQUEST_TIMEOUT


async def test_events_streamed_before_a_close_are_all_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches: list[Batch] = []
    async with open_fake_upstream() as upstream:

        async def script() -> None:
            conn = await upstream.wait_connections(1)
            await conn.stream(500, keys=40, rate=100)
            await conn.close(4503)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(script)
            config = BufferConfig(always_buffer=True, flush_interval=1.0)
            async with (
                open_socket(
                    upstream.connector, tenant_id="t", options=SocketOptions(buffer=config)
                ) as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, batches)
    conn = upstream.connections[0]
    stats = sock.buffer.stats
    assert len(conn.sent) == 500
    assert stats.received == 500
    assert sum(b.count for b in batches) + stats.merged == 500
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.UNAVAILABLE_SERVICE
    seqs = {data["seq"] for batch in batches for data in batch["chats.update"]}
    assert max(seqs) == 500  # the last event sent made it


async def test_a_stalled_upstream_times_out_with_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:

        async def script() -> None:
            conn = await upstream.wait_connections(1)
            await trio.sleep(100)
            conn.stall()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(script)
            async with open_socket(
                upstream.connector, tenant_id="t", options=SocketOptions(keepalive=30)
            ) as sock:
                await trio.sleep_forever()
            closed_at = trio.current_time()
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.remote) == (ReasonCode.CONNECTION_LOST, True)
    # The last pong came at 90 s; the ping at 120 s goes unanswered for 5 s.
    assert 120 <= closed_at <= 100 + 30 + 5 + 30


async def test_abort_stream_error_and_raw_frames(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_upstream() as upstream:

        async def script() -> None:
            first = await upstream.wait_connections(1)
            await first.send_raw(b"\x00\x01binary")
            await first.send_raw("{broken")
            await first.abort()
            second = await upstream.wait_connections(2)
            await second.stream_error(515, "restart required")

        reasons: list[DisconnectReason | None] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(script)
            for _ in range(2):
                async with open_socket(upstream.connector, tenant_id="t") as sock:
                    await trio.sleep_forever()
                reasons.append(sock.close_reason)
                rejected = sock.rejected
                if len(reasons) == 1:
                    assert rejected[RejectReason.BINARY] == 1
                    assert rejected[RejectReason.INVALID_JSON] == 1
    assert [r.code for r in reasons if r is not None] == [408, 515]


async def test_rejected_handshakes(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_upstream() as upstream:
        upstream.reject_next(403)
        with pytest.raises(ConnectFailed) as failed:
            async with open_socket(upstream.connector, tenant_id="t"):
                pytest.fail("rejected")
        assert failed.value.reason.code == 403
        async with open_socket(upstream.connector, tenant_id="t") as sock:
            sock.close()
    assert upstream.connections[0].ended


async def test_sends_are_recorded_by_the_upstream(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_upstream() as upstream:
        async with open_socket(upstream.connector, tenant_id="t") as sock:
            await sock.send("presence.update", {"id": "me"})
            await trio.testing.wait_all_tasks_blocked()
        conn = upstream.connections[0]
    assert conn.received == ['{"type":"presence.update","data":{"id":"me"}}']


async def test_the_same_over_loopback_tcp() -> None:
    gauges = Gauges()
    batches: list[Batch] = []
    async with open_fake_upstream() as upstream:
        url = await upstream.serve_tcp()

        async def script() -> None:
            conn = await upstream.wait_connections(1)
            await conn.stream(200, keys=200)
            await conn.close(4515)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(script)
                async with (
                    open_socket(url, tenant_id="tcp", gauges=gauges) as sock,
                    sock.events.subscribe() as channel,
                ):
                    await collect(channel, batches)
    assert gauges == Gauges()
    assert sum(b.count for b in batches) == 200
    assert sock.close_reason is not None
    assert sock.close_reason.code == ReasonCode.RESTART_REQUIRED


CLOSE_PATHS = [
    "remote 4503",
    "abort",
    "stall",
    "stream:error",
    "bad frames",
    "listener",
    "close()",
    "body ends",
    "outer cancel",
]


async def upstream_side(upstream: FakeUpstream, path: str) -> None:
    """What the upstream does on each close path: stream, then end its way."""
    conn = await upstream.wait_connections(1)
    await conn.stream(50, keys=20, rate=20)
    if path == "remote 4503":
        await conn.close(4503)
    elif path == "abort":
        await conn.abort()
    elif path == "stall":
        conn.stall()
    elif path == "stream:error":
        await conn.stream_error(515)
    elif path == "bad frames":
        for _ in range(5):
            await conn.send_raw("garbage")


async def client_side(
    upstream: FakeUpstream, path: str, gauges: Gauges, batches: list[Batch]
) -> Socket:
    """What the client does on each close path; returns its socket once the scope has exited."""

    def listener(data: object) -> None:
        if path == "listener":
            raise RuntimeError("listener bug")

    config = BufferConfig(always_buffer=True, flush_interval=1.0)
    with trio.move_on_after(600) as outer:
        async with open_socket(
            upstream.connector,
            tenant_id="t",
            gauges=gauges,
            options=SocketOptions(keepalive=10, max_bad_frames=3, buffer=config),
        ) as sock:
            sock.events.on("chats.update", listener)
            async with sock.events.subscribe() as channel:
                if path in ("close()", "body ends"):
                    await trio.sleep(3)
                    if path == "body ends":
                        return sock
                    sock.close("test")
                elif path == "outer cancel":
                    outer.deadline = trio.current_time() + 3
                await collect(channel, batches)
    return sock


@pytest.mark.parametrize("path", CLOSE_PATHS)
async def test_every_close_path_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock, path: str
) -> None:
    gauges = Gauges()
    batches: list[Batch] = []
    sockets: list[Socket] = []

    async def client() -> None:
        sockets.append(await client_side(upstream, path, gauges, batches))

    async with open_fake_upstream() as upstream, trio.open_nursery() as nursery:
        nursery.start_soon(upstream_side, upstream, path)
        before = living_tasks()
        if path == "listener":
            with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="listener bug")):
                async with trio.open_nursery() as inner:
                    inner.start_soon(client)
        else:
            await client()
        if path == "stall":  # the upstream stays stalled until told otherwise
            await upstream.connections[0].abort()
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() <= before  # the upstream's script may have ended meanwhile
        nursery.cancel_scope.cancel()
    assert gauges == Gauges()
    if sockets:
        sock = sockets[0]
        assert sock.close_reason is not None
        assert sock.events.closed
        assert sock.events.subscribers == 0
        stats = sock.buffer.stats
        assert stats.received == stats.delivered + stats.merged + stats.lost
        assert (stats.pending, stats.in_flight) == (0, 0)
        # The body that ends leaves its subscriber's channel unread: those events are lost.
        assert (stats.lost > 0) == (path == "body ends")
        if path not in ("body ends", "outer cancel"):
            assert sum(b.count for b in batches) == stats.delivered


async def test_an_ended_connection_keeps_its_record_and_lets_go_of_its_websocket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        async with trio.open_nursery() as nursery:

            async def script() -> None:
                connection = await upstream.wait_connections(1)
                await connection.send_event("chats.update", {"id": 1})
                await connection.close(4503)

            nursery.start_soon(script)
            batches: list[Batch] = []
            async with (
                open_socket(upstream.connector, tenant_id="t") as sock,
                sock.events.subscribe() as channel,
            ):
                await collect(channel, batches)  # until the upstream's close ends it
        await trio.testing.wait_all_tasks_blocked()
        assert [batch["chats.update"] for batch in batches] == [({"id": 1},)]
        (connection,) = upstream.connections
        assert connection.ended
        assert connection.sent == [("chats.update", {"id": 1})]
        assert connection._link is None  # a long-running upstream stays small
        await connection.close()  # over already: nothing to do
        await connection.abort()
        connection.stall()
        with pytest.raises(trio_websocket.ConnectionClosed):
            await connection.send_event("chats.update", {"id": 2})


async def test_close_waits_for_the_clients_answer_within_the_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that reads nothing never answers the close: the upstream closes without it."""
    async with (
        open_fake_upstream() as upstream,
        upstream.connector.open(headers={}, max_message_size=2**16) as ws,
    ):
        connection = await upstream.wait_connections(1)
        start = trio.current_time()
        with trio.fail_after(3600):  # virtual time: an unbounded wait fails here
            await connection.close(4503)
        assert trio.current_time() - start == CLOSE_TIMEOUT
        assert connection.ended
        with pytest.raises(TransportClosed) as ended:  # the close frame came before the end
            await ws.receive()
        assert ended.value.code == 4503


async def connect_and_send(connector: MemoryConnector, messages: int) -> None:
    """One client connection that sends *messages* messages, then closes."""
    async with connector.open(headers={}, max_message_size=2**16) as ws:
        for n in range(messages):
            await ws.send(f"m{n}")


async def test_a_long_running_upstream_remembers_a_bounded_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        for _ in range(1200):
            await connect_and_send(upstream.connector, 2)
        await connect_and_send(upstream.connector, 2500)
        await trio.testing.wait_all_tasks_blocked()
        remembered = upstream.connections
        assert len(remembered) == 1000  # the last 1,000 that ended: the default history
        assert upstream.accepted == 1201
        assert [c.index for c in remembered] == list(range(201, 1201))
        assert upstream.connections_to("/") == remembered
        last = await upstream.wait_connections(1201)
        assert last is remembered[-1]
        assert last.received_count == 2500
        assert last.received == [f"m{n}" for n in range(1500, 2500)]
        assert sum(c.received_count for c in remembered) == 999 * 2 + 2500
        with pytest.raises(LookupError, match="connection 1 is forgotten"):
            await upstream.wait_connections(1)
        with pytest.raises(LookupError, match="connection 201 to / is forgotten"):
            await upstream.wait_connections(201, path="/")


async def test_live_connections_and_watched_paths_are_never_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream(history=2) as upstream, trio.open_nursery() as nursery:
        watched = upstream.connector_to("/watched")
        async with watched.open(headers={}, max_message_size=2**16):
            for n in range(10):  # paths of their own, as clients of a real upstream may use
                connector = MemoryConnector(
                    nursery,
                    serve_stream=upstream._serve_stream,  # a client no test watches
                    resource=f"/client-{n}",
                )
                await connect_and_send(connector, 1)
            await trio.testing.wait_all_tasks_blocked()
            live = upstream.connections[0]
            assert live.path == "/watched"
            assert not live.ended
            assert [c.path for c in upstream.connections] == [
                "/watched",
                "/client-8",
                "/client-9",
            ]
            assert upstream.connections_to("/client-0") == []
            paths = upstream._paths  # what a path costs once forgotten: nothing
            assert sorted(paths) == ["/", "/client-8", "/client-9", "/watched"]
        for _ in range(3):
            await connect_and_send(upstream.connector, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert [c.index for c in upstream.connections] == [12, 13]
        # Its record is gone, but a watched path keeps counting.
        assert upstream.connections_to("/watched") == []
        await connect_and_send(watched, 1)
        assert (await upstream.wait_connections(2, path="/watched")).index == 14
        nursery.cancel_scope.cancel()


def test_history_must_be_a_count() -> None:
    with pytest.raises(ValueError, match="history must be >= 0"):
        trio.run(open_fake_upstream(history=-1).__aenter__)


async def test_a_client_that_leaves_before_its_request_leaves_no_task_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        url = await upstream.serve_tcp()
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        await trio.testing.wait_all_tasks_blocked()
        before = living_tasks()
        for _ in range(10):  # connect, say nothing, leave
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
        await trio.sleep(REQUEST_TIMEOUT)  # virtual: the upstream gives up on silent clients
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        assert upstream.accepted == 0


@pytest.mark.parametrize("replace", [True, False])
async def test_replace_closes_the_older_connection_to_a_path_with_440(
    autojump_clock: trio.testing.MockClock, replace: bool
) -> None:
    async with open_fake_upstream(replace=replace) as upstream:
        a, b = upstream.connector_to("/a"), upstream.connector_to("/b")
        async with open_socket(a, tenant_id="a") as first, open_socket(b, tenant_id="b") as other:
            await trio.sleep(1)
            assert upstream.replacements == 0  # another path is another tenant
            async with open_socket(a, tenant_id="a") as second:
                await trio.sleep(1)
                assert second.close_reason is None  # the newer one stays
                assert other.close_reason is None
                if replace:
                    assert first.close_reason is not None
                    assert first.close_reason.code == ReasonCode.CONNECTION_REPLACED == 440
                else:
                    assert first.close_reason is None
        older = upstream.connections_to("/a")[0]
    assert (upstream.replacements, older.replaced) == ((1, True) if replace else (0, False))
