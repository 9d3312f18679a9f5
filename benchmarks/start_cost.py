"""What ``tracedmp run`` adds to a program's start, measured as whole processes.

    python benchmarks/start_cost.py [--repeat 15] [--only hello,pool_fork] [--json out.json]
                                    [--command PATH]

Each program runs as ``python PROG`` (plain) and as ``tracedmp run PROG`` (traced), and the
commands ``tracedmp --version`` and ``tracedmp report`` run against ``python -c pass``.  Every
run is a fresh process tree; variants alternate within each round (the order flips every round)
so that a slow stretch of this shared machine weighs on both sides of a pair.  Per pair: wall
time of the whole command, and CPU time (user + system) of the process tree, from
RUSAGE_CHILDREN (every descendant reaped by its parent; forkserver's server is not reaped by
the program, so its own CPU is not counted on either side).  Figures are medians of the
per-round differences (traced - plain, in ms) and ratios.  The load average is printed: on a
shared 2-core machine the wall differences grow with it, the CPU differences much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

# The programs, written to a scratch directory; {method} is the start method.
HELLO = 'print("hello")\n'
POOL = """\
import multiprocessing as mp

def square(x):
    return x * x

if __name__ == "__main__":
    mp.set_start_method("{method}")
    with mp.Pool(2) as pool:
        assert sum(pool.map(square, range(100))) == 328350
"""
PROGRAMS = {"hello": HELLO, "pool_fork": POOL.format(method="fork"),
            "pool_spawn": POOL.format(method="spawn"),
            "pool_forkserver": POOL.format(method="forkserver")}
COMMANDS = ("version", "report")  # tracedmp's own commands, against `python -c pass`
GOAL_MS = 20.0  # issue 19: `tracedmp run` adds at most ~20 ms to a program's start


def tracedmp_command() -> List[str]:
    """The ``tracedmp`` console script beside this Python, as a user runs it."""
    script = os.path.join(os.path.dirname(sys.executable), "tracedmp")
    if os.path.exists(script):
        return [script]
    found = shutil.which("tracedmp")
    return [found] if found else [sys.executable, "-m", "tracedmp"]


def timed(argv: List[str], env: Dict[str, str], cwd: str) -> Dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated names: "
                        + ",".join([*PROGRAMS, *COMMANDS]))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--command", metavar="PATH",
                        help="the tracedmp command to measure (default: the one beside this "
                        "Python); with PYTHONPATH, an older checkout's, through the wrapper it "
                        "was installed with")
    args = parser.parse_args()
    names = [n for n in (args.only.split(",") if args.only else [*PROGRAMS, *COMMANDS]) if n]
    for n in names:
        if n not in PROGRAMS and n not in COMMANDS:
            parser.error(f"unknown name {n!r}; choose from {', '.join([*PROGRAMS, *COMMANDS])}")
    tracedmp = [os.path.abspath(args.command)] if args.command else tracedmp_command()
    # PYTHONDONTWRITEBYTECODE would compile tracedmp's modules at every start (~10 ms): an
    # installed tracedmp has its .pyc files, as the stdlib does.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACEDMP_") and k != "PYTHONDONTWRITEBYTECODE"}
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {
        n: {"plain": [], "traced": []} for n in names}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        for name, source in PROGRAMS.items():
            with open(os.path.join(work, f"{name}.py"), "w") as f:
                f.write(source)
        sample = os.path.join(work, "sample.jsonl")
        subprocess.run([*tracedmp, "run", "--trace", sample, "pool_fork.py"], cwd=work,
                       env=env, check=True, timeout=120)
        trace = os.path.join(work, "t.jsonl")
        variants = {}
        for name in names:
            if name in PROGRAMS:
                variants[name] = {
                    "plain": [sys.executable, f"{name}.py"],
                    "traced": [*tracedmp, "run", "--trace", trace, f"{name}.py"]}
            else:
                variants[name] = {
                    "plain": [sys.executable, "-c", "pass"],
                    "traced": [*tracedmp, "--version"] if name == "version"
                    else [*tracedmp, "report", sample]}
        for name in names:  # one unmeasured run of each: the page cache, .pyc files
            for argv in variants[name].values():
                timed(argv, env, work)
        for rep in range(args.repeat):
            for name in names:
                order = ("plain", "traced") if rep % 2 == 0 else ("traced", "plain")
                for mode in order:
                    results[name][mode].append(timed(variants[name][mode], env, work))
                    if os.path.exists(trace):
                        os.unlink(trace)
            print(f"  round {rep + 1}/{args.repeat} done", file=sys.stderr)
    load_after = os.getloadavg()

    print(f"# {platform.python_implementation()} {platform.python_version()} on "
          f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"paired medians of {args.repeat} rounds")
    print("# programs: `tracedmp run PROG` vs `python PROG`; commands: vs `python -c pass`")
    print(f"{'name':16} {'plain ms':>9} {'traced ms':>10} {'+wall ms':>9} {'wall x':>7}"
          f" {'plain cpu':>10} {'+cpu ms':>8} {'cpu x':>6}")
    table = {}
    for name in names:
        plain, traced = results[name]["plain"], results[name]["traced"]
        row = {}
        for key in ("wall", "cpu"):
            row[f"plain_{key}_ms"] = statistics.median(r[key] for r in plain) * 1e3
            row[f"traced_{key}_ms"] = statistics.median(r[key] for r in traced) * 1e3
            row[f"added_{key}_ms"] = statistics.median(
                (t[key] - p[key]) * 1e3 for p, t in zip(plain, traced))
            row[f"{key}_ratio"] = statistics.median(
                t[key] / p[key] for p, t in zip(plain, traced) if p[key] > 0)
        table[name] = {"summary": row, "runs": results[name]}
        goal = f"   goal +wall <= {GOAL_MS:.0f} ms" if name in PROGRAMS else ""
        print(f"{name:16} {row['plain_wall_ms']:9.1f} {row['traced_wall_ms']:10.1f} "
              f"{row['added_wall_ms']:+9.1f} {row['wall_ratio']:7.2f} "
              f"{row['plain_cpu_ms']:10.1f} {row['added_cpu_ms']:+8.1f} "
              f"{row['cpu_ratio']:6.2f}{goal}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M"),
                       "load": [load_before, load_after], "results": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
