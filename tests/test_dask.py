"""Dask distributed: what Dask pickles to send is in the trace, counted against its protocol.

A real ``LocalCluster(processes=True, n_workers=2)`` on 127.0.0.1: the client, the scheduler it
runs in-process and two nanny-spawned workers.  Ground truth: ``counting.py`` (imported by the
program, so in every process: the workers import the program as ``__mp_main__``) wraps
``distributed.protocol``'s ``pickle.dumps`` and ``serialize`` where Dask calls them and appends,
for each outermost call in a thread (one object: a ``serialize`` pickles inside), the bytes it
produced (the pickle stream and its out-of-band buffers, or a serializer's frames) to
``counts.txt``; the trace must hold the same objects, process by process, count and bytes.

Every run is bounded: the program has its own timeouts, runs in its own session, and is killed
with its whole process group if it overruns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("distributed")
pytest.importorskip("numpy")

from tracedmp._read.report import render_text, summarize  # noqa: E402

COUNTING = '''
import os
import threading

_local = threading.local()


def _nbytes(frame):
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def _write(size):
    fd = os.open(os.environ["COUNTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d %d\\n" % (os.getpid(), size))
    os.close(fd)


def _counting_dumps(original):
    def dumps(x, *args, **kwargs):
        if getattr(_local, "depth", 0):
            return original(x, *args, **kwargs)
        buffers = []
        callback = kwargs.get("buffer_callback")
        if callback is not None:
            def count(b):
                with memoryview(b) as view:
                    buffers.append(view.nbytes)
                return callback(b)
            kwargs["buffer_callback"] = count
        _local.depth = 1
        try:
            result = original(x, *args, **kwargs)
        finally:
            _local.depth = 0
        _write(len(result) + sum(buffers))
        return result
    dumps._counting = True
    return dumps


def _counting_serialize(original, serialized):
    def serialize(x, *args, **kwargs):
        if getattr(_local, "depth", 0) or type(x) is serialized:
            return original(x, *args, **kwargs)
        _local.depth = 1
        try:
            header, frames = result = original(x, *args, **kwargs)
        finally:
            _local.depth = 0
        if header.get("serializer") != "error":
            _write(sum(map(_nbytes, frames)))
        return result
    serialize._counting = True
    return serialize


def install():
    import sys
    import distributed
    from distributed.protocol import pickle
    serialize = sys.modules["distributed.protocol.serialize"]
    if getattr(pickle.dumps, "_counting", False):
        return
    dumps = _counting_dumps(pickle.dumps)
    for module in (pickle, sys.modules["distributed.client"],
                   sys.modules["distributed.scheduler"]):
        module.dumps = dumps
    ser = _counting_serialize(serialize.serialize, serialize.Serialized)
    for module in (serialize, sys.modules["distributed.protocol"],
                   sys.modules["distributed.client"]):
        module.serialize = ser
'''

PROGRAM = '''
import json, os, sys, threading
import counting
counting.install()
import numpy as np
from distributed import Client, LocalCluster


def square(x):
    return x * x


def total(a):
    return float(a.sum())


def main():
    offset = 3

    def shifted(x):  # a closure: cloudpickle sends it, by value, with every task
        return x + offset

    out = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster, \\
            Client(cluster, timeout=30) as client:
        futures = client.map(square, range(100))
        more = client.map(shifted, range(10))
        # sum runs on one worker: the squares on the other are transferred to it
        out["total"] = client.submit(sum, futures).result(timeout=60)
        out["shifted"] = client.gather(more)
        big = np.arange(800_000, dtype=np.float64)  # 6.4 MB
        [scattered] = client.scatter([big])
        out["sum"] = float(client.submit(np.sum, scattered).result(timeout=60))
        weights = np.ones(200_000)  # 1.6 MB, embedded in the graph and in its task
        out["weights"] = client.submit(total, weights).result(timeout=60)
        table = np.zeros(20_000)
        for _ in range(3):  # the same data scattered again and again
            client.scatter([table])
        try:
            client.submit(square, threading.Lock(), key="bad").result(timeout=30)
        except Exception as exc:
            out["error"] = [type(exc).__name__, str(exc)]
        out["workers"] = sorted(client.scheduler_info()["workers"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
'''

_RUNS: dict = {}


def _run(tmp_path, code, how, timeout=120):
    """Run ``code`` (with counting.py beside it) plain, or traced by ``tracedmp run``; kill its
    whole session if it overruns."""
    (tmp_path / "counting.py").write_text(COUNTING)
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(code))
    counts, trace = tmp_path / "counts.txt", tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env.update(PYTHONPATH=str(tmp_path), COUNTS=str(counts), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(script)]
    if how == "traced":
        cmd = [sys.executable, "-m", "tracedmp", "run", "--trace", str(trace), str(script)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"timed out; stderr: {stderr[-3000:]}") from None
    finally:
        try:  # anything of the run still alive (a worker the cluster left behind): gone
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, stderr[-3000:]
    line = [x for x in stdout.splitlines() if x.startswith("{")][-1]
    records = []
    if how == "traced":
        records = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
    sizes = [tuple(map(int, x.split())) for x in counts.read_text().splitlines()]
    return json.loads(line), records, sizes


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """The program traced and plain (each ~5 s), shared by the tests below."""
    if not _RUNS:
        _RUNS["traced"] = _run(tmp_path_factory.mktemp("traced"), PROGRAM, "traced")
        _RUNS["plain"] = _run(tmp_path_factory.mktemp("plain"), PROGRAM, "plain")
    return _RUNS


def _dask(records, event="pickle"):
    return [r for r in records if r["event"] == event and r.get("channel", "").startswith("dask.")]


@pytest.mark.timeout(300)
def test_every_object_dask_serializes_is_traced(cluster_runs):
    out, records, sizes = cluster_runs["traced"]
    plain_out, _, _ = cluster_runs["plain"]
    assert out["total"] == sum(x * x for x in range(100)) == plain_out["total"]
    assert out["shifted"] == list(range(3, 13)) and out["sum"] == plain_out["sum"]
    truth: dict = {}
    for pid, size in sizes:
        n, total = truth.get(pid, (0, 0))
        truth[pid] = (n + 1, total + size)
    traced: dict = {}
    for r in _dask(records):
        n, total = traced.get(r["pid"], (0, 0))
        traced[r["pid"]] = (n + 1, total + r["size"])
    assert traced == truth
    assert len(truth) == 3  # the client (with the scheduler) and both workers


@pytest.mark.timeout(300)
def test_channels_keys_and_by_value_functions(cluster_runs):
    out, records, _ = cluster_runs["traced"]
    recs = _dask(records)
    by_channel: dict = {}
    for r in recs:
        by_channel.setdefault(r["channel"], []).append(r)
    tasks = by_channel["dask.task"]
    # 100 squares, 10 shifted, sum, np.sum, total: one run_spec each, from the scheduler
    assert len(tasks) == 113
    assert {r["dask_role"] for r in tasks} == {"scheduler"}
    assert {r["dask_op"] for r in tasks} == {"compute-task"}
    squares = [r for r in tasks if r["dask_prefix"] == "square"]
    assert len(squares) == 100 and len({r["dask_key"] for r in squares}) == 100
    for r in squares:  # __main__.square: found in the pickle, so cloudpickled, by value
        assert r["pickler"] == "cloudpickle"
        assert {"name": "__main__.square", "kind": "value"} in r["callables"]
        assert not [c for c in r["callables"] if c["name"].startswith(("dask.", "distributed."))]
    closures = [r for r in tasks if r["dask_prefix"] == "shifted"]
    assert len(closures) == 10
    assert all({"name": "__main__.main.<locals>.shifted", "kind": "value"} in r["callables"]
               for r in closures)
    graphs = [r for r in by_channel["dask.graph"] if r.get("dask_field") == "expr_ser"]
    assert len(graphs) == 5 and {r["dask_role"] for r in graphs} == {"client"}
    # the array in the graph, out of band, is named where it sits: in the graph, in the task
    [weighted] = [r for r in graphs if r["size"] > 1_600_000]
    assert weighted["buffers"] == 1 and weighted["buffer_bytes"] == 1_600_000
    part = weighted["parts"][0]
    assert part["type"] == "numpy.ndarray" and 1_600_000 < part["size"] < 1_600_200
    assert part["path"].startswith("graph.operands[0]['total-")
    assert part["path"].endswith("'].args[0]")  # the task under that key, its first argument
    [task] = [r for r in tasks if r["dask_prefix"] == "total"]
    assert task["parts"][0]["path"] == "task.args[0]" and task["buffers"] == 1
    assert task["pickler"] == "cloudpickle"  # total is in __main__
    # the squares' results move to the worker summing them, the rest come back to the client
    transfers = by_channel["dask.transfer"]
    assert "square" in {r["dask_prefix"] for r in transfers}
    assert {r["dask_prefix"] for r in transfers} <= {"square", "ndarray"}
    assert set(r["dask_address"] for r in transfers) <= set(out["workers"])
    results = by_channel["dask.result"]
    assert sorted(r["dask_prefix"] for r in results) == ["shifted"] * 10 + ["sum"] * 2 + \
        ["total"]
    assert {r["dask_role"] for r in results} == {"worker"}
    scatter, *again = by_channel["dask.scatter"]
    assert len(again) == 3 and {r["size"] for r in again} == {160_000}
    assert scatter["type"] == "numpy.ndarray" and scatter["pickler"] == "dask"
    assert scatter["size"] >= 6_400_000 and scatter["buffers"] == 1
    assert scatter["buffer_bytes"] == 6_400_000 and scatter["dask_prefix"] == "ndarray"
    for r in recs:
        assert 0 <= r["buffer_bytes"] <= r["size"]
    assert not [r for r in records if r["event"] == "untraced"]


@pytest.mark.timeout(300)
def test_unpicklable_argument(cluster_runs):
    out, records, _ = cluster_runs["traced"]
    plain_out, _, _ = cluster_runs["plain"]
    # Dask's own exception, unchanged (but for the lock's address)
    assert [re.sub("0x[0-9a-f]+", "0x", m) for m in out["error"]] == \
        [re.sub("0x[0-9a-f]+", "0x", m) for m in plain_out["error"]]
    assert out["error"][0] == "TypeError" and "Could not serialize" in out["error"][1]
    [err] = _dask(records, "pickle_error")
    assert err["channel"] == "dask.graph" and err["dask_role"] == "client"
    assert err["error"] == "TypeError: cannot pickle '_thread.lock' object"
    assert err["path"] and err["path"].endswith("]") and "lock" in err["hint"]


@pytest.mark.timeout(300)
def test_report_reads_dask_records(cluster_runs):
    _, records, _ = cluster_runs["traced"]
    data = summarize(records)
    text = render_text(data)
    assert "dask.task" in text and "dask.scatter" in text
    assert "not in this trace" not in text
    found = {f["kind"]: f for f in data["findings"]}
    graph = found["dask_large_graph"]
    assert graph["part"]["type"] == "numpy.ndarray" and "graph.operands[0]['total-" in \
        graph["message"]
    by_value = [f for f in data["findings"] if f["kind"] == "dask_function_by_value"]
    assert {f["name"]: f["count"] for f in by_value} == {
        "__main__.square": 100, "__main__.main.<locals>.shifted": 10}
    assert "function_by_value" not in found  # said once, by the Dask finding
    scattered = found["dask_scattered_repeatedly"]
    assert scattered["count"] == 3 and scattered["size"] == 160_000
    assert "scattered 3 times" in text
    assert {c["channel"] for c in data["dask"]["channels"]} >= {
        "dask.graph", "dask.task", "dask.result", "dask.transfer", "dask.scatter"}


@pytest.mark.timeout(300)
def test_html_report_shows_dask(cluster_runs, tmp_path):
    from test_html_report import browse, text_of

    _, records, _ = cluster_runs["traced"]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    page = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "report", "--html", str(page),
                           str(trace)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dom, requested = browse(page, tmp_path)
    text = text_of(dom)
    assert requested == []
    assert "Dask distributed" in text and "out of band" in text and "task prefix" in text
    assert "dask.transfer" in text and "graph.operands[0]['total-" in text
    assert "was sent by value with each of 100 dask.task messages" in text


UNINSTALL = '''
import json, os, sys
import tracedmp
tracedmp.configure(trace=os.environ["TRACE"])
import distributed
from distributed.protocol import core, pickle as dpickle
import distributed.client as client, distributed.worker as worker
serialize = sys.modules["distributed.protocol.serialize"]
names = lambda: [dpickle.dumps, dpickle.pickle, dpickle.cloudpickle, serialize.serialize,
                 core.dumps, client.serialize, client.dumps, worker.Worker.get_data]
traced = names()
tracedmp.uninstall()
plain = names()
print(json.dumps({
    "changed": [a is not b for a, b in zip(traced, plain)],
    "restored": [getattr(f, "__module__", None) or f.__name__ for f in plain],
}))
'''


@pytest.mark.timeout(120)
def test_installed_with_distributed_and_removed_by_uninstall(run_program, tmp_path):
    trace = str(tmp_path / "t.jsonl")
    run = run_program(UNINSTALL, env={"TRACE": trace}, trace=trace, timeout=90)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(out["changed"]), out
    assert not any(m.startswith("tracedmp") for m in out["restored"]), out
    assert run.records and not [r for r in run.records if r["event"] == "untraced"]


class Holder:
    def __init__(self, a):
        self.a = a


def test_parts_count_out_of_band_buffers():
    """A protocol 5 pickle's buffers travel beside it: each is a part where it sits."""
    import pickle

    import numpy as np

    from tracedmp._runtime import parts

    data = {f"k{i}": i for i in range(40)}
    data["big"] = Holder(np.ones(100_000))
    buffers: list = []
    stream = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    sizes = [memoryview(b).nbytes for b in buffers]
    assert sizes == [800_000] and len(stream) < 2000
    found, whole = parts.attribute_parts(stream, "dask.task", buffers=sizes)
    assert whole and found[0]["path"] == "obj['big'].a"
    assert found[0]["type"] == "numpy.ndarray" and 800_000 < found[0]["size"] < 800_200
    # the stream alone does not know the array is large
    assert "numpy.ndarray" not in {p["type"] for p in parts.attribute_parts(stream, "dask.task")[0]}


