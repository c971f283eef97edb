"""``tenantry``: argument parsing and the four commands.

Exit status: 0 when all went well (a member stopped by SIGTERM included), 1
when a soak broke an invariant (each one named on stderr), 2 for a mistake
in the command line, a spec file or the environment (one line on stderr,
never a traceback), 130 when interrupted (one line on stderr; a soak prints
the report of what ran first; a member leaves the fleet first).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import trio
import trio.testing

from .._validate import check_name
from ._config import SoakConfig
from ._console import open_output
from ._faults import Fault
from ._member import DSN_VARIABLE, clock_from_environment, load_spec_factory, run_member
from ._plan import ENTRY_OVERHEAD_BYTES, SpecFileError, load_specs, plan_rows
from ._report import SoakProgress, SoakReport
from ._soak import run_soak
from ._units import duration, duration_text
from ._upstream import UpstreamConfig, port_refusal, serve_upstream

__all__ = ["main"]

VIRTUAL_ABOVE = 180.0
"""Without --virtual or --real, soaks longer than this many seconds run virtually."""

MAX_PLAN = 1_000_000_000
"""The largest --tenants and --entry-bytes a plan takes: beyond, it is a typo."""

T = TypeVar("T")


class _UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


class _Interrupted(Exception):
    """Ctrl-C: printed as one line (after what the command had to show), exit status 130."""


def faults(text: str) -> tuple[Fault, ...]:
    """``503,abort`` as faults; ``all`` or ``none``."""
    if text == "all":
        return tuple(Fault)
    if text == "none":
        return ()
    try:
        return tuple(Fault(name.strip()) for name in text.split(","))
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise argparse.ArgumentTypeError(
            f"unknown fault in {text!r} (known: {known}; or all, none)"
        ) from None


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tenantry",
        description="Many tenants' WebSocket connections in one Trio program: "
        "see the guarantees hold under faults, plan cache capacity, serve a fake upstream, "
        "run a member of a fleet.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_soak(commands)
    _add_plan(commands)
    _add_upstream(commands)
    _add_member(commands)
    return parser


def _add_soak(commands: Any) -> None:
    defaults = SoakConfig()
    soak = commands.add_parser(
        "soak",
        help="a fleet of tenants under faults; checks the invariants",
        description="Run tenants on one hub against an embedded fake upstream that injects "
        "faults, then report flush rates, buffers, events, reconnects, caches and memory, "
        "and check tenantry's invariants (listed in the design chapter of the documentation, "
        "docs/design.rst). Exit status 1 names any that broke; Ctrl-C stops the traffic "
        "early and reports what ran.",
        epilog="faults:\n" + "\n".join(f"  {f.value:<10} {f.description}" for f in Fault),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    soak.add_argument("--tenants", type=int, default=defaults.tenants, help="default: %(default)s")
    soak.add_argument(
        "--duration",
        type=duration,
        default=defaults.duration,
        help="traffic time, e.g. 90s, 30m, 1h (default: 30m)",
    )
    clock = soak.add_mutually_exclusive_group()
    clock.add_argument(
        "--virtual",
        action="store_true",
        default=None,
        help="in memory on Trio's MockClock: an hour in seconds "
        f"(the default above {VIRTUAL_ABOVE:g} s)",
    )
    clock.add_argument(
        "--real",
        dest="virtual",
        action="store_false",
        help="over loopback TCP in wall-clock time",
    )
    soak.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help="events per second to each tenant (default: %(default)s)",
    )
    soak.add_argument(
        "--fault-every",
        type=duration,
        default=defaults.fault_every,
        help="mean time between two faults of a tenant (default: 2m)",
    )
    soak.add_argument(
        "--faults",
        type=faults,
        default=defaults.faults,
        help="comma-separated: " + ",".join(f.value for f in Fault) + ", or all, none "
        "(default: all)",
    )
    soak.add_argument(
        "--spared",
        type=float,
        default=defaults.spared,
        help="fraction of tenants never faulted, the control group (default: %(default)s)",
    )
    soak.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="random seed of traffic, faults and jitter (default: %(default)s)",
    )
    soak.add_argument(
        "--cache-scale",
        type=float,
        default=defaults.cache_scale,
        help="the Baileys cache limits times this, so that caches fill (default: %(default)s)",
    )
    soak.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    _add_output_options(soak)
    soak.set_defaults(run=_soak)


def _add_plan(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="the worst-case keys and memory of a cache table",
        description="Keys per cache, per tenant, per scope and in total when every cache is "
        "full, with a memory estimate. Without --specs: the Baileys defaults.",
    )
    plan.add_argument("--tenants", type=int, default=100, help="default: %(default)s")
    plan.add_argument(
        "--specs",
        type=Path,
        metavar="FILE",
        help="JSON or TOML: {name: {max_keys, ttl, scope}}; "
        "NodeCache's maxKeys and stdTTL work too",
    )
    plan.add_argument(
        "--entry-bytes",
        type=int,
        default=200,
        help="your key and value per entry, in bytes (default: %(default)s); "
        f"the cache adds {ENTRY_OVERHEAD_BYTES}",
    )
    _add_output_options(plan)
    plan.set_defaults(run=_plan)


def _add_upstream(commands: Any) -> None:
    defaults = UpstreamConfig()
    upstream = commands.add_parser(
        "upstream",
        help="serve the fake upstream over TCP",
        description="Serve the soak's fake upstream: every connection, on any path, gets a "
        "stream of chat-like events and, with --fault-every, faults. Ctrl-C stops it.",
    )
    upstream.add_argument("--port", type=int, default=defaults.port, help="default: %(default)s")
    upstream.add_argument("--host", default=defaults.host, help="default: %(default)s")
    upstream.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help="events per second per connection (default: %(default)s)",
    )
    upstream.add_argument(
        "--fault-every", type=duration, help="mean time between faults per connection (none)"
    )
    upstream.add_argument("--faults", type=faults, default=defaults.faults, help="default: all")
    upstream.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="random seed of traffic and faults (default: %(default)s)",
    )
    upstream.add_argument(
        "--replace",
        action="store_true",
        help="a second connection to a path closes the older one with 4440 (connection "
        "replaced), as WhatsApp Web does, and counts it",
    )
    upstream.add_argument("--duration", type=duration, help="stop after this long (default: never)")
    _add_output_options(upstream)
    upstream.set_defaults(run=_upstream)


def _add_member(commands: Any) -> None:
    from ..cluster import LeaseConfig  # noqa: PLC0415 - the defaults, shown in --help

    lease = LeaseConfig()
    member = commands.add_parser(
        "member",
        help="run one member of a fleet sharing a tenant list in PostgreSQL",
        description="Join the fleet whose tenant list and leases live in PostgreSQL, run the "
        "tenants it gives this member, and print a status line (JSON) per interval and on "
        "every change. The database's connection string is read from the environment "
        f"variable {DSN_VARIABLE}, never from the command line. SIGTERM or Ctrl-C leaves "
        "the fleet in order: tenants close, then move to the other members at once.",
        epilog="The lease rule: after each renewal sent at t, this member keeps its tenants "
        "connected until t + ttl * (1 - rho) - close-budget at most. The built-in spec "
        "factory tenantry.cli:fake_upstream_spec runs tenants described as "
        '{"url": "ws://host:port/path"} against `tenantry upstream --replace`.',
    )
    member.add_argument(
        "--name",
        required=True,
        help="this member's name: unique in the fleet, stable across restarts (e.g. the host name)",
    )
    member.add_argument(
        "--spec-factory",
        required=True,
        metavar="MODULE:FUNCTION",
        help="your function (tenant_id, description, epoch) -> TenantSpec, "
        "e.g. myapp.fleet:make_spec",
    )
    member.add_argument(
        "--schema",
        default="tenantry",
        help="the database schema of the fleet's tables (default: %(default)s)",
    )
    member.add_argument(
        "--ttl",
        type=duration,
        metavar="SECONDS",
        default=lease.ttl,
        help="lease lifetime after each renewal; failover takes about this long "
        "(default: %(default)ss)",
    )
    member.add_argument(
        "--rho",
        type=float,
        default=lease.rho,
        help="bound on the clock-rate error against the database's clock (default: %(default)s)",
    )
    member.add_argument(
        "--close-budget",
        type=duration,
        metavar="SECONDS",
        default=lease.close_budget,
        help="time kept before the lease deadline to abort the sockets (default: %(default)ss)",
    )
    member.add_argument(
        "--settle-delay",
        type=duration,
        metavar="SECONDS",
        default=lease.settle_delay,
        help="how long a new member must be seen before it gets tenants (default: %(default)ss)",
    )
    member.add_argument(
        "--handoff-rate",
        type=float,
        default=lease.handoff_rate,
        help="tenants handed to another member per second (default: %(default)s)",
    )
    member.add_argument(
        "--handoff-burst",
        type=int,
        default=lease.handoff_burst,
        help="hand-offs allowed at once before the rate applies (default: %(default)s)",
    )
    member.add_argument(
        "--poll-interval",
        type=duration,
        metavar="SECONDS",
        default=lease.poll_interval,
        help="longest wait between two reads of the tenant list (default: %(default)ss)",
    )
    member.add_argument(
        "--store-timeout",
        type=duration,
        metavar="SECONDS",
        default=5.0,
        help="bound on each database call; keep it below the TTL (default: %(default)ss)",
    )
    member.add_argument(
        "--status-every",
        type=duration,
        metavar="SECONDS",
        default=5.0,
        help="seconds between two status lines when nothing changes (default: %(default)s)",
    )
    member.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="show tenantry's log records from this level on stderr (default: %(default)s)",
    )
    member.set_defaults(run=_member)


def _add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--plain", action="store_true", help="plain text even if rich is installed"
    )
    command.add_argument("--quiet", action="store_true", help="no progress output")
    command.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="error",
        help="show tenantry's log records from this level on stderr (default: %(default)s)",
    )


# -- the commands -------------------------------------------------------------------


def _soak(args: argparse.Namespace) -> int:
    virtual = args.duration > VIRTUAL_ABOVE if args.virtual is None else args.virtual
    try:
        config = SoakConfig(
            tenants=args.tenants,
            duration=args.duration,
            rate=args.rate,
            fault_every=args.fault_every,
            faults=args.faults,
            spared=args.spared,
            seed=args.seed,
            virtual=virtual,
            cache_scale=args.cache_scale,
        )
    except (TypeError, ValueError) as error:
        raise _UsageError(str(error).replace("_", "-")) from None
    with open_output(plain=args.plain, quiet=args.quiet) as output, collecting_less():
        clock = trio.testing.MockClock(autojump_threshold=0) if virtual else None
        report = _run(lambda: _soak_until_interrupted(config, output.progress), clock=clock)
    output.sections(report.sections())
    if args.json is not None:
        _write_json(args.json, report.to_json())
    if report.interrupted:
        ran, planned = duration_text(report.elapsed), duration_text(config.duration)
        raise _Interrupted(f"after {ran} of {planned}; the report covers those {ran}")
    for broken in report.broken:
        print(f"tenantry soak: invariant broken: {broken.name} ({broken.detail})", file=sys.stderr)
    return 1 if report.broken else 0


async def _soak_until_interrupted(
    config: SoakConfig, on_progress: Callable[[SoakProgress], None]
) -> SoakReport:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_interrupt, stop)
        report = await run_soak(config, on_progress=on_progress, stop=stop)
        nursery.cancel_scope.cancel()
    return report


def _plan(args: argparse.Namespace) -> int:
    if not 1 <= args.tenants <= MAX_PLAN:
        raise _UsageError(f"--tenants must be between 1 and {MAX_PLAN:,}, got {args.tenants:,}")
    if not 0 <= args.entry_bytes <= MAX_PLAN:
        raise _UsageError(
            f"--entry-bytes must be between 0 and {MAX_PLAN:,}, got {args.entry_bytes:,}"
        )
    if args.specs is None:
        from .._cache_specs import BAILEYS_CACHE_SPECS  # noqa: PLC0415

        specs, source = dict(BAILEYS_CACHE_SPECS), "the Baileys cache table"
    else:
        try:
            specs, source = load_specs(args.specs), str(args.specs)
        except SpecFileError as error:
            raise _UsageError(str(error)) from None
    plan, rows = plan_rows(specs, args.tenants, args.entry_bytes)
    with open_output(plain=args.plain, quiet=args.quiet) as output:
        output.table(
            f"Capacity of {source} for {args.tenants:,} tenants (every cache full)",
            ["cache", "scope", "ttl", "keys/tenant", "keys in all", "memory"],
            rows,
        )
        output.line(str(plan))
        output.line(
            f"memory: {ENTRY_OVERHEAD_BYTES} bytes of cache bookkeeping per entry "
            f"(measured) + {args.entry_bytes} of key and value (--entry-bytes)"
        )
    return 0


def _upstream(args: argparse.Namespace) -> int:
    try:
        config = UpstreamConfig(
            port=args.port,
            host=args.host,
            rate=args.rate,
            fault_every=args.fault_every,
            faults=args.faults,
            seed=args.seed,
            replace=args.replace,
        )
    except (TypeError, ValueError) as error:
        raise _UsageError(str(error).replace("_", "-")) from None
    if (refusal := port_refusal(config.port)) is not None:
        raise _UsageError(refusal)
    with open_output(plain=args.plain, quiet=args.quiet) as output:
        say = (lambda _: None) if args.quiet else output.line
        listening = False

        async def serve() -> bool:
            nonlocal listening
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(_stop_on_interrupt, stop)
                url = await nursery.start(serve_upstream, config, say)
                listening = True
                output.line(f"serving {url}<any path>; Ctrl-C stops")
                with trio.move_on_after(math.inf if args.duration is None else args.duration):
                    await stop.wait()
                nursery.cancel_scope.cancel()
            return stop.is_set()

        try:
            interrupted = _run(serve)
        except* OSError as failed:
            if listening:
                raise  # not a mistake of the user's: show it all
            reason = next(_leaves(failed))
            text = getattr(reason, "strerror", None) or reason
            raise _UsageError(f"cannot listen on {args.host}:{args.port}: {text}") from None
    if interrupted:
        raise _Interrupted
    return 0


def _member(args: argparse.Namespace) -> int:
    from ..cluster import LeaseConfig, PostgresCoordinator  # noqa: PLC0415

    try:
        lease = LeaseConfig(
            ttl=args.ttl,
            rho=args.rho,
            close_budget=args.close_budget,
            settle_delay=args.settle_delay,
            handoff_rate=args.handoff_rate,
            handoff_burst=args.handoff_burst,
            poll_interval=args.poll_interval,
        )
    except (TypeError, ValueError) as error:
        raise _UsageError(str(error).replace("_", "-")) from None
    try:
        name = check_name(args.name.strip(), "--name")
        spec_factory = load_spec_factory(args.spec_factory)
        clock = clock_from_environment()
    except (TypeError, ValueError) as error:
        raise _UsageError(str(error)) from None
    if args.store_timeout >= lease.ttl:
        raise _UsageError(
            f"--store-timeout ({args.store_timeout:g} s) must be shorter than --ttl "
            f"({lease.ttl:g} s): a member waiting that long on one call loses its lease"
        )
    dsn = os.environ.get(DSN_VARIABLE)
    if not dsn:
        raise _UsageError(
            f"set the environment variable {DSN_VARIABLE} to the database's connection string "
            '(e.g. "host=db.example port=5432 dbname=fleet user=tenantry")'
        )
    try:
        coordinator = PostgresCoordinator(dsn, schema=args.schema, timeout=args.store_timeout)
    except ImportError as error:
        raise _UsageError(str(error)) from None
    except (TypeError, ValueError) as error:
        raise _UsageError(f"{DSN_VARIABLE}: {error}") from None

    async def member() -> int:
        return await run_member(
            coordinator,
            name=name,
            spec_factory=spec_factory,
            lease=lease,
            status_every=args.status_every,
            out=sys.stdout,
        )

    stopped_by = _run(member, clock=clock)
    if stopped_by == signal.SIGINT:
        raise _Interrupted
    return 0


async def _stop_on_interrupt(
    stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Set *stop* at the first Ctrl-C, so that the command ends in order.

    A second Ctrl-C interrupts the usual way (`KeyboardInterrupt`). The task
    lives until its nursery ends, so that a soak counts the same tasks at its
    end as at its start.
    """
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        task_status.started()
        async for _ in interrupts:
            break
    stop.set()
    await trio.sleep_forever()


