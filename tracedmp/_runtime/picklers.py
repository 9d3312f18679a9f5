"""The picklers multiprocessing uses while tracing is on.

``TracingPickler`` is the stdlib's ``ForkingPickler`` with a ``reducer_override`` that notes each
function and class it saves and otherwise returns ``NotImplemented``, so it writes the very same
bytes.  ``TracingCloudPickler`` is cloudpickle's pickler with ForkingPickler's reducers (pipes,
sockets, locks), for functions that cannot travel by reference.  Both time the pickling, take the
size from the bytes produced, and hand one record to the tracer; failures are recorded and
re-raised untouched.  Data flow::

    Connection.send / SimpleQueue.put / Queue feeder  -> dumps()  -> bytes to the pipe
    popen_spawn_posix / popen_forkserver -> reduction.dump -> traced_dump() -> launch data
                                              \\-> record (size, kind, callables, channel)
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

try:
    from _json import encode_basestring as _quote  # json's own C string escaper
except ImportError:  # pragma: no cover - Pythons without the accelerator
    from json.encoder import py_encode_basestring as _quote

from . import _tracer
from ._tracer import FORMAT_VERSION
from ._channels import attribute, carrier_channel, receiver_channel

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["TracingPickler", "pickler_class", "qualified_name", "traced_dump", "traced_loads"]

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
_MAX_CALLABLES = 64
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
            _safely(record_error, tracer, obj, exc, perf_counter_ns() - start,
                    carrier_channel(sys._getframe(1)), None, None)
            raise
        duration = perf_counter_ns() - start
        view = buf.getbuffer()
        # The usual case inline (a Python call costs ~0.1 us, a small Pool task ~3 us of
        # pickling): the thread pickles from its last call site, the same kind of message
        # again, so the site's template takes the four numbers that change.
        try:
            site = attribute(sys._getframe(1))
            hit = site[4]
            refs = pickler._tracedmp_refs
            if hit is not None and pickler._tracedmp_by_value is None \
                    and (refs is None or len(refs) <= 2):
                first = refs[0] if refs else None
                second = refs[1] if refs and len(refs) == 2 else None
                if (hit[0] is type(obj) and hit[1] is first and hit[2] is second
                        and hit[4] is _mp_process._current_process._name  # type: ignore[attr-defined]
                        and hit[5] is (first is obj)
                        and hit[6] is _default_context._actual_context):  # type: ignore[attr-defined]
                    seconds, micros = divmod(time_ns() // 1000, 1_000_000)  # ts_parts(), inline
                    tracer.sink.write(hit[3] % (seconds, micros, next(_tracer._seq), len(view),
                                                duration))
                    return view
            record_pickle(tracer, obj, len(view), duration, refs or _NO_REFS,
                          pickler._tracedmp_by_value, site[2], site[3], None, site)
        except Exception as exc:
            _internal_error(exc)
        return view


_NO_REFS: tuple = ()


# ForkingPickler copies copyreg's table and adds its own reducers in every __init__ (~0.6 us,
# a fifth of pickling a small Pool task).  The tracing picklers share one merged table instead,
# made again whenever either source changed (a comparison of two small dicts, ~0.1 us).
_sources: Tuple[dict, dict] = ({}, {})
_merged: dict = {}


def _forking_table() -> dict:
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
    dispatch_table = property(lambda self: _forking_table())

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
                if known is obj:
                    return NotImplemented
            reduced = base.reducer_override(self, obj)
            if reduced is NotImplemented:
                if not by_value_modules and isinstance(obj, _CACHEABLE):
                    if len(_by_reference) >= _ENTRIES_LIMIT:
                        _by_reference.clear()
                    _by_reference[id(obj)] = obj  # importable by name: alive in its module
            elif not (is_class and obj.__module__ == "builtins"):
                # by value, unless it only names a builtin type (types.CodeType and the like,
                # which the child looks up by name)
                if self._tracedmp_by_value is None:
                    self._tracedmp_by_value = set()
                self._tracedmp_by_value.add(id(obj))
            return reduced

    TracingCloudPickler.__module__ = __name__
    return TracingCloudPickler


_cloud: Optional[type] = None


def pickler_class(name: str) -> type:
    global _cloud
    if name == "cloudpickle":
        if _cloud is None:
            _cloud = _cloud_class()
        return _cloud
    return TracingPickler


def dump_untraced(obj: Any, file: Any, pickler: Optional[str] = None) -> None:
    """Pickle ``obj`` to ``file`` with a tracing pickler class, writing no record."""
    from . import _hooks

    p = pickler_class(pickler)(file, None) if pickler else _hooks.active_pickler()(file, None)
    p._tracedmp_refs = []
    p._tracedmp_by_value = None
    p.dump(obj)


def traced_dump(obj: Any, file: Any, protocol: Optional[int] = None) -> None:
    """Stands in for ``multiprocessing.reduction.dump`` (how spawn/forkserver send launch data)."""
    from . import _hooks

    tracer = _tracer.current
    if tracer is None:  # tracing stopped while another thread was on its way here
        ForkingPickler(file, protocol).dump(obj)
        return
    cls = _hooks.active_pickler()
    launch = _hooks.current_launch()
    counter = None
    try:
        before = file.tell()
    except (AttributeError, OSError, ValueError):
        before = None
        file = counter = _CountingWriter(file)
    pickler = cls(file, protocol)
    refs = pickler._tracedmp_refs = []
    pickler._tracedmp_by_value = None
    channel = "process" if launch is not None else "reducer"
    start = perf_counter_ns()
    try:
        pickler.dump(obj)
    except Exception as exc:
        _safely(record_error, tracer, obj, exc, perf_counter_ns() - start, channel,
                launch and launch.method, _launch_fields(launch, obj))
        raise
    duration = perf_counter_ns() - start
    size = counter.count if counter is not None else file.tell() - before
    if launch is not None:
        launch.size += size
    _safely(record_pickle, tracer, obj, size, duration, refs, pickler._tracedmp_by_value,
            channel, launch and launch.method, _launch_fields(launch, obj))


def traced_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``ForkingPickler.loads`` when unpickling is traced."""
    start = perf_counter_ns()
    obj = pickle.loads(data, *args, **kwargs)
    duration = perf_counter_ns() - start
    tracer = _tracer.current
    if tracer is not None:
        _safely(_record_unpickle, tracer, obj, data, duration, receiver_channel(sys._getframe(1)))
    return obj


