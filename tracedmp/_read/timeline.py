"""``tracedmp timeline``: a trace as Chrome Trace Event JSON, for Perfetto and chrome://tracing.

One track per process (named after it), one slice per pickle lasting as long as the pickling,
instant markers for process starts and pickling errors.  A summary-mode trace gives one slice
per interval and kind of pickle (from ``since`` to ``ts``), and its exemplars as pickles.
Written as it is read: memory stays flat.
What the trace lost (records cut off or missing, lines skipped) goes in the file's ``otherData``.
"""

from __future__ import annotations

import json
from typing import IO, Any, Dict, Union

from .reader import Trace, read_trace
from .report import finite, losses

__all__ = ["write_timeline"]


def write_timeline(trace_path: Union[str, Trace], out: IO[str]) -> int:
    """Write the timeline of a trace (a path or a :class:`Trace`) to ``out``; return the number
    of events written."""
    trace = trace_path if isinstance(trace_path, Trace) else read_trace(trace_path)
    names: Dict[int, str] = {}
    count = 0
    out.write('{"displayTimeUnit":"ms","traceEvents":[\n')
    first = True

    def emit(event: Dict[str, Any]) -> None:
        nonlocal first, count
        if not first:
            out.write(",\n")
        out.write(json.dumps(event, separators=(",", ":")))
        first = False
        count += 1

    for r in trace:
        pid = r.get("pid")
        ts = finite(r.get("ts"))
        if type(pid) is not int or ts is None:
            continue
        process = r.get("process") or "?"
        if names.get(pid) != process:
            names[pid] = process
            emit({"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
                  "args": {"name": f"{process} ({pid})"}})
        end_us = ts * 1e6
        event = r.get("event")
        if event in ("pickle", "unpickle"):
            duration = r.get("duration_ns")
            duration_us = duration / 1e3 if type(duration) is int and 0 <= duration < 2**63 \
                else 0.0
            emit({
                "ph": "X", "pid": pid, "tid": pid, "cat": r.get("channel") or "?",
                "name": f"{'' if event == 'pickle' else 'unpickle '}{r.get('channel')} "
                        f"{r.get('type')}",
                "ts": end_us - duration_us, "dur": duration_us,
                "args": {k: r.get(k) for k in ("size", "kind", "type", "channel", "pickler",
                                               "start_method", "callables", "part", "child")
                         if r.get(k) is not None},
            })
        elif event == "summary":
            # Summary mode: one slice per interval and kind of pickle, as coarse as the trace.
            since = finite(r.get("since"))
            if since is None or since > ts:
                since = ts
            emit({
                "ph": "X", "pid": pid, "tid": pid, "cat": f"summary {r.get('channel') or '?'}",
                "name": f"{r.get('count')} x {r.get('channel')} {r.get('type')}",
                "ts": since * 1e6, "dur": (ts - since) * 1e6,
                "args": {k: r.get(k) for k in ("of", "count", "bytes", "min_size", "max_size",
                                               "duration_ns", "kind", "type", "channel",
                                               "start_method", "callables")
                         if r.get(k) is not None},
            })
        elif event in ("process_start", "pickle_error", "trace_start"):
            emit({
                "ph": "i", "s": "p", "pid": pid, "tid": pid, "ts": end_us, "cat": event,
                "name": (f"start {r.get('child')} ({r.get('start_method')})"
                         if event == "process_start" else
                         f"pickle error: {r.get('error')}" if event == "pickle_error" else
                         "trace start"),
                "args": {k: v for k, v in r.items() if k not in ("v", "ts", "pid", "event")},
            })
    out.write('\n],"otherData":')
    out.write(json.dumps({"tracedmp_lost": losses(trace)}, separators=(",", ":")))
    out.write("}\n")
    return count
