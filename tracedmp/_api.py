"""multiprocessing's own API, with tracing started by the first use of it.

Every function of ``multiprocessing``'s namespace is here a thin function that starts tracing
(once, unless it is off) and then calls the stdlib's default context: same arguments, results,
exceptions, signature and docstring, and it pickles by name as the stdlib's does.  ``Process`` is
the one subclass, so that ``tracedmp.Process(...).start()`` starts tracing too.  Exceptions,
``reducer`` and submodules stay the stdlib's own objects (the package's ``__getattr__`` starts
tracing when a submodule is reached through it).
"""

from __future__ import annotations

import functools
import multiprocessing as _mp
from multiprocessing import context as _context

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = [
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock",
    "Manager", "Pipe", "Pool", "Process", "Queue", "RLock", "RawArray", "RawValue", "Semaphore",
    "SimpleQueue", "Value", "active_children", "allow_connection_pickling", "cpu_count",
    "current_process", "freeze_support", "get_all_start_methods", "get_context", "get_logger",
    "get_start_method", "log_to_stderr", "parent_process", "set_executable",
    "set_forkserver_preload", "set_start_method",
]


def _activate_implicitly() -> None:
    # control is imported on first call, not with this module: a spawned child that unpickles a
    # tracedmp.Process loads this module, and need not load the runtime until it uses something.
    global _activate_implicitly
    from ._runtime.control import activate_implicitly

    _activate_implicitly = activate_implicitly
    activate_implicitly()


def _activating(name: str) -> Callable[..., Any]:
    stdlib = getattr(_context._default_context, name)

    @functools.wraps(stdlib)
    def call(*args: Any, **kwargs: Any) -> Any:
        _activate_implicitly()
        return getattr(_context._default_context, name)(*args, **kwargs)

    call.__module__ = "tracedmp"
    call.__qualname__ = name  # pickled by name as tracedmp.<name>, not BaseContext.<name>
    return call


class Process(_mp.Process):
    """``multiprocessing.Process``; starting one starts tracing, unless tracing is off."""

    def start(self) -> None:
        _activate_implicitly()
        super().start()


Process.__module__ = "tracedmp"

Array = _activating("Array")
Barrier = _activating("Barrier")
BoundedSemaphore = _activating("BoundedSemaphore")
Condition = _activating("Condition")
Event = _activating("Event")
JoinableQueue = _activating("JoinableQueue")
Lock = _activating("Lock")
Manager = _activating("Manager")
Pipe = _activating("Pipe")
Pool = _activating("Pool")
Queue = _activating("Queue")
RLock = _activating("RLock")
RawArray = _activating("RawArray")
RawValue = _activating("RawValue")
Semaphore = _activating("Semaphore")
SimpleQueue = _activating("SimpleQueue")
Value = _activating("Value")
active_children = _activating("active_children")
allow_connection_pickling = _activating("allow_connection_pickling")
cpu_count = _activating("cpu_count")
current_process = _activating("current_process")
freeze_support = _activating("freeze_support")
get_all_start_methods = _activating("get_all_start_methods")
get_context = _activating("get_context")
get_logger = _activating("get_logger")
get_start_method = _activating("get_start_method")
log_to_stderr = _activating("log_to_stderr")
parent_process = _activating("parent_process")
set_executable = _activating("set_executable")
set_forkserver_preload = _activating("set_forkserver_preload")
set_start_method = _activating("set_start_method")
