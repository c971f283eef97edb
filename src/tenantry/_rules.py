"""Consolidation rules: how buffered events of each type merge, as a table.

Baileys, a WhatsApp Web library, hard-codes, event type by event type, how a burst
of events (a history sync, the messages queued while offline) collapses into
one consolidated batch. tenantry keeps the same rules as data: a table from
event type to a `Rule` (a kind, a key, and for entity events the entity the
type belongs to). `EventBuffer` reads the table; users extend it for their
own event types.

The rules are chosen so that one property holds: a consumer that applies
upserts and updates as shallow merges into a key-value store (``store[key] =
{**store.get(key, {}), **data}``), deletes as removals, appended events as
appends, and history entities as first-wins inserts, ends in the same state
whether it sees the raw events one by one or the consolidated batches.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from ._validate import check_name

__all__ = ["DEFAULT_EVENT_RULES", "EventRules", "KeySpec", "Rule", "RuleKind", "message_key"]


def message_key(data: Any) -> tuple[Any, Any, bool]:
    """A message's key: ``(remoteJid, id, fromMe)`` from the event's ``"key"``."""
    key = data["key"]
    return (key["remoteJid"], key["id"], bool(key.get("fromMe", False)))


KeySpec = str | Callable[[Any], Hashable]
"""How to find an event's key: a field name (``"id"`` means ``data["id"]``) or a function."""


class RuleKind(enum.Enum):
    """How buffered events of one type consolidate."""

    UPSERT = "upsert"
    """Keyed. A later upsert of a pending key merges into it (later fields
    win); it absorbs a pending update of its key."""
    UPDATE = "update"
    """Keyed. Merges into a pending upsert of its key, else into the pending
    update of its key."""
    DELETE = "delete"
    """Keyed. Cancels pending upserts and updates of its key, then is itself
    delivered (before its entity's upserts and updates)."""
    APPEND_PER_KEY = "append-per-key"
    """Keyed. Every event is kept, grouped by key (reactions, receipts)."""
    LAST_WINS = "last-wins"
    """Keyed. A later event of a pending key replaces it."""
    FIRST_WINS = "first-wins"
    """Keyed. Later events of a pending key are dropped."""
    APPEND = "append"
    """Every event is kept, in order. Also what happens to unknown types."""
    HISTORY = "history"
    """A history sync: lists of entities, merged across events and
    de-duplicated against a bounded cache of entities already delivered."""
    IMMEDIATE = "immediate"
    """Never buffered: delivered at once as a one-event batch, even while
    buffering (``connection.update``, ``creds.update``)."""


_KEYED = frozenset(
    {
        RuleKind.UPSERT,
        RuleKind.UPDATE,
        RuleKind.DELETE,
        RuleKind.APPEND_PER_KEY,
        RuleKind.LAST_WINS,
        RuleKind.FIRST_WINS,
    }
)
_ENTITY = frozenset({RuleKind.UPSERT, RuleKind.UPDATE, RuleKind.DELETE})


def _key_spec(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, str) and value:
        return
    if not callable(value):
        raise TypeError(f"{attribute.name} must be a field name or a function, got {value!r}")


@final
@attrs.frozen
class Rule:
    """How one event type is buffered.

    Args:
        kind: See `RuleKind`.
        key: For keyed kinds: a field name or a function of the event data.
        entity: For upserts, updates and deletes: the entity the type acts
            on (``"chats"``), tying e.g. ``chats.delete`` to ``chats.upsert``.
        parts: For `RuleKind.HISTORY`: ``(list field, key)`` pairs naming the
            entity lists an event carries and how to key their items.
    """

    kind: RuleKind = attrs.field(validator=attrs.validators.instance_of(RuleKind))
    key: KeySpec | None = attrs.field(default=None, validator=_key_spec)
    entity: str | None = None
    parts: tuple[tuple[str, KeySpec], ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.kind in _KEYED and self.key is None:
            raise ValueError(f"key is required for a {self.kind.value} rule")
        if self.kind not in _KEYED and self.key is not None:
            raise ValueError(f"key has no meaning for a {self.kind.value} rule")
        if (self.kind in _ENTITY) != (self.entity is not None):
            raise ValueError(
                "entity is required for upsert, update and delete rules, and only them"
            )
        if (self.kind is RuleKind.HISTORY) != bool(self.parts):
            raise ValueError("parts are required for a history rule, and only for it")


@final
class EventRules(Mapping[str, Rule]):
    """An ordered, read-only table from event type to `Rule`.

    Its order is the canonical order of types in a `Batch`. Extend it with
    `with_rules`; types without a rule are appended, never dropped.
    """

    __slots__ = ("_rules",)

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        for event_type, rule in rules.items():
            check_name(event_type, "event type")
            if not isinstance(rule, Rule):
                raise TypeError(f"rule for {event_type!r} must be a Rule, got {rule!r}")
        seen: dict[tuple[str, RuleKind], str] = {}
        for event_type, rule in rules.items():
            if rule.entity is not None:
                other = seen.setdefault((rule.entity, rule.kind), event_type)
                if other != event_type:
                    raise ValueError(
                        f"entity {rule.entity!r} has two {rule.kind.value} types: "
                        f"{other!r} and {event_type!r}"
                    )
        self._rules: Mapping[str, Rule] = MappingProxyType(dict(rules))

    def with_rules(self, rules: Mapping[str, Rule]) -> EventRules:
        """A new table with *rules* added (or replacing existing ones, in place)."""
        return EventRules({**self._rules, **rules})

    def __getitem__(self, event_type: str) -> Rule:
        return self._rules[event_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"EventRules({dict(self._rules)!r})"


DEFAULT_EVENT_RULES = EventRules(
    {
        "connection.update": Rule(RuleKind.IMMEDIATE),
        "creds.update": Rule(RuleKind.IMMEDIATE),
        "messaging-history.set": Rule(
            RuleKind.HISTORY,
            parts=(("chats", "id"), ("contacts", "id"), ("messages", message_key)),
        ),
        "chats.delete": Rule(RuleKind.DELETE, "id", "chats"),
        "chats.upsert": Rule(RuleKind.UPSERT, "id", "chats"),
        "chats.update": Rule(RuleKind.UPDATE, "id", "chats"),
        "contacts.upsert": Rule(RuleKind.UPSERT, "id", "contacts"),
        "contacts.update": Rule(RuleKind.UPDATE, "id", "contacts"),
        "messages.delete": Rule(RuleKind.DELETE, message_key, "messages"),
        "messages.upsert": Rule(RuleKind.UPSERT, message_key, "messages"),
        "messages.update": Rule(RuleKind.UPDATE, message_key, "messages"),
        "messages.reaction": Rule(RuleKind.APPEND_PER_KEY, message_key),
        "message-receipt.update": Rule(RuleKind.APPEND_PER_KEY, message_key),
        "groups.update": Rule(RuleKind.UPDATE, "id", "groups"),
    }
)
"""The Baileys defaults: WhatsApp Web's buffered event types and how they merge."""
