"""The tenantry command end to end: soak, plan, upstream, and what users get wrong."""

from __future__ import annotations

import functools
import gc
import json
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from helpers import exit_status
from tenantry import Batch, open_socket
from tenantry.cli import Fault, SoakConfig, SoakReport, collecting_less, main, run_soak
from tenantry.cli import _main as cli_main
from tenantry.cli._report import SocketTally, TenantTally
from tenantry.cli._soak import _Line, _Tenant
from tenantry.cli._traffic import Traffic
from tenantry.cli._units import duration
from tenantry.cli._upstream import UpstreamConfig, port_refusal, serve_upstream

SHORT = ["--tenants", "6", "--duration", "10m", "--plain", "--quiet"]


def soak(config: SoakConfig) -> SoakReport:
    return trio.run(run_soak, config, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture(scope="module")
def report() -> SoakReport:
    return soak(SoakConfig(tenants=8, duration=900, fault_every=60, spared=0.25, seed=3))


def test_a_virtual_soak_keeps_every_invariant(report: SoakReport) -> None:
    assert [i.name for i in report.broken] == []
    assert len(report.invariants) == 8
    events = report.events()
    assert events["lost"] == 0
    assert events["received"] == events["delivered"] + events["merged"]
    assert events["handed_to_handlers"] == events["delivered"]
    assert events["merged"] > 0  # updates and receipts do meet their message
    assert events["sent"] == events["received"] + events["not_received"]
    assert report.gauge_mismatches == 0
    assert report.most_buffers == report.most_sockets <= 8
    assert report.tasks_at_end == report.baseline_tasks


def test_the_faults_happened_and_were_answered(report: SoakReport) -> None:
    faults = report.faults()
    assert {f.value for f in Fault} <= faults.keys()  # 6 tenants x 15 faults: every kind
    assert report.breaker_trips >= faults["reject"]  # an outage always opens the breaker
    assert report.reconnects["restart_required"] == faults["515"]
    dropped = faults["abort"] + faults["stall"]  # each a 408, but a stall left at the end
    assert dropped - 6 <= report.reconnects["connection_lost"] <= dropped
    assert report.rejected_frames["invalid_json"] == faults["malformed"]
    spared = [t for t in report.tenants if t.spared]
    assert len(spared) == 2
    assert all(t.sockets == 1 and not t.faults for t in spared)
    assert sum(t.clean_closes for t in report.tenants) > 0


def test_caches_fill_and_evict_instead_of_failing(report: SoakReport) -> None:
    caches = {c.name: c for c in report.caches}
    assert caches["msg_retry"].max_keys == 100  # the seed's 10,000 x 0.01
    assert caches["lid_global"].peak_utilization == 1.0
    assert caches["lid_global"].evictions > 0
    assert all(c.peak_utilization <= 1.0 for c in caches.values())
    assert report.cache_overflows == 0


def test_flushes_stay_near_the_expected_rate(report: SoakReport) -> None:
    flushes = report.flushes
    assert flushes.expected_per_minute == 8 * 60 / 8  # a pair every 4 s: a flush every 8 s
    assert len(flushes.per_minute) == 15
    assert flushes.most <= min(flushes.bounds)
    assert flushes.mean > 0.5 * flushes.expected_per_minute
    assert flushes.over_bound() == []


@pytest.mark.parametrize(
    ("change", "invariant"),
    [
        ({"gauge_mismatches": 1}, "live buffers equal live sockets"),
        ({"most_sockets_one_tenant": 2}, "a tenant never holds two sockets"),
        ({"cache_overflows": 1}, "no cache holds more than max_keys"),
        ({"tasks_at_end": 99}, "closing a scope leaves no task behind"),
    ],
)
def test_a_broken_figure_names_its_invariant(
    report: SoakReport, change: dict[str, Any], invariant: str
) -> None:
    assert [i.name for i in attrs.evolve(report, **change).broken] == [invariant]


def with_tenant(report: SoakReport, tenant: TenantTally) -> SoakReport:
    """*report* with one tenant's tally replaced."""
    tenants = tuple(tenant if t.tenant_id == tenant.tenant_id else t for t in report.tenants)
    return attrs.evolve(report, tenants=tenants)


def broken(report: SoakReport) -> list[str]:
    return [i.name for i in report.broken]


def test_lost_short_and_disturbed_tenants_are_caught(report: SoakReport) -> None:
    faulty = next(t for t in report.tenants if t.clean_closes)
    short = attrs.evolve(faulty, short=(0,))
    assert broken(with_tenant(report, short)) == ["a remote close loses nothing sent before it"]
    uneven = attrs.evolve(faulty, handed=faulty.handed + 1)
    assert broken(with_tenant(report, uneven)) == [
        "every event decoded is delivered or merged exactly once"
    ]
    lost = attrs.evolve(faulty, events=faulty.events + SocketTally(1, 0, 0, 1))
    assert "every event decoded is delivered or merged exactly once" in broken(
        with_tenant(report, lost)
    )
    spared = next(t for t in report.tenants if t.spared)
    disturbed = attrs.evolve(spared, sockets=2)
    assert broken(with_tenant(report, disturbed)) == ["faults of one tenant never touch another"]
    late = attrs.evolve(report.flushes, per_minute=(10_000, *report.flushes.per_minute[1:]))
    assert broken(attrs.evolve(report, flushes=late)) == [
        "flushes per minute stay within what the timers allow"
    ]


def test_memory_is_judged_in_runs_of_half_an_hour_or_more(report: SoakReport) -> None:
    leaky = attrs.evolve(report, elapsed=1800.0, rss_quarters=(100, 110, 113, 116))
    assert leaky.rss_growth_after_warmup == pytest.approx(0.0545, abs=1e-4)
    assert broken(leaky) == ["memory stays flat once warmed up"]
    flat = attrs.evolve(leaky, rss_quarters=(100, 110, 112, 115))  # warming up: +15 %
    assert "memory stays flat once warmed up" in [i.name for i in flat.invariants]
    assert broken(flat) == []
    short = attrs.evolve(leaky, elapsed=1799.0)
    assert "memory stays flat once warmed up" not in [i.name for i in short.invariants]
    rows = dict(dict(short.sections())["Process"])
    assert rows["RSS growth"] == (
        "+5.5% from the second quarter to the last (not judged: runs of 30 min or more are); "
        "+16.0% from the first"
    )
    assert dict(dict(leaky.sections())["Process"])["RSS growth"].startswith(
        "+5.5% from the second quarter to the last (bound +5%)"
    )
    assert leaky.to_json()["rss_growth_after_warmup"] == leaky.rss_growth_after_warmup


def test_each_clean_close_is_checked_against_its_socket_in_either_order() -> None:
    tenant = _Tenant("t", spared=False, traffic=Traffic("1"), random=random.Random(1))
    lines = [_Line(None, n, sent=10 + n) for n in range(1000)]  # type: ignore[arg-type]
    for n, line in enumerate(lines):
        received = line.sent - (n == 7)  # connection 7 comes up one event short
        if n % 2:
            tenant.closed_cleanly(line)
            tenant.socket_closed(n, SocketTally(received, received, 0, 0))
        else:
            tenant.socket_closed(n, SocketTally(received, received, 0, 0))
            if n % 3:  # every third even connection ends without a clean close
                tenant.closed_cleanly(line)
    assert tenant.short == [7]
    assert tenant.clean_closes == 1000 - len(range(0, 1000, 6))
    assert tenant.events.received == sum(line.sent for line in lines) - 1
    assert len(tenant._decoded) + len(tenant._clean_sent) <= 2  # each held briefly


def test_a_seed_reproduces_a_run() -> None:
    config = SoakConfig(tenants=4, duration=300, fault_every=30, seed=11)
    first, second = soak(config).to_json(), soak(config).to_json()
    varying = ("wall_seconds", "peak_rss_bytes", "rss_quarters_bytes", "rss_growth")
    for key in (*varying, "rss_growth_after_warmup"):
        del first[key], second[key]
    assert first == second
    other = soak(attrs.evolve(config, seed=12)).to_json()
    assert other["faults"] != first["faults"]


def test_soak_command_writes_report_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    assert main(["soak", *SHORT, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "virtual (MockClock, in memory)" in text
    assert text.count("held: ") == 8
    assert "BROKEN" not in text
    data = json.loads(out.read_text())
    assert data["ok"] is True
    assert data["config"]["tenants"] == 6
    assert data["config"]["faults"] == [f.value for f in Fault]
    assert data["events"]["lost"] == 0
    assert data["buffers"]["mismatches"] == 0
    assert data["tasks"]["before"] == data["tasks"]["at_end"]
    assert [i["held"] for i in data["invariants"]] == [True] * 8


def test_soak_command_exits_1_naming_the_broken_invariant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def leaky(config: SoakConfig, **kwargs: Any) -> SoakReport:
        return attrs.evolve(await run_soak(config, **kwargs), gauge_mismatches=3)

    monkeypatch.setattr(cli_main, "run_soak", leaky)
    assert main(["soak", *SHORT, "--faults", "none"]) == 1
    captured = capsys.readouterr()
    assert "BROKEN: live buffers equal live sockets" in captured.out
    assert "invariant broken: live buffers equal live sockets" in captured.err


def test_a_soak_stopped_early_reports_the_traffic_that_ran() -> None:
    async def stopped_after(seconds: float) -> SoakReport:
        stop = trio.Event()

        async def stopper() -> None:
            await trio.sleep(seconds)
            stop.set()
            await trio.sleep_forever()  # alive at the end, as at the start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper)
            config = SoakConfig(tenants=4, duration=3600, fault_every=30)
            report = await run_soak(config, stop=stop)
            nursery.cancel_scope.cancel()
        return report

    report = trio.run(stopped_after, 150, clock=trio.testing.MockClock(autojump_threshold=0))
    assert report.interrupted
    assert report.elapsed == pytest.approx(150)
    assert broken(report) == []
    assert len(report.flushes.per_minute) == 2  # whole minutes only
    traffic = dict(dict(report.sections())["Run"])["traffic"]
    assert traffic == "2.5 min of 1 h (interrupted), 0.5 events/s each"
    assert report.to_json()["interrupted"] is True


def test_soak_progress_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["soak", "--tenants", "3", "--duration", "10m", "--plain"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line[:6] for line in err] == [f"[{n:3d}%]" for n in range(0, 101, 10)]
    assert err[-1].startswith("[100%] 10:00 of 10:00")
    assert "3/3 connected" in "\n".join(err)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["soak", "--tenants", "x"],
        ["soak", "--tenants", "0"],
        ["soak", "--duration", "soon"],
        ["soak", "--duration", "0s"],
        ["soak", "--faults", "503,lightning"],
        ["soak", "--spared", "1.5"],
        ["soak", "--rate", "-1"],
        ["soak", "--virtual", "--real"],
        ["soak", "--tenants", "123456789012345678901"],
        ["plan", "--tenants", "-1"],
        ["plan", "--tenants", "0"],
        ["plan", "--tenants", "123456789012345678901"],
        ["plan", "--entry-bytes", "123456789012345678901"],
        ["plan", "--specs", "/nonexistent/caches.json"],
        ["upstream", "--port", "70000"],
        ["upstream", "--host", "nohost.invalid", "--port", "0"],
        ["bogus"],
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err
    assert "Traceback" not in err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["soak"], ["plan"], ["upstream"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    for fault in Fault:
        assert fault.description in text


@pytest.mark.parametrize("text", ["90", "90s", "1.5m", "30m", "1h", "1h30m", "2h15m10s"])
def test_durations(text: str) -> None:
    expected = {"90": 90, "90s": 90, "1.5m": 90, "30m": 1800, "1h": 3600, "1h30m": 5400}
    expected["2h15m10s"] = 2 * 3600 + 15 * 60 + 10
    assert duration(text) == expected[text]


# -- plan ------------------------------------------------------------------------------


def test_plan_of_the_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--tenants", "100", "--plain", "--entry-bytes", "0"]) == 0
    out = capsys.readouterr().out
    assert "100 tenants x 32,500 keys + global = 3,260,000 keys" in out
    assert "socket 2,250,000, tenant 1,000,000, global 10,000" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["msg_retry"][1:5] == ["socket", "1", "h", "10,000"]
    assert rows["msg_retry"][5] == "1,000,000"
    assert rows["lid_global"][4:6] == ["-", "10,000"]
    assert rows["total"][1:3] == ["32,500", "3,260,000"]
    assert " ".join(rows["total"][3:]) == "547.2 MiB"  # 3,260,000 x 176 bytes


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_plan_reads_seed_style_and_tenantry_style_specs(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = tmp_path / f"caches{suffix}"
    if suffix == ".json":
        specs.write_text(
            json.dumps(
                {
                    "user_devices": {"stdTTL": 300, "maxKeys": 5000, "useClones": False},
                    "lid_global": {"max_keys": 10000, "ttl": None, "scope": "global"},
                }
            )
        )
    else:
        specs.write_text(
            "[caches.user_devices]\nstdTTL = 300\nmaxKeys = 5000\ncheckperiod = 60\n"
            '[caches.lid_global]\nmax_keys = 10000\nstdTTL = 0\nscope = "global"\n'
        )
    assert main(["plan", "--tenants", "10", "--plain", "--specs", str(specs)]) == 0
    out = capsys.readouterr().out
    assert "10 tenants x 5,000 keys + global = 60,000 keys" in out
    assert "never" in out  # stdTTL 0 and ttl null: no expiry


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": {"maxKeys": 0}}', "cache 'a': max_keys must be >= 1"),
        ('{"a": {"maxkeys": 3}}', "unknown option 'maxkeys'"),
        ('{"a": {"max_keys": 3, "scope": "planet"}}', "'planet' is not a valid Scope"),
        ('{"a": 3}', "expected a table of options"),
        ("[1, 2]", "expected a table of caches"),
        ("{not json", "not valid JSON"),
        ('{"a": {"max_keys": 3, "ttl": 0}}', "ttl must be > 0 seconds, got 0 (null for none)"),
        ('{"a": {"max_keys": 3, "ttl": 9, "stdTTL": 0}}', "ttl is given twice ('stdTTL' too)"),
        (b'{"a": {"max_keys": 3, "scope": "soc\xefket"}}', "not UTF-8 text (byte 35)"),
    ],
)
def test_plan_names_what_is_wrong_in_a_spec_file(
    tmp_path: Path, content: str | bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = tmp_path / "caches.json"
    specs.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["plan", "--specs", str(specs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
    assert str(specs) in err


def test_rich_output_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    assert main(["plan", "--tenants", "2"]) == 0
    out = capsys.readouterr().out
    assert "placeholder_resend" in out  # never truncated
    assert "┃" in out


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tenantry", "plan", "--plain", "--tenants", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 tenants x 32,500 keys" in done.stdout


# -- the real path: loopback TCP ---------------------------------------------------------


async def test_upstream_command_serves_traffic_and_faults_over_tcp() -> None:
    said: list[str] = []
    config = UpstreamConfig(port=0, rate=200, fault_every=0.2, faults=(Fault.UNAVAILABLE,))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_upstream, config, said.append)
        assert url.startswith("ws://127.0.0.1:")
        batches: list[Batch] = []
        async with (
            open_socket(url + "acme", tenant_id="acme") as sock,
            sock.events.subscribe() as subscription,
        ):
            async for batch in subscription:
                batches.append(batch)
        assert sock.close_reason is not None
        assert sock.close_reason.code == 503
        assert sum(b.count for b in batches) == sock.buffer.stats.delivered > 0
        nursery.cancel_scope.cancel()
    assert said[0] == "connection 0 on /acme"
    assert said[1] == "fault 503 on connection 0 (/acme)"


async def test_upstream_command_can_replace_a_tenants_older_connection() -> None:
    said: list[str] = []
    replaced = trio.Event()

    def say(line: str) -> None:
        said.append(line)
        if "replaced" in line:
            replaced.set()

    config = UpstreamConfig(port=0, rate=1, replace=True)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_upstream, config, say)
        async with (
            open_socket(url + "acme", tenant_id="acme") as first,
            open_socket(url + "acme", tenant_id="acme"),  # the second, to the same path
        ):
            await trio.sleep_forever()  # until the upstream closes the first: both bodies end
        assert first.close_reason is not None
        assert first.close_reason.code == 440
        await replaced.wait()
        nursery.cancel_scope.cancel()
    assert said == [
        "connection 0 on /acme",
        "connection 1 on /acme",
        "connection 0 on /acme replaced by a newer one (1 replacements so far)",
    ]


def test_a_real_soak_over_loopback_tcp() -> None:
    config = SoakConfig(
        tenants=3,
        duration=2.0,
        rate=40,
        fault_every=0.5,
        faults=(Fault.UNAVAILABLE, Fault.RESTART, Fault.ABORT, Fault.MALFORMED),
        spared=0.34,
        virtual=False,
        flush_interval=0.25,
    )
    report = trio.run(run_soak, config)
    assert [i.name for i in report.broken] == []
    assert report.events()["received"] > 100
    assert sum(report.faults().values()) > 0


def test_the_command_collects_less_while_it_runs_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    with collecting_less():
        assert gc.get_threshold() == (10_000, *before[1:])
    assert gc.get_threshold() == before


# -- what users get wrong with the network, and Ctrl-C --------------------------------------


def test_a_busy_port_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["upstream", "--port", str(port), "--plain"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"tenantry upstream: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def fake_proc(root: Path, *, unprivileged_from: int, capabilities: int) -> Path:
    """A /proc with the two facts `port_refusal` reads."""
    (root / "sys/net/ipv4").mkdir(parents=True)
    (root / "sys/net/ipv4/ip_unprivileged_port_start").write_text(f"{unprivileged_from}\n")
    (root / "self").mkdir()
    (root / "self/status").write_text(f"Name:\tpython\nCapEff:\t{capabilities:016x}\n")
    return root


@pytest.mark.parametrize(
    ("port", "unprivileged_from", "capabilities", "refused"),
    [
        (22, 1024, 0, True),  # an ordinary user
        (1023, 1024, 0, True),
        (1024, 1024, 0, False),
        (0, 1024, 0, False),  # any free port
        (22, 1024, 0x1FFFEFFFFFF, False),  # root
        (22, 1024, 1 << 10, False),  # CAP_NET_BIND_SERVICE alone
        (22, 0, 0, False),  # a system that lets anyone listen anywhere
    ],
)
def test_a_privileged_port_is_refused_unless_this_process_may_listen_there(
    tmp_path: Path, port: int, unprivileged_from: int, capabilities: int, refused: bool
) -> None:
    proc = fake_proc(tmp_path, unprivileged_from=unprivileged_from, capabilities=capabilities)
    assert (port_refusal(port, proc=proc) is not None) is refused
    assert port_refusal(22, proc=tmp_path / "elsewhere") is None  # no /proc: binding will say


def test_upstream_on_a_privileged_port_as_a_user_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user = fake_proc(tmp_path, unprivileged_from=1024, capabilities=0)
    monkeypatch.setattr(cli_main, "port_refusal", functools.partial(port_refusal, proc=user))
    assert main(["upstream", "--port", "22"]) == 2
    assert capsys.readouterr().err == (
        "tenantry upstream: error: port 22 is privileged: listening below 1024 needs root "
        "(or CAP_NET_BIND_SERVICE); try --port 8765\n"
    )


def interrupt(argv: list[str], *, running: str) -> tuple[int, str, list[str]]:
    """Run ``tenantry *argv*``, Ctrl-C it once a line starts with *running*.

    Returns the exit status, stdout, and the lines of stderr other than progress.
    """
    command = subprocess.Popen(  # noqa: S603 - the tenantry command, from this interpreter
        [sys.executable, "-m", "tenantry", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched = command.stderr if argv[0] == "soak" else command.stdout
    assert watched is not None
    first = watched.readline()
    assert first.startswith(running), first
    command.send_signal(signal.SIGINT)
    out, err = command.communicate(timeout=60)
    return command.returncode, first + out, [e for e in err.splitlines() if not e.startswith("[")]


def test_ctrl_c_stops_a_soak_with_its_report_and_exit_130() -> None:
    status, out, err = interrupt(
        ["soak", "--tenants", "5", "--duration", "100h", "--plain"], running="[  0%]"
    )
    assert status == 130
    assert len(err) == 1, err
    assert re.fullmatch(
        r"tenantry soak: interrupted after (\S+ \S+) of 4.17 d; the report covers those \1", err[0]
    )
    assert "(interrupted)" in out
    assert "held: closing a scope leaves no task behind" in out
    assert "BROKEN" not in out


def test_ctrl_c_stops_the_upstream_with_exit_130() -> None:
    status, out, err = interrupt(["upstream", "--port", "0", "--plain"], running="serving ws://")
    assert status == 130
    assert err == ["tenantry upstream: interrupted"]
    assert out.count("\n") == 1  # the line it printed when it began to serve
