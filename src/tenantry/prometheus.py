"""A hub's metrics for prometheus-client (``pip install "tenantry[prometheus]"``).

prometheus-client calls collectors from whatever thread serves the scrape
(``start_http_server`` runs one of its own), while a hub belongs to its Trio
thread. So the collector never reads the hub itself: `HubCollector.refresh`
takes a snapshot in the Trio thread, and scrapes render the latest one (an
immutable object, swapped in one assignment). Run `HubCollector.run` in a
nursery to refresh on an interval, or call `~HubCollector.refresh` before
serving a scrape from Trio.

Example::

    collector = HubCollector(hub)
    prometheus_client.REGISTRY.register(collector)
    nursery.start_soon(collector.run, 5.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, final

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._hub import Hub
from ._metrics import Metrics
from ._validate import check_seconds

__all__ = ["HubCollector"]


class _Snapshots(Protocol):
    """Whatever takes `~tenantry.Metrics` snapshots: a hub, or a fleet member's hub."""

    def metrics(self) -> Metrics: ...


@final
class HubCollector(Collector):
    """A prometheus-client collector rendering a hub's latest `~tenantry.Metrics` snapshot.

    *hub* is a `~tenantry.Hub`, or anything with the same ``metrics()``, such
    as a `~tenantry.cluster.ClusterHub`.
    """

    def __init__(self, hub: Hub | _Snapshots) -> None:
        self._hub = hub
        self._snapshot: Metrics | None = None

    def refresh(self) -> None:
        """Take a new snapshot of the hub. Call it from the hub's Trio thread."""
        self._snapshot = self._hub.metrics()

    async def run(self, interval: float = 5.0) -> None:
        """Refresh every *interval* seconds, until cancelled."""
        interval = check_seconds(interval, "interval")
        while True:
            self.refresh()
            await trio.sleep(interval)

    def collect(self) -> Iterator[Metric]:
        """The latest snapshot as metric families (none before the first refresh)."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        for name, (kind, help_text) in snapshot.families.items():
            samples = [s for s in snapshot.samples if s.name == name]
            if not samples:
                continue
            label_names = [key for key, _ in samples[0].labels]
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=label_names)
            else:
                family = GaugeMetricFamily(name, help_text, labels=label_names)
            for sample in samples:
                family.add_metric([value for _, value in sample.labels], sample.value)
            yield family
