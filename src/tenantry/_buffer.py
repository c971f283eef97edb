"""The event buffer: consolidates bursts of events into batches.

Theory of operation
===================

A connection that comes back online receives a burst -- a history sync, the
messages queued while it was away, a receipt for each of them. Handing each
event to the application one by one is slow and makes it see states that are
already stale. Baileys, a WhatsApp Web library, therefore *buffers*:
while buffering, events are held and merged by the rules of their type (see
`tenantry.EventRules`), and a flush hands the application one consolidated
`Batch`. Production deployments of it add an auto-flush every 5 seconds and
a forced flush at 1,000 pending items, so that buffering left on cannot make
events wait forever.

This module is the pure part: an `EventBuffer` holds pending events (in the
stores of plans it compiles from the rule table, once, when it first holds
events: see the consolidation plans) and turns them into batches; it reads a
clock but never sleeps, and it delivers nothing itself. Batches it makes wait
in its *ready* queue until the owner takes them (`EventBuffer.take_ready`)
and publishes them; `EventStream` does that, and runs the auto-flush task.
`EventBuffer.emit` returns True when a batch became ready, so that the task
feeding events -- a socket's reader -- publishes it before reading more, and
a slow subscriber slows the reader instead of growing memory.

Events that are not held (nothing is buffering, or their type is never
buffered) are not one batch each. They join the *open run*: consecutive
events of one type, in arrival order, sealed into one IMMEDIATE batch when
the owner takes it (`EventBuffer.take_ready`), when an event of another type
arrives, when any other batch is made, or at ``max_items`` events. A socket's
reader emits every event one network read completes and then publishes: the
read's events travel as one batch (one per run of a type), and none of them
waits for a later read. Sealing on a change of type keeps arrival order
without changing a batch's shape: within a run there is nothing to reorder.

Two defects of such a hand-managed buffer are absent by construction. A
``destroy`` that throws pending events away: here `EventBuffer.close` makes a
final batch of everything pending. A forced final flush that is a no-op when
the nesting counter is already zero: here `EventBuffer.flush` flushes whatever
the depth, and the depth is a context manager that cannot leak.

Counting: ``received == delivered + merged + lost + pending + in_flight``
holds after every call. *merged* counts events folded into (or cancelled by)
another pending event, *pending* the items now held, and *in_flight* the
events in batches made but not yet settled. Whoever takes the batches settles
them (`EventBuffer.settle`) as *delivered* once a consumer has received them,
or as *lost* when none ever will: the buffer alone cannot know which, and a
batch made is not yet a batch received.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, final

import attrs
import trio

from ._cache import BoundedCache
from ._clock import Clock, resolve_clock
from ._events import Batch, FlushReason
from ._plans import (
    AppendPlan,
    Drain,
    HistoryPlan,
    ImmediatePlan,
    KeyedPlan,
    Plans,
    compile_rules,
    key_getter,
)
from ._rules import DEFAULT_EVENT_RULES, EventRules, KeySpec, RuleKind
from ._validate import positive_count, seconds

__all__ = ["BufferConfig", "BufferStats", "EventBuffer", "InvalidEvent"]


class InvalidEvent(ValueError):
    """An event whose data does not fit its type's rule (e.g. it has no key)."""


@final
@attrs.frozen(kw_only=True)
class BufferConfig:
    """How an `EventBuffer` buffers; the defaults are the Baileys defaults.

    Args:
        flush_interval: No pending event waits longer than this (seconds).
        max_items: Reaching this many pending items flushes at once.
        always_buffer: Buffer every bufferable event, not only inside
            `EventBuffer.buffering` (a throughput mode: fewer, larger batches).
        history_max_keys: Size of the cache that de-duplicates history-sync
            entities across flushes.
    """

    flush_interval: float = attrs.field(default=5.0, validator=seconds)
    max_items: int = attrs.field(default=1000, validator=positive_count)
    always_buffer: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    history_max_keys: int = attrs.field(default=10_000, validator=positive_count)


