"""Argument checks shared by every configuration class: fail at construction, naming the field."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP token (RFC 9110): what a header name may be."""
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters other than tab: never allowed in a header value."""


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


def check_instance(value: object, field: str, kind: type) -> None:
    """*value* is a *kind*, else raise (naming its type, never echoing it)."""
    if not isinstance(value, kind):
        raise TypeError(f"{field} must be a {kind.__name__}, got {type(value).__name__}")


def instance_of(kind: type) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """attrs validator: `check_instance`."""

    def validate(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_instance(value, attribute.name, kind)

    return validate


def check_async_function(value: object, field: str) -> None:
    """*value* is called as ``await value(...)``, else raise.

    Accepted: an ``async def`` function or method, an object whose
    ``__call__`` is one, and a `functools.partial` of either. A plain
    function returning a coroutine cannot be told from one returning None
    until it is called, so it is refused (`inspect.markcoroutinefunction`
    marks one as async).
    """
    if _is_async_function(value):
        return
    name = getattr(value, "__qualname__", None)
    shown = type(value).__name__ + ("" if name is None else f" {name!r}")
    raise TypeError(f"{field} must be an async function (async def), got {shown}")


def _is_async_function(value: object) -> bool:
    """Whether *value* is an ``async def`` function, an object whose ``__call__`` is one,
    or a `functools.partial` of either."""
    target = value
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    return not isinstance(target, type) and inspect.iscoroutinefunction(type(target).__call__)


def async_function(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_async_function`."""
    check_async_function(value, attribute.name)


def check_protocol(value: object, field: str) -> None:
    """*value* is None or a session factory, else raise.

    A session factory is called with the socket and returns a session (an
    object with ``decode`` and ``encode``): a function, a class whose
    instances are sessions, or an object whose ``__call__`` returns one (as
    `JsonProtocol` returns itself). A class whose instances are factories
    themselves (``JsonProtocol`` for ``JsonProtocol()``) is refused, and so
    is a session that is not callable: it would be shared by every
    connection.
    """
    if value is None:
        return
    if isinstance(value, type):
        if any("__call__" in vars(kind) for kind in value.__mro__):
            raise TypeError(
                f"{field} must be a session factory; got the class {value.__name__},"
                f" whose instances are factories: give {value.__name__}(...)"
            )
        _check_session_methods(value, field, f"the class {value.__name__}")
        return
    if _is_async_function(value):
        raise TypeError(f"{field} must be a plain function that returns a session, {_NOT_ASYNC}")
    if not callable(value):
        shown = type(value).__name__
        if not _missing_methods(value):
            raise TypeError(
                f"{field} must be a session factory, called once per connection; {shown} has"
                " decode() and encode() but is not callable: give a function (or class) that"
                " returns a fresh session, or a __call__ returning self if it keeps no state"
            )
        raise TypeError(
            f"{field} must be a session factory (a callable taking the socket and returning"
            f" an object with decode() and encode()), got {shown}"
        )


_NOT_ASYNC = (
    "not an async one: the session is made before the first frame is read; start its"
    " async work (an identify, a heartbeat loop) with sock.start_soon"
)


def check_session(value: object, field: str) -> None:
    """*value*, made by the session factory *field*, has ``decode`` and ``encode``, else raise."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # never awaited: closed here rather than warned about later
        raise TypeError(
            f"{field}(sock) returned a {type(value).__name__}: a session factory is a plain"
            f" function, {_NOT_ASYNC}"
        )
    _check_session_methods(value, field, f"{field}(sock) returned {type(value).__name__}, which")


def _missing_methods(value: object) -> list[str]:
    """Which of a session's methods *value* lacks."""
    methods = ("decode", "encode")
    return [f"{name}()" for name in methods if not callable(getattr(value, name, None))]


def _check_session_methods(value: object, field: str, shown: str) -> None:
    missing = _missing_methods(value)
    if missing:
        raise TypeError(
            f"{field} must make sessions with decode() and encode() methods;"
            f" {shown} has no {' or '.join(missing)}"
        )


def optional_protocol(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_protocol`."""
    check_protocol(value, attribute.name)


def check_headers(value: object, field: str) -> Mapping[str, str]:
    """*value* as HTTP headers that can be sent, else raise naming the header.

    Header values are often secrets (``Authorization: Bearer ...``), so a
    message never shows one; nor a name that is not valid, which may be a
    value given in its place.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a mapping of names to values, got {type(value).__name__}")
    for index, (name, text) in enumerate(value.items()):
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(
                f"{field}: header {index + 1} of {len(value)} has a name that is not an HTTP"
                " token (letters, digits and !#$%&'*+-.^_`|~); not shown: it may be a secret"
            )
        problem = _header_value_problem(text)
        if problem is not None:
            raise ValueError(f"{field}[{name!r}] cannot be sent: {problem} (value not shown)")
    return value


def _header_value_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return f"it must be a str, not {type(text).__name__}"
    if "\r" in text or "\n" in text:
        return "it has a line break (a token read from a file keeps its newline: strip it)"
    if _CONTROL.search(text):
        return "it has a control character"
    if text != text.strip(" \t"):
        return "it starts or ends with white space"
    if not text.isascii() and any(ord(char) > 0xFF for char in text):
        return "it has a character outside latin-1"
    return None


def optional_headers(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: `check_headers`, `check_async_function` for a callable, or None."""
    if callable(value) and not isinstance(value, Mapping):
        check_async_function(value, attribute.name)
    elif value is not None:
        check_headers(value, attribute.name)
