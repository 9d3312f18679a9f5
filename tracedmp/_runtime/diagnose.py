"""After a pickling failure: where the offending object sits, and a one-line fix.

Runs only after pickle has already raised, so the success path pays nothing.  It walks down the
object the way pickle does (containers, attributes, ``__reduce_ex__`` state, closures) and keeps
descending into the first child that fails to pickle on its own, within a time and work budget.
"""

from __future__ import annotations

import io
import time
import types
from typing import Any, Callable, Iterator, List, Optional, Tuple

# dump(obj, file, pickler): pickle obj with the named pickler, raise as it would (picklers gives it)
Dump = Callable[[Any, Any, str], None]

__all__ = ["diagnose", "find_path", "hint_for"]

_MAX_STEPS = 2000
_MAX_SECONDS = 1.0
_MAX_CHILDREN = 200
_SHOWN_SEGMENTS = 24

_PROCESS_ATTRS = {"_target": "target", "_args": "args", "_kwargs": "kwargs"}


def diagnose(obj: Any, exc: BaseException, pickler: str, channel: Optional[str] = None, *,
             dump: Dump) -> Tuple[Optional[str], str]:
    path, leaf = find_path(obj, pickler, channel, dump=dump)
    return path, hint_for(exc, leaf if leaf is not None else obj, pickler)


def find_path(obj: Any, pickler: str = "pickle", channel: Optional[str] = None, *,
              dump: Dump) -> Tuple[Optional[str], Any]:
    """``(path, leaf)``: the deepest part of ``obj`` that still fails to pickle on its own."""
    deadline = time.monotonic() + _MAX_SECONDS
    budget = [_MAX_STEPS]

    def fails(candidate: Any) -> bool:
        budget[0] -= 1
        try:
            dump(candidate, io.BytesIO(), pickler)
        except RecursionError:
            return True
        except Exception:
            return True
        return False

    segments: List[str] = []
    current = obj
    seen = {id(obj)}
    while budget[0] > 0 and time.monotonic() < deadline:
        for label, child in _children(current):
            if id(child) in seen or budget[0] <= 0:
                continue
            if fails(child):
                segments.append(label)
                seen.add(id(child))
                current = child
                break
        else:
            break
    if channel == "pool.task" and isinstance(obj, tuple) and len(obj) == 5:
        segments = _pool_task_segments(obj, segments)
    return _join(segments), current


def _pool_task_segments(task: tuple, segments: List[str]) -> List[str]:
    # A Pool task is (job, index, func, args, kwds); map-style tasks wrap (func, chunk) in
    # args for mapstar/starmapstar.  Say it in the caller's words.
    from multiprocessing import pool

    if not segments:
        return segments
    head, rest = segments[0], segments[1:]
    if task[2] in (pool.mapstar, pool.starmapstar) and head == "[3]" and rest[:1] == ["[0]"]:  # type: ignore[attr-defined]
        if rest[1:2] == ["[0]"]:
            return ["task.func"] + rest[2:]
        if rest[1:2] == ["[1]"] and len(rest) > 2:
            return [f"task.items{rest[2]}"] + rest[3:]
    names = {"[2]": "task.func", "[3]": "task.args", "[4]": "task.kwds"}
    return [names[head]] + rest if head in names else segments


def _join(segments: List[str]) -> Optional[str]:
    if not segments:
        return None
    if len(segments) > _SHOWN_SEGMENTS:
        head, tail = segments[:16], segments[-6:]
        hidden = len(segments) - len(head) - len(tail)
        segments = head + [f"...({hidden} more)..."] + tail
    path = "".join(segments)
    return path[1:] if path.startswith(".") else path


