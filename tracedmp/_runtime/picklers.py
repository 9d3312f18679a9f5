"""The picklers multiprocessing uses while tracing is on.

``TracingPickler`` is the stdlib's ``ForkingPickler`` with a ``reducer_override`` that notes each
function and class it saves and otherwise returns ``NotImplemented``, so it writes the very same
bytes.  ``TracingCloudPickler`` is cloudpickle's pickler with ForkingPickler's reducers (pipes,
sockets, locks), for functions that cannot travel by reference.  Both time the pickling, take the
size from the bytes produced, and hand one record to the tracer; failures are recorded and
re-raised untouched.  Data flow::

    Connection.send / SimpleQueue.put / Queue feeder  -> dumps()  -> bytes to the pipe
    popen_spawn_posix / popen_forkserver -> reduction.dump -> hooks.traced_dump() -> launch data
                                              \\-> records.record_pickle (size, kind, callables)
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from multiprocessing import process as _mp_process
from multiprocessing.context import _default_context
from multiprocessing.reduction import ForkingPickler
from time import perf_counter_ns, time, time_ns
from weakref import ref as _ref

from . import render as _render
from . import summary as _summary
from . import tracer as _tracer
from .channels import attribute, carrier_channel, receiver_channel
from .records import _CACHEABLE, _ENTRIES_LIMIT, record_pickle, type_name
from .tracer import internal_error, safely

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Set, Tuple

__all__ = ["TracingPickler", "dump_untraced", "manager_fields", "note_by_value", "pickler_class",
           "record_error", "traced_loads"]

# Objects the trace lists under "callables": functions, methods and classes (any metaclass).
_CALLABLE_TYPES = frozenset(
    {
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
        types.MethodDescriptorType,
        types.WrapperDescriptorType,
        types.MethodWrapperType,
        types.ClassMethodDescriptorType,
    }
)
_MAX_ERROR = 500


class _Traced:
    """What both tracing picklers share: ``dumps`` and the per-pickle notes."""

    __slots__ = ()  # the concrete picklers hold the two notes in slots
    pickler_name = "pickle"

    if TYPE_CHECKING:  # what the concrete picklers (pickle.Pickler subclasses) have
        _tracedmp_refs: Optional[List[Any]]
        _tracedmp_by_value: Optional[Set[int]]

        def __init__(self, file: Any, protocol: Optional[int] = None) -> None: ...

        def dump(self, obj: Any) -> None: ...

    @classmethod
    def dumps(cls, obj: Any, protocol: Optional[int] = None) -> memoryview:
        buf = io.BytesIO()
        pickler = cls(buf, protocol)
        pickler._tracedmp_refs = None  # type: ignore[misc]  # slots of the concrete class
        pickler._tracedmp_by_value = None  # type: ignore[misc]
        tracer = _tracer.current
        if tracer is None:  # tracing stopped while another thread was already on its way here
            pickler.dump(obj)
            return buf.getbuffer()
        start = perf_counter_ns()
        try:
            pickler.dump(obj)
        except Exception as exc:
            safely(record_error, tracer, obj, exc, perf_counter_ns() - start,
                    carrier_channel(sys._getframe(1)), None, None)
            raise
        duration = perf_counter_ns() - start
        view = buf.getbuffer()
        size = len(view)
        if size >= tracer.parts_at:  # large: say which parts weigh the most
            safely(_record_large, tracer, obj, view, duration, pickler, sys._getframe(1))
            return view
        # The usual case inline (a Python call costs ~0.1 us, a small Pool task ~3 us of
        # pickling): the thread pickles from its last call site, the same kind of message
        # again, so the site's template takes the four numbers that change.
        try:
            site = attribute(sys._getframe(1))
            hit = site.template
            refs = pickler._tracedmp_refs
            n = 0 if refs is None else len(refs)
            if hit is not None and pickler._tracedmp_by_value is None and n <= 2:
                # Template.fits(), inline; the type and callables are weak references unless
                # built in (a weak reference only when needed: each costs a call).
                # (a weak reference read from a slot into a local first: calling hit.x()
                # would look x up as a method, ~100 instructions more each)
                t = type(obj)
                type_ref, first_ref, second_ref = hit.type_ref, hit.first_ref, hit.second_ref
                if ((hit.static_type is t or type_ref is not None and type_ref() is t)
                        and hit.n == n and (n == 0 or first_ref() is refs[0])  # type: ignore[index]  # n > 0: a list
                        and (n < 2 or second_ref() is refs[1])  # type: ignore[index]  # n > 0: a list
                        and hit.process is _mp_process._current_process._name  # type: ignore[attr-defined]
                        and hit.first_is_obj is (n > 0 and refs[0] is obj)  # type: ignore[index]  # n > 0: a list
                        and hit.context is _default_context._actual_context):  # type: ignore[attr-defined]
                    agg = hit.aggregate
                    if agg is None:
                        us = time_ns() // 1000  # ts_parts(), inline
                        second, digits = _render.ts_second
                        us -= second
                        if not 0 <= us < 1_000_000:
                            digits, us = _render.new_second(us + second)
                        line = hit.line % (digits, us, next(_tracer._seq), size, duration)
                        sink = tracer.sink
                        try:
                            sink.put(line)  # the mapped region's own write, if there is one
                        except ValueError:  # it is full (or closed)
                            sink.write(line)
                    else:  # summary mode: the template knows its aggregate
                        # Aggregate.add's usual case inline (the call costs ~1,200
                        # instructions, as much as the rest of it): a size this interval has
                        # seen, no exemplar, no write due; no call between read and update.
                        cur = agg.cur
                        if (size in cur.exact and size <= agg.floor
                                and start + duration < _summary._next_write):
                            cur.exact[size] += 1
                            cur.ns += duration
                        else:
                            agg.add(size, duration, start + duration, hit.line)
                    return view
            record_pickle(tracer, obj, size, duration, refs or _NO_REFS,
                          pickler._tracedmp_by_value, site.channel, site.start_method,
                          manager_fields(obj, sys._getframe(1)) if site.channel == "manager"
                          else None, site)
        except Exception as exc:
            internal_error(exc)
        return view


_NO_REFS: tuple = ()


def _record_large(tracer: Any, obj: Any, view: memoryview, duration: int, pickler: Any,
                  frame: Any) -> None:
    from . import parts

    site = attribute(frame)
    channel = site.channel
    extra = manager_fields(obj, frame) if channel == "manager" else {}
    refs = pickler._tracedmp_refs or _NO_REFS
    # One budget per call site and function sent (a Pool's task handler sends them all).
    key = (id(site.code), id(site.caller), id(refs[0]) if refs else 0,
           id(refs[1]) if len(refs) > 1 else 0)
    extra.update(parts.fields(view, channel, None, duration, key))
    record_pickle(tracer, obj, len(view), duration, refs,
                  pickler._tracedmp_by_value, channel, site.start_method, extra)


# What a Manager's messages are (multiprocessing.managers): a request is (id, method, args,
# kwds); a reply is ('#RETURN', result) or ('#ERROR', ...), sent by the server's serve_client
# (its local "methodname") or _handle_request ("funcname", for create, incref...;
# handle_request before 3.11).
_REPLY_TAGS = frozenset({"#RETURN", "#ERROR", "#TRACEBACK", "#PROXY", "#UNSERIALIZABLE"})


def manager_fields(obj: Any, frame: Any) -> dict:
    """``method`` and ``message`` (request or reply) of a Manager message."""
    if type(obj) is tuple:
        if len(obj) == 4 and type(obj[1]) is str:
            return {"method": obj[1], "message": "request"}
        if len(obj) == 2 and obj[0] in _REPLY_TAGS:
            method = _server_method(frame.f_back)
            fields = {"message": "reply"}
            if method is not None:
                fields["method"] = method
            return fields
    return {}


def _server_method(caller: Any) -> Optional[str]:
    code = getattr(caller, "f_code", None)
    if code is None or caller.f_globals.get("__name__") != "multiprocessing.managers":
        return None
    if code.co_name in ("accept_connection", "shutdown"):
        return code.co_name  # Server methods that reply themselves
    if code.co_name not in ("serve_client", "_handle_request", "handle_request"):
        return None  # (handle_request itself replies before 3.11)
    name = "methodname" if code.co_name == "serve_client" else "funcname"
    local = caller.f_locals
    method = local.get(name)
    if type(local) is dict:
        # Before 3.13 that is a snapshot the frame keeps (and with it the request's objects,
        # until the next reply): empty it (a debugger's trace function takes a new one first).
        local.clear()
    return method if type(method) is str else None


# ForkingPickler copies copyreg's table and adds its own reducers in every __init__ (~0.6 us,
# a fifth of pickling a small Pool task).  The tracing picklers share one merged table instead,
# made again whenever either source changed (a comparison of two small dicts, ~0.1 us).
_sources: Tuple[dict, dict] = ({}, {})
_merged: dict = {}


def _forking_table(_pickler: Any = None) -> dict:
    global _sources, _merged
    extra = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
    base = ForkingPickler._copyreg_dispatch_table  # type: ignore[attr-defined]  # copyreg.dispatch_table itself
    if extra != _sources[1] or base != _sources[0]:
        merged = dict(base)
        merged.update(extra)
        _sources, _merged = (dict(base), dict(extra)), merged
    return _merged


class TracingPickler(_Traced, ForkingPickler):
    """multiprocessing's ForkingPickler, noting the functions and classes it saves."""

    # Slots: no per-pickler instance dict to create on the hot path.
    __slots__ = ("_tracedmp_refs", "_tracedmp_by_value")

    # The C pickler reads dispatch_table once, when it is made; ForkingPickler's own __init__
    # (which builds a private copy) is skipped.
    __init__ = pickle.Pickler.__init__
    dispatch_table = property(_forking_table)  # no lambda between: one Python call, not two

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _CALLABLE_TYPES or isinstance(obj, type):
            refs = self._tracedmp_refs
            if refs is None:
                self._tracedmp_refs = [obj]  # most pickles name no function: no list for them
            else:
                refs.append(obj)
        return NotImplemented


