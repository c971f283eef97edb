"""Tenants spread over many hub processes, each connected by at most one of them.

Each process joins the fleet with `open_cluster_hub` over a shared store (a
`Coordinator`); the store holds the tenant list and a lease per member, and
each tenant runs on the one live member that rendezvous hashing gives it.
`LeaseConfig` holds the figures, and its docs the lease rule that keeps a
tenant from being connected twice.

Not imported by ``import tenantry``: a program that runs one process needs
none of it. `PostgresCoordinator` needs the ``postgres`` extra
(``pip install 'tenantry[postgres]'``); the rest of this module does not.
"""

from .._public import publish as _publish
from ._coordinator import Coordinator, CoordinatorError, Member, TenantRow, View
from ._lease import LeaseConfig
from ._member import CLUSTER_METRIC_FAMILIES, ClusterHub, SpecFactory, open_cluster_hub
from ._postgres import PostgresCoordinator

__all__ = [
    "CLUSTER_METRIC_FAMILIES",
    "ClusterHub",
    "Coordinator",
    "CoordinatorError",
    "LeaseConfig",
    "Member",
    "PostgresCoordinator",
    "SpecFactory",
    "TenantRow",
    "View",
    "open_cluster_hub",
]

_publish(globals(), __all__, __name__)
