"""The global hooks: where tracedmp plugs into multiprocessing, and how it comes out again.

- ``multiprocessing.connection._ForkingPickler`` and ``multiprocessing.queues._ForkingPickler``:
  the tracing pickler.  Both modules bind the class at import time, so the context's ``reducer``
  does not reach them (CPython gh-72240); these two names carry every Pipe, Queue, Pool and
  Manager message.  Each is patched right after it is imported (``_child`` has the finder): a
  spawned child that uses no pipe or queue does not pay ~10 ms to import them.
- ``multiprocessing.reduction.dump``: how spawn and forkserver write a child's launch data.
- ``_Popen`` of ForkProcess, SpawnProcess and ForkServerProcess: one ``process_start`` record per
  child (``pickled: false`` under fork), and the settings handed to spawned children.

Every patch remembers what it replaced; ``remove_patches`` puts back whatever is still ours.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from time import perf_counter_ns, time

from . import _child, _tracer

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple

__all__ = ["active_pickler", "current_launch", "install_patches", "remove_patches"]

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
        from . import _pickler

        if _config is None:
            return _pickler.TracingPickler
        cls = _pickler.pickler_class(_config.pickler)
        cls.loads = staticmethod(_pickler.traced_loads if _config.unpickle else pickle.loads)  # type: ignore[attr-defined]
        _active_pickler = cls
    return _active_pickler


def _dump(obj: Any, file: Any, protocol: Optional[int] = None) -> None:
    """Stands in for multiprocessing.reduction.dump (launch data under spawn/forkserver)."""
    from ._pickler import traced_dump

    traced_dump(obj, file, protocol)


def patch_carrier(module: Any) -> None:
    # Connection.send, SimpleQueue.put and the Queue feeder carry every message.
    from . import _channels

    _channels.bind(module)
    _patch(module, "_ForkingPickler", active_pickler())


def install_patches(tracer: Any) -> None:
    global _config, _fork_hook_registered
    remove_patches()
    from multiprocessing import context, reduction

    _config = tracer.config
    for name in ("multiprocessing.connection", "multiprocessing.queues"):
        module = sys.modules.get(name)
        if module is not None:
            patch_carrier(module)
        else:
            _child.patch_when_imported(name)
    _patch(reduction, "dump", _dump)
    for klass in (context.ForkProcess, context.SpawnProcess, context.ForkServerProcess):
        original = klass.__dict__["_Popen"]
        _patch(klass, "_Popen", staticmethod(_popen_hook(original.__func__, klass._start_method)))
    if not _fork_hook_registered:
        os.register_at_fork(  # cannot be unregistered: the handlers check whether tracing runs
            before=_child.before_fork, after_in_child=_child.after_fork_in_child
        )
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
            return original(process_obj)
        launch = _Launch(method, process_obj.name)
        if pickled:
            _child.attach(process_obj, tracer.config)
        from ._pickler import _safely

        # The record is made ready before the launch: a parent that has just forked copies
        # every page it writes to (copy-on-write), and a record made then took ~220 us, not 10.
        record = _safely(_start_record, tracer, process_obj, launch, pickled)
        previous = getattr(_local, "launch", None)
        _local.launch = launch
        start = perf_counter_ns()
        try:
            popen = original(process_obj)
        finally:
            _local.launch = previous
        duration = perf_counter_ns() - start
        if record is not None:
            _safely(_write_start, tracer, record, popen, launch, duration)
        return popen

    _Popen.__wrapped__ = original  # type: ignore[attr-defined]
    return _Popen


def _start_record(tracer: Any, process_obj: Any, launch: _Launch,
                  pickled: bool) -> Tuple[dict, Optional[bytes]]:
    """The process_start record but for what the launch tells, and its template."""
    from ._pickler import TS_HOLE, qualified_name, template_of

    rec = _tracer.base_record("process_start", launch.method, numbered=False)
    rec["child"] = launch.child
    rec["child_pid"] = None
    rec["target"] = _target_name(process_obj, qualified_name)
    rec["pickled"] = pickled
    rec["size"] = None
    rec["duration_ns"] = None
    if not pickled and tracer.config.check_spawn:
        from ._spawncheck import check_spawn

        rec["spawn_check"] = check_spawn(process_obj, tracer)
    template = None
    if not tracer._processors:
        try:
            template = template_of(rec, {"ts": TS_HOLE, "seq": b"%d", "child_pid": b"%b",
                                         "size": b"%b", "duration_ns": b"%d"})
        except (TypeError, ValueError):  # the dict path renders what a template cannot
            pass
    return rec, template


def _write_start(tracer: Any, record: Tuple[dict, Optional[bytes]], popen: Any,
                 launch: _Launch, duration: int) -> None:
    rec, template = record
    pid = getattr(popen, "pid", None)
    size = launch.size if rec["pickled"] else None
    seq = next(_tracer._seq)
    if template is not None and (pid is None or type(pid) is int):
        from ._pickler import ts_parts

        tracer.sink.write(template % (*ts_parts(), seq, _number(pid), _number(size), duration))
        return
    rec["ts"] = time()
    rec["seq"] = seq
    rec["child_pid"] = pid
    rec["size"] = size
    rec["duration_ns"] = duration
    tracer.emit(rec)


def _number(value: Optional[int]) -> bytes:
    return b"null" if value is None else b"%d" % value


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
    pickler = sys.modules.get("tracedmp._pickler")
    if pickler is not None:
        pickler.forget_templates()
    if _tracer.current is not None:
        _tracer.after_fork_in_child()
