"""Huge objects: no extra copy for tracing.  Peak memory of the sending process, plain vs traced.

    python stress/huge.py [--gib 1.0]

Sends one bytes object of --gib GiB through a Pipe to a child, once with plain multiprocessing
and once traced, each in a fresh interpreter, and compares the sender's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SENDER = r"""
import json, resource, sys
mode, size = sys.argv[1], int(sys.argv[2])
if mode == "plain":
    import multiprocessing as mp
else:
    import tracedmp as mp

def receive(conn):
    data = conn.recv()
    conn.send(len(data))

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=receive, args=(b,))
    p.start()
    blob = b"\x01" * size
    a.send(blob)
    got = a.recv()
    p.join()
    print(json.dumps({"received": got, "peak_mib": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "sender.py")
        with open(script, "w") as f:
            f.write(SENDER)
        for mode in ("plain", "traced"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
            env["TRACEDMP_TRACE"] = os.path.join(tmp, "t.jsonl")
            out = subprocess.run([sys.executable, script, mode, str(size)], env=env,
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["received"] == size, result
            peaks[mode] = result["peak_mib"]
        with open(os.path.join(tmp, "t.jsonl")) as f:
            sizes = [json.loads(x).get("size") for x in f if '"channel":"pipe"' in x]
    ratio = peaks["traced"] / peaks["plain"]
    print(f"{args.gib} GiB bytes through a Pipe: sender peak {peaks['plain']:.0f} MiB plain, "
          f"{peaks['traced']:.0f} MiB traced (x{ratio:.3f}); traced pickle sizes {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
