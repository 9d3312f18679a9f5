"""Tracing started by the first use of tracedmp's API writes nothing until there is a record.

`tracedmp.set_start_method()` (or any first use) before `configure(trace=...)` used to start
tracing to the default or `$TRACEDMP_TRACE` file at once, which then held only a `trace_start`
the program never asked for.  Now that file is made by its first record, `trace_start` written
with it (or at exit, where `$TRACEDMP_TRACE` chose the file).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tracedmp
from conftest import METHODS

SWITCH = """
import sys
import tracedmp

if __name__ == "__main__":
    tracedmp.set_start_method(sys.argv[1])  # first use: tracing starts here
    tracedmp.configure(trace="chosen.jsonl")
    with tracedmp.Pool(2) as pool:
        print(pool.map(abs, [-1, -2, -3]))
"""


def _events(path):
    return [r.event for r in tracedmp.read_trace(str(path))]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("env_file", [False, True], ids=["default-file", "env-file"])
def test_choosing_the_file_after_first_use_leaves_no_stray_file(run_program, tmp_path, method,
                                                                  env_file):
    env = {"TRACEDMP_TRACE": str(tmp_path / "env.jsonl") if env_file else None}
    run = run_program(SWITCH, method, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[1, 2, 3]\n"
    assert sorted(os.listdir(tmp_path)) == ["chosen.jsonl", "prog.py"], run.stderr
    assert "tracing to" not in run.stderr  # no default file was announced, none made
    trace = tracedmp.read_trace(str(tmp_path / "chosen.jsonl"))
    main = [r for r in trace if r.process == "MainProcess"]
    assert [r.event for r in trace].count("trace_start") == 1
    assert main[0].event == "trace_start" and main[0].seq == 0
    assert not trace.missing and trace.skipped_count == 0
    assert sum(r.channel == "pool.task" for r in trace) >= 3


def test_first_use_that_records_nothing_makes_no_default_file(run_program, tmp_path):
    run = run_program("""
import tracedmp
print(tracedmp.cpu_count() > 0, tracedmp.is_tracing())
""", env={"TRACEDMP_TRACE": None})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "True True\n"
    assert os.listdir(tmp_path) == ["prog.py"]
    assert run.stderr == ""


def test_first_use_then_uninstall_leaves_the_chosen_file_unmade(run_program, tmp_path):
    run = run_program("""
import tracedmp
tracedmp.get_context("spawn")
tracedmp.uninstall()
""")
    assert run.returncode == 0, run.stderr
    assert os.listdir(tmp_path) == ["prog.py"]


def test_a_file_chosen_by_the_environment_gets_its_trace_start_at_exit(run_program, tmp_path):
    # Nothing pickled: the file the user named still says the program ran traced, and the
    # report reads it ("no pickles"), not "an empty trace".
    run = run_program("""
import tracedmp
tracedmp.cpu_count()
""")
    assert run.returncode == 0, run.stderr
    assert _events(run.trace) == ["trace_start"]
    report = subprocess.run([sys.executable, "-m", "tracedmp", "report", run.trace],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "prog.py" in report.stdout


def test_summary_mode_first_use_writes_trace_start_with_its_first_line(run_program):
    run = run_program("""
import tracedmp

if __name__ == "__main__":
    a, b = tracedmp.Pipe()
    for i in range(50):
        a.send(i); b.recv()
""", env={"TRACEDMP_MODE": "summary"})
    assert run.returncode == 0, run.stderr
    records = run.records
    assert records[0]["event"] == "trace_start" and records[0]["mode"] == "summary"
    assert records[0]["seq"] == 0
    assert sum(r["count"] for r in records if r["event"] == "summary") == 50


def test_changing_settings_before_the_first_record_numbers_on_without_a_gap(run_program):
    # The first start's trace_start is never written: its number goes to the second's, else
    # readers would count one record lost.
    run = run_program("""
import tracedmp

if __name__ == "__main__":
    tracedmp.get_context()
    tracedmp.configure(mode="summary")  # tracing restarts, same file
    a, b = tracedmp.Pipe()
    a.send(1); b.recv()
""")
    assert run.returncode == 0, run.stderr
    trace = tracedmp.read_trace(run.trace)
    records = list(trace)
    assert [r.event for r in records][:2] == ["trace_start", "summary"]  # (then its exemplar)
    assert [r.seq for r in records] == list(range(len(records)))
    assert records[0].get("mode") == "summary" and not trace.missing


def test_default_file_is_announced_with_its_first_record(run_program, tmp_path):
    run = run_program("""
import sys
import tracedmp

if __name__ == "__main__":
    tracedmp.cpu_count()
    sys.stderr.write("before\\n")
    a, b = tracedmp.Pipe()
    a.send(1); b.recv()
""", env={"TRACEDMP_TRACE": None})
    assert run.returncode == 0, run.stderr
    made = [name for name in os.listdir(tmp_path) if name.startswith("tracedmp-")]
    assert len(made) == 1
    assert run.stderr.startswith(f"before\ntracedmp: tracing to {tmp_path / made[0]} ")
    assert _events(tmp_path / made[0]) == ["trace_start", "pickle"]


def test_a_fork_before_the_first_record_leaves_trace_start_to_the_parent(run_program):
    run = run_program("""
import os
import tracedmp

if __name__ == "__main__":
    a, b = tracedmp.Pipe()  # first use; nothing recorded yet
    pid = os.fork()
    if pid == 0:
        a.send("from the child"); b.recv()
        os._exit(0)
    os.waitpid(pid, 0)
    a.send("from the parent"); b.recv()
    print(os.getpid(), pid)
""")
    assert run.returncode == 0, run.stderr
    parent, child = map(int, run.stdout.split())
    trace = tracedmp.read_trace(run.trace)
    assert [(r.event, r.pid) for r in trace] == [
        ("pickle", child), ("trace_start", parent), ("pickle", parent)]
    assert not trace.missing


def test_an_unwritable_folder_is_still_refused_at_first_use(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = str(tmp_path / "no-such-folder" / "t.jsonl")
    proc = subprocess.run([sys.executable, "-c", "import tracedmp as m; q = m.Queue(); "
                           "q.put(3); print(q.get(timeout=30))"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "3\n", proc.stderr
    assert proc.stderr.count("\n") == 1 and "running untraced" in proc.stderr
    assert "no-such-folder" in proc.stderr and "No such file or directory" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_settings_left_as_they_were_do_not_restart_first_use_tracing(run_program, tmp_path):
    run = run_program("""
import tracedmp
from tracedmp._runtime import tracer

if __name__ == "__main__":
    tracedmp.get_context()
    first = tracer.current
    tracedmp.reset_config()  # nothing changes: the same tracing, and still no file
    tracedmp.configure(pickler="pickle")
    print(tracer.current is first)
    a, b = tracedmp.Pipe()
    a.send(1); b.recv()
""", env={"TRACEDMP_TRACE": None})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "True\n"
    made = [name for name in os.listdir(tmp_path) if name.startswith("tracedmp-")]
    assert len(made) == 1 and _events(tmp_path / made[0]) == ["trace_start", "pickle"]
