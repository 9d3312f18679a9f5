"""Dask distributed: every object Dask pickles to send, one ``pickle`` record on ``dask.*``.

Dask sends its messages over its own comms (TCP), not multiprocessing's pipes, and serializes
them with its own protocol, ``distributed.protocol``:

- a message is msgpack (``core.dumps``); what msgpack cannot carry is wrapped by the sender in
  ``ToPickle`` (pickled as it is written: a task's ``run_spec``) or ``Serialize`` (Dask's
  ``serialize``: a serializer registered for the type, e.g. numpy's, else pickle), or was
  serialized beforehand into a ``Serialized`` (the client's graph);
- every pickle goes through ``distributed.protocol.pickle.dumps``: protocol 5 with out-of-band
  buffers, then cloudpickle if pickle failed or the pickle names ``__main__``.

So this patches, in ``distributed.protocol`` and the modules that took these functions by name:
``pickle.dumps`` and ``serialize.serialize`` (the outermost call of either in a thread makes the
record: nested calls, a ``serialize`` pickling, are layers of the same object); the ``pickle``
and ``cloudpickle`` module names inside ``distributed.protocol.pickle`` with stand-ins that pickle
with a subclass noting the functions and classes met (the same bytes); ``core.dumps``, which
looks at a message before it is written to know what each wrapped object is (a task, a result,
scattered data: its channel, op and key); and ``Worker.get_data``, which says for whom a result
is (a worker: a transfer; else a result).  Data flow::

    client: Client._graph_to_futures -> serialize(graph)          -> dask.graph
            update_data(data={key: Serialize(x)}) -> core.dumps   -> dask.scatter
    scheduler: batched compute-task {run_spec: ToPickle(task)}    -> dask.task
    worker: get_data reply {data: {key: Serialize(result)}}       -> dask.result / dask.transfer
"""

from __future__ import annotations

import builtins
import contextvars
import io
import sys
import threading
from multiprocessing import process as _mp_process
from time import perf_counter_ns

from .._runtime import tracer as _tracer
from .._runtime.picklers import _CALLABLE_TYPES, note_by_value, record_error
from .._runtime.records import _describe, _pickle_record, record_pickle
from .._runtime.render import TS_HOLE, json_string, template_of, ts_parts
from .._runtime.tracer import internal_error, safely
from . import Patches

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["install", "uninstall"]

_patches = Patches()

# Dask's own functions and classes are left out of ``callables``: the program's are the news.
_INTERNAL = ("dask.", "distributed.", "cloudpickle.", "toolz.", "tlz.")
_INTERNAL_ROOTS = frozenset(p[:-1] for p in _INTERNAL)
_MAX_KEY = 200

# For whom the running ``Worker.get_data`` answers (None: the scheduler or a client).  A
# context variable: get_data writes its reply in its own task, perhaps from an offload thread
# (Dask's offload carries the context over).
_UNSET = object()
_who: contextvars.ContextVar = contextvars.ContextVar("tracedmp_dask_who", default=_UNSET)


class _State(threading.local):
    """Per thread: how deep in Dask's serialization this thread is, and what it noted."""

    def __init__(self) -> None:
        self.depth = 0
        self.refs: List[Any] = []  # functions and classes the outermost object's pickles named
        self.by_value: Optional[set] = None
        self.mark = 0  # where the running protocol dumps' refs start (a retry drops its own)
        self.pickler: Optional[str] = None  # the pickler that made the last pickle
        self.errored = False  # a pickle_error was written for the outermost object
        self.message: Optional[Dict[int, tuple]] = None  # id(payload) -> what it is
        self.comm: Optional[tuple] = None  # (sender address, recipient address) of the message
        self.fields: Optional[Tuple[str, Dict[str, Any]]] = None  # the outermost object's


_state = _State()


