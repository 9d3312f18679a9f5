"""joblib: its own Pool's pickler, and which backend each ``Parallel`` call ran on.

- ``backend="multiprocessing"`` runs a ``MemmappingPool``, a multiprocessing Pool whose task and
  result queues are joblib's ``CustomizablePicklingQueue``: each message is pickled by
  ``joblib.pool.CustomizablePickler`` (the stdlib's pickler with joblib's memmapping reducers)
  and sent as bytes, so multiprocessing's pickler never sees it.  The queue looks the class up
  by name at each send: it is replaced with a tracing subclass (``joblib.task`` in the parent's
  task-handler thread, ``joblib.result`` in the workers).
- The loky backend (the default) is traced in ``loky``.
- ``Parallel._initialize_backend`` settles the backend of a call (falling back to sequential for
  one job): each call writes one ``parallel`` record naming it and whether it pickles, so a
  threading-backend program's trace says that nothing was pickled, rather than being empty.
"""

from __future__ import annotations

import sys
import threading
from time import perf_counter_ns

from .._runtime import tracer as _tracer
from .._runtime.picklers import _CALLABLE_TYPES, record_error
from .._runtime.records import record_pickle
from .._runtime.tracer import internal_error, safely
from . import Patches, arrays

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Tuple

__all__ = ["install", "uninstall"]

_patches = Patches()


def install(tracer: Any) -> None:
    """Patch joblib's pool and parallel modules that are imported."""
    # What a joblib of another shape lacks stays unpatched: untraced, the program unchanged.
    pool = sys.modules.get("joblib.pool")
    pickler = vars(pool).get("CustomizablePickler") if pool is not None else None
    if isinstance(pickler, type) and not _patches.patched(pool, "CustomizablePickler"):
        _patches.patch(pool, "CustomizablePickler", _tracing_pool_pickler(pickler))
    klass = getattr(sys.modules.get("joblib.parallel"), "Parallel", None)
    initialize = vars(klass).get("_initialize_backend") if isinstance(klass, type) else None
    if callable(initialize) and not _patches.patched(klass, "_initialize_backend"):
        _patches.patch(klass, "_initialize_backend", _initialize_hook(initialize))


def uninstall() -> None:
    _patches.restore()
    _by_code.clear()


def _tracing_pool_pickler(base: Any) -> type:
    class TracingPoolPickler(base):  # type: ignore[misc]
        """joblib's Pool pickler, recording each message it pickles."""

        def __init__(self, writer: Any, reducers: Any = None, *args: Any, **kwargs: Any) -> None:
            self._tracedmp_notes = None
            self._tracedmp_given = reducers
            if reducers and _tracer.current is not None:
                try:
                    reducers, self._tracedmp_notes = arrays.watch(reducers)
                except Exception as exc:  # never keep the program's pickle from being made
                    internal_error(exc)
            base.__init__(self, writer, reducers, *args, **kwargs)
            self._tracedmp_writer = writer
            self._tracedmp_refs: Any = None

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) in _CALLABLE_TYPES or isinstance(obj, type):
                refs = self._tracedmp_refs
                if refs is None:
                    self._tracedmp_refs = [obj]
                else:
                    refs.append(obj)
            return NotImplemented

        def dump(self, obj: Any) -> None:
            tracer = _tracer.current
            writer = self._tracedmp_writer
            if tracer is None or not hasattr(writer, "tell"):
                return base.dump(self, obj)
            try:
                channel, method = _pool_channel(sys._getframe(1))
                before = writer.tell()
            except Exception as exc:  # a joblib we do not know: this pickle untraced
                internal_error(exc)
                return base.dump(self, obj)
            start = perf_counter_ns()
            try:
                base.dump(self, obj)
            except Exception as exc:
                safely(record_error, tracer, obj, exc, perf_counter_ns() - start, channel,
                       method, None, "pickle", _untraced_dumper(base, self._tracedmp_given))
                raise
            duration = perf_counter_ns() - start
            notes = self._tracedmp_notes
            extra = {"arrays": notes.arrays} if notes is not None and notes.arrays else None
            safely(record_pickle, tracer, obj, writer.tell() - before, duration,
                   self._tracedmp_refs or (), None, channel, method, extra, None, "pickle")

    TracingPoolPickler.__module__ = __name__
    return TracingPoolPickler


