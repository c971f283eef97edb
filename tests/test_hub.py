"""The hub and its tenants' supervisors, deterministic under MockClock with FakeUpstream."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ws_events

from helpers import Handler, Peer, collector, idle, living_tasks
from tenantry import (
    Backoff,
    Batch,
    BreakerState,
    BufferConfig,
    CacheSpec,
    Decision,
    DisconnectReason,
    Hub,
    ReconnectPolicy,
    Socket,
    SocketOptions,
    TenantSpec,
    TenantState,
    open_hub,
)
from tenantry._tenant import Tenant
from tenantry.testing import FakeUpstream, MemoryConnector, open_fake_upstream


def spec(upstream: FakeUpstream, tenant_id: str = "a", **kwargs: Any) -> TenantSpec:
    kwargs.setdefault("handler", idle)
    return TenantSpec(tenant_id, upstream.connector_to(f"/{tenant_id}"), **kwargs)


@asynccontextmanager
async def running(**hub_kwargs: Any) -> AsyncIterator[tuple[FakeUpstream, Hub]]:
    async with open_fake_upstream() as upstream, open_hub(seed=1, **hub_kwargs) as hub:
        yield upstream, hub


def connect_times(upstream: FakeUpstream, times: list[float]) -> Callable[[], Awaitable[None]]:
    """A task recording when each connection to the upstream arrives."""

    async def watch() -> None:
        while True:
            await upstream.wait_connections(len(times) + 1)
            times.append(trio.current_time())

    return watch


def state(hub: Hub, tenant_id: str = "a") -> TenantState:
    return next(s.state for s in hub.status() if s.tenant_id == tenant_id)


async def test_a_tenant_connects_and_delivers(autojump_clock: trio.testing.MockClock) -> None:
    batches: list[Batch] = []
    async with running() as (upstream, hub):
        await hub.add(spec(upstream, handler=collector(batches)))
        connection = await upstream.wait_connections(1, path="/a")
        await connection.stream(10, keys=10)
        await trio.sleep(6)  # one auto-flush
        assert sum(b.count for b in batches) == 10
        [status] = hub.status()
        assert status.state is TenantState.CONNECTED
        assert status.connections == 1
        assert status.buffer is not None
        assert status.buffer.received == 10
        assert hub.gauges.sockets_alive == 1


async def test_accept_then_close_gets_growing_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    async with running() as (upstream, hub), trio.open_nursery() as watchers:
        watchers.start_soon(connect_times(upstream, times))
        policy = ReconnectPolicy(backoff=Backoff(jitter=0), fail_max=100)
        await hub.add(spec(upstream, policy=policy))
        for n in range(1, 8):
            connection = await upstream.wait_connections(n)
            await connection.close(4503)
        await upstream.wait_connections(8)
        watchers.cancel_scope.cancel()
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [1, 2, 5, 10, 20, 30, 30]


async def test_backoff_jitter_stays_within_bounds_and_is_seeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def run() -> list[float]:
        times: list[float] = []
        async with running() as (upstream, hub), trio.open_nursery() as watchers:
            watchers.start_soon(connect_times(upstream, times))
            await hub.add(spec(upstream))
            for n in range(1, 5):
                await (await upstream.wait_connections(n)).close(4503)
            await upstream.wait_connections(5)
            watchers.cancel_scope.cancel()
        return [b - a for a, b in itertools.pairwise(times)]

    gaps = await run()
    for failures, gap in enumerate(gaps, start=1):
        low, high = Backoff().bounds(failures)
        assert low <= gap <= high
    assert gaps == pytest.approx(await run(), abs=1e-9)


@pytest.mark.parametrize("code", [4401, 4403, 4440])
async def test_stop_codes_stop_until_restarted(
    autojump_clock: trio.testing.MockClock, code: int
) -> None:
    async with running() as (upstream, hub):
        await hub.add(spec(upstream))
        await (await upstream.wait_connections(1)).close(code)
        await trio.sleep(3600)
        assert len(upstream.connections) == 1
        assert state(hub) is TenantState.STOPPED
        [status] = hub.status()
        assert status.last_disconnect is not None
        assert status.last_disconnect.code == code - 4000
        await hub.restart("a")
        await upstream.wait_connections(2)
        await trio.testing.wait_all_tasks_blocked()
        assert state(hub) is TenantState.CONNECTED


async def test_a_close_code_reaches_the_status_as_a_plain_int(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (upstream, hub):
        await hub.add(spec(upstream))
        await (await upstream.wait_connections(1)).close(1011)  # wsproto's CloseReason member
        await trio.testing.wait_all_tasks_blocked()
        [status] = hub.status()
        assert status.last_disconnect is not None
        assert status.last_disconnect.code == 1011
        assert type(status.last_disconnect.code) is int


async def test_restart_required_reconnects_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []
    async with running() as (upstream, hub), trio.open_nursery() as watchers:
        watchers.start_soon(connect_times(upstream, times))
        await hub.add(spec(upstream))
        await trio.sleep(100)  # a stable connection
        await (await upstream.wait_connections(1)).stream_error(515)
        await upstream.wait_connections(2)
        watchers.cancel_scope.cancel()
    assert times[1] - times[0] == pytest.approx(100)


async def test_the_breaker_opens_after_five_failed_handshakes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (upstream, hub):
        for _ in range(6):
            upstream.reject_next(500)
        start = trio.current_time()
        await hub.add(spec(upstream))
        await trio.sleep(25)  # backoff 1 + 2 + 5 + 10 s, +15 % at most: five failures by now
        [status] = hub.status()
        assert (status.state, status.breaker) == (TenantState.CIRCUIT_OPEN, BreakerState.OPEN)
        assert (status.failures, status.connections, status.breaker_trips) == (5, 0, 1)
        assert hub.metrics().value("tenantry_breaker_trips_total", tenant="a") == 1
        assert status.next_retry_at is not None
        opened = status.next_retry_at - 60  # after the fifth failure: 18 s +- 15 %
        assert start + 18 * 0.85 <= opened <= start + 18 * 1.15
        # the half-open trial is rejected too: open again for another 60 s
        await trio.sleep_until(status.next_retry_at + 1)
        [status] = hub.status()
        assert (status.state, status.breaker, status.failures) == (
            TenantState.CIRCUIT_OPEN,
            BreakerState.OPEN,
            6,
        )
        assert status.breaker_trips == 2
        connection = await upstream.wait_connections(1)
        assert trio.current_time() - start > 120
        assert connection.path == "/a"


async def test_metrics_see_the_breaker_close_once_the_trial_connection_is_stable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (upstream, hub):
        for _ in range(2):
            upstream.reject_next(500)
        await hub.add(spec(upstream, policy=ReconnectPolicy(fail_max=2)))
        await upstream.wait_connections(1)  # the half-open trial, after the breaker's 60 s
        assert hub.metrics().value("tenantry_breaker_state", tenant="a") == 2  # half-open
        await trio.sleep(3600)  # an hour-old healthy connection; nobody asked for a status
        assert hub.metrics().value("tenantry_breaker_state", tenant="a") == 0  # closed
        [status] = hub.status()
        assert (status.breaker, status.failures) == (BreakerState.CLOSED, 0)


async def test_restart_closes_and_reconnects_without_counting_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches: list[Batch] = []
    config = BufferConfig(always_buffer=True)
    async with running() as (upstream, hub):
        await hub.add(
            spec(upstream, handler=collector(batches), options=SocketOptions(buffer=config))
        )
        first = await upstream.wait_connections(1)
        await first.stream(5, keys=5)
        await trio.testing.wait_all_tasks_blocked()
        await hub.restart("a")
        assert first.ended or hub.status()[0].state is not TenantState.CONNECTED
        assert sum(b.count for b in batches) == 5  # the final flush reached the subscriber
        await upstream.wait_connections(2)
        [status] = hub.status()
        assert status.failures == 0
        assert hub.metrics().value("tenantry_reconnects_total") == 0


async def test_a_raising_handler_is_contained_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def broken(sock: Socket) -> None:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("handler bug")

    healthy: list[Batch] = []
    async with running() as (upstream, hub), trio.open_nursery() as script:
        await hub.add(spec(upstream, "good", handler=collector(healthy)))
        with caplog.at_level(logging.ERROR, logger="tenantry.tenant"):
            await hub.add(spec(upstream, "bad", handler=broken))
            good = await upstream.wait_connections(1, path="/good")
            script.start_soon(functools.partial(good.stream, 600, rate=1.0))
            await trio.sleep(300)
        [bad] = [s for s in hub.status() if s.tenant_id == "bad"]
        assert calls >= 5
        assert bad.failures == calls
        assert bad.breaker in (BreakerState.OPEN, BreakerState.HALF_OPEN)
        [good_status] = [s for s in hub.status() if s.tenant_id == "good"]
        assert good_status.connections == 1
        assert sum(b.count for b in healthy) >= 290
        script.cancel_scope.cancel()
    assert "ZeroDivisionError: handler bug" in caplog.text  # the traceback was logged


async def test_a_raising_decide_is_logged_and_the_default_decision_applies(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def decide(reason: DisconnectReason) -> Decision:
        if reason.code == 503:
            raise ZeroDivisionError("policy bug")
        return None  # type: ignore[return-value]

    async with running() as (upstream, hub):
        await hub.add(spec(upstream, "good"))
        await hub.add(spec(upstream, "bad", policy=ReconnectPolicy(decide=decide)))
        with caplog.at_level(logging.ERROR, logger="tenantry"):
            await (await upstream.wait_connections(1, path="/bad")).close(4503)
            await (await upstream.wait_connections(2, path="/bad")).close(4500)
            await upstream.wait_connections(3, path="/bad")  # the default decisions: reconnect
        assert "ZeroDivisionError: policy bug" in caplog.text
        assert "TypeError: decide returned NoneType, not a Decision" in caplog.text
        await trio.sleep(3600)
        assert [s.connections for s in hub.status()] == [1, 3]


class Hanging:
    """A connector whose handshake never completes."""

    def open(
        self, *, headers: Any, max_message_size: int
    ) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        @asynccontextmanager
        async def hang() -> AsyncIterator[trio_websocket.WebSocketConnection]:
            await trio.sleep_forever()
            yield  # pragma: no cover

        return hang()


class StatesAgainstGauges(trio.abc.Instrument):
    """After every task step: tenants connected or closing == sockets alive == buffers alive."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.mismatches: list[tuple[float, float, float, float]] = []
        self.seen: set[str] = set()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        m = self.hub.metrics()
        self.seen.update(s.value for s in TenantState if m.value("tenantry_tenants", state=s.value))
        live = sum(m.value("tenantry_tenants", state=s) for s in ("connected", "closing"))
        sockets, buffers = m.value("tenantry_sockets_alive"), m.value("tenantry_buffers_alive")
        if not live == sockets == buffers:
            self.mismatches.append((trio.current_time(), live, sockets, buffers))


