"""Sessions: per-connection protocol state, events per frame, the control path, health.

A protocol is a session factory: called once per connection, its session
decodes a frame into zero or more events, handles control messages as they
arrive (replying with ``send_frame``, running tasks with ``start_soon``) and
may declare the connection healthy.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from helpers import FakeClock, collect, living_tasks
from tenantry import (
    Backoff,
    Batch,
    BreakerState,
    BufferConfig,
    DisconnectReason,
    FrameRejected,
    JsonProtocol,
    ReasonCode,
    ReconnectPolicy,
    RejectReason,
    Socket,
    SocketClosed,
    SocketOptions,
    TenantSpec,
    open_hub,
    open_socket,
)
from tenantry.testing import MemoryConnector

Server = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


def sends(*frames: str | bytes, then_idle: bool = True) -> Server:
    """A server that sends *frames*, then reads (answering pings) until the client leaves."""

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            for frame in frames:
                await ws.send_message(frame)
            while then_idle:
                await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    return serve


def recording(received: list[str | bytes], *frames: str) -> Server:
    """A server that sends *frames*, records what the client sends for 5 s, then closes."""

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for frame in frames:
            await ws.send_message(frame)
        with trio.move_on_after(5):
            while True:
                received.append(await ws.get_message())
        await ws.aclose()

    return serve


async def collect_then_close(sock: Socket, batches: list[Batch], *, after: float) -> None:
    """Subscribe, and close the socket *after* seconds; every batch lands in *batches*."""

    async def close_later() -> None:
        await trio.sleep(after)
        sock.close("done")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_later)
        async with sock.events.subscribe() as channel:
            await collect(channel, batches)


def events_of(batches: list[Batch]) -> list[tuple[str, Any]]:
    return [(event.type, event.data) for batch in batches for event in batch]


class Multi:
    """A session whose frames are JSON lists of ``[type, data]`` pairs: zero or more events."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.frames_when_made = sock.frames_received

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        return [(event_type, data) for event_type, data in json.loads(frame)]

    def encode(self, event_type: str, data: Any) -> str:
        return json.dumps([[event_type, data]])


# -- 1. zero or more events per frame ---------------------------------------------


