"""Starting and stopping tracing, and the public ways to do it; the top of ``_runtime``.

``activate`` puts a ``Tracer`` in ``tracer.current`` and the hooks in multiprocessing;
``deactivate`` takes both out again.  ``configure``/``install``/``uninstall`` are the public
faces, and the first use of tracedmp's multiprocessing API calls ``activate_implicitly``.
"""

from __future__ import annotations

import itertools
import os
import sys

from .. import _errors, _integrations
from . import channels as _channels
from . import child as _child
from . import config as _config
from . import hooks as _hooks
from . import tracer as _tracer

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Optional, Sequence, Tuple, Union

    from .config import Processor

__all__ = ["activate", "activate_implicitly", "configure", "deactivate", "get_config",
           "install", "is_tracing", "pop", "push", "reconfigure", "reset_config", "uninstall"]

# Implicit activation (first use of tracedmp's multiprocessing API) happens once per process;
# after an explicit uninstall() only an explicit install() starts tracing again.
_implicit_allowed = True
_UNSET: Any = object()  # the default of every configure() argument


def activate(config: Optional[_config.Config] = None, *,
             main: Optional[bool] = None, trace_start: bool = True,
             implicit: bool = False, sink: Any = None) -> _tracer.Tracer:
    """Start tracing with ``config`` (default: the resolved settings); idempotent.

    ``main``: whether this is the program's main process (it announces a default trace file,
    writes ``trace_start`` unless told not to, and maps reserved space for its records); worked
    out when not given.  ``implicit``: started by the first use of tracedmp's API, not asked
    for: the file is made by the first record (a program that records nothing, or chooses
    another file first, leaves none behind).  ``sink``: where the records go instead of
    ``config.trace`` (a process whose trace is elsewhere, ``forward.ForwardingSink``;
    ``config.trace`` is then where its children write)."""
    if _tracer.current is not None:
        return _tracer.current
    _tracer.forked_since_start()
    if main is None:
        main = _tracer.is_main_process()
    cfg = config if config is not None else _config.resolve()
    if not cfg.enabled:
        raise ValueError("tracing is off")
    announce = False
    chosen = cfg.trace is not None  # by configure(), TRACEDMP_TRACE or tracedmp run
    if not chosen:
        cfg = cfg.replace(trace=_config.default_trace_path())
        announce = main
    if cfg.trace != _tracer._seq_file:  # each trace file numbers a process's records from 0
        _tracer._seq = itertools.count()
        _tracer._seq_file = cfg.trace  # type: ignore[assignment]  # a path by now
    tracer = _tracer.Tracer(cfg, main=main, sink=sink)
    tracer.implicit, tracer.file_chosen = implicit, chosen
    if main:
        # A bad path is an error now, naming the path, not a lost trace.
        if implicit:
            tracer.sink.check(ours=not chosen)  # made by the first record: none if none comes
        else:
            tracer.sink.open()
    _hook_in(tracer)
    if main and trace_start:
        rec = _trace_start(cfg)
        if implicit:
            _put_off(tracer, rec, announce)
        else:  # asked for: the file says so at once (readers of a trace still being written)
            tracer.emit(rec)
    if announce and not implicit:
        _announce(cfg.trace)  # type: ignore[arg-type]  # a path by now
    return tracer


def _trace_start(cfg: _config.Config) -> dict:
    from .._version import __version__  # only the main process writes trace_start

    rec = _tracer.base_record("trace_start", None)
    rec.update(
        tracedmp=__version__,
        python=sys.version.split()[0],
        platform=sys.platform,
        program=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else None,
        pickler=cfg.pickler,
        parts_threshold=cfg.parts_threshold,
        mode=cfg.mode,
    )
    return rec


def _put_off(tracer: _tracer.Tracer, rec: dict, announce: bool) -> None:
    """Tracing started by first use: ``trace_start`` (and the default file's announcement) go
    into the file with this process's first record there, at no cost to the records after it;
    or at exit if the file was chosen (``TRACEDMP_TRACE``: readers then find a trace saying
    nothing was pickled).  A program that chooses another file first, or uninstalls, or
    records nothing in a default file, leaves that file as it was, or never makes it."""
    tracer.start_seq = rec["seq"]  # its ts and seq are those of the start

    def write() -> None:
        if announce:
            _announce(tracer.config.trace)  # type: ignore[arg-type]  # a path by now
        _tracer.safely(tracer.emit, rec)

    tracer.sink.write_first(write)
    global _exit_hooked
    if not _exit_hooked:
        _exit_hooked = True
        # atexit, not multiprocessing's finalizers: those run after it (summary mode's last
        # write among them), and find trace_start written.  Only a main process gets here;
        # multiprocessing's children end with os._exit, and a fork drops what is put off.
        import atexit

        atexit.register(_start_at_exit)


