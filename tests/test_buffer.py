from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import pytest
import trio

from helpers import FakeClock
from tenantry import (
    DEFAULT_EVENT_RULES,
    Batch,
    BufferConfig,
    Event,
    EventBuffer,
    EventRules,
    FlushReason,
    InvalidEvent,
    Rule,
    RuleKind,
)
from tenantry._plans import compile_rules


def msg(n: int, from_me: bool = False, **fields: Any) -> dict[str, Any]:
    return {"key": {"remoteJid": "5511@s.whatsapp.net", "id": f"M{n}", "fromMe": from_me}, **fields}


def buffered(**config: Any) -> EventBuffer:
    return EventBuffer(BufferConfig(always_buffer=True, **config), clock=FakeClock())


def flushed(buffer: EventBuffer, reason: FlushReason = FlushReason.EXPLICIT) -> Batch:
    """Flush, take the one batch and settle it as received (the test is its consumer)."""
    assert buffer.flush(reason)
    batch = buffer.take_ready()
    assert batch is not None
    assert buffer.take_ready() is None
    buffer.settle(batch.count)
    return batch


def assert_balanced(buffer: EventBuffer) -> None:
    stats = buffer.stats
    assert stats.received == (
        stats.delivered + stats.merged + stats.lost + stats.pending + stats.in_flight
    )


