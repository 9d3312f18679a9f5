"""The trace file: whole lines from many writers; write failures never reach the program."""

import json
import os
import stat

import pytest
from conftest import METHODS

from tracedmp import read_trace
from tracedmp._runtime import control
from tracedmp._runtime.sink import TraceFile

WRITERS = """
import os, sys
import tracedmp as multiprocessing

def writer(n, size):
    a, b = multiprocessing.Pipe()
    payload = "x" * size
    for i in range(n):
        a.send((os.getpid(), i, payload))
        b.recv()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=writer, args=(int(sys.argv[1]), 50 + 300 * k))
             for k in range(int(sys.argv[2]))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    print([p.exitcode for p in procs])
"""


def test_concurrent_writers_never_tear_lose_or_duplicate_lines(run_program):
    per_writer, writers = 2000, 8
    run = run_program(WRITERS, str(per_writer), str(writers))
    assert run.returncode == 0, run.stderr
    with open(run.trace, "rb") as f:
        lines = f.read().split(b"\n")
    assert lines[-1] == b""
    # any torn line fails here (blank ones are the main process's unused reserved space)
    records = [json.loads(line) for line in lines[:-1] if line.strip()]
    pipe = [r for r in records if r["event"] == "pickle" and r["channel"] == "pipe"]
    by_pid = {}
    for r in pipe:
        by_pid.setdefault(r["pid"], []).append(r["seq"])
    assert len(by_pid) == writers
    for seqs in by_pid.values():
        assert sorted(seqs) == list(range(per_writer))  # none lost, none twice


def test_trace_file_respects_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        sink = TraceFile(str(tmp_path / "t.jsonl"))
        sink.write(b"{}\n")
        sink.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "t.jsonl").st_mode) == 0o600


@pytest.mark.parametrize("method", METHODS)
def test_a_full_disk_stops_tracing_not_the_program(run_program, method):
    # A file size limit fails writes as a full disk does (EFBIG; Python ignores SIGXFSZ), in
    # the main process's reservations and the workers' writes alike.
    run = run_program("""
import resource, sys
import tracedmp as multiprocessing
if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        print(sum(pool.map(abs, range(-500, 500), chunksize=1)))
""", method)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "250000\n"
    assert "File too large" in run.stderr and "tracing stopped in process" in run.stderr
    assert "Traceback" not in run.stderr
    assert os.path.getsize(run.trace) <= 20_000
    # What was written reads as records. A write that straddles the limit is cut short by the
    # kernel: at most one record cut off per process that was writing then (the main process
    # and the two workers), as trace-format.md ("Reading a damaged trace") says.
    trace = read_trace(run.trace)
    records = list(trace)
    assert records and trace.cut_count <= 3, [s.reason for s in trace.skipped]
    assert trace.skipped_count == trace.cut_count  # nothing else unreadable


def test_main_process_writes_everything_by_exit(run_program):
    run = run_program("""
import tracedmp as multiprocessing
a, b = multiprocessing.Pipe()
for i in range(3000):
    a.send(i)
    b.recv()
""")
    assert run.returncode == 0, run.stderr
    assert [r["seq"] for r in run.events("pickle")] == list(range(1, 3001))


def test_records_of_terminated_pool_workers_are_kept(run_program):
    run = run_program("""
import tracedmp as multiprocessing
def work(x):
    return x
if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:  # __exit__ terminates workers
        pool.map(work, range(500), chunksize=1)
""")
    assert run.returncode == 0, run.stderr
    assert len(run.events("pickle", channel="pool.result")) == 500
    assert len(run.events("pickle", channel="pool.task")) >= 500


def test_odd_names_keep_the_trace_valid_json_lines(run_program):
    run = run_program(r'''
import tracedmp as multiprocessing

Odd = type("Odd", (), {})
Odd.__qualname__ = 'line\nbreak "quoted" \\ back \udcff'
Odd.__module__ = "__main__"
a, b = multiprocessing.Pipe()
try:
    a.send(Odd())
except Exception as e:
    print("send failed:", type(e).__name__)
''')
    assert run.returncode == 0, run.stderr
    with open(run.trace, "rb") as f:
        raw = f.read()
    raw.decode("utf-8")  # valid UTF-8 throughout
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1] if line.strip())
    odd = [json.loads(x) for x in lines[:-1] if b"line\\nbreak" in x]
    assert odd and odd[0]["event"] in ("pickle", "pickle_error")
    assert "\\udcff" in odd[0]["type"]