async def test_a_frame_carries_several_events_or_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events are counted, not frames; a frame without events is no bad frame."""
    frames = [
        json.dumps([["chats.update", {"id": 1, "a": 1}], ["chats.update", {"id": 1, "b": 2}]]),
        json.dumps([]),  # an ack: no event
        json.dumps([["x", 1], ["messages.upsert", {"no": "key"}], ["x", 2]]),  # one invalid
        *[json.dumps([])] * 5,  # more empty frames than max_bad_frames allows bad ones
    ]
    batches: list[Batch] = []
    options = SocketOptions(
        protocol=Multi, buffer=BufferConfig(always_buffer=True), max_bad_frames=1
    )
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends(*frames))
        async with open_socket(connector, tenant_id="a", options=options) as sock:
            await collect_then_close(sock, batches, after=10)
        server.cancel_scope.cancel()
    assert sock.frames_received == 8
    assert sock.buffer.stats.received == 4  # two chats.update (merged), x, x
    assert sock.buffer.stats.merged == 1
    assert sum(sock.rejected.values()) == sock.rejected[RejectReason.INVALID_EVENT] == 1
    assert sock.close_reason is not None
    assert sock.close_reason.message == "done"  # not a flood of bad frames
    assert events_of(batches) == [("chats.update", {"id": 1, "a": 1, "b": 2}), ("x", 1), ("x", 2)]


def yielding(*items: object) -> Callable[[Socket], Any]:
    """A session factory whose decode yields *items* for every frame (a generator)."""

    class Yielding(Multi):
        def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
            yield from items  # type: ignore[misc]

    return Yielding


@pytest.mark.parametrize("event_type", [None, 7, b"x", "", ["a"]], ids=repr)
async def test_an_event_type_from_the_peer_that_is_no_string_is_a_counted_rejection(
    autojump_clock: trio.testing.MockClock, event_type: object
) -> None:
    """A gateway's ``t`` field is the peer's: whatever it holds, the socket survives."""
    batches: list[Batch] = []
    options = SocketOptions(protocol=yielding(("a", 1), (event_type, 2), ("b", 3)))
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends("frame"))
        async with open_socket(connector, tenant_id="a", options=options) as sock:
            await collect_then_close(sock, batches, after=10)
        server.cancel_scope.cancel()
    assert events_of(batches) == [("a", 1), ("b", 3)]
    assert sum(sock.rejected.values()) == sock.rejected[RejectReason.INVALID_EVENT] == 1
    assert sock.close_reason is not None
    assert sock.close_reason.message == "done"


@pytest.mark.parametrize("item", [("x",), "ab", 5, ("a", 1, 2), {"a": 1, "b": 2}], ids=repr)
async def test_a_decode_that_yields_no_pair_is_a_bug_said_plainly(
    autojump_clock: trio.testing.MockClock, item: object
) -> None:
    """Events of the frame before the bad item are delivered once; the bug is re-raised."""
    batches: list[Batch] = []
    options = SocketOptions(protocol=yielding(("a", 1), item, ("b", 2)))
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends("frame"))
        with pytest.raises(TypeError, match=r"^decode yielded \w+, not an \(event type, data\)"):
            async with open_socket(connector, tenant_id="a", options=options) as sock:
                await collect_then_close(sock, batches, after=10)
        server.cancel_scope.cancel()
    assert events_of(batches) == [("a", 1)]
    assert (sock.buffer.stats.received, sock.buffer.stats.delivered) == (1, 1)


# -- 2. protocol state per connection -------------------------------------------------


class Counting:
    """A stateful session: numbers the frames of its own connection (as a decompressor keeps
    its window, or a gateway its sequence number)."""

    made: list[Counting] = []  # noqa: RUF012 - reset by each test that reads it

    def __init__(self, sock: Socket) -> None:
        self.count = 0
        self.started = sock.frames_received
        Counting.made.append(self)

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        self.count += 1
        return (("n", self.count),)

    def encode(self, event_type: str, data: Any) -> str:
        return json.dumps(data)


async def test_each_connection_gets_a_fresh_session_before_its_first_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Counting.made = []
    entered: list[int] = []

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for _ in range(3):
            await ws.send_message("frame")
        await trio.sleep(1)
        await ws.aclose(code=4000)

    async def handler(sock: Socket) -> None:
        entered.append(len(Counting.made))
        await trio.sleep_forever()

    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0.0))
    options = SocketOptions(protocol=Counting)
    with trio.fail_after(60):
        async with trio.open_nursery() as server, open_hub() as hub:
            await hub.add(
                TenantSpec(
                    "a", MemoryConnector(server, serve), handler, policy=policy, options=options
                )
            )
            await trio.sleep(10)  # connections of 1 s, 1 s apart
            await hub.remove("a")
            server.cancel_scope.cancel()
    assert entered[:3] == [1, 2, 3]  # each session made before its connection's body ran
    assert [session.started for session in Counting.made] == [0] * len(Counting.made)
    assert [session.count for session in Counting.made[:3]] == [3, 3, 3]  # none carried over


async def async_factory(sock: Socket) -> JsonProtocol:
    return JsonProtocol()


class Shared:
    """A session object with decode and encode that is not a factory."""

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        return ()

    def encode(self, event_type: str, data: Any) -> str:
        return ""


class SelfFactory(Shared):
    def __call__(self, sock: Socket) -> SelfFactory:
        return self


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        (object(), "protocol must be a session factory .*got object"),
        (Shared(), "protocol must be a session factory.*Shared has decode.*not callable"),
        (JsonProtocol, "protocol must be a session factory; got the class JsonProtocol"),
        (SelfFactory, "protocol must be a session factory; got the class SelfFactory, whose inst"),
        (dict, "protocol must make sessions .*; the class dict has no decode\\(\\) or enc"),
        (async_factory, "protocol must be a plain function .*, not an async one: .*start_soon"),
        (
            functools.partial(async_factory),
            "protocol must be a plain function .*, not an async one",
        ),
    ],
    ids=["object", "session", "JsonProtocol", "factory class", "class", "async", "async partial"],
)
def test_a_protocol_that_is_no_session_factory_is_refused_by_name(
    protocol: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=f"^{message}"):
        SocketOptions(protocol=protocol)


@pytest.mark.parametrize(
    "protocol",
    [JsonProtocol(), Multi, SelfFactory(), lambda sock: JsonProtocol(), functools.partial(Multi)],
    ids=["JsonProtocol()", "class", "callable", "function", "partial"],
)
def test_session_factories_are_accepted(protocol: Any) -> None:
    assert SocketOptions(protocol=protocol).protocol is protocol


@pytest.mark.parametrize(
    ("factory", "error", "message"),
    [
        (lambda sock: None, TypeError, r"^protocol.*protocol\(sock\) returned NoneType"),
        (lambda sock: 1 / 0, ZeroDivisionError, "division by zero"),
        (
            lambda sock: async_factory(sock),  # noqa: PLW0108 - a plain function returning a coroutine
            TypeError,
            r"^protocol\(sock\) returned a coroutine: a session factory is a plain function",
        ),
    ],
    ids=["no session", "raises", "coroutine"],
)
async def test_a_broken_session_factory_fails_at_connect_as_a_user_bug(
    autojump_clock: trio.testing.MockClock, factory: Any, error: type[Exception], message: str
) -> None:
    body_ran = False
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends(json.dumps({"type": "x", "data": 1})))
        before = living_tasks()
        with pytest.raises(error, match=message):
            async with open_socket(
                connector, tenant_id="a", options=SocketOptions(protocol=factory)
            ):
                body_ran = True  # pragma: no cover - the block is not entered
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        server.cancel_scope.cancel()
    assert not body_ran


async def test_in_a_hub_a_broken_session_factory_is_a_failure_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0.0), fail_max=3)
    async with trio.open_nursery() as server, open_hub() as hub:
        not_a_factory: Any = lambda sock: "not a session"  # noqa: E731
        options = SocketOptions(protocol=not_a_factory)
        connector = MemoryConnector(server, sends())
        await hub.add(TenantSpec("a", connector, idle_handler, policy=policy, options=options))
        await hub.add(TenantSpec("b", MemoryConnector(server, sends()), idle_handler))
        await trio.sleep(10)
        status = {s.tenant_id: s for s in hub.status()}
        assert status["a"].breaker is BreakerState.OPEN  # failures, as a handler's bug
        assert status["a"].last_disconnect is not None
        assert "protocol(sock) returned str" in status["a"].last_disconnect.message
        assert status["b"].connections == 1  # the other tenant never noticed
        await hub.remove("a")
        await hub.remove("b")
        server.cancel_scope.cancel()


async def idle_handler(sock: Socket) -> None:
    await trio.sleep_forever()


# -- 3. the control path ----------------------------------------------------------------


async def test_send_frame_writes_raw_frames_in_order_with_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[str | bytes] = []

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, recording(received))
        async with open_socket(connector, tenant_id="a") as sock:
            await sock.send_frame("raw")
            await sock.send("t", 1)
            await sock.send_frame(b"\x00\x01")
            with pytest.raises(TypeError, match=r"^frame must be str or bytes, got dict"):
                await sock.send_frame({"type": "t"})  # type: ignore[arg-type]
            await trio.sleep_forever()
        with pytest.raises(SocketClosed):
            await sock.send_frame("too late")
        server.cancel_scope.cancel()
    assert received == ["raw", '{"type":"t","data":1}', b"\x00\x01"]


class _Echo:
    """A session that answers every frame ``n`` with replies ``n.0``, ``n.1``, ``n.2``."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock

    def decode(self, frame: str | bytes) -> tuple[tuple[str, object], ...]:
        for part in range(3):
            self.sock.reply(f"{frame!s}.{part}")
        return ()

    def encode(self, event_type: str, data: object) -> str:
        return event_type


