"""Machine instructions per traced pickle, counted by callgrind: a measure the load does not move.

    python benchmarks/instructions.py [--modes plain,full,summary] [--kinds task,result]
                                      [--pickles 5000]

For each mode (plain multiprocessing, full tracing, summary mode) and kind of message (a Pool
task's shape, ``(0, i, abs, (i,), {})``, or a result's, ``(0, i, (True, i))``), a fresh
interpreter under ``valgrind --tool=callgrind`` sends the message through a ``Pipe`` and receives
it, from one call site (one thread pickles from one site, as a Pool's task handler and its
workers do).  It runs twice, with 1,000 and 1,000 + ``--pickles`` messages; the difference over
``--pickles`` is the instructions per message, start-up excluded.  ``PYTHONHASHSEED=0``.
Needs valgrind; takes minutes (callgrind runs Python ~50 times slower).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

PROGRAM = """
import sys
mode, kind, n, trace = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode != "plain":
    import tracedmp
    tracedmp.configure(trace=trace, mode=mode, summary_interval=3600)
from multiprocessing.connection import Pipe
a, b = Pipe()
if kind == "task":
    for i in range(n):
        a.send((0, i, abs, (i,), {}))
        b.recv()
else:
    for i in range(n):
        a.send((0, i, (True, i)))
        b.recv()
"""


def count(mode: str, kind: str, n: int, tmp: str) -> int:
    script = os.path.join(tmp, "send.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    trace = os.path.join(tmp, f"{mode}-{kind}-{n}.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["PYTHONHASHSEED"] = "0"
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, script, mode, kind, str(n), trace],
                         env=env, capture_output=True, text=True, timeout=3600, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="plain,full,summary")
    parser.add_argument("--kinds", default="task,result")
    parser.add_argument("--pickles", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'kind':8} {'mode':8} {'instructions a message':>24}")
        for kind in args.kinds.split(","):
            for mode in args.modes.split(","):
                low = count(mode, kind, 1000, tmp)
                high = count(mode, kind, 1000 + args.pickles, tmp)
                print(f"{kind:8} {mode:8} {(high - low) // args.pickles:>24,}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
