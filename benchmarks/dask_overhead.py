"""What tracing costs a Dask program: a LocalCluster workload of 2,000 small tasks.

    python benchmarks/dask_overhead.py [--repeat 7] [--tasks 2000] [--json out.json]

The program starts a ``LocalCluster(processes=True)`` of two single-threaded workers, maps
``--tasks`` small tasks (each returns a small tuple), gathers them and closes; it runs as
``python PROG`` (plain) and ``tracedmp run PROG`` (traced, to a scratch file), the two
alternating within each round (the order flips every round) so a slow stretch of this shared
machine weighs on both.  Per run: the client's wall time from creating the cluster to closing
it (measured in the program, so interpreter start is not in it), the whole command's wall time,
and the CPU (user + system) of the process tree from RUSAGE_CHILDREN (each worker is reaped by
its nanny, the nanny by the program).  Figures are medians of per-round ratios traced/plain.
Goal (issue 20): client wall ratio <= 1.10.  The load average is printed: on a shared 2-core
machine wall ratios grow with it, CPU ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

PROGRAM = """\
import json, sys, time
from distributed import Client, LocalCluster

def small(i):
    return (i, i * i)

if __name__ == "__main__":
    n = int(sys.argv[1])
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        t1 = time.perf_counter()
        results = client.gather(client.map(small, range(n)))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    assert len(results) == n
    print(json.dumps({"client_s": t3 - t0, "tasks_s": t2 - t1}))
"""
GOAL = 1.10


def timed(argv: List[str], env: Dict[str, str], cwd: str) -> Dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"client_s": out["client_s"], "tasks_s": out["tasks_s"], "wall_s": wall,
            "cpu_s": cpu}


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    runs: Dict[str, List[Dict[str, float]]] = {"plain": [], "traced": []}
    with tempfile.TemporaryDirectory() as tmp:
        prog = os.path.join(tmp, "prog.py")
        with open(prog, "w") as f:
            f.write(PROGRAM)
        trace = os.path.join(tmp, "trace.jsonl")
        commands = {
            "plain": [sys.executable, prog, str(args.tasks)],
            "traced": [sys.executable, "-m", "tracedmp", "run", "--trace", trace, prog,
                       str(args.tasks)],
        }
        for i in range(args.repeat):
            for variant in (("plain", "traced") if i % 2 == 0 else ("traced", "plain")):
                if os.path.exists(trace):
                    os.unlink(trace)
                runs[variant].append(timed(commands[variant], env, tmp))
            print(f"round {i + 1}: " + ", ".join(
                f"{v} client {runs[v][-1]['client_s']:.2f} s cpu {runs[v][-1]['cpu_s']:.2f} s"
                for v in runs), flush=True)
    ratios = {key: statistics.median(t[key] / p[key] for p, t in zip(runs["plain"],
                                                                       runs["traced"]))
              for key in ("client_s", "tasks_s", "wall_s", "cpu_s")}
    figures = {"tasks": args.tasks, "repeat": args.repeat, "load": os.getloadavg(),
               "ratios": ratios, "goal_client_wall": GOAL,
               "medians": {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                           for v, rs in runs.items()}}
    print(f"load average {figures['load'][0]:.1f}; traced/plain medians of per-round ratios: "
          + ", ".join(f"{k[:-2]} {v:.3f}" for k, v in ratios.items())
          + f" (goal: client <= {GOAL})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
