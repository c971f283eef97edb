"""The soak: a fleet of tenants on one hub against a misbehaving upstream.

Theory of operation
===================

`run_soak` opens a `FakeUpstream` and a hub, adds the tenants, and runs
three kinds of task beside them in one nursery, the *script*:

* a **feeder** per tenant, which waits for each of the tenant's upstream
  connections in turn and streams that tenant's `Traffic` into it;
* a **fault injector** per tenant that is not spared, which every so often
  (exponential gaps from the tenant's own seeded generator) does one
  `Fault` to the tenant's live connection. A per-connection lock orders
  the fault after the last event sent, so a clean close is known to follow
  every event sent before it;
* **samplers** for the gauges and the caches, and the progress reports.

The client side is the tenants' handler, which counts what it is given and
writes the caches the way an application would. When the duration is over
the script is cancelled, the buffers get one flush interval to empty, the
metrics are read, and the hub closes. The report compares what the upstream
sent, what the sockets decoded and what the handlers received, and checks
tenantry's invariants (`_report.py`). Every figure is a running total or a
fixed-size sample, so a soak of days holds as much as one of minutes.

Under `trio.testing.MockClock` (``virtual``) the upstream is in memory and
an hour passes in seconds; otherwise it is served over loopback TCP in
wall-clock time. Every random choice comes from generators seeded from
``seed`` and the tenant's id, so a run can be repeated.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from typing import final

import attrs
import trio
import trio_websocket

from .._buffer import BufferConfig
from .._events import Batch, FlushReason
from .._hub import Hub, open_hub
from .._metrics import Metrics
from .._options import SocketOptions
from .._socket import Socket
from .._tenant import TenantSpec
from ..testing import FakeUpstream, UpstreamConnection, open_fake_upstream
from ._config import BURST, SoakConfig, soak_caches
from ._faults import Fault
from ._report import (
    CacheFigures,
    Flushes,
    SoakProgress,
    SoakReport,
    SocketTally,
    TenantTally,
)
from ._traffic import Traffic

__all__ = ["run_soak"]

_GAUGE_EVERY = 1.0
_CACHES_EVERY = 30.0
_MEMORY_SAMPLES = 200
"""RSS samples over the run: its quarters compare memory early and late."""


@attrs.define(eq=False)
class _Line:
    """One upstream connection of a tenant, as its feeder and injector see it."""

    connection: UpstreamConnection
    number: int
    """Its place among the tenant's connections, from 0: the same as its socket's."""
    sending: trio.Lock = attrs.field(factory=trio.Lock)
    sent: int = 0
    stopped: bool = False


@attrs.define(eq=False)
class _Tenant:
    """One tenant as the soak sees it, from both ends.

    Its figures are running totals, so that a soak of any length holds the
    same few numbers per tenant. A cleanly closed connection is checked
    against its socket as soon as both are known: the connection's events
    sent when the clean close begins, the socket's events decoded when its
    scope ends. The two meet within one reconnect of each other, so only the
    last two of each wait for their partner.
    """

    tenant_id: str
    spared: bool
    traffic: Traffic
    random: random.Random
    line: _Line | None = None
    """The connection being fed, or the last one."""
    lines: int = 0
    sent: int = 0
    """Events the upstream sent, over every connection."""
    sockets: int = 0
    events: SocketTally = attrs.field(factory=SocketTally)
    """The sockets' buffer figures, summed as each socket's scope ends."""
    live_sockets: int = 0
    most_live_sockets: int = 0
    handed: int = 0
    """Events the handler was given, summed over batches."""
    faults: collections.Counter[Fault] = attrs.field(factory=collections.Counter)
    faults_skipped: int = 0
    clean_closes: int = 0
    """Cleanly closed connections checked against their socket."""
    short: list[int] = attrs.field(factory=list)
    """The numbers of those whose socket decoded fewer events than were sent."""
    _decoded: dict[int, int] = attrs.field(factory=dict)
    """Socket number -> events it decoded, until its connection is checked or superseded."""
    _clean_sent: dict[int, int] = attrs.field(factory=dict)
    """Connection number -> events sent, for clean closes waiting for their socket."""

    def live_line(self) -> _Line | None:
        line = self.line
        if line is not None and not line.stopped and not line.connection.ended:
            return line
        return None

    def socket_closed(self, number: int, tally: SocketTally) -> None:
        self.events += tally
        self._decoded[number] = tally.received
        self._check(number)

    def closed_cleanly(self, line: _Line) -> None:
        self._clean_sent[line.number] = line.sent
        self._check(line.number)

    def _check(self, number: int) -> None:
        if number in self._decoded and number in self._clean_sent:
            self.clean_closes += 1
            if self._decoded.pop(number) != self._clean_sent.pop(number):
                self.short.append(number)
        for waiting in (self._decoded, self._clean_sent):
            for old in [n for n in waiting if n < number - 1]:
                del waiting[old]


@final
class _Soak:
    """The run's state, shared by the script's tasks and the handlers."""

    def __init__(self, config: SoakConfig, upstream: FakeUpstream) -> None:
        self.config = config
        self.upstream = upstream
        self.caches = soak_caches(config.cache_scale)
        first_spared = config.tenants - config.spared_tenants
        width = len(str(config.tenants))
        self.tenants = [
            _Tenant(
                tenant_id=f"t{n:0{width}d}",
                spared=n >= first_spared,
                traffic=Traffic(f"{config.seed}:t{n}:traffic"),
                random=random.Random(f"{config.seed}:t{n}:faults"),  # noqa: S311
            )
            for n in range(config.tenants)
        ]
        self.start = trio.current_time()
        self.wall_start = time.perf_counter()
        self.beat = trio.Event()
        self.stall_for = 2 * config.keepalive + 10  # the client gives up within 2 x keepalive + 5
        self.interval_flushes: collections.Counter[int] = collections.Counter()
        self.other_flushes: collections.Counter[FlushReason] = collections.Counter()
        self.opened: collections.Counter[int] = collections.Counter()
        self.handed_total = 0
        self.handed_before = 0
        self.gauge_samples = 0
        self.gauge_mismatches = 0
        self.most_buffers = 0
        self.most_sockets = 0
        self.cache_peaks: dict[str, float] = {}
        self.rss_samples: list[int] = []
        self.cache_overflows = 0

    def minute(self) -> int:
        return int((trio.current_time() - self.start) // 60)

    # -- the tenants' side -------------------------------------------------------

    def spec(self, tenant: _Tenant, base_url: str | None) -> TenantSpec:
        path = f"/{tenant.tenant_id}"
        connect = self.upstream.connector_to(path) if base_url is None else base_url + path[1:]
        return TenantSpec(
            tenant.tenant_id,
            connect,
            self._handler(tenant),
            caches=self.caches,
            options=SocketOptions(
                buffer=BufferConfig(flush_interval=self.config.flush_interval, always_buffer=True),
                keepalive=self.config.keepalive,
            ),
        )

    def _handler(self, tenant: _Tenant) -> Callable[[Socket], Awaitable[None]]:
        async def handler(sock: Socket) -> None:
            number = tenant.sockets
            tenant.sockets += 1
            tenant.live_sockets += 1
            tenant.most_live_sockets = max(tenant.most_live_sockets, tenant.live_sockets)
            self.opened[self.minute()] += 1
            try:
                async with sock.events.subscribe() as batches:
                    async for batch in batches:
                        self._on_batch(tenant, sock, batch)
            finally:
                tenant.live_sockets -= 1
                stats = sock.buffer.stats
                tally = SocketTally(stats.received, stats.delivered, stats.merged, sock.events.lost)
                tenant.socket_closed(number, tally)

        return handler

    def _on_batch(self, tenant: _Tenant, sock: Socket, batch: Batch) -> None:
        tenant.handed += batch.count
        self.handed_total += batch.count
        if batch.reason is FlushReason.INTERVAL:
            self.interval_flushes[self.minute()] += 1
        else:
            self.other_flushes[batch.reason] += 1
        self._use_caches(tenant, sock, batch)

    def _use_caches(self, tenant: _Tenant, sock: Socket, batch: Batch) -> None:
        """Write the caches as an application would; check each stays within its limit."""
        assert sock.tenant_caches is not None  # a hub's tenant always has both  # noqa: S101
        assert sock.global_caches is not None  # noqa: S101
        retry, devices, lids = (
            sock.caches["msg_retry"],
            sock.caches["user_devices"],
            sock.caches["lid"],
        )
        signal, global_lids = sock.tenant_caches["signal_store"], sock.global_caches["lid_global"]
        for message in batch["messages.upsert"]:
            key = message["key"]
            retry.set(key["id"], 0)
            devices.set(key["remoteJid"], ("device-1",))
            signal.set(key["id"], b"session")
            global_lids.set((tenant.tenant_id, key["remoteJid"]), "lid")
        for contact in batch["contacts.update"]:
            lids.set(contact["id"], "lid")
        for cache in (retry, devices, lids, signal, global_lids):
            if len(cache) > cache.max_keys:
                self.cache_overflows += 1

    # -- the script --------------------------------------------------------------

    async def feed(self, tenant: _Tenant) -> None:
        """Stream the tenant's traffic into each of its connections in turn."""
        path = f"/{tenant.tenant_id}"
        while True:
            connection = await self.upstream.wait_connections(tenant.lines + 1, path=path)
            tenant.line = line = _Line(connection, tenant.lines)
            tenant.lines += 1
            with suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                while True:
                    async with line.sending:
                        if line.stopped:
                            break
                        frames = [tenant.traffic.next_frame() for _ in range(BURST)]
                        await connection.blast(frames)
                        line.sent += len(frames)
                        tenant.sent += len(frames)
                    await self.beat.wait()
            line.stopped = True

    async def keep_time(self) -> None:
        """Strike the beat every `SoakConfig.burst_gap` seconds: one timer for every feeder."""
        gap = self.config.burst_gap
        beats = 0
        while True:
            beats += 1
            await trio.sleep_until(self.start + beats * gap)
            self.beat.set()
            self.beat = trio.Event()

    async def inject_faults(self, tenant: _Tenant) -> None:
        """Now and then, one fault to the tenant's live connection."""
        faults = self.config.faults
        while faults:
            await trio.sleep(tenant.random.expovariate(1 / self.config.fault_every))
            fault = tenant.random.choice(faults)
            line = tenant.live_line()
            if line is None:
                tenant.faults_skipped += 1  # between connections: nothing to break
                continue
            async with line.sending:
                if line.stopped:
                    tenant.faults_skipped += 1
                    continue
                line.stopped = fault.ends_connection
                tenant.faults[fault] += 1  # counted as it starts: a stall lasts
                try:
                    await fault.inject(self.upstream, line.connection, stall_for=self.stall_for)
                except (trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                    tenant.faults[fault] -= 1
                    tenant.faults_skipped += 1  # the connection ended under the fault
                    continue
                if fault.ends_cleanly:
                    tenant.closed_cleanly(line)

    def sample_times(self, every: float) -> Iterator[float]:
        """Mid-way between beats of *every*: never at the instant the script ends."""
        for n in itertools.count():
            yield self.start + (n + 0.5) * every

    async def sample_gauges(self, hub: Hub) -> None:
        gauges = hub.gauges
        for when in self.sample_times(_GAUGE_EVERY):
            await trio.sleep_until(when)
            self.gauge_samples += 1
            self.gauge_mismatches += gauges.buffers_alive != gauges.sockets_alive
            self.most_buffers = max(self.most_buffers, gauges.buffers_alive)
            self.most_sockets = max(self.most_sockets, gauges.sockets_alive)

    async def sample_caches(self, hub: Hub) -> None:
        peaks = self.cache_peaks
        for when in self.sample_times(_CACHES_EVERY):
            await trio.sleep_until(when)
            for name, cache in hub.global_caches.items():
                peaks[name] = max(peaks.get(name, 0.0), cache.stats.utilization)
            for status in hub.status():
                for name, utilization in status.cache_utilization.items():
                    peaks[name] = max(peaks.get(name, 0.0), utilization)

    async def sample_memory(self) -> None:
        every = self.config.duration / _MEMORY_SAMPLES
        for when in self.sample_times(every):
            await trio.sleep_until(when)
            if (rss := _current_rss()) is not None:
                self.rss_samples.append(rss)

    def rss_quarters(self) -> tuple[int, ...] | None:
        samples = self.rss_samples
        if len(samples) < 4:
            return None
        bounds = [len(samples) * q // 4 for q in range(5)]
        return tuple(
            sum(samples[start:end]) // (end - start) for start, end in itertools.pairwise(bounds)
        )

    async def report_progress(self, hub: Hub, on_progress: Callable[[SoakProgress], None]) -> None:
        """Every 1 % of the duration; the final report comes from `run_soak`."""
        tick = self.config.duration / 100
        for n in range(1, 100):
            await trio.sleep_until(self.start + n * tick)
            on_progress(self.progress(hub, over=tick))

    def progress(self, hub: Hub, *, over: float) -> SoakProgress:
        """Where the soak is; events per second over the last *over* seconds."""
        elapsed = trio.current_time() - self.start
        minute = self.minute()
        if minute:
            last_minute: float = self.interval_flushes[minute - 1]
        else:
            last_minute = self.interval_flushes[0] * 60 / max(elapsed, 1e-9)
        handed, self.handed_before = self.handed_total - self.handed_before, self.handed_total
        return SoakProgress(
            elapsed=elapsed,
            duration=self.config.duration,
            wall=time.perf_counter() - self.wall_start,
            connected=hub.gauges.sockets_alive,
            tenants=self.config.tenants,
            flushes_per_minute=last_minute,
            events_per_second=handed / over,
        )

    # -- the report ----------------------------------------------------------------

    def report(
        self, metrics: Metrics, *, elapsed: float, baseline_tasks: int, interrupted: bool
    ) -> SoakReport:
        config = self.config
        interval_counts = [self.interval_flushes[m] for m in range(int(elapsed // 60))]
        return SoakReport(
            config=config,
            elapsed=elapsed,
            wall=time.perf_counter() - self.wall_start,
            flushes=Flushes(
                expected_per_minute=config.expected_flushes_per_minute,
                per_minute=tuple(interval_counts),
                bounds=tuple(
                    (config.tenants + self.opened[m]) * (60 / config.flush_interval + 1)
                    for m in range(len(interval_counts))
                ),
                other={
                    reason.value: n for reason, n in sorted(self.other_flushes.items(), key=str)
                },
            ),
            gauge_samples=self.gauge_samples,
            gauge_mismatches=self.gauge_mismatches,
            most_buffers=self.most_buffers,
            most_sockets=self.most_sockets,
            most_sockets_one_tenant=max(t.most_live_sockets for t in self.tenants),
            tenants=tuple(_tally(t) for t in self.tenants),
            reconnects=_by_label(metrics, "tenantry_reconnects_total", "reason"),
            rejected_frames=_by_label(metrics, "tenantry_frames_rejected_total", "reason"),
            breaker_trips=int(metrics.value("tenantry_breaker_trips_total")),
            caches=tuple(
                CacheFigures(
                    name=name,
                    max_keys=spec.max_keys,
                    peak_utilization=self.cache_peaks.get(name, 0.0),
                    evictions=int(metrics.value("tenantry_cache_evictions_total", cache=name)),
                    expirations=int(metrics.value("tenantry_cache_expirations_total", cache=name)),
                )
                for name, spec in self.caches.items()
            ),
            cache_overflows=self.cache_overflows,
            peak_rss=_peak_rss(),
            rss_quarters=self.rss_quarters(),
            baseline_tasks=baseline_tasks,
            tasks_at_end=trio.lowlevel.current_statistics().tasks_living,
            interrupted=interrupted,
        )


def _tally(tenant: _Tenant) -> TenantTally:
    return TenantTally(
        tenant_id=tenant.tenant_id,
        spared=tenant.spared,
        sent=tenant.sent,
        handed=tenant.handed,
        sockets=tenant.sockets,
        events=tenant.events,
        clean_closes=tenant.clean_closes,
        short=tuple(tenant.short),
        faults={fault.value: n for fault, n in tenant.faults.items()},
        faults_skipped=tenant.faults_skipped,
    )


def _by_label(metrics: Metrics, name: str, label: str) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for sample in metrics.samples:
        if sample.name == name:
            counts[dict(sample.labels)[label]] += int(sample.value)
    return {key: n for key, n in sorted(counts.items()) if n}


def _current_rss() -> int | None:
    """The process's resident set size in bytes, where /proc tells (Linux)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGESIZE")


def _peak_rss() -> int | None:
    """The process's peak resident set size in bytes, where the OS says."""
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


async def run_soak(
    config: SoakConfig,
    *,
    on_progress: Callable[[SoakProgress], None] | None = None,
    stop: trio.Event | None = None,
) -> SoakReport:
    """Run the soak *config* describes and return its report.

    Run it under ``trio.testing.MockClock(autojump_threshold=0)`` when
    ``config.virtual``, and under the real clock otherwise. Setting *stop*
    ends the traffic early (the command does it on Ctrl-C): the hub closes
    as usual and the report, marked `SoakReport.interrupted`, covers the
    traffic so far.
    """
    baseline_tasks = trio.lowlevel.current_statistics().tasks_living
    stop = trio.Event() if stop is None else stop
    # The feeders take each connection as it arrives: a short history is plenty.
    async with open_fake_upstream(history=config.tenants) as upstream:
        base_url = None if config.virtual else await upstream.serve_tcp()
        soak = _Soak(config, upstream)
        async with open_hub(soak.caches, seed=config.seed) as hub:
            for tenant in soak.tenants:
                await hub.add(soak.spec(tenant, base_url))
            async with trio.open_nursery() as script:
                for tenant in soak.tenants:
                    script.start_soon(soak.feed, tenant)
                    if not tenant.spared:
                        script.start_soon(soak.inject_faults, tenant)
                script.start_soon(soak.keep_time)
                script.start_soon(soak.sample_gauges, hub)
                script.start_soon(soak.sample_caches, hub)
                script.start_soon(soak.sample_memory)
                if on_progress is not None:
                    script.start_soon(soak.report_progress, hub, on_progress)
                with trio.move_on_after(config.duration):
                    await stop.wait()
                script.cancel_scope.cancel()
            if on_progress is not None:
                on_progress(soak.progress(hub, over=config.duration / 100))
            elapsed = trio.current_time() - soak.start
            await trio.sleep(config.flush_interval + 1)  # every pending event flushed
            metrics = hub.metrics()
    interrupted = stop.is_set() and elapsed < config.duration
    return soak.report(
        metrics, elapsed=elapsed, baseline_tasks=baseline_tasks, interrupted=interrupted
    )
