"""One record per pickle that crosses a process boundary, on every channel, start method, side."""


import json
import sys

import pytest

from conftest import METHODS

PRELUDE = """
import json, os, sys
import tracedmp as multiprocessing
from multiprocessing.reduction import ForkingPickler

def size(obj):
    return len(ForkingPickler.dumps(obj))

def work(x):
    return x * 2

class Payload:
    def __init__(self, n):
        self.items = list(range(n))
"""


@pytest.mark.parametrize("method", METHODS)
def test_pool_tasks_and_results_from_parent_and_workers(run_program, method):
    run = run_program(PRELUDE + """
if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        out = pool.map(work, range(6), chunksize=1)
        out2 = pool.starmap(divmod, [(7, 2)])
        pool.apply_async(work, (3,)).get(timeout=30)
        list(pool.imap_unordered(work, range(3)))
    from multiprocessing import pool as mpool
    print(json.dumps({"out": out, "pid": os.getpid(), "task_size": size(
        (0, 0, mpool.mapstar, ((work, (0,)),), {}))}))
""", method)
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["out"] == [0, 2, 4, 6, 8, 10]
    tasks = run.events("pickle", channel="pool.task")
    results = run.events("pickle", channel="pool.result")
    assert len([t for t in tasks if t["type"] == "builtins.tuple"]) >= 6 + 1 + 3
    assert {t["pid"] for t in tasks} == {out["pid"]}
    assert {t["start_method"] for t in tasks} == {method}
    assert len(results) >= 6 + 1 + 3
    assert out["pid"] not in {r["pid"] for r in results}
    assert {r["start_method"] for r in results} == {method}
    assert all(r["process"].endswith(tuple("0123456789")) and "PoolWorker" in r["process"]
               for r in results)
    first = next(t for t in tasks if t["type"] == "builtins.tuple")
    assert first["size"] == out["task_size"]
    assert first["kind"] == "value"
    assert first["callables"] == [
        {"name": "multiprocessing.pool.mapstar", "kind": "reference"},
        {"name": "__main__.work", "kind": "reference"},
    ]
    starmap = [t for t in tasks if any(c["name"] == "builtins.divmod" for c in t["callables"])]
    assert starmap and starmap[0]["callables"][0]["name"] == "multiprocessing.pool.starmapstar"
    for r in tasks + results:
        assert r["pickler"] == "pickle" and r["duration_ns"] > 0 and r["v"] == 1


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_children_trace_without_importing_heavy_modules(run_program, method):
    """Every spawned worker pays for what tracing imports (orjson alone: ~12 ms).  Compared with
    a plain run on the same Python: from 3.14 multiprocessing's own children load json,
    dataclasses and inspect."""
    code = """
import sys
if sys.argv[2] == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing

def loaded(x):
    heavy = ("orjson", "json", "structlog", "dataclasses", "inspect", "cloudpickle")
    return [name for name in heavy if name in sys.modules]

if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[1]).Pool(1) as pool:
        print(pool.map(loaded, [[1, abs]] * 3))
"""
    plain = run_program(code, method, "plain", env={"TRACEDMP_TRACE": "off"})
    run = run_program(code, method, "traced")
    assert plain.returncode == run.returncode == 0, (plain.stderr, run.stderr)
    assert run.stdout == plain.stdout
    if sys.version_info < (3, 14):
        assert run.stdout.strip() == "[[], [], []]"
    results = run.events("pickle", channel="pool.result")
    assert len(results) == 3 and all(r["process"].endswith("PoolWorker-1") for r in results)


@pytest.mark.parametrize("method", METHODS)
def test_process_launch_is_pickled_under_spawn_and_forkserver_only(run_program, method):
    run = run_program(PRELUDE + """
def target(data, flag=None):
    pass

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    p = ctx.Process(target=target, args=(Payload(50),), kwargs={"flag": True}, name="child-1")
    p.start()
    p.join()
    print(json.dumps({"exitcode": p.exitcode, "pid": p.pid}))
""", method)
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["exitcode"] == 0
    [start] = run.events("process_start", child="child-1")
    assert start["target"] == "__main__.target"
    assert start["child_pid"] == out["pid"]
    assert start["start_method"] == method
    launch = run.events("pickle", channel="process")
    if method == "fork":
        assert start["pickled"] is False and start["size"] is None
        assert launch == []
    else:
        assert start["pickled"] is True
        parts = {r["part"]: r for r in launch}
        assert set(parts) == {"preparation_data", "process_object"}
        assert parts["preparation_data"]["type"] == "builtins.dict"
        obj = parts["process_object"]
        prefix = {"spawn": "Spawn", "forkserver": "ForkServer"}[method]
        assert obj["type"] == f"multiprocessing.context.{prefix}Process"
        names = {c["name"]: c["kind"] for c in obj["callables"]}
        assert names["__main__.target"] == "reference"
        assert names["__main__.Payload"] == "reference"
        assert start["size"] == sum(r["size"] for r in launch)
        assert all(r["child"] == "child-1" and r["start_method"] == method for r in launch)