async def test_replies_from_decode_go_out_in_order(autojump_clock: trio.testing.MockClock) -> None:
    received: list[str | bytes] = []

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, recording(received, *map(str, range(20))))
        options = SocketOptions(protocol=_Echo, max_pending_sends=2)
        async with open_socket(connector, tenant_id="a", options=options) as sock:
            with pytest.raises(TypeError, match=r"^frame must be str or bytes, got int"):
                sock.reply(1)  # type: ignore[arg-type]
            await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert received == [f"{n}.{part}" for n in range(20) for part in range(3)]


async def test_a_flood_of_requests_waits_for_its_replies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader reads no further while more than max_pending_sends replies wait."""
    queued: list[int] = []

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for n in range(50):
            await ws.send_message(str(n))
        await trio.sleep(1)
        while True:
            await ws.get_message()  # the replies leave only now: the peer reads slowly
            await trio.sleep(1)

    class Watched(_Echo):
        def decode(self, frame: str | bytes) -> tuple[tuple[str, object], ...]:
            replies = self.sock._replies  # the bound under test
            queued.append(0 if replies is None else len(replies))
            return super().decode(frame)

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, serve)
        options = SocketOptions(protocol=Watched, max_pending_sends=4)
        async with open_socket(connector, tenant_id="a", options=options):
            with trio.move_on_after(30):
                await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert len(queued) > 10
    assert max(queued) <= 4 + 3  # at most the bound, plus one frame's replies


async def test_a_task_ends_with_its_socket_and_its_bug_is_reraised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks: list[float] = []

    async def tick(sock: Socket, every: float) -> None:
        while True:  # a heartbeat: ends when its socket closes
            await trio.sleep(every)
            ticks.append(trio.current_time())
            await sock.send_frame("tick")

    async def broken() -> None:
        await trio.sleep(10)
        raise ZeroDivisionError("task bug")

    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends())
        before = living_tasks()
        start = trio.current_time()
        sockets: list[Socket] = []

        async def run() -> None:
            async with open_socket(connector, tenant_id="a") as sock:
                sockets.append(sock)
                sock.start_soon(tick, sock, 3.0)
                sock.start_soon(broken)
                with pytest.raises(TypeError, match=r"^async_fn must be an async function"):
                    sock.start_soon(print)  # type: ignore[arg-type]
                await trio.sleep_forever()

        with pytest.raises(ZeroDivisionError, match="task bug"):
            await run()
        [sock] = sockets
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        server.cancel_scope.cancel()
    assert [t - start for t in ticks] == [3.0, 6.0, 9.0]
    assert sock.close_reason is not None
    assert "ZeroDivisionError in user code: task bug" in sock.close_reason.message


async def test_start_soon_after_the_socket_ended_raises_socket_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As `send_frame` does: a stale socket says it is closed, and why."""
    async with trio.open_nursery() as server:
        async with open_socket(MemoryConnector(server, sends()), tenant_id="a") as sock:
            sock.close("done")
        with pytest.raises(SocketClosed, match="done") as closed:
            sock.start_soon(trio.sleep, 1)
        server.cancel_scope.cancel()
    assert closed.value.reason is sock.close_reason