def _run(main: Callable[[], Awaitable[T]], *, clock: trio.abc.Clock | None = None) -> T:
    """`trio.run`, with a `KeyboardInterrupt` -- bare, or in Trio's exception groups -- as one."""
    try:
        return trio.run(main, clock=clock)
    except* KeyboardInterrupt:
        raise _Interrupted from None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions in *error*, a group or not, without the groups."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise _UsageError(f"cannot write {path}: {error.strerror}") from None


GC_THRESHOLD = 10_000
"""The young generation's threshold while the command runs (CPython's default: 700)."""


@contextmanager
def collecting_less() -> Iterator[None]:
    """Run the garbage collector less often for the block, then as before.

    A fleet of tenants allocates container objects fast (frames, tasks,
    decoded events) and keeps hundreds of thousands alive, so collections
    come often and the older ones traverse it all: 5 to 20 % of a virtual
    soak's time at CPython's default threshold. This is the application's
    call to make -- the library never touches the collector -- and the
    tuning guide shows it for applications too.
    """
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """The command is an application: it shows tenantry's records, and puts things back after."""
    logger = logging.getLogger("tenantry")
    saved = logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tenantry`` command on *argv* (default: the process's); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        with _logging_to_stderr(args.log_level):
            status: int = args.run(args)
    except _UsageError as error:
        print(f"tenantry {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (_Interrupted, KeyboardInterrupt) as interrupt:
        detail = f" {interrupt}" if str(interrupt) else ""
        print(f"tenantry {args.command}: interrupted{detail}", file=sys.stderr)
        return 130
    return status
