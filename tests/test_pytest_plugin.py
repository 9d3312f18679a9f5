"""The pytest plugin, run on small projects by pytest itself (pytester, in a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap

import pytest

from tracedmp._budget import Budget, parse_size
from tracedmp._errors import ConfigError

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
timeout = 120
"""

COMMON = '''
import multiprocessing, multiprocessing.connection, multiprocessing.queues, os, sys, threading
import time
from multiprocessing import reduction
import pytest

def square(x):
    return x * x

class Model:
    def __init__(self):
        self.weights = b"w" * 50_000
    def score(self, x):
        return x

def untouched():
    assert multiprocessing.connection._ForkingPickler is reduction.ForkingPickler
    assert multiprocessing.queues._ForkingPickler is reduction.ForkingPickler
    assert reduction.dump.__module__ == "multiprocessing.reduction"
'''


def _project(pytester, code: str) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_project=COMMON + textwrap.dedent(code))


@pytest.fixture
def short_tmpdir(monkeypatch):
    """A fresh, short TMPDIR (a forkserver's socket path must fit in 108 bytes): what the
    plugin would leave behind there is seen."""
    path = tempfile.mkdtemp(prefix="tdmp-", dir="/tmp")
    monkeypatch.setenv("TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_parse_size_and_bad_budgets():
    assert parse_size(2048) == 2048
    assert parse_size("100 KB") == 100_000
    assert parse_size("100kb") == 100_000
    assert parse_size("1.5 MiB") == 1_572_864
    assert parse_size("10 MB") == 10_000_000
    assert parse_size("3 GiB") == 3 * 2**30
    assert parse_size("12") == 12
    for bad in ("lots", "10 XB", "-1 KB", -5, True, None):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(bad, "per_message")
    with pytest.raises(ConfigError, match="unknown option.*per_msg; the options are"):
        Budget.from_marker((), {"per_msg": 1})
    with pytest.raises(ConfigError, match="sets no limit"):
        Budget.from_marker((), {})
    with pytest.raises(ConfigError, match="messages=-1 must be a whole number"):
        Budget.from_marker((), {"messages": -1})
    assert Budget(by_value=True).violations([{"event": "pickle", "size": 1, "callables": [
        {"name": "m.C.f", "kind": "value"}]}]) == []


def test_a_failure_names_the_largest_parts_where_records_have_them():
    big = {"event": "pickle", "channel": "pool.task", "process": "MainProcess", "size": 300_000,
           "type": "builtins.tuple", "callables": [
               {"name": "multiprocessing.pool.mapstar", "kind": "reference"},
               {"name": "app.Model.score", "kind": "value"}],
           "parts": [{"path": "func.__self__", "type": "app.Model", "size": 290_000},
                     {"path": "func.__closure__[0]", "captured": "table", "type": "bytes",
                      "size": 9_000},
                     "not a part", {"path": None, "size": True}]}
    odd = {"event": "pickle", "channel": "pool.task", "size": 200_000, "parts": "garbled"}
    (message,) = Budget(per_message="100 KB").violations([big, odd, {"event": "pickle"}])
    assert message.splitlines() == [
        "pickle_budget(per_message='100 KB') exceeded: the largest pickle was 300.0 KB "
        "(300,000 bytes), over the limit of 100.0 KB (100,000 bytes); 2 of 3 pickles were "
        "over it",
        "  largest: 300.0 KB (300,000 bytes): pool.task in MainProcess calling "
        "app.Model.score (builtins.tuple)",
        "    largest parts: func.__self__ (app.Model): 290.0 KB (290,000 bytes); "
        "func.__closure__[0] (captured table) (bytes): 9.0 KB (9,000 bytes); ?",
        "  largest: 200.0 KB (200,000 bytes): pool.task in ?",
    ]


def test_budgets_pass_and_fail_with_messages_naming_them(pytester, short_tmpdir):
    _project(pytester, '''
        def test_an_unmarked_test_runs_untraced():
            with multiprocessing.get_context("fork").Pool(1) as pool:
                untouched()
                assert pool.map(square, [1, 2]) == [1, 4]
            assert "tracedmp._runtime.hooks" not in sys.modules

        @pytest.mark.pickle_budget(per_message="10 KB")
        def test_per_message_ok():
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(len, [b"x" * 5_000] * 4)

        @pytest.mark.pickle_budget(per_message="10 KB")
        def test_per_message_over():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(len, [b"x" * 20_000] * 4)

        @pytest.mark.pickle_budget(total="1.5 MiB", messages=200)
        def test_total_and_messages_ok():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(square, range(50), chunksize=1)

        @pytest.mark.pickle_budget(total=2048)
        def test_total_over():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(square, range(100), chunksize=1)

        @pytest.mark.pickle_budget(messages=20, channel="pool.task")
        def test_messages_over():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(square, range(100), chunksize=1)

        @pytest.mark.pickle_budget(by_value=False)
        def test_by_value_ok():
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(square, range(4))

        @pytest.mark.pickle_budget(by_value=False)
        def test_by_value_bound_method():
            model = Model()
            with multiprocessing.get_context("fork").Pool(2) as pool:
                pool.map(model.score, range(4))

        @pytest.mark.pickle_budget(errors=0)
        def test_errors_ok():
            q = multiprocessing.get_context("fork").SimpleQueue()
            q.put(1)
            assert q.get() == 1

        @pytest.mark.pickle_budget(errors=0)
        def test_errors_over():
            q = multiprocessing.get_context("fork").SimpleQueue()
            with pytest.raises(TypeError):
                q.put(threading.Lock())

        @pytest.mark.pickle_budget(per_message="1 KB", channel="pool.task")
        def test_channel_limits_what_counts():
            q = multiprocessing.get_context("fork").SimpleQueue()
            q.put(b"q" * 30_000)  # within a pipe's buffer
            q.get()
            with multiprocessing.get_context("fork").Pool(1) as pool:
                pool.map(square, range(3))

        @pytest.mark.pickle_budget(total="1 MB")
        @pytest.mark.pickle_budget(per_message="1 KB")
        def test_two_budgets_both_checked():
            q = multiprocessing.get_context("fork").SimpleQueue()
            q.put(b"q" * 2_000)
            q.get()

        @pytest.mark.pickle_budget(total="1 MB")
        def test_a_child_left_running():
            ctx = multiprocessing.get_context("fork")
            ctx.Process(target=time.sleep, args=(1,)).start()

        def test_the_fixture_and_a_nested_capture(tracedmp_capture):
            import tracedmp

            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            q.put(b"x" * 1000)
            assert q.get(timeout=30) == b"x" * 1000
            with tracedmp.capture() as inner:
                with ctx.Pool(1) as pool:
                    pool.map(square, [1])
            assert inner.pickles(channel="pool.result")
            assert tracedmp_capture.pickles(channel="queue")[0].size > 1000
            def said(records):  # the outer trace numbers this process's records on
                return {(r.pid, r.event, r.channel, r.size) for r in records}

            assert said(inner.records()) <= said(tracedmp_capture.records())

        @pytest.mark.pickle_budget(per_message="1 KB", messages="many")
        def test_a_bad_budget():
            pass

        def test_nothing_left_behind():
            untouched()
            import tracedmp

            assert not tracedmp.is_tracing()
            for p in multiprocessing.active_children():  # the test above left one running
                p.join(30)
            left = [f for f in os.listdir(os.environ["TMPDIR"]) if not f.startswith("pymp-")]
            assert left == []  # (pymp-*: the forkserver's, the stdlib's own)
    ''')
    result = _run(pytester)
    result.assert_outcomes(passed=8, failed=8)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*test_per_message_over*",
        "pickle_budget(per_message='10 KB') exceeded: the largest pickle was 20.1 KB "
        "(20,087 bytes), over the limit of 10.0 KB (10,000 bytes); 4 of * pickles were over it",
        "  largest: 20.1 KB (20,087 bytes) (x4): pool.task in MainProcess calling builtins.len"
        " (builtins.tuple)",
    ])
    result.stdout.fnmatch_lines([
        "pickle_budget(total=2048) exceeded: * pickles came to *, over the limit of "
        "2.0 KB (2,048 bytes)",
        "  100 pickle(s), * KB (* bytes): pool.task in MainProcess calling "
        "test_project.square (builtins.tuple)",
    ])
    result.stdout.fnmatch_lines([
        "pickle_budget(messages=20, channel='pool.task') exceeded: 102 pickles on pool.task, "
        "over the limit of 20",
    ])
    result.stdout.fnmatch_lines([
        "pickle_budget(by_value=False) exceeded: 4 pickles carried a function, method or "
        "class by value (none allowed)",
        "  test_project.Model.score by value in 4 pickle(s)",
        "  fix: a bound method carries its instance*",
        "  largest: 50.1 KB *: pool.task in MainProcess calling test_project.Model.score*",
    ])
    result.stdout.fnmatch_lines([
        "pickle_budget(errors=0) exceeded: 1 pickle(s) failed, over the limit of 0",
        "  queue in MainProcess (_thread.lock): TypeError: cannot pickle '_thread.lock' object",
    ])
    result.stdout.fnmatch_lines([
        "*test_two_budgets_both_checked*",
        "pickle_budget(per_message='1 KB') exceeded: the largest pickle was 2.0 KB*",
    ])
    result.stdout.fnmatch_lines([
        "pickle_budget cannot be checked: the test left 1 process(es) running*ForkProcess-*"
        "target time.sleep*Join*",
    ])
    result.stdout.fnmatch_lines(["pickle_budget of test_project.py::test_a_bad_budget: "
                                 "messages='many' must be a whole number, 0 or more"])
    assert "test_channel_limits_what_counts" not in out.split("short test summary")[0]