async def test_state_and_gauges_agree_at_every_instant_of_every_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(sock: Socket) -> None:  # the ordered shutdown waits for it to drain
        async with sock.events.subscribe() as batches:
            async for _ in batches:
                await trio.sleep(1)

    async def returns(sock: Socket) -> None:
        await trio.sleep(2)

    config = BufferConfig(always_buffer=True)
    handlers = {"remote": slow, "restart": slow, "remove": slow, "returns": returns, "exit": slow}
    async with open_fake_upstream() as upstream:
        async with open_hub(seed=1) as hub:
            check = StatesAgainstGauges(hub)
            trio.lowlevel.add_instrument(check)
            for tenant, handler in handlers.items():
                await hub.add(
                    spec(upstream, tenant, handler=handler, options=SocketOptions(buffer=config))
                )
            for tenant in handlers:
                await (await upstream.wait_connections(1, path=f"/{tenant}")).stream(3)
            await (await upstream.wait_connections(1, path="/remote")).close(4503)
            await hub.restart("restart")
            await hub.remove("remove")
            await upstream.wait_connections(2, path="/returns")
            await upstream.wait_connections(2, path="/remote")
            await (await upstream.wait_connections(1, path="/exit")).stream(3)
        trio.lowlevel.remove_instrument(check)
    assert check.mismatches == []
    assert {"connecting", "connected", "closing", "backing_off"} <= check.seen


