"""Process-parallel engines whose traffic tracedmp does not see, and the record that says so.

These send their tasks over their own sockets with their own serialization, so a trace of a
program that uses one shows none of that traffic, and ``report`` must not then say "no known
problems".  When the program imports one (or had, when tracing started), that process writes
one ``untraced`` record naming it.  Nothing is patched.  Dask distributed is traced (``dask``):
it says it is not only when its protocol is not one ``dask`` knows.
"""

from __future__ import annotations

import sys

from .._runtime import tracer as _tracer

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, Set

__all__ = ["ENGINES", "install", "record", "uninstall"]

# module imported -> the engine, as its users know it (each one is in INTEGRATIONS too)
ENGINES: Dict[str, str] = {
    "ray": "ray",
    "multiprocess": "multiprocess (pathos)",
    "mpi4py": "mpi4py",
    "ipyparallel": "ipyparallel",
    "pyspark": "pyspark",
}

_written: Set[str] = set()  # engines this tracer's trace names already


def install(tracer: Any) -> None:
    for module, engine in ENGINES.items():
        if module in sys.modules:
            record(tracer, module, engine)


def record(tracer: Any, module: str, engine: str) -> None:
    """One ``untraced`` record for ``engine`` (imported as ``module``) in this trace."""
    if module not in _written:
        _written.add(module)
        rec = _tracer.base_record("untraced", None)
        rec["engine"] = engine
        rec["module"] = module
        tracer.emit(rec)


def uninstall() -> None:
    _written.clear()  # a new trace names them again
