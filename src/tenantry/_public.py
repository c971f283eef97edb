"""Public names report the public module they are imported from, as trio's do.

Each public tier (``tenantry``, ``tenantry.lowlevel``, ``tenantry.testing``)
calls `publish` once, at the end of its ``__init__``, so that docs, reprs,
tracebacks and ``help()`` never send a user into a private file. A class is
walked recursively: its methods, properties, class and static methods and
nested classes report the tier too, because Sphinx and ``help()`` show them
with the module they report.

Only objects defined in a private module (one whose dotted path has a part
starting with ``_``) are rewritten, so a name a tier re-exports from the
standard library or another tier keeps its own module. A constant (a
mapping, a tuple) has no ``__module__`` to set and is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import FunctionType
from typing import Any

__all__ = ["publish"]


def publish(namespace: Mapping[str, Any], names: Iterable[str], module: str) -> None:
    """Make each of *names* in *namespace* (and whatever it holds) report *module*."""
    for name in names:
        _rewrite(namespace[name], module)


def _is_private(module: object) -> bool:
    return isinstance(module, str) and any(
        part.startswith("_") for part in module.split(".") if part
    )


def _rewrite(obj: object, module: str) -> None:
    if isinstance(obj, FunctionType):
        if _is_private(obj.__module__):
            obj.__module__ = module
    elif isinstance(obj, type) and _is_private(obj.__module__):
        obj.__module__ = module
        for member in vars(obj).values():
            for inner in _functions_of(member):
                if inner.__qualname__.startswith(f"{obj.__qualname__}."):  # its own, not an alias
                    _rewrite(inner, module)


def _functions_of(member: object) -> list[FunctionType | type]:
    """The functions and classes a class attribute holds (a property holds up to three)."""
    held: list[object]
    if isinstance(member, property):
        held = [member.fget, member.fset, member.fdel]
    elif isinstance(member, (staticmethod, classmethod)):
        held = [member.__func__]
    else:
        held = [member]
    return [f for f in held if isinstance(f, (FunctionType, type))]