def test_spawn_gate_start_method_and_per_test_traces(pytester, short_tmpdir):
    _project(pytester, '''
        def work(*args):
            pass

        def test_a_lambda_target():
            p = multiprocessing.get_context("fork").Process(target=lambda: None)
            p.start()
            p.join()

        def test_a_lock_argument():
            p = multiprocessing.get_context("fork").Process(target=work,
                                                            args=(threading.Lock(),))
            p.start()
            p.join()

        def test_a_fork_start_that_would_spawn():
            ctx = multiprocessing.get_context("fork")
            p = ctx.Process(target=work, args=(ctx.Lock(), [1, 2]))
            p.start()
            p.join()
            with ctx.Pool(2) as pool:
                pool.map(square, range(4))

        def test_the_default_context_is_forkserver():
            assert multiprocessing.get_start_method() == "forkserver"
            with multiprocessing.Pool(1) as pool:
                assert pool.map(square, [3]) == [9]

        def test_nothing():
            pass
    ''')
    result = _run(pytester, "--tracedmp-check-spawn", "--tracedmp-start-method=forkserver",
                  "--tracedmp=traces")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines([
        "*test_a_lambda_target*",
        "--tracedmp-check-spawn: 1 process(es) started with fork would not start under spawn "
        "or forkserver*",
        "  ForkProcess-* (target test_project.test_a_lambda_target.<locals>.<lambda>): *Error: "
        "*local object*",  # the wording varies by Python
        "    at target",
        "    fix: a lambda cannot travel by reference*",
    ])
    result.stdout.fnmatch_lines([
        "*test_a_lock_argument*",
        "  ForkProcess-* (target test_project.work): TypeError: cannot pickle '_thread.lock' "
        "object",
        "    at args[0]",
        "    fix: a lock cannot be sent to another process*",
    ])
    result.stdout.fnmatch_lines([
        "*= tracedmp: the 4 tests that pickled most =*",
        "* pickles  test_project.py::test_the_default_context_is_forkserver  [[]largest *"
        "(process), 1 started[]]",
        "traces of 4 test(s) in */traces (read one with: tracedmp report FILE)",
    ])
    files = sorted(os.listdir(pytester.path / "traces"))
    assert len(files) == 4 and not [f for f in files if "test_nothing" in f]
    (forkserver,) = [f for f in files if "forkserver" in f]
    with open(pytester.path / "traces" / forkserver) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r["start_method"] for r in records if r["event"] == "process_start"] == \
        ["forkserver"]
    assert {r["channel"] for r in records if r["event"] == "pickle"} >= {"pool.task",
                                                                        "pool.result"}


