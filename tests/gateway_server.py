"""A gateway server written with ``websockets`` (asyncio), a peer tenantry did not write.

Theory of operation
-------------------
``with GatewayServer(scenarios) as server:`` (or the ``gateway`` fixture of conftest.py)
runs an asyncio ``websockets`` server on 127.0.0.1 in a thread with its own event loop, out
of the Trio run under test, and stops it on exit, raising if one of its tasks failed (a bug
here, not in the client). It runs in real time: tests keep intervals short and bound every
wait. ``server.record(tenant)`` returns a copy of the tenant's bookkeeping (``Record``), taken
on the server's loop, so it is consistent at that instant; ``server.wait(tenant, predicate)``
polls it, with a bound. Each tenant follows its ``Scenario`` (``default`` for the others).

The protocol: JSON text frames ``{"op": int, "d": ..., "s": int | None, "t": str | None}``.

==  ================  ============================================================
op  direction         meaning
==  ================  ============================================================
10  server -> client  HELLO ``d: {"heartbeat_interval": ms}``, the first message
2   client -> server  IDENTIFY ``d: {"token"}``: a new session, answered by READY
6   client -> server  RESUME ``d: {"token", "session_id", "seq"}``: the events after
                      ``seq`` again, then RESUMED; an unknown, invalidated or expired
                      session gets INVALID_SESSION false
0   server -> client  DISPATCH ``t``, ``s``, ``d``
1   both              client: HEARTBEAT ``d: last seq``; server: "heartbeat now"
11  server -> client  HEARTBEAT ACK
7   server -> client  RECONNECT: close (not with 1000) and resume on a new connection
9   server -> client  INVALID_SESSION ``d: resumable``: RESUME (true) or IDENTIFY
                      (false), on this connection or a new one
==  ================  ============================================================

READY (``d: {"session_id"}``) and RESUMED take no sequence number: their ``s`` is the
session's last. Application events (``t`` one of ``EVENT_TYPES``, ``d: {"id": "<tenant>-<n>",
"n": n}``, ``n`` counting the tenant's events from 1 across sessions) take ``s`` = 1, 2, ...
per session. Several events in one frame: ``t: "BATCH"``, ``d: [{"t", "s", "d"}, ...]``, the
frame's ``s`` the last one's. A session produces its events every ``interval`` from READY on,
attached to a connection or not (a resume replays what the client missed), until it is
invalidated or the tenant has produced ``Scenario.events``.

Credentials: ``Authorization: Bearer <tenant>:<epoch>`` on the handshake, ``epoch`` =
``int(time / token_ttl)`` (``server.token(tenant)``). A token is good in its epoch and the
next (it lives between ``token_ttl`` and twice that, so a fresh one never fails on the way);
any other is refused with HTTP 401 at the handshake. IDENTIFY and RESUME must carry a good
token of the handshake's tenant, or the connection is closed with 4004, as is a revoked tenant
is closed with 4004 there. A throttled attempt gets HTTP 429 with ``Retry-After``.

Compression: the URL ``COMPRESSED`` (``?compress=zlib-stream``) makes the server's messages
binary: one zlib stream per connection, each message ending with Z_SYNC_FLUSH's ``00 00 ff
ff``; with ``split_every`` a message goes out in two frames, the first without the suffix.

Close codes the server sends: 4000 unknown error (resume), 4001 unknown opcode, 4002 decode
error, 4004 authentication failed (stop), 4005 already identified, 4009 session timed out (the
session is invalid: identify). The client's close code: 1000 invalidates its session, any
other code (or none, on a dropped connection) keeps it resumable. No heartbeat for
``heartbeat_timeout`` closes with 4009.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

EVENT_TYPES = ("MESSAGE_CREATE", "MESSAGE_UPDATE", "PRESENCE_UPDATE")
COMPRESSED = "?compress=zlib-stream"
SYNC_FLUSH_SUFFIX = b"\x00\x00\xff\xff"
# Scripted faults, applied FAULT_AFTER a connection's READY/RESUMED:
FAULTS = {
    "close_4000": "close with 4000; the session stays resumable",
    "close_4009": "close with 4009; the session is invalidated",
    "reconnect": "send RECONNECT (op 7) and stop dispatching on this connection",
    "invalid_session": "send INVALID_SESSION true; the session is detached, resumable",
    "invalid_session_final": "send INVALID_SESSION false; the session is invalidated",
    "drop": "abort the TCP connection without a close frame; the session stays resumable",
    "zombie": "stop acking heartbeats and dispatching, keep reading; session resumable",
    "heartbeat_request": "send op 1; the connection goes on",
}


@dataclass(frozen=True)
class Scenario:
    """What the server does to one tenant (every knob has a default that runs clean)."""

    events: int = 50  # application events the tenant's sessions produce in all
    interval: float = 0.01  # seconds between production ticks
    batch: int = 1  # tick i produces 1 + i % batch events; several go out as one BATCH frame
    heartbeat_interval: float = 0.5  # seconds; HELLO says it in ms
    heartbeat_timeout: float = 2.0  # seconds without a heartbeat: close 4009
    faults: tuple[str, ...] = ()  # the k-th connection to reach READY/RESUMED gets faults[k-1]
    fault_after: float = 0.2  # seconds after READY/RESUMED
    throttle: Mapping[int, int] = field(default_factory=dict)  # handshake no. -> Retry-After
    revoked: bool = False  # IDENTIFY and RESUME are closed with 4004
    resume_window: float = 30.0  # seconds a detached session stays resumable
    split_every: int = 0  # compressed: every k-th message in two frames

    def __post_init__(self) -> None:
        unknown = set(self.faults) - FAULTS.keys()
        if unknown or self.batch < 1:
            raise ValueError(f"Scenario: unknown faults {sorted(unknown)} or batch < 1")


@dataclass
class Handshake:
    at: float  # time.monotonic() on the server
    status: int  # 101, 401 or 429
    retry_after: int | None = None


@dataclass
class Connection:
    index: int  # 1-based, per tenant
    compressed: bool
    session_id: str | None = None
    resumed: bool = False
    fault: str | None = None  # the fault applied, once applied
    heartbeats: int = 0
    acks: int = 0
    server_close: int | None = None  # the code the server closed with
    client_close: int | None = None  # the code in the client's close frame (an echo if the
    # server closed first); None: no close frame (dropped)


@dataclass
class Record:
    """One tenant's bookkeeping, as the tests read it."""

    handshakes: list[Handshake] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    dispatched: list[tuple[str, int, int]] = field(default_factory=list)  # (session, s, n)
    sent: Counter[int] = field(default_factory=Counter)  # n -> frames written carrying it
    replays: list[tuple[str, int, int]] = field(default_factory=list)  # (session, after, count)
    invalid_sessions: int = 0  # INVALID_SESSION sent (fault or failed RESUME)