def _untraced_dumper(base: Any, reducers: Any) -> Any:
    """How the failure's path is searched: each part pickled as joblib pickles it."""
    def dump(obj: Any, file: Any, _pickler: str) -> None:
        base(file, reducers).dump(obj)

    return dump


_local = threading.local()
_by_code: Dict[int, Tuple[Any, Tuple[str, Optional[str]]]] = {}


def _pool_channel(frame: Any) -> Tuple[str, Optional[str]]:
    """The queue's ``send`` runs in ``frame``; above it ``put``, then the Pool's code."""
    caller = frame.f_back
    while caller is not None and caller.f_globals.get("__name__") == "joblib.pool":
        caller = caller.f_back
    if caller is None:
        return "queue", None
    caller_code = caller.f_code
    hit = _by_code.get(id(caller_code))
    if hit is not None and hit[0] is caller_code:
        return hit[1]
    answer: Tuple[str, Optional[str]] = ("queue", None)
    if caller.f_globals.get("__name__") == "multiprocessing.pool":
        if caller_code.co_name == "_handle_tasks":
            from .._runtime.channels import pool_start_method

            # The Pool's workers' start method, learnt once per task-handler thread (one Pool
            # each); so not cached here, by code, across Pools.
            return "joblib.task", pool_start_method(_Frame(caller), "pool.task")
        if caller_code.co_name == "worker":
            answer = ("joblib.result", None)
        else:  # the Pool's own sentinels (its _terminate_pool, ...), as pool.control for a Pool
            answer = ("joblib.control", None)
    if len(_by_code) >= 256:
        _by_code.clear()
    _by_code[id(caller_code)] = (caller_code, answer)
    return answer


class _Frame:
    """Stands for a frame whose caller is ``back`` (what ``pool_start_method`` looks at)."""

    __slots__ = ("f_back",)

    def __init__(self, back: Any) -> None:
        self.f_back = back


# Parallel calls: the backend each one settled on
_BACKENDS = {"LokyBackend": "loky", "MultiprocessingBackend": "multiprocessing",
             "ThreadingBackend": "threading", "SequentialBackend": "sequential",
             "DaskDistributedBackend": "dask"}
# true: it pickles between processes, and this trace has those pickles; false: threads or this
# process only, nothing is pickled; null: it pickles through channels tracedmp does not see
_PICKLES = {"loky": True, "multiprocessing": True, "threading": False, "sequential": False,
            "dask": True}  # Dask distributed: on the dask.* channels


def _initialize_hook(original: Any) -> Any:
    def _initialize_backend(self: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1  # a fallback backend initializes again, within this call
        try:
            n_jobs = original(self, *args, **kwargs)
        finally:
            _local.depth = depth
        if depth == 0 and _tracer.current is not None:
            safely(_parallel_record, _tracer.current, self, n_jobs)
        return n_jobs

    _initialize_backend.__wrapped__ = original  # type: ignore[attr-defined]
    return _initialize_backend


def _parallel_record(tracer: Any, parallel: Any, n_jobs: Any) -> None:
    backend = getattr(parallel, "_backend", None)
    cls = type(backend).__name__
    name = _BACKENDS.get(cls, cls)
    rec = _tracer.base_record("parallel", None)
    rec["library"] = "joblib"
    rec["backend"] = name
    rec["n_jobs"] = n_jobs if type(n_jobs) is int else None
    if name in _PICKLES:
        rec["pickles"] = _PICKLES[name]
        if name == "dask" and n_jobs == 1:
            rec["pickles"] = False  # one worker thread: joblib runs the calls here, in order
    else:  # a backend of a library or the program's own: threads pickle nothing, else unknown
        rec["pickles"] = False if getattr(backend, "uses_threads", False) else None
    tracer.emit(rec)
