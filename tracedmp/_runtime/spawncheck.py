"""Would this fork-started process also start under spawn or forkserver?

Pickles the process object and the preparation data exactly as spawn would (with a stand-in
for the spawning Popen, so pipes and locks reduce as they would for a real child) and reports
the outcome.  The child already runs by then: the check never changes how the program runs.
"""

from __future__ import annotations

import io
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


def _checking_pickler(base: type) -> type:
    """The tracing pickler, but a lock or queue made for fork pickles as spawn's would.

    Under spawn the program (or the Pool) would make them from the spawn context: refusing
    the fork-made ones ("A SemLock created in a fork context...") would flag every fork Pool."""
    from multiprocessing.synchronize import SemLock


    class CheckingPickler(base):  # type: ignore[misc]
        __slots__ = ()

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, SemLock) and getattr(obj, "_is_fork_ctx", False):
                state = (0, obj._semlock.kind, obj._semlock.maxvalue, obj._semlock.name)  # type: ignore[attr-defined]
                return (_semlock_stand_in, (state,))
            return super().reducer_override(obj)

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
        size = 0
        for part in (spawn.get_preparation_data(process_obj._name), process_obj):
            buf = io.BytesIO()
            try:
                pickler = checking(buf, None)
                pickler._tracedmp_refs, pickler._tracedmp_by_value = [], None
                pickler.dump(part)
            except Exception as exc:
                path, hint = diagnose(part, exc, tracer.pickler, dump=dump_untraced)
                message = str(exc)[:500]
                return {
                    "would_pickle": False,
                    "error": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
                    "path": path,
                    "hint": hint,
                }
            size += buf.tell()
        return {"would_pickle": True, "size": size}
    finally:
        context.set_spawning_popen(previous)
