"""The same large argument sent again with every task: Pool.map's default chunks, and an executor.

    tracedmp run --trace trace.jsonl examples/same_argument.py
    tracedmp report trace.jsonl

``pool.starmap(match, [(reference, i) ...])`` puts the 2 MB reference into every item; with
``Pool.map``'s default chunksize (four chunks per worker) each of the 8 tasks carries it once
(pickle's memo spares the repeats inside one task, not across tasks).  The executor does the
same with every chunk of ``executor.map``.  The report names ``items[0][0]`` and the fix: send
the reference once, with a Pool initializer.
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor


def match(reference: bytes, i: int) -> int:
    return reference[i % len(reference)] + i


def main(method: str = "spawn") -> None:
    reference = bytes(range(256)) * 8192  # 2 MB
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.starmap(match, [(reference, i) for i in range(64)])
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        more = list(executor.map(match, [reference] * 8, range(8)))
    print(f"{len(results)} + {len(more)} matches, total {sum(results) + sum(more)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
