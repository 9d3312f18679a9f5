"""``tracedmp report --html``: the report as one self-contained HTML file, opened offline.

One streaming pass feeds the text report's :class:`~.report.Summary` and a :class:`Timeline`
that keeps, per pickle, five numbers in flat arrays (time, size, pickling time, channel,
process); at the end these become time buckets per channel (the chart) and per process (the
lanes), with single pickles kept only for the largest.  So the file's size is bounded by the
number of buckets, lanes and top items, never by the number of records: a 1 M-record trace
gives a file of a few hundred KB.

The page draws itself from one JSON document embedded in ``<script type="application/json">``
(with ``<``, ``>``, ``&`` and U+2028/2029 escaped, so no text from the trace can close the
element) and sets every text from it with ``textContent``; a Content-Security-Policy allows
only the page's own inline script (by its hash) and style, and no request to anywhere.
"""

from __future__ import annotations

import hashlib
import heapq
import html
import json
import math
import time
from array import array
from typing import IO, Any, Dict, Iterable, List, Optional, Union

from .html_assets import CSS, SCRIPT
from .reader import Trace, read_trace
from .report import Summary, finite, losses, losses_note

__all__ = ["Timeline", "render_html", "report_data", "write_html"]

BUCKETS = 240  # time buckets of the chart and of the aggregated lanes
LANES = 48  # processes drawn as their own lane; the rest share one
CHANNELS = 10  # channels drawn in the chart; the rest are summed as "other"
MARKS = 3000  # at most this many pickles drawn one by one (else only the largest MARK_TOP)
MARK_TOP = 400
EVENTS = 500  # process starts / failures kept one by one (the rest only counted)
TEXT = 300  # characters kept of any one text from the trace


