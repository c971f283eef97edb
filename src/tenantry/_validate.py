"""Argument checks shared by every configuration class: fail at construction, naming the field."""

from __future__ import annotations

from typing import Any

import attrs


def check_name(value: object, field: str) -> str:
    """*value* as a non-empty string, else raise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def check_seconds(value: object, field: str) -> float:
    """*value* as a float number of seconds > 0 (`math.inf` allowed), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number of seconds, got {value!r}")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{field} must be > 0 seconds, got {value!r}")
    return float(value)


def check_count(value: object, field: str, *, minimum: int) -> int:
    """*value* as an int >= *minimum*, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return value


def nonempty_name(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    """attrs validator: `check_name`."""
    check_name(value, attribute.name)


def seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_seconds`."""
    check_seconds(value, attribute.name)


def optional_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_seconds`, or None."""
    if value is not None:
        check_seconds(value, attribute.name)


def positive_count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    """attrs validator: an int >= 1."""
    check_count(value, attribute.name, minimum=1)


def nonnegative_count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    """attrs validator: an int >= 0."""
    check_count(value, attribute.name, minimum=0)


def check_between(value: object, field: str, low: float, high: float) -> float:
    """*value* as a float in ``[low, high]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number, got {value!r}")
    if not low <= value <= high:  # also rejects NaN
        raise ValueError(f"{field} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)
