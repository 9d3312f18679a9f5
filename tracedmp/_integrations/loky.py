"""loky, joblib's default backend (vendored as ``joblib.externals.loky``, or the loky package).

loky uses neither multiprocessing's pickler nor its Popen classes:

- every pickle goes through ``loky.backend.reduction.dump``: the call queue's feeder thread
  (``_SafeQueue``, a ``loky.backend.queues.Queue``) and the workers' result ``SimpleQueue``
  reach it through ``dumps``, a worker's launch data directly.  It pickles with
  ``reduction._LokyPickler`` (cloudpickle's pickler by default, so ``__main__`` functions and
  closures go by value) and the queue's reducers (joblib's memmapping reducers for numpy arrays);
- workers start with loky's own ``loky`` start method: ``LokyProcess._Popen`` runs
  ``popen_loky_posix``, a fork+exec of a fresh interpreter that unpickles the process object.

So this patches ``reduction.dump`` with a traced one, which pickles with a subclass of whatever
``_LokyPickler`` is at that moment (``set_loky_pickler`` may change it), noting the functions
and classes it meets and what cloudpickle sent by value; and ``LokyProcess._Popen`` with the
process-start hook spawned children get (``_hooks``): one ``process_start`` per worker, and the
tracing settings in the process object's ``_config``, which starts tracing in the worker while
it unpickles its process object.  Data flow::

    executor.submit -> _SafeQueue feeder -> dumps -> dump()  -> loky.call   (parent)
    worker: SimpleQueue.put(_ResultItem) -> dumps -> dump()  -> loky.result (worker)
    LokyProcess.start -> _Popen hook -> popen_loky_posix._launch -> dump() -> process
"""

from __future__ import annotations

import sys
import threading
from time import perf_counter_ns

from .._runtime import hooks as _hooks
from .._runtime import tracer as _tracer
from .._runtime.hooks import _CountingWriter, _launch_fields
from .._runtime.picklers import _CALLABLE_TYPES, note_by_value, record_error
from .._runtime.records import record_pickle
from .._runtime.tracer import internal_error, safely
from . import Patches, arrays

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Tuple

__all__ = ["install", "uninstall"]

START_METHOD = "loky"
_patches = Patches()


def install(tracer: Any) -> None:
    """Patch loky's reduction and process modules that are imported (vendored or not)."""
    for prefix in ("joblib.externals.loky.backend.", "loky.backend."):
        reduction = sys.modules.get(prefix + "reduction")
        if reduction is not None and "dump" in vars(reduction) and "dumps" in vars(reduction) \
                and not _patches.patched(reduction, "dump"):
            _patches.patch(reduction, "dump", _traced_dump(reduction))
        process = sys.modules.get(prefix + "process")
        klass = getattr(process, "LokyProcess", None)
        original = vars(klass).get("_Popen") if isinstance(klass, type) else None
        # (a loky whose LokyProcess differs: its workers untraced, the program unchanged)
        if isinstance(original, staticmethod) and not _patches.patched(klass, "_Popen"):
            _patches.patch(klass, "_Popen", staticmethod(
                _hooks._popen_hook(original.__func__, START_METHOD)))


def uninstall() -> None:
    _patches.restore()
    _classes.clear()
    _by_code.clear()


def _traced_dump(reduction: Any) -> Any:
    """A stand-in for ``reduction.dump`` of this loky (vendored or not)."""
    untraced = reduction.__dict__["dump"]
    dumps_code = reduction.dumps.__code__

    def dump(obj: Any, file: Any, reducers: Any = None, protocol: Any = None) -> None:
        tracer = _tracer.current
        base = reduction._LokyPickler
        if tracer is None or base is None:  # tracing stopped on the way here, or no pickler
            return untraced(obj, file, reducers=reducers, protocol=protocol)
        given = reducers
        try:
            cls = _tracing_class(base)
            notes = None
            if reducers:
                reducers, notes = arrays.watch(reducers)
            counter = None
            try:
                before = file.tell()
            except (AttributeError, OSError, ValueError):
                before = None
                counter = _CountingWriter(file)
            channel, method = _channel(sys._getframe(1), dumps_code)
            launch = _hooks.current_launch() if channel == "process" else None
            if launch is not None:
                method = launch.method
            name = reduction._loky_pickler_name or "cloudpickle"
        except Exception as exc:  # a loky we do not know: this pickle untraced, never broken
            internal_error(exc)
            return untraced(obj, file, reducers=given, protocol=protocol)
        pickler = cls(counter or file, reducers=reducers, protocol=protocol)
        pickler._tracedmp_refs = None
        pickler._tracedmp_by_value = None
        start = perf_counter_ns()
        try:
            pickler.dump(obj)
        except Exception as exc:
            safely(record_error, tracer, obj, exc, perf_counter_ns() - start, channel,
                   method, _launch_fields(launch, obj), name, _untraced_dumper(base, given))
            raise
        duration = perf_counter_ns() - start
        size = counter.count if counter is not None else file.tell() - before
        extra = _launch_fields(launch, obj)
        if launch is not None:
            launch.size += size
        if notes is not None and notes.arrays:
            extra = {**(extra or {}), "arrays": notes.arrays}
        safely(record_pickle, tracer, obj, size, duration, pickler._tracedmp_refs or (),
               pickler._tracedmp_by_value, channel, method, extra, None, name)

    dump.__wrapped__ = untraced  # type: ignore[attr-defined]
    return dump


