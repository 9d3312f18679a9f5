"""Integrations: the libraries besides multiprocessing whose pickles tracedmp traces.

Each integration is a module of this package with ``install(tracer)`` and ``uninstall()``,
named here against the library modules whose import brings it in.  While tracing runs,
``hooks`` installs an integration as soon as one of its library modules is imported (at once if
it already is; else right after its import, through ``child``'s import watcher), so a program
that never imports the library never imports the integration either.  ``install`` runs again at
the import of each further library module of it, and patches what it has not yet (an
integration whose patches live in several modules, like loky's pickler and its Process class).
``hooks.remove_patches`` (and so ``tracedmp.uninstall()``) uninstalls every installed one.

- ``loky``: loky's pickler and its ``loky`` start method (joblib's default backend, vendored as
  ``joblib.externals.loky``, and the loky package).
- ``joblib``: joblib's own Pool pickler (``backend="multiprocessing"``) and one ``parallel``
  record per ``Parallel`` call naming its backend.
- ``dask``: Dask distributed's protocol (``distributed.protocol``): every object it pickles to
  send, in the client, the scheduler and each worker.
- ``dask_plugin``: a ``distributed.Client`` registers plugins that trace the Dask workers and
  scheduler tracedmp did not start, forwarding their records into the client's trace.
- ``engines``: process-parallel engines whose traffic tracedmp does not see (Ray, pathos, ...):
  one ``untraced`` record when one is imported.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List

__all__ = ["INTEGRATIONS", "Patches", "imported", "install_all", "uninstall_all"]

# library module -> integration module (in this package).  Add a line per integration.
INTEGRATIONS: Dict[str, str] = {
    "joblib.externals.loky.backend.reduction": "loky",
    "joblib.externals.loky.backend.process": "loky",
    "loky.backend.reduction": "loky",
    "loky.backend.process": "loky",
    "joblib.pool": "joblib",
    "joblib.parallel": "joblib",
    "distributed": "dask",  # once the package is imported: its protocol, client, worker
    # engines.ENGINES: imported, they say that their traffic is not in the trace
    "ray": "engines",
    "multiprocess": "engines",
    "mpi4py": "engines",
    "ipyparallel": "engines",
    "pyspark": "engines",
    # dask_plugin: a traced Client has Dask processes tracedmp did not start forward their records
    "distributed.client": "dask_plugin",
    "concurrent.futures.interpreter": "interpreters",  # InterpreterPoolExecutor, Python 3.14+
}

_installed: List[Any] = []  # integration modules installed, in order


def install_all(tracer: Any, watch: Any, watch_finished: Any = None) -> None:
    """Install each integration whose library is imported; ``watch(name)`` the others, and
    ``watch_finished(name)`` those still being imported (their names not all bound yet)."""
    for library in INTEGRATIONS:
        module = sys.modules.get(library)
        if module is None:
            watch(library)
        elif watch_finished is not None and getattr(
                getattr(module, "__spec__", None), "_initializing", False):
            watch_finished(library)
        else:
            imported(library, tracer)


def imported(library: str, tracer: Any) -> None:
    """``library`` was just imported (or already was) while tracing runs."""
    module = importlib.import_module(f"{__name__}.{INTEGRATIONS[library]}")
    module.install(tracer)  # again for a further library module: it patches what is new
    if module not in _installed:
        _installed.append(module)


class Patches:
    """An integration's patches: each remembers what it replaced; ``restore`` puts back what
    is still ours, latest first."""

    def __init__(self) -> None:
        self._made: List[Any] = []

    def patch(self, owner: Any, name: str, replacement: Any) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, replacement)
        self._made.append((owner, name, original, replacement))

    def patched(self, owner: Any, name: str) -> bool:
        return any(o is owner and n == name for o, n, _, _ in self._made)

    def restore(self) -> None:
        while self._made:
            owner, name, original, replacement = self._made.pop()
            if owner.__dict__.get(name) is replacement:
                setattr(owner, name, original)


def uninstall_all() -> None:
    while _installed:
        _installed.pop().uninstall()