async def test_a_task_stopped_by_its_own_sockets_close_ends_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[int] = []

    async def keep_sending(sock: Socket) -> None:
        for n in itertools.count():
            await sock.send_frame(str(n))  # raises SocketClosed once the peer has closed
            sent.append(n)
            await trio.sleep(1)

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await trio.sleep(3.5)
        await ws.aclose(code=4503)

    async with trio.open_nursery() as server:
        async with open_socket(MemoryConnector(server, serve), tenant_id="a") as sock:
            sock.start_soon(keep_sending, sock)
            await trio.sleep_forever()
        server.cancel_scope.cancel()
    assert sent == [0, 1, 2, 3]
    assert sock.close_reason is not None
    assert (sock.close_reason.code, sock.close_reason.remote) == (503, True)


class Gateway:
    """A small gateway session, as a user would write one.

    Frames are JSON ``{"op", "t", "s", "d"}``: hello (10) with the heartbeat
    interval, answered with identify (2) and a heartbeat loop (1, with the
    last sequence number); heartbeat acks (11); dispatches (0) with a
    sequence number, whose READY declares the connection healthy. Only the
    other dispatches are application events.
    """

    def __init__(self, sock: Socket, *, ready_is_healthy: bool = True) -> None:
        self.sock = sock
        self.ready_is_healthy = ready_is_healthy
        self.seq: int | None = None
        self.acked = True

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        try:
            message = json.loads(frame)
            op = message["op"]
        except (ValueError, TypeError, KeyError):
            raise FrameRejected(RejectReason.BAD_SHAPE, repr(frame[:40])) from None
        if op == 10:
            identify = json.dumps({"op": 2, "d": {"token": "t"}})
            self.sock.start_soon(self.sock.send_frame, identify)
            self.sock.start_soon(self.heartbeat, message["d"]["heartbeat_interval"])
        elif op == 11:
            self.acked = True
        elif op == 0:
            self.seq = message["s"]
            if message["t"] != "READY":
                return ((message["t"], message["d"]),)
            if self.ready_is_healthy:
                self.sock.mark_healthy()
        return ()

    def encode(self, event_type: str, data: Any) -> str:
        return json.dumps({"op": 0, "t": event_type, "d": data})

    async def heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if not self.acked:
                self.sock.close("zombie connection: no heartbeat ack")
                return
            self.acked = False
            await self.sock.send_frame(json.dumps({"op": 1, "d": self.seq}))


