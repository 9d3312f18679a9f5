"""What one traced pickle costs, step by step, in nanoseconds: ``python benchmarks/per_record.py``.

Pickles a Pool task (which names two functions) and a Pool result (which names none) the way
multiprocessing does, ``ForkingPickler.dumps`` called from a sender's frame, and adds one step
of tracing at a time.  Each figure is the median of the best runs of many calls, in one process,
so it measures the Python and system work per pickle, not a whole program; the end-to-end
ratios come from overhead.py.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from multiprocessing.pool import mapstar
from multiprocessing.reduction import ForkingPickler

import tracedmp
from tracedmp._runtime import control
from tracedmp._runtime import picklers as _pickler
from tracedmp._runtime import tracer as _tracer


def noop(x):
    return x


MESSAGES = {
    "pool task": (0, 5, mapstar, ((noop, (5,)),), {}),
    "pool result": (0, 5, (True, [5])),
}


def send(dumps, obj):
    return dumps(obj)  # a sender's frame, as Connection.send or SimpleQueue.put would be


CLOCK = time.perf_counter_ns  # --cpu: this thread's CPU time, which other load disturbs less


def per_call(dumps, obj, n):
    best = []
    for _ in range(7):
        t = CLOCK()
        for _ in range(n):
            send(dumps, obj)
        best.append((CLOCK() - t) / n)
    return statistics.median(sorted(best)[:3])


def measure(n):
    trace = os.path.join(tempfile.mkdtemp(), "per_record.jsonl")
    steps = {}
    for name, obj in MESSAGES.items():
        row = steps[name] = {}
        row["ForkingPickler.dumps (plain)"] = per_call(ForkingPickler.dumps, obj, n)
        row["tracing pickler, not tracing"] = per_call(_pickler.TracingPickler.dumps, obj, n)
        tracedmp.configure(trace=trace)
        tracedmp.install()
        sink = _tracer.current.sink
        write, has_put = sink.write, hasattr(type(sink), "put")  # (put: the hot path's write)
        put = sink.put if has_put else None
        sink.write = len  # the record is made, not written
        if has_put:
            sink.put = len
        row["+ record made"] = per_call(_pickler.TracingPickler.dumps, obj, n)
        sink.write = write
        if has_put:
            sink.put = put
        row["+ written, main process (mapped)"] = per_call(_pickler.TracingPickler.dumps, obj, n)
        sink.after_fork_in_child()  # as in a child: one os.write per record
        row["+ written, child (write-through)"] = per_call(_pickler.TracingPickler.dumps, obj, n)
        tracedmp.uninstall()
        # Summary mode: the pickle adds to its kind's aggregate (nothing written per pickle).
        tracedmp.configure(mode="summary", summary_interval=3600)
        tracedmp.install()
        row["summary mode (aggregated)"] = per_call(_pickler.TracingPickler.dumps, obj, n)
        tracedmp.uninstall()
        tracedmp.reset_config()
        control._implicit_allowed = True
        os.unlink(trace)
    os.rmdir(os.path.dirname(trace))
    return steps


def render(steps):
    names = list(MESSAGES)
    lines = [f"# ns per pickle, CPython {platform.python_version()} on {platform.machine()}, "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
             f"{'step':38}" + "".join(f"{n:>14}" for n in names)]
    for step in steps[names[0]]:
        lines.append(f"{step:38}" + "".join(f"{steps[n][step]:14.0f}" for n in names))
    for n in names:
        plain = steps[n]["ForkingPickler.dumps (plain)"]
        extra = {k: steps[n][k] - plain for k in steps[n] if k.startswith(("+", "summary"))}
        lines.append(f"{n}: tracing adds " + ", ".join(f"{v:.0f} ns {k.lstrip('+ ')}"
                                                        for k, v in extra.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="pickles per timed run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--cpu", action="store_true",
                        help="time this thread's CPU, not wall time (a loaded machine)")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.thread_time_ns
    steps = measure(args.n)
    print(render(steps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "steps_ns": steps}, f, indent=1)


if __name__ == "__main__":
    main()
