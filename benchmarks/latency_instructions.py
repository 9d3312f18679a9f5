"""Machine instructions tracing adds to a send, a Pool task and a fork start, counted by valgrind.

A loaded machine changes every time measured, not the instructions run: this counts them
(callgrind's Ir, user space only: system calls and page faults are not in it) for

- one ``Connection.send`` of the ping-pong's small dict (one process, the pipe drained):
  plain, traced with the record made but not written, written by the main process (mapped),
  and written as a child writes (one ``os.write``);
- one task of ``Pool(2).map(noop, range(n), chunksize=1)``, the whole process tree;
- one fork start (``Process(target=noop).start(); join()``), the parent and the child apart.

Each figure is the difference of two runs of different lengths, divided by the difference, so
start-up and shutdown fall out.  Needs valgrind; takes a few minutes.  (``instructions.py``
counts a Pool task's and a result's message in full and summary mode.)

    python benchmarks/latency_instructions.py [--only send,pool,fork] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

SEND = """
import os, sys, tempfile
mode, k = sys.argv[1], int(sys.argv[2])
import multiprocessing as mp
if mode != "plain":
    import tracedmp
    tracedmp.configure(trace=os.path.join(tempfile.mkdtemp(), "t.jsonl"))
    tracedmp.install()
    from tracedmp._runtime import tracer
    sink = tracer.current.sink
    if mode == "made":
        sink.write = len  # the record is made, not written
        if hasattr(type(sink), "put"):  # (the hot path's own write, since 0.1.x)
            sink.put = len
    elif mode == "child":
        sink.after_fork_in_child()  # as in a child: one os.write per record
a, b = mp.Pipe()
fd = b.fileno()
msg = {"id": 1, "values": list(range(10))}
for i in range(200 + k):
    a.send(msg)
    if i % 200 == 199:
        os.read(fd, 1 << 16)
"""

POOL = """
import sys
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "plain":
    import multiprocessing as mp
else:
    import tracedmp as mp
def noop(x):
    return x
if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        pool.map(noop, range(200))
        pool.map(noop, range(n), chunksize=1)
"""

FORK = """
import sys
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "plain":
    import multiprocessing as mp
else:
    import tracedmp as mp
def noop():
    pass
if __name__ == "__main__":
    ctx = mp.get_context("fork")
    ctx.Process(target=noop).start()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
"""

# name: (script, modes, short and long run, what one unit is)
CASES = {
    "send": (SEND, ("plain", "made", "traced", "child"), (1000, 5000), "send"),
    "pool": (POOL, ("plain", "traced"), (1000, 3000), "task"),
    "fork": (FORK, ("plain", "traced"), (20, 60), "start"),
}
ORDER = {"made": "traced, record made, not written", "traced": "traced, written (main process)",
         "child": "traced, written as a child (os.write)"}


def totals(script: str, mode: str, n: int, work: str) -> list:
    """Ir of each process of one run, the first process first."""
    out = os.path.join(work, f"cg.{mode}.{n}")
    env = dict(os.environ, TRACEDMP_TRACE=os.path.join(work, "trace.jsonl"))
    env.pop("TRACEDMP_AUTOSTART", None)
    # A forked child inherits the parent's counts: zeroed where a fork child starts.
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--zero-before=PyOS_AfterFork_Child",
                             f"--callgrind-out-file={out}.%p", sys.executable, "-c", script,
                             mode, str(n)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if proc.wait(timeout=1800):
        raise RuntimeError(f"{name_of(script)} {mode} {n}: exit status {proc.returncode}")
    counts = []
    # valgrind runs the program in its own process: its pid is the parent's (the children's
    # pids may be lower, once pids wrap around)
    paths = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]) != proc.pid)
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    counts.append(int(line.split()[1]))
                    break
        os.unlink(path)
    if os.path.exists(env["TRACEDMP_TRACE"]):
        os.unlink(env["TRACEDMP_TRACE"])
    return counts


def name_of(script: str) -> str:
    return next(name for name, case in CASES.items() if case[0] is script)


def measure(name: str, work: str) -> dict:
    script, modes, (short, long), unit = CASES[name]
    rows = {}
    for mode in modes:
        a, b = totals(script, mode, short, work), totals(script, mode, long, work)
        per = (long - short)
        if name == "fork":  # the parent (first pid) and its children apart
            rows[mode] = {"parent": (b[0] - a[0]) / per, "child": (sum(b[1:]) - sum(a[1:])) / per}
        else:
            rows[mode] = {"all": (sum(b) - sum(a)) / per}
        print(f"  {name} {mode}: {rows[mode]}", file=sys.stderr)
    return {"unit": unit, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="send,pool,fork")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.only.split(","):
            results[name] = measure(name, work)
    print(f"# machine instructions (valgrind Ir, user space), CPython {platform.python_version()}")
    for name, res in results.items():
        rows = res["rows"]
        for mode, cols in rows.items():
            label = ORDER.get(mode, mode)
            figures = ", ".join(f"{k} {v:,.0f}" for k, v in cols.items())
            extra = ""
            if mode != "plain":
                ratio = sum(cols.values()) / sum(rows["plain"].values())
                extra = f"  ({ratio:.3f}x plain)"
            print(f"{name:5} {label:40} {figures} per {res['unit']}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
