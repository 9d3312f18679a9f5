"""``tracedmp report``: a summary of a trace that a person can act on, in one streaming pass.

Memory stays bounded by the number of distinct groups (channels, types, callables, processes),
plus one 8-byte slot per pickle for the size percentiles and a heap of the largest pickles.
"""

from __future__ import annotations

import heapq
import math
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .attribution import Parts, is_library, user_first
from .daskreport import DaskSummary
from .daskreport import render as _render_dask
from .reader import Trace, printable, read_trace

__all__ = ["Summary", "losses", "render_text", "summarize"]


# A group counts sizes exactly (size -> pickles) up to this many distinct sizes; beyond, in
# buckets of 1/64 of a power of two (percentiles within 1.6 %), so memory stays bounded by the
# number of groups however many records a trace has.
_EXACT_SIZES = 4096
_FINE_BITS = 6


def _fine_bucket(size: int) -> int:
    n = size.bit_length() - 1 - _FINE_BITS
    return size if n <= 0 else (size >> n) << n


class _Group:
    __slots__ = ("count", "bytes", "ns", "sizes", "hi", "approx")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.ns = 0
        self.sizes: Dict[int, int] = {}  # size (or a bucket's lower bound) -> pickles
        self.hi = 0  # the largest size (a bucket's lower bound is not)
        self.approx = False  # some sizes are buckets' lower bounds (summary traces, or many)

    def add(self, size: int, ns: int) -> None:
        self.count += 1
        self.bytes += size
        self.ns += ns
        if size > self.hi:
            self.hi = size
        sizes = self.sizes
        if self.approx:
            size = _fine_bucket(size)
        sizes[size] = sizes.get(size, 0) + 1
        if len(sizes) > _EXACT_SIZES:
            self._coarsen()

    def add_sizes(self, pairs: Iterable[Any], exact: bool) -> None:
        """[size, pickles] pairs of a summary record (bucket lower bounds unless ``exact``)."""
        sizes = self.sizes
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2:
                size, n = _int(pair[0]), _int(pair[1])
                if self.approx:
                    size = _fine_bucket(size)
                sizes[size] = sizes.get(size, 0) + n
        if not exact:
            self.approx = True
        if len(sizes) > _EXACT_SIZES:
            self._coarsen()

    def _coarsen(self) -> None:
        self.approx = True
        merged: Dict[int, int] = {}
        for size, n in self.sizes.items():
            b = _fine_bucket(size)
            merged[b] = merged.get(b, 0) + n
        self.sizes = merged

    def merge(self, other: "_Group") -> None:
        self.count += other.count
        self.bytes += other.bytes
        self.ns += other.ns
        self.hi = max(self.hi, other.hi)
        self.approx = self.approx or other.approx
        sizes = self.sizes
        for size, n in other.sizes.items():
            sizes[size] = sizes.get(size, 0) + n
        if len(sizes) > _EXACT_SIZES:
            self._coarsen()

    def quantiles(self, *ranks: float) -> List[int]:
        """Sizes at the given fractions (0.5: median), as the sorted sizes' index would give."""
        n = sum(self.sizes.values())
        if not n:
            return [0 for _ in ranks]
        wanted = sorted((min(n - 1, int(n * q)) if q != 0.5 else (n - 1) // 2, i)
                        for i, q in enumerate(ranks))
        out = [0] * len(ranks)
        seen = 0
        items = iter(sorted(self.sizes.items()))
        size = 0
        for index, slot in wanted:
            while seen <= index:
                size, count = next(items)
                seen += count
            out[slot] = min(size, self.hi)
        return out

    def as_dict(self) -> Dict[str, Any]:
        median, p95 = self.quantiles(0.5, 0.95)
        return {
            "count": self.count,
            "bytes": self.bytes,
            "median_size": median,
            "p95_size": p95,
            "max_size": self.hi,
            "pickle_ns": self.ns,
        }


class Summary:
    """Aggregates records one at a time; ``as_dict()`` gives the report's data."""

    def __init__(self, top: int = 10) -> None:
        self.top = top
        self.records = 0
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        self.runs: List[Dict[str, Any]] = []
        self.processes: Dict[int, str] = {}
        # One group per (channel, start method, type, callables): few distinct ones, so each
        # pickle costs one lookup; the tables are merged from these at the end.
        self.combos: Dict[tuple, _Group] = {}
        self.largest: Dict[tuple, list] = {}  # shape -> [size, count, example]
        self.errors: Dict[tuple, Dict[str, Any]] = {}
        self.starts: Dict[tuple, Dict[str, Any]] = {}
        self.spawn_problems: List[Dict[str, Any]] = []
        # The names cache's key maker: orjson's dumps where the reader imported orjson.
        self._dumps: Any = _UNSET
        self.unpickles = _Group()
        self._smallest_kept = 0
        self.libraries = _Libraries()  # joblib and loky, and the engines not traced
        self.dask = DaskSummary()  # the dask.* channels: Dask distributed's pickles
        self.parts = Parts()
        self.children: Dict[str, str] = {}  # child name -> target, for launch data findings
        self.manager: Dict[tuple, _Group] = {}  # (method, message) -> messages
        self.summaries = 0  # summary records read (a summary-mode trace, or part of one)
        self.exemplars = 0
        self.full_pickles = 0  # pickle and unpickle records not from summary mode
        self._names: Dict[bytes, tuple] = {}  # callables lists as JSON -> as (name, kind)
        self.child_pids: set = set()

    def add(self, r: Mapping[str, Any]) -> None:
        self.records += 1
        ts = r.get("ts")
        # finite() inline for the usual float (the report's inner loop): nan and inf fail
        ts = ts if type(ts) is float and ts - ts == 0 else finite(ts)
        if ts is not None:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        pid = r.get("pid")
        if type(pid) is int and pid not in self.processes:
            self.processes[pid] = _text(r.get("process"))
        event = r.get("event")
        if event == "pickle":
            self._pickle(r)
        elif event == "pickle_error":
            fields: Dict[str, Optional[str]] = {
                k: _text(r.get(k)) for k in ("channel", "type", "error", "path", "hint")}
            if r.get("path") is None:
                fields["path"] = None
            key: tuple = (fields["channel"], fields["type"], fields["error"], fields["path"])
            entry = self.errors.get(key)
            if entry is None:
                self.errors[key] = entry = {**fields, "count": 0, "processes": set()}
            entry["count"] += 1
            entry["processes"].add(_text(r.get("process")))
        elif event == "process_start":
            method = _text(r.get("start_method"))
            key = (method, bool(r.get("pickled")))
            entry = self.starts.setdefault(key, {"start_method": method,
                                                 "pickled": bool(r.get("pickled")),
                                                 "count": 0, "bytes": 0, "targets": {},
                                                 "default_method": 0})
            entry["count"] += 1
            if r.get("default_method") is True:
                entry["default_method"] += 1  # the program named no start method
            entry["bytes"] += _int(r.get("size"))
            if type(r.get("child_pid")) is int:
                self.child_pids.add(r["child_pid"])
            target = _text(r.get("target")) if r.get("target") else "(run method)"
            entry["targets"][target] = entry["targets"].get(target, 0) + 1
            if isinstance(r.get("child"), str) and len(self.children) < 100_000:
                self.children[r["child"]] = target
            check = r.get("spawn_check")
            if isinstance(check, dict) and check.get("would_pickle") is False:
                self.spawn_problems.append({"child": r.get("child"), "target": target, **check})
        elif event == "trace_start":
            run = {k: r.get(k) for k in ("program", "python", "tracedmp", "pickler", "pid",
                                         "mode")}
            run["ts"] = finite(r.get("ts"))
            self.runs.append(run)
            if type(r.get("parts_threshold")) is int:
                self.parts.threshold = r["parts_threshold"]
        elif event == "unpickle":
            if r.get("exemplar") is not True:
                self.full_pickles += 1
                self.unpickles.add(_int(r.get("size")), _int(r.get("duration_ns")))
        elif event == "summary":
            self._summary(r)
        elif event in ("parallel", "untraced", "remote_lost", "remote_untraced"):
            self.libraries.add(event, r)

    def _pickle(self, r: Mapping[str, Any]) -> None:
        # The report's inner loop (10 M records in a minute): checks by type, no calls where a
        # record is well formed; _text and _int handle whatever else a damaged record holds.
        size = r.get("size")
        if type(size) is not int or not 0 <= size <= _INT64:
            size = 0
        ns = r.get("duration_ns")
        if type(ns) is not int or not 0 <= ns <= _INT64:
            ns = 0
        callables = r.get("callables")
        names: tuple = ()
        if callables:
            names = self._names_of(callables)
        channel = r.get("channel")
        if type(channel) is not str:
            channel = _text(channel)
        method = r.get("start_method")
        if type(method) is not str:
            method = _text(method)
        type_name = r.get("type")
        if type(type_name) is not str:
            type_name = _text(type_name)
        key = (channel, method, type_name, names)
        group = self.combos.get(key)
        if group is None:
            self.combos[key] = group = _Group()
        if r.get("exemplar") is True:  # summary mode's largest, already in a summary record
            self.exemplars += 1
        else:
            self.full_pickles += 1
            group.count += 1  # _Group.add, inline
            group.bytes += size
            group.ns += ns
            if size > group.hi:
                group.hi = size
            sizes = group.sizes
            if group.approx:
                size_key = _fine_bucket(size)
            else:
                size_key = size
            if size_key in sizes:
                sizes[size_key] += 1
            else:
                sizes[size_key] = 1
                if len(sizes) > _EXACT_SIZES:
                    group._coarsen()
        if size >= self._smallest_kept:
            self._keep_large(r, size, channel, names)
        if "arrays" in r:
            self.libraries.arrays_of(r, channel)
        if channel.startswith("dask."):
            if r.get("exemplar") is not True:
                self.dask.add(r, channel, size, names)
            else:
                self.dask.add_exemplar(r, channel, size)
        if "parts" in r or "parts_skipped" in r:
            if channel == "process":
                sender = ""
            elif channel == "manager":
                sender = _text(r.get("method"))
            else:
                sender = _user_callable(tuple(n for n, _ in names))
            self.parts.add(r, channel, sender, size)
        if channel == "manager" and isinstance(r.get("method"), str):
            method_key = (r["method"], _text(r.get("message")))
            g = self.manager.get(method_key)
            if g is None:
                self.manager[method_key] = g = _Group()
            g.add(size, ns)

    def _names_of(self, callables: Any) -> tuple:
        """``callables`` as a tuple of (name, kind), the same list once converted."""
        dumps = self._dumps
        if dumps is _UNSET:  # orjson's, if the reader imported it (a large trace): else none
            dumps = self._dumps = getattr(sys.modules.get("orjson"), "dumps", None)
        if dumps is not None:
            try:
                raw = dumps(callables)
            except Exception:
                raw = None
            if raw is not None:
                names = self._names.get(raw)
                if names is None:
                    if len(self._names) >= 65536:
                        self._names.clear()
                    names = self._names[raw] = _names(callables)
                return names
        return _names(callables)

    def _summary(self, r: Mapping[str, Any]) -> None:
        """A summary-mode record: the aggregates of one kind of pickle over one interval."""
        self.summaries += 1
        if r.get("of") == "unpickle":
            group = self.unpickles
        else:
            callables = r.get("callables")
            names: tuple = ()
            if callables and type(callables) is list:
                names = tuple([(_text(c.get("name")), _text(c.get("kind")))
                               if isinstance(c, dict) else ("?", "?") for c in callables])
            key = (_text(r.get("channel")), _text(r.get("start_method")), _text(r.get("type")),
                   names)
            found = self.combos.get(key)
            if found is None:
                self.combos[key] = found = _Group()
            group = found
            if key[0].startswith("dask."):
                self.dask.add_summary(r, key[0], names)
        group.count += _int(r.get("count"))
        group.bytes += _int(r.get("bytes"))
        group.ns += _int(r.get("duration_ns"))
        group.hi = max(group.hi, _int(r.get("max_size")))
        sizes = r.get("sizes")
        group.add_sizes(sizes if type(sizes) is list else (), r.get("sizes_exact") is True)

    def mode(self) -> str:
        """``full``, ``summary`` or ``mixed`` (both kinds of record: several runs, say)."""
        summary_runs = any(run.get("mode") == "summary" for run in self.runs)
        if not (self.summaries or summary_runs):
            return "full"
        full_runs = any(run.get("mode") in ("full", None) for run in self.runs)
        return "mixed" if self.full_pickles or (full_runs and summary_runs) else "summary"

    def _keep_large(self, r: Mapping[str, Any], size: int, channel: str, names: tuple) -> None:
        # Largest pickles, identical ones (same size, carrier, type, names, process) counted once.
        shape = (size, channel, _text(r.get("type")), names, _text(r.get("pid")))
        entry = self.largest.get(shape)
        if entry is not None:
            entry[1] += 1
            return
        example = {k: r.get(k) for k in ("kind", "process", "pid", "start_method",
                                         "duration_ns", "part", "child", "method", "seq",
                                         "ts")}
        ordered = user_first(dict.fromkeys(n for n, _ in names))
        kinds = dict(names)
        example.update(size=size, channel=channel, type=shape[2],
                       callables=[{"name": n, "kind": kinds[n]} for n in ordered])
        parts = r.get("parts")
        if isinstance(parts, list):
            example["parts"] = [p for p in parts if isinstance(p, dict)][:5]
            if r.get("parts_partial") is True:
                example["parts_partial"] = True  # sizes are upper bounds
        self.largest[shape] = [size, 1, example]
        if len(self.largest) >= 8 * self.top:
            kept = heapq.nlargest(4 * self.top, self.largest.items(), key=lambda kv: kv[1][0])
            self.largest = dict(kept)
            self._smallest_kept = kept[-1][1][0]

    def _tables(self) -> Dict[str, Dict[Any, _Group]]:
        tables: Dict[str, Dict[Any, _Group]] = {
            "total": {}, "channel": {}, "method": {}, "type": {}, "callable": {}, "value": {},
            "task": {}, "library": {}}
        for (channel, method, type_name, names), g in self.combos.items():
            _group(tables["total"], None).merge(g)
            _group(tables["channel"], channel).merge(g)
            _group(tables["method"], method).merge(g)
            _group(tables["type"], type_name).merge(g)
            if channel in ("pool.task", "executor.call"):
                _group(tables["task"], (channel, tuple(n for n, _ in names))).merge(g)
            if channel == "process":
                continue  # launch data names multiprocessing's own machinery: see process starts
            for name in dict.fromkeys(n for n, _ in names):
                _group(tables["callable"], name).merge(g)
            for package in dict.fromkeys(n.split(".", 1)[0] for n, _ in names if is_library(n)):
                _group(tables["library"], package).merge(g)
            for name in dict.fromkeys(n for n, kind in names if kind == "value"):
                _group(tables["value"], name).merge(g)
        return tables

    def as_dict(self) -> Dict[str, Any]:
        span = (self.last_ts - self.first_ts) if self.first_ts is not None else 0.0  # type: ignore[operator]  # both set together
        tables = self._tables()
        total = tables["total"].get(None) or _Group()

        def table(groups: Dict[Any, _Group], limit: Optional[int] = None) -> List[Dict[str, Any]]:
            rows = [{"name": k, **g.as_dict()} for k, g in groups.items()]
            rows.sort(key=lambda row: (-row["bytes"], -row["count"], str(row["name"])))
            return rows[:limit] if limit else rows

        errors = sorted(self.errors.values(), key=lambda e: -e["count"])
        callables = table(tables["callable"])
        for row in callables:
            row["library"] = is_library(str(row["name"]))
        # The program's own functions first; libraries' grouped by package below them.
        users = [row for row in callables if not row["library"]]
        return {
            "records": self.records,
            "mode": self.mode(),
            "summary_records": self.summaries,
            "exemplars": self.exemplars,
            "approximate_sizes": total.approx,
            "runs": self.runs,
            "processes": len(self.processes),
            "span_s": span,
            "totals": total.as_dict(),
            "by_channel": table(tables["channel"]),
            "by_start_method": table(tables["method"]),
            "by_type": table(tables["type"], self.top),
            "by_callable": (users + [row for row in callables if row["library"]])[:self.top],
            "by_library": table(tables["library"], self.top),
            "manager_methods": [
                {"method": m, "message": msg, **g.as_dict()}
                for (m, msg), g in sorted(self.manager.items(),
                                          key=lambda kv: (-kv[1].bytes, kv[0]))][:self.top],
            "largest_parts": self.parts.largest(self.top),
            "parts_threshold": self.parts.threshold,
            "by_value": table(tables["value"]),
            "largest": [
                {**example, "count": count}
                for size, count, example in heapq.nlargest(
                    self.top, self.largest.values(), key=lambda e: e[0])],
            "process_starts": [
                {**s, "targets": dict(sorted(s["targets"].items(), key=lambda kv: -kv[1]))}
                for s in sorted(self.starts.values(),
                                key=lambda s: (str(s["start_method"]), s["pickled"]))],
            "errors": [{**e, "processes": sorted(p for p in e["processes"] if p)}
                       for e in errors],
            "unpickles": self.unpickles.as_dict() if self.unpickles.count else None,
            "findings": (self._findings(span, total, tables) + self.dask.findings()
                         + self.libraries.findings(self.combos)),
            "dask": self.dask.as_dict(),
            **self.libraries.as_dict(),
        }

    def _findings(self, span: float, total: _Group,
                  tables: Dict[str, Dict[Any, _Group]]) -> List[Dict[str, Any]]:
        out = self._attribution_findings()
        named = {(f.get("channel"), f.get("callable")) for f in out}
        for (channel, names), g in tables["task"].items():
            median = g.quantiles(0.5)[0]
            what = _user_callable(names)
            if g.count >= 10 and median >= 64 * 1024 and (channel, what) not in named:
                out.append({
                    "kind": "large_args_per_task",
                    "message": (f"{g.count} {channel} messages calling {what} each carried "
                                f"{_fmt_bytes(median)} (median; {_fmt_bytes(g.bytes)} in all): "
                                "if that data is the same every time, send it once with a Pool "
                                "initializer, or put it in shared memory"),
                    "count": g.count, "median_size": median, "bytes": g.bytes,
                    "channel": channel, "callable": what})
            if g.count >= 1000 and median < 1024:
                out.append({
                    "kind": "small_chunks", "channel": channel, "callable": what,
                    "message": (f"{g.count} {channel} messages of {_fmt_bytes(median)} (median) "
                                f"calling {what}: per-message overhead dominates; pass a larger "
                                "chunksize to map/imap (e.g. len(items) // (4 * processes))"),
                    "count": g.count, "median_size": median})
        dask_named = self.dask.by_value_names()  # said by the Dask finding, for Dask's tasks
        for name, g in tables["value"].items():
            if g.count >= 10 and name not in dask_named:
                out.append({
                    "kind": "function_by_value",
                    "message": (f"{name} was pickled by value {g.count} times "
                                f"({_fmt_bytes(g.bytes // g.count)} per pickle on average): "
                                "define it at module level in an importable module so it "
                                "travels as a name"),
                    "count": g.count, "bytes": g.bytes, "name": name})
        if span > 0:
            share = total.ns / 1e9 / span
            if share >= 0.10:
                out.append({
                    "kind": "pickling_time",
                    "message": (f"pickling took {total.ns / 1e9:.3f} s, {share:.0%} of "
                                f"the {span:.3f} s between the first and last record (summed "
                                "over processes): send less, or less often"),
                    "share": share})
        if self.errors:
            failed = sum(e["count"] for e in self.errors.values())
            out.append({
                "kind": "pickle_errors",
                "message": (f"{failed} pickle(s) failed, in {len(self.errors)} distinct way(s): "
                            "see the pickling errors above for where and how to fix each"),
                "count": failed})
        silent = sorted(self.child_pids - set(self.processes)) \
            if self.mode() != "full" else []
        if silent:
            out.append({
                "kind": "summary_not_written",
                "message": (f"{len(silent)} process(es) started but wrote no summary (pid "
                            f"{', '.join(map(str, silent[:5]))}{', ...' if len(silent) > 5 else ''}"
                            "): in summary mode a process killed before its first write loses "
                            "its counts -- a Pool's workers when the Pool is terminated (leaving "
                            "`with Pool()` does); close() and join() the Pool to keep them"),
                "count": len(silent), "pids": silent})
        if self.spawn_problems:
            out.append({
                "kind": "fork_only",
                "message": (f"{len(self.spawn_problems)} process(es) started with fork could "
                            "not start under spawn or forkserver (the default from Python 3.14)"
                            ": see the spawn check below"),
                "count": len(self.spawn_problems)})
        return out

    def _attribution_findings(self) -> List[Dict[str, Any]]:
        """The traps the large pickles' parts name (bound methods, captured data, the same
        large argument again, launch data, views); see ``attribution``."""
        starts = ({"child": c, "target": t} for c, t in self.children.items())
        return self.parts.findings(starts)


def summarize(records: Iterable[Mapping[str, Any]], *, top: int = 10) -> Dict[str, Any]:
    """The report's data for ``records`` (any iterable of records).

    Given a :class:`~tracedmp.Trace`, ``data["lost"]`` says what the file lost (records cut
    off, ``seq`` numbers missing per process, lines skipped); else it is ``None``.
    """
    summary = Summary(top=top)
    for r in records:
        summary.add(r)
    data = summary.as_dict()
    data["spawn_problems"] = summary.spawn_problems
    # What the file lost is known once a Trace has been read through.
    data["lost"] = losses(records) if isinstance(records, Trace) else None
    return data


def summarize_file(path: str, *, top: int = 10, channel: Optional[str] = None,
                   pid: Optional[int] = None) -> Dict[str, Any]:
    trace = read_trace(path)
    records: Iterable[Mapping[str, Any]] = trace.dicts()
    if channel is not None or pid is not None:
        records = (r for r in trace.dicts()
                   if (channel is None or r.get("channel") == channel
                       or r.get("event") in ("trace_start", "untraced"))
                   and (pid is None or r.get("pid") == pid))
    data = summarize(records, top=top)
    data["trace"] = path
    data["truncated_line"] = trace.truncated_line
    data["lost"] = losses(trace, pid=pid)
    return data


def losses(trace: Trace, *, pid: Optional[int] = None) -> Dict[str, Any]:
    """What ``trace`` (read through) lost: records cut off, records missing, lines skipped.

    ``processes`` has one entry per process that lost records (only ``pid``'s if given).
    """
    unknown = [s.line for s in trace.skipped if s.reason == "cut" and s.pid is None]
    other = [s.line for s in trace.skipped if s.reason != "cut"]
    processes = [
        {"pid": m.pid, "process": m.process, "cut": m.cut, "missing": m.missing,
         "ranges": [list(r) for r in m.ranges], "tail_lost": m.tail_lost,
         "scattered": m.scattered, "host": m.host}
        for m in trace.missing if pid is None or m.pid == pid]
    return {
        "cut": trace.cut_count,
        "not_records": trace.skipped_count - trace.cut_count,
        "missing": sum(p["missing"] for p in processes),
        "processes": processes,
        "cut_lines": unknown[:20],  # lines of cut records whose writer cannot be told
        "other_lines": other[:20],
    }


def losses_note(lost: Optional[Dict[str, Any]]) -> str:
    """One line saying what a trace lost ("" if nothing)."""
    if not lost:
        return ""
    parts = []
    if lost["cut"]:
        parts.append(_plural(lost["cut"], "record") + " cut off")
    if lost["missing"]:
        parts.append(f"{_plural(lost['missing'], 'record')} missing")
    if lost["not_records"]:
        parts.append(_not_records(lost["not_records"]) + " skipped")
    return ", ".join(parts)


def _render_losses(lost: Dict[str, Any]) -> List[str]:
    lines = []
    for p in lost["processes"]:
        what = []
        if p["cut"]:
            what.append(f"{_plural(p['cut'], 'record')} cut off")
        if p["missing"]:
            ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in p["ranges"])
            more = ", ..." if sum(b - a + 1 for a, b in p["ranges"]) < p["missing"] else ""
            what.append(f"{_plural(p['missing'], 'record')} missing (seq {ranges}{more}: made "
                        "but never written)")
        if p["scattered"]:
            what.append("seq numbers too disordered to tell what is missing")
        on = f" on {printable(str(p['host']))}" if p.get("host") else ""
        line = f"  pid {p['pid']}{on} ({p['process']}): " + "; ".join(what)
        if p["tail_lost"]:
            line += "; the last thing it wrote was cut off, so what it recorded after is lost too"
        lines.append(line)
    unknown = lost["cut"] - sum(p["cut"] for p in lost["processes"])
    if unknown > 0 and lost["cut_lines"]:
        at = ", ".join(str(n) for n in lost["cut_lines"][:5])
        lines.append(f"  {_plural(unknown, 'record')} cut off at line{'s' if unknown > 1 else ''}"
                     f" {at}{', ...' if unknown > 5 else ''} (too little left to tell whose)")
    if lost["not_records"]:
        at = ", ".join(str(n) for n in lost["other_lines"][:5])
        lines.append(f"  {_not_records(lost['not_records'])} skipped: "
                     f"line{'s' if lost['not_records'] > 1 else ''} {at}"
                     f"{', ...' if lost['not_records'] > 5 else ''}")
    return lines


