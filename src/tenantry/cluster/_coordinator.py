"""What a member asks of the shared store: the `Coordinator` protocol and its records.

Every method is one short round trip. Implementations bound each call
themselves (a statement timeout) and raise `CoordinatorError` for any
failure of the store -- a lost connection, a timeout, a refused statement --
so that a member has one thing to catch. Times live inside the store and
are read from the store's own clock (member expiries are "store now +
ttl"); no wall-clock value ever crosses this interface, so no two machines'
clocks are ever compared.

A member is identified by its name *and* its incarnation: a process that
restarts under the same name registers a new incarnation, and whatever the
old one owned counts as owned by a dead member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, final

import attrs

__all__ = ["Coordinator", "CoordinatorError", "Member", "TenantRow", "View"]


class CoordinatorError(Exception):
    """The store could not answer (lost connection, timeout, refused statement, ...)."""


@final
@attrs.frozen
class Member:
    """One live member as the store sees it."""

    name: str
    """Stable member name (e.g. ``host:pid`` or a configured name)."""
    incarnation: int
    """New on every `Coordinator.register`: a restarted process is a new incarnation."""


@final
@attrs.frozen
class TenantRow:
    """One tenant of the shared list."""

    tenant_id: str
    description: Mapping[str, Any]
    """A JSON object; each member's ``spec_factory`` turns it into a `~tenantry.TenantSpec`."""
    owner: Member | None
    """None when free, or when the owner's member row has expired."""
    epoch: int
    """Bumped by every acquisition: the fencing token for the application's own writes."""


@final
@attrs.frozen
class View:
    """The store's state at one instant, as one member reads it."""

    members: tuple[Member, ...]
    """Live members (row not expired, by the store's clock), sorted by name."""
    tenants: tuple[TenantRow, ...]
    """All tenants, sorted by id."""


class Coordinator(Protocol):
    """The shared store of members and tenants; every method is one bounded round trip.

    Every method raises `CoordinatorError` when the store cannot answer.
    """

    async def register(self, name: str, ttl: float) -> Member:
        """Insert a member row with a fresh incarnation; expiry = store now + *ttl*."""
        ...

    async def renew(self, member: Member, ttl: float) -> bool:
        """Expiry = store now + *ttl*, only if the row is still live; False: it has expired."""
        ...

    async def view(self) -> View:
        """The live members and all tenants."""
        ...

    async def acquire(self, member: Member, tenant_id: str) -> int | None:
        """Take a tenant that is free (or whose owner is dead) and bump its epoch.

        Succeeds only while *member*'s own row is live. Returns the new epoch,
        or None if the tenant was not won (owned by a live member, or gone).
        """
        ...

    async def release(self, member: Member, tenant_id: str, epoch: int) -> bool:
        """Free the tenant if *member* still owns it at *epoch*; whether it did."""
        ...

    async def leave(self, member: Member) -> None:
        """Delete the member row and free its tenants."""
        ...

    async def put_tenant(self, tenant_id: str, description: Mapping[str, Any]) -> None:
        """Add a tenant, or replace its description (an upsert)."""
        ...

    async def remove_tenant(self, tenant_id: str) -> bool:
        """Remove a tenant from the list; whether it was there."""
        ...

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll bound
        """Return when the tenants or the members changed, or after *timeout* seconds.

        A change made after the caller's last `view` returns at once, even if
        it came before this call (listen before reading): a wakeup lost
        between a view and the wait would leave a member on a stale view for
        a whole *timeout*.
        """
        ...

    async def aclose(self) -> None:
        """Let go of the store's connection."""
        ...