def _record_unpickle(tracer: Any, obj: Any, data: Any, duration: int, channel: str) -> None:
    rec = _tracer.base_record("unpickle", None)
    rec["channel"] = channel
    rec["size"] = memoryview(data).nbytes
    rec["type"] = _type_name(obj)
    rec["pickler"] = tracer.pickler
    rec["duration_ns"] = duration
    tracer.emit(rec)


def record_pickle(tracer: Any, obj: Any, size: int, duration: int, refs: Sequence[Any],
                  by_value: Optional[set], channel: str, start_method: Optional[str],
                  extra: Optional[dict], site: Optional[list] = None) -> None:
    if extra is None and by_value is None and len(refs) <= 2 and not tracer._processors:
        n = len(refs)
        first = refs[0] if n else None
        second = refs[1] if n == 2 else None
        t = type(obj)
        name = _mp_process._current_process._name  # type: ignore[attr-defined]
        # (dumps() has already tried the call site's last template)
        key = (channel, t, id(first), id(second), first is obj,
               start_method or _tracer.start_method_here())
        hit = _templates.get(key)
        if hit is None or hit[0] is not t or hit[1] is not first or hit[2] is not second \
                or hit[4] is not name or hit[6] is not _default_context._actual_context:  # type: ignore[attr-defined]
            hit = _add_template(key, tracer, obj, refs, t, first, second, name)
        if site is not None:
            site[4] = hit  # a site sends the same kind of message again
        if hit is not None:
            tracer.sink.write(hit[3] % (*ts_parts(), next(_tracer._seq), size, duration))
            return
    rec = _pickle_record(tracer, obj, channel, start_method, *_describe(obj, refs, by_value))
    rec["ts"] = time()
    rec["seq"] = next(_tracer._seq)
    rec["size"] = size
    rec["duration_ns"] = duration
    if extra:
        rec.update(extra)
    tracer.emit(rec)


def _pickle_record(tracer: Any, obj: Any, channel: str, start_method: Optional[str],
                   callables: list, kind: str) -> dict:
    """A pickle record with ts, seq, size and duration_ns left to fill in (None)."""
    return {
        "v": FORMAT_VERSION,
        "event": "pickle",
        "ts": None,
        "pid": _tracer._pid,
        "process": _mp_process._current_process._name,  # type: ignore[attr-defined]
        "start_method": start_method or _tracer.start_method_here(),
        "seq": None,
        "channel": channel,
        "size": None,
        "kind": kind,
        "type": _type_name(obj),
        "pickler": tracer.pickler,
        "duration_ns": None,
        "callables": callables,
    }


_NO_CALLABLES: list = []


