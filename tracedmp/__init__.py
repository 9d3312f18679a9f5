"""tracedmp: ``multiprocessing``, traced.

``import tracedmp as multiprocessing`` gives the running Python's whole multiprocessing API, with
the same behaviour, and writes one JSON Lines record for every object pickled to cross a process
boundary: its size, how it travelled (by reference or by value), what carried it, the functions
and classes it names, and how long pickling took.  See https://tracedmp.readthedocs.io (docs/).

PYTEST_DONT_REWRITE: tracedmp ships a pytest plugin, so pytest marks this package for assertion
rewriting and would warn (an error under ``-W error``) where it was imported before pytest.
"""

import sys as _sys

TYPE_CHECKING = False  # what a spawned child imports must be light: it pays at every start
if TYPE_CHECKING:
    from multiprocessing import (
        AuthenticationError,
        BufferTooShort,
        ProcessError,
        TimeoutError,
        reducer,
    )
    from typing import Any

    from ._api import (
        Array,
        Barrier,
        BoundedSemaphore,
        Condition,
        Event,
        JoinableQueue,
        Lock,
        Manager,
        Pipe,
        Pool,
        Process,
        Queue,
        RLock,
        RawArray,
        RawValue,
        Semaphore,
        SimpleQueue,
        Value,
        active_children,
        allow_connection_pickling,
        cpu_count,
        current_process,
        freeze_support,
        get_all_start_methods,
        get_context,
        get_logger,
        get_start_method,
        log_to_stderr,
        parent_process,
        set_executable,
        set_forkserver_preload,
        set_start_method,
    )
    from ._capture import Capture, capture
    from ._errors import ConfigError, TraceFileError, TraceFormatError, TracedmpError
    from ._read.reader import Record, Trace, read_trace
    from ._read.report import summarize
    from ._runtime.config import Config
    from ._runtime.control import (
        configure,
        get_config,
        install,
        is_tracing,
        reset_config,
        uninstall,
    )
    from ._version import FORMAT_VERSION, __version__

# multiprocessing's names, then ours.
__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
] + [
    "FORMAT_VERSION",
    "Capture",
    "Config",
    "ConfigError",
    "TraceFileError",
    "TraceFormatError",
    "TracedmpError",
    "__version__",
    "capture",
    "configure",
    "get_config",
    "Record",
    "Trace",
    "install",
    "is_tracing",
    "read_trace",
    "reset_config",
    "summarize",
    "uninstall",
]


# Our names, imported from their modules on first use: a spawned child imports this package at
# every start (to unpickle tracedmp._runtime.child.restore) and needs none of them.
_LAZY = {
    **dict.fromkeys(("Array", "Barrier", "BoundedSemaphore", "Condition", "Event",
                     "JoinableQueue", "Lock", "Manager", "Pipe", "Pool", "Process", "Queue",
                     "RLock", "RawArray", "RawValue", "Semaphore", "SimpleQueue", "Value",
                     "active_children", "allow_connection_pickling", "cpu_count",
                     "current_process", "freeze_support", "get_all_start_methods",
                     "get_context", "get_logger", "get_start_method", "log_to_stderr",
                     "parent_process", "set_executable", "set_forkserver_preload",
                     "set_start_method"), "_api"),
    **dict.fromkeys(("Capture", "capture"), "_capture"),
    "Config": "_runtime.config",
    **dict.fromkeys(("configure", "get_config", "install", "is_tracing", "reset_config",
                     "uninstall"), "_runtime.control"),
    **dict.fromkeys(("ConfigError", "TraceFileError", "TraceFormatError", "TracedmpError"),
                    "_errors"),
    "FORMAT_VERSION": "_version",
    **dict.fromkeys(("Record", "Trace", "read_trace"), "_read.reader"),
    "summarize": "_read.report",
    "__version__": "_version",
}
# multiprocessing's own objects: naming them starts nothing.  Imported on first use too, since
# importing multiprocessing costs the `tracedmp` command ~10 ms before it runs anything.
_PLAIN = frozenset(("AuthenticationError", "BufferTooShort", "ProcessError", "TimeoutError",
                    "reducer"))


def __getattr__(name: str) -> "Any":
    module = _LAZY.get(name)
    if module is not None:
        child = _sys.modules.get(f"{__name__}._runtime.child")
        if child is not None:  # a spawned child's tracing starts before its API is used
            child.start_pending()
        import importlib  # not at the top: 3.11's imports warnings, in every command's start

        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    # Whatever else multiprocessing has (SUBDEBUG, a newer Python's additions, submodules such
    # as tracedmp.pool, tracedmp.managers or tracedmp.shared_memory) is multiprocessing's own
    # object, and reaching it through tracedmp is using tracedmp: tracing starts.  Not kept in
    # globals(), so that each use after an uninstall()/install() finds tracing as it is.
    if name.startswith("_"):
        raise AttributeError(f"module 'tracedmp' has no attribute {name!r}")
    import multiprocessing as _mp

    if name in _PLAIN:
        value = getattr(_mp, name)
        globals()[name] = value
        return value
    try:
        value = getattr(_mp, name)
    except AttributeError:
        try:
            import importlib

            value = importlib.import_module(f"multiprocessing.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'tracedmp' has no attribute {name!r}") from None
    from ._api import _activate_implicitly

    _activate_implicitly()
    return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(_LAZY) | _PLAIN)
