"""Summary mode: aggregates per process and kind of pickle, read as a full trace is."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tracedmp
from tracedmp import read_trace, summarize
from tracedmp._read.report import _Group
from tracedmp._runtime.summary import bucket

from conftest import METHODS

# Every channel a program can reach through multiprocessing's own API, all ended cleanly
# (a process that ends normally writes all it aggregated).
EVERY_CHANNEL = """
import concurrent.futures, sys
import tracedmp as mp
from multiprocessing import reduction
import io

def double(x):
    return x * 2

def blob(n):
    return bytes(n)

def child(conn, q, back):
    conn.send(conn.recv() + [1])
    back.put(q.get() * 2)

if __name__ == "__main__":
    method = sys.argv[1]
    ctx = mp.get_context(method)
    pool = ctx.Pool(2)
    pool.map(double, range(300), chunksize=1)
    pool.map(blob, [10, 1000, 100000, 5000, 70000, 3, 200000, 42], chunksize=1)
    pool.apply_async(double, (4,)).get()
    pool.close()
    pool.join()
    parent, other = ctx.Pipe()
    q, back = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child, args=(other, q, back))
    p.start()
    parent.send([1, 2])
    q.put(21)
    parent.recv(), back.get()
    p.join()
    sq = ctx.SimpleQueue()
    sq.put({"k": "v"}); sq.get()
    with ctx.Manager() as m:
        d = m.dict()
        d["a"] = list(range(50))
        d.get("a")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(double, range(40)))
    reduction.dump([1, 2, 3], io.BytesIO())
    from multiprocessing import connection
    connection._ForkingPickler.dumps({"direct": 1})  # the program calling the pickler itself
    print("done")
