"""The global hooks: where tracedmp plugs into multiprocessing, and how it comes out again.

- ``multiprocessing.connection._ForkingPickler`` and ``multiprocessing.queues._ForkingPickler``:
  the tracing pickler.  Both modules bind the class at import time, so the context's ``reducer``
  does not reach them (CPython gh-72240); these two names carry every Pipe, Queue, Pool and
  Manager message.  Each is patched right after it is imported (``_child`` has the finder): a
  spawned child that uses no pipe or queue does not pay ~10 ms to import them.
- ``multiprocessing.reduction.dump``: how spawn and forkserver write a child's launch data.
- ``_Popen`` of ForkProcess, SpawnProcess and ForkServerProcess: one ``process_start`` record per
  child (``pickled: false`` under fork), and the settings handed to spawned children.
- ``multiprocessing.context.BaseContext.get_context``: notes each start method the program names
  (``set_start_method`` and ``get_context(name)`` both end there), so that a ``process_start``
  can say whether its method was the Python's own default (forkserver on Linux from 3.14).

Every patch remembers what it replaced; ``remove_patches`` puts back whatever is still ours.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
import types
from multiprocessing import context as _mp_context
from multiprocessing import process as _mp_process
from time import perf_counter_ns, time, time_ns
from weakref import ref as _ref

from . import child as _child
from . import tracer as _tracer
from .tracer import internal_error, safely

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["active_pickler", "current_launch", "install_patches", "remove_patches", "traced_dump"]

_patches: List[Tuple[Any, str, Any, Any]] = []
_active_pickler: Optional[type] = None
_config: Any = None  # the running tracer's settings, for the patches made later
_local = threading.local()
_fork_hook_registered = False


class _Launch:
    """A child being started in this thread: what its launch data added up to."""

    __slots__ = ("method", "child", "size")

    def __init__(self, method: str, child: str) -> None:
        self.method = method
        self.child = child
        self.size = 0


def current_launch() -> Optional[_Launch]:
    return getattr(_local, "launch", None)


def active_pickler() -> type:
    """The tracing pickler class in use, made on first need (children that pickle nothing
    never import the pickling code)."""
    global _active_pickler
    if _active_pickler is None:
        from . import picklers

        if _config is None:
            return picklers.TracingPickler
        cls = picklers.pickler_class(_config.pickler)
        cls.loads = staticmethod(picklers.traced_loads if _config.unpickle else pickle.loads)  # type: ignore[attr-defined]
        _active_pickler = cls
    return _active_pickler


def traced_dump(obj: Any, file: Any, protocol: Optional[int] = None) -> None:
    """Stands in for ``multiprocessing.reduction.dump`` (how spawn/forkserver send launch data)."""
    from multiprocessing.reduction import ForkingPickler

    from .picklers import record_error
    from .records import record_pickle

    tracer = _tracer.current
    if tracer is None:  # tracing stopped while another thread was on its way here
        ForkingPickler(file, protocol).dump(obj)
        return
    cls = active_pickler()
    launch = current_launch()
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
        safely(record_error, tracer, obj, exc, perf_counter_ns() - start, channel,
                launch and launch.method, _launch_fields(launch, obj))
        raise
    duration = perf_counter_ns() - start
    size = counter.count if counter is not None else file.tell() - before
    if launch is not None:
        launch.size += size
    extra = _launch_fields(launch, obj)
    if size >= tracer.parts_at and before is not None and isinstance(file, io.BytesIO):
        extra = safely(_parts_of_dump, file, before, channel, extra, duration) or extra
    safely(record_pickle, tracer, obj, size, duration, refs, pickler._tracedmp_by_value,
            channel, launch and launch.method, extra)


def _parts_of_dump(file: io.BytesIO, before: int, channel: str, extra: Optional[dict],
                   duration: int) -> dict:
    # spawn and forkserver write launch data into a BytesIO: read the pickle where it is.
    from . import parts

    fields = dict(extra or {})
    with file.getbuffer() as whole, whole[before:] as view:  # released: the file grows again
        fields.update(parts.fields(view, channel, fields.get("part"), duration,
                                   (channel, fields.get("part"))))
    return fields


def _launch_fields(launch: Any, obj: Any) -> Optional[dict]:
    if launch is None:
        return None
    part = "process_object" if isinstance(obj, _mp_process.BaseProcess) else "preparation_data"
    return {"part": part, "child": launch.child}


class _CountingWriter:
    __slots__ = ("_file", "count")

    def __init__(self, file: Any) -> None:
        self._file = file
        self.count = 0

    def write(self, data: Any) -> Any:
        self.count += memoryview(data).nbytes
        return self._file.write(data)


def patch_carrier(module: Any) -> None:
    # Connection.send, SimpleQueue.put and the Queue feeder carry every message.
    from . import channels

    channels.bind(module)
    _patch(module, "_ForkingPickler", active_pickler())


# Start methods the program named (set_start_method, get_context(name)), as far as this process
# saw: one in effect before tracing started counts as named, and a spawned child knows its
# parent's from its process object (multiprocessing itself sets the parent's method there, so
# its own state cannot tell).  A start with none of them used the method the Python picks.
_named_methods: set = set()
_named_seen = False
NAMED_KEY = "tracedmp.named_methods"  # in a spawned child's process object's _config


def _get_context_hook(original: Any) -> Any:
    def get_context(self: Any, method: Optional[str] = None) -> Any:
        if method is not None:
            _named_methods.add(method)
        return original(self, method)

    get_context.__wrapped__ = original  # type: ignore[attr-defined]
    return get_context


def _note_named_methods(context: Any) -> None:
    global _named_seen
    if _named_seen:  # once a process: later, the program's own lazy choice would count
        return
    _named_seen = True
    actual = context._default_context._actual_context
    if actual is not None and _tracer.is_main_process():
        _named_methods.add(actual._name)


def is_default_method(method: str) -> bool:
    """Whether a child started with ``method`` got it because the program named none."""
    if method in _named_methods or method != _mp_context._default_context._default_context._name:  # type: ignore[attr-defined]
        return False
    inherited = _mp_process._current_process._config.get(NAMED_KEY, ())  # type: ignore[attr-defined]
    return method not in inherited


def install_patches(tracer: Any) -> None:
    global _config, _fork_hook_registered
    remove_patches()
    from multiprocessing import context, reduction

    _config = tracer.config
    _start_templates.clear()
    _note_named_methods(context)
    _patch(context.BaseContext, "get_context",
           _get_context_hook(context.BaseContext.__dict__["get_context"]))
    for name in ("multiprocessing.connection", "multiprocessing.queues"):
        module = sys.modules.get(name)
        if module is not None:
            patch_carrier(module)
        else:
            _child.patch_when_imported(name)
    _patch(reduction, "dump", traced_dump)
    for klass in (context.ForkProcess, context.SpawnProcess, context.ForkServerProcess):
        original = klass.__dict__["_Popen"]
        _patch(klass, "_Popen", staticmethod(_popen_hook(original.__func__, klass._start_method)))
    if not _fork_hook_registered:
        # Cannot be unregistered: the handler checks whether tracing runs.  (No handler before
        # the fork: the main process's records are in the file already.)
        os.register_at_fork(after_in_child=_child.after_fork_in_child)
        _fork_hook_registered = True


def remove_patches() -> None:
    global _active_pickler, _config
    _child.stop_watching()
    while _patches:
        owner, name, original, replacement = _patches.pop()
        current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        if current is replacement:
            setattr(owner, name, original)
    _active_pickler = _config = None
    from multiprocessing import process

    process._current_process._config.pop(_child.KEY, None)  # type: ignore[attr-defined]


def _patch(owner: Any, name: str, replacement: Any) -> None:
    original = owner.__dict__[name]
    setattr(owner, name, replacement)
    _patches.append((owner, name, original, replacement))


def _popen_hook(original: Any, method: str) -> Any:
    pickled = method != "fork"

    def _Popen(process_obj: Any) -> Any:
        tracer = _tracer.current
        if tracer is None:
            _child.detach(process_obj)
            process_obj._config.pop(NAMED_KEY, None)
            return original(process_obj)
        launch = _Launch(method, process_obj.name)
        if pickled:
            _child.attach(process_obj, tracer.config)
            inherited = _mp_process._current_process._config.get(NAMED_KEY, ())  # type: ignore[attr-defined]
            process_obj._config[NAMED_KEY] = tuple(sorted(_named_methods.union(inherited)))
            if method == "forkserver":
                safely(_preload_in_forkserver)
        # The record is made ready before the launch: a parent that has just forked copies
        # every page it writes to (copy-on-write), and a record made then took ~220 us, not 10.
        record = safely(_start_record, tracer, process_obj, launch, pickled)
        previous = getattr(_local, "launch", None)
        _local.launch = launch
        start = perf_counter_ns()
        try:
            popen = original(process_obj)
        finally:
            _local.launch = previous
        duration = perf_counter_ns() - start
        if record is not None:
            template, child = record
            pid = getattr(popen, "pid", None)
            if child is not None and type(pid) is int:
                # Inline, for the same reason: each function called here is pages written.
                try:
                    # (not ts_parts(): the cached second's objects are pages too)
                    seconds, micros = divmod(time_ns() // 1000, 1_000_000)
                    tracer.sink.write(template % (
                        b"%d." % seconds, micros, next(_tracer._seq), child, pid,
                        b"%d" % launch.size if pickled else b"null", duration))
                except Exception as exc:
                    internal_error(exc)
            else:
                safely(_write_start, tracer, record, process_obj, popen, launch, duration)
        return popen

    _Popen.__wrapped__ = original  # type: ignore[attr-defined]
    return _Popen


# process_start templates, by the target (or the Process subclass whose run() is overridden) and
# the start method: most programs start many children of one kind, and building a record for each
# start wrote to ~45 pages that the previous fork had made copy-on-write.  The child's name is a
# hole.  Only targets that are functions or classes are cached (a bound method is new each
# time), and weakly: a closure or lambda target must not stay alive with all it holds (40 starts
# of a closure over 50 MB kept 2 GB).  The parent's pid is in the templates, so a forked child
# starts with none.
_start_templates: Dict[Tuple[int, str, bool], Tuple[Any, str, bytes]] = {}  # (weak target, ...)
_START_HOLES = {"seq": b"%d", "child": b"%b", "child_pid": b"%d", "size": b"%b",
                "duration_ns": b"%d"}  # and ts: _pickler.TS_HOLE
_CACHED_TARGETS = (types.FunctionType, types.BuiltinFunctionType)


# What a child that starts tracing imports.  A forkserver child is forked from the server: with
# these loaded there, each child no longer imports them (~2.5 ms of CPU a child).
_TRACING_MODULES = ("tracedmp._runtime.hooks", "tracedmp._runtime.picklers",
                    "tracedmp._runtime.channels")


def _preload_in_forkserver() -> None:
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # its private fields are not in the stubs
    preload = getattr(server, "_preload_modules", None)
    running = getattr(server, "_forkserver_pid", None) is not None
    if running or not isinstance(preload, (list, tuple)):
        return  # it preloaded what it was told when it started; or not a server we know
    missing = [m for m in _TRACING_MODULES if m not in preload]
    if missing:  # a new list: the program's own stays as it gave it
        server._preload_modules = [*preload, *missing]


def _start_record(tracer: Any, process_obj: Any, launch: _Launch,
                  pickled: bool) -> Tuple[Any, Optional[bytes]]:
    """Before the launch: a template and the child's name as JSON for its hole, or the record
    as a dict (and None) for what the template path does not render."""
    if not tracer._processors and (pickled or not tracer.config.check_spawn):
        who = getattr(process_obj, "_target", None)
        if who is None:
            who = type(process_obj)
        name = _mp_process._current_process._name  # type: ignore[attr-defined]
        key = (id(who), launch.method, is_default_method(launch.method))
        hit = _start_templates.get(key)
        if hit is None or hit[0]() is not who or hit[1] is not name:
            from .render import TS_HOLE, template_of

            rec = _start_rec(tracer, process_obj, launch, pickled)
            try:
                template = template_of(rec, {"ts": TS_HOLE, **_START_HOLES})
            except (TypeError, ValueError):  # the dict path renders what a template cannot
                return rec, None
            hit = (None, name, template)  # used once: not cached
            if type(who) in _CACHED_TARGETS or isinstance(who, type):
                hit = (_ref(who), name, template)
                if len(_start_templates) >= 256:
                    _start_templates.clear()
                _start_templates[key] = hit
        from .render import json_string

        try:
            return hit[2], json_string(launch.child)
        except ValueError:  # lone surrogates in the name: the dict path escapes them
            pass
    return _start_rec(tracer, process_obj, launch, pickled), None


def _start_rec(tracer: Any, process_obj: Any, launch: _Launch, pickled: bool) -> dict:
    """The process_start record but for what the launch tells."""
    from .records import qualified_name

    rec = _tracer.base_record("process_start", launch.method, numbered=False)
    rec["child"] = launch.child
    rec["child_pid"] = None
    rec["target"] = _target_name(process_obj, qualified_name)
    rec["pickled"] = pickled
    rec["default_method"] = is_default_method(launch.method)
    rec["size"] = None
    rec["duration_ns"] = None
    if not pickled and tracer.config.check_spawn:
        from .spawncheck import check_spawn

        rec["spawn_check"] = check_spawn(process_obj, tracer)
    return rec


def _write_start(tracer: Any, record: Tuple[Any, Optional[bytes]], process_obj: Any,
                 popen: Any, launch: _Launch, duration: int) -> None:
    """After the launch, the dict path (a template's child_pid must be an int)."""
    rec, child = record
    if child is not None:  # a template, but an odd Popen: rare enough to make the dict now
        rec = _start_rec(tracer, process_obj, launch, launch.method != "fork")
    rec["ts"] = time()
    rec["seq"] = next(_tracer._seq)
    rec["child_pid"] = getattr(popen, "pid", None)
    rec["size"] = launch.size if rec["pickled"] else None
    rec["duration_ns"] = duration
    tracer.emit(rec)


def _target_name(process_obj: Any, qualified_name: Any) -> Optional[str]:
    from multiprocessing.process import BaseProcess

    target = getattr(process_obj, "_target", None)
    if target is not None:
        if callable(target) and hasattr(target, "__qualname__"):
            return qualified_name(target)
        t = type(target)
        return f"{t.__module__}.{t.__qualname__}"
    run = type(process_obj).run
    if run is not BaseProcess.run:
        return qualified_name(run)
    return None


def after_fork_in_child() -> None:
    global _local
    _local = threading.local()
    # Only if imported: importing it here would cost every forked child ~0.2 ms.
    records = sys.modules.get("tracedmp._runtime.records")
    if records is not None:
        records.forget_templates()
    channels = sys.modules.get("tracedmp._runtime.channels")
    if channels is not None:
        channels.forget_call_sites()
    _start_templates.clear()
    if _tracer.current is not None:
        _tracer.after_fork_in_child()
