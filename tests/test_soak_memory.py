"""Memory stays flat: a real-time soak over loopback TCP with every cache at its limit.

Twenty tenants get 20 events a second each from the soak's upstream, with a
fault every five seconds per tenant, and their handlers write the caches at
a thousandth of the seed's limits, so that every written cache is full
within the first seconds and evicts from then on. The soak samples the
process's RSS 200 times; the mean of the last quarter must be within 5 % of
the first quarter's. A leak of anything per connection, per event or per
eviction grows with the run and shows here; a fixed cost does not.

``TENANTRY_SOAK_MEMORY_SECONDS`` sets the traffic time (default 24 s; the
full run, ``nox -s reliability``, uses ten minutes).
"""

from __future__ import annotations

import os
import sys

import pytest
import trio

from tenantry.cli import SoakConfig, run_soak

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
]

SECONDS = float(os.environ.get("TENANTRY_SOAK_MEMORY_SECONDS", "24"))
WRITTEN_CACHES = {"signal_store", "msg_retry", "user_devices", "lid", "lid_global"}


def test_rss_of_the_last_quarter_is_within_5_percent_of_the_first() -> None:
    config = SoakConfig(
        tenants=20,
        duration=SECONDS,
        rate=20,
        fault_every=5,
        cache_scale=0.001,
        virtual=False,
        flush_interval=1,
    )
    report = trio.run(run_soak, config)

    assert not report.broken, [i.name for i in report.broken]
    full = {c.name for c in report.caches if c.peak_utilization == 1.0 and c.evictions > 0}
    assert full >= WRITTEN_CACHES  # driven to their limits, and evicting
    assert report.rss_quarters is not None
    assert report.rss_growth is not None
    quarters = ", ".join(f"{rss / 2**20:.1f}" for rss in report.rss_quarters)
    print(f"\nRSS by quarter: {quarters} MiB, {report.rss_growth:+.2%} first to last")  # noqa: T201
    assert report.rss_growth < 0.05
