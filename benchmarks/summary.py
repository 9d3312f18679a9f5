"""Summary mode beside full tracing and plain multiprocessing, in one run.

    python benchmarks/summary.py [--repeat 7] [--tasks 100000] [--long 2000000] [--json FILE]

1. Tiny tasks: ``Pool(2).map(noop, range(tasks), chunksize=1)``, each variant (plain, full,
   summary) in a fresh interpreter, interleaved and repeated; ratios to plain are the medians of
   the per-round ratios, for the wall time of the map and the CPU time of the process tree (the
   parent and its reaped workers: the Pool is closed and joined, so summary-mode workers end
   normally and write their aggregates).  Also each trace's size, and a check that the summary
   trace counts every task.  Goals: summary <= 1.05 CPU of plain, its trace <= 1 MB.
2. ``--long`` tiny tasks once, in summary mode: the trace's size (goal <= 5 MB) and the time
   ``tracedmp report`` takes on it in a fresh process (goal <= 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PROGRAM = """
import json, resource, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "plain":
    import multiprocessing as mp
else:
    import tracedmp as mp
from workloads import noop

def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

if __name__ == "__main__":
    before = cpu()
    pool = mp.Pool(2)
    pool.map(noop, range(200))
    t = time.perf_counter()
    pool.map(noop, range(n), chunksize=1)
    seconds = time.perf_counter() - t
    pool.close()
    pool.join()
    print(json.dumps({"seconds": seconds, "cpu": cpu() - before}))
"""

HERE = os.path.dirname(os.path.abspath(__file__))


def run(mode: str, n: int, tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    trace = os.path.join(tmp, f"{mode}.jsonl")
    if os.path.exists(trace):
        os.unlink(trace)
    if mode != "plain":
        env["TRACEDMP_TRACE"] = trace
    if mode == "summary":
        env["TRACEDMP_MODE"] = "summary"
    script = os.path.join(tmp, "tiny.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    out = subprocess.run([sys.executable, script, mode, str(n)], env=env, check=True,
                         capture_output=True, text=True, timeout=3600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["trace_bytes"] = os.path.getsize(trace) if mode != "plain" else 0
    result["trace"] = trace
    return result


def pool_tasks(trace: str) -> int:
    sys.path.insert(0, os.path.dirname(HERE))
    from tracedmp import read_trace, summarize

    rows = summarize(read_trace(trace))["by_channel"]
    return sum(r["count"] for r in rows if r["name"] == "pool.task")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--long", type=int, default=2_000_000,
                        help="tiny tasks of the summary-only run (0: skip it)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    modes = ("plain", "full", "summary")
    runs: dict = {m: [] for m in modes}
    out: dict = {"python": platform.python_version(), "cores": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for mode in (modes if rep % 2 == 0 else modes[::-1]):
                result = run(mode, args.tasks, tmp)
                if mode == "summary" and rep == 0:
                    # every task, plus the warm-up's 200 and a None per worker
                    out["summary_counts_pool_tasks"] = pool_tasks(result["trace"])
                runs[mode].append(result)
            print(f"  round {rep + 1}/{args.repeat} done", file=sys.stderr)
        print(f"# {platform.python_implementation()} {platform.python_version()}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"{args.tasks} tiny tasks, Pool(2), chunksize=1; paired medians of "
              f"{args.repeat} rounds")
        print(f"{'variant':10} {'wall/plain':>11} {'CPU/plain':>10} {'trace':>12}")
        table = {}
        for mode in modes:
            wall = statistics.median(a["seconds"] / b["seconds"]
                                     for a, b in zip(runs[mode], runs["plain"]))
            cpu = statistics.median(a["cpu"] / b["cpu"] for a, b in zip(runs[mode], runs["plain"]))
            size = statistics.median(r["trace_bytes"] for r in runs[mode])
            table[mode] = {"wall_ratio": wall, "cpu_ratio": cpu, "trace_bytes": size,
                           "plain_s": statistics.median(r["seconds"] for r in runs["plain"])}
            print(f"{mode:10} {wall:11.3f} {cpu:10.3f} {size / 1e6:9.3f} MB")
        print(f"goals: summary CPU/plain <= 1.05, summary trace <= 1 MB; the summary trace "
              f"counts {out.get('summary_counts_pool_tasks')} pool.task messages "
              f"(the tasks, the warm-up's 8 chunks and a None per worker)")
        out["tiny_tasks"] = table
        out["runs"] = runs
        if args.long:
            result = run("summary", args.long, tmp)
            import resource

            def reaped() -> float:
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                return usage.ru_utime + usage.ru_stime

            start, cpu_before = time.perf_counter(), reaped()
            subprocess.run([sys.executable, "-m", "tracedmp", "report", result["trace"]],
                           check=True, stdout=subprocess.DEVNULL, timeout=600)
            report_s = time.perf_counter() - start
            report_cpu = reaped() - cpu_before
            tasks = pool_tasks(result["trace"])
            out["long"] = {"tasks": args.long, "seconds": result["seconds"],
                           "trace_bytes": result["trace_bytes"], "report_s": report_s,
                           "report_cpu_s": report_cpu,
                           "pool_tasks_counted": tasks}
            print(f"{args.long} tiny tasks in summary mode: map {result['seconds']:.1f} s, "
                  f"trace {result['trace_bytes'] / 1e6:.3f} MB, report {report_s:.2f} s "
                  f"({report_cpu:.2f} s CPU), "
                  f"{tasks} pool.task messages counted (goals: trace <= 5 MB, report <= 2 s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