def test_fast_rendering_matches_the_record_dicts(tmp_path):
    """Repeated kinds of records are rendered from templates; they must equal the dict path's."""
    import tracedmp
    from multiprocessing import pool

    def run(path, processors):
        tracedmp.configure(trace=path, processors=processors)
        a, b = tracedmp.get_context("fork").Pipe()
        kinds = (1, "x%sy", (7, 0, pool.mapstar, ((abs, (1,)),), {}), [abs], abs, pool.Pool,
                 [abs, len, min], [len, abs], (len, abs), [len, abs, len])
        for obj in kinds + kinds:  # the same call site, the kind of message changing each time
            for _ in range(2):
                a.send(obj)
                b.recv()
        for method in ("fork", "spawn"):
            p = tracedmp.get_context(method).Process(target=abs, args=(-1,), name='c"%s\u00e9')
            p.start()
            p.join()
        tracedmp.uninstall()
        tracedmp.reset_config()
        control._implicit_allowed = True
        with open(path) as f:
            return [r for r in map(json.loads, filter(str.strip, f))
                    if r["event"] in ("pickle", "process_start") and r["pid"] == os.getpid()]

    fast = run(tmp_path / "fast.jsonl", [])
    slow = run(tmp_path / "slow.jsonl", [lambda logger, name, event: event])  # forces dicts
    assert len(fast) == len(slow) == 44  # 40 sent, 2 launch pickles, 2 process starts
    for f, s in zip(fast, slow):
        assert list(f) == list(s)  # same fields, same order
        assert type(f["ts"]) is float and type(f["seq"]) is int
        for key in ("ts", "seq", "duration_ns", "child_pid"):
            f.pop(key, None), s.pop(key, None)
        if f["event"] == "process_start" or f.get("channel") == "process":
            assert (f["size"] is None) == (s["size"] is None)  # spawn's names the trace file
            f.pop("size"), s.pop("size")
        assert f == s


def test_reading_your_own_trace_sees_what_the_main_process_holds(tmp_path):
    import tracedmp

    path = tmp_path / "own.jsonl"
    tracedmp.configure(trace=path)
    a, b = tracedmp.Pipe()
    a.send("held in the main process's batch")
    b.recv()
    assert [r.channel for r in tracedmp.read_trace(path) if r.event == "pickle"] == ["pipe"]


def test_the_small_json_writer_agrees_with_orjson_or_declines():
    """One-off records are rendered without orjson: the same JSON, or a refusal, never a
    line that parses differently."""
    import math

    import orjson

    from tracedmp._runtime.render import json_bytes

    agree = [0, -7, 2**62, True, None, "", 'q"uo\\te', "tab\tnl\ncr\r\x00\x1f", "é€😀",
             0.1, 1e-07, 1e16, -2.5, 1795645753.5757418, [], {}, [1, [2, {"a": None}]],
             {"é": [0.5, "x%sy"], "k": {"n": False}}]
    for value in agree:
        line = json_bytes(value)
        assert json.loads(line) == json.loads(orjson.dumps(value)), value
    decline = [math.inf, -math.inf, math.nan, (1, 2), {1: "a"}, {"k": {2}}, b"x",
               "\udcff", {"\ud800": 1}, type("F", (float,), {})(1.5)]
    for value in decline:
        with pytest.raises((TypeError, ValueError)):
            json_bytes(value)


