"""A Pool that calls a bound method: every task carries the method's instance.

    tracedmp run --trace trace.jsonl examples/bound_method.py
    tracedmp report trace.jsonl

``pool.map(model.predict, ...)`` pickles ``model.predict`` with every chunk, and a bound method
travels as its instance plus the method's name: the 4 MB of weights go along each time.  The
report names ``func.__self__`` (the instance) and ``func.__self__.weights`` as what made each
task big, and suggests a module-level function with the model sent once.
"""

import multiprocessing
import sys


class Model:
    def __init__(self) -> None:
        self.weights = bytes(4_000_000)  # stands in for a real model's parameters
        self.bias = 1

    def predict(self, x: int) -> int:
        return x + self.bias


def main(method: str = "spawn") -> None:
    model = Model()
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(model.predict, range(64))
    print(f"{len(results)} predictions, total {sum(results)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
