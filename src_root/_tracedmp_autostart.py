"""tracedmp's startup hook, imported by tracedmp-autostart.pth when TRACEDMP_AUTOSTART is set.

``tracedmp run`` sets that variable, so every interpreter of the traced program (children started
by spawn, forkserver or ``python -E``/``-I`` included: .pth files still run for them) starts
tracing.  It must not import multiprocessing itself: it waits for the program to import it (or
``concurrent.futures.interpreter``, whose InterpreterPoolExecutor pickles across interpreters
and needs no multiprocessing), and installs tracedmp's hooks right after.

PYTEST_DONT_REWRITE: pytest marks a plugin's distribution (tracedmp's is one) for assertion
rewriting and warns about its modules already imported, as this one is before pytest starts.
"""

import os
import sys

_ENV = "TRACEDMP_AUTOSTART"
_NAMES = ("multiprocessing", "concurrent.futures.interpreter")  # the first one imported starts
_refused = False  # site may read the .pth file twice (a venv's site-packages): one line


def start() -> None:
    global _refused
    value = os.environ.get(_ENV, "")
    if not (value.isascii() and value.isdigit()):  # a pid (tracedmp run's), or 1 for none
        if not _refused:
            _refused = True
            sys.stderr.write(
                f"tracedmp: {_ENV}={value!r} is not a process id (tracedmp run sets it to the "
                "program's pid; to trace a program, use tracedmp run); tracing not started\n")
        return
    if any(name in sys.modules for name in _NAMES):
        _install()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _install() -> None:
    try:
        from tracedmp._runtime import config, control, tracer

        main = os.environ.get(_ENV) == str(os.getpid())
        if tracer.current is None:
            cfg = config.resolve()
            if cfg.enabled:
                control.activate(cfg, main=main)
    except Exception as exc:  # the program must run even if tracing cannot
        sys.stderr.write(f"tracedmp: tracing not started: {exc}\n")


class _Finder:
    """Finds nothing itself: it wraps the loader of ``multiprocessing`` (or of the interpreter
    pool) to run after it."""

    def find_spec(self, name, path=None, target=None):
        if name not in _NAMES:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader:
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Put the real loader back before anything can look at it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _install()