SAME_BYTES = '''
import json, os, sys
import numpy as np
import tracedmp
tracedmp.configure(trace=os.environ["TRACE"])
import distributed
from distributed.protocol import pickle as dpickle, to_serialize, Serialize
serialize = sys.modules["distributed.protocol.serialize"]


def local(x):  # in __main__: Dask pickles it again with cloudpickle
    return x


class Odd:  # pickle cannot, cloudpickle can (a lambda inside)
    def __init__(self):
        self.f = lambda: 1


def made():
    out = []
    for obj in [(local, 1), {"a": np.arange(50_000)}, [1, "x", b"y"], Odd(), np.ones(10)]:
        buffers = []
        data = dpickle.dumps(obj, buffer_callback=buffers.append)
        out.append([bytes(data).hex(), [bytes(memoryview(b)).hex() for b in buffers]])
        header, frames = serialize.serialize(Serialize(obj))
        out.append([sorted(header), [bytes(memoryview(f)).hex() for f in frames]])
    return out


traced = made()


def closure():
    data = list(range(10))

    def f():
        return data
    return f


import gc, weakref
f = closure()
dpickle.dumps(f)  # by value, noted while pickled: not kept after
gone = weakref.ref(f)
del f


def locked():
    lock = __import__("threading").Lock()

    def g():
        return lock
    return g


g = locked()
try:
    dpickle.dumps(g)  # fails: a pickle_error, and the function is not kept either
except TypeError:
    pass
failed_gone = weakref.ref(g)
del g
gc.collect()
kept = gone() is not None or failed_gone() is not None
tracedmp.uninstall()
plain = made()
print(json.dumps({"same": [a == b for a, b in zip(traced, plain)], "kept": kept}))
'''