@pytest.mark.parametrize("when", ["connected", "connecting", "backing off", "stopped"])
async def test_remove_leaves_nothing_and_nothing_follows(
    autojump_clock: trio.testing.MockClock, when: str
) -> None:
    batches: list[Batch] = []
    async with running() as (upstream, hub):
        before = living_tasks()
        if when == "connecting":
            await hub.add(TenantSpec("a", Hanging(), handler=idle))
        else:
            config = BufferConfig(always_buffer=True)
            await hub.add(
                spec(upstream, handler=collector(batches), options=SocketOptions(buffer=config))
            )
            connection = await upstream.wait_connections(1)
            await connection.stream(7, keys=7)
            if when == "backing off":
                await connection.close(4503)
            elif when == "stopped":
                await connection.close(4401)
        await trio.sleep(0.5)
        await hub.remove("a")
        assert hub.status() == []
        assert living_tasks() == before
        assert (hub.gauges.sockets_alive, hub.gauges.buffers_alive) == (0, 0)
        await trio.sleep(3600)
        assert len(upstream.connections) == (0 if when == "connecting" else 1)
        if when != "connecting":
            assert sum(b.count for b in batches) == 7
        with pytest.raises(KeyError, match="no tenant 'a'"):
            await hub.remove("a")


@pytest.mark.parametrize("abort", [True, False])
async def test_remove_with_abort_ends_the_connection_before_the_drain(
    autojump_clock: trio.testing.MockClock, abort: bool
) -> None:
    received: list[float] = []

    async def slow(sock: Socket) -> None:
        async with sock.events.subscribe() as batches:
            async for _ in batches:
                await trio.sleep(2.0)
                received.append(trio.current_time())

    async with running() as (upstream, hub):
        options = SocketOptions(buffer=BufferConfig(always_buffer=True))
        await hub.add(spec(upstream, handler=slow, options=options))
        connection = await upstream.wait_connections(1)
        await connection.stream(3, keys=3)
        await trio.sleep(0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(hub.remove, "a", abort=abort))
            await trio.sleep(0.001)
            assert connection.ended is abort  # gone from the peer's side while the drain goes on
            assert hub.tenant_ids == ["a"]
        assert connection.ended
        assert len(received) == 1  # the final batch was delivered all the same