@pytest.mark.parametrize("method", METHODS)
def test_queues_pipes_from_parent_and_child(run_program, method):
    run = run_program(PRELUDE + """
def child(q, jq, sq, conn, report):
    q.put(["from", "child"])
    jq.put({"job": 1})
    sq.put(("simple",))
    conn.send(Payload(5))
    with open(report, "w") as f:  # what plain multiprocessing would send, seen in the child
        json.dump([size(["from", "child"]), size({"job": 1}), size(("simple",)),
                   size(Payload(5))], f)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    q, jq, sq = ctx.Queue(), ctx.JoinableQueue(), ctx.SimpleQueue()
    a, b = ctx.Pipe()
    p = ctx.Process(target=child, args=(q, jq, sq, b, "sizes.json"))
    p.start()
    got = [q.get(timeout=30), jq.get(timeout=30), sq.get(), a.recv().items]
    jq.task_done()
    q.put("parent-put")
    assert q.get(timeout=30) == "parent-put"
    p.join()
    print(json.dumps({"child": p.pid, "parent": os.getpid(), "got": got,
                      "sizes": json.load(open("sizes.json"))}))
""", method)
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["got"] == [["from", "child"], {"job": 1}, ["simple"], [0, 1, 2, 3, 4]]
    child = [r for r in run.events("pickle") if r["pid"] == out["child"]]
    # A spawned child re-imports the main module as __mp_main__: its classes are named so.
    by_type = {r["type"].replace("__mp_main__.", "__main__."): r for r in child}
    assert by_type["builtins.list"]["channel"] == "queue"
    assert by_type["builtins.dict"]["channel"] == "queue"
    assert by_type["builtins.tuple"]["channel"] == "queue"
    assert by_type["__main__.Payload"]["channel"] == "pipe"
    assert [by_type[t]["size"] for t in ("builtins.list", "builtins.dict", "builtins.tuple",
                                          "__main__.Payload")] == out["sizes"]
    assert [c["name"].replace("__mp_main__.", "__main__.")
            for c in by_type["__main__.Payload"]["callables"]] == ["__main__.Payload"]
    assert all(r["start_method"] == method for r in child)
    parent_put = [r for r in run.events("pickle", channel="queue") if r["pid"] == out["parent"]]
    assert [r["type"] for r in parent_put] == ["builtins.str"]


@pytest.mark.parametrize("method", METHODS)
def test_manager_traffic_from_client_and_server(run_program, method):
    run = run_program(PRELUDE + """
if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Manager() as m:
        d = m.dict()
        d["k"] = [1, 2, 3]
        value = d["k"]
        server_pid = m._process.pid
    print(json.dumps({"value": value, "server": server_pid, "parent": os.getpid()}))
""", method)
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["value"] == [1, 2, 3]
    manager = run.events("pickle", channel="manager")
    pids = {r["pid"] for r in manager}
    assert out["parent"] in pids and out["server"] in pids
    [start] = [r for r in run.events("process_start") if r["child_pid"] == out["server"]]
    assert start["target"].endswith("BaseManager._run_server")


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_with_a_tracedmp_context(run_program, method):
    run = run_program(PRELUDE + """
import concurrent.futures

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        out = list(ex.map(work, range(5)))
    print(json.dumps({"out": out, "parent": os.getpid()}))
""", method)
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["out"] == [0, 2, 4, 6, 8]
    calls = run.events("pickle", channel="executor.call")
    results = run.events("pickle", channel="executor.result")
    assert {r["pid"] for r in calls} == {out["parent"]}
    assert any("__main__.work" in [c["name"] for c in r["callables"]] for r in calls)
    assert results and out["parent"] not in {r["pid"] for r in results}


