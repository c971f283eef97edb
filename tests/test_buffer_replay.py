"""The properties that make consolidation correct, by hypothesis.

Two stores a consumer keeps are compared, whatever the interleaving of
events, flushes and buffering blocks:

* Raw events: a consumer that applies the events to a key-value store --
  upserts and updates as shallow merges, deletes as removals, appends as
  appends, history entities as first-wins inserts -- ends in the same state
  whether it sees the raw events one by one or the batches the buffer made
  of them.
* Baileys' buffer: for the Baileys defaults, a consumer written for Baileys
  (messages are replaced by their upsert and a ``{key, update}`` is applied
  into the stored message, as Baileys' own in-memory store does) ends in the
  same state whether it sees tenantry's batches or those of `BaileysBuffer`,
  a model of Baileys' event buffer (src/Utils/event-buffer.ts, ``append``
  and ``consolidateEvents``). Where Baileys merges differently from the raw
  events (a re-sent message keeps its first timestamp, an update that came
  before its message is applied into it, unread counts add up) only this
  property holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from tenantry import (
    DEFAULT_EVENT_RULES,
    BufferConfig,
    EventBuffer,
    FlushReason,
    Rule,
    RuleKind,
    message_key,
)

RULES = DEFAULT_EVENT_RULES.with_rules(
    {
        "presence.update": Rule(RuleKind.LAST_WINS, "id"),
        "blocklist.set": Rule(RuleKind.FIRST_WINS, "id"),
        "calls.log": Rule(RuleKind.APPEND),
    }
)
FIELDS = st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2)
IDS = st.sampled_from(["x", "y"])


def message(ident: str, from_me: bool, fields: dict[str, int]) -> dict[str, Any]:
    return {"key": {"remoteJid": "j", "id": ident, "fromMe": from_me}, **fields}


def message_update(ident: str, from_me: bool, fields: dict[str, int]) -> dict[str, Any]:
    return {"key": {"remoteJid": "j", "id": ident, "fromMe": from_me}, "update": fields}


messages = st.builds(message, IDS, st.booleans(), FIELDS)
entities = st.builds(lambda ident, fields: {"id": ident, **fields}, IDS, FIELDS)
history = st.builds(
    lambda chats, msgs, fields: {"chats": chats, "messages": msgs, **fields},
    st.lists(entities, max_size=3),
    st.lists(messages, max_size=3),
    FIELDS,
)
# Families of types that interact, tested apart so that their events collide
# often, and all together.
FAMILIES = {
    "messages": st.tuples(
        st.sampled_from(["messages.delete", "messages.reaction", "message-receipt.update"]),
        messages,
    ),
    "chats": st.tuples(st.sampled_from(["chats.upsert", "chats.update", "chats.delete"]), entities),
    "contacts, groups": st.tuples(
        st.sampled_from(["contacts.upsert", "contacts.update", "groups.update"]), entities
    ),
    "last and first wins": st.tuples(
        st.sampled_from(["presence.update", "blocklist.set"]), entities
    ),
    "history": st.tuples(st.just("messaging-history.set"), history),
    "unkeyed": st.tuples(
        st.sampled_from(["calls.log", "unknown.thing", "connection.update"]), FIELDS
    ),
}
FAMILIES["all"] = st.one_of(*FAMILIES.values())

# What Baileys' merges treat specially: message timestamps, {key, update}, unread counts.
MESSAGE_FIELDS = st.dictionaries(
    st.sampled_from(["a", "b", "messageTimestamp"]), st.integers(0, 3), max_size=2
)
UNREAD = st.one_of(st.none(), st.integers(-2, 3))
CHAT_FIELDS = st.dictionaries(st.sampled_from(["a", "unreadCount"]), UNREAD, max_size=2)
BAILEYS_FAMILIES = {
    "messages": st.one_of(
        st.tuples(
            st.just("messages.upsert"), st.builds(message, IDS, st.booleans(), MESSAGE_FIELDS)
        ),
        st.tuples(
            st.just("messages.update"),
            st.builds(message_update, IDS, st.booleans(), MESSAGE_FIELDS),
        ),
        FAMILIES["messages"],
    ),
    "chats": st.tuples(
        st.sampled_from(["chats.upsert", "chats.update", "chats.delete"]),
        st.builds(lambda ident, fields: {"id": ident, **fields}, IDS, CHAT_FIELDS),
    ),
    "contacts, groups": FAMILIES["contacts, groups"],
}
BAILEYS_FAMILIES["all"] = st.one_of(*BAILEYS_FAMILIES.values())


def steps(events: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    # Mostly events: flushes and block boundaries cut the windows in which events merge.
    control = st.sampled_from(["flush", "enter", "exit"])
    return st.lists(st.one_of(events, events, events, events, control), max_size=50)


def key_of(rule: Rule, data: Any) -> Any:
    assert rule.key is not None
    return message_key(data) if rule.key is message_key else data[rule.key]


def apply(store: dict[Any, Any], event_type: str, data: Any) -> None:
    """What a consumer does with one event."""
    rule = RULES.get(event_type, Rule(RuleKind.APPEND))
    kind = rule.kind
    if kind in (RuleKind.APPEND, RuleKind.IMMEDIATE):
        store.setdefault(event_type, []).append(data)
    elif kind is RuleKind.HISTORY:
        fields = store.setdefault("history-fields", {})
        for name, value in data.items():
            if name in ("chats", "contacts", "messages"):
                spec = dict(rule.parts)[name]
                for item in value:
                    store.setdefault(f"history-{name}", {}).setdefault(
                        message_key(item) if spec is message_key else item[spec], item
                    )
            else:
                fields[name] = value
    elif kind in (RuleKind.UPSERT, RuleKind.UPDATE, RuleKind.DELETE):
        table = store.setdefault(rule.entity, {})
        key = key_of(rule, data)
        if kind is RuleKind.DELETE:
            table.pop(key, None)
        elif event_type == "messages.upsert":  # as Baileys' store: the message replaces
            table[key] = data
        elif event_type == "messages.update":  # into the message; none stored: dropped
            if key in table:
                table[key] = {**table[key], **data["update"]}
        else:
            table[key] = {**table.get(key, {}), **data}
    else:
        table = store.setdefault(event_type, {})
        key = key_of(rule, data)
        if kind is RuleKind.APPEND_PER_KEY:
            table.setdefault(key, []).append(data)
        elif kind is RuleKind.LAST_WINS:
            table[key] = data
        else:
            table.setdefault(key, data)


def play(
    buffer: EventBuffer,
    script: list[Any],
    emit: Callable[[str, Any], None],
    after: Callable[[], None],
) -> None:
    """Run *script* on *buffer* (flushes, nested buffering, events through *emit*), calling
    *after* after each step; then close the buffer and call *after* once more."""
    with ExitStack() as blocks:
        for step in script:
            if step == "flush":
                buffer.flush()
            elif step == "enter":
                blocks.enter_context(buffer.buffering())
            elif step == "exit":
                blocks.close()
            else:
                emit(*step)
            after()
    buffer.close()
    after()


@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=300, deadline=None)
@given(data=st.data(), always=st.booleans(), max_items=st.integers(1, 8))
def test_batches_replay_to_the_same_store_as_raw_events(
    family: str, data: st.DataObject, always: bool, max_items: int
) -> None:
    script = data.draw(steps(FAMILIES[family]))
    buffer = EventBuffer(
        BufferConfig(always_buffer=always, max_items=max_items), RULES, clock=lambda: 0.0
    )
    raw: dict[Any, Any] = {}
    consolidated: dict[Any, Any] = {}

    def deliver() -> None:
        while (batch := buffer.take_ready()) is not None:
            assert batch.count == sum(len(items) for _, items in batch.groups)
            assert all(items for _, items in batch.groups)
            for event in batch.events:
                apply(consolidated, event.type, event.data)
            buffer.settle(batch.count)

    def emit(event_type: str, data: Any) -> None:
        apply(raw, event_type, data)
        buffer.emit(event_type, data)

    def check() -> None:
        deliver()
        stats = buffer.stats
        assert stats.received == stats.delivered + stats.merged + stats.pending
        assert (stats.lost, stats.in_flight) == (0, 0)
        assert stats.pending <= max_items

    play(buffer, script, emit, check)
    assert consolidated == raw


def concat_chats(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Baileys' ``concatChats``: a shallow merge in which unread counts add up."""
    a, b = old.get("unreadCount"), new.get("unreadCount")
    merged = {**old, **new}
    if "unreadCount" in new and b is None and isinstance(a, int) and a < 0:
        del merged["unreadCount"]  # both set to undefined
    elif isinstance(a, int) and isinstance(b, int) and b >= 0:
        merged["unreadCount"] = max(b, 0) + max(a, 0)
    return merged


