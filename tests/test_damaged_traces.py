"""Traces that real programs damage: a process killed in the middle of its write, over a file
size limit, out of disk.  Whatever the file holds, every whole record in it is read, and what is
missing is counted and named (issue #12, item 5)."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from tracedmp import read_trace
from tracedmp._read.report import summarize_file

METHODS = ["fork", "spawn", "forkserver"]

# A child sends messages over a Pipe (its records written by itself, at once), then stops being
# able to write in the way argv[2] says; the parent then makes records of its own, which land
# right after whatever the child left.
PROGRAM = r"""
import os
import resource
import signal
import sys
import time
import tracedmp as multiprocessing

# A class with a long name: a record of its instances is ~10 KB, longer than any room a page of
# a full tmpfs has left, so the write that fills the disk is always cut short.
BIG = "Big" + "x" * 5000
globals()[BIG] = type(BIG, (), {"__qualname__": BIG, "__module__": "__main__"})


def rlimit(conn):
    for i in range(3):
        conn.send(i)
    # Room for the start of one record (its pid included), not for all of it.
    room = os.path.getsize(os.environ["TRACEDMP_TRACE"]) + 80
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
    for i in range(3):
        conn.send(i)
    conn.send("done")


def killed_mid_write(conn):
    # The kill lands in the middle of the third record's write, every time.
    real_write = os.write

    def write(fd, data):
        if data.startswith(b'{"v":1') and b'"seq":2,' in data:
            real_write(fd, data[:data.index(b'"seq":2,') + 12])  # seq there, not the rest
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.write = write
    for i in range(5):
        conn.send(i)
    conn.send("done")


def disk_full(conn):
    # A first record of its own: the file then ends inside a page, whatever the parent wrote.
    conn.send("ready")
    conn.recv()  # the parent has filled the disk
    for i in range(5):
        conn.send(globals()[BIG]())
    conn.send("done")


def killed_any_time(conn):
    while True:
        conn.send(globals()[BIG]())


def fill(path):
    with open(path, "wb", buffering=0) as f:
        for size in (4096, 1):  # whole pages, then the last page's bytes
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


if __name__ == "__main__":
    method, mode = sys.argv[1], sys.argv[2]
    ctx = multiprocessing.get_context(method)
    a, b = ctx.Pipe()
    a.send("first")
    b.recv()
    p = ctx.Process(target=globals()[mode], args=(b,))
    p.start()
    if mode == "disk_full":
        assert a.recv() == "ready"
        filler = os.path.join(sys.argv[3], "filler")
        fill(filler)
        a.send("go")
    received = 0
    while True:  # until "done", or the child is gone (the parent holds b too: no EOF)
        if a.poll(0.05):
            received += 1
            if a.recv() == "done":
                break
            if mode == "killed_any_time" and received == 20:
                p.kill()
        elif not p.is_alive() and not a.poll():
            break
    p.join()
    if mode == "disk_full":
        os.unlink(filler)
    for i in range(50):  # the parent's records, after the child's (more than fit in a batch)
        a.send(i)
        b.recv()
    print(p.pid, p.exitcode)
"""


def run(tmp_path, method, mode, *args, trace=None):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    trace = trace or str(tmp_path / "trace.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = trace
    proc = subprocess.run([sys.executable, str(script), method, mode, *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pid, exitcode = map(int, proc.stdout.split())
    return trace, pid, exitcode, proc.stderr


def whole_records(path):
    """The records a line-by-line reader that skips anything unparseable would find."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            for part in line.replace(b'{"v":', b'\n{"v":').splitlines():
                try:
                    out.append(json.loads(part))
                except ValueError:
                    pass
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tracedmp", *args], capture_output=True,
                          text=True, timeout=120)


