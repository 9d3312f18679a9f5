"""joblib and loky: every pickle they make is in the trace, counted against their own picklers.

Ground truth: ``counting.py`` (written next to each program) wraps loky's pickler class and
joblib's Pool pickler in every process that pickles (the parent, and each worker at its first
task), and appends the size of every pickle it makes to ``counts.txt``; the trace must hold the
same pickles, process by process, count and bytes.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

pytest.importorskip("joblib")
pytest.importorskip("numpy")

import tracedmp  # noqa: E402
from tracedmp._read.report import render_text, summarize  # noqa: E402

COUNTING = '''
import os

def _counting(base):
    class Counting(base):
        _tracedmp_test_counting = True

        def __init__(self, file, *args, **kwargs):
            base.__init__(self, file, *args, **kwargs)
            self._counted_file = file

        def dump(self, obj):
            before = self._counted_file.tell()
            base.dump(self, obj)
            line = "%d %d\\n" % (os.getpid(), self._counted_file.tell() - before)
            fd = os.open(os.environ["COUNTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, line.encode())
            os.close(fd)

    return Counting


def install():
    from joblib.externals.loky.backend import reduction
    import joblib.pool

    if not getattr(reduction._LokyPickler, "_tracedmp_test_counting", False):
        reduction._LokyPickler = _counting(reduction._LokyPickler)
    if not getattr(joblib.pool.CustomizablePickler, "_tracedmp_test_counting", False):
        joblib.pool.CustomizablePickler = _counting(joblib.pool.CustomizablePickler)
'''

LOKY = '''
import json, os, sys
import counting
counting.install()
import tracedmp
from joblib import Parallel, delayed, parallel_config

def square(x):
    counting.install()  # in a worker: from its first task on
    return x * x

def nested(x):
    counting.install()
    # joblib runs a Parallel inside a worker on threads: the worker's trace says so
    return sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(x)))

if __name__ == "__main__":
    if sys.argv[1] == "configure":
        tracedmp.configure(trace=os.environ["TRACE"])
    first = Parallel(n_jobs=2)(delayed(square)(i) for i in range(30))
    # the same executor, reused: its workers were started by the first call
    second = Parallel(n_jobs=2, batch_size=4)(delayed(square)(i) for i in range(30, 50))
    with parallel_config(backend="loky", n_jobs=-1):
        third = Parallel()(delayed(square)(i) for i in range(3))
    fourth = Parallel(n_jobs=2)(delayed(nested)(i) for i in range(4))
    print(json.dumps([first, second, third, fourth]))
'''


def _setup(tmp_path):
    (tmp_path / "counting.py").write_text(COUNTING)
    counts = tmp_path / "counts.txt"
    return {"COUNTS": str(counts), "TRACE": str(tmp_path / "trace.jsonl")}, counts


def _json_line(run):
    """The program's JSON output line (a loky worker may print its own lines after it)."""
    for line in reversed(run.stdout.splitlines()):
        if line.startswith(("[", "{")):
            return json.loads(line)
    raise AssertionError(f"no JSON line in {run.stdout!r}; stderr: {run.stderr[-2000:]}")


def _by_pid(lines):
    out = {}
    for line in lines:
        pid, size = map(int, line.split())
        n, total = out.get(pid, (0, 0))
        out[pid] = (n + 1, total + size)
    return out


def _traced_by_pid(records, channels, pickler=None):
    out = {}
    for r in records:
        if r["event"] == "pickle" and (r["channel"] in channels or r["pickler"] == pickler or (
                r["channel"] == "process" and r["start_method"] == "loky")):
            n, total = out.get(r["pid"], (0, 0))
            out[r["pid"]] = (n + 1, total + r["size"])
    return out


