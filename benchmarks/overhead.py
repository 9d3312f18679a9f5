"""Overhead of tracing against plain multiprocessing, measured side by side in one run.

    python benchmarks/overhead.py [--repeat 5] [--only tiny_tasks,big_args]

Every workload runs in a fresh interpreter per variant (plain, traced, tracing off); variants
are interleaved and repeated, and the table shows medians and ratios to plain.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import WORKLOADS  # noqa: E402

# Figures to reach, from the core issue: traced/plain and off/plain.
GOALS = {
    "tiny_tasks": 1.15,
    "big_args": 1.03,
    "start_spawn": 1.05,
}
OFF_GOAL = 1.01


def run_once(mode: str, name: str, trace_dir: str) -> float:
    env = dict(os.environ)
    env.pop("TRACEDMP_AUTOSTART", None)
    if mode in ("traced", "cloudpickle"):
        env["TRACEDMP_TRACE"] = os.path.join(trace_dir, f"{name}-{time.monotonic_ns()}.jsonl")
        env["TRACEDMP_PICKLER"] = "pickle" if mode == "traced" else "cloudpickle"
    elif mode == "off":
        env["TRACEDMP_TRACE"] = "off"
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "workloads.py"), mode, name],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--modes", default="plain,traced,off")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    names = [n for n in (args.only.split(",") if args.only else WORKLOADS) if n]
    modes = args.modes.split(",")
    results = {n: {m: [] for m in modes} for n in names}
    with tempfile.TemporaryDirectory() as trace_dir:
        for rep in range(args.repeat):
            for name in names:
                order = modes if rep % 2 == 0 else modes[::-1]
                for mode in order:
                    results[name][mode].append(run_once(mode, name, trace_dir))
                    for f in os.listdir(trace_dir):
                        os.unlink(os.path.join(trace_dir, f))
            print(f"  round {rep + 1}/{args.repeat} done", file=sys.stderr)
    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; "
          f"medians of {args.repeat}")
    cloud_vs_traced = "cloudpickle" in modes and "traced" in modes
    header = f"{'workload':28} {'plain s':>9} " + " ".join(f"{m + '/plain':>13}" for m in modes[1:])
    if cloud_vs_traced:
        header += f" {'cloud/traced':>13}"
    print(header + "   goal")
    table = {}
    for name in names:
        med = {m: statistics.median(results[name][m]) for m in modes}
        # Paired: each round's variant over that round's plain run, then the median of those,
        # so that a slow stretch of the machine hits both sides of a ratio.
        ratios = {
            m: statistics.median(t / p for t, p in zip(results[name][m], results[name]["plain"]))
            for m in modes[1:]
        }
        extra = ""
        if cloud_vs_traced:
            ratios["cloudpickle/traced"] = statistics.median(
                c / t for c, t in zip(results[name]["cloudpickle"], results[name]["traced"]))
            extra = f" {ratios['cloudpickle/traced']:13.3f}"
        table[name] = {"median_s": med, "ratio": ratios, "runs": results[name]}
        goal = GOALS.get(name)
        goal_s = f"traced<={goal}" if goal else ""
        print(f"{name:28} {med['plain']:9.3f} "
              + " ".join(f"{ratios[m]:13.3f}" for m in modes[1:]) + extra + f"   {goal_s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d"), "results": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
