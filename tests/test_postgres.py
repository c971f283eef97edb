"""`PostgresCoordinator` beyond the shared contract: bounds, failures, secrets, its schema.

A server that stops answering (frozen, or a silent partition) is played by
a loopback proxy that stops forwarding, and a killed one by the proxy
cutting every socket: the session's real server stays up for the others.
These tests run on the real clock, because the server's does; a bound is
checked with `trio.fail_after` well above it, never as a timing figure.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import trio
import trio.testing

from postgres import PostgresServer, open_proxy, pg_bin
from tenantry.cluster import CoordinatorError, PostgresCoordinator

SECRET = "tnt-SECRET-9d2e41"  # noqa: S105 - a fake, recognisable wherever it leaks
BOUND = 0.5
"""The coordinator's timeout in these tests: every call ends within it."""
HANG = 10.0
"""Longer than any bounded call here may take: a hang, not a slow answer."""


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def coordinator(dsn: str, schema: str, timeout: float = BOUND) -> PostgresCoordinator:
    return PostgresCoordinator(dsn, schema=schema, timeout=timeout)


async def test_a_frozen_server_fails_a_call_within_the_bound_and_the_next_reconnects(
    postgres: PostgresServer, schema: str
) -> None:
    async with open_proxy(postgres.port) as proxy:
        store = coordinator(postgres.dsn(port=proxy.port), schema)
        async with contextlib.aclosing(store):
            member = await store.register("a", 60)
            link = store._main.link
            assert link is not None
            conn = link._conn
            assert conn is not None
            proxy.freeze()
            start = trio.current_time()
            with trio.fail_after(HANG), pytest.raises(CoordinatorError, match="no answer within"):
                await store.renew(member, 60)
            assert trio.current_time() - start >= BOUND
            # The abandoned thread is woken (its socket shut) and closes the connection,
            # while the server still says nothing.
            with trio.fail_after(HANG):
                while not conn.closed:  # noqa: ASYNC110 - a worker thread closes it, silently
                    await trio.sleep(0.01)
            proxy.thaw()
            assert await store.renew(member, 60)


async def test_a_frozen_server_fails_a_connect_within_the_bound(
    postgres: PostgresServer, schema: str
) -> None:
    async with open_proxy(postgres.port) as proxy:
        proxy.freeze()
        async with contextlib.aclosing(coordinator(postgres.dsn(port=proxy.port), schema)) as store:
            with trio.fail_after(HANG), pytest.raises(CoordinatorError, match="no answer within"):
                await store.view()
            proxy.thaw()
            assert (await store.view()).members == ()


async def test_a_statement_stuck_on_a_lock_is_cancelled_by_the_server(
    postgres: PostgresServer, schema: str
) -> None:
    async with contextlib.aclosing(coordinator(postgres.dsn(), schema)) as store:
        member = await store.register("a", 60)
        await store.put_tenant("t", {})
        with psycopg.Connection.connect(postgres.dsn()) as holder:  # a transaction, till the end
            holder.execute(f"SELECT * FROM {schema}.tenants FOR UPDATE")  # noqa: S608 - ours
            with trio.fail_after(HANG), pytest.raises(CoordinatorError, match="QueryCanceled"):
                await store.acquire(member, "t")
        assert await store.acquire(member, "t") == 1