def _describe(obj: Any, refs: Sequence[Any], by_value: Optional[set]) -> Tuple[list, str]:
    """The ``callables`` and the top-level ``kind`` of a pickle that named ``refs``."""
    if not refs:
        return _NO_CALLABLES, "value"
    callables = _callables(refs, by_value)
    kind = "reference" if refs[0] is obj and callables[0]["kind"] == "reference" else "value"
    return callables, kind

# Pickle records rendered but for ts, seq, size and duration_ns, by everything else in them:
# a program sends the same few kinds of message over and over, and formatting four numbers into
# a template costs a fraction of building a dict and rendering it.  Only for records with no
# structlog processors to run and callables that travel by reference.  Bounded.
# The pid is baked into the templates: a forked child starts with none (forget_templates).
# So is the start method: a template also holds the default context it was made under, and a
# main process that changes its start method (set_start_method(force=True)) makes new ones.
if TYPE_CHECKING:
    _Template = Tuple[Any, Any, Any, bytes, str, bool, Any]
_templates: Dict[tuple, _Template] = {}

def forget_templates() -> None:
    """After a fork (the pid is in them) and when tracing restarts (settings may differ)."""
    _templates.clear()


def _add_template(key: tuple, tracer: Any, obj: Any, refs: Sequence[Any], t: type, first: Any,
                  second: Any, process: str) -> Optional[_Template]:
    channel, _, _, _, _, start_method = key
    callables, kind = _describe(obj, refs, None)
    if refs:
        cached = _lists.get((id(first), id(second)))
        if cached is None or cached[2] is not callables:
            return None  # not all by reference: the dict path works the names out each time
    rec = _pickle_record(tracer, obj, channel, start_method, callables, kind)
    try:
        template = template_of(rec, _PICKLE_HOLES)
    except (TypeError, ValueError):  # lone surrogates in a name: the dict path escapes them
        return None
    if len(_templates) >= _ENTRIES_LIMIT:
        _templates.clear()
    hit = _templates[key] = (t, first, second, template, process, first is obj,
                             _default_context._actual_context)  # type: ignore[attr-defined]
    return hit


# ts to the microsecond (as precise as a float of seconds since 1970 gets), from integers
TS_HOLE = b"%d.%06d"


def ts_parts() -> Tuple[int, int]:
    """The two numbers TS_HOLE takes: seconds and microseconds, now."""
    return divmod(time_ns() // 1000, 1_000_000)

_PICKLE_HOLES = {"ts": TS_HOLE, "seq": b"%d", "size": b"%d", "duration_ns": b"%d"}


def template_of(rec: Dict[str, Any], holes: Dict[str, bytes]) -> bytes:
    """``rec`` as one JSON line, with the %-format codes ``holes`` gives for some fields.

    Raises TypeError or ValueError (lone surrogates) for what only the dict path renders."""
    return b"{" + b",".join(
        json_bytes(key).replace(b"%", b"%%") + b":"
        + (holes[key] if key in holes else json_bytes(value).replace(b"%", b"%%"))
        for key, value in rec.items()
    ) + b"}\n"


def json_bytes(value: Any) -> bytes:
    """JSON of the few kinds of value records hold (templates; a program's one-off records).
    Not orjson: it costs ~14 ms to import, and a spawned child's records are all templates.

    Raises TypeError for anything else and ValueError for lone surrogates (undecodable names):
    the caller then renders with orjson, or the stdlib's json, which escape them."""
    if isinstance(value, str):
        return json_string(value)
    if value is None:
        return b"null"
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int):
        return b"%d" % value
    if type(value) is float and value - value == 0:  # finite: inf - inf and nan - nan are nan
        return repr(value).encode("ascii")
    if isinstance(value, list):
        return b"[" + b",".join(map(json_bytes, value)) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(_key(k) + b":" + json_bytes(v) for k, v in value.items()) + b"}"
    raise TypeError(f"cannot render a {type(value).__name__}")


def json_string(text: str) -> bytes:
    """``text`` as a JSON string; ValueError for lone surrogates."""
    return _quote(text).encode("utf-8")


def _key(key: Any) -> bytes:
    if not isinstance(key, str):  # JSON's keys are strings; the stdlib path converts others
        raise TypeError(f"cannot render a {type(key).__name__} key")
    return json_string(key)


# Names of the types pickled, by type; bounded (dynamically created types come and go).
_type_names: Dict[type, str] = {}


def _type_name(obj: Any) -> str:
    t = type(obj)
    name = _type_names.get(t)
    if name is None:
        name = f"{t.__module__}.{t.__qualname__}"
        if len(_type_names) >= _ENTRIES_LIMIT:
            _type_names.clear()
        _type_names[t] = name
    return name


