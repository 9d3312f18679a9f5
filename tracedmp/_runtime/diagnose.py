"""After a pickling failure: where the offending object sits, and a one-line fix.

Runs only after pickle has already raised, so the success path pays nothing, and never changes
what the program sees.  Python 3.14 and later say where the failure happened, in notes on the
exception ("when serializing dict item 'b'"): the path is read from them and nothing is pickled
again.  On older Pythons the object is walked the way pickle does (containers, attributes,
``__reduce_ex__`` state, closures), descending into the first child that fails to pickle on its
own.  That search runs the program's reducers again, so it is bounded by a budget of steps, time
and bytes checked while each part is pickled (into a sink that only counts, never a copy), is
skipped when the failed pickle itself took long, and can be turned off (``diagnose=False``).

A dict key is shown in a path only when it cannot be data: an ASCII identifier of up to 32
characters, an integer of up to 4 digits, ``True``/``False``/``None``; any other key shows as
its type and position, e.g. ``args[0][<str key #3>]`` (``list(d)[3]`` is that key).
"""

from __future__ import annotations

import re
import sys
import time
import types
from typing import Any, Callable, Iterator, List, Optional, Tuple

# dump(obj, file, pickler): pickle obj with the pickler (a name or a class), raise as it would
# (picklers gives it)
Dump = Callable[[Any, Any, Any], None]

__all__ = ["diagnose", "find_path", "hint_for", "path_from_notes", "safe_key"]

_MAX_STEPS = 2000
_MAX_SECONDS = 1.0
_MAX_BYTES = 64 << 20
# A failed pickle that already took this long would be repeated, in part, by every step of the
# search: the program would wait twice as long for its exception.  No search then.
_SLOW_FAILURE_NS = 250_000_000
_MAX_CHILDREN = 200
_SHOWN_SEGMENTS = 24
_MAX_NOTES = 24
_MAX_NOTE = 200

_PROCESS_ATTRS = {"_target": "target", "_args": "args", "_kwargs": "kwargs"}
# Children pickle can write without running anyone's code, and that never fail.
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray})
_NOTES_PYTHON = sys.version_info >= (3, 14)  # pickle adds "when serializing ..." notes


def diagnose(obj: Any, exc: BaseException, pickler: Any, channel: Optional[str] = None, *,
             dump: Dump, search: bool = True, failed_after_ns: int = 0
             ) -> Tuple[Optional[str], str, Optional[List[str]]]:
    """``(path, hint, notes)`` for ``obj`` whose pickling with ``pickler`` (a name or a
    pickler class) raised ``exc`` after ``failed_after_ns``.

    ``notes`` are the exception's own notes (Python 3.14+), dict keys in them shown as in
    paths; None if it has none.  ``search``: whether to search by pickling parts again where
    the notes do not say the path (``configure(diagnose=False)`` turns it off)."""
    raw = getattr(exc, "__notes__", None)
    notes = list(raw) if isinstance(raw, list) and raw else None
    leaf: Any = obj
    leaf_type: Optional[str] = None
    if _NOTES_PYTHON:
        segments, leaf, leaf_type, notes = path_from_notes(obj, notes or [])
    elif search and failed_after_ns < _SLOW_FAILURE_NS:
        segments, leaf = find_path(obj, pickler, dump=dump)
    else:
        segments = []
    if channel == "pool.task" and isinstance(obj, tuple) and len(obj) == 5:
        segments = _pool_task_segments(obj, segments)
    return _join(segments), hint_for(exc, leaf, pickler, leaf_type), notes


# --- Python 3.14+: the path from the exception's notes ----------------------------------------

_NOTE = re.compile(r"when serializing (\S+) (object|class|__new__ arguments|reconstructor"
                   r"(?: arguments)?|state(?: setter)?|element|item (.*))\Z", re.S)
_UNKNOWN: Any = object()  # a part of the object the walk could not reach without running code


