"""Pickling failures: the program sees exactly what plain multiprocessing gives; the trace says
what failed, where it sits in the object, and how to fix it."""

import re

import pytest

from conftest import METHODS

FAILING = """
import json, re, sys, threading
import multiprocessing as plain
if sys.argv[2] == "traced":
    import tracedmp as multiprocessing
else:
    multiprocessing = plain

class Refuses:
    def __reduce__(self):
        raise ValueError("Refuses will not be pickled")

def work(x):
    return x

def outcome(fn):
    try:
        return ["ok", repr(fn())]
    except BaseException as e:
        # (3.14 says how much stack it used: that varies from run to run)
        return [type(e).__module__ + "." + type(e).__qualname__,
                re.sub("used [0-9]+ kB", "used  kB", re.sub(" at 0x[0-9a-f]+", "", str(e)))]

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    out = {}
    with ctx.Pool(1) as pool:
        out["pool_lambda"] = outcome(lambda: pool.map(lambda x: x, [1]))
        out["pool_lock_arg"] = outcome(lambda: pool.apply(work, ({"lock": threading.Lock()},)))
        out["pool_result_fails"] = outcome(lambda: pool.apply(Refuses))
        out["pool_still_works"] = outcome(lambda: pool.map(work, [1, 2]))
    def start_local():
        def local_target():
            pass
        p = ctx.Process(target=local_target)
        p.start()
        p.join()
        return p.exitcode
    out["process_local"] = outcome(start_local)
    a, b = ctx.Pipe()
    nested = [[[[{"deep": [Refuses()]}]]]]
    out["pipe_nested"] = outcome(lambda: a.send(nested))
    deep = []
    for _ in range(100_000):
        deep = [deep]
    out["pipe_recursion"] = outcome(lambda: a.send(deep))
    print(json.dumps(out))
"""


@pytest.mark.parametrize("method", METHODS)
def test_failures_match_plain_multiprocessing(run_program, method):
    plain = run_program(FAILING, method, "plain", env={"TRACEDMP_TRACE": "off"})
    traced = run_program(FAILING, method, "traced")
    assert plain.returncode == traced.returncode == 0, (plain.stderr, traced.stderr)
    expected, got = plain.output(), traced.output()
    assert got == expected
    assert got["pool_still_works"] == ["ok", "[1, 2]"]
    if method != "fork":
        assert got["process_local"][0] != "ok"

    errors = traced.events("pickle_error")
    by_channel = {}
    for e in errors:
        by_channel.setdefault(e["channel"], []).append(e)

    # Each record keeps the type and text of the exception the program got, whatever this
    # Python raises (3.14: PicklingError where older ones raised AttributeError, new wording).
    def said(e):
        return re.sub(r" at 0x[0-9a-f]+|(?<=\(used )\d+(?= kB\))", "", e["error"])

    for key in ("pool_lambda", "pool_lock_arg", "pipe_nested", "pipe_recursion"):
        kind, message = got[key]
        assert f"{kind.rsplit('.', 1)[-1]}: {message}" in {said(e) for e in errors}, key

    [lam] = [e for e in by_channel["pool.task"] if "lambda" in e["error"]]
    assert lam["hint"].startswith("a lambda cannot travel by reference")
    assert lam["path"] == "task.func"

    [lock] = [e for e in by_channel["pool.task"] if "lock" in e["error"]]
    assert lock["error"] == "TypeError: cannot pickle '_thread.lock' object"
    assert lock["path"].endswith("['lock']")
    assert lock["hint"].startswith("a lock cannot be sent to another process")

    [result] = by_channel["pool.result"]
    assert result["error"] == "ValueError: Refuses will not be pickled"
    assert result["process"] != "MainProcess"

    nested = [e for e in by_channel["pipe"] if e["type"] == "builtins.list"
              and e["error"].startswith("ValueError")]
    assert nested[0]["path"] == "[0][0][0][0]['deep'][0]"

    recursion = [e for e in by_channel["pipe"] if e["error"].startswith("RecursionError")]
    assert recursion and recursion[0]["hint"].startswith("the object nests too deeply")

    if method == "fork":
        assert "process" not in by_channel
    else:
        [proc] = by_channel["process"]
        assert proc["part"] == "process_object"
        assert proc["path"] == "target"
        assert "defined inside another function" in proc["hint"]