"""


def _read(path):
    with open(path, "rb") as f:  # (the main process's reserved room reads as blank lines)
        return [json.loads(line) for line in f if line.strip()]


def _totals(records):
    """(channel, start method, type) -> [count, bytes] from full records and summaries alike."""
    out = collections.defaultdict(lambda: [0, 0])
    for r in records:
        if r["process"].startswith("SyncManager"):
            # Its last reply races with its shutdown (a traceback for a late decref, or not),
            # traced or not: the client side's traffic is exact.
            continue
        if r["event"] == "pickle" and not r.get("exemplar"):
            key = (r["channel"], r["start_method"], r["type"])
            out[key][0] += 1
            out[key][1] += r["size"]
        elif r["event"] == "summary" and r["of"] == "pickle":
            key = (r["channel"], r["start_method"], r["type"])
            out[key][0] += r["count"]
            out[key][1] += r["bytes"]
    return dict(out)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_summary_totals_equal_a_full_trace_of_the_same_run(run_program, tmp_path, method):
    # Paths of one length: each spawned child's launch data holds the trace's path.
    full = run_program(EVERY_CHANNEL, method, trace=str(tmp_path / "full.jsonl"), timeout=180)
    summ = run_program(EVERY_CHANNEL, method, trace=str(tmp_path / "summ.jsonl"), timeout=180,
                       env={"TRACEDMP_MODE": "summary"})
    assert full.returncode == 0 and summ.returncode == 0, full.stderr + summ.stderr
    assert summ.stderr == full.stderr == ""
    want = _totals(full.records)
    channels = {k[0] for k in want}
    assert {"pool.task", "pool.result", "pool.control", "pipe", "queue", "manager",
            "executor.call", "executor.result", "reducer", "other"} <= channels
    if method != "fork":
        assert "process" in channels
    assert _totals(summ.records) == want
    assert [r for r in summ.events("summary") if r["process"].startswith("SyncManager")]
    # A summary trace is small: a line per key and process (and interval), not per pickle.
    assert len(summ.records) < len(full.records) / 4
    assert not [r for r in summ.records if r["event"] == "pickle" and not r.get("exemplar")]
    # The readers agree: same totals, same tables, and they say which kind of trace it is.
    a, b = summarize(read_trace(full.trace)), summarize(read_trace(summ.trace))
    assert (a["mode"], b["mode"]) == ("full", "summary")
    for table in ("by_channel",):  # (start methods: _totals above)
        rows_a = {r["name"]: r for r in a[table]}
        rows_b = {r["name"]: r for r in b[table]}
        assert set(rows_a) == set(rows_b)
        for name, row in rows_a.items():
            if name == "manager":
                continue  # see _totals
            for field in ("count", "bytes", "max_size", "median_size", "p95_size"):
                # few distinct sizes: the percentiles are exact too
                assert row[field] == rows_b[name][field], (table, name, field)
    assert [r["size"] for r in a["largest"][:3]] == [r["size"] for r in b["largest"][:3]]
    starts_full = sorted((r["start_method"], r["target"], r["pickled"], r["size"])
                         for r in full.events("process_start"))
    starts_summ = sorted((r["start_method"], r["target"], r["pickled"], r["size"])
                         for r in summ.events("process_start"))
    assert starts_full == starts_summ  # every process start in full
    assert [r["mode"] for r in summ.events("trace_start")] == ["summary"]


def test_exemplars_are_the_largest_pickles_in_full_and_errors_are_kept(run_program):
    run = run_program("""
        import tracedmp as mp

        def blob(n):
            return bytes(n)

        if __name__ == "__main__":
            a, b = mp.Pipe()
            for n in (5, 900, 7000, 12, 4000, 30000, 7, 2500):  # under a pipe's buffer
                a.send(bytes(n)); b.recv()
            try:
                a.send(lambda: 1)
            except Exception as exc:
                print(type(exc).__name__)
    """, env={"TRACEDMP_MODE": "summary"})
    assert run.returncode == 0, run.stderr
    [summary] = run.events("summary", channel="pipe")
    assert summary["count"] == 8 and summary["max_size"] == max(
        r["size"] for r in run.events("pickle"))
    exemplars = run.events("pickle", channel="pipe")
    assert all(r["exemplar"] is True for r in exemplars)
    sizes = sorted(r["size"] for r in exemplars)
    assert len(sizes) == 3 and sizes[-1] > 30000 > sizes[-2] > 7000 > sizes[0] > 4000
    # An exemplar is a full pickle record: every field a full trace's record has.
    for r in exemplars:
        for field in ("v", "ts", "pid", "process", "start_method", "seq", "channel", "size",
                      "kind", "type", "pickler", "duration_ns", "callables"):
            assert field in r, field
    [error] = run.events("pickle_error")
    assert error["channel"] == "pipe" and error["error"].startswith(run.stdout.split()[0])
    assert error["hint"]
    # Only written records are numbered: no gaps in seq for a reader to report as lost.
    seqs = sorted(r["seq"] for r in run.records if r["pid"] == error["pid"])
    assert seqs == list(range(len(seqs)))


def test_aggregates_are_written_periodically_while_the_process_runs(run_program, tmp_path):
    run = run_program("""
        import json, sys, time
        import tracedmp as mp

        if __name__ == "__main__":
            a, b = mp.Pipe()
            seen = []
            deadline = time.monotonic() + 0.6
            sent = 0
            while time.monotonic() < deadline:
                a.send(sent); b.recv(); sent += 1
                time.sleep(0.002)
            with open(sys.argv[1], "rb") as f:  # what a watcher sees while the run goes on
                seen = [json.loads(line) for line in f if b'"event":"summary"' in line]
            print(json.dumps({"sent": sent, "seen": sum(r["count"] for r in seen),
                              "records": len(seen)}))
    """, str(tmp_path / "trace.jsonl"),
        env={"TRACEDMP_MODE": "summary", "TRACEDMP_SUMMARY_INTERVAL": "0.1"})
    assert run.returncode == 0, run.stderr
    out = run.output()
    assert out["records"] >= 3  # written every 0.1 s, on the next pickle
    assert 0 < out["seen"] <= out["sent"]
    summaries = run.events("summary", channel="pipe")
    assert sum(r["count"] for r in summaries) == out["sent"]  # the rest at exit
    for r in summaries:
        assert r["since"] <= r["ts"]
    ends = [r["ts"] for r in summaries]
    assert ends == sorted(ends)


KILLED = """
import os, sys, time
import tracedmp as mp

def work(conn, ready):
    for i in range(10):
        conn.send(i)
    time.sleep(0.3)       # past the interval: the next pickle writes all eleven
    conn.send(10)
    for i in range(5):    # within the next interval: lost with the process
        conn.send(i)
    ready.set()
    time.sleep(60)

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    a, b = ctx.Pipe()
    ready = ctx.Event()
    p = ctx.Process(target=work, args=(b, ready))
    p.start()
    ready.wait(30)
    for _ in range(16):
        a.recv()
    os.kill(p.pid, int(sys.argv[2]))
    p.join()
    print(p.pid)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_a_killed_process_loses_at_most_its_last_interval(run_program, method):
    run = run_program(KILLED, method, str(int(signal.SIGKILL)),
                      env={"TRACEDMP_MODE": "summary", "TRACEDMP_SUMMARY_INTERVAL": "0.2"})
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split()[-1])
    written = [r for r in run.events("summary", channel="pipe") if r["pid"] == pid]
    assert sum(r["count"] for r in written) == 11
    # The process start and the parent's own aggregates are all there.
    assert [r["child_pid"] for r in run.events("process_start")] == [pid]


