"""Pickle records: what one pickle's record says, and the templates that make it cheap.

``picklers`` hands over what a pickle named (``refs``: the functions and classes it saved, and
which went by value); this module turns that into the record's ``callables``, ``kind`` and
``type``, and renders it, through a cached template when the same kind of message comes again.
"""

from __future__ import annotations

import types
from multiprocessing import process as _mp_process
from multiprocessing.context import _default_context
from time import perf_counter_ns, time
from weakref import ref as _ref

from . import summary as _summary
from . import tracer as _tracer
from .render import TS_HOLE, template_of, ts_parts
from .tracer import FORMAT_VERSION

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Sequence, Tuple

    from .channels import CallSite

__all__ = ["Template", "forget_templates", "qualified_name", "record_pickle", "type_name"]

_MAX_CALLABLES = 64


# Every cache here holds the program's functions and classes by weak reference and is keyed by
# their ids (an id can be reused once its object is gone: the weak reference tells), so a cache
# never keeps alive a closure, a lambda or a class the program made at run time, nor whatever
# they hold.  Only types built into the interpreter (static types: tuple, dict...), which live
# as long as it does, are held as they are.  A weak reference costs ~250 machine instructions
# to check, ~0.5% of a traced Pool task's pickle.
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement or type()


class Template:
    """A pickle record rendered but for ts, seq, size and duration_ns (``line``, %-format
    holes), and what it was made for, checked before it is used again: the pickled object's
    type, the first two functions or classes it named (weakly, but built-in types), how many it
    named, the process's name, whether the object itself was the first, and the default context
    the start method was read under.  In summary mode, ``aggregate`` is the aggregate its
    pickles add to instead of writing ``line``."""

    __slots__ = ("static_type", "type_ref", "n", "first_ref", "second_ref", "line", "process",
                 "first_is_obj", "context", "aggregate")

    def __init__(self, t: type, refs: Sequence[Any], line: bytes, process: str,
                 first_is_obj: bool, context: Any, aggregate: Any = None) -> None:
        self.aggregate = aggregate  # summary mode: what its pickles add to instead (else None)
        heap = t.__flags__ & _HEAPTYPE
        self.static_type = None if heap else t
        self.type_ref = _ref(t) if heap else None
        self.n = len(refs)
        self.first_ref = _ref(refs[0]) if refs else None
        self.second_ref = _ref(refs[1]) if len(refs) == 2 else None
        self.line = line
        self.process = process
        self.first_is_obj = first_is_obj
        self.context = context

    def fits(self, t: type, refs: Sequence[Any], first_is_obj: bool, process: str) -> bool:
        """Whether a pickle of a ``t`` that named ``refs`` has this record (dumps() inlines it)."""
        n = len(refs)
        return ((self.static_type is t or self.type_ref is not None and self.type_ref() is t)
                and self.n == n and (n == 0 or self.first_ref() is refs[0])  # type: ignore[misc]
                and (n < 2 or self.second_ref() is refs[1])  # type: ignore[misc]
                and self.first_is_obj is first_is_obj and self.process is process
                and self.context is _default_context._actual_context)  # type: ignore[attr-defined]


