"""The statistics the benchmark suite reports (benchmarks/overhead.py)."""

import importlib.util
import os
import random

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def overhead():
    path = os.path.join(HERE, os.pardir, "benchmarks", "overhead.py")
    spec = importlib.util.spec_from_file_location("overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_median_interval_picks_the_ranks_that_reach_95_percent(overhead):
    assert overhead.median_interval([1.0] * 5) is None  # (min, max) holds it 94 % of the time
    assert overhead.median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    # n = 61: ranks 23 and 39 (1-based) are the tightest pair at 95 %
    assert overhead.median_interval(list(range(61))) == (22, 38)


def test_median_interval_holds_the_median_95_percent_of_the_time(overhead):
    rng = random.Random(7)
    for n in (6, 11, 31):
        held = 0
        trials = 2000
        for _ in range(trials):
            low, high = overhead.median_interval([rng.lognormvariate(0.1, 0.2)
                                                  for _ in range(n)])
            held += low <= 1.1051709 <= high  # e^0.1, the distribution's median
        assert held / trials >= 0.94, (n, held / trials)