def _children(obj: Any) -> Iterator[Tuple[str, Any]]:
    from multiprocessing.process import BaseProcess

    if isinstance(obj, dict):
        for i, (key, value) in enumerate(obj.items()):
            if i >= _MAX_CHILDREN:
                return
            yield f"[{_key(key)}]", value
            yield f"<key {_key(key)}>", key
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj[:_MAX_CHILDREN]):
            yield f"[{i}]", value
    elif isinstance(obj, (set, frozenset)):
        for i, value in enumerate(obj):
            if i >= _MAX_CHILDREN:
                return
            yield "{item}", value
    elif isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            try:
                yield f".__closure__[{i}].cell_contents", cell.cell_contents
            except ValueError:  # an empty cell
                pass
        for i, value in enumerate(obj.__defaults__ or ()):
            yield f".__defaults__[{i}]", value
        for name in obj.__code__.co_names:
            if name in obj.__globals__:
                yield f".__globals__[{name!r}]", obj.__globals__[name]
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
    else:
        state = _state(obj)
        if isinstance(state, dict):
            for i, (name, value) in enumerate(state.items()):
                if i >= _MAX_CHILDREN:
                    return
                if isinstance(obj, BaseProcess):
                    label = _PROCESS_ATTRS.get(name, name)
                    yield (f".{label}" if label != name else f".{name}"), value
                else:
                    yield (f".{name}" if isinstance(name, str) else f"[{name!r}]"), value
        elif state is not None:
            yield ".__getstate__()", state


def _state(obj: Any) -> Any:
    getstate = getattr(obj, "__getstate__", None)
    try:
        if getstate is not None:
            state = getstate()
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
                merged = dict(state[0] or {})  # (dict, slots) as objects with __slots__ give
                merged.update(state[1])
                return merged
            return state
    except Exception:
        pass
    return getattr(obj, "__dict__", None)


def _key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


_LOCK_TYPES = ("lock", "RLock", "Condition", "Semaphore", "Event")
_RESOURCE_WORDS = {
    "socket": "a socket",
    "SSLContext": "an SSL context",
    "TextIOWrapper": "an open file",
    "BufferedReader": "an open file",
    "BufferedWriter": "an open file",
    "FileIO": "an open file",
    "Connection": "a database or network connection",
    "generator": "a generator",
    "coroutine": "a coroutine",
}


def hint_for(exc: BaseException, leaf: Any, pickler: str) -> str:
    """A one-line fix that fits why ``leaf`` could not be pickled."""
    message = str(exc)
    name = getattr(leaf, "__qualname__", "") if callable(leaf) else ""
    leaf_type = type(leaf).__name__
    if isinstance(exc, RecursionError) or "recursion" in message:
        return ("the object nests too deeply for pickle: flatten it, or raise "
                "sys.setrecursionlimit() in the parent and the children")
    if "<lambda>" in message or name == "<lambda>" or name.endswith(".<lambda>"):
        return ("a lambda cannot travel by reference: define it with def at module level, or "
                "use the cloudpickle pickler (configure(pickler='cloudpickle'))")
    if "local object" in message or "<locals>" in name:
        return ("a function or class defined inside another function cannot be imported by the "
                "child: define it at module level, or use the cloudpickle pickler "
                "(configure(pickler='cloudpickle'))")
    if "on __main__ failed" in message or "__main__" in message and "attribute" in message:
        return ("the child cannot find this in __main__ (defined in a REPL or notebook, or "
                "after the processes started): move it into a module file and import it")
    if "SemLock created in a fork context" in message:
        return ("create the lock or queue from the same context as the processes that use it "
                "(ctx = get_context(method); ctx.Lock())")
    if "through inheritance" in message:
        return ("this object can only reach a child at its start: pass it in Process(args=...) "
                "or a Pool initializer, or use a Manager().Queue() / Manager().Lock() instead")
    if any(word in leaf_type for word in _LOCK_TYPES) or "_thread.lock" in message:
        return ("a lock cannot be sent to another process: create it in the child (e.g. in a "
                "Pool initializer), or share a multiprocessing or Manager() lock passed at start")
    for word, what in _RESOURCE_WORDS.items():
        if word in leaf_type or f"'{word}'" in message:
            return (f"{what} cannot be sent to another process: send what is needed to recreate "
                    "it (a path, an address) and open it in the child")
    if pickler == "pickle" and isinstance(leaf, types.FunctionType):
        return ("functions travel by reference (module + name) and this one cannot be imported "
                "by that name: define it at module level, or use the cloudpickle pickler")
    return (f"make {type(leaf).__module__}.{type(leaf).__qualname__} picklable (define "
            "__reduce__ or __getstate__), or keep it out of what you send")
