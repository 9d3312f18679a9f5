"""The trace file in a hostile program: descriptors closed under it, signal handlers, kills,
paths that are not regular files of the user's."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import METHODS

import tracedmp
from tracedmp import TraceFileError

DAEMON_LIKE = """
import os, sys
import tracedmp as multiprocessing

def ping(n):
    a, b = multiprocessing.Pipe()
    for i in range(n):
        a.send(i)
        assert b.recv() == i

def daemon_like(folder):
    ping(1)  # tracedmp's descriptor is open in this process now
    os.closerange(3, 1 << 16)  # what daemons do: close every descriptor they did not open
    files = [open(os.path.join(folder, f"own-{k}.log"), "w") for k in range(20)]
    ping(3000)  # a Pipe of the program's own, where tracedmp's descriptor was
    for f in files:
        f.write("mine\\n")
        f.close()

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    ping(1)
    p = ctx.Process(target=daemon_like, args=(sys.argv[2],))
    p.start()
    p.join(60)
    if sys.argv[3] == "main-too":
        daemon_like(sys.argv[2])
    print(p.exitcode)
"""


@pytest.mark.parametrize("method", METHODS)
def test_closed_descriptors_never_get_trace_lines(run_program, tmp_path, method):
    where = "main-too" if method == "fork" else "child"
    run = run_program(DAEMON_LIKE, method, str(tmp_path), where, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "0\n"
    assert run.stderr == ""
    for k in range(20):  # the program's files hold only what it wrote
        assert (tmp_path / f"own-{k}.log").read_text() == "mine\n"
    pipes = {}
    for r in run.events("pickle", channel="pipe"):
        pipes.setdefault(r["pid"], []).append(r["seq"])
    counts = sorted(len(s) for s in pipes.values())
    assert counts == ([3001, 3002] if where == "main-too" else [1, 3001]), counts
    for seqs in pipes.values():  # reopened by path: nothing lost
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


SIGNAL_STARTS = """
import signal, sys, time
import tracedmp as multiprocessing
from tracedmp._runtime import tracer

def noop():
    pass

started, busy = [], False

def on_alarm(signum, frame):
    # Starts a process exactly when the handler interrupted the trace file's own bookkeeping.
    global busy
    sink = tracer.current.sink
    if busy or len(started) >= 3 or not sink._lock.locked():
        return
    busy = True
    t = time.monotonic()
    p = multiprocessing.get_context("fork").Process(target=noop)
    p.start()
    p.join()
    started.append(time.monotonic() - t)
    busy = False

if __name__ == "__main__":
    a, b = multiprocessing.Pipe()
    a.send(0)
    b.recv()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    deadline = time.monotonic() + 20
    sent = 0
    while len(started) < 3 and time.monotonic() < deadline:
        a.send(sent)
        b.recv()
        sent += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(len(started), max(started), sent)
"""


def test_a_process_started_from_a_signal_handler_never_waits(run_program):
    run = run_program(SIGNAL_STARTS, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "RecursionError" not in run.stderr and run.stderr == ""
    count, slowest, sent = run.stdout.split()
    assert int(count) == 3  # the handler did interrupt the sink three times
    assert float(slowest) < 2.0  # a fork start, not a 5 s wait on a lock
    assert len(run.events("process_start")) == 3
    main = [r["seq"] for r in run.records if r["pid"] == run.records[0]["pid"]]
    assert sorted(main) == list(range(len(main)))  # none lost, none twice
    assert len(run.events("pickle", channel="pipe")) == int(sent) + 1


POOL_UNTIL_KILLED = """
import sys, time
import tracedmp as multiprocessing

