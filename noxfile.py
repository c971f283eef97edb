"""Development sessions: ``nox -s soak tests lint typecheck docs bench reliability demo coverage``
and ``nox -s fleet bench_fleet``.

Tool versions are pinned here so that a new release of a linter cannot turn
CI red on a clean clone overnight.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

PYTHON = "3.11"
TEST_DEPS = [
    "pytest>=8.4",
    "pytest-trio>=0.8",
    "hypothesis>=6.100",
    "cachetools>=5.3",
    "trustme>=1.1",
    "websockets>=13",  # a peer we did not write: the benchmarks' reference client
]
RUFF = "ruff==0.17.6"
MYPY = ["mypy==2.4.1", "pytest>=8.4", "hypothesis>=6.100", "trustme>=1.1", "websockets>=13"]
DOCS_DEPS = ["sphinx>=8,<10", "furo>=2024.8.6"]
BENCH_DEPS = ["cachetools>=5.3", "websockets>=13"]
COVERAGE = "coverage>=7.4"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite; it starts its own PostgreSQL (the server binaries must be there)."""
    session.install("-e", ".[prometheus,cli,postgres]", *TEST_DEPS)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def fleet(session: nox.Session) -> None:
    """The process-kill suite at full size: 5 member processes, 60 tenants (prints failovers)."""
    session.install("-e", ".[cli,postgres]", *TEST_DEPS)
    session.run(
        "pytest",
        "-s",
        "tests/test_fleet_processes.py",
        *session.posargs,
        env={"TENANTRY_FLEET_FULL": "1"},
    )


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """The test suite under coverage, then the branch coverage of the library by file.

    Not a default session and not in CI: a figure to read, not a gate.
    """
    session.install("-e", ".[prometheus,cli,postgres]", *TEST_DEPS, COVERAGE)
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library and the tests (pyproject.toml says how each is checked)."""
    session.install("-e", ".[prometheus,cli,postgres]", *MYPY)
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Sphinx, warnings as errors."""
    session.install("-e", ".[prometheus,cli,postgres]", *DOCS_DEPS)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest"
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks; they print ratios against a baseline measured in the same run."""
    session.install("-e", ".", *BENCH_DEPS)
    session.run("python", "benchmarks/bench_cache.py")
    session.run("python", "benchmarks/bench_buffer.py")
    session.run("python", "benchmarks/bench_socket.py")
    session.run("python", "benchmarks/bench_scale.py")
    session.run("python", "benchmarks/bench_idle.py", "--profile")
    session.run("python", "benchmarks/bench_close.py")
    session.run("python", "benchmarks/bench_soak.py")
    session.run("python", "benchmarks/bench_soak.py", "--default-gc")


@nox.session(python=PYTHON)
def bench_fleet(session: nox.Session) -> None:
    """The fleet benchmark at full size (1,000 tenants, 50 kills; about ten minutes).

    It starts its own PostgreSQL (the server binaries must be there) and member
    processes; arguments after ``--`` replace ``--full`` (e.g. ``-- --tenants 200``).
    """
    session.install("-e", ".[postgres,cli]", *BENCH_DEPS, "pytest>=8.4")
    session.run("python", "benchmarks/bench_fleet.py", *(session.posargs or ["--full"]))


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """The reliability suite (marker ``soak``) at full size: CI runs it smaller."""
    session.install("-e", ".[prometheus,cli]", *TEST_DEPS)
    session.env["TENANTRY_SOAK_LIFECYCLES"] = "10000"
    session.env["TENANTRY_SOAK_MEMORY_SECONDS"] = "600"
    session.env["TENANTRY_SOAK_MEMORY_VIRTUAL_SECONDS"] = "7200"
    session.run("pytest", "-m", "soak", "-s", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The main job: ``tenantry soak`` (arguments after ``--`` go to it)."""
    session.install("-e", ".[cli]")
    session.run("tenantry", "soak", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """A short tour of the library's parts, from examples/tour.py."""
    session.install("-e", ".")
    session.run("python", "examples/tour.py", *session.posargs)
