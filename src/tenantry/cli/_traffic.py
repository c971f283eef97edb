"""What the fake upstream sends: a chat-like stream of events, and bad frames.

A tenant's traffic is drawn from its own seeded generator, so that a soak
run is reproducible whatever order Trio schedules the tenants in. The mix
makes the event buffer work: most updates and receipts follow their
message's upsert closely, so many merge into it within one flush interval.
"""

from __future__ import annotations

import collections
import random
from typing import Any, final

from .._protocol import JsonProtocol

__all__ = ["MALFORMED_FRAMES", "Traffic"]

_CHATS = 80
_CONTACTS = 40
_RECENT = 20

MALFORMED_FRAMES: tuple[str | bytes, ...] = (
    "{not json",
    '{"type": 5, "data": {}}',
    '{"type": "messages.upsert", "data": {"no": "key"}}',
    b"\x00\x01 binary where text is expected",
)
"""One of each kind of bad frame a connection survives (each is counted as a rejection)."""


@final
class Traffic:
    """One tenant's event stream, continued across its connections."""

    def __init__(self, seed: str) -> None:
        self._random = random.Random(seed)  # noqa: S311 - reproducible, not secret
        self._protocol = JsonProtocol()
        self._next_id = 0
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)

    def next_frame(self) -> str:
        """The next event, encoded as the upstream sends it."""
        event_type, data = self._next_event()
        return self._protocol.encode(event_type, data)

    def _next_event(self) -> tuple[str, Any]:
        roll = self._random.random()
        if roll < 0.5 or not self._recent:
            return "messages.upsert", self._new_message()
        key = self._random.choice(self._recent)
        if roll < 0.7:
            return "messages.update", {"key": key, "update": {"status": self._random.randint(1, 4)}}
        if roll < 0.85:
            return "message-receipt.update", {"key": key, "receipt": {"t": self._next_id}}
        if roll < 0.95:
            chat = self._random.randrange(_CHATS)
            return "chats.update", {"id": f"c{chat}@s.whatsapp.net", "unreadCount": chat}
        contact = self._random.randrange(_CONTACTS)
        return "contacts.update", {"id": f"p{contact}@s.whatsapp.net", "notify": f"P{contact}"}

    def _new_message(self) -> dict[str, Any]:
        self._next_id += 1
        chat = self._random.randrange(_CHATS)
        key = {"remoteJid": f"c{chat}@s.whatsapp.net", "id": f"m{self._next_id}", "fromMe": False}
        self._recent.append(key)
        return {"key": key, "message": {"conversation": "hello"}}