async def test_tenant_ids_are_unique(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (upstream, hub):
        await hub.add(spec(upstream))
        with pytest.raises(ValueError, match="tenant 'a' is already on the hub"):
            await hub.add(spec(upstream))
        await hub.remove("a")
        await hub.add(spec(upstream))  # a removed id can come back
        assert hub.tenant_ids == ["a"]


async def test_an_add_takes_two_scheduler_passes_and_the_id_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    passes = 0

    async def count_passes() -> None:
        nonlocal passes
        while True:  # runnable at every pass, so it runs once in each
            passes += 1
            await trio.sleep(0)  # noqa: ASYNC115 - one step per scheduler pass

    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_passes)
            await trio.sleep(0)  # noqa: ASYNC115 - the counter has begun
            before = passes
            for n in range(20):
                await hub.add(spec(upstream, f"t{n}"))
            # The tenant starts from the caller's task: its first step, then the caller's.
            assert passes - before <= 2 * 20 + 1
            nursery.cancel_scope.cancel()
        errors: list[str] = []

        async def add() -> None:
            try:
                await hub.add(spec(upstream))
            except ValueError as error:
                errors.append(str(error))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add)
            nursery.start_soon(add)
        assert errors == ["tenant 'a' is already on the hub"]
        assert hub.tenant_ids == [*(f"t{n}" for n in range(20)), "a"]
    with pytest.raises(trio.ClosedResourceError, match="the hub is closing"):
        await hub.add(spec(upstream, "late"))
    assert hub.tenant_ids == []


