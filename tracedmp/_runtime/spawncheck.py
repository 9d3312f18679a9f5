"""Would this fork-started process also start under spawn or forkserver?

Pickles the process object and the preparation data as spawn would (with a stand-in for the
spawning Popen, so pipes and locks reduce as they would for a real child), in the parent, just
before the fork, and reports the outcome.  It must change nothing the program sees, so it runs no
code of the program's: an object whose class is not the standard library's and that brings its
own way of pickling (``__reduce__``, ``__reduce_ex__``, ``__getstate__``, ``__getnewargs__``, a
``copyreg`` reducer) is not asked for it -- its class is checked to be importable by name, and it
counts as ``unchecked``.  The bytes go to a sink that only counts them (no copy): a check costs
one pickling pass over what would be sent, at pickle's speed, and no memory for its result.
"""

from __future__ import annotations

import copyreg
import sys
from typing import Any, Dict

__all__ = ["check_spawn"]


class _WouldBePopen:
    """What reducers ask of the spawning Popen; duplicates nothing."""

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    @staticmethod
    def DupFd(fd: int) -> Any:
        from multiprocessing.popen_spawn_posix import _DupFd

        return _DupFd(fd)


class _Counter:
    """A file that counts what is written to it and keeps nothing."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.count += n
        return n


_HOOKS = ("__reduce_ex__", "__reduce__", "__getstate__", "__getnewargs_ex__", "__getnewargs__")
_OBJECT_HOOKS = tuple(getattr(object, name, None) for name in _HOOKS)
_stdlib: Dict[str, bool] = {}  # module name -> whether the standard library's


def _is_stdlib(module: Any) -> bool:
    if not isinstance(module, str):
        return False
    known = _stdlib.get(module)
    if known is None:
        top = module.partition(".")[0]
        names = getattr(sys, "stdlib_module_names", None)  # 3.10+
        if names is not None:
            known = top in names
        else:  # 3.9: where the module was loaded from
            import sysconfig

            path = getattr(sys.modules.get(top), "__file__", None) or ""
            known = top in sys.builtin_module_names or path.startswith(
                sysconfig.get_paths()["stdlib"]) and "site-packages" not in path
        if len(_stdlib) < 4096:
            _stdlib[module] = known
    return known


def _runs_program_code(t: type) -> bool:
    """Whether pickling a ``t`` would call code of the program's (or of a library's)."""
    if t in copyreg.dispatch_table:
        return not _is_stdlib(getattr(copyreg.dispatch_table[t], "__module__", None))
    for name, default in zip(_HOOKS, _OBJECT_HOOKS):
        hook = getattr(t, name, default)
        if hook is not default:
            owner = next((k for k in t.__mro__ if name in k.__dict__), t)
            if not _is_stdlib(owner.__module__):
                return True
    return False


def _program_code_stand_in(cls: type) -> None:  # never called: the check only measures
    return None


_checking: Dict[type, type] = {}  # by the tracing pickler class: ours, they live as long


def _checking_pickler(base: type) -> type:
    """The tracing pickler, but with nothing of the program's run, and a lock or queue made
    for fork pickled as spawn's would be.

    Under spawn the program (or the Pool) would make them from the spawn context: refusing
    the fork-made ones ("A SemLock created in a fork context...") would flag every fork Pool."""
    known = _checking.get(base)
    if known is not None:
        return known
    from multiprocessing.synchronize import SemLock

    class CheckingPickler(base):  # type: ignore[misc]
        __slots__ = ("unchecked",)

        def reducer_override(self, obj: Any) -> Any:
            t = type(obj)
            if isinstance(obj, SemLock) and getattr(obj, "_is_fork_ctx", False):
                state = (0, obj._semlock.kind, obj._semlock.maxvalue, obj._semlock.name)  # type: ignore[attr-defined]
                return (_semlock_stand_in, (state,))
            if not isinstance(obj, type) and not _is_stdlib(t.__module__) \
                    and _runs_program_code(t):
                try:
                    self.unchecked += 1
                except AttributeError:  # a pickler made by dump_untraced (the failure search)
                    pass
                return (_program_code_stand_in, (t,))  # the class must still import by name
            return super().reducer_override(obj)

    CheckingPickler.__module__ = __name__
    _checking[base] = CheckingPickler
    return CheckingPickler


def _semlock_stand_in(state: Any) -> None:  # never called: the check only measures the pickle
    return None


def check_spawn(process_obj: Any, tracer: Any) -> Dict[str, Any]:
    from multiprocessing import context, spawn

    from .diagnose import diagnose
    from .picklers import dump_untraced, pickler_class

    checking = _checking_pickler(pickler_class(tracer.pickler))
    previous = context.get_spawning_popen()
    context.set_spawning_popen(_WouldBePopen())  # type: ignore[arg-type, unused-ignore]  # duck-typed (typed in newer stubs)
    try:
        size = unchecked = 0
        for part in (spawn.get_preparation_data(process_obj._name), process_obj):
            sink = _Counter()
            pickler = checking(sink, None)
            pickler._tracedmp_refs, pickler._tracedmp_by_value = [], None
            pickler.unchecked = 0
            try:
                pickler.dump(part)
            except Exception as exc:
                path, hint, notes = diagnose(part, exc, checking, dump=dump_untraced,
                                             search=tracer.config.diagnose)
                message = str(exc)[:500]
                result = {
                    "would_pickle": False,
                    "error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
                    "path": path,
                    "hint": hint,
                }
                if notes:
                    result["notes"] = notes
                return result
            size += sink.count
            unchecked += pickler.unchecked
        return {"would_pickle": True, "size": size, "unchecked": unchecked}
    finally:
        context.set_spawning_popen(previous)
