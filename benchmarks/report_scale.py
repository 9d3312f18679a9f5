"""How fast, and in how much memory, `tracedmp report` reads a large trace.

    python benchmarks/report_scale.py [--records 1000000]

Builds a trace of realistic records (taken from a real traced Pool run, then repeated with
varied processes, sizes and callables), then times `tracedmp report` and `tracedmp report --json`
on it in a fresh process and reads that process's peak memory.  Goal: 1,000,000 records in under
15 s and 300 MB.
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
        return [json.loads(line) for line in f]


def build(path: str, seed: list, n: int) -> None:
    rng = random.Random(42)
    pickles = [r for r in seed if r["event"] == "pickle"]
    others = [r for r in seed if r["event"] != "pickle"]
    callables = [[{"name": f"app.module{i}.func{j}", "kind": rng.choice(["reference", "value"])}]
                 for i in range(30) for j in range(10)]
    with open(path, "w") as f:
        for r in others:
            f.write(json.dumps(r) + "\n")
        for i in range(n - len(others)):
            r = dict(rng.choice(pickles))
            r["pid"] = 1000 + i % 64
            r["seq"] = i // 64
            r["size"] = int(rng.lognormvariate(6, 2))
            r["ts"] = r["ts"] + i * 1e-5
            if i % 7 == 0:
                r["callables"] = r.get("callables", []) + rng.choice(callables)
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def measure(args: list) -> tuple:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tracedmp", *args], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) / 1024  # KiB -> MiB (max over children so far)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.jsonl")
        build(path, real_records(tmp), args.records)
        size_mb = os.path.getsize(path) / 1e6
        text_s, text_mb = measure(["report", path])
        json_s, json_mb = measure(["report", "--json", path])
    print(f"{args.records} records ({size_mb:.0f} MB): report {text_s:.1f} s, "
          f"--json {json_s:.1f} s; peak memory {max(text_mb, json_mb):.0f} MiB "
          f"(goal: under 15 s and 300 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
