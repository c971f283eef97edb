"""Tenants spread over many hub processes, each connected by at most one of them.

Not imported by ``import tenantry``: a program that runs one process needs
none of it.
"""

from .._public import publish as _publish
from ._coordinator import Coordinator, CoordinatorError, Member, TenantRow, View

__all__ = ["Coordinator", "CoordinatorError", "Member", "TenantRow", "View"]

_publish(globals(), __all__, __name__)
