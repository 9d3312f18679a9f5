"""What naming a large pickle's parts costs, per pickle, against pickling it (traced, parts off).

    python benchmarks/parts_cost.py [--rounds 31]

Pickles the messages of the Pool workloads overhead.py times, the way the Pool's task handler
does (``TracingPickler.dumps`` with tracing on, records to a temporary file), alternately with
``parts_threshold`` at its default and off, and prints the median time of each and their
ratio.  In one process, so other load on the machine weighs on both sides alike; the ratio
bounds what attribution adds to a workload whose time is all pickling.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.pool import mapstar

import tracedmp
from tracedmp._runtime import parts
from tracedmp._runtime.picklers import TracingPickler


def size_of(b):
    return len(b)


def messages():
    payload = os.urandom(10_000_000)
    chunk = tuple(os.urandom(100_000) for _ in range(250))  # big_args: 2,000 items, 8 chunks
    many = [{"id": i, "name": str(i)} for i in range(100_000)]  # ~2 MB of small objects
    return {
        "huge_args (a 10 MB task)": (0, 0, mapstar, ((size_of, (payload,)),), {}),
        "big_args (a chunk of 250 x 100 KB)": (0, 0, mapstar, ((size_of, chunk),), {}),
        "100,000 small dicts (2 MB)": (0, 0, mapstar, ((size_of, (many,)),), {}),
    }


def send(obj):
    return TracingPickler.dumps(obj)  # a sender's frame, as Connection.send would be


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'message':38} {'parts off':>10} {'parts on':>10} {'on/off':>7}  walked")
        for name, msg in messages().items():
            times = {"off": [], "on": []}
            walked = 0
            for i in range(args.rounds):
                for mode in (("off", "on") if i % 2 else ("on", "off")):
                    tracedmp.configure(trace=os.path.join(tmp, f"{mode}.jsonl"),
                                       parts_threshold=False if mode == "off" else None)
                    parts.forget_budgets()  # every round pays like a site's first pickles
                    start = time.perf_counter_ns()
                    send(msg)
                    times[mode].append(time.perf_counter_ns() - start)
                    tracedmp.uninstall()
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            with open(os.path.join(tmp, "on.jsonl")) as f:
                walked = sum('"parts":' in line for line in f)
            print(f"{name:38} {off / 1e6:8.2f}ms {on / 1e6:8.2f}ms {on / off:7.3f}  "
                  f"{walked}/{args.rounds}")
    print(f"# CPython {sys.version.split()[0]}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
