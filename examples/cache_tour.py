"""A tour of tenantry's bounded caches: run it with ``nox -s demo``.

It replays the seed's own checks (a 5,000-key cache that receives 6,000 keys,
LRU survival of a key that was read), shows expiry and the janitor on Trio's
mock clock (an hour of virtual time in milliseconds of real time), and prints
the capacity plan of the seed's cache limits for 100 tenants.
"""

from __future__ import annotations

import logging

import trio
import trio.testing

import tenantry


def seed_overflow() -> None:
    print("1. The seed's overflow test: 6,000 keys into user_devices (max 5,000)")
    cache: tenantry.BoundedCache[str, str] = tenantry.BoundedCache(
        "user_devices", max_keys=5_000, ttl=300.0
    )
    for i in range(5_000):
        cache.set(f"key_{i}", f"value_{i}")
    cache.get("key_0")  # read: becomes the most recently used
    for i in range(5_000, 6_000):
        cache.set(f"key_{i}", f"value_{i}")
    print(f"   size after overflow: {len(cache):,} (the seed's library threw ECACHEFULL here)")
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
        nursery.start_soon(tenantry.run_janitor, [cache])
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
    print("3. Worst case of the seed's cache limits")
    for name, spec in tenantry.SEED_CACHE_SPECS.items():
        ttl = "never" if spec.ttl is None else f"{spec.ttl:,.0f} s"
        print(f"   {name:<20} {spec.max_keys:>7,} keys  ttl {ttl:<10} scope {spec.scope.value}")
    print(f"   {tenantry.capacity_plan(tenantry.SEED_CACHE_SPECS, tenants=100)}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="   log: %(levelname)s %(message)s")
    seed_overflow()
    trio.run(expiry_on_the_mock_clock, clock=trio.testing.MockClock(autojump_threshold=0))
    capacity()


if __name__ == "__main__":
    main()
