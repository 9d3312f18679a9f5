"""The report's Dask part: ``dask.*`` pickle records by channel and task prefix, and the
findings that are Dask's own (a large object in the graph, a function sent by value with every
task, the same data scattered again and again).

``report.Summary`` hands every ``dask.*`` pickle record to ``DaskSummary.add``; its
``as_dict`` goes into the report's data under ``dask`` and its ``findings`` join the others,
in their shape: ``kind``, ``message`` and the figures the message is made of.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["DaskSummary", "render"]

LARGE_GRAPH = 1_000_000  # a graph of this size or more is a finding (Dask warns at 10 MB)
_TOP = 10


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


class DaskSummary:
    def __init__(self) -> None:
        # channel -> [messages, bytes, out-of-band bytes, messages naming a function by value]
        self.channels: Dict[str, List[int]] = {}
        self.prefixes: Dict[Tuple[str, str], List[int]] = {}  # (channel, prefix) -> [n, bytes]
        self.graphs: List[Dict[str, Any]] = []  # the largest graphs, with their parts
        self.by_value: Dict[str, List[int]] = {}  # function -> [tasks, bytes, graphs]
        self.scattered: Dict[Tuple[str, int], List[Any]] = {}  # (type, size) -> [n, keys]
        self.large_tasks: Dict[str, List[Any]] = {}  # prefix -> [n, bytes, a part]
        self.oob_unknown = False  # summary records (they do not say what went out of band)

    def add_summary(self, r: Mapping[str, Any], channel: str, names: tuple) -> None:
        """A summary-mode record: the aggregates of one kind of Dask pickle (no per-object
        fields: keys, prefixes and out-of-band bytes are not in it)."""
        count, nbytes = _int(r.get("count")), _int(r.get("bytes"))
        entry = self.channels.get(channel)
        if entry is None:
            self.channels[channel] = entry = [0, 0, 0, 0]
        entry[0] += count
        entry[1] += nbytes
        self.oob_unknown = True
        values = [n for n, kind in names if kind == "value"]
        if values:
            entry[3] += count
        for name in values:
            v = self.by_value.setdefault(name, [0, 0, 0])
            if channel == "dask.task":
                v[0] += count
                v[1] += nbytes
            elif channel == "dask.graph":
                v[2] += count
        sizes = r.get("sizes")
        if channel == "dask.scatter" and r.get("sizes_exact") is True and type(sizes) is list:
            for pair in sizes:
                if type(pair) is list and len(pair) == 2:
                    s = self.scattered.setdefault((_text(r.get("type")), _int(pair[0])),
                                                  [0, set()])
                    s[0] += _int(pair[1])

    def add_exemplar(self, r: Mapping[str, Any], channel: str, size: int) -> None:
        """Summary mode's largest pickles, in full (already counted by a summary)."""
        if channel == "dask.graph" and size >= LARGE_GRAPH:
            self._graph(r, size)

    def _graph(self, r: Mapping[str, Any], size: int) -> None:
        self.graphs.append({"size": size, "type": _text(r.get("type")),
                            "process": _text(r.get("process")), "pid": r.get("pid"),
                            "buffer_bytes": _int(r.get("buffer_bytes")),
                            "part": _first_part(r)})
        if len(self.graphs) > 4 * _TOP:
            self.graphs.sort(key=lambda g: -g["size"])
            del self.graphs[_TOP:]

    def add(self, r: Mapping[str, Any], channel: str, size: int, names: tuple) -> None:
        entry = self.channels.get(channel)
        if entry is None:
            self.channels[channel] = entry = [0, 0, 0, 0]
        entry[0] += 1
        entry[1] += size
        entry[2] += _int(r.get("buffer_bytes"))
        values = [n for n, kind in names if kind == "value"]
        if values:
            entry[3] += 1
        prefix = r.get("dask_prefix")
        if isinstance(prefix, str) and channel != "dask.other":
            p = self.prefixes.setdefault((channel, prefix), [0, 0])
            p[0] += 1
            p[1] += size
        if channel == "dask.task":
            for name in values:
                v = self.by_value.setdefault(name, [0, 0, 0])
                v[0] += 1
                v[1] += size
            if size >= LARGE_GRAPH and isinstance(prefix, str):
                t = self.large_tasks.setdefault(prefix, [0, 0, None])
                t[0] += 1
                t[1] += size
                if t[2] is None:
                    t[2] = _first_part(r)
        elif channel == "dask.graph":
            for name in values:
                self.by_value.setdefault(name, [0, 0, 0])[2] += 1
            if size >= LARGE_GRAPH and r.get("dask_field") in ("expr_ser", None):
                self._graph(r, size)
        elif channel == "dask.scatter":
            key = (_text(r.get("type")), size)
            s = self.scattered.get(key)
            if s is None:
                self.scattered[key] = s = [0, set()]
            s[0] += 1
            if len(s[1]) < 1000:
                s[1].add(_text(r.get("dask_key")))

    def as_dict(self) -> Dict[str, Any]:
        return {
            "channels": [{"channel": c, "count": v[0], "bytes": v[1], "buffer_bytes": v[2],
                          "by_value": v[3]}
                         for c, v in sorted(self.channels.items(), key=lambda kv: -kv[1][1])],
            "prefixes": [{"channel": c, "prefix": p, "count": v[0], "bytes": v[1]}
                         for (c, p), v in sorted(self.prefixes.items(),
                                                 key=lambda kv: (-kv[1][1], kv[0]))][:_TOP],
            # the largest graphs, those whose parts were read first
            "large_graphs": sorted(self.graphs, key=lambda g: (g["part"] is None,
                                                               -g["size"]))[:3],
            "buffer_bytes_known": not self.oob_unknown,
        }

    def findings(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        # Large graphs: one finding per type of graph, naming a part where one was read
        alike: Dict[str, List[Dict[str, Any]]] = {}
        for g in sorted(self.graphs, key=lambda g: -g["size"]):
            alike.setdefault(g["type"], []).append(g)
        tasks = sum(t[0] for t in self.large_tasks.values())
        again = (f"; {tasks} dask.task message(s) of 1 MB or more carried data again, "
                 f"{_fmt(sum(t[1] for t in self.large_tasks.values()))} in all" if tasks else "")
        for type_name, graphs in list(alike.items())[:3]:
            g, n = graphs[0], len(graphs)
            part = next((x["part"] for x in graphs if x["part"]), None)
            where = (f"; {_fmt(part['size'])} of {'it' if n == 1 else 'one'} is a "
                     f"{part['type']}, at {part['path']}" if part else "")
            what = f"a graph of {_fmt(g['size'])}" if n == 1 else \
                f"{n} graphs of up to {_fmt(g['size'])}"
            out.append({
                "kind": "dask_large_graph",
                "message": (f"the client sent {what} ({type_name}{where}){again}: data "
                            "embedded in a graph travels to the scheduler, and to a worker "
                            "with every task that uses it; scatter it first (client.scatter) "
                            "and pass the future, or load it inside the task"),
                "count": n, "size": g["size"], "type": type_name, "part": part})
            again = ""
        for prefix, (n, nbytes, part) in sorted(self.large_tasks.items(),
                                                 key=lambda kv: -kv[1][1]):
            if self.graphs or n < 2:
                continue  # the graph's finding says it
            where = f" ({part['path']}: {part['type']})" if part else ""
            out.append({
                "kind": "dask_large_tasks",
                "message": (f"{n} {prefix} tasks each carried {_fmt(nbytes // n)} or so"
                            f"{where}, {_fmt(nbytes)} in all: scatter the data once "
                            "(client.scatter) and pass the future to the tasks"),
                "count": n, "bytes": nbytes, "prefix": prefix, "part": part})
        for name, (tasks, size, in_graphs) in sorted(self.by_value.items(),
                                                   key=lambda kv: -kv[1][1]):
            if tasks < 2:
                continue
            out.append({
                "kind": "dask_function_by_value",
                "message": (f"{name} was sent by value with each of {tasks} dask.task "
                            f"messages ({_fmt(size)} in all, with what else they carried"
                            + (f"; and in {in_graphs} graph(s)" if in_graphs else "")
                            + "): Dask cloudpickles a task whose pickle names __main__, so the "
                            "function's code travels with each one; define it in a module the "
                            "workers can import (client.upload_file, or installed on them) so "
                            "it travels as a name"),
                "count": tasks, "bytes": size, "name": name})
        for (type_name, size), (n, keys) in sorted(self.scattered.items(),
                                                   key=lambda kv: -kv[0][1] * kv[1][0]):
            if n < 2:
                continue
            same = " under the same key" if len(keys) == 1 else ""
            out.append({
                "kind": "dask_scattered_repeatedly",
                "message": (f"a {type_name} of {_fmt(size)} was scattered {n} times{same} "
                            f"({_fmt(size * n)} in all): scatter it once and pass its "
                            "future to every task that needs it"),
                "count": n, "size": size, "bytes": size * n, "type": type_name})
        return out

    def by_value_names(self) -> set:
        """Functions this part's findings cover (the general by-value finding leaves them)."""
        return {name for name, v in self.by_value.items() if v[0] >= 2}


def _first_part(r: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    parts = r.get("parts")
    if isinstance(parts, list) and parts and isinstance(parts[0], dict):
        p = parts[0]
        return {"path": _text(p.get("path")), "type": _text(p.get("type")),
                "size": _int(p.get("size"))}
    return None


def _fmt(n: float) -> str:  # as the report's other sizes
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def render(data: Optional[Dict[str, Any]], add: Any) -> None:
    """The report's text lines for Dask (``add`` takes one line)."""
    if not data or not data.get("channels"):
        return
    add("")
    add("Dask (what distributed.protocol serialized to send; out of band: pickle protocol 5 "
        "buffers and Dask's own serializers' frames)")
    add(f"  {'channel':16} {'count':>8} {'bytes':>10} {'out of band':>12} {'by value':>9}")
    known = data.get("buffer_bytes_known", True)
    for c in data["channels"]:
        oob = _fmt(c["buffer_bytes"]) if known else "?"
        add(f"  {c['channel']:16} {c['count']:>8} {_fmt(c['bytes']):>10} "
            f"{oob:>12} {c['by_value']:>9}")
    if not known:
        add("  (a summary-mode trace: out-of-band bytes, keys and prefixes are in full records "
            "only)")
    if data.get("prefixes"):
        add("  by task prefix:")
        for p in data["prefixes"]:
            add(f"    {p['prefix'][:40]:40} {p['channel']:14} {p['count']:>8} "
                f"{_fmt(p['bytes']):>10}")
    if data.get("large_graphs"):
        add("  large graphs:")
    for g in data.get("large_graphs") or ():
        part = g.get("part")
        add(f"    {_fmt(g['size']):>10} {g['type']} from {g['process']} (pid {g['pid']})"
            + (f": {part['path']} ({part['type']}) {_fmt(part['size'])}" if part else ""))