def token(tenant: str, ttl: float, now: float | None = None) -> str:
    """The token of *tenant* for the epoch of *now* (wall clock; default: now)."""
    return f"{tenant}:{int((time.time() if now is None else now) // ttl)}"


@dataclass(eq=False)
class _Tenant:
    name: str
    scenario: Scenario
    record: Record = field(default_factory=Record)
    produced: int = 0
    ready: int = 0  # connections that reached READY/RESUMED


@dataclass(eq=False)
class _Session:
    id: str
    tenant: _Tenant
    log: list[dict[str, Any]] = field(default_factory=list)  # {"t", "s", "d"} items
    attached: _Link | None = None
    valid: bool = True
    left_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(eq=False)
class _Link:
    """One connection: its socket, its record and its zlib stream."""

    ws: ServerConnection
    tenant: _Tenant
    conn: Connection
    deflate: Any = None
    session: _Session | None = None
    zombie: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)
    messages: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # end with the connection
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(
        self, op: int, d: Any = None, s: int | None = None, t: str | None = None
    ) -> None:
        text = json.dumps({"op": op, "d": d, "s": s, "t": t})
        async with self.lock:  # a message's frames and the zlib stream stay in order
            self.messages += 1
            if self.deflate is None:
                await self.ws.send(text)
                return
            data = self.deflate.compress(text.encode()) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            every = self.tenant.scenario.split_every
            if every and self.messages % every == 0:
                cut = len(data) // 2
                while data[:cut].endswith(SYNC_FLUSH_SUFFIX):
                    cut -= 1
                await self.ws.send(data[:cut])
                data = data[cut:]
            await self.ws.send(data)


