"""Soak: hypothesis-generated bad frames at one tenant of a hub, healthy tenants beside it.

An attacker's upstream sends a generated mix of frames -- random binary,
invalid UTF-8 in text frames, JSON nested past what the parser takes, strings
near and over the size limits, JSON of the wrong shape or types, events whose
data does not fit their type's rule, and valid events of known and unknown
types -- one at a time, each processed before the next. Every frame carries
the outcome it must have, known by construction: a `RejectReason`, or
delivery. Meanwhile healthy tenants on the same hub receive steady traffic.

What must hold (the unit test of the socket alone is ``test_socket_bad_input``):

* nothing escapes the hub's ``async with``;
* the attacker's ``tenantry_frames_rejected_total{reason}`` equal, reason by
  reason, the rejections the frames call for, and each was logged with its
  reason; its valid frames are all received and delivered;
* connections end exactly where they must -- after a frame the transport
  refuses (1007, 1009), or after ``MAX_BAD_FRAMES + 1`` rejections on one
  connection (400) -- and nowhere else; the tenant reconnects and the attack
  goes on over the next connection;
* the healthy tenants deliver exactly what they were sent, with the same
  batches at the same virtual instants, hence the same deliveries per virtual
  minute, as a control run without the attacker. Under ``MockClock`` both runs
  are deterministic and their send and flush instants never coincide, so the
  comparison is exact: any difference means the attack reached them.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
from typing import Any, NamedTuple

import attrs
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings

from fleet import (
    FleetOutcome,
    add_healthy,
    assert_untouched,
    delivered_in_order,
    metric,
    observe,
    per_minute,
    read_sent,
    run_virtual,
)
from helpers import Handler, collector, idle
from tenantry import (
    DEFAULT_EVENT_RULES,
    Backoff,
    Batch,
    BufferConfig,
    ReasonCode,
    ReconnectPolicy,
    RejectReason,
    SocketOptions,
    TenantSpec,
    open_hub,
)
from tenantry.testing import FakeUpstream, open_fake_upstream

pytestmark = pytest.mark.soak


def _json_depth_limits() -> tuple[int, int]:
    """(a depth this interpreter's json parses, a depth at which it raises RecursionError).

    JsonProtocol has no depth limit of its own: a frame too deep for `json.loads`
    is rejected as invalid JSON. The limit is the interpreter's (about 1,000 on
    3.11, more on later versions), so it is probed, and the frames keep far from it.
    """
    depth = 64
    while depth <= 1 << 20:
        try:
            json.loads("[" * depth + "]" * depth)
        except RecursionError:
            return depth // 2, depth
        depth *= 2
    raise RuntimeError("json parsed a million levels: no frame is too deep to test with")


PARSES, TOO_DEEP = _json_depth_limits()
SHALLOW_MAX = PARSES // 2  # parses in any task's stack
DEEP_MIN = 2 * TOO_DEEP  # fails in any task's stack
MAX_MESSAGE_SIZE = max(50_000, 8 * DEEP_MIN)  # characters: longer text is too_large
TRANSPORT_LIMIT = 4 * MAX_MESSAGE_SIZE  # bytes: trio-websocket fails bigger messages (1009)
MAX_BAD_FRAMES = 8  # rejection number MAX_BAD_FRAMES + 1 on one connection closes it (400)
HEALTHY = ("h0", "h1", "h2")
RUN_FOR = 120.0  # virtual seconds of healthy traffic; the attack ends long before
PERIOD = 2.0  # a healthy event every 2 s; the 5 s flush never falls on a send
CONFIG = BufferConfig(always_buffer=True)  # keyed events are then checked against their rule


class Frame(NamedTuple):
    """One frame from the attacker's upstream and what the hub must make of it."""

    payload: str | bytes
    reason: RejectReason | None
    """None: a valid event, to be received and delivered."""
    as_text: bool = False
    """Write bytes as a *text* frame, unchecked (invalid UTF-8)."""

    def __repr__(self) -> str:  # hypothesis prints failing examples: keep them short
        shown = self.payload if len(self.payload) <= 60 else self.payload[:50]
        size = "" if shown is self.payload else f" ({len(self.payload)} long)"
        reason = None if self.reason is None else self.reason.value
        return f"Frame({shown!r}{size}, {reason}{', as_text' if self.as_text else ''})"

    @property
    def ends_connection(self) -> str | None:
        """The close reason's name if the transport itself fails the connection over it."""
        if self.as_text:
            return "invalid_payload"  # 1007
        if len(self.payload) > TRANSPORT_LIMIT:
            return "message_too_big"  # 1009
        return None


