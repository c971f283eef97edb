"""The benchmarks must keep running: a tiny-size smoke run of each."""

from __future__ import annotations

import re
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"

Bench = Callable[..., str]
"""Runs a benchmark script with the arguments given; returns what it printed."""


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Bench:
    def run(script: str, *args: str) -> str:
        monkeypatch.setattr(sys, "argv", [script, *args])
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
        return capsys.readouterr().out

    return run


def test_cache_benchmark_runs(bench: Bench) -> None:
    pytest.importorskip("cachetools")
    out = bench(
        "bench_cache.py", "--ops", "3000", "--rounds", "1", "--chunk", "1000", "--entries", "2000"
    )
    assert "median ratio" in out
    assert "bytes" in out


def test_buffer_benchmark_runs(bench: Bench) -> None:
    out = bench("bench_buffer.py", "--events", "5000", "--rounds", "1", "--chunk", "2000")
    assert "median ratio" in out


# trio-websocket's own open_websocket_url, the benchmark's baseline, leaves its TCP
# socket to the garbage collector when the server closes first.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_socket_benchmark_runs(bench: Bench) -> None:
    out = bench("bench_socket.py", "--events", "300", "--rounds", "1", "--many", "3")
    for contender in (
        "raw trio-websocket",
        "tenantry transport",
        "tenantry default",
        "tenantry buffered",
        "websockets (asyncio)",
        "json floor",
    ):
        assert len(re.findall(rf"  {re.escape(contender)} +[\d,]+ +\d+\.\d\d +\d", out)) == 2
    assert re.search(r"1 connection\(s\) x 300 events", out)
    assert re.search(r"3 connection\(s\) x 100 events", out)
    assert len(re.findall(r"ratio per round, tenantry transport: \d+\.\d\d\n", out)) == 2
    assert out.count("upstream alone (client discards bytes)") == 2
    assert len(re.findall("HARNESS-LIMITED|HARNESS CHECK FAILED|harness check: ok", out)) == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_socket_benchmark_profiles(bench: Bench) -> None:
    out = bench("bench_socket.py", "--profile", "default", "--connections", "2", "--events", "200")
    assert "profile of tenantry default, 2 connection(s), 200 events" in out
    for category in (
        "wsproto",
        "tenantry transport",
        "trio scheduling",
        "tenantry stream",
        "batch objects",
    ):
        assert re.search(rf"  {category} +\d+\.\d%", out), category
    assert "top functions by own time:" in out


def test_scale_benchmark_runs(bench: Bench) -> None:
    out = bench("bench_scale.py", "--tenants", "10", "--idle", "0.1", "--settle", "0.1")
    for figure in ("connect all", "CPU idle over", "all back after", "tear all down"):
        assert figure in out
    assert "RSS per idle socket" in out or "needs /proc/self/statm" in out
    assert re.search(r"handler running \(client\)( +\d+\.\d{3}){5}\n", out)
    assert re.search(r"max sockets per tenant +1 ", out)
    assert "PROBLEM" not in out


def test_soak_benchmark_runs(bench: Bench) -> None:
    out = bench("bench_soak.py", "--tenants", "5", "--duration", "300", "--trace-growth", "3")
    assert "x real time" in out
    assert re.search(r"events lost +0\n", out)
    assert "RSS after warm-up" in out
    assert "traced growth from the first quarter to the end" in out


def test_close_benchmark_runs(bench: Bench) -> None:
    out = bench("bench_close.py", "--tenants", "3", "--rounds", "1")
    assert re.search(r"hub of 3 tenants cancelled +\d+\.\d{3} s\n", out)
    assert re.search(r"socket of a dead peer \(408\) +\d+\.\d{3} s\n", out)


def socket_report(
    raw: float, alone: float, upstream: float, capsys: pytest.CaptureFixture[str]
) -> str:
    """What bench_socket.py's report says of one round with these rates (events/s)."""
    module = runpy.run_path(str(BENCHMARKS / "bench_socket.py"))
    rates = {"raw trio-websocket": [raw], "tenantry default": [raw / 2], "tenantry buffered": [raw]}
    cpu = {"raw trio-websocket": [1e-5], "tenantry default": [4e-5], "tenantry buffered": [1e-5]}
    module["report"](
        1000, 1, 1, names=list(rates), rates=rates, cpu=cpu, shares=[upstream], alone=[alone]
    )
    return capsys.readouterr().out


def test_socket_benchmark_says_when_the_harness_is_the_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok = socket_report(60_000, 1_000_000, 0.1, capsys)
    assert "harness check: ok" in ok
    assert re.search(r"  tenantry default +30,000 +0\.50 +40\.00 +0\.25\n", ok)
    assert re.search(r"  client CPU during the raw loop +60% of a core\n", ok)
    slow_upstream = socket_report(60_000, 100_000, 0.1, capsys)
    assert "HARNESS-LIMITED: ratios measure the upstream" in slow_upstream
    busy_upstream = socket_report(60_000, 1_000_000, 0.9, capsys)
    assert "HARNESS-LIMITED: ratios measure the upstream" in busy_upstream
    slow_client = socket_report(40_000, 1_000_000, 0.1, capsys)
    assert "HARNESS CHECK FAILED: the raw loop reached 40,000 events/s" in slow_client
    assert "HARNESS-LIMITED" not in slow_client


def test_socket_benchmark_reads_a_py_spy_profile(bench: Bench, tmp_path: Path) -> None:
    samples = tmp_path / "raw.txt"
    samples.write_text(
        "<module> (b.py:1);run_in_process (bench_socket.py:2);f (wsproto/x.py:3) 3\n"
        "run_in_process (bench_socket.py:2);g (tenantry/_stream.py:4);h (contextlib.py:5) 1\n"
        "run_in_process (bench_socket.py:2);receive (tenantry/_transport.py:6);"
        "receive_data (wsproto/__init__.py:7) 2\n"
        "run_in_process (bench_socket.py:2);receive (tenantry/_transport.py:6) 2\n"
        "run_in_process (bench_socket.py:2);_nonblocking_helper (trio/_socket.py:8) 2\n"
        "<module> (b.py:1);import_it (<frozen importlib._bootstrap>:1) 50\n"
    )
    out = bench("bench_socket.py", "--collapsed", str(samples))
    assert f"py-spy samples from {samples}: 10\n" in out
    assert re.search(r"  wsproto +50\.0%", out)
    assert re.search(r"  tenantry transport +20\.0%", out)
    assert re.search(r"  socket syscalls +20\.0%", out)
    assert re.search(r"  tenantry stream +10\.0%", out)


def test_idle_benchmark_runs(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it shares bench_scale.py's helpers
    out = bench(
        "bench_idle.py",
        *("--connections", "4", "--rounds", "1", "--idle", "0.1", "--settle", "0.1"),
        "--profile",
    )
    for kind in ("tenantry", "trio-websocket", "websockets"):
        assert re.search(rf"\n  {kind} +\d+\.\d +\d+\.\d +\d+\.\d{{3}} ", out), kind
    for figure in ("RSS per idle connection", "connect all"):
        assert re.search(rf"tenantry / trio-websocket, {figure}: \d+\.\d\dx \(target", out)
    assert "cProfile of the connect phase" in out
    assert "bytes held per idle tenant" in out
