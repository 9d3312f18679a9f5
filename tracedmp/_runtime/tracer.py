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

from . import _config
from ._errors import TraceFileError
from ._sink import TraceFile

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = ["FORMAT_VERSION", "Tracer", "activate", "current", "deactivate", "reconfigure"]

FORMAT_VERSION = 1

_dumps = None  # orjson.dumps, imported once a process makes records no template fits

# orjson renders a record in ~0.4 us but takes ~14 ms to import (dataclasses, inspect, uuid...),
# about what a short traced program spends on everything else tracedmp does.  Records no template
# fits (trace_start, launch data, the first of each kind) are rendered by the templates' own small
# JSON writer (~9 us each) until it has cost about what that import would; only a process that
# goes on making such records (functions by value, failures, structlog processors) loads orjson.
_SMALL_WRITER_RECORDS = 1024
_small_writer_left = _SMALL_WRITER_RECORDS


def _render(record: dict) -> bytes:
    global _dumps, _small_writer_left
    dumps = _dumps
    if dumps is None:
        if _small_writer_left > 0:
            _small_writer_left -= 1
            from ._pickler import json_bytes

            try:
                return json_bytes(record) + b"\n"
            except (TypeError, ValueError, RecursionError):  # what only orjson or json renders
                pass
        dumps = _dumps = _load_dumps()
    try:
        return dumps(record)
    except Exception:  # lone surrogates (undecodable names), odd values from processors
        return _render_safe(record)


def _load_dumps():  # type: ignore[no-untyped-def]
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
        return _render_safe
    option = orjson.OPT_APPEND_NEWLINE
    return lambda record: orjson.dumps(record, option=option)


def _render_safe(record: dict) -> bytes:
    import json

    # Names that are not valid Unicode (lone surrogates from undecodable bytes) are written as
    # their backslash escapes, so the line stays valid UTF-8 JSON for every reader.
    return json.dumps(_clean(record), ensure_ascii=False, separators=(",", ":"),
                      default=repr).encode("utf-8") + b"\n"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


current: Optional["Tracer"] = None
# Implicit activation (first use of tracedmp's multiprocessing API) happens once per process;
# after an explicit uninstall() only an explicit install() starts tracing again.
_implicit_allowed = True

# Process identity, cached and reset in a forked child.
_pid = os.getpid()
_seq = itertools.count()
_own_start_method: Optional[str] = None


class Tracer:
    """Running tracing: the settings, the trace file and the record pipeline."""

    def __init__(self, config: _config.Config, *, main: bool = False) -> None:
        self.config = config
        self.main = main
        self.sink = TraceFile(config.trace, buffered=main)  # type: ignore[arg-type]
        self.pickler = config.pickler
        self._processors = config.processors

    def emit(self, record: dict) -> None:
        if self._processors:
            line = self._run_processors(record)
            if line is None:
                return
        else:
            line = _render(record)
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
        return _render(record)


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


_exit_hooks_registered = False


def _flush_at_exit() -> None:
    """Write the main process's buffer out after multiprocessing's own exit handlers ran."""
    global _exit_hooks_registered
    if _exit_hooks_registered:
        return
    _exit_hooks_registered = True
    import atexit

    from multiprocessing import util

    # multiprocessing's exit handler runs finalizers highest priority first and this one last;
    # atexit covers a program whose multiprocessing exit handler is gone (os._exit excepted).
    util.Finalize(None, _final_flush, exitpriority=-(2**31))
    atexit.register(_final_flush)


def _final_flush() -> None:
    tracer = current
    if tracer is not None:
        tracer.sink.flush(then_write_through=True)


def flush_before_fork() -> None:
    tracer = current
    if tracer is not None:
        tracer.sink.flush()


def after_fork_in_child() -> None:
    global _pid, _seq, _own_start_method
    _pid = os.getpid()
    _seq = itertools.count()
    # Learnt again on the first record, once the child knows its process object (a forkserver
    # child is forked too, so "fork" would be wrong for it).
    _own_start_method = None
    # Only if imported: importing it here would cost every forked child ~0.2 ms.
    channels = sys.modules.get("tracedmp._channels")
    if channels is not None:
        channels.forget_call_sites()
    if current is not None:
        current.sink.after_fork_in_child()


