"""The docs' examples, run as written."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import tenantry
from tenantry.testing import open_fake_upstream

ROOT = Path(__file__).resolve().parent.parent


async def idle(sock: tenantry.Socket) -> None:
    await trio.sleep_forever()


async def test_503s_back_off_and_401_stops(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_upstream() as upstream, tenantry.open_hub(seed=1) as hub:
        policy = tenantry.ReconnectPolicy(backoff=tenantry.Backoff(jitter=0))
        await hub.add(
            tenantry.TenantSpec("acme", upstream.connector_to("/acme"), idle, policy=policy)
        )
        times = []
        for n in range(1, 4):
            connection = await upstream.wait_connections(n, path="/acme")
            times.append(trio.current_time())
            await connection.close(4503)  # closes before stable_after
        last = await upstream.wait_connections(4, path="/acme")
        times.append(trio.current_time())
        assert [b - a for a, b in itertools.pairwise(times)] == [1, 2, 5]
        await last.close(4401)  # logged out: stop
        await trio.sleep(3600)
        [status] = hub.status()
        assert status.state is tenantry.TenantState.STOPPED
        assert len(upstream.connections) == 4


def test_testing_guide_runs_as_shown_in_a_fresh_project(tmp_path: Path) -> None:
    """Every test the testing guide shows passes in a project configured as it says."""
    guide = (ROOT / "docs" / "testing.rst").read_text(encoding="utf-8")
    blocks = [
        textwrap.dedent(match.group(1))
        for match in re.finditer(r"::\n\n((?:    .*\n|\n)+)", guide)
        if "def test_" in match.group(1)
    ]
    assert len(blocks) >= 4
    for n, block in enumerate(blocks):
        (tmp_path / f"test_guide_{n}.py").write_text(block, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntrio_mode = true\n")
    run = subprocess.run(  # noqa: S603 - pytest on the guide's examples, this interpreter
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(tenantry.__file__).parent.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(blocks)} passed" in run.stdout, run.stdout


async def test_readme_example_consolidates_as_its_comment_says(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's embedding example, pointed at a fake upstream: 500 events
    over 5 s arrive in a few merged batches, not one batch per event."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert match is not None
    code = match.group(1).replace('"wss://upstream.example/ws"', "upstream.connector")
    code = code.replace("        ...  #", "        await traffic()  #")
    async with open_fake_upstream() as upstream:

        async def traffic() -> None:
            connection = await upstream.wait_connections(1)
            await connection.stream(500, keys=500, rate=100)
            await trio.sleep(10)

        namespace: dict[str, Any] = {"upstream": upstream, "traffic": traffic}
        exec(code, namespace)  # noqa: S102 - the README's own example
        await namespace["main"]()
    counts = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    assert sum(counts) == 500
    assert len(counts) <= 3, counts