def test_a_usual_program_does_not_load_orjson(run_program):
    # orjson and what it imports cost a main process ~14 ms: only programs that keep making
    # records no template fits (here: functions by value) load it.
    run = run_program("""
import sys
import tracedmp as multiprocessing

def double(x):
    return 2 * x

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(double, range(50)) == list(range(0, 100, 2))
    print("orjson" in sys.modules)
    a, b = multiprocessing.Pipe()
    for k in range(1100):  # past the records the small writer takes before orjson is cheaper
        a.send(lambda: k)
        b.recv()
    print("orjson" in sys.modules)
""", env={"TRACEDMP_PICKLER": "cloudpickle"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
    assert run.events("trace_start") and len(run.events("pickle", channel="pipe")) == 1100


def test_the_main_process_sink_takes_lines_longer_than_its_next_region(tmp_path):
    # The reserved regions start at 4 KiB: a longer record (a failure naming many parts, a
    # launch record with a long target list) must get a region that holds it, not be dropped.
    path = tmp_path / "t.jsonl"
    sink = TraceFile(str(path), mapped=True)
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * size)
             for i, size in enumerate((100, 10_000, 30_000, 60_000, 100, 70_000, 5))]
    for line in lines:
        sink.write(line)
    sink.close()
    written = [line + b"\n" for line in path.read_bytes().split(b"\n") if line.strip()]
    # (a line of 64 KiB or more is written through, after the region the next ones fill: the
    # file's order is not the order of writing, as with any two writers; seq tells that)
    assert sorted(written) == sorted(lines)


def test_put_raises_where_write_reserves_and_write_takes_the_line(tmp_path):
    # The hot path writes with put() (the region's own mmap.write) and falls back on write()
    # at ValueError (the region is full).  A put another thread fetched just before the region
    # was let go still writes into it: the region stays mapped while that put holds it.
    path = tmp_path / "t.jsonl"
    sink = TraceFile(str(path), mapped=True)
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 200) for i in range(2000)]  # ~430 KB
    fallbacks = 0
    for i, line in enumerate(lines):
        if i == 1000:
            stale = sink.put
            sink._release()
            stale(line)
            continue
        try:
            sink.put(line)
        except ValueError:
            fallbacks += 1
            sink.write(line)
    sink.close()
    del stale
    written = [line + b"\n" for line in path.read_bytes().split(b"\n") if line.strip()]
    assert sorted(written) == sorted(lines)  # none lost, none twice
    assert 0 < fallbacks < 40  # once per region filled (4 KiB doubling to 64 KiB)


def test_ts_of_templates_reads_as_the_clock(monkeypatch):
    # ts is the cached second's digits and the microseconds into it: across a second's end,
    # and with a clock set back, it must read as divmod of the time would.
    from tracedmp._runtime import render

    monkeypatch.setattr(render, "ts_second", (0, b"0."))
    base = 1_796_122_187_000_000
    for us in (base + 5, base + 999_999, base + 1_000_000, base + 1_000_001, base + 7,
               base - 1, 0, 12, base + 3_000_000):
        monkeypatch.setattr(render, "time_ns", lambda us=us: us * 1000 + 999)
        assert render.TS_HOLE % render.ts_parts() == b"%d.%06d" % divmod(us, 1_000_000)


def test_ts_of_pickle_records_reads_as_the_clock(tmp_path, monkeypatch):
    # The same through the hot path (dumps() inlines ts_parts()), clock set back included.
    import tracedmp
    from tracedmp._runtime import picklers, render

    base = 1_796_122_187_000_000
    times = [base + 5, base + 999_999, base + 1_000_000, base + 7, base + 2_000_001]
    path = tmp_path / "t.jsonl"
    tracedmp.configure(trace=str(path))
    a, b = tracedmp.get_context("fork").Pipe()
    try:
        a.send(0)  # the call site's template is made
        b.recv()
        monkeypatch.setattr(render, "ts_second", (0, b"0."))
        for us in times:
            monkeypatch.setattr(picklers, "time_ns", lambda us=us: us * 1000 + 999)
            a.send(us)
            b.recv()
    finally:
        monkeypatch.undo()
        tracedmp.uninstall()
        tracedmp.reset_config()
        control._implicit_allowed = True
    lines = [line for line in path.read_bytes().split(b"\n") if b'"channel":"pipe"' in line]
    assert [line.split(b'"ts":')[1].split(b",")[0] for line in lines[1:]] == [
        b"%d.%06d" % divmod(us, 1_000_000) for us in times]
