"""concurrent.futures.ProcessPoolExecutor with a traced context.

    python examples/executor.py          # tracedmp's context: traced without tracedmp run
    tracedmp report tracedmp-*.jsonl

Work items travel on the executor's call queue (channel executor.call), results come back on
its result queue (executor.result).
"""

import concurrent.futures
import math

import tracedmp


def digits_of_factorial(n):
    return len(str(math.factorial(n)))


def main() -> None:
    ctx = tracedmp.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as executor:
        print(list(executor.map(digits_of_factorial, [10, 100, 1000])))


if __name__ == "__main__":
    main()
