"""Pickle budgets and the spawn gate on plain multiprocessing code (docs/testing-your-pickles.md).

    pytest examples/pytest_budgets --tracedmp-check-spawn --tracedmp=traces

Two tests here fail on purpose: a budget broken by a bound method that carries its instance,
and a fork start that would not start under spawn or forkserver.
"""

import multiprocessing
import threading

import pytest


class Scorer:
    def __init__(self):
        self.table = list(range(40_000))  # ~120 KB pickled, with every task

    def score(self, x):
        return self.table[x]


def score(x):
    return x * 2


@pytest.mark.pickle_budget(per_message="10 KB", total="1 MB", by_value=False)
def test_module_level_function_stays_within_budget():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(score, range(100)) == [x * 2 for x in range(100)]


@pytest.mark.pickle_budget(per_message="10 KB", total="1 MB", by_value=False)
def test_bound_method_carries_its_instance():
    scorer = Scorer()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(scorer.score, range(100)) == list(range(100))


def log_progress(lock, n):
    with lock:
        pass


def test_fork_only_process():
    # A threading.Lock is inherited under fork, but cannot be pickled for spawn/forkserver.
    p = multiprocessing.get_context("fork").Process(target=log_progress,
                                                    args=(threading.Lock(), 3))
    p.start()
    p.join()
    assert p.exitcode == 0
