"""Events and the batches they are delivered in."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any, NamedTuple, final

import attrs

__all__ = ["Batch", "Event", "FlushReason"]


class Event(NamedTuple):
    """One decoded event: a type such as ``"messages.upsert"`` and its data.

    The data of a keyed event type (see `EventRules`) is one entity: a
    mapping that carries its key, e.g. ``{"key": {"remoteJid": ..., "id": ...,
    "fromMe": False}, ...}`` for a message or ``{"id": ...}`` for a chat.
    """

    type: str
    data: Any


class FlushReason(enum.Enum):
    """Why a `Batch` left its buffer."""

    INTERVAL = "interval"
    """The oldest pending event had waited ``flush_interval`` seconds."""
    SIZE = "size"
    """``max_items`` events were pending."""
    EXPLICIT = "explicit"
    """The outermost ``buffering()`` block ended, or the owner asked."""
    CLOSE = "close"
    """The owning scope is closing: the final flush."""
    IMMEDIATE = "immediate"
    """Events passed straight on, in arrival order: a type that is never
    buffered, or nothing was buffering. One batch holds a run of one type's
    events that arrived together (one network read's), never more than
    ``max_items``; no event in it waited for a later one."""


@final
@attrs.frozen(eq=False)
class Batch:
    """The events of one flush, grouped by type in a canonical order.

    Iterating over a batch gives its events (`Event`), in that order;
    ``batch[event_type]`` gives one type's data items, ``event_type in batch``
    tells whether it has any, and ``len(batch)`` counts the events.

    Within a type, events keep the order in which their keys first became
    pending. Types come in the order of the rule table (for each entity: its
    deletes, then its upserts, then its updates), then types without a rule
    in the order they first arrived. Replaying a batch into a key-value store
    gives the same store as replaying, one by one, the events it consolidates.
    """

    groups: tuple[tuple[str, tuple[Any, ...]], ...]
    """``(type, data items)`` pairs, in canonical order; no type is empty."""
    count: int
    """How many events (items) the batch holds."""
    reason: FlushReason
    seq: int
    """1, 2, 3, ... per buffer, in the order the batches were made."""
    tenant_id: str | None = None

    @property
    def events(self) -> Iterator[Event]:
        """Every event of the batch, in canonical order (as iterating over the batch gives)."""
        return iter(self)

    @property
    def types(self) -> tuple[str, ...]:
        """The event types present, in canonical order."""
        return tuple(event_type for event_type, _ in self.groups)

    def __getitem__(self, event_type: str) -> tuple[Any, ...]:
        """The data items of *event_type* (empty if the batch has none)."""
        for name, items in self.groups:
            if name == event_type:
                return items
        return ()

    def __iter__(self) -> Iterator[Event]:
        """Every event of the batch, in canonical order.

        Defined so that ``for event in batch`` ends: without it Python would
        iterate through `__getitem__` with 0, 1, 2, ... and never stop.
        """
        for event_type, items in self.groups:
            for data in items:
                yield Event(event_type, data)

    def __contains__(self, event_type: object) -> bool:
        """Whether the batch holds events of *event_type* (a type name, as `types` lists)."""
        return any(name == event_type for name, _ in self.groups)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {len(items)}" for name, items in self.groups)
        tenant = "" if self.tenant_id is None else f" tenant={self.tenant_id!r}"
        return f"<Batch #{self.seq}{tenant} {self.reason.value} ({counts})>"