def record_pickle(tracer: Any, obj: Any, size: int, duration: int, refs: Sequence[Any],
                  by_value: Optional[set], channel: str, start_method: Optional[str],
                  extra: Optional[dict], site: Optional[CallSite] = None,
                  pickler: Optional[str] = None) -> None:
    """``pickler``: the pickler's name when not tracedmp's own (a library's, e.g. loky's)."""
    # A few text fields (a Manager message's method) go into the template's key and text.
    fixed = None if extra is None else _fixed_fields(extra)
    if (extra is None or fixed is not None) and by_value is None and len(refs) <= 2 \
            and not tracer._processors:
        n = len(refs)
        first = refs[0] if n else None
        second = refs[1] if n == 2 else None
        t = type(obj)
        name = _mp_process._current_process._name  # type: ignore[attr-defined]
        # (dumps() has already tried the call site's last template)
        key = (channel, id(t), id(first), id(second), first is obj,
               start_method or _tracer.start_method_here(), pickler, fixed)
        hit = _templates.get(key)
        if hit is None or not hit.fits(t, refs, first is obj, name):
            hit = _add_template(key, tracer, obj, refs, t, first, second, name, extra)
        if site is not None and extra is None:
            site.template = hit  # a site sends the same kind of message again
        if hit is not None:
            if hit.aggregate is not None:  # summary mode: the template knows its aggregate
                hit.aggregate.add(size, duration, perf_counter_ns(), hit.line)
            else:
                tracer.sink.write(hit.line % (*ts_parts(), next(_tracer._seq), size, duration))
            return
    rec = _pickle_record(tracer, obj, channel, start_method, *_describe(obj, refs, by_value))
    if pickler is not None:
        rec["pickler"] = pickler
    rec["ts"] = time()
    rec["size"] = size
    rec["duration_ns"] = duration
    if extra:
        rec.update(extra)
    if tracer.summary:
        _summary.add_record(rec)  # no seq: only written records are numbered
        return
    rec["seq"] = next(_tracer._seq)
    tracer.emit(rec)


def _pickle_record(tracer: Any, obj: Any, channel: str, start_method: Optional[str],
                   callables: list, kind: str) -> dict:
    """A pickle record with ts, seq, size and duration_ns left to fill in (None)."""
    return {
        "v": FORMAT_VERSION,
        "event": "pickle",
        "ts": None,
        "pid": _tracer._pid,
        "process": _mp_process._current_process._name,  # type: ignore[attr-defined]
        "start_method": start_method or _tracer.start_method_here(),
        "seq": None,
        "channel": channel,
        "size": None,
        "kind": kind,
        "type": type_name(obj),
        "pickler": tracer.pickler,
        "duration_ns": None,
        "callables": callables,
    }


_NO_CALLABLES: list = []


def _describe(obj: Any, refs: Sequence[Any], by_value: Optional[set]) -> Tuple[list, str]:
    """The ``callables`` and the top-level ``kind`` of a pickle that named ``refs``."""
    if not refs:
        return _NO_CALLABLES, "value"
    callables = _callables(refs, by_value)
    kind = "reference" if refs[0] is obj and callables[0]["kind"] == "reference" else "value"
    return callables, kind


# Pickle records rendered but for ts, seq, size and duration_ns, by everything else in them:
# a program sends the same few kinds of message over and over, and formatting four numbers into
# a template costs a fraction of building a dict and rendering it.  Only for records with no
# structlog processors to run and callables that travel by reference.  Bounded.
# The pid is baked into the templates: a forked child starts with none (forget_templates).
# So is the start method: a template also holds the default context it was made under, and a
# main process that changes its start method (set_start_method(force=True)) makes new ones.
_templates: Dict[tuple, Template] = {}
_PICKLE_HOLES = {"ts": TS_HOLE, "seq": b"%d", "size": b"%d", "duration_ns": b"%d"}


def forget_templates() -> None:
    """After a fork (the pid is in them) and when tracing restarts (settings may differ)."""
    _templates.clear()


def _fixed_fields(extra: dict) -> Optional[tuple]:
    """``extra`` as a template key if it is a few short text fields, else None."""
    if len(extra) > 2:
        return None
    for value in extra.values():
        if type(value) is not str or len(value) > 100:
            return None
    return tuple(extra.items())


def _add_template(key: tuple, tracer: Any, obj: Any, refs: Sequence[Any], t: type, first: Any,
                  second: Any, process: str, extra: Optional[dict] = None) -> Optional[Template]:
    channel, _, _, _, _, start_method, pickler, _ = key
    callables, kind = _describe(obj, refs, None)
    if refs:
        cached = _lists.get((id(first), id(second)))
        if cached is None or cached[2] is not callables:
            return None  # not all by reference: the dict path works the names out each time
    rec = _pickle_record(tracer, obj, channel, start_method, callables, kind)
    if pickler is not None:
        rec["pickler"] = pickler
    if extra:
        rec.update(extra)
    try:
        template = template_of(rec, _PICKLE_HOLES)
    except (TypeError, ValueError):  # lone surrogates in a name: the dict path escapes them
        return None
    if len(_templates) >= _ENTRIES_LIMIT:
        _templates.clear()
    agg = _summary.aggregate_for(rec) if tracer.summary else None
    hit = _templates[key] = Template(t, refs, template, process, first is obj,
                                     _default_context._actual_context,  # type: ignore[attr-defined]
                                     agg)
    return hit


