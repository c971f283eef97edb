"""tenantry: many tenants' long-lived WebSocket connections in one Trio program.

Every resource -- cache, event buffer, timer, listener, connection -- is owned
by a Trio scope, and closing the scope destroys it. See the design document
for the scope tree and the invariants the test suite holds.
"""

from ._cache import BoundedCache, CacheStats, RemovalCause
from ._cache_specs import SEED_CACHE_SPECS, CacheSpec, CapacityPlan, Scope, capacity_plan
from ._clock import Clock
from ._janitor import run_janitor

__all__ = [
    "SEED_CACHE_SPECS",
    "BoundedCache",
    "CacheSpec",
    "CacheStats",
    "CapacityPlan",
    "Clock",
    "RemovalCause",
    "Scope",
    "capacity_plan",
    "run_janitor",
]

# Public names report the public module, as trio does, so that docs, reprs and
# tracebacks never send users into private files.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("tenantry._"):
        _obj.__module__ = "tenantry"
del _name, _obj