def install(tracer: Any) -> None:
    """Patch ``distributed.protocol`` and the modules that took its functions by name."""
    proto_pickle = sys.modules.get("distributed.protocol.pickle")
    serialize_mod = sys.modules.get("distributed.protocol.serialize")
    core = sys.modules.get("distributed.protocol.core")
    protocol = sys.modules.get("distributed.protocol")
    if proto_pickle is None or serialize_mod is None or core is None or protocol is None:
        # Installed once the package is imported: a distributed without this protocol
        from . import engines

        engines.record(tracer, "distributed", "dask.distributed")
        return
    dumps = vars(proto_pickle).get("dumps")
    serialize = vars(serialize_mod).get("serialize")
    message_dumps = vars(core).get("dumps")
    # A distributed of another shape: what it lacks stays unpatched, the program unchanged.
    if callable(dumps) and not _patches.patched(proto_pickle, "dumps"):
        traced = _traced_pickle_dumps(dumps)
        _patches.patch(proto_pickle, "dumps", traced)
        for name in ("distributed.client", "distributed.scheduler", "distributed.worker",
                     "distributed.diagnostics.plugin", "distributed.shuffle._scheduler_plugin",
                     "distributed.diagnostics.progressbar"):
            module = sys.modules.get(name)
            if module is not None and vars(module).get("dumps") is dumps:
                _patches.patch(module, "dumps", traced)
        for name, factory in (("pickle", _pickle_stand_in), ("cloudpickle", _cloudpickle_stand_in)):
            real = vars(proto_pickle).get(name)
            if real is not None and getattr(real, "dumps", None) is not None:
                _patches.patch(proto_pickle, name, factory(real))
    if callable(serialize) and not _patches.patched(serialize_mod, "serialize"):
        traced_serialize = _traced_serialize(serialize, serialize_mod)
        _patches.patch(serialize_mod, "serialize", traced_serialize)
        for module in (protocol, sys.modules.get("distributed.client")):
            if module is not None and vars(module).get("serialize") is serialize:
                _patches.patch(module, "serialize", traced_serialize)
    if callable(message_dumps) and not _patches.patched(core, "dumps"):
        traced_message = _traced_message_dumps(message_dumps, serialize_mod)
        _patches.patch(core, "dumps", traced_message)
        if vars(protocol).get("dumps") is message_dumps:
            _patches.patch(protocol, "dumps", traced_message)
    worker = getattr(sys.modules.get("distributed.worker"), "Worker", None)
    get_data = vars(worker).get("get_data") if isinstance(worker, type) else None
    if callable(get_data) and not _patches.patched(worker, "get_data"):
        _patches.patch(worker, "get_data", _get_data_hook(get_data))


def uninstall() -> None:
    _patches.restore()


# -- the pickle and cloudpickle names in distributed.protocol.pickle --------------------------


class _StandIn:
    """Stands for a module (``pickle``, ``cloudpickle``) inside ``distributed.protocol.pickle``:
    its ``dumps`` pickles with a subclass of the module's pickler that notes the functions and
    classes it meets (the same bytes), while a traced Dask pickle is being made; everything else
    is the module's own."""

    def __init__(self, real: Any, pickler: type, name: str) -> None:
        self._real = real
        self._tracing = pickler
        self._name = name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def dumps(self, obj: Any, protocol: Any = None, *args: Any, **kwargs: Any) -> Any:
        state = _state
        if not state.depth or _tracer.current is None or args:
            return self._real.dumps(obj, protocol, *args, **kwargs)
        file = io.BytesIO()
        pickler = self._tracing(file, protocol, **kwargs)
        pickler._tracedmp_refs = None
        pickler._tracedmp_by_value = None
        pickler.dump(obj)
        del state.refs[state.mark:]  # a retry (cloudpickle after pickle): only the last counts
        refs = pickler._tracedmp_refs
        if refs:
            state.refs.extend(refs)
        if pickler._tracedmp_by_value:
            if state.by_value is None:
                state.by_value = set()
            state.by_value.update(pickler._tracedmp_by_value)
        state.pickler = self._name
        return file.getvalue()


def _pickle_stand_in(real: Any) -> _StandIn:
    class TracingDaskPickler(real.Pickler):  # type: ignore[misc]
        """The stdlib's pickler, noting each function and class it pickles."""

        _tracedmp_refs: Any
        _tracedmp_by_value: Any

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) in _CALLABLE_TYPES or isinstance(obj, type):
                refs = self._tracedmp_refs
                if refs is None:
                    self._tracedmp_refs = [obj]
                else:
                    refs.append(obj)
            return NotImplemented

    TracingDaskPickler.__module__ = __name__
    return _StandIn(real, TracingDaskPickler, "pickle")