# Names of the types pickled, by the type's id; bounded (dynamically created types come and go).
_type_names: Dict[int, Tuple[Any, str]] = {}


def type_name(obj: Any) -> str:
    t = type(obj)
    hit = _type_names.get(id(t))
    if hit is not None and hit[0]() is t:
        return hit[1]
    name = f"{t.__module__}.{t.__qualname__}"
    if len(_type_names) >= _ENTRIES_LIMIT:
        _type_names.clear()
    _type_names[id(t)] = (_ref(t), name)
    return name


# Entries for functions and classes that travel by reference (importable by name, but a module
# can drop them too: held weakly).  Bounded.
_entries: Dict[int, Tuple[Any, Dict[str, str]]] = {}


_ENTRIES_LIMIT = 4096


_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)


def _entry(obj: Any, by_value: Optional[set]) -> Dict[str, str]:
    cached = _entries.get(id(obj))
    if cached is not None and cached[0]() is obj:
        return cached[1]
    kind = _kind(obj, by_value)
    entry = {"name": qualified_name(obj), "kind": kind}
    if kind == "reference" and isinstance(obj, _CACHEABLE):
        if len(_entries) >= _ENTRIES_LIMIT:
            _entries.clear()
        _entries[id(obj)] = (_ref(obj), entry)
    return entry


# Whole callables lists for the usual one or two by-reference objects (a Pool task names
# mapstar and the user's function), checked by identity; held weakly.
_lists: Dict[Tuple[int, ...], Tuple[Any, Any, list]] = {}


def _callables(refs: Sequence[Any], by_value: Optional[set]) -> list:
    n = len(refs)
    if by_value is None and n <= 2:
        first = refs[0]
        second = refs[1] if n == 2 else None
        key = (id(first), id(second))
        hit = _lists.get(key)
        if hit is not None and hit[0]() is first and (n == 1 or hit[1]() is second):
            return hit[2]
        entries = _dedupe(refs, None)
        if all(isinstance(o, _CACHEABLE) and e["kind"] == "reference"
               for o, e in zip(refs, entries)) and len(entries) == n:
            if len(_lists) >= _ENTRIES_LIMIT:
                _lists.clear()
            _lists[key] = (_ref(first), _ref(second) if n == 2 else None, entries)
        return entries
    return _dedupe(refs, by_value)


def _dedupe(refs: Sequence[Any], by_value: Optional[set]) -> list:
    out: List[Dict[str, str]] = []
    seen = set()
    for obj in refs:
        entry = _entry(obj, by_value)
        key = (entry["name"], entry["kind"])
        if key in seen:
            continue
        seen.add(key)
        if len(out) == _MAX_CALLABLES:
            out.append({"name": "...", "kind": "truncated"})
            break
        out.append(entry)
    return out


def _kind(obj: Any, by_value: Optional[set]) -> str:
    if by_value is not None and id(obj) in by_value:
        return "value"
    # A method bound to an instance travels as getattr(instance, name): the instance goes by
    # value.  Bound to a module or a class, it is a name like any function.
    owner = getattr(obj, "__self__", None)
    if owner is None or isinstance(owner, (type, types.ModuleType)) or isinstance(obj, type):
        return "reference"
    return "value"


def qualified_name(obj: Any) -> str:
    """``module.qualname`` of a function, method or class, as pickle would look it up."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or "?"
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        owner = getattr(obj, "__self__", None) or getattr(obj, "__objclass__", None)
        if isinstance(owner, types.ModuleType):
            module = owner.__name__
        elif isinstance(owner, type):
            module = owner.__module__
        elif owner is not None:
            module = type(owner).__module__
        else:
            module = "?"
    return f"{module}.{qual}"
