"""Sphinx configuration for tenantry's documentation."""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import re
from collections.abc import Mapping
from types import FunctionType
from typing import Any

import attrs
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer

import tenantry
from tenantry import __name__ as _package
from tenantry import __version__

project = _package
author = "The tenantry developers"
copyright = "2026, the tenantry developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
]

# Docstrings write `name` for cross-references, as trio's do. This machine has
# no network, so there is no intersphinx: names outside tenantry render as code.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Signatures show defaults as written in the source (``caches=BAILEYS_CACHE_SPECS``),
# not as the repr of a whole table.
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"tenantry {release}"
exclude_patterns = ["_build"]

doctest_global_setup = "import tenantry\nfrom tenantry import *"


# Public names report a public module (``tenantry``, ``tenantry.testing``), so
# Sphinx looks for their attribute docstrings (enum members, attrs fields,
# constants) in that module's source and finds none: they are written in the
# private module that defines them. Give each public module's analyzer the
# docstrings of the names it exports.
def _public_attr_docs() -> None:
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(tenantry.__path__, f"{_package}.")
        if not info.name.startswith((f"{_package}.cli", f"{_package}.__main__"))
    ]
    for public in [tenantry, *modules]:
        exported = {
            name
            for name in getattr(public, "__all__", ())
            if getattr(getattr(public, name), "__module__", public.__name__) == public.__name__
        }
        target = ModuleAnalyzer.for_module(public.__name__)
        target.analyze()
        for module in modules:
            source = ModuleAnalyzer.for_module(module.__name__)
            source.analyze()
            for (scope, name), doc in source.attr_docs.items():
                if (scope.split(".")[0] or name) in exported:
                    target.attr_docs.setdefault((scope, name), doc)
            for qualname, order in source.tagorder.items():
                if qualname.split(".")[0] in exported:
                    target.tagorder.setdefault(qualname, order)


def _plain_attribute_docstring(  # noqa: PLR0917 - Sphinx passes event arguments by position
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Keep napoleon from reading "Some words: more words" as "type: description".

    tenantry's properties and attributes carry their types as annotations; a
    docstring's first colon is prose. A leading empty comment leaves napoleon
    no first line to take a type from, and renders as nothing.
    """
    if what in {"attribute", "property", "data"} and lines and ":" in lines[0]:
        lines[:0] = ["..", ""]


def _cell(value: Any) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, enum.Enum):
        return f"``{value.value}``"
    if callable(value):
        return f"`{value.__name__}`"
    if isinstance(value, tuple):
        return ", ".join(f"{_cell(field)} by {_cell(key)}" for field, key in value)
    if isinstance(value, float):
        return f"{value:,g}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"``{value}``"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["", ".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0] if row is header else _cell(row[0])}")
        lines.extend(f"     - {cell if row is header else _cell(cell)}" for cell in row[1:])
    return lines


def _tables() -> Mapping[str, list[str]]:
    """The constant tables, rendered from the objects themselves so they cannot drift."""
    return {
        "tenantry.BAILEYS_CACHE_SPECS": _table(
            ["cache", "max_keys", "ttl (s)", "scope"],
            [
                [name, s.max_keys, s.ttl, s.scope]
                for name, s in tenantry.BAILEYS_CACHE_SPECS.items()
            ],
        ),
        "tenantry.DEFAULT_DECISIONS": _table(
            ["code", "reason", "decision"],
            [
                [int(code), tenantry.ReasonCode(code).name, decision]
                for code, decision in tenantry.DEFAULT_DECISIONS.items()
            ],
        ),
        "tenantry.DEFAULT_EVENT_RULES": _table(
            ["event type", "kind", "key", "entity", "parts (list field by key)"],
            [
                [event_type, rule.kind, rule.key, rule.entity, rule.parts]
                for event_type, rule in tenantry.DEFAULT_EVENT_RULES.items()
            ],
        ),
    }


def _append_table(  # noqa: PLR0917 - Sphinx passes event arguments by position
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    lines.extend(_tables().get(name, []))


def _default_text(value: object) -> str:
    """A default as a reader would write it: a public constant by its name."""
    if isinstance(value, attrs.Factory):  # one that takes self depends on the other fields
        return "..." if value.takes_self else f"{getattr(value.factory, '__name__', 'factory')}()"
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, FunctionType):
        return value.__name__
    constants = [name for name in tenantry.__all__ if name.isupper()]
    return next((name for name in constants if getattr(tenantry, name) is value), repr(value))


def _signature(  # noqa: PLR0917 - Sphinx passes event arguments by position
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Signatures as a reader would write the call.

    An enum is not called: it gets no ``(value)``; nor is a `typing.Protocol`
    (``Session``, ``Connector``): no ``(*args, **kwargs)``. An attrs class's generated
    __init__ has no source to preserve, so its defaults would read
    ``attr_dict['keepalive'].default``, or ``NOTHING`` for a factory: they
    are shown as values. A default written as a private constant
    (``DEFAULT_MAX_MESSAGE_SIZE``) is shown as its value.
    """
    if not signature:
        return None
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        return "", return_annotation
    if isinstance(obj, type) and getattr(obj, "_is_protocol", False):  # implemented, not called
        return "", return_annotation
    if what in {"class", "exception"} and attrs.has(obj):
        signature = _attrs_defaults(obj, signature)
    function = obj.__init__ if isinstance(obj, type) else obj
    names = getattr(inspect.unwrap(function), "__globals__", {})
    signature = re.sub(
        r"(?<= = )([A-Z][A-Z0-9_]+)\b",
        lambda match: (
            match.group(1)
            if match.group(1) in tenantry.__all__ or match.group(1) not in names
            else repr(names[match.group(1)])
        ),
        signature,
    )
    return signature, return_annotation


def _attrs_defaults(cls: Any, signature: str) -> str:
    for field in attrs.fields(cls):
        if field.default is attrs.NOTHING:
            continue
        written = rf"(?:(?<=\()|(?<=, )){field.alias}(: [^=]*?)? = "
        generated = r"(?:attr_dict\[.*?\]\.default|NOTHING)"
        value = _default_text(field.default)
        signature = re.sub(
            written + generated,
            lambda match, alias=field.alias, value=value: (
                f"{alias}{match.group(1) or ''} = {value}"
            ),
            signature,
        )
    return signature


def setup(app: Sphinx) -> None:
    _public_attr_docs()
    app.connect("autodoc-process-docstring", _plain_attribute_docstring, priority=100)
    app.connect("autodoc-process-docstring", _append_table)
    app.connect("autodoc-process-signature", _signature)
