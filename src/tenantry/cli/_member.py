"""``tenantry member``: one fleet member as a process, with a JSON status line to follow.

The command joins the fleet stored in PostgreSQL (`open_cluster_hub` over a
`PostgresCoordinator`) and runs the tenants the fleet gives it. Tenants are
built by a *spec factory* named by an import string (``module:function``,
as uvicorn names an application); `fake_upstream_spec` is the built-in one,
for a fleet against ``tenantry upstream --replace`` with no code of one's own.

The connection string comes from the environment (``TENANTRY_DSN``), never
from the command line: every user of a machine can read a process's
arguments. It is never printed; an error that quotes the server names host,
port, database and user only, and any password left in a message is masked.

Status lines
============

One JSON object per line on stdout, every ``--status-every`` seconds and at
once whenever the tenants (or their epochs) or the lease losses change, so
that a harness can follow a member without parsing logs::

    {
        "member": "a",
        "time": 12.5,
        "registered": true,
        "tenants": {"t1": 3},
        "margin": 1.84,
        "renewals": {"ok": 9, "expired": 0, "failed": 0},
        "losses": {"deadline": 0, "expired": 0, "taken": 0},
        "handoffs": 0,
        "acquisitions": 1,
        "conflicts": 0,
        "events": 40,
    }

*time* is the member's own clock (seconds since it started), *margin* the
seconds left before its lease deadline (null without a lease), *conflicts*
the 440 replacements met while holding the lease, *events* those delivered
to the handlers. The last line is written after the member has left.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO, final

import trio

from .._socket import Socket
from .._tenant import TenantSpec
from ..cluster import ClusterHub, Coordinator, LeaseConfig, SpecFactory, open_cluster_hub

__all__ = [
    "CLOCK_RATE_VARIABLE",
    "DSN_VARIABLE",
    "RateClock",
    "clock_from_environment",
    "fake_upstream_spec",
    "load_spec_factory",
    "member_status",
    "run_member",
]

DSN_VARIABLE = "TENANTRY_DSN"
"""The environment variable that holds the database's connection string."""

CLOCK_RATE_VARIABLE = "TENANTRY_TEST_CLOCK_RATE"
"""Test aid: the member's clock runs at this rate (0.5: half speed). Never set it in production.

A member whose clock runs slower than the store's by more than ``rho``
breaks the lease rule's assumption, holds its tenants past its row's expiry
and gets them connected twice: the process-kill tests set it on one member
to prove they can see that happen.
"""


def fake_upstream_spec(tenant_id: str, description: Mapping[str, Any], epoch: int) -> TenantSpec:
    """The built-in spec factory, for tenants served by ``tenantry upstream``.

    *description* is ``{"url": "ws://host:port/path"}``: give each tenant a
    path of its own, so that ``tenantry upstream --replace`` tells them
    apart. The handler takes the events in batches and answers each batch
    with one ``ack`` message (``{"epoch": ..., "events": ...}``), so the
    upstream sees what the member sends, under which epoch. A connection the
    upstream replaced (440) is not reconnected, as the library's default.
    """
    url = description.get("url")
    if not isinstance(url, str):
        raise TypeError(f"tenant {tenant_id!r}: its description needs a 'url' (a ws:// URL)")

    async def handler(sock: Socket) -> None:
        async with sock.events.subscribe() as batches:
            async for batch in batches:
                await sock.send("ack", {"epoch": epoch, "events": len(batch)})

    return TenantSpec(tenant_id, url, handler=handler)


def load_spec_factory(text: str) -> SpecFactory:
    """The callable named by ``module:function`` (dotted attributes allowed after the colon).

    The module is looked for in the current directory first, then on the
    Python path.

    Raises:
        ValueError, TypeError: the text is not of that form, the module cannot be
            imported, or it has no such callable; the message says which.
    """
    module_name, colon, attribute = text.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"--spec-factory must be module:function, got {text!r}")
    path = list(sys.path)
    sys.path.insert(0, os.getcwd())  # as ``python -m`` does: the user's modules, from here
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--spec-factory: cannot import {module_name!r}: {error}") from None
    finally:
        sys.path[:] = path
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"--spec-factory: {module_name!r} has no {attribute!r}") from None
    if not callable(target):
        raise TypeError(f"--spec-factory: {text} is not callable")
    factory: SpecFactory = target
    return factory