def _cloud_class() -> type:
    import cloudpickle

    base = cloudpickle.Pickler
    cloud_table = base.dispatch_table  # cloudpickle's reducers over copyreg's (a ChainMap)
    # The modules register_pickle_by_value() named (a set cloudpickle keeps; empty if unknown).
    by_value_modules = getattr(sys.modules.get("cloudpickle.cloudpickle"),
                               "_PICKLE_BY_VALUE_MODULES", ())
    _by_reference: Dict[int, Any] = {}
    made: List[Any] = [None, -1, None]  # from which forking table, cloudpickle's size, merge

    def table() -> dict:
        # ForkingPickler's reducers (pipes, sockets, methods) win, as in the stdlib pickler.
        forking = _forking_table()  # a new object whenever copyreg's or ForkingPickler's changed
        if made[0] is not forking or made[1] != len(cloud_table):
            merged = dict(cloud_table)
            merged.update(ForkingPickler._extra_reducers)  # type: ignore[attr-defined]
            made[:] = [forking, len(cloud_table), merged]
        return made[2]

    class TracingCloudPickler(_Traced, base):  # type: ignore[misc, valid-type]
        """cloudpickle's Pickler with ForkingPickler's reducers; notes what went by value."""

        __slots__ = ("_tracedmp_refs", "_tracedmp_by_value")
        pickler_name = "cloudpickle"
        register = ForkingPickler.register

        # cloudpickle's class attribute hides the C pickler's dispatch_table slot, so an
        # assignment in __init__ would not reach the C code: it reads this once per pickler.
        @property
        def dispatch_table(self) -> dict:
            return table()

        def reducer_override(self, obj: Any) -> Any:
            is_class = isinstance(obj, type)
            if not is_class and type(obj) not in _CALLABLE_TYPES:
                return NotImplemented  # cloudpickle only reduces classes and functions itself
            refs = self._tracedmp_refs
            if refs is None:
                self._tracedmp_refs = [obj]
            else:
                refs.append(obj)
            # Deciding "by reference" means looking the name up in its module, every time: the
            # answer is remembered while no module is registered for pickling by value.
            if not by_value_modules:
                known = _by_reference.get(id(obj))
                if known is not None and known() is obj:
                    return NotImplemented
            reduced = base.reducer_override(self, obj)
            if reduced is NotImplemented:
                if not by_value_modules and isinstance(obj, _CACHEABLE):
                    if len(_by_reference) >= _ENTRIES_LIMIT:
                        _by_reference.clear()
                    # held weakly: a module can drop what it defined
                    _by_reference[id(obj)] = _ref(obj)
            else:
                note_by_value(self, obj, is_class)
            return reduced

    TracingCloudPickler.__module__ = __name__
    return TracingCloudPickler


