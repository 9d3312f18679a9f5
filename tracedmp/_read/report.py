"""``tracedmp report``: a summary of a trace that a person can act on, in one streaming pass.

Memory stays bounded by the number of distinct groups (channels, types, callables, processes),
plus one 8-byte slot per pickle for the size percentiles and a heap of the largest pickles.
"""

from __future__ import annotations

import heapq
import math
from array import array
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .reader import read_trace

__all__ = ["Summary", "summarize", "render_text"]


class _Group:
    __slots__ = ("count", "bytes", "ns", "sizes")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.ns = 0
        self.sizes = array("q")

    def add(self, size: int, ns: int) -> None:
        self.count += 1
        self.bytes += size
        self.ns += ns
        self.sizes.append(size)

    def merge(self, other: "_Group") -> None:
        self.count += other.count
        self.bytes += other.bytes
        self.ns += other.ns
        self.sizes.extend(other.sizes)

    def as_dict(self) -> Dict[str, Any]:
        sizes = sorted(self.sizes)
        n = len(sizes)
        return {
            "count": self.count,
            "bytes": self.bytes,
            "median_size": sizes[(n - 1) // 2] if n else 0,
            "p95_size": sizes[min(n - 1, int(n * 0.95))] if n else 0,
            "max_size": sizes[-1] if n else 0,
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
        self.unpickles = _Group()
        self._smallest_kept = 0

    def add(self, r: Mapping[str, Any]) -> None:
        self.records += 1
        ts: Any = r.get("ts")  # a number once checked below
        if type(ts) in (int, float) and math.isfinite(ts):
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
            target = _text(r.get("target")) if r.get("target") else "(run method)"
            entry["targets"][target] = entry["targets"].get(target, 0) + 1
            check = r.get("spawn_check")
            if isinstance(check, dict) and check.get("would_pickle") is False:
                self.spawn_problems.append({"child": r.get("child"), "target": target, **check})
        elif event == "trace_start":
            self.runs.append({k: r.get(k) for k in ("program", "python", "tracedmp", "pickler",
                                                    "pid", "ts")})
        elif event == "unpickle":
            self.unpickles.add(_int(r.get("size")), _int(r.get("duration_ns")))

    def _pickle(self, r: Mapping[str, Any]) -> None:
        size = _int(r.get("size"))
        ns = _int(r.get("duration_ns"))
        callables = r.get("callables")
        names: tuple = ()
        if callables:
            if type(callables) is not list:
                callables = [callables]
            names = tuple([(_text(c.get("name")), _text(c.get("kind")))
                           if isinstance(c, dict) else ("?", "?") for c in callables])
        channel = _text(r.get("channel"))
        key = (channel, _text(r.get("start_method")), _text(r.get("type")), names)
        group = self.combos.get(key)
        if group is None:
            self.combos[key] = group = _Group()
        group.count += 1
        group.bytes += size
        group.ns += ns
        group.sizes.append(size)
        if size >= self._smallest_kept:
            self._keep_large(r, size, channel, names)

    def _keep_large(self, r: Mapping[str, Any], size: int, channel: str, names: tuple) -> None:
        # Largest pickles, identical ones (same size, carrier, type, names, process) counted once.
        shape = (size, channel, _text(r.get("type")), names, _text(r.get("pid")))
        entry = self.largest.get(shape)
        if entry is not None:
            entry[1] += 1
            return
        example = {k: r.get(k) for k in ("kind", "process", "pid", "start_method",
                                         "duration_ns", "part", "child")}
        example.update(size=size, channel=channel, type=shape[2],
                       callables=[{"name": n, "kind": k} for n, k in names])
        self.largest[shape] = [size, 1, example]
        if len(self.largest) >= 8 * self.top:
            kept = heapq.nlargest(4 * self.top, self.largest.items(), key=lambda kv: kv[1][0])
            self.largest = dict(kept)
            self._smallest_kept = kept[-1][1][0]

    def _tables(self) -> Dict[str, Dict[Any, _Group]]:
        tables: Dict[str, Dict[Any, _Group]] = {
            "total": {}, "channel": {}, "method": {}, "type": {}, "callable": {}, "value": {},
            "task": {}}
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
        return {
            "records": self.records,
            "runs": self.runs,
            "processes": len(self.processes),
            "span_s": span,
            "totals": total.as_dict(),
            "by_channel": table(tables["channel"]),
            "by_start_method": table(tables["method"]),
            "by_type": table(tables["type"], self.top),
            "by_callable": table(tables["callable"], self.top),
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
            "findings": self._findings(span, total, tables),
        }

    def _findings(self, span: float, total: _Group,
                  tables: Dict[str, Dict[Any, _Group]]) -> List[Dict[str, Any]]:
        out = []
        for (channel, names), g in tables["task"].items():
            sizes = sorted(g.sizes)
            median = sizes[(len(sizes) - 1) // 2]
            what = _user_callable(names)
            if g.count >= 10 and median >= 64 * 1024:
                out.append({
                    "kind": "large_args_per_task",
                    "message": (f"{g.count} {channel} messages calling {what} each carried "
                                f"{_fmt_bytes(median)} (median; {_fmt_bytes(g.bytes)} in all): "
                                "if that data is the same every time, send it once with a Pool "
                                "initializer, or put it in shared memory"),
                    "count": g.count, "median_size": median, "bytes": g.bytes})
            if g.count >= 1000 and median < 1024:
                out.append({
                    "kind": "small_chunks",
                    "message": (f"{g.count} {channel} messages of {_fmt_bytes(median)} (median) "
                                f"calling {what}: per-message overhead dominates; pass a larger "
                                "chunksize to map/imap (e.g. len(items) // (4 * processes))"),
                    "count": g.count, "median_size": median})
        for name, g in tables["value"].items():
            if g.count >= 10:
                out.append({
                    "kind": "function_by_value",
                    "message": (f"{name} was pickled by value {g.count} times "
                                f"({_fmt_bytes(g.bytes // g.count)} per pickle on average): "
                                "define it at module level in an importable module so it "
                                "travels as a name"),
                    "count": g.count, "bytes": g.bytes})
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
        if self.spawn_problems:
            out.append({
                "kind": "fork_only",
                "message": (f"{len(self.spawn_problems)} process(es) started with fork could "
                            "not start under spawn or forkserver (the default from Python 3.14)"
                            ": see the spawn check below"),
                "count": len(self.spawn_problems)})
        return out


def summarize(records: Iterable[Mapping[str, Any]], *, top: int = 10) -> Dict[str, Any]:
    """The report's data for ``records`` (any iterable of records)."""
    summary = Summary(top=top)
    for r in records:
        summary.add(r)
    data = summary.as_dict()
    data["spawn_problems"] = summary.spawn_problems
    return data


def summarize_file(path: str, *, top: int = 10, channel: Optional[str] = None,
                   pid: Optional[int] = None) -> Dict[str, Any]:
    trace = read_trace(path)
    records: Iterable[Mapping[str, Any]] = trace.dicts()
    if channel is not None or pid is not None:
        records = (r for r in trace.dicts()
                   if (channel is None or r.get("channel") == channel
                       or r.get("event") == "trace_start")
                   and (pid is None or r.get("pid") == pid))
    data = summarize(records, top=top)
    data["trace"] = path
    data["truncated_line"] = trace.truncated_line
    return data


_MACHINERY = ("multiprocessing.", "concurrent.futures.", "cloudpickle.", "copyreg.", "builtins.")


def _user_callable(names: tuple) -> str:
    """The program's own function among what a task names (not the transport's helpers)."""
    for name in names:
        if not name.startswith(_MACHINERY):
            return name
    return names[-1] if names else "a function"


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
            f"{run.get('python')}, pickler {run.get('pickler')}, tracedmp {run.get('tracedmp')}")
    add(f"  {data['records']} records from {data['processes']} processes over "
        f"{data['span_s']:.3f} s: {t['count']} pickles, {_fmt_bytes(t['bytes'])}, "
        f"{_fmt_ns(t['pickle_ns'])} spent pickling")
    if data.get("truncated_line"):
        add(f"  note: line {data['truncated_line']} was cut short (a process was killed while "
            "writing it) and is left out")

    def table(title: str, rows: List[Dict[str, Any]], name: str = "name") -> None:
        if not rows:
            return
        add("")
        add(title)
        width = min(max(len(str(r[name])) for r in rows), 60)
        add(f"  {'':{width}}  {'count':>8} {'bytes':>10} {'median':>9} {'p95':>9} "
            f"{'max':>9} {'pickling':>9}")
        for r in rows:
            label = str(r[name])
            if len(label) > width:
                label = "..." + label[-(width - 3):]
            add(f"  {label:{width}}  {r['count']:>8} {_fmt_bytes(r['bytes']):>10} "
                f"{_fmt_bytes(r['median_size']):>9} {_fmt_bytes(r['p95_size']):>9} "
                f"{_fmt_bytes(r['max_size']):>9} {_fmt_ns(r['pickle_ns']):>9}")

    table("By channel", data["by_channel"])
    table("By start method", data["by_start_method"])
    table("By type (top-level object)", data["by_type"])
    table("By callable (pickles that name it)", data["by_callable"])

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
            add(f"  {_fmt_bytes(r['size']):>10}{times:>6}  {r['channel']:<14} {r['type']}  in "
                f"{r['process']} (pid {r['pid']})" + (f"  names: {names}" if names else ""))

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
    return "\n".join(lines) + "\n"
