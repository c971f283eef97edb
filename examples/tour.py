"""A tour of what tenantry guarantees so far: run it with ``nox -s demo``.

It overflows a cache as a NodeCache user would test one (a 5,000-key cache
that receives 6,000 keys, LRU survival of a key that was read), shows expiry
and the janitor on Trio's mock clock (hours of virtual time in milliseconds
of real time), prints the capacity plan of the Baileys default cache limits
for 100 tenants, and
consolidates a burst of 10,000 events into a handful of batches.
"""

from __future__ import annotations

import logging

import trio
import trio.testing

import tenantry
import tenantry.lowlevel


def overflow() -> None:
    print("1. An overflow test: 6,000 keys into user_devices (max 5,000)")
    cache: tenantry.BoundedCache[str, str] = tenantry.BoundedCache(
        "user_devices", max_keys=5_000, ttl=300.0
    )
    for i in range(5_000):
        cache.set(f"key_{i}", f"value_{i}")
    cache.get("key_0")  # read: becomes the most recently used
    for i in range(5_000, 6_000):
        cache.set(f"key_{i}", f"value_{i}")
    print(f"   size after overflow: {len(cache):,} (NodeCache throws ECACHEFULL here)")
    print(f"   key_0 (read before the overflow) survives: {'key_0' in cache}")
    print(f"   key_1 (oldest unread) was evicted:         {'key_1' not in cache}")
    print(f"   {cache.stats}\n")


async def expiry_on_the_mock_clock() -> None:
    print("2. Expiry and the janitor, on trio.testing.MockClock (virtual time)")
    purged: list[tuple[float, str]] = []

    def on_remove(key: str, value: object, cause: tenantry.RemovalCause) -> None:
        purged.append((trio.current_time(), f"{key} ({cause.value})"))

    # Created inside the run, the cache reads the run's (mock) clock.
    cache: tenantry.BoundedCache[str, str] = tenantry.BoundedCache(
        "msg_retry", max_keys=10_000, ttl=3_600.0, on_remove=on_remove
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tenantry.lowlevel.run_janitor, [cache])
        cache.set("retry:A1", "payload")
        cache.set("retry:B2", "payload", ttl=60.0)  # a key with its own TTL
        await trio.sleep(1_800)
        cache.touch("retry:A1")  # restart its hour
        await trio.sleep(7_200)
        nursery.cancel_scope.cancel()
    for when, what in purged:
        print(f"   t={when:>6,.0f} s  janitor purged {what}")
    print(f"   {len(cache)} entries left; the janitor slept between deadlines\n")


def capacity() -> None:
    print("3. Worst case of the Baileys default cache limits")
    for name, spec in tenantry.BAILEYS_CACHE_SPECS.items():
        ttl = "never" if spec.ttl is None else f"{spec.ttl:,.0f} s"
        print(f"   {name:<20} {spec.max_keys:>7,} keys  ttl {ttl:<10} scope {spec.scope.value}")
    print(f"   {tenantry.capacity_plan(tenantry.BAILEYS_CACHE_SPECS, tenants=100)}")


async def burst() -> None:
    print("\n4. A burst of 10,000 events about 100 messages (upserts, status updates, receipts)")
    buffer = tenantry.EventBuffer(tenantry.BufferConfig(flush_interval=5.0), tenant_id="acme")
    events = tenantry.EventStream(buffer)
    batches: list[tuple[float, tenantry.Batch]] = []

    async def consume(channel: trio.abc.ReceiveChannel[tenantry.Batch]) -> None:
        async for batch in channel:
            batches.append((trio.current_time(), batch))

    async with trio.open_nursery() as nursery:
        # The auto-flush runs as a task of this nursery only while events are pending.
        events.flush_on_demand(lambda: nursery.start_soon(events.auto_flush_while_pending))
        async with events.subscribe() as channel:
            nursery.start_soon(consume, channel)
            await events.emit("connection.update", {"connection": "open"})
            with buffer.buffering():
                for i in range(10_000):
                    key = {"remoteJid": f"55{i % 10}@s.whatsapp.net", "id": f"M{i % 100}"}
                    kind = ("messages.upsert", "messages.update", "message-receipt.update")[i % 3]
                    data = {"key": key, "update": {"n": i}} if i % 3 == 1 else {"key": key, "n": i}
                    await events.emit(kind, data)
                    if i % 100 == 0:
                        await trio.sleep(0.1)  # the burst takes 10 virtual seconds
            await events.aclose()
        nursery.cancel_scope.cancel()
    for when, batch in batches:
        print(f"   t={when:>4.1f} s  {batch}")
    stats = buffer.stats
    print(
        f"   received {stats.received:,} = delivered {stats.delivered:,} "
        f"+ merged {stats.merged:,} + pending {stats.pending}"
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="   log: %(levelname)s %(message)s")
    overflow()
    trio.run(expiry_on_the_mock_clock, clock=trio.testing.MockClock(autojump_threshold=0))
    capacity()
    trio.run(burst, clock=trio.testing.MockClock(autojump_threshold=0))


if __name__ == "__main__":
    main()
