"""What Python 3.14 and 3.15 added, met through tracedmp's namespace: the forkserver default,
new process and executor methods, new Manager types, and the interpreter pool.  Each test is
skipped below the Python that has what it tests, and compares with a plain run where the
behaviour is the stdlib's."""

import json
import re
import subprocess
import sys

import pytest

from conftest import METHODS


PY314 = sys.version_info >= (3, 14)
PY315 = sys.version_info >= (3, 15)
needs_314 = pytest.mark.skipif(not PY314, reason="new in Python 3.14")
needs_315 = pytest.mark.skipif(not PY315, reason="new in Python 3.15")


def platform_default() -> str:
    """The start method this Python picks when the program names none, from a fresh one."""
    return subprocess.check_output(
        [sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
        text=True, timeout=60).strip()


@pytest.mark.parametrize("how", ["none", "set", "context"])
def test_process_start_says_whether_the_start_method_was_the_default(run_program, how):
    """3.14 made forkserver the default on Linux: a start the program did not choose says so,
    one it chose does not, even when it chose the same method; children know it too."""
    default = platform_default()
    run = run_program("""
import sys
import tracedmp as multiprocessing

def work(x):
    return x

def starts_one():
    p = multiprocessing.Process(target=work, args=(1,))
    p.start()
    p.join()

if __name__ == "__main__":
    how, method = sys.argv[1], sys.argv[2]
    if how == "set":
        multiprocessing.set_start_method(method)
    ctx = multiprocessing.get_context(method) if how == "context" else multiprocessing
    p = ctx.Process(target=starts_one)
    p.start()
    p.join()
    with ctx.Pool(1) as pool:
        pool.map(work, [1])
    print(multiprocessing.get_start_method())
""", how, default)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == default
    starts = run.events("process_start")
    assert len(starts) == 3, starts  # the process, its own child, the Pool's worker
    assert any(s["process"] != "MainProcess" for s in starts)
    assert {s["start_method"] for s in starts} == {default}
    assert [s["default_method"] for s in starts] == [how == "none"] * 3
    if PY314 and sys.platform == "linux":
        assert default == "forkserver"


def test_report_says_when_starts_used_the_default_method(run_program, tmp_path):
    run = run_program("""
import tracedmp as multiprocessing

def work(x):
    return x

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        pool.map(work, range(4))
""")
    assert run.returncode == 0, run.stderr
    report = subprocess.run([sys.executable, "-m", "tracedmp", "report", run.trace],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "all: the default start method (the program named none)" in report.stdout
    data = json.loads(subprocess.check_output(
        [sys.executable, "-m", "tracedmp", "report", "--json", run.trace], text=True,
        timeout=60))
    [starts] = data["process_starts"]
    assert starts["count"] == starts["default_method"] == 2


# -- InterpreterPoolExecutor (3.14) ------------------------------------------------------------

HELPERS = '''
class Oops(Exception):
    pass

def work(x, scale=1):
    return {"x": x * scale}

def boom(x):
    raise Oops("bad %s" % x)
'''

INTERPRETER_POOL = """
import json, pickle, re, sys, threading
if sys.argv[1] == "traced":
    import tracedmp
    tracedmp.configure(trace=sys.argv[2])
ORIGINALS = (pickle.dumps, pickle.loads)
from concurrent.futures import InterpreterPoolExecutor
import helpers

def local():
    y = [1]
    def inner(x):
        return x + y[0]
    return inner

def outcome(fn):
    try:
        return ["ok", repr(fn())]
    except BaseException as e:
        return [type(e).__module__ + "." + type(e).__qualname__,
                re.sub(" at 0x[0-9a-f]+", "", str(e))]

if __name__ == "__main__":
    out = {}
    with InterpreterPoolExecutor(1) as ex:
        out["submit"] = outcome(lambda: ex.submit(helpers.work, 3, scale=[2][0]).result())
        # between calls, the program's pickle functions are the originals
        out["between"] = [pickle.dumps is ORIGINALS[0], pickle.loads is ORIGINALS[1]]
        out["map"] = outcome(lambda: list(ex.map(helpers.work, [1, 2])))
        out["raises"] = outcome(lambda: ex.submit(helpers.boom, 1).result())
        out["closure"] = outcome(lambda: ex.submit(local(), 1).result())
        out["lock_arg"] = outcome(lambda: ex.submit(print, threading.Lock()).result())
        out["lock_result"] = outcome(lambda: ex.submit(threading.Lock).result())
    out["sizes"] = {"work": len(pickle.dumps(helpers.work)),
                    "result": len(pickle.dumps({"x": 6}))}
    if sys.argv[1] == "traced":
        tracedmp.uninstall()
        from concurrent import interpreters
        from concurrent.futures import interpreter
        out["restored"] = [pickle.dumps is pickle._pickle.dumps if hasattr(pickle, "_pickle")
                           else True, pickle.loads.__module__,
                           "__wrapped__" in vars(interpreters.Interpreter._call),
                           "__wrapped__" in vars(interpreter.WorkerContext.run)]
    print(json.dumps(out))
"""


@needs_314
def test_interpreter_pool_calls_and_results_are_traced(run_program, tmp_path):
    """What InterpreterPoolExecutor pickles to reach another interpreter, and what comes back,
    has its own channels, with the fields of any pickle record; the program sees what a
    plain run sees."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    trace = str(tmp_path / "interp.jsonl")
    plain = run_program(INTERPRETER_POOL, "plain", trace, env={"TRACEDMP_TRACE": "off"})
    run = run_program(INTERPRETER_POOL, "traced", trace, trace=trace)
    assert plain.returncode == run.returncode == 0, (plain.stderr, run.stderr)
    expected, got = plain.output(), run.output()
    assert got.pop("restored") == [True, "_pickle", False, False]
    assert got == expected
    assert got["submit"] == ["ok", "{'x': 6}"] and got["raises"][0] == "helpers.Oops"

    records = run.records
    calls = [r for r in records if r.get("channel") == "interpreter.call"
             and r["event"] == "pickle"]
    results = [r for r in records if r.get("channel") == "interpreter.result"
               and r["event"] == "pickle"]
    work = [r for r in calls if r["callables"] == [{"name": "helpers.work",
                                                    "kind": "reference"}]]
    assert len(work) == 3  # submit and two map items: the function travels by reference
    assert {r["size"] for r in work} == {got["sizes"]["work"]}
    assert all(r["kind"] == "reference" and r["type"] == "builtins.function" for r in work)
    assert any(r["callables"] == [{"name": "concurrent.futures.interpreter.do_call",
                                   "kind": "reference"}] for r in calls)
    for r in calls + results:
        assert r["pickler"] == "pickle" and r["duration_ns"] > 0 and r["v"] == 1
        assert r["process"] == "MainProcess"
    dicts = [r for r in results if r["type"] == "builtins.dict"]
    assert len(dicts) == 3 and {r["size"] for r in dicts} == {got["sizes"]["result"]}
    [exc] = [r for r in results if r["type"] == "helpers.Oops"]  # via the results queue
    assert exc["callables"] == [{"name": "helpers.Oops", "kind": "reference"}]


@needs_314
def test_interpreter_pool_failures_are_pickle_errors(run_program, tmp_path):
    (tmp_path / "helpers.py").write_text(HELPERS)
    trace = str(tmp_path / "interp.jsonl")
    run = run_program(INTERPRETER_POOL, "traced", trace, trace=trace)
    assert run.returncode == 0, run.stderr
    got = run.output()
    errors = run.events("pickle_error")
    by_type = {r["type"]: r for r in errors}
    assert len(errors) == 3, errors

    def said(r):
        return re.sub(" at 0x[0-9a-f]+", "", r["error"])

    closure, lock, result = (by_type["builtins.function"], by_type["_thread.lock"],
                             by_type[None])
    for r, key in ((closure, "closure"), (lock, "lock_arg"), (result, "lock_result")):
        kind, message = got[key]
        assert kind == "concurrent.interpreters.NotShareableError"
        assert said(r) == f"NotShareableError: {message}"  # what the program got
    assert closure["channel"] == lock["channel"] == "interpreter.call"
    assert closure["cause"].startswith("PicklingError: Can't pickle local object")
    assert closure["hint"].startswith("a function defined inside another function")
    assert "cloudpickle" not in closure["hint"]  # the interpreter pool pickles with pickle
    assert lock["cause"] == "TypeError: cannot pickle '_thread.lock' object"
    assert lock["hint"].startswith("a lock cannot be sent")
    assert result["channel"] == "interpreter.result" and result["path"] is None


def test_interpreter_integration_waits_for_the_interpreter_pool(run_program):
    """Nothing of the integration is loaded, and pickle is untouched, until the program
    imports concurrent.futures.interpreter (every Python: before 3.14 it never is)."""
    run = run_program("""
import json, pickle, sys
import tracedmp as multiprocessing
import concurrent.futures

def work(x):
    return x

if __name__ == "__main__":
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context()) as ex:
        print(list(ex.map(work, [1])))
    print(json.dumps(["tracedmp._integrations.interpreters" in sys.modules,
                      pickle.dumps.__module__]))
""")
    assert run.returncode == 0, run.stderr
    assert run.output() == [False, "_pickle"]


@needs_314
def test_tracedmp_run_traces_an_interpreter_pool_program(run_program, tmp_path):
    """A program that uses the interpreter pool and no multiprocessing is traced by
    `tracedmp run` too: the startup hook also waits for concurrent.futures.interpreter."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    run = run_program("""
from concurrent.futures import InterpreterPoolExecutor
import helpers

if __name__ == "__main__":
    with InterpreterPoolExecutor(1) as ex:
        print(ex.submit(helpers.work, 2).result())
""", via_run=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "{'x': 2}\n"
    channels = {r.get("channel") for r in run.records}
    assert {"interpreter.call", "interpreter.result"} <= channels


# -- protocol 5 (3.14's default) ---------------------------------------------------------------

def test_bench_and_explain_say_the_protocol_multiprocessing_uses(tmp_path):
    from multiprocessing.reduction import ForkingPickler

    used = bytes(ForkingPickler.dumps([1, 2]))[1]  # PROTO's argument
    assert used == (5 if PY314 else 4)
    tool = [sys.executable, "-m", "tracedmp"]
    bench = json.loads(subprocess.check_output(
        tool + ["bench", "--quick", "--json", "--expr", "[1, 2]", "--methods", "fork",
                "--chunksizes", "1"], text=True, timeout=120, cwd=str(tmp_path)))
    assert bench["payload"]["protocol"] == used
    text = subprocess.check_output(tool + ["explain", "[1, 2]"], text=True, timeout=60)
    assert text.splitlines()[-1] == f"(pickle protocol {used})"
    tree = json.loads(subprocess.check_output(tool + ["explain", "--json", "[1, 2]"], text=True,
                                              timeout=60))
    assert tree["protocol"] == used


# -- 3.14's new process, executor and Manager methods, through tracedmp's namespace ------------

def plain_and_traced(run_program, code, *args):
    """The program run plain (stdlib multiprocessing) and traced: (plain, traced) Runs."""
    plain = run_program(code, "plain", *args, env={"TRACEDMP_TRACE": "off"})
    traced = run_program(code, "traced", *args)
    assert plain.returncode == 0, plain.stderr
    assert traced.returncode == 0, traced.stderr
    return plain, traced


IMPORT = """
import json, sys, time
if sys.argv[1] == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing
"""


@needs_314
@pytest.mark.parametrize("method", METHODS)
def test_process_interrupt(run_program, method):
    plain, traced = plain_and_traced(run_program, IMPORT + """
import queue, signal

def wait(q):
    # As an interactive program would have it: a test run in the background (nohup, a CI job)
    # starts every process with SIGINT ignored, and then no KeyboardInterrupt ever comes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        q.put("ready")
        for _ in range(600):
            time.sleep(0.1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # another interrupt changes nothing now
        q.put("interrupted")
        raise SystemExit(3)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[2])
    q = ctx.Queue()
    p = ctx.Process(target=wait, args=(q,))
    p.start()
    assert q.get(timeout=30) == "ready"
    # A SIGINT that comes while the child is still in q.put() can be lost (plain too), and on a
    # loaded machine that window is wide: interrupt again until the child answers.
    for _ in range(30):
        p.interrupt()
        try:
            said = q.get(timeout=1)
            break
        except queue.Empty:
            pass
    p.join(30)
    print(json.dumps([said, p.exitcode]))
""", method)
    assert traced.output() == plain.output() == ["interrupted", 3]
    [start] = traced.events("process_start")
    assert start["target"] == "__main__.wait"
    queued = [r for r in traced.events("pickle", channel="queue") if r["type"] == "builtins.str"]
    assert len(queued) == 2 and all(r["process"] != "MainProcess" for r in queued)


@needs_314
@pytest.mark.parametrize("stop", ["terminate_workers", "kill_workers"])
def test_process_pool_executor_terminate_and_kill_workers(run_program, stop):
    plain, traced = plain_and_traced(run_program, IMPORT + """
import concurrent.futures as cf

def work(x):
    return x * 2

def stall(x):
    time.sleep(60)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
    done = list(ex.map(work, range(4)))
    stuck = ex.submit(stall, 1)
    time.sleep(0.5)
    getattr(ex, sys.argv[2])()
    try:
        outcome = repr(stuck.result(timeout=30))
    except BaseException as e:
        outcome = type(e).__name__
    ex.shutdown(wait=True)
    print(json.dumps([done, outcome, multiprocessing.active_children()]))
""", stop)
    assert traced.output() == plain.output()
    assert traced.output()[0] == [0, 2, 4, 6] and traced.output()[2] == []
    assert len(traced.events("pickle", channel="executor.call")) >= 5
    assert traced.events("pickle", channel="executor.result")


@needs_314
def test_executor_map_with_buffersize(run_program):
    plain, traced = plain_and_traced(run_program, IMPORT + """
import concurrent.futures as cf

def work(x):
    return x * 2

if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        out = list(ex.map(work, range(20), buffersize=3))
    print(json.dumps(out))
""")
    assert traced.output() == plain.output() == [x * 2 for x in range(20)]
    calls = [r for r in traced.events("pickle", channel="executor.call")
             if any(c["name"] == "__main__.work" for c in r["callables"])]
    assert len(calls) == 20  # one work item each, chunksize 1


@needs_314
def test_manager_set_and_new_list_and_dict_methods(run_program):
    plain, traced = plain_and_traced(run_program, IMPORT + """
if __name__ == "__main__":
    with multiprocessing.get_context("forkserver").Manager() as m:
        s = m.set({1, 2})
        s.add(3)
        s |= {4}
        s -= {1}
        lst = m.list([1, 2, 3])
        copied = lst.copy()
        lst.clear()
        d = m.dict(a=1)
        d |= {"b": 2}
        keys = d.fromkeys(["x", "y"], 0)
        print(json.dumps([sorted(s), 3 in s, copied, len(lst), dict(d), keys,
                          sorted(d | {"c": 3})]))
""")
    assert traced.output() == plain.output()
    assert traced.output()[0] == [2, 3, 4]
    manager = traced.events("pickle", channel="manager")
    sent = {r["type"] for r in manager if r["process"] == "MainProcess"}
    assert "builtins.tuple" in sent and len(manager) > 20


@needs_315
@pytest.mark.parametrize("on_error", ["ignore", "warn", "fail"])
def test_set_forkserver_preload_on_error(run_program, on_error):
    """3.15's on_error= decides what a preload that fails to import does; tracedmp adds its own
    modules to the preload list and must not change the outcome."""
    plain, traced = plain_and_traced(run_program, IMPORT + """
import warnings

def work(x):
    return x + 1

if __name__ == "__main__":
    multiprocessing.set_forkserver_preload(["no_such_module_here"], on_error=sys.argv[2])
    ctx = multiprocessing.get_context("forkserver")
    try:
        with ctx.Pool(1) as pool:
            outcome = ["ok", pool.map(work, [1])]
    except BaseException as e:
        outcome = [type(e).__name__, getattr(e, "__notes__", None)]
    print(json.dumps(outcome))
""", on_error)
    assert traced.output() == plain.output()
    if on_error == "fail":
        assert traced.output()[0] != "ok"
    else:
        assert traced.output() == ["ok", [2]]
    assert ("no_such_module_here" in traced.stderr) == ("no_such_module_here" in plain.stderr)


# -- conformance: what CPython's own suite noticed ---------------------------------------------

def test_a_started_process_keeps_nothing_of_its_target_alive(run_program):
    """CPython 3.14's test_multiprocessing_fork.test_misc was "env changed" when traced: its
    test_forked_thread_not_started starts a fork Process whose target is a closure over a
    Thread never started in the parent, and the process_start template cache kept the target
    (and so the Thread, listed in threading._dangling) alive after the test.  Fork only (a
    closure cannot be a spawn target); every Python; compared with a plain run."""
    plain, traced = plain_and_traced(run_program, IMPORT + """
import gc, threading, weakref

def run_once(ctx):
    q = ctx.Queue()
    t = threading.Thread(target=lambda: None, daemon=True)

    def child():
        # CPython's test starts t here; a Thread copied unstarted into a forked child cannot be
        # started before 3.13.4 (gh-134381), and what matters is the parent's copy anyway.
        q.put(t.name and "done")

    p = ctx.Process(target=child)
    p.start()
    p.join(30)
    said = q.get(timeout=30)
    q.close()
    q.join_thread()
    return said, weakref.ref(t), weakref.ref(child)

if __name__ == "__main__":
    said, thread, target = run_once(multiprocessing.get_context("fork"))
    gc.collect()
    print(json.dumps([said, thread() is None, target() is None,
                      sum(1 for t in threading._dangling if not t.is_alive())]))
""")
    assert traced.output() == plain.output() == ["done", True, True, 0]
