"""Tracing while it runs: who is writing (process identity), what is written, and where.

Records are structlog event dicts.  With no processors configured they go straight to the JSON
renderer and the trace file (a structlog BoundLogger would cost ~8 us a record, a third of a
small Pool task); configured processors run in order first, with structlog's semantics.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from multiprocessing import context as _mp_context
from multiprocessing import process as _mp_process

from .._version import FORMAT_VERSION
from .config import Config
from .render import render
from .sink import TraceFile

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = ["FORMAT_VERSION", "Tracer", "base_record", "current", "internal_error", "safely",
           "start_method_here"]

# The running tracer of this process (set by control.activate), read at every pickle.
current: Optional["Tracer"] = None

# Process identity, cached and reset in a forked child.
_pid = os.getpid()
_seq = itertools.count()
_seq_file: Optional[str] = None  # the trace file _seq numbers this process's records for
_own_start_method: Optional[str] = None


class Tracer:
    """Running tracing: the settings, the trace file and the record pipeline."""

    def __init__(self, config: Config, *, main: bool = False, sink: Any = None) -> None:
        """``sink``: where lines go, if not ``config.trace`` (a ``forward.ForwardingSink``)."""
        self.config = config
        self.main = main
        self.sink = sink if sink is not None else TraceFile(config.trace, mapped=main)  # type: ignore[arg-type]
        self.pickler = config.pickler
        self._processors = config.processors
        # Pickles this large name their parts (parts.py); "never" when that is off.
        self.parts_at = config.parts_threshold or 1 << 62
        self.summary = config.mode == "summary"  # aggregates instead of a record per pickle
        # Set by control.activate: started by first use (the file made by its first record,
        # with the trace_start put off till then, numbered start_seq); whether the file was
        # chosen (configure, TRACEDMP_TRACE, tracedmp run) or is the default one.
        self.implicit = False
        self.start_seq = -1
        self.file_chosen = True

    def emit(self, record: dict) -> None:
        if self._processors:
            line = self._run_processors(record)
            if line is None:
                return
        else:
            line = render(record)
        self.sink.write(line)

    def _run_processors(self, record: Any) -> Optional[bytes]:
        from structlog import DropEvent

        try:
            for proc in self._processors:
                record = proc(self.sink, record.get("event", ""), record)
        except DropEvent:
            return None
        if isinstance(record, bytes):
            return record if record.endswith(b"\n") else record + b"\n"
        if isinstance(record, str):
            return record.encode("utf-8", "backslashreplace").rstrip(b"\n") + b"\n"
        return render(record)


def base_record(event: str, start_method: Optional[str], *, numbered: bool = True) -> dict:
    """The contract fields every record starts with (``ts`` and ``seq`` None if not
    ``numbered``: the caller sets them when the record is complete)."""
    return {
        "v": FORMAT_VERSION,
        "event": event,
        "ts": time.time() if numbered else None,
        "pid": _pid,
        "process": _mp_process._current_process._name,  # type: ignore[attr-defined]
        "start_method": start_method or start_method_here(),
        "seq": next(_seq) if numbered else None,
    }


def start_method_here() -> str:
    """How this process was started; in the main process, the start method now in effect."""
    global _own_start_method
    if _own_start_method is not None:
        return _own_start_method
    default: Any = _mp_context._default_context  # its private fields are not in the stubs
    method = (default._actual_context or default._default_context)._name
    if _mp_process._parent_process is None:  # type: ignore[attr-defined]
        return method  # the main process: the program may still change its start method
    own = getattr(type(_mp_process._current_process), "_start_method", None) or method  # type: ignore[attr-defined]
    _own_start_method = own
    return own


def write_summary(tracer: "Tracer") -> None:
    """Summary mode: write what this process aggregated (when tracing stops)."""
    summary = sys.modules.get("tracedmp._runtime.summary")  # above this module; if imported
    if tracer.summary and summary is not None:
        summary.write()


def after_fork_in_child() -> None:
    global _pid, _seq, _own_start_method
    _pid = os.getpid()
    _seq = itertools.count()
    # Learnt again on the first record, once the child knows its process object (a forkserver
    # child is forked too, so "fork" would be wrong for it).
    _own_start_method = None
    summary = sys.modules.get("tracedmp._runtime.summary")
    if summary is not None:
        summary.reset()  # the parent writes its own aggregates
    if current is not None:
        current.sink.after_fork_in_child()


def is_main_process() -> bool:
    """Not a process multiprocessing started (a spawned child is one while it unpickles its
    launch data and re-imports the main module, before it knows its parent)."""
    return _mp_process._parent_process is None and not getattr(  # type: ignore[attr-defined]
        _mp_process._current_process, "_inheriting", False)  # type: ignore[attr-defined]


def forked_since_start() -> None:
    """Process identity again if this process was forked while tracing was off (the at-fork
    reset did not run)."""
    global _pid, _seq, _own_start_method
    if os.getpid() != _pid:
        _pid, _seq, _own_start_method = os.getpid(), itertools.count(), None


_warned = False


def safely(fn: Any, *args: Any) -> Any:
    # Tracing must never change what the program sees: a bug here costs a record, not a run.
    try:
        return fn(*args)
    except Exception as exc:
        internal_error(exc)
        return None


def internal_error(exc: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        try:
            sys.stderr.write(f"tracedmp: internal error, a record was dropped: {exc!r}\n")
        except Exception:
            pass