def note_by_value(pickler: Any, obj: Any, is_class: bool) -> None:
    """Note that ``pickler`` reduced the function or class ``obj`` itself (by value) — unless
    it only names a builtin type (types.CodeType and the like, which the child looks up by
    name).  Called only once a reducer_override has reduced ``obj``: off the common path."""
    if is_class and obj.__module__ == "builtins":
        return
    if pickler._tracedmp_by_value is None:
        pickler._tracedmp_by_value = set()
    pickler._tracedmp_by_value.add(id(obj))


_cloud: Optional[type] = None


def pickler_class(name: str) -> type:
    global _cloud
    if name == "cloudpickle":
        if _cloud is None:
            _cloud = _cloud_class()
        return _cloud
    return TracingPickler


def dump_untraced(obj: Any, file: Any, pickler: "str | type" = "pickle") -> None:
    """Pickle ``obj`` to ``file`` with a tracing pickler (a name or a class), writing no record."""
    cls = pickler_class(pickler) if isinstance(pickler, str) else pickler
    p = cls(file, None)
    p._tracedmp_refs = []
    p._tracedmp_by_value = None
    p.dump(obj)


def traced_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``ForkingPickler.loads`` when unpickling is traced."""
    start = perf_counter_ns()
    obj = pickle.loads(data, *args, **kwargs)
    duration = perf_counter_ns() - start
    tracer = _tracer.current
    if tracer is not None:
        safely(_record_unpickle, tracer, obj, data, duration, receiver_channel(sys._getframe(1)))
    return obj


def _record_unpickle(tracer: Any, obj: Any, data: Any, duration: int, channel: str) -> None:
    rec = _tracer.base_record("unpickle", None, numbered=not tracer.summary)
    rec["channel"] = channel
    rec["size"] = memoryview(data).nbytes
    rec["type"] = type_name(obj)
    rec["pickler"] = tracer.pickler
    rec["duration_ns"] = duration
    if tracer.summary:
        from .summary import add_record

        rec["ts"] = time()
        add_record(rec)
        return
    tracer.emit(rec)


def record_error(tracer: Any, obj: Any, exc: BaseException, duration: int, channel: str,
                 start_method: Optional[str], extra: Optional[dict],
                 pickler: Optional[str] = None, dump: Any = None) -> None:
    """``pickler`` and ``dump``: a library's pickler (its name, and a function that pickles as
    it does, for the failure's path) when not tracedmp's own."""
    from .diagnose import diagnose

    rec = _tracer.base_record("pickle_error", start_method)
    rec["channel"] = channel
    rec["type"] = type_name(obj)
    rec["pickler"] = pickler or tracer.pickler
    rec["duration_ns"] = duration
    message = str(exc)
    if len(message) > _MAX_ERROR:
        message = message[:_MAX_ERROR] + "..."
    rec["error"] = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    path, hint, notes = diagnose(obj, exc, rec["pickler"], channel, dump=dump or dump_untraced,
                                 search=tracer.config.diagnose, failed_after_ns=duration)
    rec["path"] = path
    rec["hint"] = hint
    rec["notes"] = notes
    if extra:
        rec.update(extra)
    tracer.emit(rec)