def path_from_notes(obj: Any, notes: List[str]
                    ) -> Tuple[List[str], Any, Optional[str], Optional[List[str]]]:
    """``(segments, leaf, leaf type name, notes as recorded)`` from pickle's notes.

    Walks ``obj`` alongside only where no code of the program runs (items of dicts, lists and
    tuples; attributes of objects pickled by default), to tell a dict key's position, a
    Process's attributes, and the leaf for the hint."""
    parsed = [(i, m) for i, m in enumerate(_NOTE.match(n) if isinstance(n, str) else None
                                           for n in notes) if m is not None]
    parsed.reverse()  # pickle adds the innermost note first
    shown_items: dict = {}  # note index -> the key as the path shows it
    segments: List[str] = []
    current = obj
    leaf_type: Optional[str] = None
    k = 0
    while k < len(parsed):
        index, m = parsed[k]
        type_name, what, item = m.groups()
        leaf_type = type_name
        k += 1
        if item is not None:
            segment, current = _item(current, item)
            shown_items[index] = segment[1:-1]
            segments.append(segment)
        elif what == "state":
            attrs = _attributes(current)
            # The default state is the __dict__, or (__dict__, slots) with __slots__: an
            # attribute then reads as one, .name.
            if k + 1 < len(parsed) and parsed[k][1].group(1) == "tuple" \
                    and parsed[k][1].group(3) in ("0", "1") and parsed[k + 1][1].group(1) == "dict":
                shown_items[parsed[k][0]] = parsed[k][1].group(3)
                k += 1
            if k < len(parsed) and parsed[k][1].group(1) == "dict" \
                    and parsed[k][1].group(3) is not None:
                index, m = parsed[k]
                k += 1
                name = _literal(m.group(3))
                if isinstance(name, str) and _is_safe_name(name):
                    shown_items[index] = repr(name)
                    if isinstance(current, _process_class()):
                        name = _PROCESS_ATTRS.get(name, name)
                    segments.append(f".{name}")
                else:
                    shown = _hidden(name, None)
                    shown_items[index] = shown
                    segments.append(f"[{shown}]")
                current = attrs.get(name, _UNKNOWN) if attrs is not None else _UNKNOWN
            else:
                segments.append(".__getstate__()")
                current = _UNKNOWN
        elif what == "reconstructor arguments" and isinstance(current, types.MethodType) \
                and k < len(parsed) and parsed[k][1].group(3) == "0":
            # a bound method travels as getattr(its object, its name)
            shown_items[parsed[k][0]] = "0"
            k += 1
            segments.append(".__self__")
            current = current.__self__
        elif what != "object":  # "X object" only says pickle was saving an X
            segments.append(_REDUCE_PARTS[what])
            current = _UNKNOWN
    recorded: List[str] = []
    for index, note in enumerate(notes):
        if index == _MAX_NOTES:
            recorded.append(f"...({len(notes) - _MAX_NOTES} more)")
            break
        match = _NOTE.match(note) if index in shown_items else None
        if match is not None:
            recorded.append(f"when serializing {match.group(1)} item {shown_items[index]}")
        else:
            text = str(note)
            recorded.append(text if len(text) <= _MAX_NOTE else text[:_MAX_NOTE] + "...")
    if current is _UNKNOWN or not segments:
        current = _UNKNOWN if segments else obj
    return segments, current, leaf_type, (recorded or None)


_REDUCE_PARTS = {
    "class": ".__class__",
    "element": "{item}",
    "reconstructor": ".__reduce__()[0]",
    "reconstructor arguments": ".__reduce__()[1]",
    "__new__ arguments": ".__reduce__()[1]",
    "state setter": ".__reduce__()[5]",
}


def _item(container: Any, text: str) -> Tuple[str, Any]:
    """The path segment and the child for an "item K" note (K as repr() wrote it)."""
    key = _literal(text)
    if isinstance(container, dict):
        position, child = _find_key(container, text)
        return f"[{safe_key(key, position)}]", child
    if isinstance(container, (list, tuple)) and type(key) is int:
        try:  # the builtin's item, not a subclass's __getitem__
            child = list.__getitem__(container, key) if isinstance(container, list) \
                else tuple.__getitem__(container, key)
            return f"[{key}]", child
        except IndexError:
            return f"[{key}]", _UNKNOWN
    return f"[{safe_key(key, None)}]", _UNKNOWN


