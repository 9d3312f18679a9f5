"""How fast, and in how much memory, `tracedmp report` reads a large trace.

    python benchmarks/report_scale.py [--records 1000000] [--dir DIR]

Builds a trace of realistic records (taken from a real traced Pool run, then repeated with
varied processes, sizes and callables), then times `tracedmp report` and `tracedmp report --json`
on it in a fresh process and reads that process's peak memory; then `tracedmp report --html`,
and the size of the page it wrote (goal: under 1 MB, whatever the records).  Goals: 1,000,000
records in under 15 s and 300 MB; 10,000,000 (about 3 GB of trace: give --dir a disk with
room) in under 60 s and 500 MB -- the report streams, its memory bounded by the number of
groups.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def real_records(tmp: str) -> list:
    trace = os.path.join(tmp, "seed.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = trace
    program = os.path.join(tmp, "seed_program.py")
    with open(program, "w") as f:
        f.write("import tracedmp as mp\n"
                "def f(x):\n    return [x] * (x % 50)\n"
                "def g(xs):\n    return len(xs)\n"
                "if __name__ == '__main__':\n"
                "    with mp.get_context('spawn').Pool(2) as p:\n"
                "        p.map(f, range(300), chunksize=1)\n"
                "        p.map(g, [list(range(5000))] * 20)\n")
    subprocess.run([sys.executable, program], env=env, check=True, cwd=tmp, timeout=300)
    with open(trace) as f:
        return [json.loads(line) for line in f if line.strip()]  # blank: unused reserved space


def build(path: str, seed: list, n: int) -> None:
    rng = random.Random(42)
    pickles = [r for r in seed if r["event"] == "pickle"]
    others = [r for r in seed if r["event"] != "pickle"]
    callables = [[{"name": f"app.module{i}.func{j}", "kind": rng.choice(["reference", "value"])}]
                 for i in range(30) for j in range(10)]
    try:
        from orjson import dumps as fast
    except ImportError:
        fast = None
    with open(path, "wb") as f:
        for r in others:
            f.write(json.dumps(r).encode() + b"\n")
        lines = []
        for i in range(n - len(others)):
            r = dict(rng.choice(pickles))
            r["pid"] = 1000 + i % 64
            r["seq"] = i // 64
            r["size"] = int(rng.lognormvariate(6, 2))
            r["ts"] = r["ts"] + i * 1e-5
            if i % 7 == 0:
                r["callables"] = r.get("callables", []) + rng.choice(callables)
            lines.append(fast(r) if fast else json.dumps(r, separators=(",", ":")).encode())
            if len(lines) >= 10_000:
                f.write(b"\n".join(lines) + b"\n")
                lines.clear()
        if lines:
            f.write(b"\n".join(lines) + b"\n")


def measure(args: list) -> tuple:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tracedmp", *args], check=True,
                   stdout=subprocess.DEVNULL, timeout=3600)
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    # KiB -> MiB (max over children so far)
    return elapsed, max(usage.ru_maxrss, before) / 1024, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where to build the trace (default: the temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "big.jsonl")
        build(path, real_records(tmp), args.records)
        size_mb = os.path.getsize(path) / 1e6
        text_s, text_mb, text_cpu = measure(["report", path])
        json_s, json_mb, json_cpu = measure(["report", "--json", path])
        page = os.path.join(tmp, "big.html")
        html_s, html_mb, html_cpu = measure(["report", path, "--html", page])
        html_kb = os.path.getsize(page) / 1e3
    goal = "60 s and 500 MB" if args.records > 1_000_000 else "15 s and 300 MB"
    print(f"{args.records} records ({size_mb:.0f} MB): report {text_s:.1f} s "
          f"({text_cpu:.1f} s CPU), --json {json_s:.1f} s ({json_cpu:.1f} s CPU), --html "
          f"{html_s:.1f} s ({html_cpu:.1f} s CPU; a {html_kb:.0f} KB page); "
          f"peak memory {max(text_mb, json_mb, html_mb):.0f} MiB "
          f"(goal: under {goal}); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