async def test_a_killed_server_fails_every_call_without_showing_the_password(
    postgres: PostgresServer, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantry")
    async with open_proxy(postgres.port) as proxy:
        store = coordinator(postgres.dsn(port=proxy.port, password=SECRET), schema)
        async with contextlib.aclosing(store):
            member = await store.register("a", 60)
            await proxy.cut()
            for call in (store.view(), store.renew(member, 60), store.leave(member)):
                with trio.fail_after(HANG), pytest.raises(CoordinatorError) as failed:
                    await call
                assert "port=" in str(failed.value)  # where, for the operator
                assert SECRET not in str(failed.value)
                assert failed.value.__cause__ is None
            assert SECRET not in repr(store)
            assert "coordinator view failed" in caplog.text
            assert SECRET not in caplog.text


async def test_a_refused_connection_is_a_coordinator_error(schema: str) -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://tenantry:{SECRET}@127.0.0.1:{port}/postgres"
    async with contextlib.aclosing(coordinator(dsn, schema)) as store:
        with pytest.raises(CoordinatorError, match="OperationalError") as failed:
            await store.view()
        assert SECRET not in str(failed.value)
        assert SECRET not in repr(store)


async def test_a_cancelled_wait_leaves_the_coordinator_working(
    postgres: PostgresServer, schema: str
) -> None:
    async with (
        contextlib.aclosing(coordinator(postgres.dsn(), schema)) as waiting,
        contextlib.aclosing(coordinator(postgres.dsn(), schema)) as changing,
    ):
        await waiting.wait_for_change(0.01)
        with trio.move_on_after(0.05):
            await waiting.wait_for_change(HANG)
        with trio.fail_after(HANG):
            await waiting.wait_for_change(HANG)  # a new listener: returns at once
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting.wait_for_change, HANG)
                await trio.testing.wait_all_tasks_blocked()
                await changing.put_tenant("t", {})


async def test_first_connections_at_once_create_the_schema_once(
    postgres: PostgresServer, schema: str
) -> None:
    stores = [coordinator(postgres.dsn(), schema, timeout=10) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for index, store in enumerate(stores):
            nursery.start_soon(store.put_tenant, f"t{index}", {})
    assert len((await stores[0].view()).tenants) == 4
    for store in stores:
        await store.aclose()


async def test_a_closed_coordinator_refuses_calls(postgres: PostgresServer, schema: str) -> None:
    store = coordinator(postgres.dsn(), schema)
    await store.view()
    await store.aclose()
    await store.aclose()
    with pytest.raises(CoordinatorError, match="closed"):
        await store.view()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"dsn": "host=h port"}, ValueError, "dsn cannot be parsed"),
        ({"dsn": 5}, TypeError, "dsn must be a str"),
        ({"schema": "Bad-Name"}, ValueError, "schema must be"),
        ({"schema": ""}, ValueError, "schema must be"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": float("inf")}, ValueError, "timeout must be finite"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    given: dict[str, object] = {"dsn": f"host=h password={SECRET}", **arguments}
    with pytest.raises(error, match=message) as refused:
        PostgresCoordinator(**given)  # type: ignore[arg-type]
    assert SECRET not in str(refused.value)


async def test_bad_call_arguments_are_refused_before_the_server(schema: str) -> None:
    store = coordinator("host=127.0.0.1 port=1", schema)  # never reached
    with pytest.raises(TypeError, match="description must be JSON"):
        await store.put_tenant("t", {"x": object()})
    with pytest.raises(TypeError, match="description must be a mapping"):
        await store.put_tenant("t", ["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be finite"):
        await store.register("a", float("inf"))
    with pytest.raises(ValueError, match="tenant_id must be a non-empty string"):
        await store.put_tenant("", {})


def test_without_psycopg_the_coordinator_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from tenantry.cluster import PostgresCoordinator\n"
        "try:\n    PostgresCoordinator('')\n"
        "except ImportError as error:\n    print(error)\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter, running the code above
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'tenantry[postgres]'" in done.stdout


def test_the_newest_complete_server_version_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    for version, tools in [("9.6", 2), ("10", 2), ("16", 1)]:
        binaries = tmp_path / version / "bin"
        binaries.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl")[:tools]:
            (binaries / tool).touch()
    assert pg_bin(tmp_path) == tmp_path / "10" / "bin"
    monkeypatch.setenv("PG_BIN", str(tmp_path / "9.6" / "bin"))
    assert pg_bin(tmp_path) == tmp_path / "9.6" / "bin"


def test_missing_server_binaries_fail_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install postgresql.*PG_BIN"):
        pg_bin(tmp_path)
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="initdb, pg_ctl"):
        pg_bin()
