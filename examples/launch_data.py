"""A dataset pickled once per worker at every start (spawn and forkserver).

    tracedmp run --trace trace.jsonl examples/launch_data.py
    tracedmp report trace.jsonl

Each worker is a ``Process`` whose target is a bound method of a loader holding the dataset
(as a PyTorch DataLoader's workers hold theirs): under spawn and forkserver the target travels
in the launch data, so the 3 MB dataset is pickled for each of the 4 workers.  The report names
``target.__self__.dataset`` and suggests loading the data in the worker.
"""

import multiprocessing
import sys


class Loader:
    def __init__(self) -> None:
        self.dataset = [bytes(1000) for _ in range(3000)]  # 3 MB of samples

    def work(self, index: int, results) -> None:
        results.put((index, len(self.dataset)))


def main(method: str = "spawn") -> None:
    ctx = multiprocessing.get_context(method)
    loader = Loader()
    results = ctx.SimpleQueue()
    workers = [ctx.Process(target=loader.work, args=(i, results)) for i in range(4)]
    for w in workers:
        w.start()
    got = sorted(results.get() for _ in workers)
    for w in workers:
        w.join()
    print(f"{len(got)} workers, {sum(n for _, n in got)} samples seen")


if __name__ == "__main__":
    main(*sys.argv[1:])
