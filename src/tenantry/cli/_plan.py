"""``tenantry plan``: the worst case a cache table can hold, and what it costs in memory.

Spec files are UTF-8 JSON or TOML (by suffix): a table of caches by name,
either at the top level or under ``caches``. Each cache takes ``max_keys``,
``ttl`` (seconds > 0; null or absent for none) and ``scope`` (socket, tenant
or global; socket by default). NodeCache's names are understood too, to make
migration from Baileys a copy-and-paste: ``maxKeys``, ``stdTTL`` (where 0
means none, as in NodeCache); ``checkperiod``, ``useClones`` and
``deleteOnExpire`` are accepted and have no effect (see the migration guide).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._cache_specs import CacheSpec, CapacityPlan, Scope, capacity_plan
from ._units import duration_text, size_text

__all__ = ["ENTRY_OVERHEAD_BYTES", "SpecFileError", "load_specs", "plan_rows"]

ENTRY_OVERHEAD_BYTES = 176
"""What `tenantry.BoundedCache` allocates per entry besides the key and value
(tracemalloc at 1,000,000 entries, ``benchmarks/bench_cache.py``)."""

_NAMES = {"max_keys": "max_keys", "maxKeys": "max_keys", "ttl": "ttl", "stdTTL": "ttl"}
_NAMES |= {"scope": "scope"}
_NO_EFFECT = frozenset({"checkperiod", "useClones", "deleteOnExpire"})


class SpecFileError(Exception):
    """A spec file that cannot be read as a cache table; the message says where."""


def load_specs(path: Path) -> dict[str, CacheSpec]:
    """The cache table in *path* (``.json`` or ``.toml``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecFileError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise SpecFileError(f"{path}: not UTF-8 text (byte {error.start:,})") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise SpecFileError(
            f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}"
        ) from None
    table = data.get("caches", data) if isinstance(data, dict) else data
    if not isinstance(table, dict) or not table:
        raise SpecFileError(f"{path}: expected a table of caches by name")
    return {str(name): _spec(path, str(name), fields) for name, fields in table.items()}


def _spec(path: Path, name: str, fields: object) -> CacheSpec:
    where = f"{path}: cache {name!r}"
    if not isinstance(fields, dict):
        raise SpecFileError(f"{where}: expected a table of options, got {fields!r}")
    options: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _NAMES:
            if _NAMES[key] in options:
                raise SpecFileError(f"{where}: {_NAMES[key]} is given twice ({key!r} too)")
            options[_NAMES[key]] = value
        elif key not in _NO_EFFECT:
            known = ", ".join(sorted({*_NAMES, *_NO_EFFECT}))
            raise SpecFileError(f"{where}: unknown option {key!r} (known: {known})")
    stdttl = fields.get("stdTTL")
    if stdttl == 0 and not isinstance(stdttl, bool):
        options["ttl"] = None  # NodeCache's stdTTL 0: never expires (tenantry's ttl 0 is refused)
    try:
        options["scope"] = Scope(options.get("scope", "socket"))
        return CacheSpec(**options)
    except (TypeError, ValueError) as error:
        hint = " (null for none)" if options.get("ttl") == 0 else ""
        raise SpecFileError(f"{where}: {error}{hint}") from None


def plan_rows(
    specs: Mapping[str, CacheSpec], tenants: int, entry_bytes: int
) -> tuple[CapacityPlan, list[list[str]]]:
    """The plan, and one table row per cache then the totals."""
    plan = capacity_plan(specs, tenants=tenants)
    per_entry = ENTRY_OVERHEAD_BYTES + entry_bytes
    rows = []
    for name, spec in specs.items():
        owners = 1 if spec.scope is Scope.GLOBAL else tenants
        per_tenant = "-" if spec.scope is Scope.GLOBAL else f"{spec.max_keys:,}"
        fleet = spec.max_keys * owners
        ttl = "never" if spec.ttl is None else duration_text(spec.ttl)
        rows.append(
            [name, spec.scope.value, ttl, per_tenant, f"{fleet:,}", size_text(fleet * per_entry)]
        )
    total = size_text(plan.total * per_entry)
    rows.append(["total", "", "", f"{plan.per_tenant:,}", f"{plan.total:,}", total])
    return plan, rows
