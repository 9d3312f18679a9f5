"""What tracing costs a Dask program: a LocalCluster workload of 2,000 small tasks.

    python benchmarks/dask_overhead.py [--repeat 7] [--tasks 2000] [--remote] [--json out.json]

The program starts a ``LocalCluster(processes=True)`` of two single-threaded workers, maps
``--tasks`` small tasks (each returns a small tuple), gathers them and closes; it runs as
``python PROG`` (plain) and ``tracedmp run PROG`` (traced, to a scratch file), the two
alternating within each round (the order flips every round) so a slow stretch of this shared
machine weighs on both.  Per run: the client's wall time from creating the cluster to closing
it (measured in the program, so interpreter start is not in it), the whole command's wall time,
and the CPU (user + system) of the process tree from RUSAGE_CHILDREN (each worker is reaped by
its nanny, the nanny by the program).  Figures are medians of per-round ratios traced/plain.
Goal (issue 20): client wall ratio <= 1.10.

``--remote``: the same tasks on a ``dask scheduler`` and two ``dask worker --nthreads 1``
started once, untraced, beside the program (standing in for other machines): the traced runs'
workers and scheduler forward their records to the client (``_integrations/dask_plugin``).
The process-tree CPU then covers the client only; the cluster's CPU is read from /proc
(user + system of the scheduler and workers, before and after each run).  The load average is
printed: on a shared 2-core machine wall ratios grow with it, CPU ratios much less.
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
    if len(sys.argv) > 2:  # a running cluster's address
        cluster, client = None, Client(sys.argv[2])
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    with client:
        t1 = time.perf_counter()
        results = client.gather(client.map(small, range(n)))
        t2 = time.perf_counter()
    if cluster is not None:
        cluster.close()
    t3 = time.perf_counter()
    assert len(results) == n
    print(json.dumps({"client_s": t3 - t0, "tasks_s": t2 - t1}))
"""
GOAL = 1.10


def cluster_cpu(pids: List[int]) -> float:
    """User + system seconds of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def start_cluster(tmp: str, env: Dict[str, str]) -> tuple:
    file = os.path.join(tmp, "scheduler.json")
    bin_dir = [sys.executable, "-m"]
    procs = [subprocess.Popen(bin_dir + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                         "--port", "0", "--no-dashboard", "--scheduler-file",
                                         file], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not os.path.exists(file) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    with open(file) as f:
        address = json.load(f)["address"]
    for _ in range(2):
        procs.append(subprocess.Popen(
            bin_dir + ["distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
                       "--no-dashboard", "--host", "127.0.0.1"], env=env, cwd=tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(5)
    return address, procs


def timed(argv: List[str], env: Dict[str, str], cwd: str,
          cluster: List[int] = ()) -> Dict[str, float]:  # type: ignore[assignment]
    before_cluster = cluster_cpu(cluster) if cluster else 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures = {"client_s": out["client_s"], "tasks_s": out["tasks_s"], "wall_s": wall,
               "cpu_s": cpu}
    if cluster:
        figures["cluster_cpu_s"] = cluster_cpu(cluster) - before_cluster
    return figures


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--remote", action="store_true",
                        help="a separately started scheduler and workers, not a LocalCluster")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    runs: Dict[str, List[Dict[str, float]]] = {"plain": [], "traced": []}
    with tempfile.TemporaryDirectory() as tmp:
        prog = os.path.join(tmp, "prog.py")
        with open(prog, "w") as f:
            f.write(PROGRAM)
        trace = os.path.join(tmp, "trace.jsonl")
        extra, procs = ([], [])
        if args.remote:
            address, procs = start_cluster(tmp, env)
            extra = [address]
        commands = {
            "plain": [sys.executable, prog, str(args.tasks), *extra],
            "traced": [sys.executable, "-m", "tracedmp", "run", "--trace", trace, prog,
                       str(args.tasks), *extra],
        }
        try:
            for i in range(args.repeat):
                for variant in (("plain", "traced") if i % 2 == 0 else ("traced", "plain")):
                    if os.path.exists(trace):
                        os.unlink(trace)
                    runs[variant].append(timed(commands[variant], env, tmp,
                                               [p.pid for p in procs]))
                print(f"round {i + 1}: " + ", ".join(
                    f"{v} client {runs[v][-1]['client_s']:.2f} s cpu {runs[v][-1]['cpu_s']:.2f} s"
                    for v in runs), flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait(30)
    ratios = {key: statistics.median(t[key] / p[key] for p, t in zip(runs["plain"],
                                                                       runs["traced"]))
              for key in runs["plain"][0]}
    figures = {"tasks": args.tasks, "repeat": args.repeat, "load": os.getloadavg(),
               "remote": args.remote,
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