class Timeline:
    """When each pickle, start and failure happened, per process and channel."""

    def __init__(self) -> None:
        self.ts = array("d")
        self.size = array("q")
        self.ns = array("q")
        self.chan = array("H")
        self.proc = array("I")
        self.seq = array("q")
        self.counted = array("B")  # 0: a summary trace's exemplar, already in a summary
        # Summary-mode aggregates: count, bytes and time of a kind of pickle over [since, ts].
        self.s_since = array("d")
        self.s_ts = array("d")
        self.s_count = array("q")
        self.s_bytes = array("q")
        self.s_ns = array("q")
        self.s_chan = array("H")
        self.s_proc = array("I")
        self.channels: Dict[str, int] = {}
        self.pids: Dict[Any, int] = {}
        self.names: List[str] = []
        self.pid_list: List[Optional[int]] = []
        self.starts: List[Dict[str, Any]] = []
        self.failures: List[Dict[str, Any]] = []
        self.start_count = 0
        self.failure_count = 0
        self.start_of: Dict[Any, float] = {}  # child pid -> when its parent started it
        self.first: Dict[int, float] = {}
        self.last: Dict[int, float] = {}

    def _proc(self, r: Dict[str, Any]) -> int:
        pid = r.get("pid")
        key = pid if type(pid) is int else -1
        i = self.pids.get(key)
        if i is None:
            i = self.pids[key] = len(self.names)
            self.names.append(_text(r.get("process")))
            self.pid_list.append(pid if type(pid) is int else None)
        return i

    def _chan(self, r: Dict[str, Any]) -> int:
        channel = _text(r.get("channel"))
        c = self.channels.get(channel)
        if c is None:
            c = self.channels[channel] = min(len(self.channels), 65535)
        return c

    def add(self, r: Dict[str, Any]) -> None:
        event = r.get("event")
        if event == "pickle":  # the hot path: checks inline (a million records: ~1 us each)
            ts = r.get("ts")
            if type(ts) is not float or not math.isfinite(ts):
                ts = finite(ts)
                if ts is None:
                    return
            channel = r.get("channel")
            c = self.channels.get(channel) if type(channel) is str else None
            if c is None:
                c = self._chan(r)
            pid = r.get("pid")
            p = self.pids.get(pid) if type(pid) is int else None
            if p is None:
                p = self._proc(r)
            size = r.get("size")
            ns = r.get("duration_ns")
            seq = r.get("seq")
            self.counted.append(0 if r.get("exemplar") is True else 1)
            self.ts.append(ts)
            self.size.append(size if type(size) is int and 0 <= size < 2**63 else 0)
            self.ns.append(ns if type(ns) is int and 0 <= ns < 2**63 else 0)
            self.chan.append(c)
            self.proc.append(p)
            self.seq.append(seq if type(seq) is int and 0 <= seq < 2**63 else -1)
            return  # first and last times per process: from the arrays, at the end
        ts = finite(r.get("ts"))
        if event == "process_start":
            self.start_count += 1
            if type(r.get("child_pid")) is int and ts is not None:
                self.start_of[r["child_pid"]] = ts
            if len(self.starts) < EVENTS or _int(r.get("size")) > self.starts[-1]["size"]:
                self._start(r, ts)
        elif event == "pickle_error":
            self.failure_count += 1
            if len(self.failures) < EVENTS:
                self.failures.append({
                    "t": ts, "pid": _pid(r), "proc": self._proc(r), "seq": _int(r.get("seq"), -1),
                    **{k: _short(r.get(k)) for k in ("process", "channel", "type", "error",
                                                       "path", "hint")}})
        elif event == "summary" and r.get("of", "pickle") == "pickle" and ts is not None:
            # Summary mode (`tracedmp run --summary`): the pickles of one kind since ``since``.
            since = finite(r.get("since"))
            self.s_since.append(since if since is not None and since <= ts else ts)
            self.s_ts.append(ts)
            self.s_count.append(_int(r.get("count")))
            self.s_bytes.append(_int(r.get("bytes")))
            self.s_ns.append(_int(r.get("duration_ns")))
            self.s_chan.append(self._chan(r))
            self.s_proc.append(self._proc(r))
        if ts is not None and event != "pickle" and type(r.get("pid")) is int:
            p = self._proc(r)
            if ts < self.first.get(p, math.inf):
                self.first[p] = ts
            if ts > self.last.get(p, -math.inf):
                self.last[p] = ts

    def _start(self, r: Dict[str, Any], ts: Optional[float]) -> None:
        self.starts.append({
            "t": ts, "pid": _pid(r), "proc": self._proc(r), "seq": _int(r.get("seq"), -1),
            "child": _short(r.get("child")), "child_pid": _pid(r, "child_pid"),
            "method": _short(r.get("start_method")), "pickled": r.get("pickled") is True,
            "size": _int(r.get("size")), "target": _short(r.get("target")),
            "default_method": r.get("default_method") is True})
        if len(self.starts) > 2 * EVENTS:  # keep the largest launches, in time order
            kept = heapq.nlargest(EVENTS, self.starts, key=lambda s: s["size"])
            self.starts = sorted(kept, key=lambda s: s["t"] or 0.0)

    def as_dict(self, t0: float, t1: float) -> Dict[str, Any]:
        span = max(t1 - t0, 1e-9)
        width = span / BUCKETS
        n = len(self.ts)
        order = sorted(self.channels, key=lambda c: self.channels[c])
        totals = [0] * len(order)
        proc_bytes = [0] * len(self.names)
        proc_count = [0] * len(self.names)
        first, last = self.first, self.last
        for c, p, s, counted, ts in zip(self.chan, self.proc, self.size, self.counted, self.ts):
            totals[c] += s * counted
            proc_bytes[p] += s * counted
            proc_count[p] += counted
            if ts < first.get(p, math.inf):
                first[p] = ts
            if ts > last.get(p, -math.inf):
                last[p] = ts
        for c, s in zip(self.s_chan, self.s_bytes):
            totals[c] += s
        shown = sorted(range(len(order)), key=lambda c: -totals[c])[:CHANNELS]
        slot = {c: i for i, c in enumerate(shown)}
        other = len(shown) if len(order) > CHANNELS else -1
        names = [order[c] for c in shown] + (["(other channels)"] if other >= 0 else [])
        series_bytes = [[0] * BUCKETS for _ in names]
        series_ns = [[0] * BUCKETS for _ in names]
        series_count = [[0] * BUCKETS for _ in names]

        # The lanes: the busiest processes (by bytes) each get one, the rest share one.
        for p, s, k in zip(self.s_proc, self.s_bytes, self.s_count):
            proc_bytes[p] += s
            proc_count[p] += k
        everyone = list(range(len(self.names)))
        everyone.sort(key=lambda p: (-proc_bytes[p], self.first.get(p, 0.0)))
        lane_procs = everyone[:LANES]
        lane_of = {p: i for i, p in enumerate(lane_procs)}
        rest = len(lane_procs) if len(everyone) > LANES else -1
        lane_bytes = [[0] * BUCKETS for _ in range(len(lane_procs) + (rest >= 0))]
        lane_count = [[0] * BUCKETS for _ in lane_bytes]

        for ts, size, ns, c, p, counted in zip(self.ts, self.size, self.ns, self.chan,
                                               self.proc, self.counted):
            if not counted:
                continue
            b = min(int((ts - t0) / width), BUCKETS - 1)
            c = slot.get(c, other)
            if c >= 0:
                series_bytes[c][b] += size
                series_ns[c][b] += ns
                series_count[c][b] += 1
            lane = lane_of.get(p, rest)
            lane_bytes[lane][b] += size
            lane_count[lane][b] += 1

        # A summary's pickles, spread evenly over the interval they were made in (in whole
        # numbers that add up to the summary's).
        for k in range(len(self.s_ts)):
            lo = min(max(int((self.s_since[k] - t0) / width), 0), BUCKETS - 1)
            hi = min(max(int((self.s_ts[k] - t0) / width), lo), BUCKETS - 1)
            parts = hi - lo + 1
            c = slot.get(self.s_chan[k], other)
            lane = lane_of.get(self.s_proc[k], rest)
            count, size, ns = self.s_count[k], self.s_bytes[k], self.s_ns[k]
            for j in range(parts):
                b = lo + j
                share_count = count * (j + 1) // parts - count * j // parts
                share_bytes = size * (j + 1) // parts - size * j // parts
                if c >= 0:
                    series_bytes[c][b] += share_bytes
                    series_ns[c][b] += ns * (j + 1) // parts - ns * j // parts
                    series_count[c][b] += share_count
                lane_bytes[lane][b] += share_bytes
                lane_count[lane][b] += share_count

        # Single pickles as marks: all of them when few, else the largest.
        picked: Iterable[int] = range(n)
        if n > MARKS:
            picked = heapq.nlargest(MARK_TOP, range(n), key=self.size.__getitem__)
        marks = sorted([[round(self.ts[i] - t0, 6), self.size[i], self.ns[i],
                         self.chan[i], self.proc[i], self.seq[i]] for i in picked])

        lanes = []
        for p in lane_procs:
            pid = self.pid_list[p]
            begin = self.start_of.get(pid, self.first.get(p, t0))
            lanes.append({"proc": p, "pid": pid, "process": self.names[p],
                          "count": proc_count[p], "bytes": proc_bytes[p],
                          "from": round(begin - t0, 6),
                          "to": round(self.last.get(p, t1) - t0, 6)})
        if rest >= 0:
            lanes.append({"proc": -1, "pid": None,
                          "process": f"({len(everyone) - LANES} other processes)",
                          "count": sum(proc_count[p] for p in everyone[LANES:]),
                          "bytes": sum(proc_bytes[p] for p in everyone[LANES:]),
                          "from": 0.0, "to": round(span, 6)})
        return {
            "t0": t0, "span": span, "buckets": BUCKETS, "bucket_s": width,
            "channels": order, "chart_channels": names,
            "chart_channel_index": [order.index(c) if c in self.channels else -1 for c in names],
            "bytes": series_bytes, "ns": series_ns, "counts": series_count,
            "processes": self.names[:5000],
            "pids": self.pid_list[:5000],
            "lanes": lanes, "lane_bytes": lane_bytes, "lane_count": lane_count,
            "marks": marks, "marks_all": n <= MARKS and not self.s_ts,
            "pickles": sum(self.counted) + sum(self.s_count),
            "summary_mode": bool(self.s_ts), "summaries": len(self.s_ts),
            "starts": [{**s, "t": None if s["t"] is None else round(s["t"] - t0, 6)}
                       for s in self.starts],
            "start_count": self.start_count,
            "failures": [{**f, "t": None if f["t"] is None else round(f["t"] - t0, 6)}
                         for f in self.failures],
            "failure_count": self.failure_count,
        }