class BaileysBuffer:
    """Baileys' event buffer (``append`` and ``consolidateEvents``), one item per event.

    Pending items by type and key, merged case by case as Baileys does. Where
    Baileys drops what the raw events carry, the model keeps it, as the
    defaults do (see `tenantry.EventRules`): a delete is delivered before its
    entity's later upserts and updates instead of after them or dropped, a
    contact's pending update survives its upsert, every ``groups.update`` is
    merged instead of only the first. Reactions and receipts stay events
    rather than being applied into a pending message (a consumer applying
    them to its stored message after the upsert sees the same).
    """

    ORDER = (
        "chats.delete",
        "chats.upsert",
        "chats.update",
        "messages.delete",
        "messages.upsert",
        "messages.update",
        "messages.reaction",
        "message-receipt.update",
        "contacts.upsert",
        "contacts.update",
        "groups.update",
    )

    def __init__(self) -> None:
        self.pending: dict[str, dict[Any, Any]] = {t: {} for t in self.ORDER}

    def append(self, event_type: str, data: Any) -> None:
        entity = event_type.split(".", maxsplit=1)[0]
        ups = self.pending.get(f"{entity}.upsert", {})
        upd = self.pending.get(f"{entity}.update", {})
        key = key_of(RULES[event_type], data)
        if event_type.endswith(".delete"):
            self.pending[event_type][key] = data
            ups.pop(key, None)
            upd.pop(key, None)
        elif event_type == "chats.upsert":
            ups[key] = concat_chats(ups[key], data) if key in ups else data
            if key in upd:  # absorbingChatUpdate
                ups[key] = concat_chats(upd.pop(key), ups[key])
        elif event_type == "chats.update":
            if key in ups:
                ups[key] = concat_chats(ups[key], data)
            else:
                upd[key] = concat_chats(upd.get(key, {}), data)
        elif event_type == "contacts.upsert":
            ups[key] = {**upd.pop(key, {}), **ups.get(key, {}), **data}
        elif event_type in ("contacts.update", "groups.update"):
            target = ups if key in ups else upd
            target[key] = {**target.get(key, {}), **data}
        elif event_type == "messages.upsert":
            message = dict(data)
            if key in ups:  # keeps the first one's messageTimestamp, even when absent
                message.pop("messageTimestamp", None)
                if "messageTimestamp" in ups[key]:
                    message["messageTimestamp"] = ups[key]["messageTimestamp"]
            if key in upd:
                message.update(upd.pop(key)["update"])
            ups[key] = message
        elif event_type == "messages.update":
            if key in ups:
                ups[key] = {**ups[key], **data["update"]}
            else:
                fields = upd[key]["update"] if key in upd else {}
                upd[key] = {"key": data["key"], "update": {**fields, **data["update"]}}
        else:  # reactions and receipts
            self.pending[event_type].setdefault(key, []).append(data)

    def flush(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        for event_type, held in self.pending.items():
            for item in held.values():
                items = item if isinstance(item, list) else [item]
                events.extend((event_type, data) for data in items)
            held.clear()
        return events


@pytest.mark.parametrize("family", list(BAILEYS_FAMILIES))
@settings(max_examples=300, deadline=None)
@given(data=st.data(), always=st.booleans(), max_items=st.integers(1, 8))
def test_batches_replay_to_the_same_store_as_baileys_buffer(
    family: str, data: st.DataObject, always: bool, max_items: int
) -> None:
    script = data.draw(steps(BAILEYS_FAMILIES[family]))
    buffer = EventBuffer(
        BufferConfig(always_buffer=always, max_items=max_items), RULES, clock=lambda: 0.0
    )
    model = BaileysBuffer()
    ours: dict[Any, Any] = {}
    theirs: dict[Any, Any] = {}

    def deliver() -> None:
        while (batch := buffer.take_ready()) is not None:
            for event in batch.events:
                apply(ours, event.type, event.data)
            buffer.settle(batch.count)
            if batch.reason is not FlushReason.IMMEDIATE:  # the model flushes when we do
                for event_type, item in model.flush():
                    apply(theirs, event_type, item)

    def emit(event_type: str, item: Any) -> None:
        if always or buffer.depth:
            model.append(event_type, item)
        else:  # neither buffer holds it
            apply(theirs, event_type, item)
        buffer.emit(event_type, item)

    play(buffer, script, emit, deliver)
    assert ours == theirs
