"""``concurrent.futures.InterpreterPoolExecutor`` (Python 3.14): calls into other interpreters.

An interpreter call (``Interpreter.call``, which the executor's workers make for every task)
shares its function and arguments with the other interpreter natively where it can (numbers,
strings, queues, functions that use no globals) and by *pickling* the rest; the result comes
back the same way.  The pickling is done by CPython's C code, which calls the ``pickle``
module's ``dumps`` and ``loads`` from ``Interpreter._call``::

    Interpreter._call ─> _interpreters.call ─> pickle.dumps(part)  ─> interpreter.call record
                                             <─ pickle.loads(result) ─> interpreter.result record
    WorkerContext.run <─ results queue (a task's exception) ─ pickle.loads ─> interpreter.result

So this integration wraps ``Interpreter._call`` (and ``WorkerContext.run``, for the results
queue), and while any thread is inside one of them, ``pickle.dumps`` and ``pickle.loads`` are
wrappers that record what this thread pickles inside a call (a thread-local flag) and pass
everything else straight through; outside calls they are the originals again (a wrapper cost
the program's own ``pickle.dumps`` ~0.5 us a call).  Inside a call, ``dumps`` pickles with a plain
``pickle.Pickler`` subclass that notes the functions and classes it saves (the same bytes as
``pickle.dumps``: the other interpreter reads them), and ``loads`` unpickles with an
``Unpickler`` that notes the names it looks up.  The other interpreter runs untraced (tracedmp
is not imported there: its extension modules may not support subinterpreters), so a result's
``duration_ns`` is the time this interpreter took to *unpickle* it.

A part that fails to pickle may be recovered (CPython tries another way of sharing it); only
when the call then raises ``NotShareableError`` — what the program sees — is one
``pickle_error`` written: its ``error`` is that exception, its ``cause`` what pickle raised for
the first part that failed (whose type and path the record gives).
"""

from __future__ import annotations

import importlib
import io
import pickle
import threading
import types
from time import perf_counter_ns

from .._runtime import tracer as _tracer
from .._runtime.picklers import _CALLABLE_TYPES, record_error
from .._runtime.records import record_pickle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple, Type

__all__ = ["install", "uninstall"]

_patches: List[Tuple[Any, str, Any, Any]] = []
_MAX_ERROR = 500


class _Call:
    """One interpreter call in progress in this thread: the parts that failed to pickle."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures: List[Tuple[Any, BaseException, int]] = []


class _State(threading.local):
    # Defaults on the class: a miss raising AttributeError inside getattr() cost ~1 us.
    call: Optional[_Call] = None
    run = False


_local = _State()


class _Recorder(pickle.Pickler):
    """pickle.dumps's pickler, noting each function and class it saves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refs: List[Any] = []

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _CALLABLE_TYPES or isinstance(obj, type):
            self.refs.append(obj)
        return NotImplemented