_exit_hooked = False


def _start_at_exit() -> None:
    tracer = _tracer.current
    if tracer is not None and tracer.file_chosen:
        tracer.sink.write_pending()


def _drop_put_off(tracer: _tracer.Tracer) -> None:
    """Tracing stops before its first record: its trace_start is not written, and its number
    given back if nothing was numbered since (the next start in that file takes it)."""
    if tracer.sink.drop_pending() and _tracer._seq_file == tracer.config.trace:
        if next(_tracer._seq) == tracer.start_seq + 1:
            _tracer._seq = itertools.count(tracer.start_seq)


def _announce(path: str) -> None:
    sys.stderr.write(
        f"tracedmp: tracing to {path} "
        "(set TRACEDMP_TRACE to choose the file, TRACEDMP_TRACE=off to turn tracing off)\n"
    )


def _hook_in(tracer: _tracer.Tracer) -> None:
    _hooks.install_patches(tracer)
    _integrations.install_all(tracer, _child.patch_when_imported, _child.patch_when_finished)
    _channels.forget_call_sites()  # call sites remember templates made with earlier settings
    records = sys.modules.get("tracedmp._runtime.records")  # only if imported: see hooks
    if records is not None:
        records.forget_templates()
    parts = sys.modules.get("tracedmp._runtime.parts")  # imported once a pickle was large
    if parts is not None:
        parts.forget_budgets()
    _tracer.current = tracer


class Suspended:
    """What :func:`push` put aside: the tracer that was running (or None) and this process's
    record numbering."""

    __slots__ = ("tracer", "seq")

    def __init__(self, tracer: Optional[_tracer.Tracer], seq: Any) -> None:
        self.tracer = tracer
        self.seq = seq


def push(config: _config.Config, *, trace_start: bool) -> Tuple[_tracer.Tracer, Suspended]:
    """Trace with ``config`` for a while (``tracedmp.capture()``): the tracing running now, if
    any, is suspended with its file open, to come back with :func:`pop`.  The new trace numbers
    this process's records from 0, as a trace of its own does."""
    suspended = Suspended(_tracer.current, _tracer._seq)
    _tracer._seq = itertools.count()
    _tracer._seq_file = config.trace  # type: ignore[assignment]
    _tracer.current = None  # its hooks are replaced by the new tracer's
    try:
        return activate(config, trace_start=trace_start), suspended
    except BaseException:  # e.g. a trace file that cannot be written: all back as it was
        if _tracer.current is None:  # (activate stopped before it was done)
            _integrations.uninstall_all()
            _hooks.remove_patches()
        pop(suspended)
        raise


def pop(suspended: Suspended, forward: Any = None) -> None:
    """Stop the tracing :func:`push` started and bring back what it suspended, as it was;
    ``forward(outer)`` runs in between, with the outer numbering back (nothing else writes to
    the outer trace then)."""
    deactivate()
    outer = suspended.tracer
    if os.getpid() == _tracer._pid:  # (a forked child's numbering is its own)
        _tracer._seq = suspended.seq
        _tracer._seq_file = outer.config.trace if outer is not None else None  # type: ignore[assignment]
    if outer is not None:
        try:
            if forward is not None:
                forward(outer)
        finally:
            _hook_in(outer)


def deactivate() -> None:
    if _tracer.current is not None:
        _tracer.write_summary(_tracer.current)
        _drop_put_off(_tracer.current)
    tracer, _tracer.current = _tracer.current, None
    summary = sys.modules.get("tracedmp._runtime.summary")
    if summary is not None:
        summary.reset()
    if tracer is not None:
        _integrations.uninstall_all()
        _hooks.remove_patches()
        tracer.sink.close()


def activate_implicitly() -> None:
    """First use of tracedmp's multiprocessing API: start tracing unless it is off.

    Unlike an explicit ``install()``, a trace file that cannot be written is a warning here:
    the program asked for multiprocessing, not for a trace."""
    if _tracer.current is None and _implicit_allowed:
        child = sys.modules.get("tracedmp._runtime.child")
        if child is not None:  # a spawned child waiting to trace with its parent's settings
            child.start_pending()
            if _tracer.current is not None:
                return
        try:
            _install(implicit=True)
        except _errors.TraceFileError as exc:
            sys.stderr.write(f"tracedmp: {exc}; running untraced\n")


