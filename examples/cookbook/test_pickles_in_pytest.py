"""Pin what a test pickles with tracedmp's pytest plugin (run: pytest test_pickles_in_pytest.py).

The plugin comes with tracedmp; nothing to import.  The code under test is plain multiprocessing.
"""

import multiprocessing

import pytest


def score(row):
    return sum(row)


@pytest.mark.pickle_budget(per_message="1 KB", by_value=False, channel="pool.task")
def test_tasks_stay_small():
    rows = [[i, i + 1, i + 2] for i in range(100)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(score, rows, chunksize=10)[:3] == [3, 6, 9]


def test_what_the_pool_pickled(tracedmp_capture):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(abs, range(100))
    tasks = tracedmp_capture.pickles(channel="pool.task")
    assert tasks and max(r.size for r in tasks) < 1_000
    assert tracedmp_capture.errors == []
