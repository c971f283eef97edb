"""Consolidation plans: a rule table compiled into stores and merge steps.

Theory of operation
===================

An `EventRules` table says, per event type, how buffered events merge. An
`EventBuffer` does not read the table event by event: when it first holds
events it compiles the table, once, with `compile_rules`, into *plans* that
own the stores its pending events live in.

* A keyed type (upsert, update, delete, append-per-key, last-wins,
  first-wins) gets a `KeyedPlan`: the function giving an event's key, the
  dict searched first for a pending event of that key, and `KeyedPlan.put`,
  the one merge step of its kind. An entity's upsert, update and delete plans
  share that entity's three dicts, so that an upsert absorbs a pending update
  and a delete cancels both. An upsert or update rule with its own ``merge``
  function gets a plan that calls it; the others inline the shallow merge,
  so that they pay nothing for the option.
* The other types get an `AppendPlan` (a list), a `HistoryPlan` (the entity
  lists a history event carries) or `IMMEDIATE` (never held).
* The compiled `Plans` also fix the canonical batch order: per type, in the
  table's order (an entity's deletes first), a function that drains its
  pending items.

The plans hold no reference to their buffer, so a closed buffer is freed at
once rather than by the cycle collector. How a key is found from a
`KeySpec` is written once, in `key_getter`.

`KeyedPlan.put` returns how many events it merged: 1 when the event folded
into (or was dropped for) a pending event of its key, and for a delete
(`KeyedPlan.cancels`) the number of pending events it cancelled, the delete
itself being held. The buffer does the counting.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Final, final

from ._rules import EventRules, KeySpec, Rule, RuleKind

__all__ = [
    "IMMEDIATE",
    "AppendPlan",
    "Drain",
    "HistoryPlan",
    "ImmediatePlan",
    "KeyedPlan",
    "Plans",
    "compile_rules",
    "key_getter",
]

Merge = Callable[[Any, Any], Any]
"""A rule's ``merge(old, new) -> merged``."""
Drain = Callable[[], tuple[Any, ...]]
"""Takes a type's pending items, in order, and empties its store."""


def key_getter(spec: KeySpec) -> Callable[[Any], Hashable]:
    """The function giving an event's key: ``data[spec]`` for a field name, else *spec*."""
    return operator.itemgetter(spec) if isinstance(spec, str) else spec


@final
class _Entity:
    """The pending upserts, updates and deletes of one entity, by key."""

    __slots__ = ("deletes", "updates", "upserts")

    def __init__(self) -> None:
        self.upserts: dict[Any, Any] = {}
        self.updates: dict[Any, Any] = {}
        self.deletes: dict[Any, Any] = {}


class KeyedPlan:
    """A keyed type's plan: its key function, the dict searched first, its merge step."""

    __slots__ = ("key", "store")

    cancels: ClassVar[bool] = False
    """Whether `put`'s count is of pending events cancelled (the event itself is held)."""

    def __init__(self, spec: KeySpec, store: dict[Any, Any]) -> None:
        self.key = key_getter(spec)
        self.store = store

    def put(self, key: Any, data: Any, existing: Any) -> int:
        """Hold *data* under *key*; *existing* is ``store.get(key)``. Returns events merged."""
        raise NotImplementedError


class _EntityPlan(KeyedPlan):
    """A plan of an entity's kinds: searches its pending upserts, and sees its updates."""

    __slots__ = ("updates",)

    def __init__(self, spec: KeySpec, entity: _Entity) -> None:
        super().__init__(spec, entity.upserts)
        self.updates = entity.updates


class _MergingPlan(_EntityPlan):
    """An upsert or update plan that merges with the rule's own function."""

    __slots__ = ("merge",)

    def __init__(self, spec: KeySpec, entity: _Entity, merge: Merge) -> None:
        super().__init__(spec, entity)
        self.merge = merge


@final
class _Upsert(_EntityPlan):
    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        if existing is None:
            existing = self.updates.pop(key, None)  # a pending update it absorbs
            if existing is None:
                self.store[key] = data
                return 0
        self.store[key] = {**existing, **data}
        return 1


@final
class _Update(_EntityPlan):
    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        store = self.store  # into a pending upsert of its key, else its pending update
        if existing is None:
            store = self.updates
            existing = store.get(key)
            if existing is None:
                store[key] = data
                return 0
        store[key] = {**existing, **data}
        return 1


@final
class _MergingUpsert(_MergingPlan):
    """`_Upsert` with the rule's own merge function."""

    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        absorbed = existing is None
        if absorbed:
            existing = self.updates.get(key)  # a pending update it absorbs
            if existing is None:
                self.store[key] = data
                return 0
        merged = self.merge(existing, data)  # may raise: nothing is changed yet
        if absorbed:
            del self.updates[key]
        self.store[key] = merged
        return 1


@final
class _MergingUpdate(_MergingPlan):
    """`_Update` with the rule's own merge function."""

    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        store = self.store  # into a pending upsert of its key, else its pending update
        if existing is None:
            store = self.updates
            existing = store.get(key)
            if existing is None:
                store[key] = data
                return 0
        store[key] = self.merge(existing, data)
        return 1


@final
class _Delete(_EntityPlan):
    __slots__ = ("deletes",)

    cancels = True

    def __init__(self, spec: KeySpec, entity: _Entity) -> None:
        super().__init__(spec, entity)
        self.deletes = entity.deletes

    def put(self, key: Any, data: Any, existing: Any) -> int:
        cancelled = 0
        if existing is not None:
            del self.store[key]
            cancelled = 1
        cancelled += self.updates.pop(key, None) is not None
        cancelled += key in self.deletes
        self.deletes[key] = data
        return cancelled


