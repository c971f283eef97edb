"""How long to wait before the next connection attempt.

A schedule of base delays indexed by the number of consecutive failures,
each scaled by a random factor in ``1 ± jitter`` so that tenants dropped
together do not come back together (the "thundering herd"; see the AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015). Pure: the random
source is passed in, so a seeded `random.Random` (or the lighter
`SplitMix64`, which a hub gives each tenant) makes every delay reproducible.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from typing import Any, Protocol, final

import attrs

from ._validate import check_seconds

__all__ = ["Backoff", "RandomSource", "SplitMix64"]

_MAX_STEPS = 1000
"""The longest schedule `Backoff.exponential` builds (8 KB of delays)."""


class RandomSource(Protocol):
    """Anything with ``random() -> float`` in ``[0, 1)``, such as `random.Random`."""

    def random(self) -> float:
        """A float in ``[0, 1)``."""
        ...


_MASK64 = (1 << 64) - 1


@final
class SplitMix64:
    """A small seeded `RandomSource`: SplitMix64 (Steele, Lea and Flood, 2014).

    Good enough for jitter, not for secrets. Its state is one int, where a
    `random.Random` costs 2.5 KB: a hub has one generator per tenant.

    Args:
        seed: An int, or a str or bytes (hashed), for a reproducible
            sequence; None for an unpredictable one.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int | str | bytes | None = None) -> None:
        if seed is None:
            self._state = secrets.randbits(64)
        elif isinstance(seed, int):
            self._state = seed & _MASK64
        else:
            data = seed.encode() if isinstance(seed, str) else bytes(seed)
            digest = hashlib.blake2b(data, digest_size=8).digest()
            self._state = int.from_bytes(digest, "little")

    def random(self) -> float:
        """A float in ``[0, 1)`` with 53 random bits."""
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * 2.0**-53

    def __repr__(self) -> str:
        return "<SplitMix64>"


def _delays(value: Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"delays must be a sequence of seconds, got {value!r}")
    return tuple(value)


def _check_delays(_: object, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    if not value:
        raise ValueError("delays must not be empty")
    for delay in value:
        if delay != 0:
            check_seconds(delay, attribute.name)
        if delay == math.inf:
            raise ValueError("delays must be finite")


def _check_jitter(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"jitter must be a number, got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"jitter must be in [0, 1), got {value!r}")


@final
@attrs.frozen
class Backoff:
    """A delay schedule: ``delays[n - 1]`` after *n* consecutive failures, jittered.

    Past the end of *delays* the last one repeats. The defaults are the
    Baileys defaults: 1, 2, 5, 10, 20, 30 s, each ±15 %.

    Args:
        delays: Base delays in seconds (0 allowed), one per consecutive failure.
        jitter: Each delay is multiplied by a uniform factor in
            ``[1 - jitter, 1 + jitter)``.
    """

    delays: tuple[float, ...] = attrs.field(
        default=(1.0, 2.0, 5.0, 10.0, 20.0, 30.0), converter=_delays, validator=_check_delays
    )
    jitter: float = attrs.field(default=0.15, validator=_check_jitter)

    @classmethod
    def exponential(
        cls,
        initial: float = 1.0,
        *,
        factor: float = 2.0,
        maximum: float = 30.0,
        jitter: float = 0.15,
    ) -> Backoff:
        """``initial * factor ** n``, capped at *maximum*: 1, 2, 4, 8, 16, 30 by default.

        The schedule is built here, one delay per step up to the cap, so it
        must reach *maximum* within 1,000 steps: ``exponential(1e-300,
        factor=1.000000001)`` would need 7e11 of them, and a factor that
        close to 1 or an initial delay that small is refused with a
        `ValueError` naming both.
        """
        check_seconds(initial, "initial")
        check_seconds(maximum, "maximum")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"factor must be a number > 1, got {factor!r}")
        if not factor > 1:  # also rejects NaN
            raise ValueError(f"factor must be a number > 1, got {factor!r}")
        if maximum == math.inf:
            raise ValueError("maximum must be finite")
        delays = [min(initial, maximum)]
        while delays[-1] < maximum:
            if len(delays) == _MAX_STEPS:
                raise ValueError(
                    f"factor {factor!r} from initial {initial!r} s does not reach maximum "
                    f"{maximum!r} s within {_MAX_STEPS:,} steps: raise factor or initial"
                )
            delays.append(min(delays[-1] * factor, maximum))
        return cls(tuple(delays), jitter)

    def delay(self, failures: int, random: RandomSource) -> float:
        """Seconds to wait after *failures* consecutive failures (at least 1 counts as 1)."""
        return self._base(failures) * (1.0 + self.jitter * (2.0 * random.random() - 1.0))

    def bounds(self, failures: int) -> tuple[float, float]:
        """The smallest and largest delay `delay` can return for *failures*."""
        base = self._base(failures)
        return base * (1.0 - self.jitter), base * (1.0 + self.jitter)

    def _base(self, failures: int) -> float:
        return self.delays[min(max(failures, 1), len(self.delays)) - 1]
