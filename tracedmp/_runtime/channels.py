"""Which channel carried a pickle, told from the frames that called the pickler.

multiprocessing pickles in three places only (``Connection.send``, ``SimpleQueue.put`` and the
``Queue`` feeder thread), so the caller's code object says what carried the object, and the
caller's caller says who used that carrier (a Pool, a Manager, an executor, or the program).
The answer depends only on the two code objects, so it is cached on them, by identity: hashing
a code object hashes its constants, which costs microseconds.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from types import CodeType
    from typing import Any, Dict, Tuple

__all__ = ["CallSite", "attribute", "bind", "carrier_channel", "forget_call_sites",
           "pool_start_method", "receiver_channel"]

_send: Tuple[Any, Any] = (None, None)  # Connection.send, SimpleQueue.put
_recv: Tuple[Any, Any, Any] = (None, None, None)  # Connection.recv, SimpleQueue.get, Queue.get
_feed: Any = None  # Queue._feed, the feeder thread
# (id of carrier code, id of caller code) -> (caller code, channel); the code kept to check
# that an id was not reused by a newer code object.
_by_caller: Dict[Tuple[int, int], Tuple[Any, str]] = {}
_CACHE_LIMIT = 4096
_local = threading.local()


def bind(module: Any) -> None:
    """Learn the code objects of the carriers ``module`` (connection or queues) defines."""
    global _send, _recv, _feed
    if module.__name__ == "multiprocessing.connection":
        conn = module._ConnectionBase
        _send = (conn.send.__code__, _send[1])
        _recv = (conn.recv.__code__, _recv[1], _recv[2])
    else:
        _send = (_send[0], module.SimpleQueue.put.__code__)
        _recv = (_recv[0], module.SimpleQueue.get.__code__, module.Queue.get.__code__)
        _feed = module.Queue._feed.__code__
    _by_caller.clear()


def carrier_channel(frame: Any) -> str:
    """Channel for a pickle made by the function running in ``frame``."""
    code = frame.f_code
    if code is _send[0]:
        return _refine("pipe", code, frame.f_back, False)
    if code is _send[1]:
        return _refine("queue", code, frame.f_back, False)
    if code is _feed:
        return _feeder_channel(frame)
    return "other"


def receiver_channel(frame: Any) -> str:
    """Channel for an unpickling made by the function running in ``frame``."""
    code = frame.f_code
    if code is _recv[0]:
        return _refine("pipe", code, frame.f_back, True)
    if code is _recv[1] or code is _recv[2]:
        return _refine("queue", code, frame.f_back, True)
    return "other"


def _refine(base: str, code: Any, caller: Any, receiving: bool) -> str:
    if caller is None:
        return base
    caller_code = caller.f_code
    key = (id(code), id(caller_code))
    hit = _by_caller.get(key)
    if hit is not None and hit[0] is caller_code:
        return hit[1]
    channel = _classify(base, caller, receiving)
    if len(_by_caller) >= _CACHE_LIMIT:
        _by_caller.clear()
    _by_caller[key] = (caller_code, channel)
    return channel


def _classify(base: str, caller: Any, receiving: bool) -> str:
    module = caller.f_globals.get("__name__")
    name = caller.f_code.co_name
    if module == "multiprocessing.pool":
        # A worker sends results and receives tasks; the parent's handler threads the reverse.
        if name == "worker":
            return "pool.task" if receiving else "pool.result"
        if name == "_handle_tasks" and base == "pipe":
            return "pool.task"
        if name == "_handle_results" and base == "pipe":
            return "pool.result"
        return "pool.control"
    if module == "multiprocessing.managers":
        return "manager"
    if module == "concurrent.futures.process":
        return "executor.call" if receiving and name == "_process_worker" else "executor.result"
    return base


def _feeder_channel(frame: Any) -> str:
    # A feeder thread serves one queue for its whole life: look at the queue once per thread.
    channel = getattr(_local, "feed_channel", None)
    if channel is None:
        channel = "queue"
        try:
            onerror = _argument(frame.f_code, "onerror")
            owner = getattr(onerror, "__self__", None)
            if type(owner).__module__ == "concurrent.futures.process":
                channel = "executor.call"
        except Exception:
            pass
        _local.feed_channel = channel
    return channel


class CallSite:
    """Where a pickle was made: the pickling function's code and its caller's, the channel that
    tells, the start method when the site knows it, and the template of the record it made last
    (``records`` fills it in: a site sends the same kind of message again)."""

    __slots__ = ("code", "caller", "channel", "start_method", "template")

    def __init__(self, code: Any, caller: Any, channel: str, start_method: Any) -> None:
        self.code = code
        self.caller = caller
        self.channel = channel
        self.start_method = start_method
        self.template: Any = None


def attribute(frame: Any) -> CallSite:
    """The call site of a pickle made by the function in ``frame``."""
    # Most threads keep pickling from the same call site (a Pool's task handler, a feeder
    # thread, a worker's result put): remember the last one per thread.
    code = frame.f_code
    caller = frame.f_back
    caller_code = caller.f_code if caller is not None else None
    site = getattr(_local, "last", None)
    if site is not None and site.code is code and site.caller is caller_code:
        return site
    channel = carrier_channel(frame)
    if channel == "pool.control":  # rare, and the main thread may serve several Pools
        return CallSite(code, caller_code, channel, pool_start_method(frame, channel))
    method = pool_start_method(frame, channel) if channel == "pool.task" else None
    site = _local.last = CallSite(code, caller_code, channel, method)
    return site


def pool_start_method(frame: Any, channel: str) -> Any:
    """Start method of the Pool whose code called ``frame``'s function, if it can be told."""
    if channel == "pool.task":
        # The task-handler thread serves one Pool for its whole life: look once per thread.
        method = getattr(_local, "pool_method", False)
        if method is False:
            method = _start_method_of_workers(frame.f_back)
            _local.pool_method = method
        return method
    return _start_method_of_workers(frame.f_back)  # rare control messages: look every time


def _start_method_of_workers(caller: Any) -> Any:
    try:
        workers = _argument(caller.f_code, "pool")
        if workers is _MISSING:
            # A short-lived frame (a Pool method in the program's thread): its locals snapshot
            # goes with it.  Never read f_locals of a thread's long-lived frame: before 3.13 the
            # snapshot stays on the frame and keeps the objects it saw alive.
            local = caller.f_locals
            workers = local.get("pool")
            if not isinstance(workers, list):
                workers = getattr(local.get("self"), "_pool", None)
        if workers:
            return getattr(type(workers[0]), "_start_method", None)
    except Exception:
        pass
    return None


_MISSING = object()


def _argument(code: CodeType, name: str) -> Any:
    """Argument ``name`` of the function this thread was started to run, if ``code`` is it."""
    thread = threading.current_thread()
    target = getattr(thread, "_target", None)
    args = getattr(thread, "_args", None)
    if getattr(target, "__code__", None) is not code or not isinstance(args, tuple):
        return _MISSING
    try:
        return args[code.co_varnames.index(name)]
    except (ValueError, IndexError):
        return _MISSING


def forget_call_sites() -> None:
    # After a fork only the forking thread survives, and after a restart the settings may
    # differ: every thread starts its call-site cache afresh.
    global _local
    _local = threading.local()