@pytest.mark.timeout(120)
def test_traced_pickles_are_the_same_bytes(run_program, tmp_path):
    trace = str(tmp_path / "t.jsonl")
    run = run_program(SAME_BYTES, env={"TRACE": trace}, trace=trace, timeout=90)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["same"] and all(out["same"]), out
    assert out["kept"] is False  # a function sent is not kept alive by tracing
    recs = [r for r in run.records if r["event"] == "pickle"]
    assert len(recs) == 11  # one per object and call: nothing twice, nothing left out
    assert len([r for r in run.records if r["event"] == "pickle_error"]) == 1
    assert {r["pickler"] for r in recs} == {"pickle", "cloudpickle", "dask"}


def _summary_record(channel, type_, pickler, callables, sizes, seq):
    return {"v": 1, "event": "summary", "ts": 1.0 + seq, "pid": 7, "process": "MainProcess",
            "start_method": "spawn", "seq": seq, "of": "pickle", "channel": channel,
            "kind": "value", "type": type_, "pickler": pickler, "callables": callables,
            "count": sum(n for _, n in sizes), "bytes": sum(s * n for s, n in sizes),
            "min_size": min(s for s, _ in sizes), "max_size": max(s for s, _ in sizes),
            "duration_ns": 1000, "sizes": [list(p) for p in sizes], "sizes_exact": True,
            "since": 1.0}