def test_queue_feeder_failure_behaves_like_the_stdlib(run_program):
    code = """
import sys, threading, time
if sys.argv[1] == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing
q = multiprocessing.get_context("fork").Queue()
q.put({"ok": 1})
q.put({"lock": threading.Lock()})
q.put({"ok": 2})
print(q.get(timeout=10), q.get(timeout=10))
"""
    plain = run_program(code, "plain", env={"TRACEDMP_TRACE": "off"})
    traced = run_program(code, "traced")
    assert plain.stdout == traced.stdout == "{'ok': 1} {'ok': 2}\n"
    assert "TypeError: cannot pickle '_thread.lock' object" in plain.stderr
    assert "TypeError: cannot pickle '_thread.lock' object" in traced.stderr
    [err] = traced.events("pickle_error")
    assert err["channel"] == "queue" and err["path"] == "['lock']"


@pytest.mark.parametrize("method", METHODS)
def test_cloudpickle_sends_lambdas_and_closures_by_value(run_program, method):
    run = run_program("""
import json, sys
import tracedmp as multiprocessing

def module_level(x):
    return x + 1

def make_closure(data):
    def f(x):
        return x + len(data)
    return f

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    big = b"x" * 1_000_000
    with ctx.Pool(2) as pool:
        a = pool.map(lambda x: x * 3, range(4), chunksize=1)
        b = pool.map(make_closure(big), range(3), chunksize=1)
        c = pool.map(module_level, range(3))
        e = pool.map(json.dumps, range(2))
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put("from a lambda target"))
    p.start()
    d = q.get(timeout=30)
    p.join()
    print(json.dumps([a, b, c, d, e]))
""", method, env={"TRACEDMP_PICKLER": "cloudpickle"})
    assert run.returncode == 0, run.stderr
    assert run.output() == [[0, 3, 6, 9], [1000000, 1000001, 1000002], [1, 2, 3],
                            "from a lambda target", ["0", "1"]]
    tasks = run.events("pickle", channel="pool.task")
    assert {r["pickler"] for r in run.events("pickle")} == {"cloudpickle"}
    lam = [t for t in tasks if {"name": "__main__.<lambda>", "kind": "value"} in t["callables"]]
    assert len(lam) == 4
    closure = [t for t in tasks if any(c["name"] == "__main__.make_closure.<locals>.f"
                                       and c["kind"] == "value" for c in t["callables"])]
    assert len(closure) == 3 and all(t["size"] >= 1_000_000 for t in closure)
    # cloudpickle sends __main__'s functions by value (the child may not have them)...
    main_fn = [t for t in tasks if {"name": "__main__.module_level", "kind": "value"}
               in t["callables"]]
    assert main_fn
    # ...and importable ones by reference, as small as with pickle.
    ref = [t for t in tasks if {"name": "json.dumps", "kind": "reference"} in t["callables"]]
    assert ref and all(t["size"] < 200 for t in ref)
    results = run.events("pickle", channel="queue")
    assert [r["pickler"] for r in results] == ["cloudpickle"]


def test_check_spawn_reports_what_spawn_would_do(run_program):
    run = run_program("""
import threading
import tracedmp as multiprocessing

def target(arg):
    pass

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    for name, arg in (("fine", {"n": 1}), ("locked", {"lock": threading.Lock()})):
        p = ctx.Process(target=target, args=(arg,), name=name)
        p.start()
        p.join()
        assert p.exitcode == 0
""", env={"TRACEDMP_CHECK_SPAWN": "1"})
    assert run.returncode == 0, run.stderr
    starts = {r["child"]: r for r in run.events("process_start")}
    fine, locked = starts["fine"]["spawn_check"], starts["locked"]["spawn_check"]
    assert fine["would_pickle"] is True and fine["size"] > 100
    assert locked["would_pickle"] is False
    assert locked["path"] == "args[0]['lock']"
    assert locked["error"] == "TypeError: cannot pickle '_thread.lock' object"
    assert locked["hint"].startswith("a lock cannot be sent")
    assert all(r["pickled"] is False for r in starts.values())
    assert not run.events("pickle", channel="process")


