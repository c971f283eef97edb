"""What a member asks of the shared store: the `Coordinator` protocol and its records.

Every method is one short round trip. An implementation bounds each call
itself (a statement timeout) and raises `CoordinatorError` for any failure
of the store (a lost connection, a timeout, ...). Times inside the store are
the store's own clock; nothing here passes a wall-clock value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs


class CoordinatorError(Exception):
    """The store failed a call (lost connection, timeout, ...): the member cannot tell more."""


@attrs.frozen
class Member:
    """One live member as the store sees it."""

    name: str
    """Stable member name (e.g. host:pid or a configured name)."""
    incarnation: int
    """New on every register: a restarted process is a new incarnation."""


@attrs.frozen
class TenantRow:
    """One tenant of the shared list, with its owner and its fencing token."""

    tenant_id: str
    description: Mapping[str, Any]
    """A JSON object; ``spec_factory`` turns it into a `TenantSpec`."""
    owner: Member | None
    """None when free, or when the owner's member row is expired."""
    epoch: int
    """Bumped by every acquisition: the fencing token."""


@attrs.frozen
class View:
    """The store's members and tenants as one read saw them."""

    members: tuple[Member, ...]
    """Live members (row not expired, by the store's clock), sorted by name."""
    tenants: tuple[TenantRow, ...]
    """All tenants, sorted by id."""


class Coordinator(Protocol):
    """The shared store of members and tenants, one short round trip per call."""

    async def register(self, name: str, ttl: float) -> Member:
        """Insert a member row with a fresh incarnation, expiry = store now + *ttl*."""

    async def renew(self, member: Member, ttl: float) -> bool:
        """Expiry = store now + *ttl*, only if the row is still live; False: it expired."""

    async def view(self) -> View:
        """The live members and all tenants."""

    async def acquire(self, member: Member, tenant_id: str) -> int | None:
        """Take a free tenant (or a dead owner's) and bump its epoch; None if not won."""

    async def release(self, member: Member, tenant_id: str, epoch: int) -> bool:
        """Free *tenant_id* if *member* still owns it at *epoch*."""

    async def leave(self, member: Member) -> None:
        """Delete the member row and free its tenants."""

    async def put_tenant(self, tenant_id: str, description: Mapping[str, Any]) -> None:
        """Add a tenant, or replace its description."""

    async def remove_tenant(self, tenant_id: str) -> bool:
        """Delete a tenant; False if there was none."""

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        """Return when the tenant list or the members changed, or after *timeout*."""

    async def aclose(self) -> None:
        """Release the store's connections."""