def _bearer(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization", "")
    tenant, _, epoch = value.removeprefix("Bearer ").rpartition(":")
    return (tenant, value.removeprefix("Bearer ")) if tenant and epoch.isdigit() else None


class GatewayServer:
    """The server and its bookkeeping; ``url`` is valid inside ``with``."""

    def __init__(
        self,
        scenarios: Mapping[str, Scenario] | None = None,
        *,
        default: Scenario | None = None,
        token_ttl: float = 5.0,
    ) -> None:
        self.scenarios = dict(scenarios or {})
        self.default = default or Scenario()
        self.token_ttl = token_ttl
        self.url = ""
        self._tenants: dict[str, _Tenant] = {}
        self._sessions: dict[str, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-server", daemon=True)
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []  # exceptions in the server's tasks: a bug in this module

    def token(self, tenant: str) -> str:
        """A token the server accepts now (a token endpoint; safe from any thread)."""
        return token(tenant, self.token_ttl)

    def _good(self, bearer: Any, tenant: str) -> bool:
        previous = token(tenant, self.token_ttl, time.time() - self.token_ttl)
        return bearer in (self.token(tenant), previous)

    def record(self, tenant: str) -> Record:
        """A copy of *tenant*'s bookkeeping, taken on the server's loop."""
        assert self._loop is not None

        async def snapshot() -> Record:
            return copy.deepcopy(self._tenant(tenant).record)

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(timeout=5)

    def wait(
        self, tenant: str, predicate: Callable[[Record], bool], timeout: float = 5.0
    ) -> Record:
        """Poll *tenant*'s record until *predicate* holds; TimeoutError after *timeout* s.

        Blocking: from Trio, call it through ``trio.to_thread.run_sync``.
        """
        deadline = time.monotonic() + timeout
        while not predicate(record := self.record(tenant)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tenant}: the server's record did not get there: {record}")
            time.sleep(0.01)
        return record

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        if not self._ready.wait(timeout=5):
            raise RuntimeError("the gateway server did not start within 5 s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if self.errors and exc_info[0] is None:
            raise AssertionError(f"the gateway server failed: {self.errors}")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            close_timeout=1,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/"
            self._ready.set()
            await self._stop.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ConnectionClosed):
            self.errors.append(repr(error))

    def _tenant(self, name: str) -> _Tenant:
        if name not in self._tenants:
            self._tenants[name] = _Tenant(name, self.scenarios.get(name, self.default))
        return self._tenants[name]

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        auth = _bearer(request.headers)
        tenant = self._tenant(auth[0] if auth else "")
        handshakes = tenant.record.handshakes
        retry_after = tenant.scenario.throttle.get(len(handshakes) + 1)
        if retry_after is not None:
            handshakes.append(Handshake(time.monotonic(), 429, retry_after))
            response = ws.respond(HTTPStatus.TOO_MANY_REQUESTS, "slow down\n")
            response.headers["Retry-After"] = str(retry_after)
            return response
        if auth is None or not self._good(auth[1], auth[0]):
            handshakes.append(Handshake(time.monotonic(), 401))
            return ws.respond(HTTPStatus.UNAUTHORIZED, "token missing, malformed or expired\n")
        handshakes.append(Handshake(time.monotonic(), 101))
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        name = (_bearer(ws.request.headers) or ("", ""))[0]
        tenant = self._tenant(name)
        compressed = ws.request.path.endswith(COMPRESSED)
        conn = Connection(len(tenant.record.connections) + 1, compressed)
        tenant.record.connections.append(conn)
        link = _Link(ws, tenant, conn, zlib.compressobj() if compressed else None)
        link.tasks.append(self._spawn(self._watchdog(link)))
        try:
            await link.send(
                10, {"heartbeat_interval": int(tenant.scenario.heartbeat_interval * 1e3)}
            )
            async for message in ws:
                await self._on_message(link, message)
        except ConnectionClosed:
            pass
        except Exception as error:
            self.errors.append(repr(error))
            raise
        finally:
            for task in link.tasks:
                task.cancel()
            rcvd = ws.protocol.close_rcvd
            conn.client_close = rcvd.code if rcvd else None
            if link.session is not None:
                self._detach(link, invalidate=conn.client_close == 1000)

    async def _on_message(self, link: _Link, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
            op, d = frame["op"], frame.get("d")
        except (ValueError, TypeError, KeyError):
            await self._close(link, 4002, "decode error")
            return
        if op == 1:
            link.conn.heartbeats += 1
            link.last_heartbeat = time.monotonic()
            if not link.zombie:
                link.conn.acks += 1
                await link.send(11)
        elif op in (2, 6) and link.session is not None:
            await self._close(link, 4005, "already identified")
        elif op in (2, 6) and (
            link.tenant.scenario.revoked or not self._good(_field(d, "token"), link.tenant.name)
        ):
            await self._close(link, 4004, "authentication failed")
        elif op == 2:
            session = _Session(f"{link.tenant.name}-{len(self._sessions) + 1}", link.tenant)
            self._sessions[session.id] = session
            self._spawn(self._produce(session))
            await self._attach(link, session)
        elif op == 6:
            await self._resume(link, d)
        else:
            await self._close(link, 4001, "unknown opcode")

    async def _resume(self, link: _Link, d: Any) -> None:
        session = self._sessions.get(_field(d, "session_id"))
        seq = _field(d, "seq")
        expired = (
            session is not None
            and session.attached is None
            and (time.monotonic() - session.left_at > link.tenant.scenario.resume_window)
        )
        if session is None or session.tenant is not link.tenant or expired or not session.valid:
            if session is not None:
                session.valid = False
            link.tenant.record.invalid_sessions += 1
            await link.send(9, False)
            return
        after = seq if isinstance(seq, int) else 0
        await self._attach(link, session, after=after)

    async def _attach(self, link: _Link, session: _Session, after: int | None = None) -> None:
        record = link.tenant.record
        async with session.lock:
            if session.attached is not None:  # the older connection stops dispatching
                session.attached.session = None
            if after is None:
                await link.send(0, {"session_id": session.id}, len(session.log), "READY")
            else:
                missed = session.log[after:]
                for item in missed:
                    await link.send(0, item["d"], item["s"], item["t"])
                    record.sent[item["d"]["n"]] += 1
                record.replays.append((session.id, after, len(missed)))
                await link.send(0, None, len(session.log), "RESUMED")
            session.attached, link.session = link, session
        link.conn.session_id, link.conn.resumed = session.id, after is not None
        link.tenant.ready += 1
        faults = link.tenant.scenario.faults
        if link.tenant.ready <= len(faults):
            link.tasks.append(self._spawn(self._fault(link, faults[link.tenant.ready - 1])))

    def _detach(self, link: _Link, *, invalidate: bool) -> None:
        session, link.session = link.session, None
        if session is not None and session.attached is link:
            session.attached = None
            session.left_at = time.monotonic()
        if session is not None and invalidate:
            session.valid = False

    async def _produce(self, session: _Session) -> None:
        tenant = session.tenant
        scenario, record = tenant.scenario, tenant.record
        tick = 0
        while session.valid and tenant.produced < scenario.events:
            await asyncio.sleep(scenario.interval)
            if session.attached is None and (
                time.monotonic() - session.left_at > scenario.resume_window
            ):
                return
            count = min(1 + tick % scenario.batch, scenario.events - tenant.produced)
            tick += 1
            async with session.lock:
                items: list[dict[str, Any]] = []
                for _ in range(count):
                    tenant.produced += 1
                    n, s = tenant.produced, len(session.log) + len(items) + 1
                    d = {"id": f"{tenant.name}-{n}", "n": n}
                    items.append({"t": EVENT_TYPES[n % len(EVENT_TYPES)], "s": s, "d": d})
                    record.dispatched.append((session.id, s, n))
                session.log.extend(items)
                link = session.attached
                if link is None:
                    continue
                try:
                    if count == 1:
                        await link.send(0, items[0]["d"], items[0]["s"], items[0]["t"])
                    else:
                        await link.send(0, items, items[-1]["s"], "BATCH")
                except ConnectionClosed:
                    continue
                record.sent.update(item["d"]["n"] for item in items)

    async def _watchdog(self, link: _Link) -> None:
        timeout = link.tenant.scenario.heartbeat_timeout
        while True:
            late = time.monotonic() - link.last_heartbeat
            if late >= timeout:
                break
            await asyncio.sleep(timeout - late)
        await self._close(link, 4009, "session timed out")

    async def _fault(self, link: _Link, fault: str) -> None:
        await asyncio.sleep(link.tenant.scenario.fault_after)
        if link.session is None:
            return  # the connection has moved on already
        link.conn.fault = fault
        if fault in ("close_4000", "close_4009"):
            await self._close(link, int(fault[-4:]), "scripted")
        elif fault == "reconnect":
            self._detach(link, invalidate=False)
            await link.send(7)
        elif fault.startswith("invalid_session"):
            self._detach(link, invalidate=fault.endswith("final"))
            link.tenant.record.invalid_sessions += 1
            await link.send(9, not fault.endswith("final"))
        elif fault == "drop":
            self._detach(link, invalidate=False)
            link.ws.transport.abort()
        elif fault == "zombie":
            link.zombie = True
            self._detach(link, invalidate=False)
        else:
            await link.send(1)

    async def _close(self, link: _Link, code: int, reason: str) -> None:
        self._detach(link, invalidate=code == 4009)
        link.conn.server_close = code
        await link.ws.close(code, reason)


def _field(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else None
