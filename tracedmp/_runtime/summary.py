"""Summary mode: per-process aggregates instead of a record per pickle.

Each process keeps one :class:`Aggregate` per kind of pickle -- (event, channel, start method,
kind, top-level type, callables), everything a pickle record says but its size, time and
number -- with the count, the bytes (total, min, max), the pickling time, a size histogram and
the largest few pickles in full (exemplars).  Data flow::

    dumps() template hit -> a size seen: exact[size] += 1, inline   (the template says which
                         -> else Aggregate.add(size, ns, now)         aggregate)
    record_pickle() / unpickle, dict path -> add_record(rec)
    every `summary_interval` s (checked on the next pickle: no timer thread),
    when tracing stops and when the process ends  -> write() -> "summary" records + exemplars
                                                     -> tracer.emit / tracer.sink.write

A written summary covers the pickles since that key's previous one (a delta): readers add them
up.  The trace grows with keys x processes x intervals, never with the number of pickles.
``pickle_error`` and ``process_start`` records are written in full, as in full mode.

What is lost: a process killed by a signal (a Pool's workers at ``terminate()``, which
``with Pool(...)`` calls) loses what it aggregated since its last write, at most one interval
(a process that went quiet before it was killed: everything since its last write, however long
ago).  A process that ends normally writes everything.
"""

from __future__ import annotations

from time import perf_counter_ns, time

from . import tracer as _tracer
from .render import render, ts_parts

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List

__all__ = ["Aggregate", "add_record", "aggregate_for", "reset", "write"]

EXEMPLARS = 3  # the largest pickles of each key kept in full
EXACT_SIZES = 64  # distinct sizes an interval counts exactly; beyond, log2 buckets
SUB_BUCKETS = 3  # bits below the leading one a bucket keeps: 8 buckets per power of two

# Every aggregate of this process, by key; cleared after a fork (the child starts empty).
_aggregates: Dict[tuple, "Aggregate"] = {}
# perf_counter_ns() time of the next periodic write: the clock dumps() has just read, so a
# pickle costs no clock call of its own to check it (_NEVER: before the first pickle).
_NEVER = 1 << 62
_next_write = _NEVER
_interval = 1_000_000_000  # ns
_exit_registered = False


def bucket(size: int) -> int:
    """The lower bound of ``size``'s bucket: sizes below 16 are exact; above, 8 buckets per
    power of two (each at most 12.5 % wide)."""
    n = size.bit_length() - 1 - SUB_BUCKETS
    return size if n <= 0 else (size >> n) << n


_NO_MIN = 2**63


class _Interval:
    """What one key aggregated since its last write (swapped whole at a write)."""

    __slots__ = ("exact", "ns", "count", "bytes", "min", "max", "sizes", "since")

    def __init__(self) -> None:
        # size -> pickles, while the key's sizes are counted exactly: the count, bytes, min and
        # max are worked out from it at the write, so a pickle of a size seen before updates
        # only this and ns.  Empty (and never filled) once the key counts in buckets.
        self.exact: Dict[int, int] = {}
        self.ns = 0
        # In buckets: kept pickle by pickle, with the pickles per bucket in sizes.
        self.count = 0
        self.bytes = 0
        self.min = _NO_MIN
        self.max = -1
        self.sizes: Dict[int, int] = {}
        self.since = 0.0  # time() of the interval's first pickle


