"""Backoff, circuit breaker and the per-tenant reconnect state machine: pure, no I/O."""

from __future__ import annotations

import itertools
import math
import random
import tracemalloc
from collections.abc import Callable

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from helpers import FakeClock
from tenantry import Backoff, BreakerState, Decision, DisconnectReason, ReasonCode, ReconnectPolicy
from tenantry._backoff import SplitMix64
from tenantry.lowlevel import CircuitBreaker

CLOSED_503 = DisconnectReason(ReasonCode.UNAVAILABLE_SERVICE, "scripted")


class Fixed:
    """A random source that always returns *value*."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


# -- Backoff -------------------------------------------------------------------


def test_backoff_follows_the_seed_schedule_then_repeats_the_last() -> None:
    backoff = Backoff(jitter=0)
    delays = [backoff.delay(n, Fixed(0.5)) for n in range(9)]
    assert delays == [1, 1, 2, 5, 10, 20, 30, 30, 30]


def test_backoff_jitter_spans_its_bounds() -> None:
    backoff = Backoff()
    assert backoff.delay(3, Fixed(0.0)) == pytest.approx(5 * 0.85)
    assert backoff.delay(3, Fixed(0.999999)) == pytest.approx(5 * 1.15)
    assert backoff.bounds(3) == pytest.approx((4.25, 5.75))


def test_backoff_is_reproducible_from_a_seed() -> None:
    backoff = Backoff()
    first = [backoff.delay(n, rng) for rng in [random.Random(7)] for n in range(1, 20)]
    again = [backoff.delay(n, rng) for rng in [random.Random(7)] for n in range(1, 20)]
    assert first == again
    assert len(set(first)) == len(first)  # jittered: no two alike


def test_splitmix64_is_a_small_reproducible_random_source() -> None:
    first = [SplitMix64("1:acme").random() for _ in range(3)]
    assert len(set(first)) == 1  # a fresh generator per draw: the same first value
    rng, again = SplitMix64("1:acme"), SplitMix64(b"1:acme")
    draws = [rng.random() for _ in range(10_000)]
    assert draws[:100] == [again.random() for _ in range(100)]
    assert all(0.0 <= x < 1.0 for x in draws)
    assert 0.49 < sum(draws) / len(draws) < 0.51
    assert SplitMix64("1:acme").random() != SplitMix64("1:other").random()
    assert SplitMix64().random() != SplitMix64().random()  # unseeded: unpredictable
    assert tracemalloc_size(lambda: SplitMix64("1:acme")) < 200  # random.Random: ~2,500


def test_splitmix64_matches_the_reference_sequence() -> None:
    # The reference outputs of SplitMix64 seeded with 0, as 53-bit floats.
    rng = SplitMix64(0)
    expected = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)
    assert [rng.random() for _ in expected] == [(x >> 11) * 2.0**-53 for x in expected]


def tracemalloc_size(make: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept is not None
    return size


@settings(max_examples=200)
@given(failures=st.integers(-3, 50), r=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_bounds(failures: int, r: float) -> None:
    backoff = Backoff()
    low, high = backoff.bounds(failures)
    assert low <= backoff.delay(failures, Fixed(r)) <= high


def test_exponential_backoff() -> None:
    assert Backoff.exponential(jitter=0).delays == (1, 2, 4, 8, 16, 30)
    assert Backoff.exponential(0.5, factor=3, maximum=10).delays == (0.5, 1.5, 4.5, 10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delays": ()}, "delays"),
        ({"delays": (1, -2)}, "delays"),
        ({"delays": (1, math.inf)}, "delays"),
        ({"delays": "12"}, "delays"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_backoff_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_exponential_validation() -> None:
    with pytest.raises(ValueError, match="factor"):
        Backoff.exponential(factor=1)
    with pytest.raises(ValueError, match="maximum"):
        Backoff.exponential(maximum=math.inf)
    with pytest.raises(TypeError, match="factor"):
        Backoff.exponential(factor="2")  # type: ignore[arg-type]


def test_exponential_refuses_a_schedule_too_long_to_build() -> None:
    # 7e11 steps from 1e-300 s to 30 s: built eagerly, it never returned.
    with pytest.raises(ValueError, match=r"factor 1\.000000001 from initial 1e-300 s") as refused:
        Backoff.exponential(1e-300, factor=1.000000001)
    assert "within 1,000 steps" in str(refused.value)
    with pytest.raises(ValueError, match="initial 5e-324"):
        Backoff.exponential(5e-324)  # the smallest float: 1,080 doublings
    assert len(Backoff.exponential(30 / 2**999).delays) == 1000  # the longest allowed
    with pytest.raises(ValueError, match="raise factor or initial"):
        Backoff.exponential(30 / 2**1000)
    assert repr(Backoff.exponential()) == (
        "Backoff(delays=(1.0, 2.0, 4.0, 8.0, 16.0, 30.0), jitter=0.15)"
    )


@settings(max_examples=300)
@given(
    initial=st.floats(5e-324, 1e6),
    factor=st.floats(1, 1e300, exclude_min=True),
    maximum=st.floats(5e-324, 1e6),
)
def test_exponential_builds_a_capped_rising_schedule_or_refuses(
    initial: float, factor: float, maximum: float
) -> None:
    try:
        delays = Backoff.exponential(initial, factor=factor, maximum=maximum).delays
    except ValueError as refused:
        refusal = str(refused)
    else:
        assert len(delays) <= 1000
        assert delays[-1] == maximum
        assert all(a < b for a, b in itertools.pairwise(delays))
        return
    assert "raise factor or initial" in refusal


# -- CircuitBreaker ------------------------------------------------------------------


def test_breaker_opens_after_fail_max_then_half_opens_after_the_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(fail_max=3, reset_timeout=60, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_at == clock.now
    assert not breaker.allow()
    assert breaker.wait() == 60
    clock.now += 59.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.changed_at == breaker.retry_at == 1060
    assert breaker.wait() == 0


def test_half_open_allows_exactly_one_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(fail_max=1, reset_timeout=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.changed_at == clock.now
    assert breaker.failures == 0
    assert breaker.allow()
    assert breaker.allow()


def test_a_failed_trial_reopens_for_a_full_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(fail_max=5, reset_timeout=60, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 60
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_at == clock.now + 60
    assert breaker.trips == 2


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(fail_max=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_breaker_repr_and_gauge() -> None:
    breaker = CircuitBreaker(fail_max=1, clock=FakeClock())
    breaker.record_failure()
    assert repr(breaker) == "<CircuitBreaker open failures=1/1 reset_timeout=60>"
    assert [s.gauge for s in BreakerState] == [0, 1, 2]


def test_breaker_validation() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        CircuitBreaker(fail_max=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(reset_timeout=0)


breaker_steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0, 100)),
        st.tuples(st.sampled_from(["allow", "success", "failure"]), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(steps=breaker_steps)
def test_breaker_invariants(steps: list[tuple[str, float | None]]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(fail_max=3, reset_timeout=30, clock=clock)
    streak = 0  # failures since the last success
    trials = 0  # allow() == True since the circuit last half-opened
    for step, amount in steps:
        before = breaker.state
        if step == "wait":
            assert amount is not None
            clock.now += amount
        elif step == "allow":
            allowed = breaker.allow()
            if before is BreakerState.HALF_OPEN:
                assert allowed == (trials == 0)
                trials += allowed
            else:
                assert allowed == (before is BreakerState.CLOSED)
        elif step == "success":
            breaker.record_success()
            streak = trials = 0
        else:
            breaker.record_failure()
            streak += 1
            trials = 0
        state = breaker.state
        if breaker.trips == 0:
            assert (state is BreakerState.CLOSED) == (streak < 3)
        if streak >= 3:
            assert state is not BreakerState.CLOSED
        if state is BreakerState.OPEN:
            assert breaker.wait() > 0
            assert not breaker.allow()
        assert trials <= 1


# -- Reconnector -----------------------------------------------------------------------


def make(policy: ReconnectPolicy | None = None) -> tuple[FakeClock, ReconnectPolicy]:
    return FakeClock(), policy or ReconnectPolicy(backoff=Backoff(jitter=0))


def test_a_server_that_accepts_then_closes_gets_growing_delays() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    delays = []
    for _ in range(4):
        machine.connected()
        clock.now += 1  # closes well before stable_after
        step = machine.disconnected(CLOSED_503)
        delays.append(step.delay)
        assert step.failure
        clock.now += step.delay
    assert delays == [1, 2, 5, 10]
    assert machine.failures == 4


def test_a_stable_connection_resets_the_backoff_and_the_breaker() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    for _ in range(3):
        machine.disconnected(CLOSED_503)  # handshakes that failed
    assert machine.failures == 3
    machine.connected()
    clock.now += 29
    assert not machine.settle()
    assert machine.stable_at == clock.now + 1
    clock.now += 1
    assert machine.settle()
    assert machine.failures == 0
    assert machine.breaker.failures == 0
    step = machine.disconnected(CLOSED_503)
    assert not step.failure
    assert step.delay == 1
    assert step.failures == 0


def test_every_reading_sees_a_stable_connection_settled() -> None:
    clock, policy = make(ReconnectPolicy(backoff=Backoff(jitter=0), fail_max=2))
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    for _ in range(2):
        machine.disconnected(CLOSED_503)  # handshakes that failed: the breaker opens
    clock.now += 60
    assert machine.breaker.state is BreakerState.HALF_OPEN
    machine.connected()  # the trial connects...
    assert machine.stable_at == clock.now + 30
    clock.now += 3600  # ...and stays up; nobody calls settle()
    assert machine.stable_at is None
    assert machine.failures == 0
    assert machine.breaker.state is BreakerState.CLOSED
    assert machine.breaker.failures == 0


def test_rejected_handshakes_after_a_stable_connection_are_failures() -> None:
    # Found by `tenantry soak`: the stale "stable" mark of the last connection made every
    # rejected handshake after it look like a success, so an outage was retried forever.
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    machine.connected()
    clock.now += 600
    assert not machine.disconnected(CLOSED_503).failure  # a stable connection ended
    steps = [machine.disconnected(DisconnectReason(503, "handshake")) for _ in range(5)]
    assert [s.failure for s in steps] == [True] * 5
    assert [s.failures for s in steps] == [1, 2, 3, 4, 5]
    assert steps[-1].breaker is BreakerState.OPEN


def test_rejected_handshakes_after_a_restart_are_failures() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    machine.connected()
    clock.now += 600
    machine.settle()
    machine.restarted()
    assert machine.disconnected(DisconnectReason(503, "handshake")).failure


def test_the_breaker_opens_after_five_failed_handshakes_and_its_wait_wins() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    steps = [machine.disconnected(DisconnectReason(500, "handshake")) for _ in range(5)]
    assert [s.breaker for s in steps] == [BreakerState.CLOSED] * 4 + [BreakerState.OPEN]
    assert steps[-1].delay == 60  # the breaker's timeout, longer than the backoff's 20
    clock.now += 60
    assert machine.breaker.state is BreakerState.HALF_OPEN
    trial = machine.disconnected(DisconnectReason(500, "handshake"))
    assert trial.breaker is BreakerState.OPEN
    assert trial.delay == 60


@pytest.mark.parametrize("code", [401, 403, 440])
def test_stop_codes_stop_and_count_nothing(code: int) -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock)
    step = machine.disconnected(DisconnectReason(code))
    assert step.decision is Decision.STOP
    assert step.delay == math.inf
    assert not step.failure
    assert machine.failures == 0


def test_restart_required_reconnects_at_once_but_cannot_storm() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    steps = []
    for _ in range(6):
        machine.connected()
        steps.append(machine.disconnected(DisconnectReason(ReasonCode.RESTART_REQUIRED)))
    assert [s.decision for s in steps] == [Decision.RECONNECT_NOW] * 6
    assert [s.delay for s in steps[:4]] == [0, 0, 0, 0]
    assert steps[4].breaker is BreakerState.OPEN
    assert steps[4].delay == 60


def test_a_handler_error_is_a_failure_even_on_a_stable_connection() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    machine.connected()
    clock.now += 100
    step = machine.disconnected(DisconnectReason(428, "handler raised"), failed=True)
    assert step.failure
    assert step.failures == 1


def test_restart_counts_nothing_and_waits_for_nothing() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock)
    for _ in range(5):
        machine.disconnected(CLOSED_503)
    machine.connected()
    step = machine.restarted()
    assert (step.decision, step.delay, step.failure) == (Decision.RECONNECT_NOW, 0, False)
    assert machine.failures == 5
    assert machine.stable_at is None


def test_a_custom_decide() -> None:
    clock, _ = make()
    policy = ReconnectPolicy(decide=lambda reason: Decision.STOP)
    assert policy.reconnector(clock=clock).disconnected(CLOSED_503).decision is Decision.STOP


@pytest.mark.parametrize(
    ("reason", "decision"),
    [
        (DisconnectReason(428, remote=False, decision=Decision.STOP), Decision.STOP),
        (DisconnectReason(401, decision=Decision.RECONNECT), Decision.RECONNECT),
        (DisconnectReason(503, decision=Decision.RECONNECT_NOW), Decision.RECONNECT_NOW),
    ],
    ids=str,
)
def test_a_reasons_own_decision_overrides_the_policy(
    reason: DisconnectReason, decision: Decision
) -> None:
    asked: list[DisconnectReason] = []

    def decide(reason: DisconnectReason) -> Decision:
        asked.append(reason)
        return Decision.STOP if decision is not Decision.STOP else Decision.RECONNECT

    clock, _ = make()
    machine = ReconnectPolicy(decide=decide).reconnector(clock=clock, random=Fixed(0.5))
    assert machine.disconnected(reason).decision is decision
    assert asked == []


def test_reconnect_now_by_decision_skips_the_delay_but_a_short_connection_still_fails() -> None:
    clock, policy = make()
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    now = DisconnectReason(428, remote=False, decision=Decision.RECONNECT_NOW)
    machine.connected()
    clock.now += 1
    step = machine.disconnected(now)
    assert (step.decision, step.delay, step.failure, step.failures) == (
        Decision.RECONNECT_NOW,
        0,
        True,
        1,
    )
    machine.connected()
    clock.now += 600  # a stable connection: no failure
    step = machine.disconnected(now)
    assert (step.delay, step.failure, step.failures) == (0, False, 0)


def test_jittered_delays_from_a_seed_are_reproducible() -> None:
    def run(seed: int) -> list[float]:
        clock = FakeClock()
        machine = ReconnectPolicy().reconnector(clock=clock, random=random.Random(seed))
        return [machine.disconnected(CLOSED_503).delay for _ in range(4)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    low, high = Backoff().bounds(2)
    assert low <= run(3)[1] <= high


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fail_max": 0}, "fail_max"),
        ({"reset_timeout": -1}, "reset_timeout"),
        ({"stable_after": 0}, "stable_after"),
        ({"backoff": (1, 2)}, "backoff"),
        ({"decide": 3}, "decide"),
    ],
)
def test_policy_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


# -- Retry-After -----------------------------------------------------------------------

RATE_LIMITED = DisconnectReason.from_handshake_status(429)


@given(
    outcomes=st.lists(
        st.tuples(
            st.sampled_from([429, 503, 401, 515]),
            st.none() | st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=12,
    ),
    max_retry_after=st.floats(0.001, 1e6),
)
def test_retry_after_lengthens_the_wait_up_to_max_retry_after_and_never_shortens_it(
    outcomes: list[tuple[int, float | None]], max_retry_after: float
) -> None:
    policy = ReconnectPolicy(max_retry_after=max_retry_after)
    told, plain = (policy.reconnector(clock=FakeClock(), random=Fixed(0.3)) for _ in range(2))
    for status, retry_after in outcomes:
        reason = DisconnectReason.from_handshake_status(status)
        got = told.disconnected(reason, retry_after=retry_after)
        without = plain.disconnected(reason)
        assert (got.decision, got.failures, got.breaker) == (
            without.decision,
            without.failures,
            without.breaker,
        )
        if got.decision is Decision.STOP or retry_after is None or not retry_after > 0:
            assert got.delay == without.delay
        else:
            assert got.delay == max(without.delay, min(retry_after, max_retry_after))


def test_retry_after_applies_to_an_immediate_reconnect_and_a_backoff_alike() -> None:
    clock, policy = make(
        ReconnectPolicy(backoff=Backoff(jitter=0), fail_max=10, max_retry_after=60)
    )
    machine = policy.reconnector(clock=clock, random=Fixed(0.5))
    assert machine.disconnected(RATE_LIMITED, retry_after=7).delay == 7
    assert machine.disconnected(RATE_LIMITED, retry_after=0.5).delay == 2  # the backoff's longer
    assert machine.disconnected(RATE_LIMITED, retry_after=86400).delay == 60
    restart = DisconnectReason(ReasonCode.RESTART_REQUIRED)
    assert machine.disconnected(restart, retry_after=-3).delay == 0
    assert machine.disconnected(restart, retry_after=3).delay == 3


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (math.nan, ValueError), ("9", TypeError)],
)
def test_max_retry_after_is_validated(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_retry_after"):
        ReconnectPolicy(max_retry_after=value)  # type: ignore[arg-type]
    assert ReconnectPolicy().max_retry_after == 300


def test_a_policy_shows_its_decide_function_by_name() -> None:
    """Its repr (and the signature of every default built from it) is the same in every run."""
    assert "decide=default_decide," in repr(ReconnectPolicy())
    assert "0x" not in repr(ReconnectPolicy())
