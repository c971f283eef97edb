"""The property that makes consolidation correct, by hypothesis.

A consumer that applies the events to a key-value store -- upserts and
updates as shallow merges, deletes as removals, appends as appends, history
entities as first-wins inserts -- must end in the same state whether it sees
the raw events one by one or the batches the buffer made of them, whatever
the interleaving of events, flushes and buffering blocks.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from tenantry import DEFAULT_EVENT_RULES, BufferConfig, EventBuffer, Rule, RuleKind, message_key

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
        st.sampled_from(
            [
                "messages.upsert",
                "messages.update",
                "messages.delete",
                "messages.reaction",
                "message-receipt.update",
            ]
        ),
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


def steps(family: str) -> st.SearchStrategy[list[Any]]:
    events = FAMILIES[family]
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


@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=300, deadline=None)
@given(data=st.data(), always=st.booleans(), max_items=st.integers(1, 8))
def test_batches_replay_to_the_same_store_as_raw_events(
    family: str, data: st.DataObject, always: bool, max_items: int
) -> None:
    script = data.draw(steps(family))
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

    with ExitStack() as blocks:
        for step in script:
            if step == "flush":
                buffer.flush()
            elif step == "enter":
                blocks.enter_context(buffer.buffering())
            elif step == "exit":
                blocks.close()
            else:
                event_type, data = step
                apply(raw, event_type, data)
                buffer.emit(event_type, data)
            deliver()
            stats = buffer.stats
            assert stats.received == stats.delivered + stats.merged + stats.pending
            assert (stats.lost, stats.in_flight) == (0, 0)
            assert stats.pending <= max_items
    buffer.close()
    deliver()
    assert consolidated == raw