@pytest.mark.parametrize("how", ["run", "configure"])
def test_loky_every_pickle_traced(run_program, tmp_path, how):
    env, counts = _setup(tmp_path)
    run = run_program(LOKY, how, env=env, via_run=(how == "run"), timeout=120)
    assert run.returncode == 0, run.stderr
    first, second, third, fourth = _json_line(run)
    assert first == [i * i for i in range(30)] and second == [i * i for i in range(30, 50)]
    assert third == [0, 1, 4] and fourth == [0, 0, 1, 3]
    assert "internal error" not in run.stderr
    records = run.records
    truth = _by_pid(counts.read_text().split("\n")[:-1])
    # all of loky's pickles (the program's own go by tracedmp's pickle): the executor's, and
    # the wake-up messages of the ThreadPool a nested Parallel runs in a worker
    traced = _traced_by_pid(records, ("loky.call", "loky.result"), "cloudpickle")
    # A worker that got no task never installed the counter: it pickled its exit notice only.
    idle = {pid for pid in traced if pid not in truth}
    assert all(r["type"] == "builtins.int" or r["channel"] == "pool.control" for r in records
               if r["event"] == "pickle" and r["pid"] in idle)
    assert {pid: v for pid, v in traced.items() if pid not in idle} == truth
    # every process: the same number of pickles, the same bytes
    starts = run.events("process_start", start_method="loky")
    assert starts and all(s["target"].endswith("_process_worker") for s in starts)
    assert all(s["pickled"] and s["size"] > 0 for s in starts)
    workers = {s["child_pid"] for s in starts}
    results = [r for r in records if r.get("channel") == "loky.result"]
    assert {r["pid"] for r in results} <= workers
    assert all(r["start_method"] == "loky" and r["pickler"] == "cloudpickle" for r in results)
    calls = [r for r in records if r.get("channel") == "loky.call" and r["type"].endswith(
        "_CallItem")]
    assert calls and all({"name": "__main__.square", "kind": "value"} in r["callables"]
                         or {"name": "__main__.nested", "kind": "value"} in r["callables"]
                         for r in calls)
    # the second call ran on workers the first one started: no new start in between
    main = records[0]["pid"]
    parallel = [p for p in run.events("parallel") if p["pid"] == main]
    assert [p["backend"] for p in parallel] == ["loky"] * 4
    assert all(p["pickles"] is True for p in parallel)
    inner = [p for p in run.events("parallel") if p["pid"] in workers]
    assert inner and all(p["backend"] == "threading" and p["pickles"] is False for p in inner)
    assert parallel[2]["n_jobs"] >= 1
    second_start = parallel[1]["ts"]
    later = [r for r in results if r["ts"] > second_start]
    assert later and {r["pid"] for r in later} <= workers
    data = summarize(records)
    assert any(f["kind"] == "function_by_value" for f in data["findings"]) or \
        len(calls) < 10