def test_unpickling_is_traced_on_request(run_program):
    run = run_program(PRELUDE + """
if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        pool.map(work, range(3), chunksize=1)
    a, b = ctx.Pipe()
    a.send("hi")
    b.recv()
""", env={"TRACEDMP_UNPICKLE": "1"})
    assert run.returncode == 0, run.stderr
    loads = run.events("unpickle")
    channels = {r["channel"] for r in loads}
    assert {"pool.task", "pool.result", "pipe"} <= channels
    pipe = [r for r in loads if r["channel"] == "pipe"]
    assert pipe[0]["type"] == "builtins.str" and pipe[0]["size"] == len(
        __import__("pickle").dumps("hi", protocol=4))


def test_trace_start_record_and_contract_fields(run_program):
    run = run_program(PRELUDE + """
if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    a.send(1); b.recv()
""")
    assert run.returncode == 0, run.stderr
    first = run.records[0]
    assert first["event"] == "trace_start" and first["tracedmp"] and first["program"] == "prog.py"
    for r in run.records:
        for key in ("v", "event", "ts", "pid", "process", "start_method", "seq"):
            assert key in r, (key, r)
        assert r["start_method"] in ("fork", "spawn", "forkserver")
    seqs = [r["seq"] for r in run.records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_records_follow_a_start_method_changed_mid_run(run_program):
    # The same call site sends again after each change: its cached record template must not
    # keep the start method it was made under.
    run = run_program(PRELUDE + """
if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    for method in ("fork", "spawn", "forkserver", "fork"):
        multiprocessing.set_start_method(method, force=True)
        for _ in range(2):
            a.send(1); b.recv()
""")
    assert run.returncode == 0, run.stderr
    sends = run.events("pickle", channel="pipe")
    assert [r["start_method"] for r in sends] == [
        "fork", "fork", "spawn", "spawn", "forkserver", "forkserver", "fork", "fork"]


def test_trace_never_holds_authkey_or_contents(run_program):
    secret = "S3CR3T-payload-text"
    run = run_program(PRELUDE + f"""
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    q.put({secret!r})
    q.get(timeout=30)
    with ctx.Manager() as m:
        m.list([{secret!r}])
    print(json.dumps({{"authkey": bytes(multiprocessing.current_process().authkey).hex()}}))
""")
    assert run.returncode == 0, run.stderr
    with open(run.trace, "rb") as f:
        text = f.read()
    authkey = bytes.fromhex(run.output()["authkey"])
    assert secret.encode() not in text
    assert authkey not in text and authkey.hex().encode() not in text


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_childs_first_use_of_anything_is_traced(run_program, method):
    # Each child does one thing first, through the stdlib's names only: every one is traced as
    # it would be in the parent, grandchildren included.
    run = run_program("""
import io, json, os, sys
import multiprocessing as std
import tracedmp

def noop():
    pass

def child(first, method):
    if first == "dump":
        std.reduction.dump({"k": 1}, io.BytesIO())
    elif first == "start":
        p = std.get_context(method).Process(target=noop)
        p.start()
        p.join()
    elif first == "pipe":
        a, b = std.Pipe()
        a.send([1])
        b.recv()
    elif first == "fork":
        pid = os.fork()
        if pid == 0:
            a, b = std.Pipe()
            a.send([2])
            b.recv()
            os._exit(0)
        os.waitpid(pid, 0)
    elif first == "api":
        print(json.dumps([tracedmp.is_tracing(), tracedmp.get_config().trace]), flush=True)

if __name__ == "__main__":
    ctx = tracedmp.get_context(sys.argv[1])
    for first in ("dump", "start", "pipe", "fork", "api"):
        p = ctx.Process(target=child, args=(first, sys.argv[1]), name=first)
        p.start()
        p.join()
""", method)
    assert run.returncode == 0, run.stderr
    pid = {r["child"]: r["child_pid"] for r in run.events("process_start")}
    assert run.events("pickle", channel="reducer", pid=pid["dump"])
    assert run.events("process_start", pid=pid["start"], target="__mp_main__.noop")
    assert run.events("pickle", channel="process", pid=pid["start"])
    assert run.events("pickle", channel="pipe", pid=pid["pipe"])
    forked = [r for r in run.events("pickle", channel="pipe") if r["pid"] not in pid.values()]
    assert len(forked) == 1 and forked[0]["seq"] == 0 and forked[0]["process"] == "fork"
    assert json.loads(run.stdout) == [True, run.trace]


def test_a_fork_while_a_child_starts_tracing_does_not_hang_the_grandchild(run_program):
    run = run_program("""
import os, signal, sys
import multiprocessing as std
import tracedmp
from tracedmp._runtime import child as _child

def child():
    with _child._lock:  # as if another thread were starting tracing right now
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hang ends the grandchild instead of the test run
            a, b = std.Pipe()
            a.send([3])
            b.recv()
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode")
          else status)

if __name__ == "__main__":
    p = tracedmp.get_context("spawn").Process(target=child)
    p.start()
    p.join()
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0"
    assert len(run.events("pickle", channel="pipe")) == 1


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_tracedmp_process_child_traces_with_its_parents_settings(run_program, tmp_path, method):
    # The child unpickles a tracedmp.Process, then starts one: tracing there follows the
    # parent's configure(), not the environment the child also has.
    configured = tmp_path / "configured.jsonl"
    run = run_program("""
import sys
import tracedmp

def noop():
    pass

def child():
    tracedmp.Process(target=noop, name="grandchild").start()

if __name__ == "__main__":
    tracedmp.configure(trace=sys.argv[2])  # before any use: set_start_method starts tracing
    tracedmp.set_start_method(sys.argv[1])
    p = tracedmp.Process(target=child, name="child")
    p.start()
    p.join()
""", method, str(configured))
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in configured.read_text().splitlines() if line.strip()]
    starts = {r["child"]: r for r in records if r["event"] == "process_start"}
    assert starts["grandchild"]["pid"] == starts["child"]["child_pid"]
    assert not run.records  # nothing went to the environment's file


def test_process_start_records_name_each_child_and_target(run_program):
    # process_start lines come from templates cached by target: each must still name its own
    # child, target and parent.
    run = run_program(PRELUDE + """
class Worker:
    def go(self):
        pass

class Custom(multiprocessing.Process):
    def run(self):
        pass

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    starts = [ctx.Process(target=work, args=(1,), name="a"),
              ctx.Process(target=work, args=(2,), name='b"%s'),
              ctx.Process(target=Worker().go, name="c"), ctx.Process(target=Worker().go, name="d"),
              Custom(name="e"), ctx.Process(target=work, args=(3,), name="f")]
    for i, p in enumerate(starts):
        if i == 4:
            multiprocessing.current_process().name = "Renamed"
        p.start()
        p.join()
""")
    assert run.returncode == 0, run.stderr
    got = [(r["child"], r["target"], r["process"], r["child_pid"] > 0)
           for r in run.events("process_start")]
    assert got == [("a", "__main__.work", "MainProcess", True),
                   ('b"%s', "__main__.work", "MainProcess", True),
                   ("c", "__main__.Worker.go", "MainProcess", True),
                   ("d", "__main__.Worker.go", "MainProcess", True),
                   ("e", "__main__.Custom.run", "Renamed", True),
                   ("f", "__main__.work", "Renamed", True)]


def test_forkserver_children_inherit_tracings_modules(run_program):
    # Loaded once in the fork server, not again in every child it forks (~2.5 ms each); the
    # program's own preload list is kept.
    run = run_program("""
import sys
import tracedmp as multiprocessing
from multiprocessing import forkserver

def work(q):
    q.put(1)

if __name__ == "__main__":
    multiprocessing.set_forkserver_preload(["json"])
    ctx = multiprocessing.get_context("forkserver")
    q = ctx.SimpleQueue()
    for _ in range(3):
        p = ctx.Process(target=work, args=(q,))
        p.start()
        assert q.get() == 1
        p.join()
    print(forkserver._forkserver._preload_modules)
""", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("['json', 'tracedmp._runtime.hooks'")
    imports = [line for line in run.stderr.splitlines()
               if line.rsplit("|", 1)[-1].strip() == "tracedmp._runtime.hooks"]
    assert len(imports) == 2, imports  # the program and the server; none in the 3 children
    assert len(run.events("pickle", channel="queue")) >= 3  # the children traced all the same
