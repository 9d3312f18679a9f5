"""The same Process under fork, spawn and forkserver: what is pickled to start it?

    tracedmp run --trace trace.jsonl examples/start_methods.py
    tracedmp report trace.jsonl

Under fork the child inherits the target and its arguments: nothing is pickled (the trace says
so with "pickled": false).  Under spawn and forkserver both are pickled and sent to a fresh
interpreter, which imports this module to find the target by name.
"""

import multiprocessing


def greet(name, numbers):
    print(f"hello {name}, {sum(numbers)}")


def main() -> None:
    for method in ("fork", "spawn", "forkserver"):
        ctx = multiprocessing.get_context(method)
        p = ctx.Process(target=greet, args=(method, list(range(1000))), name=f"greeter-{method}")
        p.start()
        p.join()


if __name__ == "__main__":
    main()