# -- configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": -5.0}, "flush_interval"),
        ({"flush_interval": math.nan}, "flush_interval"),
        ({"max_items": 0}, "max_items"),
        ({"max_items": 2.5}, "max_items"),
        ({"always_buffer": "yes"}, "always_buffer"),
        ({"history_max_keys": 0}, "history_max_keys"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        BufferConfig(**kwargs)


def test_config_defaults_are_the_forks() -> None:
    config = BufferConfig()
    assert (config.flush_interval, config.max_items, config.always_buffer) == (5.0, 1000, False)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_items = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (lambda: Rule(RuleKind.UPSERT, entity="x"), "key is required"),
        (lambda: Rule(RuleKind.APPEND, "id"), "key has no meaning"),
        (lambda: Rule(RuleKind.UPDATE, "id"), "entity is required"),
        (lambda: Rule(RuleKind.LAST_WINS, "id", "x"), "entity is required"),
        (lambda: Rule(RuleKind.HISTORY), "parts are required"),
        (lambda: Rule(RuleKind.UPSERT, 42, "x"), "key must be"),  # type: ignore[arg-type]
        (lambda: Rule(RuleKind.UPDATE, "id", "x", merge=42), "merge must be"),  # type: ignore[arg-type]
        (lambda: Rule(RuleKind.DELETE, "id", "x", merge=max), "merge has no meaning"),
        (lambda: Rule(RuleKind.LAST_WINS, "id", merge=max), "merge has no meaning"),
    ],
)
def test_rule_validation(rule: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        rule()


def test_an_entity_has_one_type_per_kind() -> None:
    with pytest.raises(ValueError, match="two upsert types"):
        DEFAULT_EVENT_RULES.with_rules({"chats.set": Rule(RuleKind.UPSERT, "id", "chats")})


# -- immediate delivery --------------------------------------------------------


def test_without_buffering_a_change_of_type_seals_the_open_run() -> None:
    buffer = EventBuffer(clock=FakeClock(), tenant_id="t1")
    assert buffer.emit("messages.upsert", msg(1))
    assert buffer.emit("whatever", [1, 2])
    first, second = buffer.take_ready(), buffer.take_ready()
    assert first is not None
    assert second is not None
    assert (first.reason, first.count, first.seq, first.tenant_id) == (
        FlushReason.IMMEDIATE,
        1,
        1,
        "t1",
    )
    assert list(second.events) == [Event("whatever", [1, 2])]
    assert second.seq == 2
    assert buffer.take_ready() is None


def drain(buffer: EventBuffer) -> list[Batch]:
    """Take and settle every ready batch."""
    batches = []
    while (batch := buffer.take_ready()) is not None:
        buffer.settle(batch.count)
        batches.append(batch)
    return batches


def test_events_passed_straight_on_travel_together_until_taken() -> None:
    buffer = EventBuffer(clock=FakeClock())
    said = [buffer.emit("messages.upsert", msg(n)) for n in range(5)]
    assert said == [True, False, False, False, False]  # the owner publishes once
    assert (buffer.ready, buffer.in_flight, buffer.pending) == (1, 5, 0)
    assert_balanced(buffer)
    assert buffer.stats.flushes[FlushReason.IMMEDIATE] == 0  # not sealed yet
    [batch] = drain(buffer)
    assert batch["messages.upsert"] == tuple(msg(n) for n in range(5))
    assert (batch.reason, batch.count, batch.seq) == (FlushReason.IMMEDIATE, 5, 1)
    assert buffer.stats.flushes[FlushReason.IMMEDIATE] == 1  # a batch, not an event
    assert buffer.emit("messages.upsert", msg(9))  # taking sealed it: the next opens a new one
    [later] = drain(buffer)
    assert (later.count, later.seq) == (1, 2)
    assert_balanced(buffer)


def test_runs_keep_arrival_order_across_types() -> None:
    buffer = EventBuffer(clock=FakeClock())
    script = [("messages.update", 1), ("messages.update", 2), ("messages.upsert", 3)]
    script += [("messages.update", 4), ("connection.update", 5), ("connection.update", 6)]
    said = [buffer.emit(kind, {**msg(n), "n": n}) for kind, n in script]
    assert said == [True, False, True, True, True, False]
    batches = drain(buffer)
    assert [(b.types, b.count) for b in batches] == [
        (("messages.update",), 2),
        (("messages.upsert",), 1),
        (("messages.update",), 1),
        (("connection.update",), 2),
    ]
    assert [event.data["n"] for b in batches for event in b] == [1, 2, 3, 4, 5, 6]
    assert [b.seq for b in batches] == [1, 2, 3, 4]


def test_a_run_is_sealed_at_max_items_and_asks_to_be_published_there() -> None:
    buffer = EventBuffer(BufferConfig(max_items=3), clock=FakeClock())
    said = [buffer.emit("messages.upsert", msg(n)) for n in range(7)]
    # Opening a run, and reaching max_items in flight, both ask the owner to publish.
    assert said == [True, False, True, True, True, True, True]
    assert buffer.in_flight == 7
    assert [b.count for b in drain(buffer)] == [3, 3, 1]
    assert_balanced(buffer)


def test_an_open_run_is_sealed_before_any_later_batch() -> None:
    buffer = EventBuffer(clock=FakeClock())
    buffer.emit("messages.upsert", msg(1))
    with buffer.buffering():
        buffer.emit("chats.update", {"id": "c1", "unreadCount": 1})
        buffer.emit("connection.update", {"connection": "open"})  # never held: a new run
    buffer.emit("connection.update", {"connection": "close"})
    batches = drain(buffer)
    assert [(b.reason, b.types, b.count) for b in batches] == [
        (FlushReason.IMMEDIATE, ("messages.upsert",), 1),
        (FlushReason.IMMEDIATE, ("connection.update",), 1),
        (FlushReason.EXPLICIT, ("chats.update",), 1),
        (FlushReason.IMMEDIATE, ("connection.update",), 1),
    ]
    assert [b.seq for b in batches] == [1, 2, 3, 4]


def test_closing_with_an_open_run_hands_it_over_and_refuses_more() -> None:
    buffer = EventBuffer(clock=FakeClock())
    buffer.emit("messages.upsert", msg(1))
    buffer.emit("messages.upsert", msg(2))
    assert not buffer.close()  # nothing was pending: no CLOSE batch
    assert buffer.ready == 1
    with pytest.raises(trio.ClosedResourceError):
        buffer.emit("messages.upsert", msg(3))
    batch = buffer.take_ready()
    assert batch is not None
    buffer.settle(batch.count, lost=True)
    assert (batch.count, buffer.stats.lost, buffer.in_flight) == (2, 2, 0)
    assert_balanced(buffer)


def test_iterating_a_batch_gives_its_events_in_order() -> None:
    buffer = buffered()
    buffer.emit("messages.upsert", msg(1))
    buffer.emit("whatever", [1, 2])
    buffer.emit("chats.delete", {"id": "c1"})
    batch = flushed(buffer)
    expected = [
        Event("chats.delete", {"id": "c1"}),
        Event("messages.upsert", msg(1)),
        Event("whatever", [1, 2]),
    ]
    assert list(itertools.islice(iter(batch), len(expected) + 1)) == expected  # it ends
    assert list(batch.events) == expected
    assert list(batch) == expected
    assert "whatever" in batch  # membership asks for a type, as indexing does
    assert "messages.update" not in batch


def test_immediate_types_skip_the_buffer_even_while_buffering() -> None:
    buffer = buffered()
    assert not buffer.emit("messages.upsert", msg(1))
    assert buffer.emit("connection.update", {"connection": "open"})
    now = buffer.take_ready()
    assert now is not None
    assert list(now.events) == [Event("connection.update", {"connection": "open"})]
    assert buffer.pending == 1
    assert flushed(buffer)["messages.upsert"] == (msg(1),)


def test_users_can_mark_their_own_types_immediate() -> None:
    rules = DEFAULT_EVENT_RULES.with_rules({"presence.update": Rule(RuleKind.IMMEDIATE)})
    buffer = EventBuffer(BufferConfig(always_buffer=True), rules, clock=FakeClock())
    assert buffer.emit("presence.update", {"id": "x"})
    assert not buffer.emit("chats.update", {"id": "x"})


# -- consolidation, rule by rule ------------------------------------------------


def test_upserts_of_a_key_merge_into_the_first() -> None:
    buffer = buffered()
    buffer.emit("contacts.upsert", {"id": "a", "name": "A", "notify": "n"})
    buffer.emit("contacts.upsert", {"id": "b", "name": "B"})
    buffer.emit("contacts.upsert", {"id": "a", "notify": "m"})
    batch = flushed(buffer)
    assert batch["contacts.upsert"] == (
        {"id": "a", "name": "A", "notify": "m"},
        {"id": "b", "name": "B"},
    )
    assert buffer.stats.merged == 1
    assert_balanced(buffer)


def test_a_message_replaces_a_pending_one_of_its_key_keeping_its_timestamp() -> None:
    buffer = buffered()
    buffer.emit("messages.upsert", msg(1, text="a", status=1, messageTimestamp=10))
    buffer.emit("messages.upsert", msg(2, text="b"))
    buffer.emit("messages.upsert", msg(1, status=2, messageTimestamp=11))
    buffer.emit("messages.upsert", msg(1, from_me=True, text="other key"))
    buffer.emit("messages.upsert", msg(2, text="c", messageTimestamp=12))
    batch = flushed(buffer)
    assert batch["messages.upsert"] == (
        msg(1, status=2, messageTimestamp=10),
        msg(2, text="c"),  # as Baileys: the first had no timestamp
        msg(1, from_me=True, text="other key"),
    )
    assert buffer.stats.merged == 2
    assert_balanced(buffer)


def update(n: int, **fields: Any) -> dict[str, Any]:
    return {"key": msg(n)["key"], "update": fields}


def test_message_updates_merge_field_by_field_or_into_their_message() -> None:
    buffer = buffered()
    buffer.emit("messages.upsert", msg(1, text="a", status=1))
    buffer.emit("messages.update", update(1, status=3))
    buffer.emit("messages.update", update(1, starred=True))
    buffer.emit("messages.update", update(2, status=2, starred=True))
    buffer.emit("messages.update", update(2, status=4))
    batch = flushed(buffer)
    assert batch["messages.upsert"] == (msg(1, text="a", status=3, starred=True),)
    assert batch["messages.update"] == (update(2, status=4, starred=True),)
    assert buffer.stats.merged == 3


def test_a_message_absorbs_its_pending_update_whose_fields_win() -> None:
    buffer = buffered()
    buffer.emit("messages.update", update(1, status=4))
    buffer.emit("messages.update", update(1, starred=True))
    buffer.emit("messages.upsert", msg(1, text="a", status=1))
    batch = flushed(buffer)
    assert batch["messages.upsert"] == (msg(1, text="a", status=4, starred=True),)
    assert batch["messages.update"] == ()
    assert buffer.stats.merged == 2


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        (2, 3, 5),  # counts add up
        (-1, 3, 3),  # a negative count ("marked unread") counts as 0
        (2, -1, -1),  # a negative count replaces
        (-1, None, "absent"),  # None clears a negative count
        (2, None, None),
        (None, 3, 3),
        ("absent", 3, 3),
    ],
)
def test_chat_unread_counts_merge_as_in_baileys(first: Any, second: Any, merged: Any) -> None:
    def chat(unread: Any, **fields: Any) -> dict[str, Any]:
        return {"id": "a", **({} if unread == "absent" else {"unreadCount": unread}), **fields}

    for first_type in ("chats.upsert", "chats.update"):
        for second_type in ("chats.upsert", "chats.update"):
            buffer = buffered()
            buffer.emit(first_type, chat(first, name="A"))
            buffer.emit(second_type, chat(second, muted=True))
            held = "chats.update" if first_type == second_type == "chats.update" else "chats.upsert"
            assert flushed(buffer)[held] == (chat(merged, name="A", muted=True),)