def install() -> None:
    """Start tracing now with the configured settings (explicit counterpart of first use)."""
    _install(implicit=False)


def _install(*, implicit: bool) -> None:
    global _implicit_allowed
    _implicit_allowed = False
    if _tracer.current is None:
        cfg = _config.resolve()
        if cfg.enabled:
            activate(cfg, implicit=implicit)


def uninstall() -> None:
    """Stop tracing and remove every hook from multiprocessing; first use will not restart it."""
    global _implicit_allowed
    _implicit_allowed = False
    deactivate()


def reconfigure(*, start: bool) -> None:
    """Apply changed settings: restart running tracing with them, or start it if asked."""
    global _implicit_allowed
    current = _tracer.current
    if not (current is not None or start):
        return
    cfg = _config.resolve()
    main = current.main if current is not None else None
    if current is not None and cfg.trace is None:
        same_file = cfg.replace(trace=current.config.trace)  # keep the file already announced
        if same_file == current.config:
            return
        # (a default file not made yet: the restart picks, and announces, its own)
        if not (current.implicit and not current.file_chosen and current.sink.pending()):
            cfg = same_file
    if current is not None and cfg == current.config:
        return
    # Started by first use, and the same file (or a default one not announced yet): still
    # made only by a first record.
    implicit = current is not None and current.implicit and cfg.trace in (
        None, current.config.trace)
    deactivate()
    _implicit_allowed = False
    if cfg.enabled:
        activate(cfg, main=main, implicit=implicit)


def is_tracing() -> bool:
    """Whether this process is tracing now."""
    return _tracer.current is not None


def configure(
    *,
    trace: Union[str, "os.PathLike[str]", bool, None] = _UNSET,
    pickler: str = _UNSET,
    unpickle: bool = _UNSET,
    check_spawn: bool = _UNSET,
    processors: Optional[Sequence[Processor]] = _UNSET,
    diagnose: bool = _UNSET,
    parts_threshold: Union[int, bool, None] = _UNSET,
    mode: str = _UNSET,
    summary_interval: float = _UNSET,
) -> None:
    """Set tracing options; arguments left out keep their current setting.

    - ``trace``: path of the JSON Lines trace file every process appends to; ``False`` turns
      tracing off (``None`` goes back to the environment variable or the default).
    - ``pickler``: ``"pickle"`` (the stdlib's, as multiprocessing uses) or ``"cloudpickle"``.
    - ``unpickle``: also record every unpickling (``event: "unpickle"``).
    - ``check_spawn``: for processes started with fork, record whether their target and args
      would pickle, as spawn and forkserver need.
    - ``processors``: structlog processors run on every record before it is written.
    - ``diagnose``: after a pickling failure, search for the path to the failing part by
      pickling parts of the object again (Pythons before 3.14, which do not say it; this runs
      the program's reducers again, within a budget). ``False``: no search.
    - ``parts_threshold``: pickles of at least this many bytes (or ``"64k"``, ``"1m"``) name
      their largest parts (``parts`` in the record; default 64 KiB); ``False`` or ``0`` turns
      that off.
    - ``mode``: ``"full"`` (a record per pickle) or ``"summary"`` (per process, aggregates
      per kind of pickle, the largest few of each kind in full, every failure and process start).
    - ``summary_interval``: seconds between a summary-mode process's writes (default 1).

    Giving a path as ``trace`` starts tracing at once; other changes apply to tracing that is
    already running and are used when it starts.
    """
    given = {"trace": trace, "pickler": pickler, "unpickle": unpickle,
             "check_spawn": check_spawn, "processors": processors, "diagnose": diagnose,
             "parts_threshold": parts_threshold, "mode": mode,
             "summary_interval": summary_interval}
    new = dict(_config._explicit)
    for name, value in given.items():
        if value is not _UNSET:
            new[name] = _config.check_option(name, value)
    _config._explicit.clear()
    _config._explicit.update({k: v for k, v in new.items() if v is not None})
    reconfigure(start=isinstance(new.get("trace"), str))


def get_config() -> _config.Config:
    """The settings in force: those of running tracing, else what starting it now would use."""
    active = _tracer.current
    return active.config if active is not None else _config.resolve()


def reset_config() -> None:
    """Forget every ``configure()`` setting (environment variables and defaults apply again)."""
    _config._explicit.clear()
    reconfigure(start=False)