def dispatch(seq: int, event_type: str, data: Any) -> str:
    return json.dumps({"op": 0, "t": event_type, "s": seq, "d": data})


class GatewayServer:
    """The server side: hello, identify within 2 s, heartbeats within 1.5 intervals (else
    close 4009), READY, then *events* dispatches 3 s apart, then a quiet minute and close 4000."""

    def __init__(self, events: int, *, interval: float = 4.0) -> None:
        self.events = events
        self.interval = interval
        self.received: list[Any] = []
        self.close_code: int | None = None

    async def serve(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(json.dumps({"op": 10, "d": {"heartbeat_interval": 4.0}}))
            with trio.move_on_after(2):
                self.received.append(json.loads(await ws.get_message()))
            if self.received[-1:] != [{"op": 2, "d": {"token": "t"}}]:
                await self.close(ws, 4004)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.answer_heartbeats, ws, nursery.cancel_scope)
                await ws.send_message(dispatch(1, "READY", {}))
                for n in range(self.events):
                    await trio.sleep(3)
                    await ws.send_message(dispatch(n + 2, "app.event", {"n": n}))
                await trio.sleep(60)
                nursery.cancel_scope.cancel()
            await self.close(ws, 4000)
        except trio_websocket.ConnectionClosed:
            pass

    async def answer_heartbeats(
        self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope
    ) -> None:
        while True:
            with trio.move_on_after(1.5 * self.interval):
                self.received.append(json.loads(await ws.get_message()))
                await ws.send_message(json.dumps({"op": 11}))
                continue
            scope.cancel()
            await self.close(ws, 4009)  # a client that missed its heartbeat
            return

    async def close(self, ws: trio_websocket.WebSocketConnection, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        await ws.aclose(code=code)


async def test_a_gateway_session_handles_control_frames_as_they_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With always_buffer=True, hello, identify and heartbeats never wait for a flush."""
    gateway = GatewayServer(events=30)
    batches: list[Batch] = []
    options = SocketOptions(protocol=Gateway, buffer=BufferConfig(always_buffer=True))
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, gateway.serve)
        async with (
            open_socket(connector, tenant_id="a", options=options) as sock,
            sock.events.subscribe() as channel,
        ):
            await collect(channel, batches)
        server.cancel_scope.cancel()
    assert gateway.close_code == 4000  # the server's own end, after a minute's silence
    assert sock.close_reason is not None
    assert sock.close_reason.remote
    assert sock.healthy
    assert events_of(batches) == [("app.event", {"n": n}) for n in range(30)]
    assert sock.buffer.stats.received == 30  # control frames never enter the buffer
    assert sock.frames_received >= 2 + 30 + 35  # hello, READY, dispatches, acks
    assert gateway.received[0] == {"op": 2, "d": {"token": "t"}}
    heartbeats = gateway.received[1:]
    assert len(heartbeats) >= (30 * 3 + 60) // 4 - 1
    assert heartbeats[-1] == {"op": 1, "d": 31}


# -- 4. a connection declared healthy -----------------------------------------------------

CLOSED_503 = DisconnectReason(ReasonCode.UNAVAILABLE_SERVICE, "scripted")


def test_a_healthy_connection_resets_failures_and_breaker_at_once() -> None:
    clock = FakeClock()
    machine = ReconnectPolicy(backoff=Backoff(jitter=0), fail_max=3).reconnector(clock=clock)
    assert not machine.healthy()  # no live connection: nothing to declare
    for _ in range(3):
        machine.disconnected(CLOSED_503)
    assert (machine.failures, machine.breaker.state) == (3, BreakerState.OPEN)
    clock.now += 60  # half-open: one attempt
    machine.connected()
    assert machine.breaker.state is BreakerState.HALF_OPEN
    clock.now += 1
    assert machine.healthy()
    assert (machine.failures, machine.breaker.state) == (0, BreakerState.CLOSED)
    assert machine.stable_at is None
    assert not machine.healthy()  # once per connection
    clock.now += 1  # long before stable_after
    step = machine.disconnected(CLOSED_503)
    assert not step.failure
    assert (step.failures, step.delay) == (0, 1)
    machine.connected()  # the next connection starts unproven again
    assert machine.disconnected(CLOSED_503).failure


def cycling_server(ready_every: float) -> Server:
    """A gateway that says hello and READY, then ends the session after *ready_every* s."""

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(json.dumps({"op": 10, "d": {"heartbeat_interval": 100.0}}))
            await ws.send_message(dispatch(1, "READY", {}))
            await trio.sleep(ready_every)
            await ws.aclose(code=4000)
        except trio_websocket.ConnectionClosed:
            pass

    return serve


@pytest.mark.parametrize("ready_is_healthy", [True, False])
async def test_sessions_cycled_every_2_s_open_the_breaker_only_without_health(
    autojump_clock: trio.testing.MockClock, ready_is_healthy: bool
) -> None:
    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0.0), fail_max=5, stable_after=30)
    options = SocketOptions(protocol=functools.partial(Gateway, ready_is_healthy=ready_is_healthy))
    async with trio.open_nursery() as server, open_hub() as hub:
        connector = MemoryConnector(server, cycling_server(2.0))
        await hub.add(TenantSpec("a", connector, idle_handler, policy=policy, options=options))
        await trio.sleep(120)
        [status] = hub.status()
        await hub.remove("a")
        server.cancel_scope.cancel()
    if ready_is_healthy:
        assert status.breaker_trips == 0
        assert status.failures == 0
        assert status.connections == 40  # one every 3 s: 2 s up, 1 s backoff
    else:
        assert status.breaker_trips >= 1
        assert status.connections < 20


async def test_health_shows_in_the_status_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """Failures from before reset when READY arrives, long before stable_after."""
    ready = trio.Event()
    attempts = itertools.count()

    async def serve(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        if next(attempts) < 3:
            await ws.aclose(code=4503)  # three failures first
            return
        await trio.sleep(5)
        await ws.send_message(dispatch(1, "READY", {}))
        await ready.wait()
        await trio.sleep_forever()

    class Watched(Gateway):
        def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
            events = super().decode(frame)
            if self.sock.healthy:
                ready.set()
            return events

    policy = ReconnectPolicy(backoff=Backoff((1.0,), jitter=0.0), stable_after=30)
    options = SocketOptions(protocol=Watched)
    async with trio.open_nursery() as server, open_hub() as hub:
        connector = MemoryConnector(server, serve)
        await hub.add(TenantSpec("a", connector, idle_handler, policy=policy, options=options))
        await trio.sleep(4)
        [before] = hub.status()
        connected_at = trio.current_time()
        await ready.wait()
        [after] = hub.status()
        assert trio.current_time() - connected_at < 30
        await hub.remove("a")
        server.cancel_scope.cancel()
    assert before.failures == 3
    assert after.failures == 0
    assert after.breaker is BreakerState.CLOSED


async def test_a_socket_declared_healthy_after_its_end_tells_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stale socket kept by user code cannot vouch for its tenant's next connection."""
    told: list[str] = []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends())
        async with open_socket(
            connector, tenant_id="a", on_healthy=lambda: told.append("during")
        ) as sock:
            assert not sock.healthy
        sock.mark_healthy()
        server.cancel_scope.cancel()
    assert sock.healthy
    assert told == []
    async with trio.open_nursery() as server:
        connector = MemoryConnector(server, sends())
        async with open_socket(
            connector, tenant_id="a", on_healthy=lambda: told.append("during")
        ) as sock:
            sock.mark_healthy()
            sock.mark_healthy()  # once
        server.cancel_scope.cancel()
    assert told == ["during"]