@final
@attrs.frozen
class BufferStats:
    """A snapshot of an `EventBuffer`'s counters.

    ``received == delivered + merged + lost + pending + in_flight`` always holds.
    """

    received: int
    """Events taken by `EventBuffer.emit`."""
    delivered: int
    """Events a consumer received (settled as delivered by the buffer's owner)."""
    merged: int
    """Events folded into, or cancelled by, another pending event."""
    lost: int
    """Events no consumer received, and none ever will (settled as lost)."""
    pending: int
    """Items held now, waiting for the next flush."""
    in_flight: int
    """Events in batches made but not yet settled: waiting to be published, or
    published and not yet received."""
    flushes: Mapping[FlushReason, int]
    """Batches made, by reason. An empty buffer never flushes."""
    history_cache_size: int
    """History-sync entity keys remembered for de-duplication (at most
    `BufferConfig.history_max_keys`)."""
    history_duplicates: int
    """History-sync entities dropped as already seen."""


class _History:
    """The one pending history item: its entities by key, and its other fields."""

    __slots__ = ("fields", "parts")

    def __init__(self, parts: tuple[tuple[str, KeySpec], ...]) -> None:
        self.parts: dict[str, dict[Any, Any]] = {part: {} for part, _ in parts}
        self.fields: dict[str, Any] = {}

    def item(self) -> dict[str, Any]:
        return {**self.fields, **{part: list(held.values()) for part, held in self.parts.items()}}