class _Reader(pickle.Unpickler):
    """pickle.loads's unpickler, noting each name it looks up (what the pickle names)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refs: List[Any] = []

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        self.refs.append(found)
        return found


def _traced_dumps(original: Any) -> Any:
    def dumps(*args: Any, **kwargs: Any) -> Any:
        call = _local.call
        tracer = _tracer.current
        if call is None or tracer is None:
            return original(*args, **kwargs)
        if len(args) != 1:
            return original(*args, **kwargs)
        obj = args[0]
        buf = io.BytesIO()
        pickler = _Recorder(buf, **kwargs)
        start = perf_counter_ns()
        try:
            pickler.dump(obj)
        except BaseException as exc:
            call.failures.append((obj, exc, perf_counter_ns() - start))
            raise
        duration = perf_counter_ns() - start
        data = buf.getvalue()
        _tracer.safely(_record, tracer, obj, len(data), duration, pickler.refs,
                       "interpreter.call")
        return data

    dumps.__wrapped__ = original  # type: ignore[attr-defined]
    return dumps


def _traced_loads(original: Any) -> Any:
    def loads(*args: Any, **kwargs: Any) -> Any:
        tracer = _tracer.current
        if _local.call is None and not _local.run or tracer is None or len(args) != 1:
            return original(*args, **kwargs)
        data = args[0]
        start = perf_counter_ns()
        reader = _Reader(io.BytesIO(data), **kwargs)
        obj = reader.load()
        duration = perf_counter_ns() - start
        _tracer.safely(_record, tracer, obj, memoryview(data).nbytes, duration, reader.refs,
                       "interpreter.result")
        return obj

    loads.__wrapped__ = original  # type: ignore[attr-defined]
    return loads


def _record(tracer: Any, obj: Any, size: int, duration: int, refs: List[Any],
            channel: str) -> None:
    record_pickle(tracer, obj, size, duration, refs, None, channel, None, None)


# pickle's functions, wrapped while interpreter calls are in progress: [(name, original,
# wrapper)], and how many calls are (in all threads).
_swaps: List[Tuple[str, Any, Any]] = []
_inside = 0
_swap_lock = threading.Lock()


def _enter() -> None:
    global _inside
    with _swap_lock:
        _inside += 1
        if _inside == 1:
            for name, original, wrapper in _swaps:
                if vars(pickle).get(name) is original:  # not if the program put its own
                    setattr(pickle, name, wrapper)


def _leave() -> None:
    global _inside
    with _swap_lock:
        _inside -= 1
        if _inside == 0:
            _unswap()


def _unswap() -> None:
    for name, original, wrapper in _swaps:
        if vars(pickle).get(name) is wrapper:
            setattr(pickle, name, original)


def _traced_call(original: Any, not_shareable: Type[BaseException]) -> Any:
    def _call(self: Any, callable: Any, args: Any, kwargs: Any) -> Any:
        if _tracer.current is None:
            return original(self, callable, args, kwargs)
        outer = _local.call
        call = _local.call = _Call()
        start = perf_counter_ns()
        _enter()
        try:
            return original(self, callable, args, kwargs)
        except not_shareable as exc:
            tracer = _tracer.current
            if tracer is not None:
                _tracer.safely(_record_failure, tracer, call, exc, perf_counter_ns() - start)
            raise
        finally:
            _local.call = outer
            _leave()

    _call.__wrapped__ = original  # type: ignore[attr-defined]
    return _call


def _traced_run(original: Any) -> Any:
    def run(self: Any, task: Any) -> Any:
        if _tracer.current is None:
            return original(self, task)
        outer = _local.run
        _local.run = True  # a task's exception comes back through the results queue
        _enter()
        try:
            return original(self, task)
        finally:
            _local.run = outer
            _leave()

    run.__wrapped__ = original  # type: ignore[attr-defined]
    return run


def _record_failure(tracer: Any, call: _Call, exc: BaseException, duration: int) -> None:
    def said(e: BaseException) -> str:
        message = str(e)
        if len(message) > _MAX_ERROR:
            message = message[:_MAX_ERROR] + "..."
        return f"{type(e).__name__}: {message}" if message else type(e).__name__

    if call.failures:  # the first part that failed to pickle is what could not be shared
        obj, cause, spent = call.failures[0]
        extra = {"error": said(exc), "cause": said(cause)}
        if isinstance(obj, types.FunctionType):  # cloudpickle, the usual way out, has no say here
            extra["hint"] = ("a function defined inside another function (or a lambda) cannot "
                             "reach another interpreter: define it at module level, or make it "
                             "use no globals and no closure (such functions are shared as code)")
        record_error(tracer, obj, cause, spent, "interpreter.call", None, extra)
    else:  # nothing failed here: the result failed to pickle in the other interpreter
        rec = _tracer.base_record("pickle_error", None)
        rec.update(channel="interpreter.result", type=None, pickler="pickle",
                   duration_ns=duration, error=said(exc), path=None,
                   hint="return something picklable from the function (its result is pickled "
                        "in the worker interpreter to come back)")
        tracer.emit(rec)


def _patch(owner: Any, name: str, replacement: Any) -> None:
    original = vars(owner)[name]
    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def install(tracer: Any) -> None:
    uninstall()
    # New in 3.14: looked up by name, so that type checking for older Pythons passes.
    interpreters: Any = importlib.import_module("concurrent.interpreters")
    executor: Any = importlib.import_module("concurrent.futures.interpreter")

    _swaps[:] = [("dumps", pickle.dumps, _traced_dumps(pickle.dumps)),
                 ("loads", pickle.loads, _traced_loads(pickle.loads))]
    _patch(interpreters.Interpreter, "_call",
           _traced_call(interpreters.Interpreter._call, interpreters.NotShareableError))
    _patch(executor.WorkerContext, "run", _traced_run(executor.WorkerContext.run))


def uninstall() -> None:
    with _swap_lock:  # a call still in progress finds the originals back when it ends
        _unswap()
        _swaps.clear()
    while _patches:
        owner, name, original, replacement = _patches.pop()
        if vars(owner).get(name) is replacement:  # only what is still ours
            setattr(owner, name, original)
    for name in ("call", "run"):
        _local.__dict__.pop(name, None)
