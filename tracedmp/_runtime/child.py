"""How tracing reaches children that start in a fresh interpreter (spawn and forkserver).

The settings ride in the process object's ``_config`` dict, which multiprocessing pickles with the
process and which every Process created in the child copies: unpickling them in the child starts
tracing there before the target runs, and hands it on to grandchildren.  Forked children need
none of this: they inherit the parent's hooks and open trace file.

Tracing starts for real at the child's first use of something it traces (starting a process,
writing launch data, importing a pipe or queue module, tracedmp's API): until then stand-ins
wait in its place, and a child that uses none of them, a common case, loads no more of tracedmp.

What the interpreter itself holds on to until its very end lives here too: the fork handlers and
the finder that patches ``multiprocessing.connection`` and ``queues`` once imported.  This module
imports nothing of tracedmp or multiprocessing and finds them by name: whatever those objects
reach outlives the first garbage collection at exit, and keeping tracedmp's and multiprocessing's
modules alive that long costs every spawned child ~0.2 ms at exit.
"""

import _thread
import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ChildSettings", "attach", "detach"]

KEY = "tracedmp"


class ChildSettings:
    """Picklable carrier of the settings a child traces with."""

    __slots__ = ("settings",)

    def __init__(self, settings: "Dict[str, Any]") -> None:
        self.settings = settings

    def __reduce__(self) -> "Any":
        return (restore, (self.settings,))


def restore(settings: "Dict[str, Any]") -> "ChildSettings":
    """Runs in the child while it unpickles its process object: start tracing there, at once
    if tracedmp or a pipe or queue module is already in use, else at the first use of one."""
    global _pending
    if "tracedmp._runtime.tracer" in sys.modules or any(m in sys.modules for m in _CARRIERS):
        _start(settings)
    else:
        if _pending is None:
            _stand_in()
        _pending = settings
    return ChildSettings(settings)


def start_pending() -> None:
    """Start the tracing that restore() left waiting, if any: before anything it would trace."""
    global _pending
    if _pending is None:
        return
    with _lock:  # a second thread here waits until the hooks are in
        if _pending is not None:
            _remove_stand_ins()
            _start(_pending)
            _pending = None


def _start(settings: "Dict[str, Any]") -> None:
    # The one import up the line in _runtime: unpickling its launch data is how a spawned child
    # starts tracing, so this bootstrap must reach the top (control); imported only now, when
    # tracing starts, so that a child that uses nothing traced never loads the rest.
    from . import control, tracer
    from .config import Config

    settings = dict(settings)
    mode = "summary" if settings.pop("summary", False) else "full"
    config = Config(mode=mode, **settings)
    current = tracer.current
    if current is None or current.config != config:
        # The parent's settings win over what re-importing the main module may have started
        # here (a module-level tracedmp.Queue() would trace to a file of the child's own).
        try:
            control.deactivate()
            control.activate(config, main=False)
        except Exception as exc:  # never keep a child from starting
            sys.stderr.write(f"tracedmp: tracing not started in this child: {exc}\n")


_CARRIERS = ("multiprocessing.connection", "multiprocessing.queues")
_pending: "Optional[Dict[str, Any]]" = None  # settings waiting for the child's first use
_lock = _thread.allocate_lock()
_fork_handler_registered = False


def _new_lock() -> None:
    global _lock
    _lock = _thread.allocate_lock()


def _stand_in() -> None:
    """Start tracing from where hooks will patch: launch data, process starts, carriers."""
    global _fork_handler_registered
    if not _fork_handler_registered:
        # A process forked while another thread held the lock would wait on it forever.
        os.register_at_fork(after_in_child=_new_lock)
        _fork_handler_registered = True
    for owner, name in _places():
        original = vars(owner)[name]
        stand_in = _starting(owner, name)
        # The stand-in keeps the original, not this module: see the module's docstring.
        stand_in.tracedmp_original = original
        setattr(owner, name, staticmethod(stand_in) if isinstance(original, staticmethod)
                else stand_in)
    for name in _CARRIERS:
        patch_when_imported(name)


