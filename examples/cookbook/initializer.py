"""Send shared data once per worker with an initializer, not once per task.

    tracedmp run --trace trace.jsonl examples/cookbook/initializer.py
    tracedmp report trace.jsonl     # pool.task messages are now a few dozen bytes each
"""

import multiprocessing

_table = None


def init(table):
    global _table
    _table = table


def score(i):
    return _table[i % len(_table)] * 2


if __name__ == "__main__":
    table = list(range(25_000))
    with multiprocessing.get_context("spawn").Pool(2, initializer=init, initargs=(table,)) as pool:
        print(sum(pool.map(score, range(40), chunksize=2)))
