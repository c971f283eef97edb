"""Consolidation rules: how buffered events of each type merge, as a table.

Baileys, a WhatsApp Web library, hard-codes, event type by event type, how a burst
of events (a history sync, the messages queued while offline) collapses into
one consolidated batch. tenantry keeps the same rules as data: a table from
event type to a `Rule` (a kind, a key, and for entity events the entity the
type belongs to). `EventBuffer` reads the table; users extend it for their
own event types.

Rules without a merge function of their own are chosen so that one
property holds: a consumer that applies upserts and updates as shallow
merges into a key-value store (``store[key] = {**store.get(key, {}),
**data}``), deletes as removals, appended events as appends, and history
entities as first-wins inserts, ends in the same state whether it sees the
raw events one by one or the consolidated batches.

An upsert or update rule may carry ``merge(old, new) -> merged``: *old* is
the pending event of the key that *new* folds into, and the result is held
in its place. For an update, *old* is the entity's pending upsert of that key
if there is one, else the pending update; for an upsert, *old* is the pending
upsert, else the pending update it absorbs. Without one, the merge is the
shallow ``{**old, **new}``. The function must not mutate its arguments (they
are the application's objects); if it raises, the event is rejected as
`tenantry.InvalidEvent` and nothing is held.

The Baileys defaults for messages and chats carry such functions, and merge
as Baileys' own event buffer does, so that a consumer written for Baileys
ends in the same state with tenantry's batches as with its buffer's:

* ``messages.update`` items are ``{key, update}``. Into a pending message,
  the ``update`` fields are applied into the message itself; into a pending
  update, the two ``update`` objects merge field by field (later fields win).
* ``messages.upsert``: a later message replaces a pending one of its key,
  keeping the first one's ``messageTimestamp``; a pending update is applied
  into the message (the update's fields win).
* ``chats.upsert`` and ``chats.update`` merge shallowly, except
  ``unreadCount``, which adds up: a non-negative count is added to a pending
  one, a negative count replaces it, and None clears a negative one.

Contacts and groups merge shallowly. Where Baileys' buffer drops what the
raw events carry, the defaults keep it: a delete is delivered before the
upserts and updates of its entity that came after it (Baileys delivers a
message's upsert before its delete, losing a message re-sent after its
delete; it drops a chat's pending delete when the chat is updated), a
contact's pending update survives a later upsert of the contact, and every
``groups.update`` of a group is merged (Baileys keeps only the first).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from ._validate import check_name

__all__ = [
    "DEFAULT_EVENT_RULES",
    "EventRules",
    "KeySpec",
    "Rule",
    "RuleKind",
    "message_key",
]


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
    """Never buffered: delivered at once in an ``immediate`` batch, even
    while buffering (``connection.update``, ``creds.update``)."""


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
_MERGING = frozenset({RuleKind.UPSERT, RuleKind.UPDATE})


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
        merge: For upserts and updates: ``merge(old, new) -> merged``, how an
            event folds into the pending event of its key (see the module's
            notes); the shallow ``{**old, **new}`` when None.
    """

    kind: RuleKind = attrs.field(validator=attrs.validators.instance_of(RuleKind))
    key: KeySpec | None = attrs.field(default=None, validator=_key_spec)
    entity: str | None = None
    parts: tuple[tuple[str, KeySpec], ...] = ()
    merge: Callable[[Any, Any], Any] | None = attrs.field(default=None, kw_only=True)

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
        if self.merge is not None:
            if not callable(self.merge):
                raise TypeError(f"merge must be a function of (old, new), got {self.merge!r}")
            if self.kind not in _MERGING:
                raise ValueError(f"merge has no meaning for a {self.kind.value} rule")


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


def _merge_chats(old: Any, new: Any) -> Any:
    """Baileys' chat merge: shallow, with unread counts that add up."""
    before, after = old.get("unreadCount"), new.get("unreadCount")
    if after is None and "unreadCount" in new and _is_count(before) and before < 0:
        merged = {**old, **new}  # a None clears a negative count ("marked unread")
        del merged["unreadCount"]
        return merged
    if _is_count(before) and _is_count(after) and after >= 0:
        return {**old, **new, "unreadCount": after + max(before, 0)}
    return {**old, **new}


def _is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge_message_upsert(old: Any, new: Any) -> Any:
    """A message folding into a pending message of its key, or absorbing its pending update."""
    if "update" in old and _is_update(old):
        return {**new, **old["update"]}
    if "messageTimestamp" in old:  # replaces the pending message, keeping when it was first sent
        return {**new, "messageTimestamp": old["messageTimestamp"]}
    merged = {**new}
    merged.pop("messageTimestamp", None)
    return merged


def _merge_message_update(old: Any, new: Any) -> Any:
    """A ``{key, update}`` folding into a pending message, or into a pending update."""
    fields = new["update"]
    if fields.__class__ is not dict and not isinstance(fields, Mapping):
        raise TypeError(f"update must be a mapping, got {type(fields).__name__}")
    if "update" in old and _is_update(old):
        return {**old, "update": {**old["update"], **fields}}
    return {**old, **fields}


def _is_update(data: Any) -> bool:
    """Whether a pending message event is a ``{key, update}`` (a message has no ``update``)."""
    update = data["update"]
    return "message" not in data and (update.__class__ is dict or isinstance(update, Mapping))


DEFAULT_EVENT_RULES = EventRules(
    {
        "connection.update": Rule(RuleKind.IMMEDIATE),
        "creds.update": Rule(RuleKind.IMMEDIATE),
        "messaging-history.set": Rule(
            RuleKind.HISTORY,
            parts=(("chats", "id"), ("contacts", "id"), ("messages", message_key)),
        ),
        "chats.delete": Rule(RuleKind.DELETE, "id", "chats"),
        "chats.upsert": Rule(RuleKind.UPSERT, "id", "chats", merge=_merge_chats),
        "chats.update": Rule(RuleKind.UPDATE, "id", "chats", merge=_merge_chats),
        "contacts.upsert": Rule(RuleKind.UPSERT, "id", "contacts"),
        "contacts.update": Rule(RuleKind.UPDATE, "id", "contacts"),
        "messages.delete": Rule(RuleKind.DELETE, message_key, "messages"),
        "messages.upsert": Rule(
            RuleKind.UPSERT, message_key, "messages", merge=_merge_message_upsert
        ),
        "messages.update": Rule(
            RuleKind.UPDATE, message_key, "messages", merge=_merge_message_update
        ),
        "messages.reaction": Rule(RuleKind.APPEND_PER_KEY, message_key),
        "message-receipt.update": Rule(RuleKind.APPEND_PER_KEY, message_key),
        "groups.update": Rule(RuleKind.UPDATE, "id", "groups"),
    }
)
"""The Baileys defaults: WhatsApp Web's buffered event types and how they merge."""
