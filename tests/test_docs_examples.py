"""The testing guide's reconnect example, run as written."""

from __future__ import annotations

import itertools

import trio
import trio.testing

import tenantry
from tenantry.testing import open_fake_upstream


async def idle(sock: tenantry.Socket) -> None:
    await trio.sleep_forever()


async def test_503s_back_off_and_401_stops(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_upstream() as upstream, tenantry.open_hub(seed=1) as hub:
        policy = tenantry.ReconnectPolicy(backoff=tenantry.Backoff(jitter=0))
        await hub.add(
            tenantry.TenantSpec("acme", upstream.connector_to("/acme"), idle, policy=policy)
        )
        times = []
        for n in range(1, 4):
            connection = await upstream.wait_connections(n, path="/acme")
            times.append(trio.current_time())
            await connection.close(4503)  # closes before stable_after
        last = await upstream.wait_connections(4, path="/acme")
        times.append(trio.current_time())
        assert [b - a for a, b in itertools.pairwise(times)] == [1, 2, 5]
        await last.close(4401)  # logged out: stop
        await trio.sleep(3600)
        [status] = hub.status()
        assert status.state is tenantry.TenantState.STOPPED
        assert len(upstream.connections) == 4
