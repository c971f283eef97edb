"""A client for a gateway protocol, with tenantry's public API only.

The gateway speaks JSON frames ``{"op", "d", "s", "t"}``: HELLO (op 10) gives
the heartbeat interval; the client answers IDENTIFY (op 2, a token) or, to
pick up where a previous connection left off, RESUME (op 6: token, session id,
last sequence number). READY or RESUMED (op 0) make the connection healthy;
then DISPATCH (op 0) carries events with a sequence number, several at once
when ``t`` is ``BATCH``. The client heartbeats (op 1) and expects an ack
(op 11) before the next one: without one the connection is a zombie, closed
with a code that keeps the session, and replaced at once. RECONNECT (op 7)
asks for the same; INVALID_SESSION (op 9) asks to resume again or, if its
``d`` is false, to identify afresh. The gateway's own close codes are named;
4004 (authentication failed) stops the tenant for good. The handshake
carries a token fetched for each attempt. With ``--compressed`` every server
message is a zlib stream chunk ending with ``00 00 ff ff`` (a chunk without
it is only part of a message).

Each tenant gets its own `Gateway`: a session factory that keeps the resume
state (session id, last sequence number) across that tenant's connections,
while each connection's `GatewaySession` keeps what must start afresh (the
inflater, the heartbeat and its ack).

Run ``python examples/gateway.py --help``; for example::

    python examples/gateway.py ws://127.0.0.1:8765/ --tenant acme \\
        --token-file '/run/secrets/{tenant}.token'
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

import tenantry
from tenantry import Backoff, Decision, FrameRejected, RejectReason, Socket

NAMES = {4000: "unknown_error", 4001: "unknown_opcode", 4002: "decode_error"}
NAMES |= {4004: "authentication_failed", 4005: "already_identified", 4009: "session_timed_out"}
KEEP_SESSION = 4900  # the code this client closes with: any but 1000 keeps the session
CLOSE_CODES = tenantry.CloseCodes(names=NAMES | {KEEP_SESSION: "keep_session"})
COMPRESSED = "?compress=zlib-stream"
SYNC_FLUSH = b"\x00\x00\xff\xff"
Token = Callable[[], Awaitable[str]]
Handler = Callable[[Socket], Awaitable[None]]


def decide(reason: tenantry.DisconnectReason) -> Decision:
    """Stop when the gateway refuses the token (4004); else the default policy."""
    return Decision.STOP if reason.close_code == 4004 else tenantry.default_decide(reason)


class Gateway:
    """One tenant's protocol: called once per connection, it makes that connection's session."""

    def __init__(self, token: Token, *, compressed: bool = False) -> None:
        self.token, self.compressed = token, compressed
        self.session_id: str | None = None  # resume state, kept across connections
        self.seq = 0

    def __call__(self, sock: Socket) -> GatewaySession:
        return GatewaySession(self, sock)

    async def headers(self) -> dict[str, str]:
        """The handshake's headers, with a token fetched for this attempt."""
        return {"Authorization": f"Bearer {await self.token()}"}


