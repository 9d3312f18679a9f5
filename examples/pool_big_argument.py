"""A Pool whose every task carries the same large lookup table.

    tracedmp run --trace trace.jsonl examples/pool_big_argument.py
    tracedmp report trace.jsonl

The report shows each task carrying ~200 KB although only the item changes, the function going
by reference (module + name), and suggests an initializer instead.
"""

import multiprocessing
import sys

TABLE_SIZE = 25_000


def score(args):
    table, item = args
    return table[item % len(table)] * 2


def main(method: str = "spawn") -> None:
    table = list(range(TABLE_SIZE))
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(score, [(table, i) for i in range(40)], chunksize=2)
    print(f"{len(results)} results, total {sum(results)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