def _starting(owner: "Any", name: str) -> "Any":
    def stand_in(*args: "Any", **kwargs: "Any") -> "Any":
        start_pending()
        return getattr(owner, name)(*args, **kwargs)  # tracedmp's hook now, or the original

    return stand_in


def _remove_stand_ins() -> None:
    for owner, name in _places():
        current = vars(owner).get(name)
        original = getattr(getattr(current, "__func__", current), "tracedmp_original", None)
        if original is not None:
            setattr(owner, name, original)


def _places() -> "List[Tuple[Any, str]]":
    from multiprocessing import context, reduction

    return [(reduction, "dump")] + [(klass, "_Popen") for klass in (
        context.ForkProcess, context.SpawnProcess, context.ForkServerProcess)]


def after_fork_in_child() -> None:  # the os.register_at_fork handler
    hooks = sys.modules.get("tracedmp._runtime.hooks")
    if hooks is not None:
        hooks.after_fork_in_child()


def attach(process_obj: "Any", config: "Any") -> None:
    settings = {
        "trace": config.trace,
        "pickler": config.pickler,
        "unpickle": config.unpickle,
        "check_spawn": config.check_spawn,
        "diagnose": config.diagnose,
        "parts_threshold": config.parts_threshold,
        # A bool and a float: the launch data weighs the same in either mode.
        "summary": config.mode == "summary",
        "summary_interval": float(config.summary_interval),
    }
    process_obj._config[KEY] = ChildSettings(settings)


def detach(process_obj: "Any") -> None:
    process_obj._config.pop(KEY, None)


_watched: set = set()  # modules to patch right after their import


def patch_when_imported(name: str) -> None:
    """Have ``hooks`` patch module ``name`` (a carrier) right after it is imported, or the
    integration of library ``name`` installed."""
    _watched.add(name)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


# Library modules still being imported when tracing started (``tracedmp run`` starts it right
# after multiprocessing's import, which may come from inside one): their integration is
# installed at the first import that follows the end of theirs, once their names are bound.
_finishing: list = []


def patch_when_finished(name: str) -> None:
    """Have the integration of library ``name``, being imported now, installed once it ran."""
    if name not in _finishing:
        _finishing.append(name)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def stop_watching() -> None:
    _watched.clear()
    del _finishing[:]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def _check_finishing() -> None:
    for name in list(_finishing):
        module = sys.modules.get(name)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing",
                                          False):
            continue  # still running
        _finishing.remove(name)
        if module is not None:  # (None: its import failed)
            _install_integration(name)


def _install_integration(name: str) -> None:
    integrations = sys.modules.get("tracedmp._integrations")
    tracer = sys.modules.get("tracedmp._runtime.tracer")
    current = getattr(tracer, "current", None)
    if integrations is not None and current is not None:
        try:
            integrations.imported(name, current)
        except Exception as exc:  # the program's import must succeed whatever happens here
            sys.stderr.write(f"tracedmp: {name} is not traced: {exc!r}\n")


class _Finder:
    """Finds nothing itself: wraps the real loader of a watched module."""

    def find_spec(self, name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if _finishing:
            _check_finishing()
        if name not in _watched:
            return None
        start_pending()  # before the module runs: the hooks then patch it as it is imported
        for finder in sys.meta_path:
            if isinstance(finder, _Finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, name)  # type: ignore[assignment]  # duck-typed
        return spec


class _Loader:
    def __init__(self, loader: "Any", name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._loader, name)

    def create_module(self, spec: "Any") -> "Any":
        return self._loader.create_module(spec)

    def exec_module(self, module: "Any") -> None:
        self._loader.exec_module(module)
        # The real loader goes back before anything can look at it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        if self._name not in _watched:
            return
        _watched.discard(self._name)
        if not _watched and not _finishing:
            stop_watching()
        if self._name in _CARRIERS:
            hooks = sys.modules.get("tracedmp._runtime.hooks")
            if hooks is not None:
                hooks.patch_carrier(module)
            return
        _install_integration(self._name)