def test_a_rule_can_carry_its_own_merge() -> None:
    def add(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {**old, **new, "n": old.get("n", 0) + new.get("n", 0)}

    rules = DEFAULT_EVENT_RULES.with_rules(
        {
            "votes.upsert": Rule(RuleKind.UPSERT, "id", "votes", merge=add),
            "votes.update": Rule(RuleKind.UPDATE, "id", "votes", merge=add),
        }
    )
    buffer = EventBuffer(BufferConfig(always_buffer=True), rules, clock=FakeClock())
    for event_type, ident, n in [
        ("votes.update", "a", 1),
        ("votes.update", "a", 2),
        ("votes.upsert", "a", 4),  # absorbs the pending update
        ("votes.update", "a", 8),  # into the pending upsert
        ("votes.upsert", "b", 1),
        ("votes.upsert", "b", 2),
    ]:
        buffer.emit(event_type, {"id": ident, "n": n})
    batch = flushed(buffer)
    assert batch["votes.upsert"] == ({"id": "a", "n": 15}, {"id": "b", "n": 3})
    assert buffer.stats.merged == 4


def test_a_merge_that_raises_refuses_the_event_and_changes_nothing() -> None:
    buffer = buffered()
    buffer.emit("messages.update", update(1, status=2))
    buffer.emit("messages.upsert", msg(2, text="a"))
    before = buffer.stats
    for event_type, data in [
        ("messages.update", msg(1, status=3)),  # no "update" object
        ("messages.update", {"key": msg(2)["key"], "update": 5}),
    ]:
        with pytest.raises(InvalidEvent, match=f"{event_type} event that cannot merge"):
            buffer.emit(event_type, data)
    assert buffer.stats == before
    batch = flushed(buffer)
    assert batch["messages.update"] == (update(1, status=2),)
    assert batch["messages.upsert"] == (msg(2, text="a"),)


def test_updates_merge_into_a_pending_upsert_or_each_other() -> None:
    buffer = buffered()
    buffer.emit("chats.upsert", {"id": "a", "name": "A", "unread": 0})
    buffer.emit("chats.update", {"id": "a", "unread": 3})
    buffer.emit("chats.update", {"id": "b", "unread": 1})
    buffer.emit("chats.update", {"id": "b", "muted": True})
    batch = flushed(buffer)
    assert batch["chats.upsert"] == ({"id": "a", "name": "A", "unread": 3},)
    assert batch["chats.update"] == ({"id": "b", "unread": 1, "muted": True},)
    assert buffer.stats.merged == 2


def test_an_upsert_absorbs_a_pending_update_and_its_fields_win() -> None:
    buffer = buffered()
    buffer.emit("contacts.update", {"id": "a", "name": "old", "notify": "n"})
    buffer.emit("contacts.upsert", {"id": "a", "name": "new"})
    batch = flushed(buffer)
    assert batch["contacts.upsert"] == ({"id": "a", "name": "new", "notify": "n"},)
    assert batch["contacts.update"] == ()


def test_a_delete_cancels_pending_upserts_and_updates_and_comes_first() -> None:
    buffer = buffered()
    buffer.emit("messages.upsert", msg(1, text="x"))
    buffer.emit("messages.update", update(1, status=4))
    buffer.emit("messages.update", update(2, status=4))
    buffer.emit("messages.delete", msg(2))
    buffer.emit("messages.delete", msg(1))
    buffer.emit("messages.upsert", msg(1, text="again"))
    batch = flushed(buffer)
    assert batch.types == ("messages.delete", "messages.upsert")
    assert batch["messages.delete"] == (msg(2), msg(1))
    assert batch["messages.upsert"] == (msg(1, text="again"),)
    stats = buffer.stats
    assert (stats.received, stats.delivered, stats.merged) == (6, 3, 3)


def test_reactions_and_receipts_accumulate_per_key() -> None:
    buffer = buffered()
    buffer.emit("messages.reaction", msg(1, reaction="👍"))
    buffer.emit("message-receipt.update", msg(1, receipt="read"))
    buffer.emit("messages.reaction", msg(2, reaction="❤"))
    buffer.emit("messages.reaction", msg(1, reaction="😂"))
    batch = flushed(buffer)
    assert batch["messages.reaction"] == (
        msg(1, reaction="👍"),
        msg(1, reaction="😂"),
        msg(2, reaction="❤"),
    )
    assert batch.count == 4
    assert buffer.stats.merged == 0


def test_last_wins_and_first_wins() -> None:
    rules = DEFAULT_EVENT_RULES.with_rules(
        {
            "presence.update": Rule(RuleKind.LAST_WINS, "id"),
            "blocklist.set": Rule(RuleKind.FIRST_WINS, "id"),
            "calls": Rule(RuleKind.APPEND),
        }
    )
    buffer = EventBuffer(BufferConfig(always_buffer=True), rules, clock=FakeClock())
    for n in range(3):
        buffer.emit("presence.update", {"id": "a", "n": n})
        buffer.emit("blocklist.set", {"id": "a", "n": n})
        buffer.emit("calls", {"id": "a", "n": n})
    batch = flushed(buffer)
    assert batch["presence.update"] == ({"id": "a", "n": 2},)
    assert batch["blocklist.set"] == ({"id": "a", "n": 0},)
    assert [c["n"] for c in batch["calls"]] == [0, 1, 2]
    assert buffer.stats.merged == 4


def test_unknown_types_are_appended_never_dropped_after_known_ones() -> None:
    buffer = buffered()
    buffer.emit("zeta.custom", 1)
    buffer.emit("chats.update", {"id": "a"})
    buffer.emit("alpha.custom", 2)
    buffer.emit("zeta.custom", 3)
    batch = flushed(buffer)
    assert batch.types == ("chats.update", "zeta.custom", "alpha.custom")
    assert batch["zeta.custom"] == (1, 3)


def test_history_sets_merge_and_deduplicate_across_flushes() -> None:
    buffer = buffered(history_max_keys=100)
    buffer.emit(
        "messaging-history.set",
        {
            "chats": [{"id": "c1"}, {"id": "c2"}],
            "messages": [msg(1)],
            "isLatest": False,
            "progress": 10,
        },
    )
    buffer.emit(
        "messaging-history.set",
        {"chats": [{"id": "c2", "dup": True}, {"id": "c3"}], "progress": 50},
    )
    first = flushed(buffer)
    assert first["messaging-history.set"] == (
        {
            "isLatest": False,
            "progress": 50,
            "chats": [{"id": "c1"}, {"id": "c2"}, {"id": "c3"}],
            "contacts": [],
            "messages": [msg(1)],
        },
    )
    buffer.emit(
        "messaging-history.set", {"chats": [{"id": "c1"}, {"id": "c4"}], "messages": [msg(1)]}
    )
    second = flushed(buffer)
    (item,) = second["messaging-history.set"]
    assert item["chats"] == [{"id": "c4"}]
    assert item["messages"] == []
    stats = buffer.stats
    assert (stats.history_duplicates, stats.history_cache_size) == (3, 5)
    assert (stats.received, stats.delivered, stats.merged) == (3, 2, 1)


def test_the_history_cache_is_bounded() -> None:
    buffer = buffered(history_max_keys=10)
    for n in range(100):
        buffer.emit("messaging-history.set", {"chats": [{"id": n}]})
    assert buffer.stats.history_cache_size == 10


# -- bad input -------------------------------------------------------------------


INVALID_EVENTS = [
    ("messages.upsert", {"text": "no key"}),
    ("messages.upsert", {"key": {"id": "x"}}),
    ("messages.upsert", "not a mapping"),
    ("messages.update", None),
    ("chats.upsert", {"id": ["unhashable"]}),
    ("chats.delete", {}),
    ("messages.reaction", {"key": {"remoteJid": {}, "id": "x"}}),
    ("messaging-history.set", {"chats": [{"no": "id"}]}),
    ("messaging-history.set", {"chats": 5}),
    ("messaging-history.set", ["not", "a", "mapping"]),
    ("messaging-history.set", {"chats": [{"id": []}]}),
]


@pytest.mark.parametrize(("event_type", "data"), INVALID_EVENTS)
def test_invalid_events_raise_and_change_nothing(event_type: str, data: Any) -> None:
    buffer = buffered()
    buffer.emit("chats.upsert", {"id": "ok"})
    before = buffer.stats
    with pytest.raises(InvalidEvent, match=event_type):
        buffer.emit(event_type, data)
    assert buffer.stats == before
    assert flushed(buffer)["chats.upsert"] == ({"id": "ok"},)


@pytest.mark.parametrize(("event_type", "data"), INVALID_EVENTS)
def test_invalid_events_are_refused_when_passed_straight_on_too(event_type: str, data: Any) -> None:
    buffer = EventBuffer(BufferConfig(), clock=FakeClock())  # not buffering: events go straight on
    with pytest.raises(InvalidEvent, match=event_type):
        buffer.emit(event_type, data)
    assert buffer.stats.received == 0
    assert buffer.take_ready() is None


def test_plans_are_compiled_only_once_buffering_begins() -> None:
    buffer = EventBuffer(BufferConfig(), clock=FakeClock())
    buffer.emit("chats.upsert", {"id": 1})  # straight on, checked by its rule
    buffer.emit("connection.update", {"state": "open"})
    buffer.emit("custom.thing", 1)
    assert not buffer._plans  # an idle socket's buffer holds no plans or stores
    with buffer.buffering():
        assert buffer._plans
        buffer.emit("chats.upsert", {"id": 2})
        buffer.emit("chats.update", {"id": 2, "name": "x"})
    buffer.emit("chats.upsert", {"id": 3})
    batches = []
    while (batch := buffer.take_ready()) is not None:
        batches.append(batch)
    assert [dict(b.groups) for b in batches] == [
        {"chats.upsert": ({"id": 1},)},
        {"connection.update": ({"state": "open"},)},
        {"custom.thing": (1,)},
        {"chats.upsert": ({"id": 2, "name": "x"},)},
        {"chats.upsert": ({"id": 3},)},
    ]


def test_only_rules_with_their_own_merge_pay_for_a_call() -> None:
    plans = compile_rules(DEFAULT_EVENT_RULES)
    assert {name: type(plans.keyed[name]).__name__ for name in plans.keyed if "." in name} == {
        "chats.upsert": "_MergingUpsert",
        "chats.update": "_MergingUpdate",
        "chats.delete": "_Delete",
        "contacts.upsert": "_Upsert",
        "contacts.update": "_Update",
        "messages.upsert": "_MergingUpsert",
        "messages.update": "_MergingUpdate",
        "messages.delete": "_Delete",
        "messages.reaction": "_PerKey",
        "message-receipt.update": "_PerKey",
        "groups.update": "_Update",
    }


def test_an_always_buffering_buffer_compiles_at_once() -> None:
    assert EventBuffer(BufferConfig(always_buffer=True), clock=FakeClock())._plans


@pytest.mark.parametrize("event_type", [42, None, b"x", "", ["a"], {"t": 1}], ids=repr)
@pytest.mark.parametrize("always_buffer", [True, False])
def test_a_type_that_is_no_non_empty_string_is_invalid(
    event_type: object, always_buffer: bool
) -> None:
    """Unhashable ones too: a protocol's event type is often the peer's value."""
    buffer = EventBuffer(BufferConfig(always_buffer=always_buffer), clock=FakeClock())
    with pytest.raises(InvalidEvent, match="event type must be a non-empty string"):
        buffer.emit(event_type, {})  # type: ignore[arg-type]
    assert buffer.stats.received == 0


def test_emitted_data_is_never_mutated() -> None:
    buffer = buffered()
    first, second, third = update(1, a=1), update(1, b=2), msg(1, c=3)
    buffer.emit("messages.update", first)
    buffer.emit("messages.update", second)
    buffer.emit("messages.upsert", third)
    buffer.emit("messages.update", second)
    buffer.emit("chats.upsert", fourth := {"id": "a", "unreadCount": 1})
    buffer.emit("chats.update", fifth := {"id": "a", "unreadCount": 2})
    flushed(buffer)
    assert (first, second, third) == (update(1, a=1), update(1, b=2), msg(1, c=3))
    assert (fourth, fifth) == ({"id": "a", "unreadCount": 1}, {"id": "a", "unreadCount": 2})


# -- buffering depth, size trigger, timing ---------------------------------------


def test_nested_buffering_flushes_at_the_outermost_exit_even_on_error() -> None:
    buffer = EventBuffer(clock=FakeClock())
    wakeups: list[float] = []
    buffer.set_wakeup(wakeups.append)

    def nested() -> None:
        with buffer.buffering():
            buffer.emit("chats.update", {"id": "a"})
            with buffer.buffering():
                buffer.emit("chats.update", {"id": "b"})
                assert buffer.depth == 2
            assert buffer.ready == 0
            raise KeyError("boom")

    with pytest.raises(KeyError):
        nested()
    assert buffer.depth == 0
    batch = buffer.take_ready()
    assert batch is not None
    assert (batch.reason, batch.count) == (FlushReason.EXPLICIT, 2)
    assert wakeups == [5.0, 0.0]  # a flush due in 5 s, then one due now
    assert buffer.emit("chats.update", {"id": "c"})  # not buffering any more


def test_an_empty_buffer_never_flushes() -> None:
    buffer = buffered()
    assert not buffer.flush()
    with buffer.buffering():
        pass
    assert buffer.take_ready() is None
    assert sum(buffer.stats.flushes.values()) == 0


def test_reaching_max_items_flushes_at_once() -> None:
    buffer = buffered(max_items=3)
    assert not buffer.emit("chats.update", {"id": 1})
    assert not buffer.emit("chats.update", {"id": 1})  # merged: still one item
    assert not buffer.emit("chats.update", {"id": 2})
    assert buffer.emit("chats.update", {"id": 3})
    batch = buffer.take_ready()
    assert batch is not None
    assert (batch.reason, batch.count) == (FlushReason.SIZE, 3)
    assert buffer.pending == 0


def test_max_items_of_one() -> None:
    buffer = buffered(max_items=1)
    assert buffer.emit("chats.update", {"id": 1})
    assert buffer.ready == 1


def test_next_flush_is_due_one_interval_after_the_first_pending_event() -> None:
    clock = FakeClock(0.0)
    buffer = EventBuffer(BufferConfig(flush_interval=5.0, always_buffer=True), clock=clock)
    assert buffer.next_flush_at is None
    clock.now = 100.0
    buffer.emit("chats.update", {"id": 1})
    clock.now = 103.0
    buffer.emit("chats.update", {"id": 2})
    assert buffer.next_flush_at == 105.0
    buffer.flush(FlushReason.INTERVAL)
    assert buffer.next_flush_at is None
    assert buffer.stats.flushes[FlushReason.INTERVAL] == 1


def test_one_owner_at_a_time() -> None:
    buffer = buffered()
    buffer.set_wakeup(lambda delay: None)
    with pytest.raises(RuntimeError, match="owner"):
        buffer.set_wakeup(lambda delay: None)


# -- close -----------------------------------------------------------------------


def test_close_flushes_everything_pending_whatever_the_depth() -> None:
    buffer = EventBuffer(clock=FakeClock())
    with buffer.buffering(), buffer.buffering():
        buffer.emit("chats.update", {"id": 1})
        buffer.emit("zzz", 1)
        assert buffer.close()
        assert buffer.depth == 2
    batch = buffer.take_ready()
    assert batch is not None
    assert (batch.reason, batch.count) == (FlushReason.CLOSE, 2)
    assert buffer.take_ready() is None  # leaving the blocks after close flushed nothing
    assert buffer.depth == 0
    assert not buffer.close()
    with pytest.raises(trio.ClosedResourceError):
        buffer.emit("chats.update", {"id": 1})
    with pytest.raises(trio.ClosedResourceError):
        buffer.emit("connection.update", {})
    with pytest.raises(trio.ClosedResourceError):
        buffer.emit("unknown", {})
    with pytest.raises(trio.ClosedResourceError), buffer.buffering():
        pass
    assert_balanced(buffer)


def test_repr() -> None:
    buffer = EventBuffer(clock=FakeClock(), tenant_id="acme")
    assert repr(buffer) == "<EventBuffer tenant='acme' depth=0 pending=0 ready=0>"
    buffer.emit("x", 1)
    batch = buffer.take_ready()
    assert repr(batch) == "<Batch #1 tenant='acme' immediate (x: 1)>"
    assert len(batch) == 1  # type: ignore[arg-type]


def test_rules_table_is_an_ordered_read_only_mapping() -> None:
    assert list(DEFAULT_EVENT_RULES)[:3] == [
        "connection.update",
        "creds.update",
        "messaging-history.set",
    ]
    assert DEFAULT_EVENT_RULES["contacts.upsert"] == Rule(RuleKind.UPSERT, "id", "contacts")
    extended = DEFAULT_EVENT_RULES.with_rules({"x.y": Rule(RuleKind.APPEND)})
    assert isinstance(extended, EventRules)
    assert "x.y" in extended
    assert "x.y" not in DEFAULT_EVENT_RULES
    with pytest.raises(TypeError, match="must be a Rule"):
        EventRules({"a": "upsert"})  # type: ignore[dict-item]


def test_batches_are_in_flight_until_their_taker_settles_them() -> None:
    buffer = buffered()
    for i in range(4):
        buffer.emit("chats.update", {"id": i})
    buffer.flush()
    stats = buffer.stats
    assert (stats.delivered, stats.in_flight) == (0, 4)  # made, not yet received by anyone
    batch = buffer.take_ready()
    assert batch is not None
    assert buffer.in_flight == 4
    buffer.settle(3)
    buffer.settle(1, lost=True)
    stats = buffer.stats
    assert (stats.delivered, stats.lost, stats.in_flight) == (3, 1, 0)
    assert_balanced(buffer)
    with pytest.raises(ValueError, match="1 events: 0 are in flight"):
        buffer.settle(1)
    assert buffer.max_items == 1000
