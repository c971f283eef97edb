"""Units as the command line reads and writes them: durations and sizes."""

from __future__ import annotations

import argparse
import re

__all__ = ["duration", "duration_text", "size_text"]

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h`` or ``1h30m`` as seconds (an argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m or 1h)")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be > 0, got {text!r}")
    return total


def duration_text(seconds: float) -> str:
    """``259200`` as ``3 d``, ``360000`` as ``4.17 d``, ``90`` as ``1.5 min``."""
    if seconds >= 86400:
        return f"{seconds / 86400:.3g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def size_text(size: float) -> str:
    """``512`` as ``512 B``, ``1536`` as ``1.5 KiB``; GiB is the largest unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover
