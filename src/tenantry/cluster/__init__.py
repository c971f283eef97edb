"""Many hub processes over one tenant list: the coordinator a fleet shares.

Not imported by ``import tenantry``. `PostgresCoordinator` needs the
``postgres`` extra (``pip install 'tenantry[postgres]'``); the rest of this
module does not.
"""

from .._public import publish as _publish
from ._coordinator import Coordinator, CoordinatorError, Member, TenantRow, View
from ._postgres import PostgresCoordinator

__all__ = ["Coordinator", "CoordinatorError", "Member", "PostgresCoordinator", "TenantRow", "View"]

_publish(globals(), __all__, __name__)
