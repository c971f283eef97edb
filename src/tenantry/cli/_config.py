"""What a soak runs: `SoakConfig`, validated at construction, and its cache table.

The soak (`_soak.py`) runs a configuration, the report (`_report.py`) renders
one beside its figures, and the command line (`_main.py`) builds one from its
options. All three read it from here, so the report never imports the soak
that fills it, and the package's imports form no cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import final

import attrs

from .._cache_specs import BAILEYS_CACHE_SPECS, CacheSpec
from .._validate import check_between, check_count, check_seconds
from ._faults import Fault

__all__ = ["BURST", "MAX_TENANTS", "SoakConfig", "soak_caches"]

MAX_TENANTS = 100_000
"""The most tenants a soak runs: they all live in one process, with their upstream."""
BURST = 2
"""Events per write: the upstream sends each tenant a pair every 2 / rate seconds."""


def _faults(value: Iterable[Fault]) -> tuple[Fault, ...]:
    faults = tuple(value)
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(f"faults must be Fault members, got {fault!r}")
    return faults


@final
@attrs.frozen
class SoakConfig:
    """What a soak runs: the fleet, the traffic, the faults, the clock.

    Args:
        tenants: Tenants on the hub (at most 100,000: one process holds them all).
        duration: Seconds of traffic (virtual seconds when ``virtual``).
        rate: Events per second the upstream sends each tenant.
        fault_every: Mean seconds between two faults of one tenant.
        faults: The kinds of fault to draw from (none: a quiet run).
        spared: The fraction of tenants that get no faults: the control
            group whose flushes and delivery must not notice the others'.
        seed: Traffic, faults and backoff jitter all derive from it.
        virtual: In memory on Trio's mock clock, or over loopback TCP in
            wall-clock time. The caller runs the soak under the clock.
        cache_scale: The Baileys cache limits times this, so that a short
            run fills the caches and shows eviction at the limit.
        flush_interval: The event buffers' flush interval.
        keepalive: The sockets' ping interval.
    """

    tenants: int = attrs.field(default=100)
    duration: float = attrs.field(default=1800.0)
    rate: float = attrs.field(default=0.5)
    fault_every: float = attrs.field(default=120.0)
    faults: tuple[Fault, ...] = attrs.field(default=tuple(Fault), converter=_faults)
    spared: float = attrs.field(default=0.1)
    seed: int = attrs.field(default=1)
    virtual: bool = attrs.field(default=True)
    cache_scale: float = attrs.field(default=0.01)
    flush_interval: float = attrs.field(default=5.0)
    keepalive: float = attrs.field(default=30.0)

    def __attrs_post_init__(self) -> None:
        check_count(self.tenants, "tenants", minimum=1)
        if self.tenants > MAX_TENANTS:
            raise ValueError(
                f"tenants must be <= {MAX_TENANTS:,} (one process), got {self.tenants:,}"
            )
        check_seconds(self.duration, "duration")
        check_between(self.rate, "rate", 0.001, 10_000)
        check_seconds(self.fault_every, "fault_every")
        check_between(self.spared, "spared", 0, 1)
        check_count(self.seed, "seed", minimum=0)
        check_between(self.cache_scale, "cache_scale", 1e-6, 1)
        check_seconds(self.flush_interval, "flush_interval")
        check_seconds(self.keepalive, "keepalive")
        if not math.isfinite(self.duration):
            raise ValueError(f"duration must be finite, got {self.duration!r}")

    @property
    def burst_gap(self) -> float:
        """Seconds between two writes to a tenant's connection."""
        return BURST / self.rate

    @property
    def expected_flushes_per_minute(self) -> float:
        """Interval flushes of the whole fleet, every tenant connected.

        A buffer flushes ``flush_interval`` after its oldest pending event,
        so with a write every ``burst_gap`` seconds it flushes once every
        whole number of gaps that covers the interval.
        """
        period = math.ceil(self.flush_interval / self.burst_gap - 1e-9) * self.burst_gap
        return self.tenants * 60 / period

    @property
    def spared_tenants(self) -> int:
        """How many tenants get no faults (the last ones)."""
        return round(self.tenants * self.spared)


def soak_caches(scale: float) -> Mapping[str, CacheSpec]:
    """The Baileys cache specs with every limit times *scale* (at least one key)."""
    return {
        name: attrs.evolve(spec, max_keys=max(1, round(spec.max_keys * scale)))
        for name, spec in BAILEYS_CACHE_SPECS.items()
    }
