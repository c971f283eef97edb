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
    out = bench("bench_socket.py", "--events", "300", "--rounds", "1")
    assert "median ratio" in out


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


def test_idle_benchmark_runs(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("websockets")
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
