"""tracedmp.capture(): one block traced in every process it starts, tracing left as it was."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import time
from multiprocessing import reduction

import pytest

import tracedmp
from tracedmp._runtime import tracer as _tracer

from conftest import METHODS


def square(x):
    return x * x


def sleep_then_send(q, seconds):
    time.sleep(seconds)
    q.put(b"late" * 100)


def _send(obj):
    a, b = multiprocessing.get_context("fork").Pipe()
    a.send(obj)
    assert b.recv() == obj


def _contents(records):
    """What records say, but their numbers (the outer trace numbers this process on)."""
    return {(r.pid, r.event, r.channel, r.size, r.child, r.seq if r.pid != os.getpid() else 0)
            for r in records}


def _numbered_from_zero(records, *, main_from=0):
    """Each process's records numbered 0, 1, 2... with no gap and none twice; this process's
    from ``main_from`` (None: from wherever they start)."""
    by_pid = {}
    for r in records:
        by_pid.setdefault(r.pid, []).append(r.seq)
    for pid, seqs in by_pid.items():
        seqs.sort()
        first = seqs[0] if pid == os.getpid() and main_from is None else 0
        assert seqs == list(range(first, first + len(seqs))), (pid, seqs)


def _untouched():
    """multiprocessing as the stdlib has it: no hook of ours anywhere."""
    assert not tracedmp.is_tracing()
    assert multiprocessing.connection._ForkingPickler is reduction.ForkingPickler
    assert multiprocessing.queues._ForkingPickler is reduction.ForkingPickler
    assert reduction.dump.__module__ == "multiprocessing.reduction"
    for klass in (multiprocessing.context.ForkProcess, multiprocessing.context.SpawnProcess,
                  multiprocessing.context.ForkServerProcess):
        assert klass.__dict__["_Popen"].__func__.__module__ == "multiprocessing.context"


@pytest.mark.parametrize("method", METHODS)
def test_captures_every_process_and_leaves_tracing_off(method):
    with tracedmp.capture() as cap:
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(square, range(20)) == [x * x for x in range(20)]
    _untouched()
    tasks, results = cap.pickles(channel="pool.task"), cap.pickles(channel="pool.result")
    assert tasks and results
    assert {r.pid for r in results} - {os.getpid()}  # written by the workers
    assert len(cap.process_starts) == 2
    assert all(r.start_method == method for r in cap.process_starts)
    assert cap.pickles(channel=["pool.task", "pool.result"]) == \
        [r for r in cap.pickles() if r.channel in ("pool.task", "pool.result")]
    assert cap.total_bytes == sum(r.size for r in cap.pickles())
    assert cap.largest.size == max(r.size for r in cap.pickles())
    assert cap.errors == []
    assert cap.complete and cap.still_running == []
    summary = cap.summary()
    assert summary["totals"]["count"] == len(cap.pickles()) and summary["complete"]
    assert "pool.task" in cap.report()
    if method != "fork":
        assert cap.pickles(channel="process")  # launch data


def test_errors_and_the_exception_the_program_sees():
    import threading

    with tracedmp.capture() as cap:
        with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
            multiprocessing.get_context("spawn").SimpleQueue().put(threading.Lock())
    (error,) = cap.errors
    assert error.channel == "queue" and error.error.startswith("TypeError")


def test_the_temporary_file_goes_with_the_capture_and_a_path_given_stays(tmp_path):
    with tracedmp.capture() as cap:
        _send(1)
    path = cap.path
    assert os.path.exists(path) and cap.pickles()
    cap.close()
    assert not os.path.exists(os.path.dirname(path))
    mine = tmp_path / "block.jsonl"
    mine.write_text("old content, replaced\n")
    with tracedmp.capture(mine) as cap:
        _send(1)
    cap.close()
    lines = [line for line in mine.read_text().splitlines() if line.strip()]
    assert [r["event"] for r in map(json.loads, lines)] == \
        ["trace_start", "pickle"]


def test_nested_in_running_tracing_forwards_and_restores(tmp_path):
    outer_path = tmp_path / "outer.jsonl"
    seen = []

    def processor(logger, method, event):
        seen.append(event["event"])
        return event

    tracedmp.configure(trace=outer_path, processors=[processor])
    outer = _tracer.current
    with tracedmp.get_context("spawn").Pool(1) as pool:
        pool.map(square, [1])
    before = len(seen)
    with tracedmp.capture() as cap:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.map(square, [2])
        assert _tracer.current is not outer
    assert _tracer.current is outer and tracedmp.get_config().trace == str(outer_path)
    assert tracedmp.get_config().processors == (processor,)
    assert len(seen) > before  # the block's main-process records went through the processor
    with multiprocessing.get_context("fork").Pool(1) as pool:  # and tracing goes on as before
        pool.map(square, [3])
    tracedmp.uninstall()
    records = list(tracedmp.read_trace(outer_path))
    assert [r.event for r in records].count("trace_start") == 1
    assert _contents(cap.records()) <= _contents(records)
    # (configure() numbers on from what this process numbered before, in earlier tests)
    _numbered_from_zero(records, main_from=None)
    _numbered_from_zero(cap.records())
    assert len({r.pid for r in records if r.channel == "pool.result"}) == 3


def test_nested_captures(tmp_path):
    with tracedmp.capture() as outer:
        _send("outer")
        with tracedmp.capture() as inner:
            with multiprocessing.get_context("forkserver").Pool(1) as pool:
                pool.map(square, [1])
        _send("outer again")
    _untouched()
    assert inner.pickles(channel="pipe") == []
    assert len(outer.pickles(channel="pipe")) == 2
    assert _contents(inner.records()) <= _contents(outer.records())
    assert [r.event for r in outer.records()].count("trace_start") == 1
    assert [r.event for r in inner.records()].count("trace_start") == 0
    _numbered_from_zero(outer.records())
    _numbered_from_zero(inner.records())


def test_each_capture_numbers_the_process_from_zero():
    # A trace's reader counts a process's records from seq 0: a capture made after other
    # tracing in the same process must not look as if it had lost the records before it.
    for _ in range(2):
        with tracedmp.capture() as cap:
            _send(1)
        _numbered_from_zero(cap.records())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_left_running_is_named_and_its_records_come_later(method):
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    with tracedmp.capture() as cap:
        p = ctx.Process(target=sleep_then_send, args=(q, 1.0))
        p.start()
    try:
        assert not cap.complete
        assert [c["pid"] for c in cap.still_running] == [p.pid]
        assert "records may be missing" in cap.report()
        assert not [r for r in cap.pickles(channel="queue") if r.pid == p.pid]
    finally:
        assert q.get(timeout=30) == b"late" * 100
        p.join(30)
    assert cap.complete and cap.still_running == []
    assert [r for r in cap.pickles(channel="queue") if r.pid == p.pid]  # written since
    _untouched()


def test_reading_while_the_block_runs_and_settings(tmp_path):
    with tracedmp.capture(check_spawn=True) as cap:
        _send(b"x" * 5000)
        assert cap.largest.size > 5000  # the main process's batch is read too
        assert not cap.complete
        p = multiprocessing.get_context("fork").Process(target=square, args=(lambda: 1,))
        p.start()
        p.join()
    (start,) = cap.process_starts
    assert start["spawn_check"]["would_pickle"] is False
    with pytest.raises(tracedmp.TracedmpError, match="one block only"):
        with cap:
            pass
    with pytest.raises(tracedmp.ConfigError, match="pickler='dill'"):
        tracedmp.capture(pickler="dill")


def test_off_by_environment_still_captures_and_stays_off(monkeypatch):
    monkeypatch.setenv("TRACEDMP_TRACE", "off")
    with tracedmp.capture() as cap:
        _send(1)
    assert cap.pickles()
    _untouched()
    with tracedmp.Pool(1) as pool:  # first use: tracing is still off, as it was
        pool.map(square, [1])
    assert not tracedmp.is_tracing()


def test_a_capture_that_cannot_start_leaves_tracing_as_it_was(tmp_path):
    with pytest.raises(tracedmp.TraceFileError, match="cannot write the trace file"):
        with tracedmp.capture(tmp_path / "no" / "such" / "dir.jsonl"):
            pass
    _untouched()
    tracedmp.configure(trace=tmp_path / "outer.jsonl")
    outer = _tracer.current
    with pytest.raises(tracedmp.TraceFileError):
        with tracedmp.capture(tmp_path / "no" / "such" / "dir.jsonl"):
            pass
    assert _tracer.current is outer
    _send("still traced")
    tracedmp.uninstall()
    assert [r for r in tracedmp.read_trace(tmp_path / "outer.jsonl") if r.channel == "pipe"]
