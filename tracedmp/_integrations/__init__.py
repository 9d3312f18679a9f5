"""Integrations: the libraries besides multiprocessing whose pickles tracedmp traces.

Each integration is a module of this package with ``install(tracer)`` and ``uninstall()``,
named here against the library module whose import brings it in.  While tracing runs,
``hooks`` installs an integration as soon as its library is imported (at once if it already
is; else right after its import, through ``child``'s import watcher), so a program that never
imports the library never imports the integration either.  ``hooks.remove_patches`` (and so
``tracedmp.uninstall()``) uninstalls every installed one.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List

__all__ = ["INTEGRATIONS", "imported", "install_all", "uninstall_all"]

# library module -> integration module (in this package).  Add a line per integration.
INTEGRATIONS: Dict[str, str] = {
    "concurrent.futures.interpreter": "interpreters",  # InterpreterPoolExecutor, Python 3.14+
}

_installed: List[Any] = []  # integration modules installed, in order


def install_all(tracer: Any, watch: Any) -> None:
    """Install each integration whose library is imported; ``watch(name)`` the others."""
    for library in INTEGRATIONS:
        if library in sys.modules:
            imported(library, tracer)
        else:
            watch(library)


def imported(library: str, tracer: Any) -> None:
    """``library`` was just imported (or already was) while tracing runs."""
    module = importlib.import_module(f"{__name__}.{INTEGRATIONS[library]}")
    if module not in _installed:
        module.install(tracer)
        _installed.append(module)


def uninstall_all() -> None:
    while _installed:
        _installed.pop().uninstall()