@final
class RateClock(trio.abc.Clock):
    """A clock that runs at *rate* times the real one (a test aid: see `CLOCK_RATE_VARIABLE`)."""

    def __init__(self, rate: float, *, real: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"{CLOCK_RATE_VARIABLE} must be a positive number, got {rate!r}")
        self._rate = rate
        self._real = real
        self._origin = real()

    def start_clock(self) -> None:
        self._origin = self._real()

    def current_time(self) -> float:
        return (self._real() - self._origin) * self._rate

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return max(0.0, (deadline - self.current_time()) / self._rate)


def member_status(cluster: ClusterHub, started: float) -> dict[str, Any]:
    """One status line of *cluster* (a `~tenantry.cluster.ClusterHub`), as a JSON object."""
    counts: dict[str, dict[str, float]] = {}
    events = 0.0
    for sample in cluster.metrics().samples:
        if sample.name == "tenantry_events_delivered_total":
            events += sample.value
        elif sample.name.startswith("tenantry_cluster_"):
            key = sample.labels[0][1] if sample.labels else ""
            counts.setdefault(sample.name, {})[key] = sample.value
    margin = cluster.lease_margin

    def number(name: str) -> int:
        return int(counts.get(name, {}).get("", 0))

    def labelled(name: str) -> dict[str, int]:
        return {key: int(value) for key, value in counts.get(name, {}).items()}

    return {
        "member": cluster.name,
        "time": round(trio.current_time() - started, 3),
        "registered": cluster.member is not None,
        "tenants": {tenant: cluster.epoch_of(tenant) for tenant in sorted(cluster.tenant_ids)},
        "margin": round(margin, 3) if math.isfinite(margin) else None,
        "renewals": labelled("tenantry_cluster_renewals_total"),
        "losses": labelled("tenantry_cluster_lease_losses_total"),
        "handoffs": number("tenantry_cluster_handoffs_total"),
        "acquisitions": number("tenantry_cluster_acquisitions_total"),
        "conflicts": number("tenantry_cluster_upstream_conflicts_total"),
        "events": int(events),
    }


def _changes(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a status line due at once: the tenants and epochs, and the losses."""
    return (
        status["registered"],
        tuple(status["tenants"].items()),
        tuple(status["losses"].items()),
    )


async def run_member(
    coordinator: Coordinator,
    *,
    name: str,
    spec_factory: SpecFactory,
    lease: LeaseConfig,
    status_every: float,
    out: TextIO,
) -> int:
    """Run the member until SIGTERM or SIGINT, then leave (closing its tenants).

    Returns the signal that stopped it.
    """
    started = trio.current_time()
    tick = min(status_every, 0.1)  # how soon a change shows
    stopped_by: list[int] = []
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        nursery.start_soon(_stop_on_signals, stop, stopped_by)
        last: tuple[Any, ...] | None = None
        async with open_cluster_hub(
            coordinator, member=name, spec_factory=spec_factory, lease=lease
        ) as cluster:
            due = started
            while not stop.is_set():
                status = member_status(cluster, started)
                now = trio.current_time()
                if now >= due or _changes(status) != last:
                    _write(out, status)
                    last, due = _changes(status), now + status_every
                with trio.move_on_after(tick):
                    await stop.wait()
        _write(out, member_status(cluster, started))
        nursery.cancel_scope.cancel()
    await coordinator.aclose()
    return stopped_by[0] if stopped_by else signal.SIGTERM


def _write(out: TextIO, status: Mapping[str, Any]) -> None:
    out.write(json.dumps(status) + "\n")
    out.flush()


async def _stop_on_signals(stop: trio.Event, stopped_by: list[int]) -> None:
    """Set *stop* at the first SIGTERM or SIGINT (noted in *stopped_by*): the member leaves.

    A second Ctrl-C interrupts the usual way (`KeyboardInterrupt`).
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            stopped_by.append(signum)
            break
    stop.set()


def clock_from_environment() -> trio.abc.Clock | None:
    """The test aid's `RateClock`, if `CLOCK_RATE_VARIABLE` is set; else None (Trio's own)."""
    text = os.environ.get(CLOCK_RATE_VARIABLE)
    if not text:
        return None
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"{CLOCK_RATE_VARIABLE} must be a number, got {text!r}") from None
    return RateClock(rate)