def _untraced_dumper(base: Any, reducers: Any) -> Any:
    """How the failure's path is searched: each part pickled as loky pickles (its class and
    the queue's reducers), writing no record."""
    def dump(obj: Any, file: Any, _pickler: str) -> None:
        base(file, reducers=reducers).dump(obj)

    return dump


# Which channel, by the code that called dump (and, for dumps, its caller): cached by identity.
_by_code: Dict[Tuple[int, int], Tuple[Any, Any, Tuple[str, Optional[str]]]] = {}
_local = threading.local()


def _channel(frame: Any, dumps_code: Any) -> Tuple[str, Optional[str]]:
    """``(channel, start method)`` of a pickle made by the function running in ``frame``."""
    code = frame.f_code
    if code is not dumps_code:
        if _hooks.current_launch() is not None:
            return "process", None
        return "reducer", None
    carrier = frame.f_back
    if carrier is None:
        return "other", None
    carrier_code = carrier.f_code
    if carrier_code.co_name == "_feed":
        # A feeder thread serves one queue for its whole life: look at the queue once.
        hit = getattr(_local, "feed", None)
        if hit is None or hit[0] is not carrier_code:
            _local.feed = hit = (carrier_code, _feeder_channel(carrier_code))
        return hit[1]
    caller = carrier.f_back
    caller_code = caller.f_code if caller is not None else None
    key = (id(carrier_code), id(caller_code))
    cached = _by_code.get(key)
    if cached is not None and cached[0] is carrier_code and cached[1] is caller_code:
        return cached[2]
    answer: Tuple[str, Optional[str]] = ("other", None)
    if carrier_code.co_name == "put" and _in_loky(carrier, "backend.queues"):
        if caller is not None and _in_loky(caller, "process_executor"):
            answer = ("loky.result", None)
        elif caller is not None and caller.f_globals.get("__name__") == "multiprocessing.pool":
            # a Pool (a ThreadPool: joblib's threading backend) in a loky worker, whose default
            # context is loky's: its wake-up messages
            answer = ("pool.control", None)
        else:
            answer = ("queue", None)
    if len(_by_code) >= 256:
        _by_code.clear()
    _by_code[key] = (carrier_code, caller_code, answer)
    return answer


def _feeder_channel(code: Any) -> Tuple[str, Optional[str]]:
    from .._runtime.channels import _MISSING, _argument

    onerror = _argument(code, "onerror")
    owner = getattr(onerror, "__self__", None) if onerror is not _MISSING else None
    if owner is not None and type(owner).__module__.endswith("loky.process_executor"):
        return "loky.call", START_METHOD
    return "queue", None


def _in_loky(frame: Any, module: str) -> bool:
    """Whether ``frame`` runs code of loky's ``module`` (``backend.queues``...), vendored or not."""
    name = frame.f_globals.get("__name__")
    return isinstance(name, str) and name.endswith("loky." + module)


# One tracing subclass per loky pickler class (set_loky_pickler makes a new class); few.
_classes: Dict[type, type] = {}


def _tracing_class(base: type) -> type:
    cls = _classes.get(base)
    if cls is None:
        if len(_classes) >= 16:
            _classes.clear()
        cls = _classes[base] = _make_tracing_class(base)
    return cls


def _make_tracing_class(base: Any) -> type:
    base_override = getattr(base, "reducer_override", None)
    try:
        import cloudpickle

        cloud_override = cloudpickle.Pickler.reducer_override
    except (ImportError, AttributeError):
        cloud_override = None
    # cloudpickle's own reducer_override only reduces classes and functions: skip the call for
    # everything else, as the tracing cloudpickle pickler does.
    cloud_like = base_override is not None and base_override is cloud_override

    class TracingLokyPickler(base):  # type: ignore[misc]
        """loky's pickler, noting each function and class it pickles and which went by value."""

        _tracedmp_refs: Any
        _tracedmp_by_value: Any

        def reducer_override(self, obj: Any) -> Any:
            is_class = isinstance(obj, type)
            if not is_class and type(obj) not in _CALLABLE_TYPES:
                if base_override is None or cloud_like:
                    return NotImplemented
                return base_override(self, obj)
            refs = self._tracedmp_refs
            if refs is None:
                self._tracedmp_refs = [obj]
            else:
                refs.append(obj)
            if base_override is None:
                return NotImplemented
            reduced = base_override(self, obj)
            if reduced is not NotImplemented:
                note_by_value(self, obj, is_class)
            return reduced

    TracingLokyPickler.__module__ = __name__
    return TracingLokyPickler
