"""The ``tenantry`` command: ``soak``, ``plan`` and ``upstream`` (`main`).

`run_soak` and `SoakConfig` are importable too, for benchmarks and for tests
that want a fleet under faults without the command line.
"""

from ._config import SoakConfig
from ._faults import Fault
from ._main import collecting_less, main
from ._report import Invariant, SoakProgress, SoakReport
from ._soak import run_soak

__all__ = [
    "Fault",
    "Invariant",
    "SoakConfig",
    "SoakProgress",
    "SoakReport",
    "collecting_less",
    "main",
    "run_soak",
]