def _find_key(d: dict, text: str) -> Tuple[Optional[int], Any]:
    # Only keys whose repr() is a builtin's are compared: no program code runs.
    for position, (key, value) in enumerate(dict.items(d)):
        if position >= 100_000:
            break
        if type(key) in (str, int, bool, type(None), float, bytes) and repr(key) == text:
            return position, value
    return None, _UNKNOWN


def _literal(text: str) -> Any:
    """The key an "item" note shows, when it is a literal (str, int...); else _UNKNOWN."""
    import ast

    if len(text) > 10_000:
        return _UNKNOWN
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return _UNKNOWN


def _attributes(obj: Any) -> Optional[dict]:
    """``obj``'s attributes (``__dict__`` and slots), if pickle takes them as its state by
    default (no ``__reduce__``, ``__reduce_ex__``, ``__getstate__`` or copyreg reducer of the
    program's); None otherwise.  Reads them without running the program's code."""
    if obj is _UNKNOWN or not _default_reduction(type(obj)):
        return None
    try:
        attrs = dict(object.__getattribute__(obj, "__dict__"))
    except (AttributeError, TypeError):
        attrs = {}
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            try:
                attrs[name] = object.__getattribute__(obj, name)
            except (AttributeError, TypeError):
                pass
    return attrs


def _default_reduction(t: type) -> bool:
    import copyreg

    getstate = getattr(object, "__getstate__", None)  # 3.11+
    return (getattr(t, "__reduce_ex__", None) is object.__reduce_ex__
            and getattr(t, "__reduce__", None) is object.__reduce__
            and getattr(t, "__getstate__", getstate) is getstate
            and t not in copyreg.dispatch_table)


def _process_class() -> type:
    from multiprocessing.process import BaseProcess

    return BaseProcess


# --- Older Pythons: search by pickling parts again --------------------------------------------

class _OutOfBudget(Exception):
    pass


class _CountingSink:
    """Where the search pickles to: counts the bytes (nothing kept) and stops the search when
    its time or bytes run out -- checked at every write, so inside a part being pickled."""

    __slots__ = ("left", "deadline")

    def __init__(self, deadline: float) -> None:
        self.left = _MAX_BYTES
        self.deadline = deadline

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.left -= n
        if self.left < 0 or time.monotonic() > self.deadline:
            raise _OutOfBudget
        return n


def find_path(obj: Any, pickler: Any, *, dump: Dump) -> Tuple[List[str], Any]:
    """``(segments, leaf)``: the deepest part of ``obj`` that still fails to pickle on its own,
    pickling parts with ``dump`` and ``pickler``, within the budget."""
    sink = _CountingSink(time.monotonic() + _MAX_SECONDS)
    steps = [_MAX_STEPS]
    out_of_budget = [False]

    def fails(candidate: Any) -> bool:
        steps[0] -= 1
        try:
            dump(candidate, sink, pickler)
        except _OutOfBudget:
            out_of_budget[0] = True
            return False
        except BaseException as exc:  # RecursionError included; a KeyboardInterrupt goes on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return True
        return False

    segments: List[str] = []
    current = obj
    seen = {id(obj)}
    while not out_of_budget[0] and steps[0] > 0 and time.monotonic() < sink.deadline:
        for label, child in _children(current):
            if id(child) in seen or type(child) in _ATOMIC:
                continue
            if steps[0] <= 0 or out_of_budget[0]:
                break
            if fails(child):
                segments.append(label)
                seen.add(id(child))
                current = child
                break
        else:
            break
    return segments, current


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
            shown = repr(key) if _is_safe_key(key) else _hidden(key, i)
            yield f"[{shown}]", value
            yield f"<key {shown}>", key
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
                    yield f".{label}", value
                elif isinstance(name, str) and _is_safe_name(name):
                    yield f".{name}", value
                else:
                    yield f"[{_hidden(name, i)}]", value
        elif state is not None:
            yield ".__getstate__()", state


def _state(obj: Any) -> Any:
    attrs = _attributes(obj)
    if attrs is not None:  # the default state: read, no program code run
        return attrs
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


