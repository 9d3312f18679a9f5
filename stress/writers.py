"""Many processes writing one trace at once: every record must come back whole, once.

    python stress/writers.py [--processes 16] [--records 100000]

Each process sends --records messages over a pipe to itself (one traced pickle each); the trace
is then read back and checked: every line valid JSON (none torn), every process's sequence
numbers 0..N-1 each exactly once (none lost, none duplicated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict


def writer(n: int) -> None:
    import tracedmp

    a, b = tracedmp.Pipe()
    payload = "x" * (os.getpid() % 500)  # records of varied length
    for i in range(n):
        a.send((i, payload))
        b.recv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.jsonl")
        os.environ["TRACEDMP_TRACE"] = path
        import tracedmp

        ctx = tracedmp.get_context("fork")
        start = time.perf_counter()
        procs = [ctx.Process(target=writer, args=(args.records,)) for _ in range(args.processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - start
        tracedmp.uninstall()
        seqs = defaultdict(list)
        torn = lines = 0
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():  # the main process's unused reserved space
                    continue
                lines += 1
                try:
                    r = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if r["event"] == "pickle" and r["channel"] == "pipe":
                    seqs[r["pid"]].append(r["seq"])
        pids = {p.pid for p in procs}
        lost = dup = 0
        for pid in pids:
            got = seqs.get(pid, [])
            lost += args.records - len(set(got))
            dup += len(got) - len(set(got))
        records = sum(len(v) for v in seqs.values())
        print(f"{args.processes} processes x {args.records} records in {elapsed:.1f} s: "
              f"{lines} lines read, {records} pipe records; torn {torn}, lost {lost}, "
              f"duplicated {dup}; exit codes {sorted({p.exitcode for p in procs})}")
        return 0 if torn == lost == dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
