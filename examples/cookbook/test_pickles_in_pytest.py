"""Trace one test and assert on what it pickled (run with: pytest test_pickles_in_pytest.py)."""

import pytest

import tracedmp


@pytest.fixture
def pickles(tmp_path):
    path = tmp_path / "trace.jsonl"
    tracedmp.configure(trace=path)
    yield lambda: [r for r in tracedmp.read_trace(path) if r.event == "pickle"]
    tracedmp.uninstall()
    tracedmp.reset_config()


def test_tasks_stay_small(pickles):
    with tracedmp.get_context("spawn").Pool(2) as pool:
        pool.map(abs, range(100))
    tasks = [r for r in pickles() if r.channel == "pool.task"]
    assert tasks and max(r.size for r in tasks) < 1_000
