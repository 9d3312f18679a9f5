"""Faults: killed workers, terminated pools, parents that do not join, closed trace files.
The program behaves as it would untraced, and the trace stays readable."""


import os

import pytest

from tracedmp import read_trace


class Point:
    pass


class Other:
    pass


def test_worker_killed_mid_run(run_program):
    code = """
import os, signal, sys, time
if sys.argv[1] == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing

def slow(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        result = pool.map_async(slow, range(6), chunksize=1)
        try:
            result.get(timeout=3)
            print("finished")
        except multiprocessing.TimeoutError:
            print("timed out")  # the stdlib Pool waits forever for a killed worker's task
"""
    plain = run_program(code, "plain", env={"TRACEDMP_TRACE": "off"})
    traced = run_program(code, "traced")
    assert plain.stdout == traced.stdout == "timed out\n"
    assert plain.returncode == traced.returncode == 0
    trace = read_trace(traced.trace)
    records = list(trace)
    assert trace.truncated_line is None
    assert len([r for r in records if r.channel == "pool.result"]) >= 4


def test_pool_terminated_with_tasks_in_flight(run_program):
    run = run_program("""
import time
import tracedmp as multiprocessing

def slow(x):
    time.sleep(0.05)
    return x

if __name__ == "__main__":
    pool = multiprocessing.get_context("spawn").Pool(2)
    results = pool.imap_unordered(slow, range(200), chunksize=1)
    next(results)  # workers are up and sending (a fixed sleep was too short on a loaded machine)
    time.sleep(0.2)
    pool.terminate()
    pool.join()
    print("terminated")
""")
    assert run.returncode == 0 and run.stdout == "terminated\n", run.stderr
    records = list(read_trace(run.trace))
    results = [r for r in records if r.channel == "pool.result"]
    assert results  # workers' records survive SIGTERM
    for pid in {r.pid for r in records}:
        seqs = sorted(r.seq for r in records if r.pid == pid)
        assert seqs == list(range(len(seqs)))  # nothing lost in between


def test_parent_exits_without_joining(run_program):
    run = run_program("""
import tracedmp as multiprocessing

def child(q):
    q.put("bye")

if __name__ == "__main__":
    q = multiprocessing.get_context("forkserver").Queue()
    multiprocessing.get_context("forkserver").Process(target=child, args=(q,)).start()
    print(q.get(timeout=30))
""")
    assert run.returncode == 0 and run.stdout == "bye\n", run.stderr
    records = list(read_trace(run.trace))
    assert [r.type for r in records if r.channel == "queue"] == ["builtins.str"]
    assert [r.event for r in records].count("process_start") == 1


def test_trace_descriptor_closed_under_tracedmp(run_program):
    # A program that closes every descriptor it does not know about (a daemon, say) loses
    # its trace, not its run.
    run = run_program("""
import os
import tracedmp as multiprocessing
ctx = multiprocessing.get_context("fork")
a, b = ctx.Pipe()
a.send(1); b.recv()
os.closerange(a.fileno() + 2, 1000)
a.send(2); print(b.recv())
""", env={"TRACEDMP_TRACE": "trace.jsonl"})
    assert run.returncode == 0 and run.stdout == "2\n"


def test_module_level_configure_rerun_in_spawned_children(run_program, tmp_path):
    # Spawn re-imports the main module in every child: its configure() runs there too, and must
    # not turn a worker into a "main" process that batches (and loses on terminate) its records.
    run = run_program("""
import tracedmp
tracedmp.configure(trace="configured.jsonl")

def work(x):
    return x

if __name__ == "__main__":
    with tracedmp.get_context("spawn").Pool(2) as pool:
        pool.map(work, range(200), chunksize=1)
""", env={"TRACEDMP_TRACE": "off"})
    assert run.returncode == 0, run.stderr
    records = list(read_trace(tmp_path / "configured.jsonl"))
    assert [r.event for r in records].count("trace_start") == 1
    assert len([r for r in records if r.channel == "pool.result"]) == 200