# --- What a path may show -----------------------------------------------------------------

def _is_safe_name(name: str) -> bool:
    return len(name) <= 32 and name.isascii() and name.isidentifier()


def _is_safe_key(key: Any) -> bool:
    """A key that names code, not data: an ASCII identifier (up to 32 characters), an integer
    of up to 4 digits, True, False or None."""
    t = type(key)
    if t is str:
        return _is_safe_name(key)
    if t is int:
        return -10_000 < key < 10_000
    return t is bool or key is None


def safe_key(key: Any, position: Optional[int]) -> str:
    """How a path shows dict key ``key`` at ``position`` (None: not known)."""
    return repr(key) if _is_safe_key(key) else _hidden(key, position)


def _hidden(key: Any, position: Optional[int]) -> str:
    what = type(key).__name__ if key is not _UNKNOWN else "a"
    return f"<{what} key #{position}>" if position is not None else f"<{what} key>"


# --- The hint ------------------------------------------------------------------------------

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


def hint_for(exc: BaseException, leaf: Any, pickler: Any,
             leaf_type: Optional[str] = None) -> str:
    """A one-line fix that fits why ``leaf`` could not be pickled.

    Knows both the messages of Pythons up to 3.13 and 3.14's (PicklingError where older ones
    raised AttributeError, "it's not found as __main__.f", "Stack overflow ... while pickling").
    ``leaf_type``: the failing part's type name as pickle's notes give it, when ``leaf`` could
    not be reached."""
    message = str(exc)
    known = leaf is not _UNKNOWN
    name = getattr(leaf, "__qualname__", "") if known and callable(leaf) else ""
    if not isinstance(name, str):
        name = ""
    type_name = type(leaf).__name__ if known else (leaf_type or "").rpartition(".")[2]
    if isinstance(exc, RecursionError) or "recursion" in message \
            or "Stack overflow" in message:
        return ("the object nests too deeply for pickle: flatten it, or raise "
                "sys.setrecursionlimit() in the parent and the children")
    if "<lambda>" in message or name == "<lambda>" or name.endswith(".<lambda>"):
        return ("a lambda cannot travel by reference: define it with def at module level, or "
                "use the cloudpickle pickler (configure(pickler='cloudpickle'))")
    if "local object" in message or "<locals>" in name:
        return ("a function or class defined inside another function cannot be imported by the "
                "child: define it at module level, or use the cloudpickle pickler "
                "(configure(pickler='cloudpickle'))")
    if "on __main__ failed" in message or "not found as __main__." in message \
            or "__main__" in message and "attribute" in message:
        return ("the child cannot find this in __main__ (defined in a REPL or notebook, or "
                "after the processes started): move it into a module file and import it")
    if "SemLock created in a fork context" in message:
        return ("create the lock or queue from the same context as the processes that use it "
                "(ctx = get_context(method); ctx.Lock())")
    if "through inheritance" in message:
        return ("this object can only reach a child at its start: pass it in Process(args=...) "
                "or a Pool initializer, or use a Manager().Queue() / Manager().Lock() instead")
    if any(word in type_name for word in _LOCK_TYPES) or "_thread.lock" in message \
            or "_thread.RLock" in message:
        return ("a lock cannot be sent to another process: create it in the child (e.g. in a "
                "Pool initializer), or share a multiprocessing or Manager() lock passed at start")
    for word, what in _RESOURCE_WORDS.items():
        if word in type_name or f"'{word}'" in message:
            return (f"{what} cannot be sent to another process: send what is needed to recreate "
                    "it (a path, an address) and open it in the child")
    pickler_name = getattr(pickler, "pickler_name", pickler)
    if pickler_name == "pickle" and known and isinstance(leaf, types.FunctionType):
        return ("functions travel by reference (module + name) and this one cannot be imported "
                "by that name: define it at module level, or use the cloudpickle pickler")
    if known:
        what = f"{type(leaf).__module__}.{type(leaf).__qualname__}"
    else:
        what = leaf_type or "the failing object's class"
    return (f"make {what} picklable (define __reduce__ or __getstate__), or keep it out of "
            "what you send")
