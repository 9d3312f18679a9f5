"""Dask processes tracedmp did not start (``dask scheduler``, ``dask worker`` run on their own,
standing in for other machines) forward their records into the traced client's trace.

The scheduler and workers are real processes on 127.0.0.1 (random ports), started here without
any tracedmp setting and killed by pid; the client is a traced program (``tracedmp run``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracedmp._read.reader import read_trace
from tracedmp._read.report import render_text as render
from tracedmp._read.report import summarize_file

# Skipped without distributed (pip install 'tracedmp[dask]'); not imported by this process but
# in the one unit test of the client's end (the traced programs and the cluster are
# subprocesses), so other tests see no Dask.
pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                 reason="distributed is not installed")]
INTERVAL = 0.5  # dask_plugin.INTERVAL
MAX_LINE = 256 * 1024  # dask_plugin.MAX_LINE

DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


def _env(extra_path: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEDMP_", "DASK_"))}
    env["DASK_DISTRIBUTED__ADMIN__TICK__LIMIT"] = "60s"  # a loaded machine: no tick warnings
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list = []
        file = tmp / "scheduler.json"
        self.scheduler = self._start(DASK + ["--host", "127.0.0.1", "--port", "0",
                                             "--no-dashboard", "--scheduler-file", str(file)],
                                     "scheduler")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.address = json.loads(file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                assert self.scheduler.poll() is None, (tmp / "scheduler.log").read_text()
                time.sleep(0.1)
        else:
            raise AssertionError("the scheduler did not start in 60 s")

    def _start(self, argv: list, name: str, extra_path: str = "") -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env=_env(extra_path), cwd=self.tmp)
        log.close()
        self.procs.append(proc)
        return proc

    def worker(self, name: str = "w", extra_path: str = "") -> subprocess.Popen:
        return self._start(WORKER + [self.address, "--no-nanny", "--nthreads", "2",
                                     "--no-dashboard", "--host", "127.0.0.1", "--name", name],
                           name, extra_path)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


PROGRAM = '''
import json, multiprocessing, os, sys, time
from distributed import Client

def task(x):
    # Any record the worker makes is forwarded: a Queue's put is one.
    q = multiprocessing.Queue()
    q.put(("item", x))
    q.get()
    q.close()
    q.join_thread()
    return os.getpid()

def pooled(n):
    # (spawn: a fork in the worker, a process with many threads, can hang, traced or not)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return sum(pool.map(abs, range(n)))

if __name__ == "__main__":
    with Client(sys.argv[1]) as client:
        client.wait_for_workers(int(sys.argv[2]), timeout=60)
        pids = client.gather(client.map(task, range(20)))
        pooled_sum = client.submit(pooled, 5).result()
        workers = client.run(lambda dask_worker: [os.getpid(), list(dask_worker.plugins)])
    print(json.dumps({"pids": sorted(set(pids)), "pooled": pooled_sum, "workers": workers}))
'''


def _run(tmp_path: Path, code: str, *args: str, timeout: float = 120):
    script = tmp_path / "prog.py"
    script.write_text(code)
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", str(trace),
                           str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in trace.read_bytes().splitlines() if line.strip()]
    return json.loads(proc.stdout.strip().splitlines()[-1]), records, str(trace)


def test_separate_worker_and_scheduler_records_reach_the_client_trace(cluster, tmp_path):
    cluster.worker()
    out, records, trace = _run(tmp_path, PROGRAM, cluster.address, "1")
    (address, (worker_pid, plugins)), = out["workers"].items()
    assert "tracedmp" in plugins and out["pids"] == [worker_pid]
    queue = [r for r in records if r.get("channel") == "queue" and r["pid"] == worker_pid]
    assert len(queue) == 20  # one put per task, each once
    assert {(r["dask_role"], r["dask_address"], r["host"]) for r in queue} == {
        ("worker", address, socket.gethostname())}
    # The task's own Pool: its worker (a child of the Dask worker) wrote to the spool file.
    results = [r for r in records if r.get("channel") == "pool.result" and r.get("host")]
    assert results and all(r["pid"] != worker_pid for r in results)
    starts = {r["role"]: r for r in records if r["event"] == "remote_start"}
    assert starts["worker"]["remote_pid"] == worker_pid
    assert starts["worker"]["address"] == address
    assert starts["scheduler"]["address"] == cluster.address
    assert starts["scheduler"]["remote_pid"] == cluster.scheduler.pid
    assert not [r for r in records if r["event"] in ("remote_lost", "remote_untraced",
                                                     "remote_refused")]
    # Each forwarded process's numbers are whole: nothing lost, nothing twice.
    forwarded = [r for r in records if r.get("host")]
    for pid in {r["pid"] for r in forwarded}:
        seqs = sorted(r["seq"] for r in forwarded if r["pid"] == pid)
        assert seqs == list(range(len(seqs))), pid
    read = read_trace(trace)
    list(read.dicts())
    assert read.missing == []
    # Closing the client unregistered the plugin: the worker forwards nothing now.
    assert not list(Path(tempfile_dir()).glob(f"tracedmp-forward-{worker_pid}-*"))


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_a_killed_worker_s_loss_is_bounded_and_reported(cluster, tmp_path):
    cluster.worker()
    code = '''
import json, multiprocessing, os, signal, sys, time
from distributed import Client

def busy(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:  # records all the time, up to the kill
        q = multiprocessing.Queue()
        q.put(n)
        q.get()
        q.close()
        q.join_thread()
        n += 1
        time.sleep(0.01)
    return n

if __name__ == "__main__":
    with Client(sys.argv[1]) as client:
        client.wait_for_workers(1, timeout=60)
        (pid,) = client.run(os.getpid).values()
        future = client.submit(busy, 30)
        time.sleep(3)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    print(json.dumps({"pid": pid}))
'''
    out, records, trace = _run(tmp_path, code, cluster.address)
    pid = out["pid"]
    forwarded = [r for r in records if r.get("channel") == "queue" and r["pid"] == pid]
    assert len(forwarded) >= 10  # ~3 s of records came before the kill
    (lost,) = [r for r in records if r["event"] == "remote_lost"]
    assert lost["remote_pid"] == pid and lost["role"] == "worker"
    assert "went away" in lost["reason"]
    assert lost["last_seq"] == max(r["seq"] for r in records if r["pid"] == pid
                                   and r.get("host"))
    assert lost["interval"] == INTERVAL
    # Bounded: the records that came cover the run up to about one interval before the kill.
    last_ts = max(r["ts"] for r in forwarded)
    assert lost["ts"] - last_ts < 30
    text = render(summarize_file(trace))
    assert "Records lost" in text and f"pid {pid} on" in text and "are lost" in text


def test_a_worker_without_tracedmp_is_named_in_the_trace(cluster, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTracedmp:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tracedmp' or name.startswith('tracedmp.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoTracedmp())\n")
    cluster.worker("blind", extra_path=str(blocker))
    out, records, trace = _run(tmp_path, PROGRAM.replace(
        "workers = client.run(lambda dask_worker: [os.getpid(), list(dask_worker.plugins)])",
        "workers = {}"), cluster.address, "1")
    untraced = [r for r in records if r["event"] == "remote_untraced" and r["role"] == "worker"]
    assert untraced and "tracedmp" in untraced[0]["error"]
    assert untraced[0]["address"].startswith("tcp://127.0.0.1:")
    assert "Not traced" in render(summarize_file(trace))


def test_uninstall_removes_the_client_hook_and_the_plugins(cluster, tmp_path):
    cluster.worker()
    code = '''
import json, multiprocessing, os, sys
import tracedmp
from distributed import Client
from distributed.client import Client as K

def task(x):
    q = multiprocessing.Queue()
    q.put(x)
    q.get()
    q.close()
    q.join_thread()
    return x

if __name__ == "__main__":
    client = Client(sys.argv[1])
    client.wait_for_workers(1, timeout=60)
    client.gather(client.map(task, range(5)))
    ours = lambda f: f.__code__.co_filename.endswith("dask_plugin.py")
    patched = ours(K._start) and ours(K._close)
    tracedmp.uninstall()
    after = [ours(K._start), ours(K._close)]
    plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
    client.gather(client.map(task, range(100, 107)))
    client.close()
    print(json.dumps({"patched": patched, "after": after,
                      "plugins": list(plugins.values())}))
'''
    out, records, trace = _run(tmp_path, code, cluster.address)
    assert out["patched"] and out["after"] == [False, False]
    assert [p for p in out["plugins"][0] if p == "tracedmp"] == []
    queue = [r for r in records if r.get("channel") == "queue" and r.get("host")]
    assert len(queue) == 5  # the tasks after uninstall() were not traced
    assert not [r for r in records if r["event"] == "remote_lost"]


def test_localcluster_workers_are_traced_once(tmp_path):
    code = '''
import json, multiprocessing, os, sys
from distributed import Client, LocalCluster

def task(x):
    q = multiprocessing.Queue()
    q.put(x)
    q.get()
    q.close()
    q.join_thread()
    return os.getpid()

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = sorted(set(client.gather(client.map(task, range(12)))))
    print(json.dumps({"pids": pids}))
'''
    out, records, _ = _run(tmp_path, code)
    (pid,) = out["pids"]
    queue = [r for r in records if r.get("channel") == "queue" and r["pid"] == pid
             and r["type"] == "builtins.int"]
    assert len(queue) == 12  # written by the worker itself, not forwarded a second time
    assert not [r for r in records if r.get("host")]
    assert not [r for r in records if r["event"].startswith("remote_")]


# -- the client's end, without a cluster: what it writes of what arrives ------------------------

class _Sink:
    def __init__(self) -> None:
        self.lines: list = []

    def write(self, line: bytes) -> None:
        self.lines.append(line)


class _Tracer:
    _processors = ()

    def __init__(self) -> None:
        self.sink = _Sink()

    def emit(self, rec: dict) -> None:
        self.sink.write(json.dumps(rec).encode() + b"\n")


def _batch(lines: bytes, **identity) -> tuple:
    msg = {"v": 1, "kind": "batch", "role": "worker", "address": "tcp://10.0.0.2:1234",
           "host": "other", "pid": 77, "n": 0, "lines": lines}
    msg.update(identity)
    return (0.0, msg)


def test_the_client_writes_only_whole_records_of_what_arrives():
    # In a fresh interpreter: dask_plugin imports distributed, which this process must not (the
    # other tests' programs would see it imported).
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); "
                           "import test_dask_remote as t; t._client_checks(); print('ok')"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _client_checks() -> None:
    from tracedmp._integrations import dask_plugin  # (imports distributed)

    assert (dask_plugin.INTERVAL, dask_plugin.MAX_LINE) == (INTERVAL, MAX_LINE)
    tracer = _Tracer()
    receiver = dask_plugin.Receiver(tracer, client=None)
    good = b'{"v":1,"event":"pickle","ts":1.0,"pid":77,"process":"w","seq":0,"size":3}'
    hostile = [
        b'{"v":1,"event":"pickle","pid":77,"seq":1}{"v":1,"event":"x","pid":1,"seq":0}',
        b'{"v":1,"event":"pickle","pid":77,"seq":2,"size":NaN}',
        b'{"v":1,"event":"pickle","pid":77,"seq":3,\r"size":1}',
        b'[1, 2]',
        b'{"v":1,"event":"pickle","pid":"77","seq":4}',
        b'{"v":2,"event":"pickle","pid":77,"seq":5}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"v":1,"event":"pickle","pid":77,"seq":6,"x":"' + b"a" * MAX_LINE + b'"}',
        b'\xff\xfe{"v":1}',
    ]
    receiver(_batch(b"\n".join([good, *hostile]) + b"\n"))
    receiver((0.0, "not a dict"))
    receiver((0.0, {"kind": "batch", "role": "nanny", "address": "x", "host": "h", "pid": 1,
                    "lines": good}))
    receiver(_batch(good.replace(b'"seq":0', b'"seq":7,"host":"liar"')))
    dask_record = good.replace(b'"seq":0', b'"seq":8,"dask_role":"worker","dask_address":"a"')
    receiver(_batch(dask_record))
    lines = tracer.sink.lines
    start = json.loads(lines[0])
    assert start["event"] == "remote_start" and start["remote_pid"] == 77
    written = [json.loads(line) for line in lines[1:]]
    for line in lines:
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert [(r["seq"], r["host"], r["dask_role"], r["dask_address"]) for r in written] == [
        (0, "other", "worker", "tcp://10.0.0.2:1234"),
        (7, "other", "worker", "tcp://10.0.0.2:1234"),
        (8, "other", "worker", "a")]  # a Dask record names its sender already
    assert lines[-1] == dask_record[:-1] + b',"host":"other"}\n'
    receiver.finish()
    notes = [json.loads(line) for line in lines[4:]]
    assert [n["event"] for n in notes] == ["remote_lost", "remote_refused"]
    assert notes[0]["last_seq"] == 8 and notes[1]["lines"] == len(hostile)


def test_forwarding_sink_batches_and_hands_on_its_children_spool(tmp_path):
    from tracedmp._runtime.forward import ForwardingSink

    woken = []
    sink = ForwardingSink(str(tmp_path / "spool.jsonl"), lambda: woken.append(1), max_lines=3)
    for i in range(5):
        sink.write(b'{"n":%d}\n' % i)
    assert woken == [1]  # once, until the next take
    with open(tmp_path / "spool.jsonl", "wb") as f:
        f.write(b'{"child":1}\n{"child":2')  # the second still being written
    assert sink.take(16) == b'{"n":0}\n{"n":1}\n'
    assert sink.take() == b'{"n":2}\n{"n":3}\n{"n":4}\n{"child":1}\n'
    with open(tmp_path / "spool.jsonl", "ab") as f:
        f.write(b'}\n')
    assert sink.take() == b'{"child":2}\n'
    assert sink.take() == b""
    small = ForwardingSink(str(tmp_path / "none.jsonl"), lambda: None, max_bytes=10, cap=20)
    for _ in range(10):
        small.write(b"x" * 9 + b"\n")
    assert small.dropped == 8 and len(small.take()) == 20  # past the cap: dropped, counted
    sink.close(remove=True)
    assert not (tmp_path / "spool.jsonl").exists()


def test_killed_process_records_keyed_by_host_in_the_reader(tmp_path):
    trace = tmp_path / "t.jsonl"
    lines = [{"v": 1, "event": "trace_start", "pid": 5, "seq": 0, "ts": 1.0, "process": "M"}]
    lines += [{"v": 1, "event": "pickle", "pid": 5, "seq": s, "ts": 1.0, "process": "M",
               "host": "elsewhere", "dask_role": "worker", "dask_address": "tcp://x:1"}
              for s in (0, 1, 3)]
    lines += [{"v": 1, "event": "pickle", "pid": 5, "seq": 1, "ts": 1.0, "process": "M"}]
    trace.write_text("".join(json.dumps(r) + "\n" for r in lines))
    read = read_trace(str(trace))
    list(read.dicts())
    (missing,) = read.missing
    assert (missing.pid, missing.host, missing.ranges) == (5, "elsewhere", [(2, 2)])
    assert "pid 5 on elsewhere" in render(summarize_file(str(trace)))
