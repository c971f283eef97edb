"""A soak's report: the figures, and tenantry's invariants checked against them."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any, final

import attrs

from ._config import SoakConfig
from ._units import duration_text

__all__ = [
    "MEMORY_BOUND",
    "MEMORY_JUDGED_FROM",
    "CacheFigures",
    "Flushes",
    "Invariant",
    "SoakProgress",
    "SoakReport",
    "SocketTally",
    "TenantTally",
]

Rows = list[tuple[str, str]]

MEMORY_BOUND = 0.05
"""How much the RSS may grow from the second quarter of a soak to the last."""

MEMORY_JUDGED_FROM = 1800.0
"""Soaks this long or longer (seconds of their clock) are judged on memory
(`SoakReport.rss_growth_after_warmup` says why)."""


@final
@attrs.frozen
class SocketTally:
    """Sockets' event buffer figures at the end of their scopes: one socket's, or a sum."""

    received: int = 0
    delivered: int = 0
    merged: int = 0
    lost: int = 0

    def __add__(self, other: SocketTally) -> SocketTally:
        return SocketTally(
            self.received + other.received,
            self.delivered + other.delivered,
            self.merged + other.merged,
            self.lost + other.lost,
        )


@final
@attrs.frozen
class TenantTally:
    """One tenant's figures from both ends of the wire, totalled over its connections."""

    tenant_id: str
    spared: bool
    sent: int
    """Events the upstream sent, over every connection."""
    handed: int
    """Events the handler was given in batches."""
    sockets: int
    """How many sockets the tenant had."""
    events: SocketTally
    """Its sockets' figures, summed."""
    clean_closes: int
    """Connections that ended cleanly, each checked against its socket."""
    short: tuple[int, ...]
    """Of those, the connections (by number, from 0) whose socket decoded fewer events."""
    faults: Mapping[str, int]
    faults_skipped: int

    def total(self, field: str) -> int:
        """One of `SocketTally`'s figures over every socket."""
        value: int = getattr(self.events, field)
        return value


@final
@attrs.frozen
class Flushes:
    """Interval flushes per whole minute, against what the timers allow."""

    expected_per_minute: float
    """Every tenant connected, one flush per interval."""
    per_minute: tuple[int, ...]
    bounds: tuple[float, ...]
    """Per minute: (tenants + sockets opened in it) x (flushes one timer can make + 1)."""
    other: Mapping[str, int]
    """Flushes for other reasons (close, size), over the run."""

    @property
    def mean(self) -> float:
        return sum(self.per_minute) / len(self.per_minute) if self.per_minute else 0.0

    @property
    def most(self) -> int:
        return max(self.per_minute, default=0)

    def over_bound(self) -> list[int]:
        return [
            m for m, (n, b) in enumerate(zip(self.per_minute, self.bounds, strict=True)) if n > b
        ]


@final
@attrs.frozen
class CacheFigures:
    """One cache, across every scope that built it."""

    name: str
    max_keys: int
    peak_utilization: float
    """The largest keys / max_keys any instance reached when sampled."""
    evictions: int
    expirations: int


@final
@attrs.frozen
class Invariant:
    """One of tenantry's invariants, and whether this run kept it."""

    name: str
    held: bool
    detail: str


@final
@attrs.frozen
class SoakProgress:
    """A progress report, made every 1 % of the duration."""

    elapsed: float
    """Seconds of the soak's clock so far (virtual seconds when virtual)."""
    duration: float
    wall: float
    """Wall-clock seconds so far."""
    connected: int
    tenants: int
    flushes_per_minute: float
    """Flushes in the last minute (scaled up before the first one is over)."""
    events_per_second: float
    """Events delivered to the handlers per second of the soak's clock, lately."""