@pytest.mark.parametrize("method", METHODS)
def test_cloudpickle_on_pipes_queues_executors_and_managers(run_program, method):
    run = run_program("""
import concurrent.futures, json, sys
import tracedmp as multiprocessing

def call(conn):
    fn = conn.recv()
    conn.send(fn(20))

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    offset = 2
    a, b = ctx.Pipe()
    p = ctx.Process(target=call, args=(b,))
    p.start()
    a.send(lambda x: x + offset)
    piped = a.recv()
    p.join()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        executed = ex.submit(lambda: offset * 10).result(timeout=60)
    with ctx.Manager() as m:
        d = m.dict()
        d["f"] = lambda: 1  # the manager's server must unpickle it too
        managed = d["f"]()
    print(json.dumps([piped, executed, managed]))
""", method, env={"TRACEDMP_PICKLER": "cloudpickle"})
    assert run.returncode == 0, run.stderr
    assert run.output() == [22, 20, 1]
    by_channel = {}
    for r in run.events("pickle"):
        for c in r["callables"]:
            if c["kind"] == "value" and "<lambda>" in c["name"]:
                by_channel.setdefault(r["channel"], set()).add(r["pid"])
    assert {"pipe", "executor.call", "manager"} <= set(by_channel)
    assert not run.events("pickle_error")