@final
class EventBuffer:
    """Holds, merges and batches one connection's events.

    Args:
        config: See `BufferConfig`.
        rules: The consolidation table; `DEFAULT_EVENT_RULES` by default.
        tenant_id: Stamped on every batch.
        clock: As for `BoundedCache`: the Trio run's clock by default.
    """

    __slots__ = (
        "_always",
        "_clock",
        "_closed",
        "_delivered",
        "_depth",
        "_first_pending_at",
        "_flushes",
        "_history",
        "_history_cache",
        "_history_duplicates",
        "_history_max_keys",
        "_holding",
        "_in_flight",
        "_interval",
        "_keyed",
        "_lost",
        "_max_items",
        "_merged",
        "_order",
        "_pending",
        "_plans",
        "_ready",
        "_received",
        "_rules",
        "_run",
        "_run_type",
        "_seq",
        "_tenant_id",
        "_unkeyed",
        "_unknown",
        "_wakeup",
    )

    def __init__(
        self,
        config: BufferConfig | None = None,
        rules: EventRules = DEFAULT_EVENT_RULES,
        *,
        tenant_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        config = BufferConfig() if config is None else config
        if not isinstance(config, BufferConfig):
            raise TypeError(f"config must be a BufferConfig, got {config!r}")
        if not isinstance(rules, EventRules):
            raise TypeError(f"rules must be an EventRules table, got {rules!r}")
        self._clock = resolve_clock(clock)
        self._interval = config.flush_interval
        self._max_items = config.max_items
        self._always = config.always_buffer
        self._tenant_id = tenant_id
        # Built by the first history event: most sockets never see one.
        self._history_cache: BoundedCache[tuple[str, Any], bool] | None = None
        self._history_max_keys = config.history_max_keys
        # The plans hold this buffer's pending events, and a socket that never
        # buffers never needs them: they are compiled when holding first begins.
        self._rules = rules
        self._plans: Plans | None = None
        # The compiled plans' parts, read on every emit and flush: keyed types'
        # plans, the others', and the canonical batch order (`Plans`).
        self._keyed: dict[str, KeyedPlan] = {}
        self._unkeyed: dict[str, AppendPlan | HistoryPlan | ImmediatePlan] = {}
        self._order: list[tuple[str, Drain | None]] = []
        self._history: _History | None = None
        self._unknown: dict[str, list[Any]] = {}

        self._depth = 0
        self._holding = self._always  # whether bufferable events are held now
        if self._holding:
            self._compile()
        self._closed = False
        self._pending = 0
        self._first_pending_at = 0.0
        self._ready: list[Batch] = []
        # The open run: events passed straight on, not yet sealed into a batch.
        self._run: list[Any] = []
        self._run_type: str | None = None
        self._seq = 0
        self._received = self._delivered = self._merged = self._history_duplicates = 0
        self._lost = self._in_flight = 0
        self._flushes: dict[FlushReason, int] = {}  # by reason, from its first batch
        self._wakeup: Callable[[float], object] | None = None

    # -- feeding ---------------------------------------------------------

    def emit(self, event_type: str, data: Any) -> bool:
        """Take one event. Returns True when the owner should publish before taking more.

        That is when a batch became ready (an open run counts from its first
        event), and, while events go straight on, whenever ``max_items``
        events are in flight, so that an owner who publishes only on True
        never lets more than that wait unpublished.

        Raises:
            InvalidEvent: the data does not fit the type's rule (nothing is
                counted or kept).
            trio.ClosedResourceError: the buffer is closed.
        """
        if event_type.__class__ is not str or not event_type:  # often the peer's value
            _check_event_type(event_type)
        if not self._holding:
            return self._emit_straight(event_type, data)
        plan = self._keyed.get(event_type)
        if plan is None:
            return self._emit_unkeyed(event_type, data)
        if data.__class__ is not dict and not isinstance(data, Mapping):
            raise InvalidEvent(f"{event_type} data must be a mapping, got {type(data).__name__}")
        try:
            key = plan.key(data)
            existing = plan.store.get(key)  # hashes the key: the last step that can fail
        except Exception as exc:
            raise InvalidEvent(f"{event_type} event without a valid key: {exc!r}") from exc
        try:
            merged = plan.put(key, data, existing)  # raises only from a rule's merge function
        except Exception as exc:
            raise InvalidEvent(f"{event_type} event that cannot merge: {exc!r}") from exc
        self._received += 1
        if merged:
            self._merged += merged
            if not plan.cancels:
                return False  # folded into a pending event of its key
            self._pending -= merged  # a delete cancelled them, and is held itself
        self._pending += 1  # as `_added`, inlined on the hot path
        if self._pending == 1 or self._pending >= self._max_items:
            return self._added_edge()
        return False

    @contextlib.contextmanager
    def buffering(self) -> Iterator[None]:
        """Buffer bufferable events inside this block; nestable.

        The outermost block's exit flushes (reason EXPLICIT), even when it
        exits by an exception: the depth can never be left raised.
        """
        if self._closed:
            raise trio.ClosedResourceError("the event buffer is closed")
        self._depth += 1
        self._holding = True
        if self._plans is None:
            self._compile()
        try:
            yield
        finally:
            self._leave_block()

    def flush(self, reason: FlushReason = FlushReason.EXPLICIT) -> bool:
        """Make a batch of everything pending. Returns False if nothing was."""
        if not self._pending:
            return False
        groups: list[tuple[str, tuple[Any, ...]]] = []
        for event_type, take in self._order:
            items = self._take_history() if take is None else take()
            if items:
                groups.append((event_type, items))
        groups.extend((event_type, tuple(unknown)) for event_type, unknown in self._unknown.items())
        self._unknown.clear()
        count, self._pending = self._pending, 0
        self._make_batch(tuple(groups), count, reason)
        return True

    def take_ready(self) -> Batch | None:
        """The oldest batch ready to publish, or None.

        The open run is sealed into a batch when it is the oldest. The
        batch's events stay *in flight* until the taker settles them
        (`settle`).
        """
        if self._ready:
            return self._ready.pop(0)
        if self._run_type is None:
            return None
        self._seal_run(self._run_type)
        return self._ready.pop()

    def settle(self, count: int, *, lost: bool = False) -> None:
        """Record what became of *count* in-flight events: received, or *lost*.

        Whoever takes the batches settles each of their events once: when a
        consumer has received it, or when it is known that none ever will.

        Raises:
            ValueError: more events than are in flight.
        """
        if not 0 <= count <= self._in_flight:
            raise ValueError(f"cannot settle {count} events: {self._in_flight} are in flight")
        self._in_flight -= count
        if lost:
            self._lost += count
        else:
            self._delivered += count

    def close(self) -> bool:
        """Final flush (reason CLOSE) and refuse further events.

        Returns whether the final flush made a batch. Idempotent.
        """
        if self._closed:
            return False
        self._closed = True
        self._holding = False  # every emit now takes the path that refuses it
        return self.flush(FlushReason.CLOSE)

    # -- reading ---------------------------------------------------------

    @property
    def depth(self) -> int:
        """How many `buffering` blocks are open."""
        return self._depth

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def pending(self) -> int:
        """Items held (after merging), waiting for a flush."""
        return self._pending

    @property
    def ready(self) -> int:
        """Batches made but not yet taken, the open run included."""
        return len(self._ready) + (self._run_type is not None)

    @property
    def in_flight(self) -> int:
        """Events in batches made but not yet settled (`settle`)."""
        return self._in_flight

    @property
    def max_items(self) -> int:
        """Pending items that force a flush (`BufferConfig.max_items`)."""
        return self._max_items

    @property
    def next_flush_at(self) -> float | None:
        """When (on this buffer's clock) the oldest pending event is due, or None."""
        return self._first_pending_at + self._interval if self._pending else None

    @property
    def clock(self) -> Clock:
        """The clock this buffer reads."""
        return self._clock

    @property
    def tenant_id(self) -> str | None:
        """The tenant stamped on this buffer's batches."""
        return self._tenant_id

    @property
    def stats(self) -> BufferStats:
        """A `BufferStats` snapshot."""
        return BufferStats(
            received=self._received,
            delivered=self._delivered,
            merged=self._merged,
            lost=self._lost,
            pending=self._pending,
            in_flight=self._in_flight,
            flushes=MappingProxyType({r: self._flushes.get(r, 0) for r in FlushReason}),
            history_cache_size=0 if self._history_cache is None else len(self._history_cache),
            history_duplicates=self._history_duplicates,
        )

    def set_wakeup(self, callback: Callable[[float], object] | None) -> None:
        """Install the function told when the owner has work sooner than before.

        ``callback(delay)`` is called when the first event becomes pending
        (a flush is due in ``flush_interval`` seconds) and when a
        `buffering` block's exit made a batch (due now). One at a time.
        """
        if callback is not None and self._wakeup is not None:
            raise RuntimeError("the event buffer already has an owner")
        self._wakeup = callback

    def __repr__(self) -> str:
        tenant = "" if self._tenant_id is None else f" tenant={self._tenant_id!r}"
        state = "closed" if self._closed else f"depth={self._depth}"
        return f"<EventBuffer{tenant} {state} pending={self._pending} ready={self.ready}>"

    # -- internals -------------------------------------------------------

    def _added(self) -> bool:
        """One more pending item: start the clock, or flush on size."""
        self._pending += 1
        if self._pending == 1 or self._pending >= self._max_items:
            return self._added_edge()
        return False

    def _added_edge(self) -> bool:
        """The first pending item starts the flush clock; the last allowed one flushes."""
        if self._pending == 1:
            self._first_pending_at = self._clock()
            self._wake(self._interval)
        if self._pending >= self._max_items:
            return self.flush(FlushReason.SIZE)
        return False

    def _leave_block(self) -> None:
        self._depth -= 1
        self._holding = not self._closed and (self._always or self._depth > 0)
        if not self._depth and not self._closed and self.flush(FlushReason.EXPLICIT):
            self._wake(0.0)

    def _emit_now(self, event_type: str, data: Any) -> bool:
        """Pass an event straight on: it joins the open run, or opens one."""
        if self._closed:
            raise trio.ClosedResourceError("the event buffer is closed")
        self._received += 1
        self._in_flight += 1  # in flight from now: the open run is a batch not yet sealed
        run = self._run
        if event_type == self._run_type and len(run) < self._max_items:
            run.append(data)
            return self._in_flight >= self._max_items
        if self._run_type is not None:
            self._seal_run(self._run_type)
            run = self._run
        self._run_type = event_type
        run.append(data)
        return True

    def _seal_run(self, event_type: str) -> None:
        """Make the open run, of *event_type*, a batch: its events are in flight already."""
        run = self._run
        self._run, self._run_type = [], None
        self._seq += 1
        self._flushes[FlushReason.IMMEDIATE] = self._flushes.get(FlushReason.IMMEDIATE, 0) + 1
        batch = Batch(
            ((event_type, tuple(run)),), len(run), FlushReason.IMMEDIATE, self._seq, self._tenant_id
        )
        self._ready.append(batch)

    def _emit_straight(self, event_type: str, data: Any) -> bool:
        """Pass an event straight on, after the checks its rule would make if held."""
        rule = self._rules.get(event_type)
        if rule is not None and rule.key is not None:
            if not isinstance(data, Mapping):
                raise InvalidEvent(
                    f"{event_type} data must be a mapping, got {type(data).__name__}"
                )
            try:
                hash(key_getter(rule.key)(data))
            except Exception as exc:
                raise InvalidEvent(f"{event_type} event without a valid key: {exc!r}") from exc
        elif rule is not None and rule.kind is RuleKind.HISTORY:
            _history_entities(rule.parts, event_type, data)
        return self._emit_now(event_type, data)

    def _emit_unknown(self, event_type: str, data: Any) -> bool:
        self._received += 1
        items = self._unknown.get(event_type)
        if items is None:
            self._unknown[event_type] = [data]
        else:
            items.append(data)
        return self._added()

    def _emit_unkeyed(self, event_type: str, data: Any) -> bool:
        """Take an event of a type held without a key: appended, history, or unknown."""
        plan = self._unkeyed.get(event_type)
        if plan is None:
            return self._emit_unknown(event_type, data)
        if isinstance(plan, ImmediatePlan):
            return self._emit_now(event_type, data)
        if isinstance(plan, AppendPlan):
            self._received += 1
            plan.items.append(data)
            return self._added()
        merging = self._history is not None
        self._absorb_history(plan.parts, event_type, data)
        self._received += 1
        if merging:
            self._merged += 1
            return False
        return self._added()

    def _absorb_history(
        self, parts: tuple[tuple[str, KeySpec], ...], event_type: str, data: Any
    ) -> None:
        """Merge a history event into the pending history item, new entities only."""
        fields, keyed = _history_entities(parts, event_type, data)
        if self._history is None:
            self._history = _History(parts)
        cache = self._history_cache
        if cache is None:
            cache = self._build_history_cache()
        history = self._history
        history.fields.update(fields)
        for part, items in keyed:
            held = history.parts[part]
            for key, item in items:
                if key in held or key in cache:
                    self._history_duplicates += 1
                    continue
                cache.set(key, value=True)
                held[key] = item

    def _build_history_cache(self) -> BoundedCache[tuple[str, Any], bool]:
        self._history_cache = BoundedCache(
            "event_history", self._history_max_keys, clock=self._clock
        )
        return self._history_cache

    def _take_history(self) -> tuple[Any, ...]:
        if self._history is None:
            return ()
        item, self._history = self._history.item(), None
        return (item,)

    def _make_batch(
        self, groups: tuple[tuple[str, tuple[Any, ...]], ...], count: int, reason: FlushReason
    ) -> None:
        if self._run_type is not None:  # the open run came first
            self._seal_run(self._run_type)
        self._seq += 1
        self._in_flight += count
        self._flushes[reason] = self._flushes.get(reason, 0) + 1
        self._ready.append(Batch(groups, count, reason, self._seq, self._tenant_id))

    def _wake(self, delay: float) -> None:
        if self._wakeup is not None:
            self._wakeup(delay)

    def _compile(self) -> None:
        """Turn the rule table into plans: this buffer's stores and the batch order."""
        plans = self._plans = compile_rules(self._rules)
        self._keyed, self._unkeyed, self._order = plans.keyed, plans.unkeyed, plans.order


def _check_event_type(event_type: object) -> None:
    """Raise `InvalidEvent` unless *event_type* is a non-empty string."""
    if not isinstance(event_type, str) or not event_type:
        shown = "an empty one" if isinstance(event_type, str) else type(event_type).__name__
        raise InvalidEvent(f"event type must be a non-empty string, got {shown}")


def _history_entities(
    parts: tuple[tuple[str, KeySpec], ...], event_type: str, data: Any
) -> tuple[dict[str, Any], list[tuple[str, list[tuple[Any, Any]]]]]:
    """A history event's other fields, and its entities by part with their keys.

    Raises:
        InvalidEvent: *data* is not a mapping, or an entity has no hashable key.
    """
    try:
        fields = dict(data.items())
        keyed = [
            (part, [((part, key(item)), item) for item in fields.pop(part, None) or ()])
            for part, key in [(part, key_getter(spec)) for part, spec in parts]
        ]
        for _, items in keyed:
            for key, _ in items:
                hash(key)
    except Exception as exc:
        raise InvalidEvent(f"{event_type} event with an invalid entity: {exc!r}") from exc
    return fields, keyed
