"""The Tenant scope: one tenant's supervisor loop, its caches, its totals.

Theory of operation
===================

A tenant is a task in its hub's nursery, and inside it a nursery of its own
holding the tenant-scoped caches' janitor (a task only while some cache has
a deadline) and the *supervisor* loop::

    while True:
        with CancelScope() as attempt:        # one attempt, cancelled by commands
            connect -> run handler(sock) -> the socket closes -> NextStep
            wait NextStep.delay               # backoff / circuit open / stopped
        if a command ended the attempt: restart at once, or leave the loop

The loop is sequential, so there is never more than one socket: no "is
starting" flag is needed. Leaving the loop ends the tenant's scope, so no
reconnect can be scheduled after a removal: no pending-close counter is
needed. Reconnect decisions are the
pure `Reconnector`'s; this module only does the waiting and the I/O.

A command (restart, stop) that finds a live socket closes it the ordinary
way, `Socket.close`, so that the handler's subscribers drain the final batch
before the body is cancelled. One that finds the tenant connecting, waiting
or stopped cancels the attempt: there is nothing to flush. Commands run in
the hub caller's task, one at a time, each until the supervisor has acted
on it: an idle tenant has no task waiting for them.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import final

import attrs
import trio

from ._accounting import Totals
from ._backoff import SplitMix64
from ._breaker import BreakerState
from ._cache_specs import BAILEYS_CACHE_SPECS, CacheSet, CacheSpec, Scope, cache_specs
from ._connect import Connector, as_connector
from ._gauges import Gauges
from ._options import SocketOptions
from ._reasons import Decision, DisconnectReason, ReasonCode, default_decide
from ._reconnect import NextStep, ReconnectPolicy
from ._socket import ConnectFailed, Socket
from ._status import TenantState, TenantStatus
from ._timers import Timers
from ._validate import (
    async_function,
    instance_of,
    nonempty_name,
)

__all__ = ["TenantSpec"]

logger = logging.getLogger("tenantry.tenant")

Handler = Callable[[Socket], Awaitable[None]]

_DEFAULT_POLICY = ReconnectPolicy()
"""Shared by the specs that take the defaults: a policy is immutable, and made once."""


@final
@attrs.frozen
class TenantSpec:
    """Everything a hub needs to run one tenant.

    Args:
        tenant_id: Unique within the hub; stamped on logs, batches, metrics.
        connect: A ``ws://``/``wss://`` URL or a connector (see `open_socket`);
            a URL is kept as a `UrlConnector`, redacted in the repr.
        handler: ``async def handler(sock)`` (or an object whose ``__call__``
            is async, or a `functools.partial` of either), run inside each
            connection's socket scope. When it returns, that connection
            closes (and the policy decides what follows, unless the handler
            closed it with ``sock.close(decision=...)``); when it raises, the
            error is logged with its traceback and counted as a failure -- it
            never leaves the hub.
        policy: Backoff, breaker and decisions (`ReconnectPolicy`).
        caches: `CacheSpec` by cache name: `Scope.TENANT` ones live as long as
            the tenant (across reconnects), `Scope.SOCKET` ones as long as a
            connection.
        options: How each connection runs (`SocketOptions`: protocol,
            buffer, keepalive, headers, limits, timeouts), as for
            `open_socket`, for each connection.

    *policy*, *caches* and *options* are keyword-only.

    Raises:
        TypeError, ValueError: a field that could never work (a handler that
            is not async, a cache spec that is not a `CacheSpec`, options that
            are not `SocketOptions`, ...), naming the field.
    """

    tenant_id: str = attrs.field(validator=nonempty_name)
    connect: Connector = attrs.field(converter=as_connector)
    handler: Handler = attrs.field(validator=async_function)
    policy: ReconnectPolicy = attrs.field(
        default=_DEFAULT_POLICY, validator=instance_of(ReconnectPolicy), kw_only=True
    )
    caches: Mapping[str, CacheSpec] = attrs.field(
        default=BAILEYS_CACHE_SPECS, validator=cache_specs, repr=False, kw_only=True
    )
    options: SocketOptions = attrs.field(
        factory=SocketOptions, validator=instance_of(SocketOptions), kw_only=True
    )


class _Kind(enum.Enum):
    """What a hub's command asks of a tenant."""

    RESTART = "restart"
    STOP = "stop"