def test_bound_method_of_an_object_holding_a_lock(run_program):
    run = run_program("""
import threading
import tracedmp as multiprocessing

class Counter:
    def __init__(self):
        self.lock = threading.Lock()
    def bump(self, x):
        return x + 1

if __name__ == "__main__":
    counter = Counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            pool.map(counter.bump, [1])
        except TypeError as e:
            print(e)
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "cannot pickle '_thread.lock' object\n"
    [err] = run.events("pickle_error")
    assert err["path"] == "task.func.__self__.lock"
    assert err["hint"].startswith("a lock cannot be sent")


def test_objects_that_mutate_while_being_pickled(run_program):
    code = """
import json, sys
if sys.argv[1] == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing

class Grows:
    def __init__(self, box):
        self.box = box
    def __reduce__(self):
        self.box["added while pickling"] = 1  # mutates the dict being pickled
        return (Grows, ({},))

class Shrinks:
    def __init__(self, items):
        self.items = items
    def __reduce__(self):
        self.items.clear()
        return (Shrinks, ([],))

if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    out = []
    box = {}
    box["x"] = Grows(box)
    for obj in (box, [Shrinks([1, 2, 3]), 4]):
        try:
            a.send(obj)
            out.append(repr(type(b.recv())))
        except Exception as e:
            out.append(type(e).__name__ + ": " + str(e))
    print(json.dumps(out))
"""
    plain = run_program(code, "plain", env={"TRACEDMP_TRACE": "off"})
    traced = run_program(code, "traced")
    assert plain.returncode == traced.returncode == 0, traced.stderr
    assert traced.output() == plain.output()  # whatever pickle makes of it, the same
    failed = [x for x in plain.output() if not x.startswith("<class")]
    errors = traced.events("pickle_error")
    assert [e["error"] for e in errors] == failed
    assert len(traced.events("pickle", channel="pipe")) == 2 - len(failed)


def test_cloudpickle_register_pickle_by_value_is_respected(tmp_path, monkeypatch):
    import io
    import sys

    import cloudpickle

    from tracedmp._runtime.picklers import pickler_class

    (tmp_path / "byvalmod.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import byvalmod

    monkeypatch.setitem(sys.modules, "byvalmod", byvalmod)  # removed again after the test

    def kinds():
        buf = io.BytesIO()
        p = pickler_class("cloudpickle")(buf, None)
        p._tracedmp_refs, p._tracedmp_by_value = [], None
        p.dump(byvalmod.f)
        return p._tracedmp_by_value, len(buf.getvalue())

    by_reference = kinds()
    assert by_reference[0] is None and kinds() == by_reference  # the second from the cache
    cloudpickle.register_pickle_by_value(byvalmod)
    try:
        by_value, size = kinds()
    finally:
        cloudpickle.unregister_pickle_by_value(byvalmod)
    assert by_value == {id(byvalmod.f)} and size > by_reference[1]
    assert kinds() == by_reference


def test_check_spawn_passes_a_plain_fork_pool(run_program):
    # A fork Pool's queues and locks are made for fork; under spawn the Pool would make them
    # for spawn: the check must not flag them.
    run = run_program("""
import tracedmp as multiprocessing

def square(x):
    return x * x

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(square, range(4))
""", env={"TRACEDMP_CHECK_SPAWN": "1"})
    assert run.returncode == 0, run.stderr
    checks = [r["spawn_check"] for r in run.events("process_start")]
    assert len(checks) == 2 and all(c["would_pickle"] and c["size"] > 500 for c in checks)


REDUCERS = """
import json, sys, threading, time
import tracedmp as multiprocessing

calls = []

class Counted:
    # a reducer with a side effect, and slow: the search for the path must not double either
    def __init__(self, inner):
        self.inner = inner
    def __reduce__(self):
        calls.append(1)
        time.sleep(0.3)
        return (Counted, (self.inner,))

if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    start = time.monotonic()
    try:
        a.send({"part": Counted([threading.Lock()])})
    except TypeError:
        pass
    print(json.dumps({"calls": len(calls), "seconds": time.monotonic() - start}))
"""


@pytest.mark.parametrize("diagnose", [None, "0"])
def test_the_search_runs_no_reducer_twice_where_python_says_the_path(run_program, diagnose):
    import sys

    run = run_program(REDUCERS, env={"TRACEDMP_DIAGNOSE": diagnose})
    assert run.returncode == 0, run.stderr
    out = run.output()
    [err] = run.events("pickle_error")
    # 3.14+ says the path in the exception's notes; older Pythons search only when the failed
    # pickle was quick (a search repeats part of it), and not at all with diagnose off
    assert out["calls"] == 1 and out["seconds"] < 0.6, out
    if sys.version_info >= (3, 14):
        assert err["path"] == "['part'].__reduce__()[1][0][0]"
        assert err["notes"][-1] == "when serializing dict item 'part'"
    else:
        assert err["path"] is None and err["notes"] is None
    assert err["hint"].startswith("a lock cannot be sent")


def test_the_search_pickles_into_a_counting_sink_within_a_byte_budget():
    # ten large parts and the failing one last: no part is copied (BytesIO would hold each)
    import threading
    import tracemalloc

    from tracedmp._runtime import diagnose
    from tracedmp._runtime.picklers import dump_untraced

    obj = [[b"x" * (20 << 20)] for _ in range(10)] + [threading.Lock()]
    try:
        dump_untraced(obj, __import__("io").BytesIO())
    except TypeError as exc:
        tracemalloc.start()
        path, hint, _ = diagnose.diagnose(obj, exc, "pickle", dump=dump_untraced)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert path in ("[10]", None)  # found, or the byte budget ran out on the way: no copy


def test_dict_keys_in_paths_are_shown_only_when_they_cannot_be_data(run_program):
    run = run_program("""
import threading
import tracedmp as multiprocessing

if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    for obj in ({"name": 1, "bob@example.com": {"lock": threading.Lock()}},
                {7: [threading.Lock()]},
                {("secret", "tuple"): threading.Lock()}):
        try:
            a.send(obj)
        except Exception:
            pass
""")
    assert run.returncode == 0, run.stderr
    paths = [e["path"] for e in run.events("pickle_error")]
    assert paths[0] == "[<str key #1>]['lock']"
    assert paths[1] == "[7][0]"
    assert paths[2] in ("[<tuple key #0>]", "[<tuple key>]", "<key <tuple key #0>>")
    with open(run.trace) as f:
        text = f.read()
    assert "bob@example.com" not in text and "secret" not in text


CHECKED = """
import json, resource, sys, time
import tracedmp as multiprocessing

class Drains:
    # hands its items over once: what spawn would do to it, fork must not
    def __init__(self):
        self.items = [1, 2, 3]
    def __getstate__(self):
        state, self.items = dict(self.__dict__), []
        return state

def target(obj, big, q):
    q.put(len(obj.items))

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    big = b"x" * (200 << 20)
    obj = Drains()
    start = time.monotonic()
    seen = []
    for _ in range(4):
        p = ctx.Process(target=target, args=(obj, big, q))
        p.start()
        seen.append(q.get(timeout=30))
        p.join()
    print(json.dumps({"child_saw": seen, "parent_has": len(obj.items),
                      "seconds": time.monotonic() - start,
                      "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10}))
"""


def test_check_spawn_runs_no_reducer_of_the_program_and_copies_nothing(run_program):
    plain = run_program(CHECKED, env={"TRACEDMP_TRACE": "off"})
    checked = run_program(CHECKED, env={"TRACEDMP_CHECK_SPAWN": "1"})
    assert plain.returncode == checked.returncode == 0, (plain.stderr, checked.stderr)
    p, c = plain.output(), checked.output()
    assert c["child_saw"] == p["child_saw"] == [3, 3, 3, 3]
    assert c["parent_has"] == p["parent_has"] == 3
    assert c["peak"] < p["peak"] * 1.2 + (16 << 20), (p["peak"], c["peak"])  # was 3x: copies
    assert c["seconds"] < p["seconds"] + 1.5, (p, c)
    checks = [r["spawn_check"] for r in checked.events("process_start")]
    assert len(checks) == 4
    assert all(x["would_pickle"] and x["size"] > 200 << 20 and x["unchecked"] == 1
               for x in checks), checks


_PicklingError = __import__("pickle").PicklingError


@pytest.mark.parametrize("exc,starts", [
    # Python 3.13 and older, then 3.14's words for the same failures
    (AttributeError("Can't pickle local object 'outer.<locals>.inner'"), "a function or class"),
    (_PicklingError("Can't pickle local object <function outer.<locals>.inner at 0x7f>"),
     "a function or class"),
    (_PicklingError("Can't pickle <function f at 0x7f>: attribute lookup f on __main__ failed"),
     "the child"),
    (_PicklingError("Can't pickle <function f at 0x7f>: it's not found as __main__.f"),
     "the child"),
    (RecursionError("maximum recursion depth exceeded while pickling an object"), "the object"),
    (RecursionError("Stack overflow (used 8156 kB) while pickling an object"), "the object"),
])
def test_hints_know_the_old_and_the_new_messages(exc, starts):
    from tracedmp._runtime.diagnose import hint_for

    assert hint_for(exc, object(), "pickle").startswith(starts)


def test_a_path_read_from_notes_shows_only_safe_keys():
    import threading

    from tracedmp._runtime.diagnose import path_from_notes

    lock = threading.Lock()
    obj = (1, {"a": 1, "bob@example.com": {"lock": lock}})
    notes = ["when serializing dict item 'lock'", "when serializing dict item 'bob@example.com'",
             "when serializing tuple item 1", "a note of the program's own"]
    segments, leaf, _, recorded = path_from_notes(obj, notes)
    assert "".join(segments) == "[1][<str key #1>]['lock']"
    assert leaf is lock
    assert recorded == ["when serializing dict item 'lock'",
                        "when serializing dict item <str key #1>",
                        "when serializing tuple item 1", "a note of the program's own"]