def _cloudpickle_stand_in(real: Any) -> _StandIn:
    base = real.Pickler
    base_override = base.reducer_override

    class TracingDaskCloudPickler(base):  # type: ignore[misc, valid-type]
        """cloudpickle's pickler, noting each function and class, and which went by value."""

        _tracedmp_refs: Any
        _tracedmp_by_value: Any

        def reducer_override(self, obj: Any) -> Any:
            is_class = isinstance(obj, type)
            if not is_class and type(obj) not in _CALLABLE_TYPES:
                return base_override(self, obj)
            refs = self._tracedmp_refs
            if refs is None:
                self._tracedmp_refs = [obj]
            else:
                refs.append(obj)
            reduced = base_override(self, obj)
            if reduced is not NotImplemented:
                note_by_value(self, obj, is_class)
            return reduced

    TracingDaskCloudPickler.__module__ = __name__

    class CloudStandIn(_StandIn):
        def dumps(self, obj: Any, protocol: Any = None, *args: Any, **kwargs: Any) -> Any:
            # cloudpickle.dumps(obj, protocol=None, buffer_callback=None)
            if args:
                kwargs["buffer_callback"] = args[0]
            return _StandIn.dumps(self, obj, protocol, **kwargs)

    return CloudStandIn(real, TracingDaskCloudPickler, "cloudpickle")


# -- the outermost pickle or serialize call: one record -----------------------------------------


class _Buffers:
    """Counts the out-of-band buffers a pickle hands to its ``buffer_callback``."""

    __slots__ = ("callback", "sizes")

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.sizes: List[int] = []

    def __call__(self, buffer: Any) -> Any:
        try:
            with memoryview(buffer) as view:
                self.sizes.append(view.nbytes)
        except TypeError:
            self.sizes.append(0)
        return self.callback(buffer)


def _enter(state: _State, obj: Any, key_of: Any, frame: Any) -> None:
    state.depth = 1
    state.refs = []
    state.by_value = None
    state.mark = 0
    state.pickler = None
    state.errored = False
    try:
        state.fields = _fields(obj, key_of, frame)
    except Exception as exc:
        internal_error(exc)
        state.fields = ("dask.other", {})


def _leave(state: _State) -> None:
    """The outermost object is recorded: keep none of the functions and classes it named."""
    state.refs = []
    state.by_value = None
    state.fields = None


