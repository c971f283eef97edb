"""Small helpers shared by the Trio-level tests."""

from __future__ import annotations

import trio

from tenantry import Batch, EventStream


class FakeClock:
    """A hand-driven clock for the pure state machines."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def living_tasks() -> int:
    """How many Trio tasks are alive in this run."""
    return trio.lowlevel.current_statistics().tasks_living


async def collect(channel: trio.abc.ReceiveChannel[Batch], into: list[Batch]) -> None:
    """Append every batch of *channel* to *into* until the channel ends."""
    async for batch in channel:
        into.append(batch)


def auto_flush(events: EventStream, nursery: trio.Nursery) -> None:
    """Run the auto-flush of *events* in *nursery* as a socket does: a task while events wait."""
    events.flush_on_demand(lambda: nursery.start_soon(events.auto_flush_while_pending))