async def test_hub_exit_with_100_tenants_leaves_zero_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_upstream() as upstream:
        before = living_tasks()
        async with open_hub(seed=1) as hub:
            for n in range(100):
                await hub.add(spec(upstream, f"t{n}", handler=collector([])))
            await upstream.wait_connections(100)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.gauges.sockets_alive == 100
            gauges = hub.gauges
        await trio.testing.wait_all_tasks_blocked()
        assert living_tasks() == before
        assert (gauges.sockets_alive, gauges.buffers_alive) == (0, 0)
        assert all(c.ended for c in upstream.connections)


async def test_tenant_caches_survive_reconnects_and_die_with_the_tenant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Socket] = []

    async def remember(sock: Socket) -> None:
        seen.append(sock)
        assert sock.tenant_caches is not None
        assert sock.global_caches is not None
        sock.tenant_caches["signal_store"].set(len(seen), "x")
        sock.global_caches["lid_global"].set(("a", len(seen)), "y")
        await trio.sleep_forever()

    async with running() as (upstream, hub):
        await hub.add(spec(upstream, handler=remember))
        await (await upstream.wait_connections(1)).close(4503)
        await upstream.wait_connections(2)
        await trio.testing.wait_all_tasks_blocked()
        tenant_caches = seen[1].tenant_caches
        assert tenant_caches is seen[0].tenant_caches
        assert tenant_caches is not None
        assert len(tenant_caches["signal_store"]) == 2
        await hub.remove("a")
        assert len(tenant_caches["signal_store"]) == 0
        assert len(hub.global_caches["lid_global"]) == 2
    assert len(hub.global_caches["lid_global"]) == 0


def plain(sock: Socket) -> None:
    pass


class AsyncCallable:
    async def __call__(self, sock: Socket) -> None:
        await trio.sleep_forever()

    async def method(self, sock: Socket) -> None:
        await trio.sleep_forever()


async def with_option(sock: Socket, option: int) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("caches", {"x": {"max_keys": 10}}, TypeError),
        ("caches", "nope", TypeError),
        ("caches", {"": CacheSpec(10)}, ValueError),
        ("handler", plain, TypeError),
        ("handler", lambda sock: None, TypeError),
        ("handler", AsyncCallable, TypeError),  # the class: calling it makes an instance
        ("handler", functools.partial(plain), TypeError),
        ("options", {"keepalive": 1.0}, TypeError),
        ("policy", "nope", TypeError),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_tenant_spec_refuses_what_would_fail_every_attempt(
    field: str, value: Any, error: type[Exception]
) -> None:
    kwargs = {"handler": idle, field: value}
    with pytest.raises(error, match=f"^{field}"):
        TenantSpec("a", "ws://x", **kwargs)


@pytest.mark.parametrize(
    "handler",
    [
        idle,
        AsyncCallable(),
        AsyncCallable().method,
        functools.partial(with_option, option=1),
        functools.partial(functools.partial(AsyncCallable())),
    ],
    ids=["async def", "async __call__", "async method", "partial", "partial of partial"],
)
def test_tenant_spec_takes_every_kind_of_async_handler(handler: Handler) -> None:
    assert TenantSpec("a", "ws://x", handler=handler).handler is handler