def work(x):
    return x

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        for i in range(10**6):  # one task at a time: its record is among the newest
            pool.apply(work, (i,))
            print("done", i + 1, flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("method", METHODS)
def test_a_killed_main_process_loses_no_record(tmp_path, method, sig):
    script = tmp_path / "prog.py"
    script.write_text(POOL_UNTIL_KILLED)
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = str(trace)
    # A session of its own: the Pool's workers (and a fork server) are killed with it after.
    proc = subprocess.Popen([sys.executable, str(script), method], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        done = 0
        deadline = time.monotonic() + 60
        while done < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            done = int(line.split()[1])
        os.kill(proc.pid, sig)
        assert proc.wait(30) == -sig
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its workers
        except ProcessLookupError:
            pass
        proc.wait(30)
    for line in proc.stdout:  # what it printed before the signal landed
        done = int(line.split()[1])
    proc.stdout.close()
    proc.stderr.close()
    with open(trace, "rb") as f:
        records = [json.loads(line) for line in f if line.strip()]
    main_pid = proc.pid
    mine = [r for r in records if r["pid"] == main_pid]
    tasks = [r for r in mine if r["event"] == "pickle" and r.get("channel") == "pool.task"]
    assert done >= 150
    assert len(tasks) >= done  # every task it had a result for was recorded, and kept
    seqs = sorted(r["seq"] for r in mine)
    assert seqs == list(range(len(seqs)))  # and nothing before it is missing


def test_a_fifo_as_trace_path_is_an_error_not_a_hang(run_program, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    run = run_program("""
import tracedmp as multiprocessing
a, b = multiprocessing.Pipe()
a.send(1)
print(b.recv())
""", env={"TRACEDMP_TRACE": str(fifo)}, timeout=30)
    assert run.returncode == 0 and run.stdout == "1\n"
    assert run.stderr.count("\n") == 1 and "is a FIFO, not a regular file" in run.stderr
    (tmp_path / "ran.py").write_text("print('ran')\n")
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", str(fifo),
                           str(tmp_path / "ran.py")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "is a FIFO, not a regular file" in proc.stderr


@pytest.mark.parametrize("path", ["/dev/null", "dir"])
def test_a_trace_path_that_is_not_a_regular_file_is_refused(tmp_path, path):
    if path == "dir":
        path = str(tmp_path)
    with pytest.raises(TraceFileError, match="not a regular file"):
        tracedmp.configure(trace=path)  # starts tracing
    assert not tracedmp.is_tracing()


def test_a_planted_symlink_is_never_followed(run_program, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "trace.jsonl"
    link.symlink_to(victim)
    run = run_program("""
import tracedmp as multiprocessing
a, b = multiprocessing.Pipe()
a.send(1)
print(b.recv())
""", trace=str(link))
    assert run.returncode == 0 and run.stdout == "1\n"
    assert run.stderr.count("\n") == 1 and "is a symbolic link" in run.stderr
    assert victim.read_text() == "precious\n"
    out = tmp_path / "tl.json"
    (tmp_path / "tl.json.part").symlink_to(victim)  # the timeline's temporary file
    real = tmp_path / "real.jsonl"
    real.write_text(json.dumps({"v": 1, "event": "trace_start", "ts": 1.0, "pid": 1,
                                "process": "MainProcess", "start_method": "fork",
                                "seq": 0}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "timeline", str(real), "-o",
                           str(out)], capture_output=True, text=True, timeout=30)
    assert victim.read_text() == "precious\n"
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "symbolic link" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file someone else's")
def test_a_file_of_another_user_is_never_appended_to(tmp_path):
    planted = tmp_path / "trace.jsonl"
    planted.write_text("")
    os.chown(planted, 12345, 12345)
    with pytest.raises(TraceFileError, match="belongs to another user"):
        tracedmp.configure(trace=str(planted))
    assert planted.read_text() == ""


@pytest.mark.parametrize("value", ["yes", "true", "on", "-1", "12ab", " 7"])
def test_a_garbage_autostart_value_is_rejected(tmp_path, value):
    env = dict(os.environ, TRACEDMP_AUTOSTART=value, TRACEDMP_TRACE=str(tmp_path / "t.jsonl"))
    code = "import multiprocessing as mp; a, b = mp.Pipe(); a.send(1); print(b.recv())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == "1\n"
    assert proc.stderr.count("\n") == 1 and "TRACEDMP_AUTOSTART" in proc.stderr
    assert repr(value) in proc.stderr
    assert not (tmp_path / "t.jsonl").exists()
