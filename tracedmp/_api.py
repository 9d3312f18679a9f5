"""multiprocessing's own API, with tracing started by the first use of it.

Everything here is the stdlib's object, or a thin function that starts tracing (once, unless it
is off) and then calls the stdlib's default context: same arguments, results and exceptions.
``Process`` is the one subclass, so that ``tracedmp.Process(...).start()`` starts tracing too.
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
    "SimpleQueue", "Value", "get_context",
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
get_context = _activating("get_context")