@final
class _PerKey(KeyedPlan):
    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        if existing is None:
            self.store[key] = [data]
        else:
            existing.append(data)
        return 0


@final
class _LastWins(KeyedPlan):
    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        self.store[key] = data
        return 0 if existing is None else 1


@final
class _FirstWins(KeyedPlan):
    __slots__ = ()

    def put(self, key: Any, data: Any, existing: Any) -> int:
        if existing is None:
            self.store[key] = data
            return 0
        return 1


@final
class AppendPlan:
    """An append type's plan: its pending events, in order."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Any] = []


@final
class HistoryPlan:
    """A history type's plan: the ``(list field, key)`` parts its events carry."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[tuple[str, KeySpec], ...]) -> None:
        self.parts = parts


@final
class ImmediatePlan:
    """An immediate type's plan: nothing to hold."""

    __slots__ = ()


IMMEDIATE: Final = ImmediatePlan()

_ENTITY_PLANS: Final[dict[RuleKind, type[_EntityPlan]]] = {
    RuleKind.DELETE: _Delete,
    RuleKind.UPSERT: _Upsert,
    RuleKind.UPDATE: _Update,
}
_MERGING_PLANS: Final[dict[RuleKind, type[_MergingPlan]]] = {
    RuleKind.UPSERT: _MergingUpsert,
    RuleKind.UPDATE: _MergingUpdate,
}
_KEYED_PLANS: Final[dict[RuleKind, type[_PerKey | _LastWins | _FirstWins]]] = {
    RuleKind.APPEND_PER_KEY: _PerKey,
    RuleKind.LAST_WINS: _LastWins,
    RuleKind.FIRST_WINS: _FirstWins,
}


@final
class Plans:
    """A compiled rule table: plans by type, and the canonical batch order.

    ``order`` pairs each held type with the function draining its pending
    items; a history type's is None (the buffer holds its pending item).
    """

    __slots__ = ("keyed", "order", "unkeyed")

    def __init__(self) -> None:
        self.keyed: dict[str, KeyedPlan] = {}
        self.unkeyed: dict[str, AppendPlan | HistoryPlan | ImmediatePlan] = {}
        self.order: list[tuple[str, Drain | None]] = []


def compile_rules(rules: EventRules) -> Plans:
    """Turn the rule table into plans, with fresh stores, and the canonical batch order."""
    plans = Plans()
    by_entity: dict[str, dict[RuleKind, str]] = {}
    for event_type, rule in rules.items():
        if rule.entity is not None:
            by_entity.setdefault(rule.entity, {})[rule.kind] = event_type
    for event_type, rule in rules.items():
        if rule.entity is None:
            _plan_type(plans, event_type, rule)
            continue
        members = by_entity.pop(rule.entity, None)
        if members is not None:  # the entity's first type plans all of its types
            _plan_entity(plans, rules, members)
    return plans


def _plan_entity(plans: Plans, rules: EventRules, members: dict[RuleKind, str]) -> None:
    entity = _Entity()
    held = {
        RuleKind.DELETE: entity.deletes,
        RuleKind.UPSERT: entity.upserts,
        RuleKind.UPDATE: entity.updates,
    }
    for kind, plan_class in _ENTITY_PLANS.items():  # deletes first in a batch
        event_type = members.get(kind)
        if event_type is None:
            continue
        rule = rules[event_type]
        plan: KeyedPlan
        if rule.merge is None:  # the shallow merge, inlined: the common, fast path
            plan = plan_class(_spec(rule), entity)
        else:
            plan = _MERGING_PLANS[kind](_spec(rule), entity, rule.merge)
        plans.keyed[event_type] = plan
        plans.order.append((event_type, _drain_dict(held[kind])))


def _plan_type(plans: Plans, event_type: str, rule: Rule) -> None:
    if rule.kind is RuleKind.IMMEDIATE:
        plans.unkeyed[event_type] = IMMEDIATE
    elif rule.kind is RuleKind.HISTORY:
        plans.unkeyed[event_type] = HistoryPlan(rule.parts)
        plans.order.append((event_type, None))  # taken by the buffer's flush
    elif rule.kind is RuleKind.APPEND:
        plan = AppendPlan()
        plans.unkeyed[event_type] = plan
        plans.order.append((event_type, _drain_list(plan.items)))
    else:
        keyed = _KEYED_PLANS[rule.kind](_spec(rule), {})
        plans.keyed[event_type] = keyed
        drain = _drain_grouped if rule.kind is RuleKind.APPEND_PER_KEY else _drain_dict
        plans.order.append((event_type, drain(keyed.store)))


def _spec(rule: Rule) -> KeySpec:
    if rule.key is None:  # `Rule` requires a key for every keyed kind
        raise ValueError(f"a {rule.kind.value} rule without a key")
    return rule.key


def _drain_dict(store: dict[Any, Any]) -> Drain:
    def take() -> tuple[Any, ...]:
        items = tuple(store.values())
        store.clear()
        return items

    return take


def _drain_list(store: list[Any]) -> Drain:
    def take() -> tuple[Any, ...]:
        items = tuple(store)
        store.clear()
        return items

    return take


def _drain_grouped(store: dict[Any, list[Any]]) -> Drain:
    def take() -> tuple[Any, ...]:
        items = tuple(item for group in store.values() for item in group)
        store.clear()
        return items

    return take
