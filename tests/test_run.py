"""`tracedmp run` traces programs that were never changed, in all their processes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import METHODS

UNCHANGED = """
import json, os, sys, subprocess
import multiprocessing

def square(x):
    return x * x

if __name__ == "__main__":
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        result = pool.map(square, range(4))
    print(json.dumps({"result": result, "argv": sys.argv[1:], "pid": os.getpid(),
                      "main": sys.modules["__main__"].__file__}))
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


@pytest.mark.parametrize("method", METHODS)
def test_run_traces_an_unchanged_script(run_program, method):
    run = run_program(UNCHANGED, method, "3", via_run=True)
    assert run.returncode == 3, run.stderr  # the program's own exit code
    out = run.output()
    assert out["result"] == [0, 1, 4, 9] and out["argv"] == [method, "3"]
    assert out["pid"] == run.records[0]["pid"]  # exec keeps the pid: the main process is traced
    assert out["main"].endswith("prog.py")
    assert run.records[0]["event"] == "trace_start"
    tasks = run.events("pickle", channel="pool.task")
    assert any({"name": "__main__.square", "kind": "reference"} in t["callables"] for t in tasks)
    results = run.events("pickle", channel="pool.result")
    assert results and {r["pid"] for r in results}.isdisjoint({out["pid"]})
    starts = run.events("process_start")
    assert len(starts) == 2 and all(s["pickled"] is (method != "fork") for s in starts)


def test_run_module_with_dash_m(run_program, tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "app.py").write_text(UNCHANGED)
    trace = str(tmp_path / "m.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", trace, "-m",
                           "mypkg.app", "spawn"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["result"] == [0, 1, 4, 9]
    with open(trace) as f:
        records = [json.loads(x) for x in f if x.strip()]
    # run as a script, the module is __main__ in the parent: that is the name pickle writes
    assert any({"name": "__main__.square", "kind": "reference"} in r.get("callables", [])
               for r in records)


def test_children_started_with_dash_I_and_E_are_traced(run_program):
    run = run_program("""
import subprocess, sys
child = "import multiprocessing as m; a, b = m.Pipe(); a.send('from ' + sys.argv[1]); b.recv()"
for flag in ("-I", "-E"):
    subprocess.run([sys.executable, flag, "-c", "import sys;" + child, flag], check=True)
""", via_run=True)
    assert run.returncode == 0, run.stderr
    pipes = run.events("pickle", channel="pipe")
    assert len(pipes) == 2 and len({r["pid"] for r in pipes}) == 2


def test_startup_hook_does_not_import_multiprocessing(tmp_path):
    env = dict(os.environ, TRACEDMP_AUTOSTART="1", TRACEDMP_TRACE=str(tmp_path / "t.jsonl"))
    code = "import sys; print('multiprocessing' in sys.modules)"
    for flags in ([], ["-I"], ["-E"]):
        out = subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == "False", (flags, out.stderr)
    assert not (tmp_path / "t.jsonl").exists()


def test_run_without_a_program_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("tracedmp: error: nothing to run: give a script (tracedmp run "
                                   "app.py) or a module (tracedmp run -m package.module)")


def test_run_with_an_unwritable_trace_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace",
                           str(tmp_path / "nope" / "t.jsonl"), "x.py"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("tracedmp: error: cannot write the trace file")
    assert "Traceback" not in proc.stderr


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "tracedmp")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("tracedmp ")


def test_run_passes_the_programs_own_options_through(tmp_path):
    (tmp_path / "data.json").write_text('{"b": 1, "a": 2}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    trace = str(tmp_path / "t.jsonl")
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", trace, "-m",
                           "json.tool", "--sort-keys", "--indent", "1", "data.json"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{\n "a": 2,\n "b": 1\n}\n'
    (tmp_path / "argv.py").write_text("import sys; print(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", trace, "argv.py",
                           "-m", "--trace", "x"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert proc.stdout == "['-m', '--trace', 'x']\n", proc.stderr
