"""A lambda and a closure sent to a Pool: impossible with pickle, by value with cloudpickle.

    tracedmp run --trace trace.jsonl examples/lambda_cloudpickle.py
    tracedmp run --pickler cloudpickle --trace trace-cloud.jsonl examples/lambda_cloudpickle.py
    tracedmp report trace-cloud.jsonl

With the stdlib pickler both maps fail ("Can't pickle local object"): the trace records each
pickle_error with the path to what failed and a fix.  With cloudpickle the lambda's code travels
with every task, and the closure carries the 100 KB it captured each time: the report shows what
that costs.
"""

import multiprocessing


def make_scaler(table):
    def scale(x):
        return x * len(table)

    return scale


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        for name, fn in (("lambda", lambda x: x + 1), ("closure", make_scaler(bytes(100_000)))):
            try:
                print(name, sum(pool.map(fn, range(20), chunksize=1)))
            except Exception as exc:  # the stdlib pickler sends functions by name only
                print(f"{name} failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