def test_the_start_method_alone_traces_nothing_and_a_bad_one_is_a_usage_error(
        pytester, short_tmpdir):
    _project(pytester, """
        def test_spawn_is_the_default_and_nothing_is_traced():
            assert multiprocessing.get_start_method() == "spawn"
            a, b = multiprocessing.Pipe()
            a.send(1)
            assert b.recv() == 1
            untouched()
            assert "tracedmp._runtime.hooks" not in sys.modules
    """)
    _run(pytester, "--tracedmp-start-method=spawn").assert_outcomes(passed=1)
    result = _run(pytester, "--tracedmp-start-method=vfork")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tracedmp-start-method='vfork' is not a start method of "
                                 "this Python; use one of *fork*"])


def test_xdist_workers_capture_their_own_tests(pytester, short_tmpdir):
    pytest.importorskip("xdist")
    _project(pytester, '''
        @pytest.mark.parametrize("n", [10, 20, 30, 40])
        @pytest.mark.pickle_budget(per_message="25 KB", channel="pool.task")
        def test_sizes(n):
            # Not fork: an xdist worker runs threads, and forking it is a DeprecationWarning
            # (an error here) on Python 3.15.
            with multiprocessing.get_context("forkserver").Pool(1) as pool:
                pool.map(len, [b"x" * (n * 1000)])
    ''')
    result = _run(pytester, "-n", "2", "--tracedmp=traces")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*pickle_budget(per_message='25 KB', channel='pool.task') exceeded: the largest "
        "pickle on pool.task was 40.1 KB*",
    ])
    result.stdout.fnmatch_lines([
        "*= tracedmp: the 4 tests that pickled most =*",
        "*test_project.py::test_sizes[[]40[]]*",
        "*test_project.py::test_sizes[[]30[]]*",
        "*test_project.py::test_sizes[[]20[]]*",
        "*test_project.py::test_sizes[[]10[]]*",
    ])
    assert len(os.listdir(pytester.path / "traces")) == 4


def test_a_session_under_tracedmp_run(pytester, short_tmpdir):
    # The plugin's entry point makes pytest mark tracedmp's distribution for assertion
    # rewriting; the startup hook, imported before pytest starts, must not make that a warning
    # (an error under filterwarnings = error). A captured test's records also reach the
    # session's trace.
    _project(pytester, '''
        @pytest.mark.pickle_budget(per_message="10 KB")
        def test_budgeted():
            with multiprocessing.get_context("fork").Pool(1) as pool:
                assert pool.map(square, [7]) == [49]
    ''')
    trace = pytester.path / "session.jsonl"
    result = pytester.run(sys.executable, "-m", "tracedmp", "run", "--trace", str(trace), "-m",
                          "pytest", "-p", "no:cacheprovider", timeout=120)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed in*"])
    assert "warning" not in result.stdout.str()
    with open(trace) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert [r["event"] for r in records].count("trace_start") == 1
    assert [r for r in records if r.get("channel") == "pool.result"]