MP_BACKEND = '''
import json, multiprocessing, os, sys
import counting
counting.install()  # also in spawned workers, which import this module again
import tracedmp
from joblib import Parallel, delayed

def square(x):
    return x * x

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1], force=True)
    tracedmp.configure(trace=os.environ["TRACE"])
    out = Parallel(n_jobs=2, backend="multiprocessing")(delayed(square)(i) for i in range(20))
    print(json.dumps(out))
'''


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_backend_every_pickle_traced(run_program, tmp_path, method):
    env, counts = _setup(tmp_path)
    run = run_program(MP_BACKEND, method, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert _json_line(run) == [i * i for i in range(20)]
    truth = _by_pid(counts.read_text().split("\n")[:-1])
    traced = _traced_by_pid(run.records, ("joblib.task", "joblib.result", "joblib.control"))
    assert traced == truth
    tasks = [r for r in run.records if r.get("channel") == "joblib.task" and r["size"] > 4]
    assert tasks and all(r["start_method"] == method for r in tasks)
    assert all({"name": "__main__.square", "kind": "reference"} in r["callables"] for r in tasks)
    assert [p["backend"] for p in run.events("parallel")] == ["multiprocessing"]


FAILURE = '''
import json, multiprocessing, os, sys, threading
import tracedmp
from joblib import Parallel, delayed

if __name__ == "__main__":
    backend = sys.argv[1]
    if backend == "multiprocessing":
        # joblib's Pool under forkserver (the default from Python 3.14) hangs on this failure,
        # traced or not: fork shows what it raises
        multiprocessing.set_start_method("fork", force=True)
    if sys.argv[2] == "traced":
        tracedmp.configure(trace=os.environ["TRACE"])
    lock = threading.Lock()
    def closure(x):  # cannot be pickled: it holds a lock
        return (lock, x)
    try:
        Parallel(n_jobs=2, backend=backend)(delayed(closure)(i) for i in range(3))
    except BaseException as exc:
        print(json.dumps([type(exc).__module__, type(exc).__qualname__, str(exc)]))
'''


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_failure_same_exception_and_recorded(run_program, tmp_path, backend):
    env, _ = _setup(tmp_path)
    plain = run_program(FAILURE, backend, "plain", env=env, timeout=120)
    traced = run_program(FAILURE, backend, "traced", env=env, timeout=120)
    assert plain.returncode == traced.returncode == 0, traced.stderr
    # which task fails first, and the lock's address, differ from run to run
    def same(out):
        return [re.sub(r"0x[0-9a-f]+|\d+", "N", part) for part in out]

    assert same(_json_line(traced)) == same(_json_line(plain))
    errors = traced.events("pickle_error")
    assert errors, traced.records
    # loky pickles the closure itself (cloudpickle) and fails on its lock; joblib's Pool sends
    # the function by reference and fails on the result holding the lock
    channel = "loky.call" if backend == "loky" else "joblib.result"
    err = next(e for e in errors if e["channel"] == channel)
    assert "lock" in err["error"]
    if backend == "loky":  # a global of the function that went by value
        assert err["path"].endswith("__globals__['lock']"), err["path"]
    assert err["path"] is not None and err["hint"]


MEMMAP = '''
import json, os, sys
import numpy as np
import tracedmp
from joblib import Parallel, delayed

def total(a, i):
    return float(a[i])

if __name__ == "__main__":
    tracedmp.configure(trace=os.environ["TRACE"])
    a = np.arange(500_000, dtype=np.float64)  # 4 MB: above max_nbytes (1 MB)
    kwargs = {} if sys.argv[1] == "memmap" else {"max_nbytes": None}
    out = Parallel(n_jobs=2, batch_size=1, **kwargs)(delayed(total)(a, i) for i in range(6))
    print(json.dumps(out))
'''


@pytest.mark.parametrize("how", ["memmap", "copy"])
def test_memmapped_array_says_how_it_travelled(run_program, tmp_path, how):
    env, _ = _setup(tmp_path)
    run = run_program(MEMMAP, how, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert _json_line(run) == [float(i) for i in range(6)]
    calls = [r for r in run.records if r.get("channel") == "loky.call" and r.get("arrays")]
    assert len(calls) == 6
    arrays = [r["arrays"][0] for r in calls]
    assert all(a["nbytes"] == 4_000_000 and a["shape"] == [500_000] for a in arrays)
    if how == "memmap":
        assert all(a["sent_as"] == "memmap" and a["size"] < 1000 for a in arrays)
        assert all(r["size"] < 10_000 for r in calls)
        assert sum(a["written"] for a in arrays) == 1  # written once, then reused
    else:
        assert all(a["sent_as"] == "copy" and a["size"] >= 4_000_000 for a in arrays)
        assert all(r["size"] >= 4_000_000 for r in calls)
    text = render_text(summarize(run.records))
    assert ("memmap" in text) if how == "memmap" else ("copied" in text)


THREADING = '''
import json, os, sys
import tracedmp
from joblib import Parallel, delayed

if __name__ == "__main__":
    tracedmp.configure(trace=os.environ["TRACE"])
    print(json.dumps(Parallel(n_jobs=2, backend="threading")(delayed(abs)(-i) for i in range(5))))
'''


def test_threading_backend_says_nothing_was_pickled(run_program, tmp_path):
    env, _ = _setup(tmp_path)
    run = run_program(THREADING, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert _json_line(run) == [0, 1, 2, 3, 4]
    assert run.events("parallel") and run.events("parallel")[0]["backend"] == "threading"
    assert run.events("parallel")[0]["pickles"] is False
    # only the ThreadPool's own wake-up messages go through a pipe
    assert {r["channel"] for r in run.events("pickle")} <= {"pool.control"}
    text = render_text(summarize(run.records))
    assert "threading" in text and "tasks and results were not pickled" in text


ENGINE = '''
import os
import tracedmp
tracedmp.configure(trace=os.environ["TRACE"])
import distributed  # a stand-in next to this program: its traffic would not be traced
'''


def test_untraced_engine_is_recorded_and_reported(run_program, tmp_path):
    env, _ = _setup(tmp_path)
    (tmp_path / "distributed.py").write_text("")
    run = run_program(ENGINE, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    [rec] = run.events("untraced")
    assert rec["engine"] == "dask.distributed" and rec["module"] == "distributed"
    text = render_text(summarize(run.records))
    assert "dask.distributed" in text and "not in this trace" in text
    assert "none of the known problems" not in text
    from tracedmp._read.report import summarize_file

    # a report narrowed to one channel still says what the trace does not hold
    narrowed = summarize_file(run.trace, channel="pool.task")
    assert [u["engine"] for u in narrowed["untraced"]] == ["dask.distributed"]


NOT_IMPORTED = '''
import json, sys
import tracedmp
import multiprocessing

if __name__ == "__main__":
    tracedmp.configure(trace=sys.argv[1])
    with multiprocessing.Pool(1) as pool:
        pool.map(abs, [1])
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("tracedmp._integrations."))))
'''


def test_a_program_without_joblib_loads_no_integration(run_program, tmp_path):
    run = run_program(NOT_IMPORTED, str(tmp_path / "t.jsonl"), timeout=60)
    assert run.returncode == 0, run.stderr
    assert _json_line(run) == []


def test_uninstall_removes_the_hooks(tmp_path):
    from joblib import parallel, pool
    from joblib.externals.loky.backend import process, reduction

    before = (reduction.dump, pool.CustomizablePickler, process.LokyProcess.__dict__["_Popen"],
              parallel.Parallel.__dict__["_initialize_backend"])
    tracedmp.configure(trace=str(tmp_path / "t.jsonl"))
    during = (reduction.dump, pool.CustomizablePickler, process.LokyProcess.__dict__["_Popen"],
              parallel.Parallel.__dict__["_initialize_backend"])
    assert all(a is not b for a, b in zip(before, during))
    tracedmp.uninstall()
    after = (reduction.dump, pool.CustomizablePickler, process.LokyProcess.__dict__["_Popen"],
             parallel.Parallel.__dict__["_initialize_backend"])
    assert all(a is b for a, b in zip(before, after))


def test_report_findings_for_joblib():
    def call(size, names, arrays=None, pid=1):
        rec = {"v": 1, "event": "pickle", "ts": 1.0, "pid": pid, "process": "MainProcess",
               "start_method": "loky", "seq": 0, "channel": "loky.call", "size": size,
               "kind": "value", "type": "joblib.externals.loky.process_executor._CallItem",
               "pickler": "cloudpickle", "duration_ns": 1000,
               "callables": [{"name": n, "kind": k} for n, k in names]}
        if arrays:
            rec["arrays"] = arrays
        return rec

    big = [call(4_000_300, [("__main__.f", "reference")],
                [{"nbytes": 4_000_000, "shape": [500_000], "dtype": "float64",
                  "sent_as": "copy", "size": 4_000_150}]) for _ in range(12)]
    tiny = [call(300, [("__main__.g", "value")]) for _ in range(1200)]
    data = summarize(big + tiny)
    kinds = {f["kind"] for f in data["findings"]}
    assert {"joblib_large_args", "joblib_array_copied", "joblib_small_batches",
            "function_by_value"} <= kinds, data["findings"]
    text = render_text(data)
    assert "batch_size" in text and "max_nbytes" in text


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux only")


def test_library_still_importing_when_tracing_starts(tmp_path, monkeypatch):
    """``tracedmp run`` starts tracing right after multiprocessing's import, which may happen
    inside a library module's own import: its integration waits until that module has run."""
    import importlib.machinery
    import types

    from tracedmp import _integrations
    from tracedmp._integrations import engines

    monkeypatch.setitem(_integrations.INTEGRATIONS, "tracedmp_test_engine", "engines")
    monkeypatch.setitem(engines.ENGINES, "tracedmp_test_engine", "a test engine")
    module = types.ModuleType("tracedmp_test_engine")
    module.__spec__ = importlib.machinery.ModuleSpec("tracedmp_test_engine", None)
    module.__spec__._initializing = True  # as importlib marks a module while it runs
    monkeypatch.setitem(sys.modules, "tracedmp_test_engine", module)
    trace = tmp_path / "t.jsonl"
    tracedmp.configure(trace=str(trace))

    def engines_named():
        from tracedmp._runtime import tracer

        tracer.current.sink.flush()
        records = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        return [r["engine"] for r in records if r["event"] == "untraced"]

    assert engines_named() == []  # not yet: the module is still running
    module.__spec__._initializing = False
    with pytest.raises(ImportError):  # the next import of anything, here one that fails
        __import__("tracedmp_test_no_such_module")
    assert engines_named() == ["a test engine"]


STANDALONE_LOKY = '''
import json, os
import tracedmp
from loky import get_reusable_executor

def add_one(x):
    return x + 1

if __name__ == "__main__":
    tracedmp.configure(trace=os.environ["TRACE"])
    executor = get_reusable_executor(max_workers=2)
    print(json.dumps(list(executor.map(add_one, range(6)))))
'''


def test_standalone_loky(run_program, tmp_path):
    pytest.importorskip("loky")
    env, _ = _setup(tmp_path)
    run = run_program(STANDALONE_LOKY, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert _json_line(run) == [1, 2, 3, 4, 5, 6]
    calls = [r for r in run.records if r.get("channel") == "loky.call"
             and r["type"] == "loky.process_executor._CallItem"]
    assert len(calls) == 6
    assert all({"name": "__main__.add_one", "kind": "value"} in r["callables"] for r in calls)
    results = [r for r in run.records if r.get("channel") == "loky.result"
               and r["type"] == "loky.process_executor._ResultItem"]
    assert len(results) == 6
    starts = run.events("process_start", start_method="loky")
    assert {r["pid"] for r in results} <= {s["child_pid"] for s in starts}


def test_a_joblib_of_another_shape_is_left_untraced_not_broken(tmp_path, monkeypatch):
    from joblib import parallel
    from joblib.externals.loky.backend import process, reduction

    monkeypatch.delattr(parallel.Parallel, "_initialize_backend")  # as if renamed
    monkeypatch.delattr(process.LokyProcess, "_Popen")
    before = reduction.dump
    tracedmp.configure(trace=str(tmp_path / "t.jsonl"))  # no error: those parts untraced
    assert "_initialize_backend" not in vars(parallel.Parallel)
    assert "_Popen" not in vars(process.LokyProcess)
    assert reduction.dump is not before  # what is there is still traced
    tracedmp.uninstall()
    assert reduction.dump is before
