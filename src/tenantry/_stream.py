"""Delivery: the Trio side of an `EventBuffer`.

An `EventStream` publishes its buffer's batches to *subscribers* (bounded
memory channels of `Batch`) and *listeners* (sync functions per event type),
and runs the auto-flush task. Everything it starts is a task in its owner's
nursery, and everything it hands out is closed by `EventStream.aclose`, so a
stream cannot outlive the scope that owns it: an orphaned 5-second flush
timer has nowhere to live.

One lock serialises publishing, and batches are taken from the buffer only
while holding it, so every subscriber sees batches in the order the buffer
made them. A full subscriber channel makes publishing wait: backpressure
reaches whoever feeds the buffer, and nothing is dropped. Once taken, a batch
is offered to every subscriber even if the publishing task is cancelled
meanwhile (publication is shielded); only the grace period of `aclose` can
cut it short.

A batch is published only when someone can take it: a subscriber, or at
least one listener. Until the first one comes, batches are *held* in the
buffer, up to its ``max_items`` events; beyond that publishing waits for a
consumer (backpressure again: a socket's reader stops reading, and its peer
waits), and the first subscriber gets everything held, in order.

An event counts as *delivered* (`BufferStats`) only once a consumer has it,
and as *lost* once it is known that none ever will; until then it is *in
flight*. Which it is depends on the consumers there are when its batch is
published:

=================  ==========================================================
consumers          the batch's events are
=================  ==========================================================
subscribers        delivered when every subscriber it was handed to has
                   received it (taken it from its channel); lost as soon as
                   one of them leaves without it, or the grace period of
                   `aclose` ends first. Listeners are called too, but do not
                   count.
listeners only     delivered if a listener takes their type; lost if none
                   does (logged once per stream).
none               held; lost if the stream closes before a consumer comes.
=================  ==========================================================

So ``received == delivered + merged + lost + pending + in_flight`` holds at
every instant, and each event is counted once however many subscribers
there are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from ._buffer import EventBuffer
from ._events import Batch, FlushReason
from ._validate import check_count, check_seconds

__all__ = ["EventStream", "Listener"]

logger = logging.getLogger("tenantry.events")

DEFAULT_GRACE = 5.0


@final
class Listener:
    """The handle `EventStream.on` returns; `remove` unregisters the listener."""

    __slots__ = ("_event_type", "_fn", "_listeners")

    def __init__(
        self,
        listeners: dict[str, list[Callable[[Any], object]]],
        event_type: str,
        fn: Callable[[Any], object],
    ) -> None:
        self._listeners, self._event_type, self._fn = listeners, event_type, fn

    def remove(self) -> None:
        """Stop calling the listener. Idempotent."""
        fns = self._listeners.get(self._event_type)
        if fns is not None and self._fn in fns:
            fns.remove(self._fn)

    def __repr__(self) -> str:
        return f"<Listener {self._event_type!r} {self._fn!r}>"


class _Delivery:
    """One batch on its way to its subscribers: settled once all have it, or one never will."""

    __slots__ = ("batch", "buffer", "waiting")

    def __init__(self, batch: Batch, waiting: int, buffer: EventBuffer) -> None:
        self.batch, self.waiting, self.buffer = batch, waiting, buffer

    def received(self) -> None:
        if self.waiting:  # 0: already settled as lost
            self.waiting -= 1
            if not self.waiting:
                self.buffer.settle(self.batch.count)

    def missed(self) -> None:
        if self.waiting:
            self.waiting = 0
            self.buffer.settle(self.batch.count, lost=True)


class _Subscription(trio.abc.ReceiveChannel[Batch]):
    """A subscriber's channel, which notes when its consumer has drained it.

    Drained means the consumer received the end of the channel (its ``async
    for`` finished) or closed it: then the close of the stream can go on. A
    batch counts as received by this subscriber when it leaves the channel;
    batches still in it when the channel is closed, or dropped, are missed.
    """

    __slots__ = ("_receive", "done", "send")

    def __init__(self, max_pending: int) -> None:
        self.send, self._receive = trio.open_memory_channel[_Delivery](max_pending)
        self.done = trio.Event()

    async def receive(self) -> Batch:
        try:
            delivery = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.done.set()
            raise
        delivery.received()
        return delivery.batch

    async def aclose(self) -> None:
        self.drop()
        await self._receive.aclose()
        self.done.set()

    def drop(self) -> None:
        """Miss every batch still in the channel: its subscriber will never take them."""
        while True:
            try:
                self._receive.receive_nowait().missed()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return


@final
class EventStream:
    """Publishes an `EventBuffer`'s batches; owns its auto-flush.

    Args:
        buffer: The buffer to drain. The stream becomes its one owner
            (`EventBuffer.set_wakeup`).
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_consumer",
        "_flusher_running",
        "_listeners",
        "_lock",
        "_nap",
        "_publish_deadline",
        "_publishing",
        "_slowest_flush",
        "_start_flusher",
        "_subscriptions",
        "_warned_unheard",
    )

    def __init__(self, buffer: EventBuffer) -> None:
        if not isinstance(buffer, EventBuffer):
            raise TypeError(f"buffer must be an EventBuffer, got {buffer!r}")
        buffer.set_wakeup(self._wake)
        self._buffer = buffer
        self._subscriptions: list[_Subscription] = []
        self._listeners: dict[str, list[Callable[[Any], object]]] = {}
        self._lock: trio.StrictFIFOLock | None = None  # from the first publication
        self._nap: trio.CancelScope | None = None  # the auto-flush's sleep, from its first
        self._closed = False
        self._slowest_flush = 0.0
        self._consumer: trio.Event | None = None  # set when one comes, for a publisher holding
        self._warned_unheard = False
        self._publish_deadline = math.inf  # set by aclose: when publishing must give up
        self._publishing: trio.CancelScope | None = None
        self._start_flusher: Callable[[], object] | None = None  # see flush_on_demand
        self._flusher_running = False

    @property
    def buffer(self) -> EventBuffer:
        """The buffer this stream drains."""
        return self._buffer

    # -- consumers ---------------------------------------------------------

    def on(self, event_type: str, fn: Callable[[Any], object]) -> Listener:
        """Call ``fn(data)`` for every published event of *event_type*.

        Listeners run synchronously in the publishing task, after the batch
        has been handed to every subscriber. An exception from a listener is
        not swallowed: it propagates out of the publishing call and so fails
        the scope that owns the stream (a bug in a listener closes its
        socket, it does not vanish into a log). All listeners are removed
        when the stream closes.

        A listener is a consumer: the first one ends the holding of batches
        (see the module docstring). Without a subscriber, the events of
        types that no listener takes are counted as lost; subscribe in the
        same step, before any ``await``, to receive them.
        """
        if not callable(fn):
            raise TypeError(f"listener must be callable, got {fn!r}")
        if self._closed:
            raise trio.ClosedResourceError("the event stream is closed")
        self._listeners.setdefault(event_type, []).append(fn)
        self._consumer_came()
        return Listener(self._listeners, event_type, fn)

    @asynccontextmanager
    async def subscribe(
        self, max_pending: int = 16
    ) -> AsyncIterator[trio.abc.ReceiveChannel[Batch]]:
        """A channel receiving every batch published from now on, in order.

        The first consumer also receives the batches held until it came
        (nothing decoded before the first subscriber is lost): the
        auto-flush task, or else the next publication, hands them over. At most
        *max_pending* batches wait in the channel; beyond that publishing
        waits for this subscriber (backpressure, never loss). A batch holds at
        most the buffer's ``max_items`` events, and an ``immediate`` one at
        most what one network read brought, so this bounds the memory a slow
        subscriber holds. When the stream
        closes, the channel ends after its last batch, so ``async for batch in
        channel`` simply finishes. Batches left in the channel when the
        subscriber leaves (or when the close's grace runs out) are counted as
        lost.
        """
        check_count(max_pending, "max_pending", minimum=1)
        if self._closed:
            raise trio.ClosedResourceError("the event stream is closed")
        subscription = _Subscription(max_pending)
        self._subscriptions.append(subscription)
        self._consumer_came()
        try:
            async with subscription:
                yield subscription
        finally:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
            subscription.send.close()

    # -- producers ---------------------------------------------------------

    async def emit(self, event_type: str, data: Any) -> None:
        """Feed one event to the buffer, and publish if that made a batch ready."""
        if self._buffer.emit(event_type, data):
            await self.publish_ready()

    async def publish_ready(self) -> None:
        """Publish every batch the buffer has ready, oldest first.

        With no consumer, the batches stay held (see the module docstring):
        this returns at once while they are within the buffer's
        ``max_items`` events, and otherwise waits for a consumer.
        """
        if self._lock is None:
            self._lock = trio.StrictFIFOLock()
        async with self._lock:
            while True:
                if self._buffer.ready and not self._has_consumer():
                    if not await self._hold():
                        return
                    continue
                batch = self._buffer.take_ready()
                if batch is None:
                    return
                with trio.CancelScope(shield=True, deadline=self._publish_deadline) as scope:
                    self._publishing = scope
                    await self._publish(batch)
                self._publishing = None
                if scope.cancelled_caught:
                    return

    def flush_on_demand(self, start: Callable[[], object]) -> None:
        """Run the auto-flush as a task only while events are pending.

        *start* is called whenever work appears (an event becomes pending, a
        ``buffering()`` block makes a batch, a consumer comes for held
        batches) and no auto-flush task exists; it must start one in the
        owner's nursery that awaits `auto_flush_while_pending`, for example
        ``stream.flush_on_demand(lambda: nursery.start_soon(stream.auto_flush_while_pending))``.
        An idle stream so has no task at all.
        """
        self._start_flusher = start
        if self._buffer.next_flush_at is not None or self._buffer.ready:
            self._wake(0.0)

    async def auto_flush_while_pending(self) -> None:
        """The task `flush_on_demand` starts: the auto-flush, until nothing is pending.

        It flushes when the oldest pending event has waited
        ``flush_interval`` seconds, publishes batches made by ``buffering()``
        blocks as they end and batches held until a consumer came, and
        returns once the buffer is empty.
        """
        try:
            while await self._auto_flush_round():
                pass
        finally:
            self._flusher_running = False

    async def aclose(self, grace: float = DEFAULT_GRACE) -> None:
        """Close in order, losing nothing that can be delivered within *grace*.

        Final flush (reason CLOSE) and its publication; then every
        subscriber channel is closed and the stream waits until each
        subscriber has drained it and left; then listeners are removed.
        Waiting is bounded by *grace* seconds in all (0: no waiting at all);
        events that no consumer received by then are counted (`lost`) and
        logged, as are held events when there is no consumer. Idempotent.
        """
        if grace != 0 or isinstance(grace, bool):
            check_seconds(grace, "grace")
        if self._closed:
            return
        self._closed = True
        lost_before = self._buffer.stats.lost
        self._buffer.close()
        self._publish_deadline = trio.current_time() + grace
        if self._publishing is not None:
            self._publishing.deadline = min(self._publishing.deadline, self._publish_deadline)
        if self._consumer is not None:  # a publisher holding for a consumer: none will come
            self._consumer.set()
        # Shielded: closing runs the same way when the owner is being cancelled.
        with trio.move_on_after(grace, shield=True) as timer:
            await self.publish_ready()
            for subscription in self._subscriptions:
                subscription.send.close()
            for subscription in list(self._subscriptions):
                await subscription.done.wait()
        if timer.cancelled_caught:
            self._count_lost(lost_before)
        for subscription in self._subscriptions:
            subscription.send.close()
        self._subscriptions.clear()
        self._listeners.clear()
        # A closed stream wakes no one: letting go of the owner's callbacks ends
        # the reference cycles through them, so the socket is freed at once.
        self._start_flusher = None
        self._buffer.set_wakeup(None)

    # -- reading -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `aclose` has begun."""
        return self._closed

    @property
    def subscribers(self) -> int:
        """Subscribers currently attached."""
        return len(self._subscriptions)

    @property
    def slowest_flush(self) -> float:
        """The longest any batch took to publish, in seconds (Trio's clock)."""
        return self._slowest_flush

    @property
    def lost(self) -> int:
        """Events no consumer received, and none ever will (`BufferStats.lost`)."""
        return self._buffer.stats.lost

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventStream {state} subscribers={len(self._subscriptions)} {self._buffer!r}>"

    # -- internals -----------------------------------------------------------

    async def _publish(self, batch: Batch) -> None:
        started = trio.current_time()
        if self._subscriptions:
            await self._hand_to_subscribers(batch)
            for event_type, items in batch.groups:
                fns = self._listeners.get(event_type)
                if fns:
                    for fn in list(fns):
                        for data in items:
                            fn(data)
        else:
            self._hand_to_listeners(batch)
        self._slowest_flush = max(self._slowest_flush, trio.current_time() - started)

    async def _hand_to_subscribers(self, batch: Batch) -> None:
        subscriptions = list(self._subscriptions)
        delivery = _Delivery(batch, len(subscriptions), self._buffer)
        handed = 0
        try:
            for subscription in subscriptions:
                try:
                    await subscription.send.send(delivery)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    delivery.missed()  # the subscriber left while the batch was on its way
                    if subscription in self._subscriptions:
                        self._subscriptions.remove(subscription)
                handed += 1
        finally:
            if handed < len(subscriptions):  # cut short by the close's grace period
                delivery.missed()

    def _hand_to_listeners(self, batch: Batch) -> None:
        """Publish to listeners alone: what none of them takes reaches no one."""
        delivered = 0
        try:
            for event_type, items in batch.groups:
                fns = self._listeners.get(event_type)
                if not fns:
                    self._warn_unheard(event_type)
                    continue
                for fn in list(fns):
                    for data in items:
                        fn(data)
                delivered += len(items)
        finally:  # a listener that raises leaves the rest of the batch unreceived
            self._buffer.settle(delivered)
            self._buffer.settle(batch.count - delivered, lost=True)

    def _has_consumer(self) -> bool:
        return bool(self._subscriptions) or any(self._listeners.values())

    async def _hold(self) -> bool:
        """No consumer for the ready batches: returns whether to publish them now.

        They stay in the buffer while they are fewer than its ``max_items``
        events; beyond that this waits for a consumer. A closed stream will
        have none: its held batches are lost.
        """
        buffer = self._buffer
        if self._closed:
            lost = self._lose_ready()
            logger.warning(
                "event stream closed: %d events lost: no subscriber or listener took them",
                lost,
                extra={"lost": lost, "tenant": buffer.tenant_id},
            )
            return False
        if buffer.in_flight < buffer.max_items:
            return False
        if self._consumer is None:
            self._consumer = trio.Event()
        await self._consumer.wait()
        return True

    def _consumer_came(self) -> None:
        if self._consumer is not None:
            self._consumer.set()
            self._consumer = None
        if self._buffer.ready:  # held batches: the auto-flush publishes them
            self._wake(0.0)

    async def _auto_flush_round(self) -> bool:
        """Publish, flush what is due, or sleep until it is due.

        Returns False at once if nothing is pending.
        """
        buffer = self._buffer
        if buffer.ready:  # most wakeups find nothing made yet: skip the lock
            await self.publish_ready()
        due = buffer.next_flush_at
        if due is None:
            return False
        if buffer.clock() >= due:
            buffer.flush(FlushReason.INTERVAL)
            return True
        with trio.CancelScope(deadline=trio.current_time() + due - buffer.clock()) as self._nap:
            await trio.sleep_forever()
        return True

    def _wake(self, delay: float) -> None:
        if self._start_flusher is not None and not self._flusher_running:
            if not self._closed:
                self._flusher_running = True
                self._start_flusher()
            return
        if self._nap is not None:
            self._nap.deadline = min(self._nap.deadline, trio.current_time() + delay)

    def _count_lost(self, lost_before: int) -> None:
        """The grace period is over: whatever no consumer has received, none ever will."""
        self._lose_ready()
        waiting = 0
        for subscription in self._subscriptions:
            if not subscription.done.is_set():
                waiting += 1
                subscription.drop()
        # Still in flight: a publication cut short in another task, which settles it as lost.
        lost = self._buffer.stats.lost - lost_before + self._buffer.in_flight
        logger.warning(
            "event stream closed after its grace period: %d events lost, "
            "%d subscribers had not drained",
            lost,
            waiting,
            extra={"lost": lost, "subscribers_waiting": waiting, "tenant": self._buffer.tenant_id},
        )

    def _lose_ready(self) -> int:
        lost = 0
        while (batch := self._buffer.take_ready()) is not None:
            lost += batch.count
        self._buffer.settle(lost, lost=True)
        return lost

    def _warn_unheard(self, event_type: str) -> None:
        if self._warned_unheard:
            return
        self._warned_unheard = True
        logger.warning(
            "events of type %s reached no subscriber and no listener: counted as lost"
            " (logged once per stream)",
            event_type,
            extra={"event_type": event_type, "tenant": self._buffer.tenant_id},
        )