def is_main_process() -> bool:
    """Not a process multiprocessing started (a spawned child is one while it unpickles its
    launch data and re-imports the main module, before it knows its parent)."""
    return _mp_process._parent_process is None and not getattr(  # type: ignore[attr-defined]
        _mp_process._current_process, "_inheriting", False)  # type: ignore[attr-defined]


def activate(config: Optional[_config.Config] = None, *,
             main: Optional[bool] = None) -> "Tracer":
    """Start tracing with ``config`` (default: the resolved settings); idempotent.

    ``main``: whether this is the program's main process (it announces a default trace file,
    writes ``trace_start`` and batches its writes); worked out when not given."""
    global current, _pid, _seq, _own_start_method
    if current is not None:
        return current
    if os.getpid() != _pid:  # forked while tracing was off: the at-fork reset did not run
        _pid, _seq, _own_start_method = os.getpid(), itertools.count(), None
    if main is None:
        main = is_main_process()
    cfg = config if config is not None else _config.resolve()
    if not cfg.enabled:
        raise ValueError("tracing is off")
    announce = False
    if cfg.trace is None:
        cfg = cfg.replace(trace=_config.default_trace_path())
        announce = main
    tracer = Tracer(cfg, main=main)
    if main:
        tracer.sink.open()  # a bad path is an error now, naming the path, not a lost trace
        _flush_at_exit()
    from . import _channels, _hooks

    _hooks.install_patches(tracer)
    _channels.forget_call_sites()  # call sites remember templates made with earlier settings
    if "tracedmp._pickler" in sys.modules:
        sys.modules["tracedmp._pickler"].forget_templates()
    current = tracer
    if main:
        from ._version import __version__  # only the main process writes trace_start

        rec = base_record("trace_start", None)
        rec.update(
            tracedmp=__version__,
            python=sys.version.split()[0],
            platform=sys.platform,
            program=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None,
            pickler=cfg.pickler,
        )
        tracer.emit(rec)
        tracer.sink.flush()  # first in the file, before any child can write
    if announce:
        sys.stderr.write(
            f"tracedmp: tracing to {cfg.trace} "
            "(set TRACEDMP_TRACE to choose the file, TRACEDMP_TRACE=off to turn tracing off)\n"
        )
    return tracer


def deactivate() -> None:
    global current
    tracer, current = current, None
    if tracer is not None:
        from . import _hooks

        _hooks.remove_patches()
        tracer.sink.close()


def activate_implicitly() -> None:
    """First use of tracedmp's multiprocessing API: start tracing unless it is off.

    Unlike an explicit ``install()``, a trace file that cannot be written is a warning here:
    the program asked for multiprocessing, not for a trace."""
    if current is None and _implicit_allowed:
        child = sys.modules.get("tracedmp._child")
        if child is not None:  # a spawned child waiting to trace with its parent's settings
            child.start_pending()
            if current is not None:
                return
        try:
            install()
        except TraceFileError as exc:
            sys.stderr.write(f"tracedmp: {exc}; running untraced\n")


def install() -> None:
    """Start tracing now with the configured settings (explicit counterpart of first use)."""
    global _implicit_allowed
    _implicit_allowed = False
    if current is None:
        cfg = _config.resolve()
        if cfg.enabled:
            activate(cfg)


def uninstall() -> None:
    """Stop tracing and remove every hook from multiprocessing; first use will not restart it."""
    global _implicit_allowed
    _implicit_allowed = False
    deactivate()


def reconfigure(*, start: bool) -> None:
    """Apply changed settings: restart running tracing with them, or start it if asked."""
    global _implicit_allowed
    was_running = current is not None
    if not (was_running or start):
        return
    cfg = _config.resolve()
    main = current.main if current is not None else None
    if current is not None and cfg.trace is None:
        cfg = cfg.replace(trace=current.config.trace)  # keep the file already announced
    if current is not None and cfg == current.config:
        return
    deactivate()
    _implicit_allowed = False
    if cfg.enabled:
        activate(cfg, main=main)


def is_tracing() -> bool:
    """Whether this process is tracing now."""
    return current is not None
