"""Code that works under fork and breaks under spawn or forkserver (Python 3.14's default).

    tracedmp run --check-spawn --trace trace.jsonl examples/fork_only.py
    tracedmp report trace.jsonl

Under fork the child inherits the logger's lock and the lambda; under spawn both would have to be
pickled, and neither can be.  --check-spawn tries, without changing how the program runs, and
the report says what would fail, where, and how to fix it.
"""

import logging
import multiprocessing
import threading


class Worker:
    def __init__(self):
        self.lock = threading.Lock()
        self.log = logging.getLogger("worker")

    def run(self, n):
        with self.lock:
            self.log.info("working on %s", n)


def main() -> None:
    ctx = multiprocessing.get_context("fork")
    worker = Worker()
    for target, args in ((worker.run, (1,)), (lambda: None, ()), (print, ("fine",))):
        p = ctx.Process(target=target, args=args)
        p.start()
        p.join()


if __name__ == "__main__":
    main()