def test_module_level_objects_in_spawned_children_trace_to_the_parents_file(run_program,
                                                                            tmp_path):
    run = run_program("""
import tracedmp as multiprocessing
lock = multiprocessing.Lock()  # module level: every spawned child makes its own

def child(q):
    q.put("from the child")

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print(q.get(timeout=60))
    p.join()
    print(p.pid)
""", env={"TRACEDMP_TRACE": None})  # the default file, named after the parent's pid
    assert run.returncode == 0 and run.stdout.startswith("from the child\n"), run.stderr
    child = int(run.stdout.split()[-1])
    [trace] = [f for f in os.listdir(tmp_path) if f.startswith("tracedmp-")]
    assert child in [r.pid for r in read_trace(tmp_path / trace) if r.channel == "queue"]


def test_tracing_keeps_no_sent_object_alive(run_program):
    run = run_program("""
import gc, weakref
import tracedmp as multiprocessing

class Big:
    def __init__(self):
        self.data = bytearray(1_000_000)

def size(b):
    return len(b.data)

if __name__ == "__main__":
    q = multiprocessing.Queue()
    b = Big(); queued = weakref.ref(b); q.put(b); del b; q.get(timeout=30)
    q.put(1); q.get(timeout=30)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        b = Big(); mapped = weakref.ref(b); pool.map(size, [b]); del b
        pool.map(size, [Big()])
        gc.collect()
        print(queued() is None, mapped() is None)
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "True True\n"  # the feeder and task-handler threads hold nothing


def test_stopping_tracing_while_another_thread_pickles():
    import io

    from tracedmp._runtime import tracer as _tracer
    from tracedmp._runtime.hooks import traced_dump
    from tracedmp._runtime.picklers import TracingPickler

    assert _tracer.current is None
    data = TracingPickler.dumps([len, {"f": abs}])  # what a thread already inside dumps() does
    import pickle

    assert pickle.loads(data) == [len, {"f": abs}]
    buf = io.BytesIO()
    traced_dump([len], buf)
    assert pickle.loads(buf.getvalue()) == [len]


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle"])
def test_reducers_registered_while_tracing_are_used(tmp_path, pickler):
    """The tracing picklers share one reducer table; registering (or replacing) a reducer
    through ForkingPickler.register or copyreg must reach the next pickle, as in the stdlib."""
    import copyreg
    import pickle
    from multiprocessing import connection
    from multiprocessing.reduction import ForkingPickler

    import tracedmp

    tracedmp.configure(trace=tmp_path / "t.jsonl", pickler=pickler)
    tracedmp.install()
    assert connection._ForkingPickler is not ForkingPickler
    try:
        for reducer in ((str, ("registered",)), (str, ("replaced",))):
            ForkingPickler.register(Point, lambda obj, r=reducer: r)
            data = connection._ForkingPickler.dumps(Point())
            assert pickle.loads(data) == reducer[1][0]
            if pickler == "pickle":  # (cloudpickle writes protocol 5)
                assert bytes(data) == bytes(ForkingPickler.dumps(Point()))
        copyreg.pickle(Other, lambda obj: (str, ("by copyreg",)))
        assert pickle.loads(connection._ForkingPickler.dumps(Other())) == "by copyreg"
        del copyreg.dispatch_table[Other]
        assert type(pickle.loads(connection._ForkingPickler.dumps(Other()))) is Other
    finally:
        ForkingPickler._extra_reducers.pop(Point, None)
        copyreg.dispatch_table.pop(Other, None)


def test_forked_while_off_then_traced_has_its_own_pid(run_program):
    run = run_program("""
import os
import tracedmp

pid = os.fork()
if pid == 0:
    tracedmp.install()
    a, b = tracedmp.Pipe()
    a.send(1); b.recv()
    tracedmp.uninstall()
    os._exit(0)
os.waitpid(pid, 0)
print(pid)
""")
    assert run.returncode == 0, run.stderr
    child = int(run.stdout)
    pipe = [r for r in read_trace(run.trace) if r.channel == "pipe"]
    assert [(r.pid, r.seq) for r in pipe] == [(child, 1)]  # seq 0 is its trace_start


def test_unwritable_default_trace_file_warns_and_runs_untraced():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    # /proc takes no new files, not even from root: the default trace file cannot be made.
    proc = subprocess.run([sys.executable, "-c", "import tracedmp as m; q = m.Queue(); "
                           "q.put(3); print(q.get(timeout=30))"], cwd="/proc", env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "3\n", proc.stderr
    assert "running untraced" in proc.stderr and "Traceback" not in proc.stderr