class Aggregate:
    """One key's aggregates in this process."""

    __slots__ = ("of", "fields", "cur", "bucketed", "top", "floor")

    def __init__(self, of: str, fields: Dict[str, Any]) -> None:
        self.of = of  # the event summarized: pickle or unpickle
        self.fields = fields  # the key's record fields (channel, kind, type, callables, ...)
        self.cur = _Interval()
        self.bucketed = False
        # Exemplars: [size, payload, written]; payload a template and its numbers, or a dict.
        self.top: List[list] = []
        self.floor = -1  # a pickle larger than this is an exemplar

    def add(self, size: int, ns: int, now: int, template: Any = None, rec: Any = None) -> None:
        """One pickle of ``size`` bytes that took ``ns``, done at ``now`` (perf_counter_ns)."""
        # The usual pickle: a size this interval has seen.  Under the GIL no other thread runs
        # (nor a write() swapping the interval out) between two calls, and none is made here
        # between reading the interval and updating it.
        c = self.cur
        exact = c.exact
        if size in exact:
            exact[size] += 1
            c.ns += ns
        else:
            self._add_new(size, ns)
        if size > self.floor:
            self._keep(size, ns, template, rec)
        if now >= _next_write:
            write_due(now)

    def _add_new(self, size: int, ns: int) -> None:
        # A size new to this interval, or a key counted in buckets.
        if self.bucketed:
            key = bucket(size)  # (the call first, as above)
            c = self.cur
            if not c.count:
                c.since = time()
            c.count += 1
            c.bytes += size
            c.ns += ns
            if size > c.max:
                c.max = size
            if size < c.min:
                c.min = size
            sizes = c.sizes
            sizes[key] = sizes.get(key, 0) + 1
            return
        c = self.cur
        exact = c.exact
        if not exact:
            c.since = time()
        exact[size] = 1
        c.ns += ns
        if len(exact) > EXACT_SIZES:
            self._to_buckets(c)

    def _to_buckets(self, c: _Interval) -> None:
        self.bucketed = True
        exact, c.exact = c.exact, {}
        c.count = sum(exact.values())
        c.bytes = sum(size * n for size, n in exact.items())
        c.min, c.max = min(exact), max(exact)
        merged: Dict[int, int] = {}
        for size, n in exact.items():
            b = bucket(size)
            merged[b] = merged.get(b, 0) + n
        c.sizes = merged

    def _keep(self, size: int, ns: int, template: Any, rec: Any) -> None:
        if rec is not None:
            payload: Any = dict(rec)  # every field a full record has (parts, part, child...)
        else:
            payload = (template, *ts_parts(), size, ns)
        top = self.top
        top.append([size, payload, False])
        if len(top) > EXEMPLARS:
            top.remove(min(top, key=_size))
        if len(top) == EXEMPLARS:
            self.floor = min(e[0] for e in top)

    def lines(self) -> List[bytes]:
        """The summary record of the interval just ended (if any pickle) and new exemplars."""
        out: List[bytes] = []
        c = self.cur
        if c.exact or c.count:
            self.cur = _Interval()
            rec = _tracer.base_record("summary", self.fields.get("start_method"))
            rec["of"] = self.of
            for name, value in self.fields.items():
                if name not in rec:
                    rec[name] = value
            exact = c.exact
            if exact:
                rec["count"] = sum(exact.values())
                rec["bytes"] = sum(size * n for size, n in exact.items())
                rec["min_size"] = min(exact)
                rec["max_size"] = max(exact)
            else:
                rec["count"] = c.count
                rec["bytes"] = c.bytes
                rec["min_size"] = c.min
                rec["max_size"] = c.max
            rec["duration_ns"] = c.ns
            rec["sizes"] = sorted([k, v] for k, v in (exact or c.sizes).items())
            rec["sizes_exact"] = bool(exact)
            rec["since"] = c.since
            out.append(_render(rec))
        for entry in self.top:
            if entry[2]:
                continue
            entry[2] = True
            payload = entry[1]
            if isinstance(payload, dict):
                rec = dict(payload)
                rec["seq"] = next(_tracer._seq)
                rec["exemplar"] = True
                out.append(_render(rec))
            else:
                template, digits, micros, size, ns = payload
                line = template % (digits, micros, next(_tracer._seq), size, ns)
                out.append(line[:-2] + b',"exemplar":true}\n')
        return out


def _size(entry: list) -> int:
    return entry[0]


def _render(rec: dict) -> bytes:
    tracer = _tracer.current
    if tracer is not None and tracer._processors:
        line = tracer._run_processors(rec)
        return line or b""
    return render(rec)


_KEY_FIELDS = ("event", "channel", "start_method", "kind", "type", "pickler")
# What a summary record says about its kind of pickle; the rest of a record (size, part, child,
# parts, a Manager method...) is per pickle, and kept only in exemplars.
_KIND_FIELDS = ("start_method", "channel", "kind", "type", "pickler", "callables")


def _key(rec: Dict[str, Any]) -> tuple:
    callables = rec.get("callables") or ()
    names = tuple((c.get("name"), c.get("kind")) for c in callables if isinstance(c, dict))
    return tuple(rec.get(k) for k in _KEY_FIELDS) + (names,)


def aggregate_for(rec: Dict[str, Any]) -> Aggregate:
    """The aggregate that a record like ``rec`` (numbers aside) adds to; made if new."""
    key = _key(rec)
    agg = _aggregates.get(key)
    if agg is None:
        fields = {k: rec[k] for k in _KIND_FIELDS if k in rec}
        agg = _aggregates[key] = Aggregate(rec.get("event") or "pickle", fields)
        _started()
    return agg


def add_record(rec: Dict[str, Any]) -> None:
    """A record built by the dict path (functions by value, launch data, unpickles...)."""
    aggregate_for(rec).add(rec.get("size") or 0, rec.get("duration_ns") or 0, perf_counter_ns(),
                           None, rec)


def _started() -> None:
    global _next_write, _interval, _exit_registered
    if _next_write == _NEVER:
        tracer = _tracer.current
        seconds = getattr(getattr(tracer, "config", None), "summary_interval", 1.0) or 1.0
        _interval = int(seconds * 1e9)
        _next_write = perf_counter_ns() + _interval
    if not _exit_registered:
        _exit_registered = True
        # A multiprocessing child ends through util._exit_function (finalizers, no atexit); the
        # main process runs the same function at exit (multiprocessing registers it with atexit).
        from multiprocessing import util

        util.Finalize(None, write, exitpriority=-(2**31))


def write_due(now: int) -> None:
    global _next_write
    _next_write = now + _interval
    write()


def write() -> None:
    """Write every key's interval and new exemplars now (periodically, at stop and at exit)."""
    tracer = _tracer.current
    if tracer is None or not _aggregates:
        return
    try:
        lines: List[bytes] = []
        for agg in list(_aggregates.values()):
            lines += agg.lines()
        write = tracer.sink.write
        for line in lines:  # a line at a time, as every record is written
            write(line)
    except Exception as exc:  # a bug here costs the summary, never the program
        _tracer.internal_error(exc)


def reset() -> None:
    """Forget everything (after a fork: the parent writes its own; when tracing restarts)."""
    global _next_write, _exit_registered
    _aggregates.clear()
    _next_write = _NEVER
    _exit_registered = False