def _remote_name(r: Mapping[str, Any]) -> str:
    where = (f"pid {r['remote_pid']} on {printable(str(r['remote_host']))}"
             if r.get("remote_host") else "")
    address = printable(str(r.get("address") or "?"))
    return f"Dask {r.get('role') or 'process'} {address}" + (f" ({where})" if where else "")


def _render_remote_lost(remote: List[Dict[str, Any]]) -> List[str]:
    lines = []
    for r in remote:
        after = (f"after seq {r['last_seq']}" if type(r.get("last_seq")) is int
                 else "before its first batch")
        interval = r.get("interval")
        bound = f" (up to {interval} s of them)" if isinstance(interval, (int, float)) else ""
        lines.append(f"  {_remote_name(r)} {printable(str(r.get('reason') or 'went away'))}: "
                     f"the records it made {after}{bound} are lost")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _not_records(n: int) -> str:
    return "1 line that is not a record" if n == 1 else f"{n} lines that are not records"


def finite(value: Any) -> Optional[float]:
    """A number field as a finite float, or None (whatever a damaged record holds there)."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return None
    return None
def _names(callables: Any) -> tuple:
    if type(callables) is not list:
        callables = [callables]
    return tuple([(_text(c.get("name")), _text(c.get("kind")))
                  if isinstance(c, dict) else ("?", "?") for c in callables])


_UNSET: Any = object()


_MACHINERY = ("multiprocessing.", "concurrent.futures.", "cloudpickle.", "copyreg.", "builtins.")


def _user_callable(names: tuple) -> str:
    """The program's own function among what a task names (not the transport's helpers, nor
    a library's when the program's own is there)."""
    for name in names:
        if not name.startswith(_MACHINERY) and not is_library(name):
            return name
    for name in names:  # a library's or a builtin: the first the transport did not add
        if not name.startswith(_TRANSPORT):
            return name
    return names[-1] if names else "a function"


# What multiprocessing and the picklers add around the program's function in a task.
_TRANSPORT = ("multiprocessing.", "concurrent.futures.", "cloudpickle.", "copyreg.",
              "functools.partial", "builtins.getattr")


def _group(groups: Dict[Any, _Group], key: Any) -> _Group:
    g = groups.get(key)
    if g is None:
        groups[key] = g = _Group()
    return g


_INT64 = 2**63 - 1  # the size arrays hold 64-bit integers


def _int(value: Any) -> int:
    return value if type(value) is int and 0 <= value <= _INT64 else 0


def _text(value: Any) -> str:
    """A field as text, whatever a damaged or foreign record holds there."""
    if isinstance(value, str):
        return value
    return "?" if value is None else str(value)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.0f} us"


def render_text(data: Dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines: List[str] = []
    add = lines.append
    t = data["totals"]
    add(f"tracedmp report: {data.get('trace', '')}")
    for run in data["runs"]:
        add(f"  run: {run.get('program') or '?'} (pid {run.get('pid')}), Python "
            f"{run.get('python')}, pickler {run.get('pickler')}, tracedmp {run.get('tracedmp')}"
            + (f", {run['mode']} mode" if run.get("mode") else ""))
    add(f"  {data['records']} records from {data['processes']} processes over "
        f"{data['span_s']:.3f} s: {t['count']} pickles, {_fmt_bytes(t['bytes'])}, "
        f"{_fmt_ns(t['pickle_ns'])} spent pickling")
    if data.get("mode") in ("summary", "mixed"):
        add(f"  {'summary' if data['mode'] == 'summary' else 'mixed'} trace: "
            f"{data.get('summary_records', 0)} summary records (aggregates per process and "
            "kind of pickle), the largest pickles of each kind in full"
            + (", full records too" if data["mode"] == "mixed" else "")
            + ("; medians and p95 from size histograms, within 12.5 %"
               if data.get("approximate_sizes") else ""))
    elif data.get("approximate_sizes"):
        add("  note: medians and p95 of groups with over 4,096 distinct sizes come from size "
            "buckets, within 1.6 %")
    lost = data.get("lost")
    note = losses_note(lost)
    remote_lost = data.get("remote_lost") or []
    if lost and note or remote_lost:
        if note:
            add(f"  note: {note}: see Records lost, below")
        add("")
        add("Records lost (a process died, or could not write: disk full, a file size limit, "
            "permissions)")
        lines.extend(_render_losses(lost) if lost else [])
        lines.extend(_render_remote_lost(remote_lost))
    elif data.get("truncated_line"):
        add(f"  note: line {data['truncated_line']} was cut short (a process was killed while "
            "writing it) and is left out")

    def table(title: str, rows: List[Dict[str, Any]], name: str = "name") -> None:
        if not rows:
            return
        add("")
        add(title)
        labels = [printable(str(r[name])) for r in rows]
        width = min(max(len(label) for label in labels), 60)
        add(f"  {'':{width}}  {'count':>8} {'bytes':>10} {'median':>9} {'p95':>9} "
            f"{'max':>9} {'pickling':>9}")
        for r, label in zip(rows, labels):
            if len(label) > width:
                label = "..." + label[-(width - 3):]
            add(f"  {label:{width}}  {r['count']:>8} {_fmt_bytes(r['bytes']):>10} "
                f"{_fmt_bytes(r['median_size']):>9} {_fmt_bytes(r['p95_size']):>9} "
                f"{_fmt_bytes(r['max_size']):>9} {_fmt_ns(r['pickle_ns']):>9}")

    table("By channel", data["by_channel"])
    table("By start method", data["by_start_method"])
    table("By type (top-level object)", data["by_type"])
    users = [r for r in data["by_callable"] if not r.get("library")]
    table("By callable (pickles that name it; the program's own first)",
          users or data["by_callable"])
    if users and data.get("by_library"):
        table("  Libraries (pickles that name any of their functions or classes)",
              data["by_library"])
    if data.get("manager_methods"):
        add("")
        add("Manager messages by method")
        for m in data["manager_methods"]:
            add(f"  {m['method'] + ' ' + m['message']:30} {m['count']:>8} "
                f"{_fmt_bytes(m['bytes']):>10}  max {_fmt_bytes(m['max_size'])}")

    if data["process_starts"]:
        add("")
        add("Process starts")
        for s in data["process_starts"]:
            targets = ", ".join(f"{k} x{v}" for k, v in list(s["targets"].items())[:3])
            if s["pickled"]:
                add(f"  {s['start_method']:10} {s['count']:>5} started, launch data pickled: "
                    f"{_fmt_bytes(s['bytes'])} ({targets})")
            else:
                add(f"  {s['start_method']:10} {s['count']:>5} started, nothing pickled: "
                    f"target and args inherited by fork ({targets})")
            default = s.get("default_method")
            if default:
                every = "all" if default == s["count"] else f"{default} of them"
                add(f"  {'':10} {'':5} {every}: the default start method (the program named "
                    f"none)")
    if data.get("spawn_problems"):
        add("")
        add("Spawn check (would these fork-started processes start under spawn/forkserver?)")
        for p in data["spawn_problems"]:
            add(f"  {p.get('child')} ({p.get('target')}): {p.get('error')}")
            add(f"      at {p.get('path') or '(top level)'}; fix: {p.get('hint')}")

    if data["largest"]:
        add("")
        add("Largest pickles")
        for r in data["largest"]:
            names = ", ".join(f"{c.get('name')} ({c.get('kind')})"
                              for c in r.get("callables") or [])
            times = f" x{r['count']}" if r.get("count", 1) > 1 else ""
            method = f" {r['method']}" if r.get("method") else ""
            add(f"  {_fmt_bytes(r['size']):>10}{times:>6}  {r['channel']:<14} {r['type']}{method}"
                f"  in {r['process']} (pid {r['pid']})" + (f"  names: {names}" if names else ""))
            for p in r.get("parts") or ():
                add(f"  {'':>16}  {p.get('path')}: {p.get('type')} "
                    f"{_fmt_bytes(p.get('size') or 0)}")

    if data.get("largest_parts"):
        add("")
        add("Largest parts (summed over the trace)")
        for p in data["largest_parts"]:
            sender = f" calling {p['sender']}" if p.get("sender") else ""
            add(f"  {_fmt_bytes(p['bytes']):>10}  {p['path']} ({p['type']}) in {p['messages']} "
                f"{p['channel']} message(s){sender}, max {_fmt_bytes(p['max_size'])}")

    if data["by_value"]:
        add("")
        add("Sent by value (cloudpickle serialized the definition itself)")
        for r in data["by_value"]:
            add(f"  {r['name']}: {r['count']} pickles, {_fmt_bytes(r['bytes'])}")

    if data["errors"]:
        add("")
        add("Pickling errors")
        for e in data["errors"]:
            add(f"  {e['count']}x {e['channel']} {e['type']}: {e['error']}")
            add(f"      at {e['path'] or '(top level)'}; fix: {e['hint']}")

    _render_dask(data.get("dask"), add)
    _render_libraries(data, add)

    if data.get("unpickles"):
        u = data["unpickles"]
        add("")
        add(f"Unpickling: {u['count']} loads, {_fmt_bytes(u['bytes'])}, "
            f"{_fmt_ns(u['pickle_ns'])}")

    add("")
    if data["findings"]:
        add("Findings")
        for f in data["findings"]:
            add(f"  - {f['message']}")
    else:
        add("Findings: none of the known problems shows in this trace")
    # Every name and message above may come from the trace: none may reach the terminal as a
    # control sequence (or break a line).
    return "\n".join([printable(line) for line in lines]) + "\n"


# joblib and loky (the ``loky.*`` and ``joblib.*`` channels, ``parallel`` records, the arrays
# joblib memmapped or copied) and the engines whose traffic the trace does not have.

_JOBLIB_TASKS = ("loky.call", "joblib.task")
_JOBLIB_MACHINERY = ("joblib.", "cloudpickle.", "builtins.", "copyreg.", "numpy.")


class _Libraries:
    def __init__(self) -> None:
        self.parallel: Dict[tuple, int] = {}  # (library, backend, pickles) -> calls
        self.untraced: Dict[str, set] = {}  # engine -> processes that imported it
        self.remote: List[Dict[str, Any]] = []  # remote_lost and remote_untraced records
        # (channel, nbytes, shape, dtype, sent_as) -> [messages, bytes in them, files written]
        self.arrays: Dict[tuple, List[int]] = {}

    def add(self, event: str, r: Mapping[str, Any]) -> None:
        if event == "parallel":
            key = (_text(r.get("library")), _text(r.get("backend")), r.get("pickles"))
            self.parallel[key] = self.parallel.get(key, 0) + 1
        elif event in ("remote_lost", "remote_untraced"):  # Dask processes tracedmp did not start
            self.remote.append({k: r.get(k) for k in (
                "event", "role", "address", "remote_host", "remote_pid", "last_seq", "interval",
                "reason", "error")})
        else:
            self.untraced.setdefault(_text(r.get("engine")), set()).add(_text(r.get("process")))

    def arrays_of(self, r: Mapping[str, Any], channel: str) -> None:
        arrays = r.get("arrays")
        if not isinstance(arrays, list):
            return
        for a in arrays:
            if not isinstance(a, dict) or "nbytes" not in a:
                continue
            shape = a.get("shape")
            key = (channel, _int(a.get("nbytes")),
                   tuple(shape) if isinstance(shape, list) else (), _text(a.get("dtype")),
                   _text(a.get("sent_as")))
            entry = self.arrays.setdefault(key, [0, 0, 0])
            entry[0] += 1
            entry[1] += _int(a.get("size"))
            entry[2] += 1 if a.get("written") is True else 0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "parallel": [{"library": k[0], "backend": k[1], "pickles": k[2], "calls": n}
                         for k, n in sorted(self.parallel.items(), key=lambda kv: -kv[1])],
            "untraced": [{"engine": e, "processes": sorted(p for p in ps if p)}
                         for e, ps in sorted(self.untraced.items())],
            "remote_lost": [r for r in self.remote if r["event"] == "remote_lost"],
            "remote_untraced": [r for r in self.remote if r["event"] == "remote_untraced"],
            "arrays": [{"channel": k[0], "nbytes": k[1], "shape": list(k[2]), "dtype": k[3],
                        "sent_as": k[4], "messages": v[0], "bytes": v[1], "written": v[2]}
                       for k, v in sorted(self.arrays.items(), key=lambda kv: -kv[0][1])],
        }

    def findings(self, combos: Dict[tuple, _Group]) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for engine in sorted(self.untraced):
            out.append({
                "kind": "untraced_engine",
                "message": (f"this program used {engine}: its task traffic is not in this "
                            "trace (it pickles and sends over its own connections, which "
                            "tracedmp does not see); what the trace shows is only part of it"),
                "engine": engine})
        tasks: Dict[tuple, _Group] = {}
        for (channel, _method, _type, names), g in combos.items():
            if channel in _JOBLIB_TASKS:
                what = next((n for n, _ in names if not n.startswith(_JOBLIB_MACHINERY)), "?")
                _group(tasks, (channel, what)).merge(g)
        for (channel, what), g in tasks.items():
            sizes = sorted(g.sizes)
            median = sizes[(len(sizes) - 1) // 2]
            if g.count >= 10 and median >= 64 * 1024:
                out.append({
                    "kind": "joblib_large_args",
                    "message": (f"{g.count} {channel} batches calling {what} each carried "
                                f"{_fmt_bytes(median)} (median; {_fmt_bytes(g.bytes)} in all): "
                                "joblib copies arguments into every batch; pass large data as "
                                "numpy arrays (memmapped above max_nbytes), or load it in the "
                                "workers once"),
                    "count": g.count, "median_size": median, "bytes": g.bytes,
                    "channel": channel, "callable": what})
            if g.count >= 1000 and median < 1024:
                out.append({
                    "kind": "joblib_small_batches", "channel": channel, "callable": what,
                    "message": (f"{g.count} {channel} batches of {_fmt_bytes(median)} (median) "
                                f"calling {what}: per-message overhead dominates; let joblib "
                                "batch (batch_size='auto', the default) or pass a larger "
                                "batch_size to Parallel"),
                    "count": g.count, "median_size": median})
        for (channel, nbytes, _shape, _dtype, sent_as), v in self.arrays.items():
            if sent_as == "copy" and nbytes >= 1024 * 1024 and v[0] >= 2:
                out.append({
                    "kind": "joblib_array_copied",
                    "message": (f"an array of {_fmt_bytes(nbytes)} was copied into {v[0]} "
                                f"{channel} messages ({_fmt_bytes(v[1])} in all): joblib "
                                "memmaps numpy arrays above max_nbytes (1M by default) instead; "
                                "leave max_nbytes set, or lower it"),
                    "count": v[0], "nbytes": nbytes, "bytes": v[1], "channel": channel})
        return out


def _render_libraries(data: Dict[str, Any], add: Any) -> None:
    if data.get("parallel"):
        add("")
        add("Parallel calls")
        for p in data["parallel"]:
            if p["pickles"] is False:
                what = "threads or this process only: tasks and results were not pickled"
            elif p["pickles"] is None:
                what = "pickled through channels tracedmp does not see"
            else:
                what = "tasks and results pickled (above)"
            add(f"  {p['library']} {p['backend']:16} {p['calls']:>5} call(s): {what}")
    if data.get("arrays"):
        add("")
        add("Arrays joblib pickled")
        for a in data["arrays"]:
            if a["sent_as"] == "memmap":
                per = a["bytes"] // max(a["messages"], 1)
                add(f"  {_fmt_bytes(a['nbytes'])} array ({a['dtype']}): sent as a "
                    f"{_fmt_bytes(per)} memmap reference in {a['messages']} {a['channel']} "
                    f"message(s); file written {a['written']} time(s)")
            else:
                add(f"  {_fmt_bytes(a['nbytes'])} array ({a['dtype']}): copied into "
                    f"{a['messages']} {a['channel']} message(s), {_fmt_bytes(a['bytes'])}")
    if data.get("untraced") or data.get("remote_untraced"):
        add("")
        add("Not traced")
        for u in data.get("untraced") or []:
            add(f"  {u['engine']}: imported by {', '.join(u['processes']) or '?'}; its task "
                "traffic is not in this trace")
        for r in data.get("remote_untraced") or []:
            add(f"  {_remote_name(r)}: {printable(str(r.get('error') or '?'))}; what it "
                "pickled is not in this trace")