def test_report_of_a_summary_trace_has_the_dask_findings():
    """Summary mode keeps aggregates, not records: the by-value and scatter findings still
    come out of them (keys and out-of-band bytes are not in a summary, and the report says so)."""
    f = [{"name": "__main__.f", "kind": "value"}]
    records = [
        {"v": 1, "event": "trace_start", "ts": 1.0, "pid": 7, "process": "MainProcess",
         "start_method": "spawn", "seq": 0, "mode": "summary"},
        _summary_record("dask.task", "dask._task_spec.Task", "cloudpickle", f, [(600, 30)], 1),
        _summary_record("dask.task", "dask._task_spec.Task", "cloudpickle", f, [(610, 20)], 2),
        _summary_record("dask.scatter", "numpy.ndarray", "dask", [], [(160_000, 3)], 3),
    ]
    data = summarize(records)
    found = {f["kind"]: f for f in data["findings"]}
    assert found["dask_function_by_value"]["count"] == 50
    assert found["dask_scattered_repeatedly"]["count"] == 3
    assert "function_by_value" not in found
    assert "out-of-band bytes, keys and prefixes are in full records only" in render_text(data)


JOBLIB_DASK = '''
import json
import counting
counting.install()
import joblib
from distributed import Client, LocalCluster


def square(x):
    return x * x


if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as cluster, \\
            Client(cluster, timeout=30):
        with joblib.parallel_config(backend="dask"):
            out = joblib.Parallel()(joblib.delayed(square)(i) for i in range(20))
    print(json.dumps({"out": out}))
'''