class GatewaySession:
    """One connection: its inflater, heartbeat and ack; control messages stop here."""

    def __init__(self, gateway: Gateway, sock: Socket) -> None:
        self.gateway, self.sock = gateway, sock
        self.inflater = zlib.decompressobj() if gateway.compressed else None
        self.chunks, self.acked = bytearray(), True  # received, not yet inflated; heartbeat acked

    def decode(self, frame: str | bytes) -> Iterable[tuple[str, Any]]:
        try:
            if self.inflater is not None and isinstance(frame, bytes):
                self.chunks += frame
                if not self.chunks.endswith(SYNC_FLUSH):
                    return ()  # part of a message: wait for the rest
                frame, self.chunks = self.inflater.decompress(self.chunks), bytearray()
            message = json.loads(frame)
            op, d, s, t = message["op"], message.get("d"), message.get("s"), message.get("t")
        except (ValueError, TypeError, KeyError, zlib.error):
            raise FrameRejected.of(RejectReason.UNDECODABLE, frame) from None
        if op == 0:
            return self.dispatch(t, d, s)
        if op == 10:  # HELLO
            self.sock.start_soon(self.heartbeat, d["heartbeat_interval"] / 1000)
            self.sock.start_soon(self.identify)
        elif op == 11:  # HEARTBEAT ACK
            self.acked = True
        elif op == 1:  # the gateway asks for a heartbeat now
            self.sock.reply(frame_of(1, self.gateway.seq))
        elif op == 7:  # RECONNECT
            self.sock.close("RECONNECT (op 7)", code=KEEP_SESSION, decision=Decision.RECONNECT_NOW)
        elif op == 9:  # INVALID_SESSION: d says whether the session can still be resumed
            if not d:
                self.gateway.session_id, self.gateway.seq = None, 0
            self.sock.start_soon(self.identify)
        return ()

    def dispatch(self, t: str, d: Any, s: int) -> Iterable[tuple[str, Any]]:
        self.gateway.seq = s  # READY and RESUMED carry the session's last one
        if t == "READY":
            self.gateway.session_id = d["session_id"]
        if t in ("READY", "RESUMED"):
            self.sock.mark_healthy()  # backoff and breaker reset now
            return ()
        return [(item["t"], item["d"]) for item in d] if t == "BATCH" else [(t, d)]

    async def identify(self) -> None:
        gateway = self.gateway
        d: dict[str, Any] = {"token": await gateway.token()}
        if gateway.session_id is not None:  # RESUME where the last connection left off
            d |= {"session_id": gateway.session_id, "seq": gateway.seq}
        await self.sock.send_frame(frame_of(2 if gateway.session_id is None else 6, d))

    async def heartbeat(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if not self.acked:  # no ack since the last heartbeat: a zombie connection
                self.sock.close("zombie", code=KEEP_SESSION, decision=Decision.RECONNECT_NOW)
                return
            self.acked = False
            await self.sock.send_frame(frame_of(1, self.gateway.seq))

    def encode(self, event_type: str, data: Any) -> str:
        return frame_of(0, data, t=event_type)


def frame_of(op: int, d: Any, *, t: str | None = None) -> str:
    return json.dumps({"op": op, "d": d, "t": t})


def gateway_tenant(
    tenant_id: str, url: str, token: Token, handler: Handler, backoff: Backoff | None = None
) -> tenantry.TenantSpec:
    """A `TenantSpec` for one tenant of the gateway at *url* (compressed if it ends so)."""
    gateway = Gateway(token, compressed=url.endswith(COMPRESSED))
    policy = tenantry.ReconnectPolicy(decide=decide, backoff=backoff or Backoff())
    options = tenantry.SocketOptions(
        protocol=gateway, headers=gateway.headers, close_codes=CLOSE_CODES
    )
    return tenantry.TenantSpec(tenant_id, url, handler, policy=policy, options=options)


async def print_events(sock: Socket) -> None:
    async with sock.events.subscribe() as batches:
        async for batch in batches:
            for event in batch:
                print(sock.tenant_id, event.type, json.dumps(event.data))


async def main(args: argparse.Namespace) -> None:
    async with tenantry.open_hub() as hub:
        for tenant_id in args.tenant:
            path = trio.Path(args.token_file.format(tenant=tenant_id))

            async def token(path: trio.Path = path) -> str:  # read for every attempt
                return (await path.read_text()).strip()

            await hub.add(gateway_tenant(tenant_id, args.url, token, print_events))
        await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Connect tenants to a gateway; print their events."
    )
    parser.add_argument("url", help=f"the gateway's ws:// or wss:// URL ({COMPRESSED}: compressed)")
    parser.add_argument("--tenant", action="append", required=True, help="a tenant id (repeat)")
    parser.add_argument("--token-file", required=True, help="read for each attempt; {tenant}: id")
    logging.basicConfig(level=logging.INFO)
    trio.run(main, parser.parse_args())