async def test_bad_adds_reach_their_caller_and_touch_no_other_tenant(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = Tenant.run

    async def run(self: Tenant, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.tenant_id == "unstartable":
            raise RuntimeError("cannot start")
        await start(self, task_status=task_status)

    monkeypatch.setattr(Tenant, "run", run)
    async with running() as (upstream, hub):
        for tenant in ("good1", "good2"):
            await hub.add(spec(upstream, tenant))
            await upstream.wait_connections(1, path=f"/{tenant}")
        bad_caches, bad_policy = spec(upstream, "bad"), spec(upstream, "bad")
        object.__setattr__(bad_caches, "caches", {"x": {"max_keys": 10}})  # past the checks
        object.__setattr__(bad_policy, "policy", "nope")
        bad_adds = [
            (bad_caches, TypeError, "must be a CacheSpec"),
            (bad_policy, AttributeError, "'str' object has no attribute"),
            (spec(upstream, "unstartable"), RuntimeError, "cannot start"),
            ({"tenant_id": "bad"}, TypeError, "spec must be a TenantSpec, got dict"),
            (spec(upstream, "good1"), ValueError, "already on the hub"),
        ]
        for bad, error, message in bad_adds:
            with pytest.raises(error, match=message):
                await hub.add(bad)  # type: ignore[arg-type]
        await trio.sleep(3600)
        assert hub.tenant_ids == ["good1", "good2"]
        assert [(s.state, s.connections) for s in hub.status()] == [(TenantState.CONNECTED, 1)] * 2
        assert len(upstream.connections) == 2
        assert hub.metrics().value("tenantry_reconnects_total") == 0
        await hub.add(spec(upstream, "bad"))  # the id was never taken
        await upstream.wait_connections(1, path="/bad")


def test_tenant_spec_validation_and_redaction() -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        TenantSpec("", "ws://x", handler=idle)
    with pytest.raises(TypeError, match="connect"):
        TenantSpec("a", 3, handler=idle)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler"):
        TenantSpec("a", "ws://x", handler=None)  # type: ignore[arg-type]
    secret = TenantSpec(
        "a",
        "wss://u:pw@x/?token=abc",
        handler=idle,
        options=SocketOptions(headers={"Authorization": "Bearer s3"}),
    )
    assert "s3" not in repr(secret)
    assert "abc" not in repr(secret)
    assert "pw" not in repr(secret)


async def scripted_incident(upstream: FakeUpstream, tenants: list[str]) -> None:
    """Each tenant's upstream streams 2 events/s; 15 closes with 4503 over 10 minutes."""

    async def feed(tenant: str) -> None:
        served = 0
        while True:
            connection = await upstream.wait_connections(served + 1, path=f"/{tenant}")
            served += 1
            with suppress(trio_websocket.ConnectionClosed):
                await connection.stream(10**9, keys=50, rate=2.0)

    async def faults() -> None:
        for n in range(15):
            await trio.sleep(40)
            tenant = tenants[n % len(tenants)]
            await upstream.connections_to(f"/{tenant}")[-1].close(4503)

    async with trio.open_nursery() as nursery:
        for tenant in tenants:
            nursery.start_soon(feed, tenant)
        await faults()
        await trio.sleep(20)
        nursery.cancel_scope.cancel()


async def test_the_seed_incident_cannot_happen(autojump_clock: trio.testing.MockClock) -> None:
    tenants = [f"t{n}" for n in range(5)]
    delivered: dict[str, list[Batch]] = {t: [] for t in tenants}
    config = BufferConfig(always_buffer=True)
    samples: list[tuple[int, int]] = []
    flush_times: list[float] = []

    def record_flushes(into: list[Batch]) -> Handler:
        async def handler(sock: Socket) -> None:
            async with sock.events.subscribe() as batches:
                async for batch in batches:
                    into.append(batch)
                    flush_times.append(trio.current_time())

        return handler

    async with open_fake_upstream() as upstream:
        async with open_hub(seed=7) as hub, trio.open_nursery() as sampler:
            for tenant in tenants:
                await hub.add(
                    spec(
                        upstream,
                        tenant,
                        handler=record_flushes(delivered[tenant]),
                        options=SocketOptions(buffer=config),
                    )
                )

            async def sample() -> None:
                while True:
                    samples.append((hub.gauges.buffers_alive, hub.gauges.sockets_alive))
                    await trio.sleep(0.25)

            sampler.start_soon(sample)
            start = trio.current_time()
            await scripted_incident(upstream, tenants)
            sampler.cancel_scope.cancel()
            metrics = hub.metrics()
        assert all(buffers == sockets <= 5 for buffers, sockets in samples)
        minutes = [int((t - start) // 60) for t in flush_times]
        closes_per_minute = 2  # 15 closes, one every 40 s: at most 2 in any minute
        for minute in set(minutes):
            assert minutes.count(minute) <= 5 * 12 + closes_per_minute
        for tenant in tenants:
            sent = sum(len(c.sent) for c in upstream.connections_to(f"/{tenant}"))
            got = sum(b.count for b in delivered[tenant])
            merged = metrics.value("tenantry_events_merged_total", tenant=tenant)
            assert sent == got + merged, tenant
        assert metrics.value("tenantry_reconnects_total", reason="unavailable_service") == 15
        assert metrics.value("tenantry_events_lost_total") == 0


async def test_the_logs_operators_watch_for(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry")
    async with running() as (upstream, hub):
        for _ in range(5):
            upstream.reject_next(500)
        secret = {"Authorization": "Bearer s3cret"}
        config = BufferConfig(always_buffer=True)
        await hub.add(
            spec(
                upstream,
                handler=collector([]),
                options=SocketOptions(headers=secret, buffer=config),
            )
        )
        connection = await upstream.wait_connections(1)
        await connection.stream(3)
        await trio.testing.wait_all_tasks_blocked()
        await hub.restart("a")
        await upstream.wait_connections(2)
    messages = [r.getMessage() for r in caplog.records]

    def logged(prefix: str) -> list[logging.LogRecord]:
        return [r for r, m in zip(caplog.records, messages, strict=True) if m.startswith(prefix)]

    assert len(logged("scheduling reconnect: tenant a, attempt 2 in")) == 1
    [circuit] = logged("circuit open: tenant a, 5 failures, waiting 60.0 s")
    assert circuit.levelno == logging.WARNING
    assert circuit.__dict__["tenant"] == "a"
    assert len(logged("connection opened: tenant a")) == 2
    assert logged("intentional close: tenant a, restart requested")
    assert logged("connection closed: tenant a, 500")
    destroyed = logged("event buffer destroyed: tenant a, final flush of 3 events")[0]
    assert destroyed.__dict__["final_flush"] == 3
    assert logged("tenant stopped: a")
    assert not any(
        "s3cret" in m or "s3cret" in repr(r.__dict__)
        for r, m in zip(caplog.records, messages, strict=True)
    )


async def test_caches_nobody_reads_are_never_built_yet_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sockets: list[Socket] = []

    async def keep(sock: Socket) -> None:
        sockets.append(sock)
        await trio.sleep_forever()

    async with running() as (upstream, hub):
        await hub.add(spec(upstream, handler=keep))
        await upstream.wait_connections(1, path="/a")
        await trio.sleep(1)
        [sock] = sockets
        [status] = hub.status()
        m = hub.metrics()
        assert sock.caches.built() == []  # neither status nor metrics built them
        assert sock.tenant_caches is not None
        assert sock.tenant_caches.built() == []
        names = ["signal_store", "msg_retry", "call_offer", "user_devices", "placeholder_resend"]
        assert status.cache_utilization == dict.fromkeys([*names, "lid"], 0.0)
        assert m.value("tenantry_cache_max_keys", cache="lid", scope="socket") == 2_000
        assert m.value("tenantry_cache_keys", cache="signal_store", scope="tenant") == 0
        sock.caches["lid"].get("x")
        await hub.restart("a")  # the retired socket's counters: of built caches only
        await upstream.wait_connections(2, path="/a")
        await trio.sleep(1)
        m = hub.metrics()
        assert m.value("tenantry_cache_misses_total", cache="lid", scope="socket") == 1
        assert m.value("tenantry_cache_max_keys", cache="lid", scope="socket") == 2_000


async def test_a_send_meeting_the_peers_close_is_the_close_not_a_handler_failure(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def sender(sock: Socket) -> None:
        # The subscriber never reads: the reader stops at the second event, and the
        # writer meets the close frame that came in the same read.
        async with sock.events.subscribe(max_pending=1):
            while True:
                await sock.send("presence.update", {"id": "me"})
                await trio.sleep(0.05)

    async def serve(stream: trio.abc.Stream) -> None:
        peer = Peer(stream)
        events = [
            ws_events.TextMessage(data=f'{{"type": "chats.update", "data": {{"id": {i}}}}}')
            for i in range(3)
        ]
        await peer.accept(*events, ws_events.CloseConnection(code=4401, reason="logged out"))
        with trio.move_on_after(60):
            await peer.until(ws_events.CloseConnection)
        await trio.aclose_forcefully(stream)

    with caplog.at_level(logging.INFO, logger="tenantry"):
        async with trio.open_nursery() as server, open_hub(seed=1) as hub:
            connector = MemoryConnector(server, serve_stream=serve)
            await hub.add(TenantSpec("a", connector, handler=sender))
            await trio.sleep(60)
            [status] = hub.status()
            server.cancel_scope.cancel()
    assert status.state is TenantState.STOPPED
    assert status.last_disconnect is not None
    assert (status.last_disconnect.code, status.last_disconnect.remote) == (401, True)
    assert status.connections == 1
    assert "handler failed" not in caplog.text
    assert "Traceback" not in caplog.text


async def test_events_a_subscriber_never_took_are_counted_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hoarder(sock: Socket) -> None:
        async with sock.events.subscribe(max_pending=4):
            await trio.sleep_forever()  # takes nothing

    config = BufferConfig(always_buffer=True, max_items=6)
    async with running() as (upstream, hub):
        await hub.add(
            spec(upstream, handler=hoarder, options=SocketOptions(buffer=config, grace=1.0))
        )
        connection = await upstream.wait_connections(1)
        await connection.stream(17, keys=17)  # batches of 6, 6 and, at close, 5
        await trio.sleep(1)
        await connection.close(4503)
        await upstream.wait_connections(2)
        metrics = hub.metrics()
    figures = [
        metrics.value(f"tenantry_events_{name}_total") for name in ("received", "delivered", "lost")
    ]
    assert figures == [17, 0, 17]


async def test_the_hubs_sockets_share_one_keepalive_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    intervals = {"fast": 10.0, "slow": 30.0, "quiet": 30.0}
    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        await trio.testing.wait_all_tasks_blocked()
        before = living_tasks()
        for tenant_id, keepalive in intervals.items():
            await hub.add(spec(upstream, tenant_id, options=SocketOptions(keepalive=keepalive)))
        await upstream.wait_connections(3)
        await trio.testing.wait_all_tasks_blocked()
        # Per tenant: its supervisor, the reader (the transport has no task of its
        # own), and the upstream's two for the connection; no keepalive task, between pings.
        assert living_tasks() - before == 3 * 4
        await trio.sleep(100 - trio.current_time())
        stalled_at = trio.current_time()
        for tenant_id in ("fast", "slow"):
            (await upstream.wait_connections(1, path=f"/{tenant_id}")).stall()
        await trio.sleep(2 * 30 + 5 + 1)
        status = {s.tenant_id: s for s in hub.status()}
    for tenant_id in ("fast", "slow"):
        last, at = status[tenant_id].last_disconnect, status[tenant_id].last_disconnect_at
        assert last is not None
        assert at is not None
        assert (last.code, last.remote) == (408, True)
        keepalive = intervals[tenant_id]
        assert stalled_at + 5 <= at <= stalled_at + 2 * keepalive + 5
    assert (status["quiet"].last_disconnect, status["quiet"].connections) == (None, 1)
