"""``tenantry member``: its mistakes, its status line, its exits, and the DSN never shown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from helpers import idle
from tenantry import TenantSpec
from tenantry.cli import fake_upstream_spec, main
from tenantry.cli._member import (
    CLOCK_RATE_VARIABLE,
    DSN_VARIABLE,
    RateClock,
    load_spec_factory,
    member_status,
)
from tenantry.cluster import LeaseConfig, open_cluster_hub
from tenantry.testing import MemoryCoordinator, open_fake_upstream

SECRET = "hunter2-not-for-your-eyes"  # noqa: S105 - a password that must never show
QUICK = ["--ttl", "3", "--close-budget", "0.5", "--store-timeout", "1"]
MEMBER = ["member", "--name", "a", "--spec-factory", "tenantry.cli:fake_upstream_spec"]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["member", "--spec-factory", "tenantry.cli:fake_upstream_spec"], "--name"),
        (["member", "--name", "a"], "--spec-factory"),
        (["member", "--name", " ", "--spec-factory", "tenantry.cli:x"], "--name"),
        (["member", "--name", "a", "--spec-factory", "nocolon"], "module:function"),
        (["member", "--name", "a", "--spec-factory", "no_such_module_x:f"], "'no_such_module_x'"),
        (["member", "--name", "a", "--spec-factory", "tenantry.cli:nothing"], "has no"),
        (["member", "--name", "a", "--spec-factory", "tenantry.cli:__doc__"], "not callable"),
        ([*MEMBER, "--ttl", "3", "--close-budget", "2"], "the lease"),
        ([*MEMBER, "--rho", "0.9"], "rho"),
        ([*MEMBER, "--handoff-burst", "0"], "handoff-burst"),
        ([*MEMBER, "--ttl", "soon"], "not a duration"),
        ([*MEMBER, "--ttl", "4", "--store-timeout", "5"], "--store-timeout"),
    ],
)
def test_member_mistakes_are_one_line_and_exit_2(
    argv: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, f"host=127.0.0.1 password={SECRET}")
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code  # type: ignore[assignment]
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err
    assert SECRET not in err


def test_without_the_dsn_variable_it_says_which_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DSN_VARIABLE, raising=False)
    assert main(MEMBER) == 2
    err = capsys.readouterr().err
    assert err.startswith("tenantry member: error: set the environment variable TENANTRY_DSN")


def test_an_unreadable_dsn_is_refused_without_echoing_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, f"host=127.0.0.1 password={SECRET} ===")
    assert main(MEMBER) == 2
    err = capsys.readouterr().err
    assert "TENANTRY_DSN" in err
    assert SECRET not in err


def test_the_test_clock_variable_is_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_VARIABLE, "host=127.0.0.1")
    for bad in ("slow", "0", "-1", "nan"):
        monkeypatch.setenv(CLOCK_RATE_VARIABLE, bad)
        assert main(MEMBER) == 2
        assert CLOCK_RATE_VARIABLE in capsys.readouterr().err


def test_the_rate_clock_runs_at_its_rate() -> None:
    now = [100.0]
    clock = RateClock(0.5, real=lambda: now[0])
    clock.start_clock()
    now[0] = 104.0
    assert clock.current_time() == 2.0
    assert clock.deadline_to_sleep_time(3.0) == 2.0  # one second of its time: two real ones
    assert clock.deadline_to_sleep_time(1.0) == 0.0


def test_a_spec_factory_is_found_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myfleet_factories.py").write_text(
        "from tenantry.cli import fake_upstream_spec as make_spec\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    assert load_spec_factory("myfleet_factories:make_spec") is fake_upstream_spec
    assert sys.path == path  # as it was
    sys.modules.pop("myfleet_factories", None)


def test_the_built_in_spec_factory_needs_a_url() -> None:
    spec = fake_upstream_spec("t1", {"url": "ws://127.0.0.1:8765/t1"}, 3)
    assert spec.tenant_id == "t1"
    with pytest.raises(TypeError, match=r"'t1'.*'url'"):
        fake_upstream_spec("t1", {"address": "ws://127.0.0.1:8765/t1"}, 3)


async def test_a_status_line_shows_tenants_epochs_and_the_lease(
    autojump_clock: trio.abc.Clock,
) -> None:
    store = MemoryCoordinator()
    for tenant in ("t1", "t2"):
        await store.put_tenant(tenant, {})
    lease = LeaseConfig(ttl=3.0, close_budget=0.5, settle_delay=0.5, poll_interval=1.0)
    async with open_fake_upstream() as upstream:

        def factory(tenant_id: str, _: Mapping[str, Any], epoch: int) -> TenantSpec:
            return TenantSpec(tenant_id, upstream.connector_to(f"/{tenant_id}"), handler=idle)

        started = trio.current_time()
        async with open_cluster_hub(
            store.client(), member="a", spec_factory=factory, lease=lease
        ) as cluster:
            await trio.sleep(2.0)
            status = member_status(cluster, started)
    assert json.loads(json.dumps(status)) == status
    assert status["member"] == "a"
    assert status["registered"] is True
    assert status["tenants"] == {"t1": 1, "t2": 1}
    assert 0 < status["margin"] <= lease.hold
    assert status["renewals"]["ok"] >= 1
    assert status["losses"] == {"deadline": 0, "expired": 0, "taken": 0}
    assert status["acquisitions"] == 2
    assert status["conflicts"] == 0


def run_until_status(signum: int) -> tuple[int, str, str]:
    """Run ``tenantry member`` on a database that refuses, stop it with *signum* after a line."""
    dsn = f"host=127.0.0.1 port={closed_port()} user=fleet password={SECRET} connect_timeout=2"
    command = subprocess.Popen(  # noqa: S603 - the tenantry command, from this interpreter
        [sys.executable, "-m", "tenantry", *MEMBER, *QUICK, "--log-level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={DSN_VARIABLE: dsn, "PYTHONPATH": ":".join(sys.path)},
    )
    assert command.stdout is not None
    assert command.stderr is not None
    first = command.stdout.readline()  # the first status line: the member runs
    said = [command.stderr.readline()]
    while "cannot join" not in said[-1] and said[-1] and len(said) < 10:
        said.append(command.stderr.readline())  # the store's failure, then the member's
    assert "cannot join" in said[-1], said
    command.send_signal(signum)
    out, err = command.communicate(timeout=60)
    return command.returncode, first + out, "".join(said) + err


def test_the_dsn_is_never_echoed_and_sigterm_exits_0() -> None:
    status, out, err = run_until_status(signal.SIGTERM)
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["registered"] is False
    assert lines[-1]["tenants"] == {}
    assert SECRET not in out
    assert SECRET not in err
    assert DSN_VARIABLE not in err


def test_ctrl_c_leaves_and_exits_130() -> None:
    status, _, err = run_until_status(signal.SIGINT)
    assert status == 130
    assert err.splitlines()[-1] == "tenantry member: interrupted"
    assert SECRET not in err
