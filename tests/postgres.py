"""A real PostgreSQL server for the tests, and a loopback proxy that can freeze or cut it.

`running_postgres` runs ``initdb`` and ``pg_ctl -w start`` in a temporary
directory (the server listens on a free loopback port, its unix socket in
that directory) and ``pg_ctl stop -m immediate`` after: ``conftest.py``
starts it once per session, so ``nox -s tests`` needs nothing but the
server binaries. They are found under ``$PG_BIN``, else in the newest
``/usr/lib/postgresql/<version>/bin``; without them the fixture fails
saying what to install. PostgreSQL refuses to run as root, so under root
the server runs as the ``postgres`` user (or ``nobody``).

`open_proxy` sits between a coordinator and that server: `Proxy.freeze`
stops forwarding while every socket stays open (a server stopped with
SIGSTOP, or a silent partition), `Proxy.cut` closes them all and refuses
new ones (a killed server). `database_stopped` stops the server itself:
SIGSTOP to the postmaster and every process it started (the process-kill
suite and ``benchmarks/bench_fleet.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import attrs
import psycopg
import pytest
import trio

MISSING = (
    "the PostgreSQL server binaries (initdb, pg_ctl) were not found in $PG_BIN or under "
    "/usr/lib/postgresql/<version>/bin: install the Debian package 'postgresql' "
    "(apt-get install postgresql), or set PG_BIN to the directory that holds them"
)


@attrs.frozen
class PostgresServer:
    """A running server: connect as ``user`` to ``dbname`` on 127.0.0.1:``port``, no password."""

    port: int
    user: str = "tenantry"
    dbname: str = "postgres"

    def dsn(self, *, port: int | None = None, password: str | None = None) -> str:
        """A libpq connection string to this server (or to a proxy of it on *port*)."""
        dsn = f"host=127.0.0.1 port={port or self.port} user={self.user} dbname={self.dbname}"
        return dsn if password is None else f"{dsn} password={password}"


def pg_bin(installed: Path = Path("/usr/lib/postgresql")) -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: $PG_BIN, else the newest installed version's."""
    configured = os.environ.get("PG_BIN")
    candidates = (
        [Path(configured)]
        if configured
        else sorted(
            installed.glob("*/bin"),
            key=lambda path: [int(part) for part in path.parent.name.split(".") if part.isdigit()],
            reverse=True,
        )
    )
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    pytest.fail(MISSING, pytrace=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as() -> tuple[int, int] | None:
    """The user and group to drop root to (initdb refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    pytest.fail("running as root, and neither a 'postgres' nor a 'nobody' user to run the server")


def _run(command: list[str], log: Path, as_user: tuple[int, int] | None) -> None:
    user, group = as_user or (None, None)
    done = subprocess.run(  # noqa: S603 - the server's own tools, arguments built here
        command, capture_output=True, text=True, check=False, user=user, group=group
    )
    if done.returncode != 0:
        server_log = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            f"{server_log}",
            pytrace=False,
        )


@contextlib.contextmanager
def running_postgres(*, extra: str = "") -> Iterator[PostgresServer]:
    """A fresh server in a temporary directory, stopped and deleted on exit.

    *extra*: more ``-c name=value`` settings for the server (the benchmark's
    ``shared_preload_libraries=pg_stat_statements``).
    """
    binaries = pg_bin()
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="tenantry-pg-"))
    try:
        if as_user:
            os.chown(root, *as_user)
        data, log = root / "data", root / "server.log"
        _run(
            [
                str(binaries / "initdb"),
                *("-D", str(data), "-U", "tenantry", "-A", "trust", "-E", "UTF8"),
                *("--locale=C", "--no-sync", "--no-instructions"),
            ],
            log,
            as_user,
        )
        server = PostgresServer(port=_free_port())
        settings = (
            f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            f" {extra}"
        )
        pg_ctl = str(binaries / "pg_ctl")
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", settings, "-w", "start"], log, as_user)
        try:
            yield server
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], log, as_user)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@attrs.define
class Proxy:
    """A loopback TCP proxy to the server: `port` is where to connect."""

    target: int
    port: int = 0
    _thawed: trio.Event = attrs.field(factory=trio.Event)
    _streams: list[trio.SocketStream] = attrs.field(factory=list)
    _cut: bool = False

    def freeze(self) -> None:
        """Forward nothing more, keep every socket open: the server looks stopped."""
        self._thawed = trio.Event()

    def thaw(self) -> None:
        """Forward again."""
        self._thawed.set()

    async def cut(self) -> None:
        """Close every socket and refuse new ones: the server looks killed."""
        self._cut = True
        for stream in self._streams:
            await stream.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self._cut:
            await client.aclose()
            return
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        self._streams += [client, server]
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await self._thawed.wait()
                await sink.send_all(data)
        both.cancel()


@contextlib.asynccontextmanager
async def open_proxy(target: int) -> AsyncIterator[Proxy]:
    """A `Proxy` to 127.0.0.1:*target*, serving until the block ends."""
    proxy = Proxy(target)
    proxy.thaw()
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()


# -- the server, frozen for real (SIGSTOP) -----------------------------------------------


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def server_processes(postgres: PostgresServer) -> list[int]:
    """The postmaster and its children (backends, writer, checkpointer, ...)."""
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        postmaster = _parent(int(row[0]))  # while the backend lives
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if _parent(int(entry.name)) == postmaster:
                    children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def database_stopped(postgres: PostgresServer) -> Iterator[Callable[[], None]]:
    """SIGSTOP every server process; the callable (and leaving) sends SIGCONT."""
    pids = server_processes(postgres)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a backend that just ended
            os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    try:
        yield resume
    finally:
        resume()
