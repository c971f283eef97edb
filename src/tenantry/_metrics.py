"""Metrics: a snapshot of counters and gauges with Prometheus-style names.

The hub assembles a `Metrics` snapshot from its tenants on demand; nothing
is counted twice and nothing runs in the background. `Metrics.to_text`
renders the Prometheus text exposition format, and the optional
``tenantry.prometheus`` module adapts a hub to prometheus-client.

Label cardinality is bounded by design: per-tenant series carry only the
tenant id and a reason from a closed set; cache series are summed over
tenants by cache name and scope.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import final

import attrs

__all__ = ["METRIC_FAMILIES", "Metrics", "Sample"]

METRIC_FAMILIES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "tenantry_tenants": ("gauge", "Tenants on the hub, by supervisor state."),
        "tenantry_sockets_alive": ("gauge", "Live tenant sockets."),
        "tenantry_buffers_alive": ("gauge", "Live event buffers (always equal to live sockets)."),
        "tenantry_buffer_flush_total": ("counter", "Batches made, by tenant and reason."),
        "tenantry_events_received_total": ("counter", "Events decoded from the wire."),
        "tenantry_events_delivered_total": ("counter", "Events a subscriber or listener received."),
        "tenantry_events_merged_total": ("counter", "Events merged into other events."),
        "tenantry_events_lost_total": ("counter", "Events no subscriber or listener received."),
        "tenantry_frames_rejected_total": ("counter", "Bad frames, by tenant and reason."),
        "tenantry_reconnects_total": ("counter", "Ended connections and attempts, by reason."),
        "tenantry_breaker_state": ("gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open."),
        "tenantry_breaker_trips_total": ("counter", "Times the circuit breaker opened."),
        "tenantry_cache_keys": ("gauge", "Live keys, by cache and scope."),
        "tenantry_cache_max_keys": ("gauge", "Declared key limits, by cache and scope."),
        "tenantry_cache_hits_total": ("counter", "Cache lookups that found a live entry."),
        "tenantry_cache_misses_total": ("counter", "Cache lookups that found nothing."),
        "tenantry_cache_evictions_total": ("counter", "Entries evicted to make room."),
        "tenantry_cache_expirations_total": ("counter", "Entries removed by their TTL."),
    }
)
"""Every metric a hub reports: name -> (type, help)."""


@final
@attrs.frozen
class Sample:
    """One value of one metric with its labels."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@final
class Metrics:
    """A point-in-time snapshot of a hub's metrics (`Hub.metrics`).

    *families* declares every metric the samples may have (name -> (type,
    help)); a fleet member's snapshot declares its own beside the hub's.
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        families: Mapping[str, tuple[str, str]] = METRIC_FAMILIES,
    ) -> None:
        self.samples: list[Sample] = list(samples)
        self.families = families

    def value(self, name: str, **labels: str) -> float:
        """The sum of *name*'s samples whose labels include *labels* (0 if none)."""
        wanted = labels.items()
        return sum(
            s.value for s in self.samples if s.name == name and wanted <= dict(s.labels).items()
        )

    def to_text(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for name, (kind, help_text) in self.families.items():
            samples = [s for s in self.samples if s.name == name]
            if not samples:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{_labels(s.labels)} {_number(s.value)}" for s in samples]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<Metrics {len(self.samples)} samples>"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