def check_readable(trace_path, child, stderr):
    """Every whole record is read; report and timeline say what was cut off, naming ``child``."""
    trace = read_trace(trace_path)
    records = list(trace)
    assert len(records) == len(whole_records(trace_path))
    main = [r for r in records if r.process == "MainProcess"]
    if f"tracing stopped in process {main[0].pid}" not in stderr:
        # The parent's 50 last sends are all there, after the damage.
        assert sum(1 for r in main if r.channel == "pipe") >= 51
    assert trace.cut_count == 1, trace.skipped
    [skipped] = trace.skipped
    assert skipped.reason == "cut"
    report = cli("report", trace_path)
    assert report.returncode == 0, report.stderr
    if skipped.pid is not None:
        assert skipped.pid == child
        [lost] = [m for m in trace.missing if m.pid == child]
        assert lost.cut == 1 and lost.tail_lost
        assert f"pid {child} (" in report.stdout and "1 record cut off" in report.stdout
    else:
        assert f"1 record cut off at line {skipped.line}" in report.stdout
    assert "1 record cut off" in report.stderr
    data = json.loads(cli("report", "--json", trace_path).stdout)
    assert data["lost"]["cut"] == 1
    out = os.path.join(os.path.dirname(trace_path), "tl.json")
    timeline = cli("timeline", trace_path, "-o", out)
    assert timeline.returncode == 0, timeline.stderr
    assert "1 record cut off" in timeline.stderr
    with open(out) as f:
        assert json.load(f)["otherData"]["tracedmp_lost"]["cut"] == 1
    return trace


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_over_its_file_size_limit(tmp_path, method):
    trace_path, child, exitcode, stderr = run(tmp_path, method, "rlimit")
    assert exitcode == 0
    assert "File too large" in stderr and f"tracing stopped in process {child}" in stderr
    trace = check_readable(trace_path, child, stderr)
    # The limit let the pid through, not the seq: the record is counted against the child.
    [skipped] = trace.skipped
    assert skipped.pid == child and skipped.seq is None
    assert [r.seq for r in read_trace(trace_path) if r.pid == child] == [0, 1, 2]


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_killed_in_the_middle_of_a_write(tmp_path, method):
    trace_path, child, exitcode, stderr = run(tmp_path, method, "killed_mid_write")
    assert exitcode == -9
    trace = check_readable(trace_path, child, stderr)
    [skipped] = trace.skipped
    assert skipped.pid == child and skipped.seq == 2  # what was written holds its seq
    [lost] = [m for m in trace.missing if m.pid == child]
    assert lost.missing == 0 and lost.cut == 1 and lost.tail_lost


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_killed_at_any_moment(tmp_path, method):
    # A real SIGKILL lands where it lands: mostly between writes, sometimes inside one (each
    # record is ~10 KB, several pages).  Either way the trace reads, and any cut is counted.
    trace_path, child, exitcode, _ = run(tmp_path, method, "killed_any_time")
    assert exitcode == -9
    trace = read_trace(trace_path)
    records = list(trace)
    assert len(records) == len(whole_records(trace_path))
    assert trace.cut_count <= 1
    assert all(s.pid in (None, child) for s in trace.skipped)
    assert cli("report", trace_path).returncode == 0


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount), unmounted afterwards."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], timeout=30, check=True)


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_out_of_disk(tmp_path, full_tmpfs, method):
    trace_path, child, exitcode, stderr = run(tmp_path, method, "disk_full", str(full_tmpfs),
                                              trace=str(full_tmpfs / "trace.jsonl"))
    assert exitcode == 0
    assert "No space left on device" in stderr
    check_readable(trace_path, child, stderr)


def test_summary_of_a_damaged_trace_names_what_each_process_lost(tmp_path):
    # Lines taken out of a real trace: what a process that could not write for a while (and
    # then could again) leaves.  Its seq numbers say which records are missing.
    trace_path, child, _, _ = run(tmp_path, "fork", "rlimit")
    with open(trace_path, "rb") as f:
        lines = f.readlines()
    main_pid = json.loads(lines[0])["pid"]
    main = [i for i, line in enumerate(lines)
            if line.startswith(b'{"v":1,"event":"pickle"') and line.count(b'{"v":') == 1
            and json.loads(line)["pid"] == main_pid]
    dropped = set(main[5:8])
    seqs = sorted(json.loads(lines[i])["seq"] for i in dropped)
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    gap = tmp_path / "gap.jsonl"
    gap.write_bytes(b"".join(line for i, line in enumerate(lines) if i not in dropped))
    trace = read_trace(gap)
    list(trace)
    [lost] = [m for m in trace.missing if m.pid == main_pid]
    assert lost.missing == 3 and lost.ranges == [(seqs[0], seqs[-1])] and lost.cut == 0
    data = summarize_file(str(gap))
    [entry] = [p for p in data["lost"]["processes"] if p["pid"] == main_pid]
    assert entry["missing"] == 3 and entry["ranges"] == [[seqs[0], seqs[-1]]]
    report = cli("report", str(gap))
    assert (f"pid {main_pid} (MainProcess): 3 records missing (seq {seqs[0]}-{seqs[-1]}: "
            in report.stdout), report.stdout
    assert "3 records missing" in report.stderr
    # --pid narrows what is listed to that process.
    data = json.loads(cli("report", "--json", "--pid", str(child), str(gap)).stdout)
    assert [p["pid"] for p in data["lost"]["processes"]] == [child]