def record_error(tracer: Any, obj: Any, exc: BaseException, duration: int, channel: str,
                 start_method: Optional[str], extra: Optional[dict]) -> None:
    from ._diagnose import diagnose

    rec = _tracer.base_record("pickle_error", start_method)
    rec["channel"] = channel
    rec["type"] = _type_name(obj)
    rec["pickler"] = tracer.pickler
    rec["duration_ns"] = duration
    message = str(exc)
    if len(message) > _MAX_ERROR:
        message = message[:_MAX_ERROR] + "..."
    rec["error"] = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    path, hint = diagnose(obj, exc, tracer.pickler, channel)
    rec["path"] = path
    rec["hint"] = hint
    if extra:
        rec.update(extra)
    tracer.emit(rec)


def _launch_fields(launch: Any, obj: Any) -> Optional[dict]:
    if launch is None:
        return None
    part = "process_object" if isinstance(obj, _mp_process.BaseProcess) else "preparation_data"
    return {"part": part, "child": launch.child}


# Entries for functions and classes that travel by reference.  Such objects are importable by
# name, so their module keeps them alive anyway: holding them here costs no memory.  Bounded.
_entries: Dict[int, Tuple[Any, Dict[str, str]]] = {}
_ENTRIES_LIMIT = 4096
_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)


def _entry(obj: Any, by_value: Optional[set]) -> Dict[str, str]:
    cached = _entries.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    kind = _kind(obj, by_value)
    entry = {"name": qualified_name(obj), "kind": kind}
    if kind == "reference" and isinstance(obj, _CACHEABLE):
        if len(_entries) >= _ENTRIES_LIMIT:
            _entries.clear()
        _entries[id(obj)] = (obj, entry)
    return entry


# Whole callables lists for the usual one or two by-reference objects (a Pool task names
# mapstar and the user's function), checked by identity.
_lists: Dict[Tuple[int, ...], Tuple[Any, Any, list]] = {}


def _callables(refs: Sequence[Any], by_value: Optional[set]) -> list:
    n = len(refs)
    if by_value is None and n <= 2:
        first = refs[0]
        second = refs[1] if n == 2 else None
        key = (id(first), id(second))
        hit = _lists.get(key)
        if hit is not None and hit[0] is first and hit[1] is second:
            return hit[2]
        entries = _dedupe(refs, None)
        if all(isinstance(o, _CACHEABLE) and e["kind"] == "reference"
               for o, e in zip(refs, entries)) and len(entries) == n:
            if len(_lists) >= _ENTRIES_LIMIT:
                _lists.clear()
            _lists[key] = (first, second, entries)
        return entries
    return _dedupe(refs, by_value)


def _dedupe(refs: Sequence[Any], by_value: Optional[set]) -> list:
    out: List[Dict[str, str]] = []
    seen = set()
    for obj in refs:
        entry = _entry(obj, by_value)
        key = (entry["name"], entry["kind"])
        if key in seen:
            continue
        seen.add(key)
        if len(out) == _MAX_CALLABLES:
            out.append({"name": "...", "kind": "truncated"})
            break
        out.append(entry)
    return out


def _kind(obj: Any, by_value: Optional[set]) -> str:
    if by_value is not None and id(obj) in by_value:
        return "value"
    # A method bound to an instance travels as getattr(instance, name): the instance goes by
    # value.  Bound to a module or a class, it is a name like any function.
    owner = getattr(obj, "__self__", None)
    if owner is None or isinstance(owner, (type, types.ModuleType)) or isinstance(obj, type):
        return "reference"
    return "value"


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a function, method or class, as pickle would look it up."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        owner = getattr(obj, "__self__", None) or getattr(obj, "__objclass__", None)
        if isinstance(owner, types.ModuleType):
            module = owner.__name__
        elif isinstance(owner, type):
            module = owner.__module__
        elif owner is not None:
            module = type(owner).__module__
        else:
            module = "?"
    return f"{module}.{qual}"


class _CountingWriter:
    __slots__ = ("_file", "count")

    def __init__(self, file: Any) -> None:
        self._file = file
        self.count = 0

    def write(self, data: Any) -> Any:
        self.count += memoryview(data).nbytes
        return self._file.write(data)


_warned = False


def _safely(fn: Any, *args: Any) -> Any:
    # Tracing must never change what the program sees: a bug here costs a record, not a run.
    try:
        return fn(*args)
    except Exception as exc:
        _internal_error(exc)
        return None


def _internal_error(exc: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        try:
            sys.stderr.write(f"tracedmp: internal error, a record was dropped: {exc!r}\n")
        except Exception:
            pass
