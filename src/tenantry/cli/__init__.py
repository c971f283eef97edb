"""The ``tenantry`` command: ``soak``, ``plan``, ``upstream`` and ``member`` (`main`).

`run_soak` and `SoakConfig` are importable too, for benchmarks and for tests
that want a fleet under faults without the command line;
`fake_upstream_spec` is the spec factory ``tenantry member`` can run
against ``tenantry upstream --replace``.
"""

from ._config import SoakConfig
from ._faults import Fault
from ._main import collecting_less, main
from ._member import fake_upstream_spec
from ._report import Invariant, SoakProgress, SoakReport
from ._soak import run_soak

__all__ = [
    "Fault",
    "Invariant",
    "SoakConfig",
    "SoakProgress",
    "SoakReport",
    "collecting_less",
    "fake_upstream_spec",
    "main",
    "run_soak",
]