@final
@attrs.frozen
class SoakReport:
    """Everything a soak measured. `invariants` says whether the guarantees held."""

    config: SoakConfig
    elapsed: float
    """Seconds of traffic on the soak's clock."""
    wall: float
    """Wall-clock seconds of the whole run."""
    flushes: Flushes
    gauge_samples: int
    gauge_mismatches: int
    """Samples in which live buffers differed from live sockets."""
    most_buffers: int
    most_sockets: int
    most_sockets_one_tenant: int
    tenants: tuple[TenantTally, ...]
    reconnects: Mapping[str, int]
    rejected_frames: Mapping[str, int]
    breaker_trips: int
    caches: tuple[CacheFigures, ...]
    cache_overflows: int
    """Times a handler saw a cache over its limit (must be 0)."""
    peak_rss: int | None
    baseline_tasks: int
    tasks_at_end: int
    rss_quarters: tuple[int, ...] | None = None
    """Mean resident set size of each quarter of the run, in bytes (None: unknown)."""
    interrupted: bool = False
    """The traffic was stopped early (Ctrl-C): the figures cover `elapsed` seconds of it."""

    @property
    def rss_growth(self) -> float | None:
        """How much the RSS grew from the first quarter to the last (0.02 is 2 %)."""
        if not self.rss_quarters:
            return None
        return self.rss_quarters[-1] / self.rss_quarters[0] - 1

    @property
    def rss_growth_after_warmup(self) -> float | None:
        """How much the RSS grew from the second quarter to the last: what a leak shows as.

        The first quarter is the warm-up: caches fill to their limits or TTLs
        (five minutes for the Baileys defaults) and the allocator's arenas grow
        to the working set. In a run of half an hour or more the warm-up is
        over by the second quarter and every tenant has reconnected many times
        since, so a leak per connection, event or eviction shows here; such a
        run breaks the invariant "memory stays flat once warmed up" if this is
        over 5 %. A shorter run reports it without a verdict.
        """
        if not self.rss_quarters:
            return None
        return self.rss_quarters[-1] / self.rss_quarters[1] - 1

    # -- totals ------------------------------------------------------------------

    def events(self) -> dict[str, int]:
        """Events over the fleet: sent, received, delivered, merged, lost, handed."""
        totals = {
            "sent": sum(t.sent for t in self.tenants),
            **{f: sum(t.total(f) for t in self.tenants) for f in ("received", "delivered")},
            **{f: sum(t.total(f) for t in self.tenants) for f in ("merged", "lost")},
            "handed_to_handlers": sum(t.handed for t in self.tenants),
        }
        totals["not_received"] = totals["sent"] - totals["received"]
        return totals

    def faults(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for tenant in self.tenants:
            counts.update(tenant.faults)
        return {
            **dict(sorted(counts.items())),
            "skipped": sum(t.faults_skipped for t in self.tenants),
        }

    # -- the invariants -------------------------------------------------------------

    @property
    def invariants(self) -> tuple[Invariant, ...]:
        """tenantry's invariants, each checked against this run.

        Memory is judged only in runs of half an hour or more: see
        `rss_growth_after_warmup`.
        """
        return tuple(self._check())

    @property
    def broken(self) -> tuple[Invariant, ...]:
        return tuple(i for i in self.invariants if not i.held)

    def _check(self) -> Iterator[Invariant]:
        yield Invariant(
            "live buffers equal live sockets",
            self.gauge_mismatches == 0,
            f"{self.gauge_mismatches} of {self.gauge_samples:,} samples differ; "
            f"at most {self.most_buffers} buffers, {self.most_sockets} sockets",
        )
        yield Invariant(
            "a tenant never holds two sockets",
            self.most_sockets_one_tenant <= 1 and self.most_sockets <= len(self.tenants),
            f"at most {self.most_sockets_one_tenant} at once for one tenant",
        )
        uneven = [
            t.tenant_id
            for t in self.tenants
            if t.total("received") != t.total("delivered") + t.total("merged")
            or t.handed != t.total("delivered")
            or t.total("lost")
        ]
        yield Invariant(
            "every event decoded is delivered or merged exactly once",
            not uneven,
            f"tenants where it failed: {_few(uneven)}" if uneven else "every tenant, every socket",
        )
        short = [f"{t.tenant_id}#{n}" for t in self.tenants for n in t.short]
        cleanly = sum(t.clean_closes for t in self.tenants)
        yield Invariant(
            "a remote close loses nothing sent before it",
            not short,
            f"connections short: {_few(short)}" if short else f"{cleanly} clean closes checked",
        )
        over = [c.name for c in self.caches if c.peak_utilization > 1]
        yield Invariant(
            "no cache holds more than max_keys",
            not over and self.cache_overflows == 0,
            f"over the limit: {_few(over)}" if over else "every cache sampled, every write checked",
        )
        late = self.flushes.over_bound()
        yield Invariant(
            "flushes per minute stay within what the timers allow",
            not late,
            f"minutes over: {_few(late)}" if late else f"at most {self.flushes.most}/min",
        )
        disturbed = [
            t.tenant_id
            for t in self.tenants
            if t.spared and (t.sockets != 1 or t.total("received") != t.sent)
        ]
        spared = sum(t.spared for t in self.tenants)
        yield Invariant(
            "faults of one tenant never touch another",
            not disturbed,
            f"spared tenants disturbed: {_few(disturbed)}"
            if disturbed
            else f"{spared} spared tenants: one connection each, every event received",
        )
        yield Invariant(
            "closing a scope leaves no task behind",
            self.tasks_at_end == self.baseline_tasks,
            f"{self.tasks_at_end} tasks alive at the end, {self.baseline_tasks} before",
        )
        growth = self.rss_growth_after_warmup
        if growth is not None and self.elapsed >= MEMORY_JUDGED_FROM:
            yield Invariant(
                "memory stays flat once warmed up",
                growth <= MEMORY_BOUND,
                f"RSS {growth:+.1%} from the second quarter to the last "
                f"(bound {MEMORY_BOUND:+.0%})",
            )

    # -- output ------------------------------------------------------------------------

    def _rss_quarters_text(self) -> str:
        if self.rss_quarters is None:
            return "unknown"
        mib = ", ".join(f"{rss / 2**20:,.1f}" for rss in self.rss_quarters)
        return f"{mib} MiB"

    def _rss_growth_text(self) -> str:
        growth, warm = self.rss_growth, self.rss_growth_after_warmup
        if growth is None or warm is None:
            return "unknown"
        verdict = (
            f"bound {MEMORY_BOUND:+.0%}"
            if self.elapsed >= MEMORY_JUDGED_FROM
            else f"not judged: runs of {duration_text(MEMORY_JUDGED_FROM)} or more are"
        )
        return (
            f"{warm:+.1%} from the second quarter to the last ({verdict}); "
            f"{growth:+.1%} from the first"
        )

    def _traffic_text(self) -> str:
        rate = f"{self.config.rate:g} events/s each"
        if self.interrupted:
            planned = duration_text(self.config.duration)
            return f"{duration_text(self.elapsed)} of {planned} (interrupted), {rate}"
        return f"{duration_text(self.elapsed)}, {rate}"

    def sections(self) -> list[tuple[str, Rows]]:
        """The report as titled rows of (label, value), for text and tables."""
        config, flushes, events = self.config, self.flushes, self.events()
        mode = "virtual (MockClock, in memory)" if config.virtual else "real (loopback TCP)"
        speed = f", {self.elapsed / self.wall:,.0f}x real time" if config.virtual else ""
        reconnects = sum(self.reconnects.values())
        return [
            (
                "Run",
                [
                    ("mode", mode),
                    ("tenants", f"{config.tenants} ({config.spared_tenants} spared from faults)"),
                    ("traffic", self._traffic_text()),
                    ("wall time", f"{self.wall:,.1f} s{speed}"),
                    ("seed", str(config.seed)),
                ],
            ),
            (
                "Flushes (interval timer)",
                [
                    ("expected per minute", f"{flushes.expected_per_minute:,.0f}"),
                    ("observed per minute", f"mean {flushes.mean:,.1f}, max {flushes.most:,}"),
                    (
                        "orphaned timers would add",
                        f"{reconnects * 60 / config.flush_interval:,.0f}/min",
                    ),
                    ("other flushes", _pairs(flushes.other)),
                ],
            ),
            (
                "Buffers and sockets",
                [
                    ("max live buffers", f"{self.most_buffers:,}"),
                    ("max live sockets", f"{self.most_sockets:,}"),
                    ("samples", f"{self.gauge_samples:,}, {self.gauge_mismatches} differ"),
                ],
            ),
            ("Events", [(k.replace("_", " "), f"{v:,}") for k, v in events.items()]),
            (
                "Faults and reconnects",
                [
                    ("faults injected", _pairs(self.faults())),
                    ("reconnects by reason", _pairs(self.reconnects)),
                    ("breaker trips", f"{self.breaker_trips:,}"),
                    ("frames rejected", _pairs(self.rejected_frames)),
                ],
            ),
            (
                "Caches (peak utilization)",
                [
                    (
                        c.name,
                        (
                            f"{c.peak_utilization:.0%} of {c.max_keys:,}; "
                            f"{c.evictions:,} evicted, {c.expirations:,} expired"
                        ),
                    )
                    for c in self.caches
                ],
            ),
            (
                "Process",
                [
                    (
                        "peak RSS",
                        "unknown" if self.peak_rss is None else f"{self.peak_rss / 2**20:,.1f} MiB",
                    ),
                    ("RSS by quarter", self._rss_quarters_text()),
                    ("RSS growth", self._rss_growth_text()),
                    (
                        "tasks alive at the end",
                        f"{self.tasks_at_end} ({self.baseline_tasks} before)",
                    ),
                ],
            ),
            (
                "Invariants",
                [
                    (("held: " if i.held else "BROKEN: ") + i.name, i.detail)
                    for i in self.invariants
                ],
            ),
        ]

    def to_json(self) -> dict[str, Any]:
        """The report for machines: plain JSON types, stable keys."""
        config = attrs.asdict(self.config, value_serializer=_plain)
        return {
            "config": config,
            "elapsed_seconds": self.elapsed,
            "interrupted": self.interrupted,
            "wall_seconds": self.wall,
            "flushes": {
                "expected_per_minute": self.flushes.expected_per_minute,
                "mean_per_minute": self.flushes.mean,
                "max_per_minute": self.flushes.most,
                "per_minute": list(self.flushes.per_minute),
                "bound_per_minute": list(self.flushes.bounds),
                "other": dict(self.flushes.other),
            },
            "buffers": {
                "max_live_buffers": self.most_buffers,
                "max_live_sockets": self.most_sockets,
                "max_sockets_one_tenant": self.most_sockets_one_tenant,
                "samples": self.gauge_samples,
                "mismatches": self.gauge_mismatches,
            },
            "events": self.events(),
            "faults": self.faults(),
            "reconnects": dict(self.reconnects),
            "breaker_trips": self.breaker_trips,
            "frames_rejected": dict(self.rejected_frames),
            "caches": [attrs.asdict(c) for c in self.caches],
            "cache_overflows": self.cache_overflows,
            "peak_rss_bytes": self.peak_rss,
            "rss_quarters_bytes": None if self.rss_quarters is None else list(self.rss_quarters),
            "rss_growth": self.rss_growth,
            "rss_growth_after_warmup": self.rss_growth_after_warmup,
            "tasks": {"before": self.baseline_tasks, "at_end": self.tasks_at_end},
            "invariants": [attrs.asdict(i) for i in self.invariants],
            "ok": not self.broken,
        }


def _plain(_: object, __: object, value: Any) -> Any:
    if isinstance(value, tuple):
        return [getattr(v, "value", v) for v in value]
    return getattr(value, "value", value)


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _few(names: list[Any]) -> str:
    shown = ", ".join(str(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