@pytest.mark.timeout(300)
def test_joblib_dask_backend_is_traced(tmp_path):
    pytest.importorskip("joblib")
    out, records, sizes = _run(tmp_path, JOBLIB_DASK, "traced")
    assert out["out"] == [i * i for i in range(20)]
    [parallel] = [r for r in records if r["event"] == "parallel"]
    assert parallel["backend"] == "dask" and parallel["pickles"] is True
    tasks = [r for r in _dask(records) if r["channel"] == "dask.task"]
    assert tasks and all({"name": "__main__.square", "kind": "value"} in r["callables"]
                         for r in tasks)
    assert len(_dask(records)) == len(sizes)  # every object Dask serialized, once
    assert not [r for r in records if r["event"] == "untraced"]


TEMPLATED = '''
import gc, json, os, sys, weakref
import tracedmp
tracedmp.configure(trace=os.environ["TRACE"])
import distributed
import distributed.protocol as protocol
from distributed.protocol.serialize import Serialize, ToPickle
from dask._task_spec import Task
import tracedmp._integrations.dask as td


def local(i):  # in __main__: by value
    return i


def closure():
    data = list(range(10))

    def f(i):
        return data
    return f


CONTEXT = {"sender": {"address": "tcp://127.0.0.1:1"}, "recipient": {"address": "tcp://127.0.0.1:2"}}


def send(func, i, key):
    protocol.dumps([{"op": "compute-task", "key": key, "run_spec": ToPickle(Task(key, func, i)),
                     "priority": (0, i)}], context=CONTEXT)
    protocol.dumps({"status": "OK", "data": {key: Serialize((i, "r%"))}}, context=CONTEXT)


def sends(tag):
    for i in range(4):
        send(local, i, f"local-{tag}{i}")
        send(len, i, ("len-%s" % tag, i))  # a built-in, by reference; a tuple key
        send(closure(), i, f"closure-{tag}{i}")


sends("T")
made = len(td._templates)
f = closure()
send(f, 9, "kept-9")
gone = weakref.ref(f)
del f
gc.collect()
td._TEMPLATE_REFS = -1  # every record the dict way
sends("D")
tracedmp.uninstall()
print(json.dumps({"made": made, "kept": gone() is not None}))
'''


@pytest.mark.timeout(120)
def test_templated_records_are_the_dict_records(run_program, tmp_path):
    """Dask records rendered through templates say what the dict path says, and the
    templates keep no function alive."""
    trace = str(tmp_path / "t.jsonl")
    run = run_program(TEMPLATED, env={"TRACE": trace}, trace=trace, timeout=90)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["made"] >= 3 and out["kept"] is False, out
    recs = [r for r in run.records if r["event"] == "pickle" and r["channel"] != "dask.other"]

    def comparable(r):
        r = {k: v for k, v in r.items() if k not in ("ts", "seq", "duration_ns")}
        for field in ("dask_key", "dask_prefix"):  # the same but for the tag
            r[field] = r[field].replace("T", "#").replace("D", "#")
        return r

    templated, plain = recs[:24], recs[26:]
    assert len(plain) == 24 and {r["channel"] for r in plain} == {"dask.task", "dask.result"}
    assert [comparable(r) for r in templated] == [comparable(r) for r in plain]
    assert {c["kind"] for r in plain for c in r["callables"]} == {"value", "reference"}