def event(event_type: Any, data: Any) -> str:
    return json.dumps({"type": event_type, "data": data})


def sized(size: int, event_type: str = "chats.update") -> str:
    """An event frame of exactly *size* characters whose data is a long string."""
    head, tail = f'{{"type":"{event_type}","data":"', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


# -- strategies ------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
non_objects = json_values.filter(lambda value: not isinstance(value, dict))
non_strings = json_values.filter(lambda value: not isinstance(value, str))
unknown_types = st.text(min_size=1, max_size=20).filter(
    lambda t: t not in DEFAULT_EVENT_RULES and t != "stream:error"
)
known_types = st.sampled_from(list(DEFAULT_EVENT_RULES))
ID_KEYED = [t for t, rule in DEFAULT_EVENT_RULES.items() if rule.key == "id"]
MESSAGE_KEYED = [t for t, rule in DEFAULT_EVENT_RULES.items() if callable(rule.key)]
NEVER_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
sendable_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def fields_without(*names: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in names), scalars, max_size=3
    )


binary = st.one_of(
    st.binary(max_size=200),
    st.builds(event, known_types | unknown_types, json_values).map(str.encode),  # valid, as bytes
).map(lambda payload: Frame(payload, RejectReason.BINARY))

invalid_utf8 = st.one_of(
    st.builds(
        lambda a, bad, b: a + bad + b,
        st.binary(max_size=40),
        st.sampled_from(NEVER_UTF8),
        st.binary(max_size=40),
    ),
    st.binary(max_size=40).map(lambda a: a + b"\xe2\x82"),  # a character cut off at the end
).map(lambda payload: Frame(payload, RejectReason.INVALID_UTF8, as_text=True))

