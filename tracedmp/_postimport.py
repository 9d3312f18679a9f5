"""Run a function right after a module is imported, or now if it already is.

tracedmp patches ``multiprocessing.connection`` and ``multiprocessing.queues`` only once they are
imported: a spawned child that never uses a pipe or a queue does not pay ~10 ms to import them.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict

__all__ = ["cancel", "when_imported"]

_pending: Dict[str, Callable[[Any], None]] = {}


def when_imported(name: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` now if ``name`` is imported, else right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _pending[name] = callback
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def cancel() -> None:
    """Forget every callback not yet run."""
    _pending.clear()
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


class _Finder:
    """Finds nothing itself: wraps the real loader of a watched module to run the callback."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, name)
        return spec


class _Loader:
    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        # The real loader goes back before anything can look at it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        callback = _pending.pop(self._name, None)
        if not _pending:
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
        if callback is not None:
            callback(module)
