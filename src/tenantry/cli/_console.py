"""What the command prints: with rich when installed (``tenantry[cli]``), plain text otherwise.

Progress goes to stderr and results to stdout, so that ``tenantry soak >
report.txt`` keeps the report clean. Rich's own refresh thread is never
started: the soak calls `Output.progress` from its Trio task, and the
output redraws at most ten times a second of wall-clock time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, Protocol

from ._report import SoakProgress

__all__ = ["Output", "open_output"]

Rows = Sequence[tuple[str, str]]
_REDRAW_EVERY = 0.1


class Output(Protocol):
    """Where the command's progress and results go."""

    def progress(self, progress: SoakProgress) -> None: ...

    def sections(self, sections: Sequence[tuple[str, Rows]]) -> None: ...

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None: ...

    def line(self, text: str) -> None: ...


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


def _status(p: SoakProgress) -> str:
    return (
        f"{_clock(p.elapsed)} of {_clock(p.duration)}, {p.wall:.1f} s wall, "
        f"{p.connected}/{p.tenants} connected, {p.flushes_per_minute:,.0f} flushes/min, "
        f"{p.events_per_second:,.0f} events/s"
    )


class _Plain:
    """Plain text: a progress line every 10 %, aligned rows."""

    def __init__(self, out: IO[str], err: IO[str], *, quiet: bool) -> None:
        self._out, self._err, self._quiet = out, err, quiet
        self._shown = -1

    def progress(self, progress: SoakProgress) -> None:
        tenth = int(10 * progress.elapsed / progress.duration + 1e-9)
        if self._quiet or tenth == self._shown:
            return
        self._shown = tenth
        print(f"[{10 * tenth:3d}%] {_status(progress)}", file=self._err, flush=True)

    def sections(self, sections: Sequence[tuple[str, Rows]]) -> None:
        for title, rows in sections:
            width = max((len(label) for label, _ in rows), default=0)
            print(f"\n{title}", file=self._out)
            for label, value in rows:
                print(f"  {label:<{width}}  {value}", file=self._out)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        print(title, file=self._out)
        for row in [header, *rows]:
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            print("  " + "  ".join(cells).rstrip(), file=self._out)

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)


class _Rich:
    """rich: a live progress bar on stderr, tables on stdout."""

    def __init__(self, out: IO[str], err: IO[str], *, quiet: bool) -> None:
        from rich.console import Console  # noqa: PLC0415 - the optional extra
        from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

        self._console = Console(file=out)
        self._bar = Progress(
            TextColumn("soak"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=err),
            auto_refresh=False,  # no refresh thread: redrawn from the Trio task
            transient=False,
            disable=quiet,
        )
        self._task: Any = None
        self._drawn = 0.0

    def progress(self, progress: SoakProgress) -> None:
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("soak", total=progress.duration, status="")
        self._bar.update(self._task, completed=progress.elapsed, status=_status(progress))
        now = time.perf_counter()
        if now - self._drawn >= _REDRAW_EVERY or progress.elapsed >= progress.duration:
            self._drawn = now
            self._bar.refresh()

    def finish(self) -> None:
        if self._task is not None:
            self._bar.refresh()
            self._bar.stop()

    def sections(self, sections: Sequence[tuple[str, Rows]]) -> None:
        from rich.table import Table  # noqa: PLC0415

        for title, rows in sections:
            table = Table(title=title, title_justify="left", show_header=False, box=None)
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                style = "red" if label.startswith("BROKEN") else None
                table.add_row(label, value, style=style)
            self._console.print(table)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        from rich.table import Table  # noqa: PLC0415

        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        self._console.print(table)

    def line(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False)


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


@contextmanager
def open_output(*, plain: bool = False, quiet: bool = False) -> Iterator[Output]:
    """Rich output if it is installed and not *plain*; the progress bar ends with the block."""
    if plain or not _rich_available():
        yield _Plain(sys.stdout, sys.stderr, quiet=quiet)
        return
    output = _Rich(sys.stdout, sys.stderr, quiet=quiet)
    try:
        yield output
    finally:
        output.finish()