deep_json = st.one_of(
    st.integers(DEEP_MIN, MAX_MESSAGE_SIZE // 2).map(lambda d: "[" * d + "]" * d),
    st.integers(DEEP_MIN, MAX_MESSAGE_SIZE // 2 - 50).map(
        lambda d: '{"type":"chats.update","data":{"id":1,"x":' + "[" * d + "]" * d + "}}"
    ),
    st.integers(DEEP_MIN, MAX_MESSAGE_SIZE // 6 - 1).map(lambda d: '{"a":' * d + "0" + "}" * d),
).map(lambda payload: Frame(payload, RejectReason.INVALID_JSON))

invalid_json = st.one_of(
    sendable_text.filter(not_json),
    st.builds(
        lambda text, cut: text[: max(0, len(text) - cut)],  # a proper prefix of an object
        st.builds(event, known_types | unknown_types, json_values),
        st.integers(1, 10_000),
    ),
).map(lambda payload: Frame(payload, RejectReason.INVALID_JSON))

bad_shape = st.one_of(
    non_objects.map(json.dumps),  # a list, number, string, null or bool at the top level
    st.integers(MAX_MESSAGE_SIZE - 100, MAX_MESSAGE_SIZE).map(lambda n: '"' + "x" * (n - 2) + '"'),
    st.builds(event, st.just("") | non_strings, json_values),  # type not a non-empty string
    fields_without("type").map(json.dumps),  # no type
    st.builds(
        lambda t, rest: json.dumps({**rest, "type": t}),
        known_types | unknown_types,
        fields_without("type", "data"),
    ),  # no data
    st.builds(
        lambda code: json.dumps({"type": "stream:error", "code": code}),
        st.none()
        | st.text()
        | st.floats()
        | st.booleans()
        | st.integers(max_value=-1)
        | st.lists(scalars, max_size=2),
    ),
    st.just('{"type": "stream:error"}'),  # a close request without a code
).map(lambda payload: Frame(payload, RejectReason.BAD_SHAPE))

history_parts = st.one_of(
    st.integers().filter(bool),  # truthy and not iterable
    st.text(min_size=1, max_size=5),  # characters have no key
    st.lists(fields_without("id", "key"), min_size=1, max_size=3),  # items without a key
)
invalid_event = st.one_of(
    st.builds(event, st.sampled_from(ID_KEYED + MESSAGE_KEYED), non_objects),
    st.builds(event, st.sampled_from(ID_KEYED), fields_without("id")),
    st.builds(
        event,
        st.sampled_from(ID_KEYED),
        st.builds(lambda i: {"id": i}, st.lists(scalars, max_size=2) | fields_without()),
    ),
    st.builds(event, st.sampled_from(MESSAGE_KEYED), fields_without("key")),
    st.builds(
        event,
        st.sampled_from(MESSAGE_KEYED),
        st.builds(
            lambda key: {"key": key},
            non_objects
            | fields_without("remoteJid")
            | fields_without("id")
            | st.builds(lambda j: {"remoteJid": j, "id": "m"}, st.lists(scalars, max_size=2)),
        ),
    ),
    st.builds(event, st.just("messaging-history.set"), non_objects),
    st.builds(
        event,
        st.just("messaging-history.set"),
        st.builds(
            lambda part, bad: {part: bad},
            st.sampled_from(["chats", "contacts", "messages"]),
            history_parts,
        ),
    ),
    st.integers(MAX_MESSAGE_SIZE - 100, MAX_MESSAGE_SIZE).map(sized),  # data a string, not a map
).map(lambda payload: Frame(payload, RejectReason.INVALID_EVENT))

too_large = st.one_of(
    st.integers(MAX_MESSAGE_SIZE + 1, MAX_MESSAGE_SIZE + 100),
    st.integers(MAX_MESSAGE_SIZE + 1, TRANSPORT_LIMIT),
).map(lambda n: Frame(sized(n), RejectReason.TOO_LARGE))

refused_by_transport = st.integers(TRANSPORT_LIMIT + 1, TRANSPORT_LIMIT + 100).map(
    lambda n: Frame(sized(n), RejectReason.TOO_LARGE)
)

valid = st.one_of(
    st.builds(event, unknown_types, json_values),  # unknown types are appended, never dropped
    st.builds(event, st.just("connection.update"), json_values),
    st.builds(event, st.sampled_from(ID_KEYED), st.builds(lambda i: {"id": i}, st.integers(0, 5))),
    st.builds(
        event,
        st.sampled_from(MESSAGE_KEYED),
        # "update" as a messages.update carries it: merged into a pending message of its key
        st.builds(lambda i: {"key": {"remoteJid": "j", "id": i}, "update": {}}, st.integers(0, 5)),
    ),
    st.integers(1, SHALLOW_MAX).map(lambda d: event("deep.ok", json.loads("[" * d + "]" * d))),
    st.integers(MAX_MESSAGE_SIZE - 100, MAX_MESSAGE_SIZE).map(lambda n: sized(n, "blob.big")),
).map(lambda payload: Frame(payload, None))

survivable = st.one_of(binary, deep_json, invalid_json, bad_shape, invalid_event, too_large)
fatal = invalid_utf8 | refused_by_transport


@st.composite
def attacks(draw: st.DrawFn) -> list[Frame]:
    """8 to 24 bad frames, 1 to 8 valid ones and up to 2 the transport refuses, shuffled.

    At most four connections end (two refusals, two policy closes), so the
    attack is over in about 20 virtual seconds and the breaker never opens.
    """
    frames = draw(st.lists(survivable, min_size=8, max_size=24))
    frames += draw(st.lists(valid, min_size=1, max_size=8))
    frames += draw(st.lists(fatal, max_size=2))
    return list(draw(st.permutations(frames)))


EVERY_KIND = [
    Frame(b"\x00\x01", RejectReason.BINARY),
    Frame(event("chats.update", {"id": 1}).encode(), RejectReason.BINARY),
    Frame("[" * DEEP_MIN + "]" * DEEP_MIN, RejectReason.INVALID_JSON),
    Frame('{"type": "chats.update", "data": {', RejectReason.INVALID_JSON),
    Frame("[1, 2]", RejectReason.BAD_SHAPE),
    Frame('{"type": 3, "data": {}}', RejectReason.BAD_SHAPE),
    Frame('{"type": "chats.update"}', RejectReason.BAD_SHAPE),
    Frame('{"type": "stream:error", "code": "x"}', RejectReason.BAD_SHAPE),
    Frame(event("chats.update", [1]), RejectReason.INVALID_EVENT),
    Frame(event("messages.upsert", {"key": {"id": "m"}}), RejectReason.INVALID_EVENT),
    Frame(event("messaging-history.set", {"chats": [{}]}), RejectReason.INVALID_EVENT),
    Frame(sized(MAX_MESSAGE_SIZE), RejectReason.INVALID_EVENT),  # at the limit: decoded
    Frame(sized(MAX_MESSAGE_SIZE + 1), RejectReason.TOO_LARGE),
    Frame(sized(TRANSPORT_LIMIT), RejectReason.TOO_LARGE),  # the transport still takes it
    Frame(event("no.such.type", {"n": 1}), None),
    Frame(event("chats.update", {"id": 1}), None),
    Frame(sized(MAX_MESSAGE_SIZE, "blob.big"), None),
    Frame(sized(TRANSPORT_LIMIT + 1), RejectReason.TOO_LARGE),  # refused: 1009
    Frame(event("connection.update", {"state": "open"}), None),
    Frame(b'{"type": "a\xc3', RejectReason.INVALID_UTF8, as_text=True),  # refused: 1007
    Frame(event("messages.upsert", {"key": {"remoteJid": "j", "id": "m"}}), None),
]
POLICY_CLOSE = [Frame("{", RejectReason.INVALID_JSON)] * (2 * MAX_BAD_FRAMES + 3)


# -- the scenario ------------------------------------------------------------------


@attrs.define
class Outcome(FleetOutcome):
    """What one run observed: the healthy tenants, and the attacker."""

    attacker_batches: list[Batch] = attrs.field(factory=list)
    closes: list[str] = attrs.field(factory=list)
    """Expected close reasons of the attacker's connections, in order."""
    logged: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Rejection warnings logged for the attacker, by reason."""


class RejectionLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("frame rejected") and record.__dict__["tenant"] == "bad":
            self.reasons[record.__dict__["reason"]] += 1


def tenant(upstream: FakeUpstream, tenant_id: str, handler: Handler) -> TenantSpec:
    return TenantSpec(
        tenant_id,
        upstream.connector_to(f"/{tenant_id}"),
        handler=handler,
        options=SocketOptions(
            buffer=CONFIG, max_message_size=MAX_MESSAGE_SIZE, max_bad_frames=MAX_BAD_FRAMES
        ),
    )


async def feed(upstream: FakeUpstream, tenant_id: str) -> None:
    """One event every PERIOD seconds, distinct keys (nothing merges), from t = 0."""
    connection = await upstream.wait_connections(1, path=f"/{tenant_id}")
    await connection.stream(int(RUN_FOR / PERIOD), keys=10**9, rate=1 / PERIOD)


async def attack(upstream: FakeUpstream, frames: list[Frame], outcome: Outcome) -> None:
    """Send *frames* to tenant ``bad`` one at a time, checking where connections end."""
    index, rejections = 1, 0
    for n, frame in enumerate(frames):
        connection = await upstream.wait_connections(index, path="/bad")
        await connection.send_raw(frame.payload, as_text=frame.as_text)
        await trio.testing.wait_all_tasks_blocked()  # processed, and any close completed
        rejections += frame.reason is not None
        close = frame.ends_connection or ("protocol_error" if rejections > MAX_BAD_FRAMES else None)
        assert connection.ended == (close is not None), (n, frame.reason, close)
        if close is not None:
            outcome.closes.append(close)
            index, rejections = index + 1, 0


async def scenario(frames: list[Frame] | None) -> Outcome:
    outcome = Outcome({t: [] for t in HEALTHY})
    log, logger = RejectionLog(), logging.getLogger("tenantry.socket")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever the run's log level: the warnings are counted
    logger.addHandler(log)
    try:
        async with open_fake_upstream() as upstream:
            async with open_hub(seed=3) as hub, trio.open_nursery() as script:
                if frames is not None:
                    await hub.add(tenant(upstream, "bad", collector(outcome.attacker_batches)))
                healthy = functools.partial(tenant, upstream)
                await add_healthy(hub, upstream, script, outcome, spec=healthy, feed=feed)
                if frames is not None:
                    with trio.fail_after(RUN_FOR / 2):
                        await attack(upstream, frames, outcome)
                await trio.sleep_until(RUN_FOR)
                observe(outcome, hub)
            # the hub's block has exited: every final batch is delivered
            read_sent(outcome, upstream)
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    outcome.logged = log.reasons
    return outcome


@functools.cache
def control() -> Outcome:
    return run_virtual(scenario, None)


# -- the tests -------------------------------------------------------------------


def test_the_control_run_delivers_steadily_and_repeats_exactly() -> None:
    baseline = control()
    again = run_virtual(scenario, None)
    assert again.timelines == baseline.timelines  # deterministic: exact comparison is fair
    for tenant_id in HEALTHY:
        timeline = baseline.timelines[tenant_id]
        assert delivered_in_order(baseline, tenant_id)
        assert len(baseline.sent[tenant_id]) == RUN_FOR / PERIOD
        # The first event starts the 5 s clock; 3 events (0, 2, 4 s) per batch, one every 6 s.
        assert per_minute(timeline) == {0: (10, 30), 1: (10, 30)}
        assert {reason for _, reason, _ in timeline} == {"interval"}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=attacks())
@example(frames=EVERY_KIND)
@example(frames=POLICY_CLOSE)
def test_bad_frames_at_one_tenant_are_counted_and_touch_no_other(frames: list[Frame]) -> None:
    baseline = control()
    outcome = run_virtual(scenario, frames)

    # every rejection counted and logged with its reason, exactly
    expected = collections.Counter(f.reason.value for f in frames if f.reason is not None)
    for reason in RejectReason:
        counted = metric(
            outcome, "tenantry_frames_rejected_total", tenant="bad", reason=reason.value
        )
        assert counted == expected[reason.value], reason
    assert outcome.logged == expected

    # connections ended exactly where the frames called for it, for those reasons
    closes = collections.Counter(outcome.closes)
    for name in ("invalid_payload", "message_too_big", "protocol_error"):
        assert (
            metric(outcome, "tenantry_reconnects_total", tenant="bad", reason=name)
            == (closes[name])
        ), name
    assert metric(outcome, "tenantry_reconnects_total", tenant="bad") == len(outcome.closes)
    assert outcome.statuses["bad"].connections == len(outcome.closes) + 1

    # the valid frames among them were all received and delivered
    valid_frames = sum(f.reason is None for f in frames)
    attacker = functools.partial(metric, outcome, tenant="bad")
    assert attacker("tenantry_events_received_total") == valid_frames
    delivered = sum(batch.count for batch in outcome.attacker_batches)
    assert delivered + attacker("tenantry_events_merged_total") == valid_frames
    assert attacker("tenantry_events_lost_total") == 0

    # the healthy tenants saw nothing of it
    assert_untouched(outcome, baseline)


# -- library bugs this suite found (fixed) -----------------------------------------------


async def test_peer_chosen_close_codes_do_not_grow_the_metric_labels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    codes = [10**6 + n for n in range(30)]  # unknown codes of the peer's choosing
    fast = ReconnectPolicy(backoff=Backoff((0.1,), jitter=0.0), fail_max=1000)
    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        await hub.add(TenantSpec("a", upstream.connector_to("/a"), handler=idle, policy=fast))
        for n, code in enumerate(codes, start=1):
            await (await upstream.wait_connections(n, path="/a")).stream_error(code)
        await upstream.wait_connections(len(codes) + 1, path="/a")
        metrics = hub.metrics()
    assert metrics.value("tenantry_reconnects_total", tenant="a") == len(codes)
    labels = {
        dict(s.labels)["reason"] for s in metrics.samples if s.name == "tenantry_reconnects_total"
    }
    # A closed set: the named reasons (ReasonCode and the RFC 6455 names) and one for the rest.
    closed_set = (
        len(ReasonCode)
        + len(
            {
                "ws_protocol_error",
                "unsupported_data",
                "invalid_payload",
                "policy_violation",
                "message_too_big",
                "internal_error",
            }
        )
        + 1
    )
    assert len(labels) <= closed_set  # before the fix: code_1000000 ... code_1000029


async def test_invalid_events_are_rejected_whether_or_not_the_socket_is_buffering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames = [
        event("chats.update", {"name": "no id"}),
        event("chats.update", [1]),
        event("messages.upsert", "not a message"),
        event("messaging-history.set", 5),
    ]
    delivered: list[Batch] = []
    async with open_fake_upstream() as upstream, open_hub(seed=1) as hub:
        spec = TenantSpec(
            "a", upstream.connector_to("/a"), handler=collector(delivered)
        )  # the default BufferConfig: not buffering between bursts
        await hub.add(spec)
        connection = await upstream.wait_connections(1, path="/a")
        for frame in frames:
            await connection.send_raw(frame)
        await trio.testing.wait_all_tasks_blocked()
        metrics = hub.metrics()
    rejected = metrics.value("tenantry_frames_rejected_total", tenant="a", reason="invalid_event")
    assert [list(batch.events) for batch in delivered] == []  # before the fix: all four
    assert rejected == len(frames)  # before the fix: 0, but 4 with always_buffer=True