def _traced_pickle_dumps(original: Any) -> Any:
    def dumps(x: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _tracer.current
        if tracer is None:
            return original(x, *args, **kwargs)
        state = _state
        if state.depth:  # a layer of an object already being recorded (serialize's pickle)
            mark = state.mark
            state.mark = len(state.refs)
            state.depth += 1
            start = perf_counter_ns()
            try:
                return original(x, *args, **kwargs)
            except Exception as exc:
                if not state.errored:
                    state.errored = True
                    safely(_record_error, tracer, x, exc, perf_counter_ns() - start)
                raise
            finally:
                state.depth -= 1
                state.mark = mark
        callback = kwargs.get("buffer_callback")
        counter = None
        if callback is not None:
            counter = kwargs["buffer_callback"] = _Buffers(callback)
        _enter(state, x, None, sys._getframe(1))
        start = perf_counter_ns()
        try:
            result = original(x, *args, **kwargs)
        except Exception as exc:
            safely(_record_error, tracer, x, exc, perf_counter_ns() - start)
            _leave(state)
            raise
        finally:
            state.depth = 0
        duration = perf_counter_ns() - start
        try:
            sizes = counter.sizes if counter is not None else []
            _record(tracer, x, result, len(result) + sum(sizes), sizes, duration,
                    state.pickler or "pickle")
        except Exception as exc:
            internal_error(exc)
        finally:
            _leave(state)
        return result

    dumps.__wrapped__ = original  # type: ignore[attr-defined]
    return dumps


def _traced_serialize(original: Any, serialize_mod: Any) -> Any:
    wrappers = tuple(t for t in (getattr(serialize_mod, "Serialize", None),
                                 getattr(serialize_mod, "ToPickle", None)) if isinstance(t, type))
    done = getattr(serialize_mod, "Serialized", None)

    def serialize(x: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _tracer.current
        state = _state
        if tracer is None or state.depth or (done is not None and type(x) is done):
            if tracer is None or not state.depth:
                return original(x, *args, **kwargs)
            state.depth += 1  # an item of a collection being serialized: the same object
            try:
                return original(x, *args, **kwargs)
            finally:
                state.depth -= 1
        obj = x.data if isinstance(x, wrappers) else x  # type: ignore[attr-defined]
        _enter(state, obj, x, sys._getframe(1))
        start = perf_counter_ns()
        try:
            header, frames = result = original(x, *args, **kwargs)
        except BaseException:
            _leave(state)
            raise
        finally:
            state.depth = 0
        duration = perf_counter_ns() - start
        try:
            _record_serialized(tracer, state, obj, header, frames, duration)
        except Exception as exc:
            internal_error(exc)
        finally:
            _leave(state)
        return result

    serialize.__wrapped__ = original  # type: ignore[attr-defined]
    return serialize


def _nbytes(frame: Any) -> int:
    try:
        return len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    except TypeError:
        return 0


def _inband(header: Any, frames: list, out: List[bool]) -> None:
    """For each frame, whether it is a pickle stream (True) or data beside one (False)."""
    if header.get("is-collection"):
        at = 0
        for sub, length in zip(header.get("sub-headers") or (), header.get("frame-lengths") or ()):
            _inband(sub, frames[at:at + length], out)
            at += length
        out.extend([False] * (len(frames) - at))
        return
    if header.get("serializer") == "pickle" and frames:
        out.append(True)
        out.extend([False] * (len(frames) - 1))
    else:
        out.extend([False] * len(frames))


def _record_serialized(tracer: Any, state: _State, obj: Any, header: Any, frames: Any,
                       duration: int) -> None:
    if type(header) is not dict or type(frames) is not list:
        return
    family = header.get("serializer")
    if family == "error":  # Dask could not serialize it, and sends a message saying so
        if not state.errored:  # (the pickle that failed wrote the record)
            text = b"".join(bytes(f) for f in frames[:1]).decode("utf-8", "replace")
            _record_error(tracer, obj, TypeError(text), duration)
        return
    kinds: List[bool] = []
    _inband(header, frames, kinds)
    sizes = [_nbytes(f) for f in frames]
    streams = [f for f, k in zip(frames, kinds) if k]
    size = sum(sizes)
    pickler = state.pickler if streams else (family if family != "pickle" else "dask")
    if family is None and header.get("is-collection"):
        pickler = state.pickler or "dask"
    _record(tracer, obj, streams[0] if len(streams) == 1 else None, size,
            [s for s, k in zip(sizes, kinds) if not k], duration, pickler or "pickle")


def _record(tracer: Any, obj: Any, stream: Any, size: int, buffers: List[int],
            duration: int, pickler: str) -> None:
    state = _state
    channel, fields = state.fields or ("dask.other", {})
    extra = dict(fields)
    extra["buffers"] = len(buffers)
    extra["buffer_bytes"] = sum(buffers)
    looked = stream is not None and size >= tracer.parts_at
    if looked:
        from .._runtime import parts

        site = ("dask", channel, extra.get("dask_prefix"))
        extra.update(parts.fields(stream, channel, None, duration, site, buffers))
        if extra.get("parts"):
            _name_parts(obj, channel, extra["parts"])
    if not looked and not tracer._processors and not tracer.summary:
        try:
            if _templated(tracer, obj, size, duration, fields, len(buffers), extra, pickler,
                          channel):
                return
        except (TypeError, ValueError):  # what only the dict path renders (lone surrogates)
            pass
    refs = [r for r in state.refs if not _internal(r)]
    by_value = state.by_value
    record_pickle(tracer, obj, size, duration, refs, by_value, channel, None, extra, None,
                  pickler)


class _Template:
    """A Dask pickle record rendered but for ts, seq, size, duration_ns, dask_key and
    buffer_bytes (%-format holes), and what it was made for, checked before it is used again:
    the object's type and the functions and classes its pickles named, held weakly."""

    __slots__ = ("type_ref", "refs", "line", "keyed")

    def __init__(self, t: type, raw: List[Any], line: bytes, keyed: bool) -> None:
        self.type_ref = _weak(t)
        self.refs = [_weak(r) for r in raw]
        self.line = line
        self.keyed = keyed  # whether the record has a dask_key (a hole)

    def fits(self, t: type, raw: List[Any]) -> bool:
        if self.type_ref() is not t:
            return False
        for ref, obj in zip(self.refs, raw):
            if ref() is not obj:
                return False
        return True


def _weak(obj: Any) -> Any:
    from weakref import ref

    return ref(obj)


# Dask records by everything but their key and sizes: a cluster sends the same few kinds of
# message, each naming the same functions, over and over.  Keyed by ids (checked through weak
# references: nothing here keeps the program's functions alive); bounded; made again for
# another tracer (its settings) or process (the pid and name are in the line).
_templates: Dict[tuple, _Template] = {}
_templates_for: List[Any] = [None]
_TEMPLATE_REFS = 8  # an object naming more (a graph) takes the dict path
_TEMPLATES_LIMIT = 1024
_HOLE_KEY = "\x00tracedmp-dask-key\x00"


def _templated(tracer: Any, obj: Any, size: int, duration: int, fields: Dict[str, Any],
               buffers: int, extra: Dict[str, Any], pickler: str, channel: str) -> bool:
    """Write the record through a template; False when none fits and none can be made."""
    state = _state
    raw = state.refs
    if len(raw) > _TEMPLATE_REFS:
        return False
    by_value = state.by_value
    t = type(obj)
    items = tuple(fields.items())
    key_text: Any = None
    if items and items[0][0] == "dask_key":  # _fields puts it first
        key_text = items[0][1]
        items = items[1:]
    key = (channel, id(t), tuple(map(id, raw)),
           None if by_value is None else frozenset(by_value),
           pickler, items, buffers, key_text is not None, _tracer._pid,
           _mp_process._current_process._name,  # type: ignore[attr-defined]
           _tracer.start_method_here())
    if _templates_for[0] is not tracer:
        _templates.clear()
        _templates_for[0] = tracer
    hit = _templates.get(key)
    if hit is None or not hit.fits(t, raw):
        hit = _make_template(key, tracer, obj, raw, by_value, channel, extra, pickler)
        if hit is None:
            return False
    ts = ts_parts()
    if hit.keyed:
        line = hit.line % (*ts, next(_tracer._seq), size, duration, json_string(key_text),
                           extra["buffer_bytes"])
    else:
        line = hit.line % (*ts, next(_tracer._seq), size, duration, extra["buffer_bytes"])
    tracer.sink.write(line)
    return True


def _make_template(key: tuple, tracer: Any, obj: Any, raw: List[Any], by_value: Any,
                   channel: str, extra: Dict[str, Any], pickler: str) -> Optional[_Template]:
    refs = [r for r in raw if not _internal(r)]
    rec = _pickle_record(tracer, obj, channel, None, *_describe(obj, refs, by_value))
    rec["pickler"] = pickler
    rec.update(extra)
    keyed = "dask_key" in rec
    if keyed:
        rec["dask_key"] = _HOLE_KEY
    holes = dict(_HOLES)
    try:
        line = template_of(rec, holes)
    except (TypeError, ValueError):
        return None
    if keyed:
        line = line.replace(json_string(_HOLE_KEY).replace(b"%", b"%%"), b"%s", 1)
    try:
        template = _Template(type(obj), raw, line, keyed)
    except TypeError:  # something pickled that takes no weak reference
        return None
    if len(_templates) >= _TEMPLATES_LIMIT:
        _templates.clear()
    _templates[key] = template
    return template


_HOLES = {"ts": TS_HOLE, "seq": b"%d", "size": b"%d", "duration_ns": b"%d",
          "buffer_bytes": b"%d"}


_ROOTS = {"dask.task": "task", "dask.graph": "graph"}


def _name_parts(obj: Any, channel: str, found: List[Dict[str, Any]]) -> None:
    """Parts named as the program knows them: ``task.args[0]`` rather than
    ``obj.__getstate__()[5][0]`` (a Dask task pickles its slots as a tuple, sorted by name)."""
    slots = None
    all_slots = getattr(type(obj), "get_all_slots", None)
    if callable(all_slots) and type(obj).__module__.startswith("dask."):
        try:
            slots = all_slots()
        except Exception:
            slots = None
    root = _ROOTS.get(channel, "obj")
    for part in found:
        path = part.get("path")
        if not isinstance(path, str) or not path.startswith("obj"):
            continue
        rest = path[3:]
        if slots and rest.startswith(".__getstate__()["):
            rest = _slot_named(rest, slots)
        elif channel == "dask.graph":
            rest = _task_in_graph(obj, rest)
        part["path"] = root + rest


def _slot_named(rest: str, slots: Any) -> str:
    """``.__getstate__()[5]...`` of an object whose state is its sorted slots: ``.args...``."""
    index, _, after = rest[len(".__getstate__()["):].partition("]")
    if index.isdigit() and int(index) < len(slots):
        return f".{slots[int(index)]}{after}"
    return rest


_IN_GRAPH = None


def _task_in_graph(graph: Any, rest: str) -> str:
    """``.operands[0]['key'].__getstate__()[5]...``: the task under that key names the slot."""
    global _IN_GRAPH
    import re
    from ast import literal_eval

    if _IN_GRAPH is None:
        _IN_GRAPH = re.compile(r"\.operands\[(\d+)\]\[('(?:[^'\\]|\\.)*')\](\.__getstate__\(\).*)$")
    match = _IN_GRAPH.match(rest)
    if match is None:
        return rest
    operands = getattr(graph, "operands", None)
    index = int(match.group(1))
    if type(operands) is not list or index >= len(operands) or type(operands[index]) is not dict:
        return rest
    try:
        task = operands[index].get(literal_eval(match.group(2)))
    except (ValueError, SyntaxError):
        return rest
    all_slots = getattr(type(task), "get_all_slots", None)
    if not callable(all_slots) or not type(task).__module__.startswith("dask."):
        return rest
    try:
        named = _slot_named(match.group(3), all_slots())
    except Exception:
        return rest
    return rest[:match.start(3)] + named


def _record_error(tracer: Any, obj: Any, exc: BaseException, duration: int) -> None:
    channel, fields = _state.fields or ("dask.other", {})
    extra = dict(fields)
    record_error(tracer, obj, exc, duration, channel, None, extra, "cloudpickle",
                 _untraced_dumper())


def _untraced_dumper() -> Any:
    """How the failure's path is searched: each part pickled as Dask's last attempt does
    (cloudpickle), writing no record."""
    def dump(obj: Any, file: Any, _pickler: str) -> None:
        import cloudpickle

        cloudpickle.Pickler(file, protocol=5).dump(obj)

    return dump


def _internal(obj: Any) -> bool:
    """Dask's own, or a type cloudpickle names to rebuild a function (``code``, ``cell``: not
    a name of ``builtins``, unlike ``list`` or ``sum``)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    if module == "builtins" and isinstance(obj, type):
        return getattr(builtins, obj.__name__, None) is not obj
    return module.startswith(_INTERNAL) or module in _INTERNAL_ROOTS


# -- what a pickled object is: its channel, message, key ----------------------------------------

_ROLES = {"dask.graph": "client", "dask.scatter": "client", "dask.task": "scheduler",
          "dask.result": "worker", "dask.transfer": "worker"}


def _fields(obj: Any, key_of: Any, frame: Any) -> Tuple[str, Dict[str, Any]]:
    state = _state
    found = named = None
    message = state.message
    if message:
        found = message.get(id(key_of)) if key_of is not None else None
        if found is None:
            found = message.get(id(obj))
    if found is not None:
        channel, op, field, key = found
    else:
        channel, op, field, key = "dask.other", None, None, None
        if frame is not None:
            if _graph_caller(frame):
                channel, op, field = "dask.graph", "update-graph", "expr_ser"
            else:
                named = _CALLERS.get(frame.f_code.co_name)
                if named is not None and frame.f_globals.get("__name__") == named[0]:
                    op, field = named[1], named[2]
                    key = getattr(frame.f_locals.get("ts"), "key", None)
    extra: Dict[str, Any] = {}
    if key is not None:  # first: the templates' key leaves it out (_templated)
        extra["dask_key"] = _key_text(key)
        prefix = _prefix(key)
        if prefix is not None:
            extra["dask_prefix"] = prefix
    if op is not None:
        extra["dask_op"] = op
    if field is not None:
        extra["dask_field"] = field
    role = _ROLES.get(channel) or (named[3] if named is not None else None)
    if role is not None:
        extra["dask_role"] = role
    comm = state.comm
    if comm is not None:
        sender, recipient = comm
        if sender is not None and role != "client":
            extra["dask_address"] = sender
        if recipient is not None:
            extra["dask_peer"] = recipient
    return channel, extra


# Pickles Dask makes by calling its pickle.dumps itself, for a message built afterwards:
# function -> (its module, the message, the field)
_CALLERS = {"_get_task_finished_msg": ("distributed.worker_state_machine", "task-finished",
                                       "type", "worker")}


def _graph_caller(frame: Any) -> bool:
    """Whether the client serializes a graph: ``serialize`` called from the Client's
    ``_graph_to_futures``."""
    for _ in range(3):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "_graph_to_futures" and \
                frame.f_globals.get("__name__") == "distributed.client":
            return True
        frame = frame.f_back
    return False


def _key_text(key: Any) -> str:
    text = key if type(key) is str else str(key)
    return text if len(text) <= _MAX_KEY else text[:_MAX_KEY] + "..."


def _prefix(key: Any) -> Optional[str]:
    # dask.utils is imported with distributed (looked up, not imported: nothing to type-check)
    key_split = getattr(sys.modules.get("dask.utils"), "key_split", None)
    if key_split is None:
        return None
    try:
        prefix = key_split(key)
    except Exception:  # a key Dask itself would not split
        return None
    return prefix if isinstance(prefix, str) else None


def _traced_message_dumps(original: Any, serialize_mod: Any) -> Any:
    wrappers = tuple(t for t in (getattr(serialize_mod, "Serialize", None),
                                 getattr(serialize_mod, "ToPickle", None)) if isinstance(t, type))

    def dumps(msg: Any, *args: Any, **kwargs: Any) -> Any:
        if _tracer.current is None:
            return original(msg, *args, **kwargs)
        state = _state
        outer = state.message, state.comm
        try:
            state.message = _message_payloads(msg, wrappers)
            context = kwargs.get("context")
            state.comm = _comm_addresses(context) if state.message else None
        except Exception as exc:  # a message of a shape we do not know: records say less
            internal_error(exc)
            state.message = None
        try:
            return original(msg, *args, **kwargs)
        finally:
            state.message, state.comm = outer

    dumps.__wrapped__ = original  # type: ignore[attr-defined]
    return dumps


def _comm_addresses(context: Any) -> Optional[tuple]:
    if type(context) is not dict:
        return None
    sender, recipient = context.get("sender"), context.get("recipient")
    return (sender.get("address") if type(sender) is dict else None,
            recipient.get("address") if type(recipient) is dict else None)


def _message_payloads(msg: Any, wrappers: tuple) -> Optional[Dict[int, tuple]]:
    """What each object a message wraps for pickling is: ``{id: (channel, op, field, key)}``
    for the wrapper and its data (a list of messages is a batch)."""
    out: Dict[int, tuple] = {}
    batch = msg if type(msg) in (list, tuple) else (msg,)
    for m in batch:
        if type(m) is not dict:
            continue
        op = m.get("op")
        for field, value in m.items():
            if isinstance(value, wrappers):
                channel = _channel(op, field, m)
                key = m.get("key") if channel == "dask.task" else None
                info = (channel, op or m.get("status"), field, key)
                out[id(value)] = out[id(value.data)] = info
            elif type(value) is dict and field == "data":
                channel = _channel(op, field, m)
                if channel == "dask.result" and _who.get() not in (None, _UNSET):
                    channel = "dask.transfer"
                name = op or ("get_data" if m.get("status") == "OK" else m.get("status"))
                for key, item in value.items():
                    if isinstance(item, wrappers):
                        out[id(item)] = out[id(item.data)] = (channel, name, field, key)
    return out or None


def _channel(op: Any, field: str, msg: dict) -> str:
    if op == "compute-task":
        return "dask.task"
    if op == "update-graph":
        return "dask.graph"
    if op in ("update_data", "scatter"):
        return "dask.scatter"
    if op is None and field == "data" and msg.get("status") == "OK":
        return "dask.result"  # a get_data reply: for a worker, a transfer (the caller says)
    return "dask.other"


def _get_data_hook(original: Any) -> Any:
    import functools

    @functools.wraps(original)
    async def get_data(self: Any, comm: Any, *args: Any, **kwargs: Any) -> Any:
        who = kwargs.get("who", args[1] if len(args) > 1 else None)
        token = _who.set(who)
        try:
            return await original(self, comm, *args, **kwargs)
        finally:
            _who.reset(token)

    return get_data
