"""Overhead of tracing against plain multiprocessing, measured side by side in one run.

    python benchmarks/overhead.py [--repeat 7] [--only tiny_tasks,big_args] [--json out.json]

Every workload runs in a fresh interpreter per variant: plain multiprocessing, traced, tracing
off, and traced with cloudpickle.  Variants are interleaved and repeated; each ratio is the median
of the per-round ratios to that round's plain run, so that a slow stretch of this noisy machine
weighs on both sides.  Two ratios per variant: wall time of the timed section, and CPU time of the
whole process tree (parent plus reaped children), which other load on the machine disturbs less.
With 6 rounds or more, each wall ratio also gets its 95 % confidence interval: on a shared
2-core machine one run of a workload can differ from the next by half.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import PEER_WORKLOADS, WORKLOADS  # noqa: E402

PEERS = ("multiprocess", "loky")

# Figures to reach (core and by-value issues): traced/plain, off/plain, cloudpickle/traced.
GOALS = {"tiny_tasks": 1.15, "big_args": 1.03, "start_spawn": 1.05, "huge_args": 1.05,
         # joblib (issue 14): CPU of the process tree
         "joblib_tiny_tasks": 1.10, "joblib_memmap": 1.03}
OFF_GOAL = 1.01
CLOUD_GOAL = 1.15


def run_once(mode: str, name: str, trace_dir: str) -> Dict[str, float]:
    env = dict(os.environ)
    env.pop("TRACEDMP_AUTOSTART", None)
    env.pop("TRACEDMP_PICKLER", None)
    env.pop("TRACEDMP_PARTS_THRESHOLD", None)
    if mode in ("traced", "cloudpickle", "noparts"):
        env["TRACEDMP_TRACE"] = os.path.join(trace_dir, f"{name}-{time.monotonic_ns()}.jsonl")
        if mode == "cloudpickle":
            env["TRACEDMP_PICKLER"] = "cloudpickle"
        if mode == "noparts":  # traced, large pickles not naming their parts
            env["TRACEDMP_PARTS_THRESHOLD"] = "off"
    elif mode == "off":
        env["TRACEDMP_TRACE"] = "off"
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "workloads.py"), mode, name],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratios(runs: Dict[str, List[Dict[str, float]]], mode: str, base: str, key: str) -> List[float]:
    return [a[key] / b[key] for a, b in zip(runs[mode], runs[base])]


def median_interval(values: List[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """The narrowest pair of order statistics that holds the median with ``confidence``.

    Distribution-free: the number B of values below the true median is Binomial(n, 1/2), and
    the sorted (x[j], x[n-1-j]) holds it unless B <= j or B >= n - j: probability
    1 - 2 P(B <= j).  None under 6 values, where not even (min, max) reaches 95 %."""
    xs = sorted(values)
    n = len(xs)
    best = None
    at_most_j = 0.0  # P(B <= j)
    for j in range(n // 2):
        at_most_j += math.comb(n, j) / 2 ** n
        if 1 - 2 * at_most_j < confidence:
            break
        best = (xs[j], xs[n - 1 - j])
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--modes", default="plain,traced,off,cloudpickle,peers",
                        help="variants; 'peers' adds multiprocess and loky where installed; "
                        "'noparts' is traced with parts_threshold off")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    names = [n for n in (args.only.split(",") if args.only else WORKLOADS) if n]
    modes = []
    for m in args.modes.split(","):
        if m == "peers":
            import importlib.util

            modes += [p for p in PEERS if importlib.util.find_spec(p) is not None]
        else:
            modes.append(m)
    assert modes[0] == "plain", "the first mode is the baseline: plain"
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {
        n: {m: [] for m in modes} for n in names}
    with tempfile.TemporaryDirectory() as trace_dir:
        for rep in range(args.repeat):
            for name in names:
                order = modes if rep % 2 == 0 else modes[::-1]
                for mode in order:
                    if name not in PEER_WORKLOADS.get(mode, {name}):
                        continue
                    results[name][mode].append(run_once(mode, name, trace_dir))
                    for f in os.listdir(trace_dir):
                        os.unlink(os.path.join(trace_dir, f))
            print(f"  round {rep + 1}/{args.repeat} done", file=sys.stderr)

    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
          f"paired medians of {args.repeat} rounds; wall [95% interval] / CPU ratios")
    columns = [(m, "plain") for m in modes[1:]]
    if "cloudpickle" in modes and "traced" in modes:
        columns.append(("cloudpickle", "traced"))
    if "noparts" in modes and "traced" in modes:
        columns.append(("traced", "noparts"))  # what naming the parts costs
    print(f"{'workload':26} {'plain s':>8}  " + "  ".join(f"{a + '/' + b:>31}" for a, b in columns))
    table = {}
    for name in names:
        runs = results[name]
        row = {"plain_s": statistics.median(r["seconds"] for r in runs["plain"])}
        cells = []
        for a, b in columns:
            if not runs[a]:
                cells.append(f"{'n/a':>31}")
                continue
            walls = ratios(runs, a, b, "seconds")
            wall, cpu = statistics.median(walls), statistics.median(ratios(runs, a, b, "cpu"))
            interval = median_interval(walls)
            row[f"{a}/{b}"] = {"wall": wall, "cpu": cpu, "wall_interval": interval}
            shown = f"[{interval[0]:.2f}-{interval[1]:.2f}]" if interval else ""
            cells.append(f"{wall:7.3f} {shown:>11} /{cpu:7.3f}")
        table[name] = {"summary": row, "runs": runs}
        goal = GOALS.get(name)
        print(f"{name:26} {row['plain_s']:8.3f}  " + "  ".join(cells)
              + (f"   goal traced<={goal}" if goal else ""))
    print(f"goals: off/plain <= {OFF_GOAL}; cloudpickle/traced <= {CLOUD_GOAL} on tiny_tasks")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d"), "results": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