def test_mixed_files_several_runs_full_and_summary(run_program, tmp_path):
    program = """
        import tracedmp as mp

        if __name__ == "__main__":
            a, b = mp.Pipe()
            for i in range(50):
                a.send(list(range(i))); b.recv()
    """
    trace = str(tmp_path / "trace.jsonl")
    first = run_program(program, trace=trace)
    second = run_program(program, trace=trace, env={"TRACEDMP_MODE": "summary"})
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    records = second.records
    assert [r["mode"] for r in records if r["event"] == "trace_start"] == ["full", "summary"]
    data = summarize(read_trace(trace))
    assert data["mode"] == "mixed" and read_trace(trace).mode() == "mixed"
    [pipe] = data["by_channel"]
    full_only = [r for r in records if r["event"] == "pickle" and not r.get("exemplar")]
    assert pipe["count"] == 100 and pipe["bytes"] == 2 * sum(r["size"] for r in full_only)
    assert len(data["runs"]) == 2
    text = subprocess.run([sys.executable, "-m", "tracedmp", "report", trace],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "mixed trace" in text.stdout and "100" in text.stdout
    as_json = subprocess.run([sys.executable, "-m", "tracedmp", "report", "--json", trace],
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["by_channel"][0]["count"] == 100
    timeline = tmp_path / "t.json"
    done = subprocess.run([sys.executable, "-m", "tracedmp", "timeline", trace, "-o",
                           str(timeline)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = json.loads(timeline.read_text())["traceEvents"]
    assert any(e.get("cat") == "summary pipe" and e["args"]["count"] == 50 for e in events)


def test_tracedmp_run_summary_flag(run_program, tmp_path):
    trace = str(tmp_path / "t.jsonl")
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp

        def square(x):
            return x * x

        if __name__ == "__main__":
            for method in ("fork", "spawn", "forkserver"):
                p = mp.get_context(method).Pool(1)
                p.map(square, range(20), chunksize=1)
                p.close()
                p.join()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    done = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--summary", "--trace", trace,
                           str(script)], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    records = _read(trace)
    results = [r for r in records if r["event"] == "summary" and r["channel"] == "pool.result"]
    assert sorted(r["start_method"] for r in results) == ["fork", "forkserver", "spawn"]
    assert all(r["count"] == 20 for r in results)
    assert not [r for r in records if r["event"] == "pickle" and not r.get("exemplar")]


def test_configure_mode_and_its_errors(tmp_path):
    trace = str(tmp_path / "t.jsonl")
    tracedmp.configure(mode="summary", summary_interval=5)
    assert tracedmp.get_config().mode == "summary"
    assert tracedmp.get_config().summary_interval == 5.0
    tracedmp.configure(trace=trace)
    a, b = tracedmp.Pipe()
    for i in range(10):
        a.send(i)
        b.recv()
    assert not [r for r in _read(trace) if r["event"] == "summary"]  # not due yet
    tracedmp.uninstall()  # stopping writes what was aggregated
    records = _read(trace)
    [summary] = [r for r in records if r["event"] == "summary"]
    assert summary["count"] == 10 and summary["channel"] == "pipe"
    with pytest.raises(tracedmp.ConfigError, match=r"mode='summry'.*'full'.*'summary'"):
        tracedmp.configure(mode="summry")
    with pytest.raises(tracedmp.ConfigError, match=r"summary_interval=0.*seconds"):
        tracedmp.configure(summary_interval=0)
    with pytest.raises(tracedmp.ConfigError, match=r"summary_interval=True"):
        tracedmp.configure(summary_interval=True)


def test_bad_mode_in_the_environment_is_one_clear_line(run_program):
    run = run_program("import tracedmp\ntracedmp.install()\n",
                      env={"TRACEDMP_MODE": "sumary"})
    assert run.returncode != 0
    assert "TRACEDMP_MODE='sumary' is not a tracing mode" in run.stderr


def test_functions_by_value_go_the_dict_path_and_add_up_too(run_program, tmp_path):
    code = """
        import tracedmp as mp

        if __name__ == "__main__":
            a, b = mp.Pipe()
            for i in range(20):
                a.send(lambda x, i=i: x + i); b.recv()
    """
    env = {"TRACEDMP_PICKLER": "cloudpickle"}
    full = run_program(code, env=env, trace=str(tmp_path / "full.jsonl"))
    summ = run_program(code, env={**env, "TRACEDMP_MODE": "summary"},
                       trace=str(tmp_path / "summ.jsonl"))
    assert full.returncode == summ.returncode == 0, full.stderr + summ.stderr
    assert _totals(summ.records) == _totals(full.records)
    [summary] = summ.events("summary", channel="pipe")
    assert summary["count"] == 20 and summary["callables"][0]["kind"] == "value"
    [row] = summarize(read_trace(summ.trace))["by_value"]
    [want] = summarize(read_trace(full.trace))["by_value"]
    assert {**row, "pickle_ns": 0} == {**want, "pickle_ns": 0}  # the times differ, of course


def test_unpickles_are_summarized_too(run_program):
    run = run_program("""
        import tracedmp as mp

        if __name__ == "__main__":
            a, b = mp.Pipe()
            for i in range(30):
                a.send(i); b.recv()
    """, env={"TRACEDMP_MODE": "summary", "TRACEDMP_UNPICKLE": "1"})
    assert run.returncode == 0, run.stderr
    [loads] = [r for r in run.events("summary") if r["of"] == "unpickle"]
    assert loads["count"] == 30
    assert summarize(read_trace(run.trace))["unpickles"]["count"] == 30


def test_histogram_buckets_and_percentiles():
    assert [bucket(n) for n in (0, 1, 15, 16, 17, 31, 32, 33, 35, 36)] == \
        [0, 1, 15, 16, 16, 30, 32, 32, 32, 36]
    for n in (100, 1000, 12345, 10**9):
        assert bucket(n) <= n < bucket(n) * 1.125 + 1
    g = _Group()
    for n in range(1, 101):
        g.add(n, 1)
    assert g.quantiles(0.5, 0.95) == [50, 96]  # as the sorted sizes' index would give
    h = _Group()
    h.add_sizes([[bucket(1000), 99], [bucket(5000), 1]], exact=False)
    h.count, h.hi = 100, 5003
    median, p95 = h.quantiles(0.5, 0.95)
    assert median == bucket(1000) and abs(median - 1000) / 1000 < 0.125


def test_many_distinct_sizes_keep_report_memory_bounded():
    g = _Group()
    for n in range(100_000):
        g.add(n * 7, 0)
    assert len(g.sizes) <= 4096 + 1 and g.approx
    median = g.quantiles(0.5)[0]
    assert abs(median - 7 * 50_000) / (7 * 50_000) < 0.02
    assert g.as_dict()["max_size"] == 7 * 99_999


@pytest.mark.timeout(60)
def test_summary_mode_does_not_change_the_program(run_program):
    code = """
        import tracedmp as mp, sys

        def f(x):
            if x == 7:
                raise ValueError("seven")
            return x + 1

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as p:
                print(p.map(f, range(5)))
                try:
                    p.map(f, range(10))
                except ValueError as exc:
                    print(repr(exc))
    """
    plain = run_program(code, env={"TRACEDMP_TRACE": "off"})
    summ = run_program(code, env={"TRACEDMP_MODE": "summary"})
    assert (summ.stdout, summ.stderr, summ.returncode) == (plain.stdout, plain.stderr, 0)


def test_fast_path_time_not_spent_on_records():
    # The template path only adds to an aggregate: no line is made per pickle.
    tracedmp.configure(mode="summary", summary_interval=3600)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tracedmp-S-{os.getpid()}.jsonl")
    try:
        tracedmp.configure(trace=path)
        a, b = tracedmp.Pipe()
        start = time.monotonic()
        for i in range(2000):
            a.send(i)
            b.recv()
        assert time.monotonic() - start < 30
        # trace_start only, until the summary is due
        assert [r["event"] for r in _read(path)] == ["trace_start"]
    finally:
        tracedmp.uninstall()
        os.unlink(path)


def test_the_report_names_processes_killed_before_their_first_summary(run_program):
    run = run_program(KILLED, "fork", str(int(signal.SIGTERM)),
                      env={"TRACEDMP_MODE": "summary", "TRACEDMP_SUMMARY_INTERVAL": "60"})
    assert run.returncode == 0, run.stderr
    pid = int(run.stdout.split()[-1])
    assert not [r for r in run.records if r["pid"] == pid]  # its 16 pickles died with it
    findings = summarize(read_trace(run.trace))["findings"]
    [lost] = [f for f in findings if f["kind"] == "summary_not_written"]
    assert lost["pids"] == [pid] and "close() and join()" in lost["message"]


def _summaries(agg):
    return [json.loads(line) for line in agg.lines() if b'"event":"summary"' in line]


def test_an_aggregate_adds_up_exactly_then_in_buckets():
    # Exact counting keeps only a count per size (count, bytes, min and max are worked out at
    # the write); past EXACT_SIZES distinct sizes the key counts in buckets, mid-interval.
    from tracedmp._runtime import summary

    agg = summary.Aggregate("pickle", {"channel": "pipe"})
    for size in (3, 3, 4):
        agg.add(size, 5, 0, None, {"event": "pickle", "size": size})
    [rec] = _summaries(agg)
    assert (rec["count"], rec["bytes"], rec["min_size"], rec["max_size"], rec["duration_ns"],
            rec["sizes"], rec["sizes_exact"]) == (3, 10, 3, 4, 15, [[3, 2], [4, 1]], True)
    assert _summaries(agg) == []  # nothing since
    sizes = [10] * 5 + list(range(1000, 1000 + 2 * summary.EXACT_SIZES)) + [10] * 3
    for size in sizes:
        agg.add(size, 7, 0, None, {"event": "pickle", "size": size})
    [rec] = _summaries(agg)
    assert (rec["count"], rec["bytes"], rec["min_size"], rec["max_size"], rec["duration_ns"]) \
        == (len(sizes), sum(sizes), 10, max(sizes), 7 * len(sizes))
    assert rec["sizes_exact"] is False and sum(n for _, n in rec["sizes"]) == len(sizes)
    assert [10, 8] in rec["sizes"]  # sizes below 16 are their own bucket
    for size in (5, 5, 300):  # the next interval counts in buckets from the start
        agg.add(size, 1, 0, None, {"event": "pickle", "size": size})
    [rec] = _summaries(agg)
    assert (rec["count"], rec["bytes"], rec["min_size"], rec["max_size"], rec["sizes_exact"]) \
        == (3, 310, 5, 300, False)


def test_a_write_falls_due_by_the_time_the_pickle_ended_with_no_clock_read(monkeypatch):
    # dumps() hands add() the perf_counter_ns() it read when pickling ended: checking whether a
    # periodic write is due reads no clock of its own.
    from tracedmp._runtime import summary

    agg = summary.Aggregate("pickle", {"channel": "pipe"})
    for _ in range(summary.EXEMPLARS):  # (the interval's first pickle reads time() for
        agg.add(8, 1, 0)                # "since", exemplars their ts_parts())
    due = []
    monkeypatch.setattr(summary, "write_due", due.append)
    monkeypatch.setattr(summary, "_next_write", 1_000)

    def no_clock():
        raise AssertionError("a clock was read for a pickle")

    for name in ("time", "ts_parts", "perf_counter_ns"):  # (ts_parts: an exemplar's time)
        monkeypatch.setattr(summary, name, no_clock)
    for now in (10, 500, 999):
        agg.add(8, 1, now)
    assert due == []
    agg.add(8, 1, 1_000)
    assert due == [1_000]


@pytest.mark.parametrize("method", METHODS)
def test_many_sizes_from_one_call_site_add_up_as_in_a_full_trace(run_program, tmp_path, method):
    # The template path's inline count (a size seen before) and Aggregate.add (new sizes,
    # exemplars, the switch to buckets, periodic writes) together count every pickle once.
    code = """
import sys
import tracedmp

def work(n):
    return b"x" * (n % 150)

if __name__ == "__main__":
    ctx = tracedmp.get_context(sys.argv[1])
    pool = ctx.Pool(2)
    sizes = pool.map(work, range(3000), chunksize=1)
    pool.close()
    pool.join()  # (not terminate(): the workers end normally and write what they counted)
    a, b = ctx.Pipe()
    for n in range(3000):
        a.send(b"y" * (n % 200)); b.recv()
    print(len(sizes))
"""
    full = run_program(code, method, trace=str(tmp_path / "full.jsonl"))
    summ = run_program(code, method, trace=str(tmp_path / "summ.jsonl"),
                       env={"TRACEDMP_MODE": "summary", "TRACEDMP_SUMMARY_INTERVAL": "0.05"})
    assert full.returncode == 0 and summ.returncode == 0, full.stderr + summ.stderr
    assert _totals(summ.records) == _totals(full.records)
    a, b = summarize(read_trace(full.trace)), summarize(read_trace(summ.trace))
    for name in ("pipe", "pool.result"):
        [row_a] = [r for r in a["by_channel"] if r["name"] == name]
        [row_b] = [r for r in b["by_channel"] if r["name"] == name]
        assert (row_a["count"], row_a["bytes"], row_a["max_size"]) == \
            (row_b["count"], row_b["bytes"], row_b["max_size"]), name
