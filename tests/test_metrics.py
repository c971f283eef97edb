"""Hub metrics: the snapshot, its text format, and the prometheus-client collector."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from helpers import collect
from tenantry import (
    BufferConfig,
    Metrics,
    Socket,
    SocketOptions,
    TenantSpec,
)
from tenantry import open_hub as open_hub_
from tenantry.lowlevel import METRIC_FAMILIES, Sample
from tenantry.testing import open_fake_upstream

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tenantry.prometheus import HubCollector  # noqa: E402


async def subscriber(sock: Socket) -> None:
    sock.caches["user_devices"].get("nobody")  # one miss per connection
    async with sock.events.subscribe() as batches:
        await collect(batches, [])


async def busy_hub_metrics(collector_out: list[str] | None = None) -> Metrics:
    """Two tenants: events, a bad frame, a 503 close and a reconnect, cache use."""
    async with open_fake_upstream() as upstream, open_hub_(seed=1) as hub:
        config = BufferConfig(always_buffer=True)
        for tenant in ("a", "b"):
            await hub.add(
                TenantSpec(
                    tenant,
                    upstream.connector_to(f"/{tenant}"),
                    subscriber,
                    options=SocketOptions(buffer=config),
                )
            )
        a = await upstream.wait_connections(1, path="/a")
        await a.stream(30, keys=10)
        await a.send_raw("not json")
        await trio.sleep(6)
        await a.close(4503)
        a2 = await upstream.wait_connections(2, path="/a")
        await a2.stream(5, keys=5)
        await trio.sleep(6)
        hub.global_caches["lid_global"].set("k", "v")
        hub.global_caches["lid_global"].get("k")
        hub.global_caches["lid_global"].get("missing")
        if collector_out is not None:
            collector = HubCollector(hub)
            registry = prometheus_client.CollectorRegistry()
            registry.register(collector)
            assert prometheus_client.generate_latest(registry) == b""  # nothing before refresh
            collector.refresh()
            collector_out.append(prometheus_client.generate_latest(registry).decode())
        return hub.metrics()


async def test_the_snapshot_adds_ended_and_live_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = await busy_hub_metrics()
    assert m.value("tenantry_sockets_alive") == 2
    assert m.value("tenantry_buffers_alive") == 2
    assert m.value("tenantry_tenants", state="connected") == 2
    assert m.value("tenantry_events_received_total", tenant="a") == 35
    received = m.value("tenantry_events_received_total", tenant="a")
    delivered = m.value("tenantry_events_delivered_total", tenant="a")
    merged = m.value("tenantry_events_merged_total", tenant="a")
    assert received == delivered + merged
    assert merged == 20  # 30 updates over 10 keys
    assert m.value("tenantry_frames_rejected_total", tenant="a", reason="invalid_json") == 1
    assert m.value("tenantry_reconnects_total", tenant="a", reason="unavailable_service") == 1
    assert m.value("tenantry_reconnects_total", tenant="b") == 0
    assert m.value("tenantry_breaker_state", tenant="a") == 0
    assert m.value("tenantry_buffer_flush_total", tenant="a", reason="interval") == 2
    assert m.value("tenantry_buffer_flush_total", tenant="a", reason="close") == 0  # was empty
    assert m.value("tenantry_cache_keys", cache="lid_global", scope="global") == 1
    assert m.value("tenantry_cache_max_keys", cache="lid_global", scope="global") == 10_000
    assert m.value("tenantry_cache_max_keys", cache="signal_store", scope="tenant") == 20_000
    assert m.value("tenantry_cache_max_keys", cache="lid", scope="socket") == 4_000
    assert m.value("tenantry_cache_hits_total", cache="lid_global") == 1
    assert m.value("tenantry_cache_misses_total", cache="lid_global") == 1
    # a's ended connection, a's live one, b's live one: each counted once
    assert m.value("tenantry_cache_misses_total", cache="user_devices", scope="socket") == 3
    assert {s.name for s in m.samples} == set(METRIC_FAMILIES)


async def test_every_sample_is_a_declared_family(autojump_clock: trio.testing.MockClock) -> None:
    """An undeclared sample would vanish from the text format and the collector without a word."""
    async with open_hub_() as hub:
        empty = hub.metrics()
    busy = await busy_hub_metrics()
    for m in (empty, busy):
        assert {s.name for s in m.samples} <= set(METRIC_FAMILIES)
        rendered = [line for line in m.to_text().splitlines() if not line.startswith("#")]
        assert len(rendered) == len(m.samples)  # to_text dropped none
        for s in m.samples:  # counters are named as Prometheus expects
            assert s.name.endswith("_total") == (METRIC_FAMILIES[s.name][0] == "counter")
    assert {s.name for s in busy.samples} == set(METRIC_FAMILIES)  # and none is never emitted


async def test_text_format_parses(autojump_clock: trio.testing.MockClock) -> None:
    m = await busy_hub_metrics()
    families = {f.name: f for f in text_string_to_metric_families(m.to_text())}
    received = families["tenantry_events_received"]  # the parser strips _total
    assert received.type == "counter"
    values = {s.labels["tenant"]: s.value for s in received.samples if s.name.endswith("_total")}
    assert values == {"a": 35, "b": 0}


def test_label_values_are_escaped() -> None:
    m = Metrics([Sample("tenantry_breaker_state", (("tenant", 'we"ird\\\n'),), 1)])
    [family] = text_string_to_metric_families(m.to_text())
    assert family.samples[0].labels == {"tenant": 'we"ird\\\n'}


async def test_the_prometheus_collector(autojump_clock: trio.testing.MockClock) -> None:
    out: list[str] = []
    m = await busy_hub_metrics(out)
    families = {f.name: f for f in text_string_to_metric_families(out[0])}
    assert set(families) >= {name.removesuffix("_total") for name in METRIC_FAMILIES}
    rejected = families["tenantry_frames_rejected"]
    counts = {
        (s.labels["tenant"], s.labels["reason"]): s.value
        for s in rejected.samples
        if s.name == "tenantry_frames_rejected_total"
    }
    assert counts[("a", "invalid_json")] == 1
    assert counts[("a", "binary")] == 0
    gauge = families["tenantry_sockets_alive"]
    assert gauge.samples[0].value == m.value("tenantry_sockets_alive")


async def test_the_collector_refreshes_on_an_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_hub_() as hub, trio.open_nursery() as nursery:
        collector = HubCollector(hub)
        nursery.start_soon(collector.run, 5.0)
        await trio.sleep(1)
        assert list(collector.collect())
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="interval"):
        await collector.run(0)