@attrs.define
class _Command:
    kind: _Kind
    done: trio.Event = attrs.field(factory=trio.Event)


@final
class Tenant:
    """One tenant's actor. Created and driven by its `Hub`; read through `status`."""

    __slots__ = (
        "_attempt",
        "_caches",
        "_command",
        "_commanding",
        "_ended",
        "_gauges",
        "_global_caches",
        "_last",
        "_last_at",
        "_next_retry_at",
        "_reconnector",
        "_reconnects",
        "_socket",
        "_state",
        "_stopped",
        "_timers",
        "spec",
        "tenant_id",
    )

    def __init__(
        self,
        spec: TenantSpec,
        *,
        global_caches: CacheSet | None,
        gauges: Gauges,
        seed: int | None,
        timers: Timers | None = None,
    ) -> None:
        self.spec = spec
        self.tenant_id = spec.tenant_id
        self._global_caches = global_caches
        self._gauges = gauges
        self._timers = timers  # the hub's, shared by its sockets' keepalives
        rng = SplitMix64(None if seed is None else f"{seed}:{spec.tenant_id}")
        policy = spec.policy
        if policy.decide is not default_decide:  # user code: contained like a handler
            policy = attrs.evolve(policy, decide=self._decide)
        self._reconnector = policy.reconnector(random=rng)
        self._caches = CacheSet(spec.caches, Scope.TENANT, label=spec.tenant_id)
        self._commanding: trio.Lock | None = None  # the hub's commands, in order; from the first
        self._attempt = trio.CancelScope()
        self._command: _Command | None = None
        self._stopped = False
        self._socket: Socket | None = None
        self._state = TenantState.CONNECTING
        self._last: DisconnectReason | None = None
        self._last_at: float | None = None
        self._next_retry_at: float | None = None
        self._ended: Totals | None = None  # of the connections that have ended, from the first
        self._reconnects: collections.Counter[str] | None = None  # from the first

    # -- the scope -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tenant's scope: returns when the tenant has stopped and everything is gone."""
        try:
            async with trio.open_nursery() as nursery:
                with self._caches.janitor(nursery):
                    task_status.started()
                    del task_status  # it holds the nursery it started in, for the tenant's life
                    await self._supervise()
                    nursery.cancel_scope.cancel()
        finally:
            self._caches.clear()
            self._stopped = True  # commands waiting behind a stop find the tenant gone
            if self._command is not None:
                self._command.done.set()
            logger.info("tenant stopped: %s", self.tenant_id, extra={"tenant": self.tenant_id})

    async def restart(self) -> None:
        """Close the socket (ordered shutdown) and reconnect at once; return once it is done."""
        await self._carry_out(_Kind.RESTART)

    async def stop(self) -> None:
        """Close the socket (ordered shutdown) and leave the supervisor loop; return once done."""
        await self._carry_out(_Kind.STOP)

    def abort(self) -> None:
        """Abort the live socket's transport now (`Socket.abort`), if there is one.

        It does not stop the tenant: the caller follows with `stop`, whose
        ordered shutdown then only flushes and drains locally.
        """
        if self._socket is not None:
            self._socket.abort(
                DisconnectReason(ReasonCode.CONNECTION_CLOSED, "aborted", remote=False)
            )

    async def _carry_out(self, kind: _Kind) -> None:
        """Carry out a command in the caller's task, after any before it.

        A tenant needs no task of its own waiting for commands that seldom come.
        """
        if self._commanding is None:
            self._commanding = trio.Lock()
        async with self._commanding:
            while self._command is not None and not self._stopped:
                await self._command.done.wait()  # one whose caller stopped waiting
            if self._stopped:
                return
            self._command = command = _Command(kind)
            self._close_for(command)
            await command.done.wait()

    def _close_for(self, command: _Command) -> None:
        reason = DisconnectReason(
            ReasonCode.CONNECTION_CLOSED, f"{command.kind.value} requested", remote=False
        )
        logger.info(
            "intentional close: tenant %s, %s",
            self.tenant_id,
            reason.message,
            extra={"tenant": self.tenant_id, "command": command.kind.value},
        )
        if self._socket is not None:
            self._socket.close(reason)  # ordered: subscribers drain first
        else:
            self._attempt.cancel()

    # -- the supervisor loop ---------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            with trio.CancelScope() as self._attempt:
                if self._command is not None:  # it came before this attempt began
                    self._attempt.cancel()
                step = await self._connect_and_serve()
                if self._command is None:
                    await self._pause(step)
            command, self._command = self._command, None
            self._next_retry_at = None
            if command is None:
                continue
            if command.kind is _Kind.STOP:
                command.done.set()  # the hub waits for the whole scope anyway
                return
            self._reconnector.restarted()
            command.done.set()

    async def _connect_and_serve(self) -> NextStep:
        spec = self.spec
        self._state = TenantState.CONNECTING
        failed = False
        retry_after: float | None = None
        sock: Socket | None = None
        try:
            # Built here rather than by open_socket: the spec's fields are checked already.
            async with Socket(
                spec.connect,
                tenant_id=spec.tenant_id,
                options=spec.options,
                caches=CacheSet(spec.caches, Scope.SOCKET, label=spec.tenant_id),
                tenant_caches=self._caches,
                global_caches=self._global_caches,
                gauges=self._gauges,
                on_healthy=self._reconnector.healthy,  # resets backoff and breaker at once
                timers=self._timers,
            ) as sock:
                self._connected(sock)
                await spec.handler(sock)
        except ConnectFailed as failure:
            reason, retry_after = failure.reason, failure.retry_after
        except Exception as exc:  # a handler's bug never leaves the tenant
            logger.exception(
                "handler failed: tenant %s",
                self.tenant_id,
                extra={"tenant": self.tenant_id},
            )
            reason = DisconnectReason(
                ReasonCode.CONNECTION_CLOSED, f"handler raised {exc!r}", remote=False
            )
            failed = True
        else:
            reason = sock.close_reason or DisconnectReason(ReasonCode.CONNECTION_CLOSED)
        finally:
            self._socket = None  # the socket scope has exited: the gauges no longer count it
            self._state = TenantState.STOPPED  # replaced at once below, unless it is stopping
            if sock is not None:
                if self._ended is None:
                    self._ended = Totals()
                self._ended.add_socket(sock)
        return self._disconnected(reason, failed=failed, retry_after=retry_after)

    def _decide(self, reason: DisconnectReason) -> Decision:
        """The policy's ``decide``; if it fails, the error is logged and the default applies."""
        try:
            decision = self.spec.policy.decide(reason)
            if not isinstance(decision, Decision):
                raise TypeError(  # noqa: TRY301 - one way out for both kinds of policy bug
                    f"decide returned {type(decision).__name__}, not a Decision"
                )
        except Exception:
            logger.exception(
                "reconnect policy failed: tenant %s, %s; the default decision applies",
                self.tenant_id,
                reason,
                extra={"tenant": self.tenant_id, "code": reason.code},
            )
            return default_decide(reason)
        return decision

    def _connected(self, sock: Socket) -> None:
        self._socket = sock
        self._state = TenantState.CONNECTED
        self._reconnector.connected()
        if sock.healthy:  # declared while the protocol was made, before the body ran
            self._reconnector.healthy()
        logger.info(
            "connection opened: tenant %s (connection %d)",
            self.tenant_id,
            self._reconnector.connections,
            extra={"tenant": self.tenant_id, "connections": self._reconnector.connections},
        )

    def _disconnected(
        self, reason: DisconnectReason, *, failed: bool, retry_after: float | None
    ) -> NextStep:
        self._last, self._last_at = reason, trio.current_time()
        if self._command is not None:
            return self._reconnector.restarted()
        if self._reconnects is None:
            self._reconnects = collections.Counter()
        self._reconnects[reason.label] += 1
        step = self._reconnector.disconnected(reason, failed=failed, retry_after=retry_after)
        logger.info(
            "connection closed: tenant %s, %s",
            self.tenant_id,
            reason,
            extra={
                "tenant": self.tenant_id,
                "code": reason.code,
                "reason": reason.name,
                "remote": reason.remote,
                "origin": reason.origin.value,
                "raw_code": reason.raw_code,
                "decision": step.decision.value,
                "failure": step.failure,
            },
        )
        return step

    async def _pause(self, step: NextStep) -> None:
        if step.decision is Decision.STOP:
            self._state = TenantState.STOPPED
            logger.warning(
                "not reconnecting: tenant %s, %s",
                self.tenant_id,
                self._last,
                extra={"tenant": self.tenant_id, "code": self._last.code if self._last else None},
            )
            await trio.sleep_forever()
        self._next_retry_at = trio.current_time() + step.delay
        fields = {"tenant": self.tenant_id, "attempt": step.failures, "delay": step.delay}
        if step.breaker is BreakerState.OPEN:
            self._state = TenantState.CIRCUIT_OPEN
            logger.warning(
                "circuit open: tenant %s, %d failures, waiting %.1f s",
                self.tenant_id,
                step.failures,
                step.delay,
                extra=fields,
            )
        else:
            self._state = TenantState.BACKING_OFF
            logger.info(
                "scheduling reconnect: tenant %s, attempt %d in %.2f s",
                self.tenant_id,
                step.failures + 1,
                step.delay,
                extra=fields,
            )
        await trio.sleep_until(self._next_retry_at)

    # -- reading ---------------------------------------------------------------

    def status(self) -> TenantStatus:
        """A snapshot; see `TenantStatus`."""
        sock = self._socket
        caches = dict(self.cache_sets())
        return TenantStatus(
            tenant_id=self.tenant_id,
            state=self.state,
            breaker=self._reconnector.breaker.state,
            failures=self._reconnector.failures,
            breaker_trips=self._reconnector.breaker.trips,
            connections=self._reconnector.connections,
            last_disconnect=self._last,
            last_disconnect_at=self._last_at,
            next_retry_at=self._next_retry_at,
            cache_utilization={
                name: cache_set.stats_of(name).utilization
                for cache_set in caches.values()
                for name in cache_set
            },
            buffer=None if sock is None else sock.buffer.stats,
        )

    def totals(self) -> Totals:
        """Cumulative counters: the ended connections plus the live one."""
        return (self._ended or Totals()).with_socket(self._socket)

    @property
    def retired_cache_counts(self) -> Mapping[tuple[str, str], int]:
        """(cache name, counter) -> count over the socket caches of ended connections."""
        return {} if self._ended is None else self._ended.socket_cache_counts

    @property
    def state(self) -> TenantState:
        """Where the supervisor loop is now.

        CONNECTED and CLOSING last exactly as long as the socket's scope, as
        the hub's gauges count it: the live socket says when it is closing.
        """
        sock = self._socket
        if sock is not None and sock.closing:
            return TenantState.CLOSING
        return self._state

    @property
    def reconnects(self) -> Mapping[str, int]:
        """Ended connections and failed attempts, by reason name."""
        return self._reconnects or {}

    @property
    def breaker_trips(self) -> int:
        """How many times the circuit breaker has opened."""
        return self._reconnector.breaker.trips

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state now."""
        return self._reconnector.breaker.state

    def cache_sets(self) -> Iterator[tuple[Scope, CacheSet]]:
        """The tenant's caches and, while connected, the socket's."""
        yield Scope.TENANT, self._caches
        if self._socket is not None:
            yield Scope.SOCKET, self._socket.caches