def report_data(trace: Union[str, Trace], *, top: int = 10) -> Dict[str, Any]:
    """The report's data (as ``summarize``) plus the timeline, in one pass over ``trace``."""
    trace = trace if isinstance(trace, Trace) else read_trace(trace)
    summary = Summary(top=top)
    timeline = Timeline()
    for r in trace.dicts():
        summary.add(r)
        timeline.add(r)
    data = summary.as_dict()
    data["spawn_problems"] = summary.spawn_problems
    data["trace"] = str(trace.path) if hasattr(trace, "path") else ""
    data["truncated_line"] = trace.truncated_line
    data["lost"] = losses(trace)
    data["lost_note"] = losses_note(data["lost"])
    t0 = summary.first_ts if summary.first_ts is not None else 0.0
    t1 = summary.last_ts if summary.last_ts is not None else t0
    data["timeline"] = timeline.as_dict(t0, t1)
    data["start_methods"] = sorted({s["start_method"] for s in data["process_starts"]}
                                   | {r["name"] for r in data["by_start_method"]})
    data["generated"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for f in data["findings"]:
        f["link"] = _link(f)
    return data


def _link(finding: Dict[str, Any]) -> Dict[str, Any]:
    """Where on the page the records behind a finding are."""
    kind = finding.get("kind")
    if kind == "function_by_value":
        return {"section": "value", "name": finding.get("name")}
    if kind == "pickle_errors":
        return {"section": "failures"}
    if kind in ("fork_only", "large_launch_data"):
        return {"section": "starts"}
    if kind == "pickling_time":
        return {"section": "chart"}
    if isinstance(finding.get("channel"), str):  # the largest pickles of that channel
        return {"section": "largest", "channel": finding["channel"]}
    return {"section": "headline"}


def render_html(data: Dict[str, Any]) -> str:
    """The page for ``data`` (from :func:`report_data`)."""
    payload = json.dumps(_clean(data), ensure_ascii=True, separators=(",", ":"), default=list)
    # Nothing in the JSON may end the <script> element or open a comment or markup in it.
    payload = (payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
               .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    digest = hashlib.sha256(SCRIPT.encode()).digest()
    import base64

    script_hash = base64.b64encode(digest).decode()
    program = next((r.get("program") for r in data.get("runs", []) if r.get("program")), None)
    title = f"tracedmp report: {program or data.get('trace') or 'trace'}"
    csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
           f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{_ascii(html.escape(_short(title) or ''))}</title>\n"
        f"<style>{CSS}</style></head>\n<body>\n"
        "<noscript><p class=\"noscript\">This report draws itself with JavaScript; "
        "`tracedmp report TRACE` prints the same figures as text.</p></noscript>\n"
        "<main id=\"app\"></main>\n"
        f"<script type=\"application/json\" id=\"tracedmp-data\">{payload}</script>\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n")


def write_html(trace: Union[str, Trace], out: IO[str], *, top: int = 10) -> Dict[str, Any]:
    """Write the HTML report of ``trace`` to ``out``; return the report's data."""
    data = report_data(trace, top=top)
    out.write(render_html(data))
    return data


def _clean(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can carry it: finite numbers, str keys, texts cut at TEXT chars."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int)) or value is None:
        if type(value) is int and abs(value) >= 2**53:
            return float(value) if abs(value) < 1e308 else None
        return value
    if isinstance(value, str):
        return value
    if depth > 20:
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth + 1) for v in value]
    return str(value)


def _ascii(text: str) -> str:
    # The whole page is ASCII: any text (even a lone surrogate a damaged trace holds) writes.
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _short(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= TEXT else text[:TEXT] + "..."


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "?" if value is None else str(value)


def _pid(r: Dict[str, Any], key: str = "pid") -> Optional[int]:
    value = r.get(key)
    return value if type(value) is int else None


def _int(value: Any, default: int = 0) -> int:
    return value if type(value) is int and 0 <= value < 2**63 else default
