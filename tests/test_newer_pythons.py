"""What Python 3.14 and 3.15 added, met through tracedmp's namespace: the forkserver default,
new process and executor methods, new Manager types, and the interpreter pool.  Each test is
skipped below the Python that has what it tests, and compares with a plain run where the
behaviour is the stdlib's."""

import json
import subprocess
import sys

import pytest


PY314 = sys.version_info >= (3, 14)
PY315 = sys.version_info >= (3, 15)
needs_314 = pytest.mark.skipif(not PY314, reason="new in Python 3.14")
needs_315 = pytest.mark.skipif(not PY315, reason="new in Python 3.15")


def platform_default() -> str:
    """The start method this Python picks when the program names none, from a fresh one."""
    return subprocess.check_output(
        [sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
        text=True, timeout=60).strip()


@pytest.mark.parametrize("how", ["none", "set", "context"])
def test_process_start_says_whether_the_start_method_was_the_default(run_program, how):
    """3.14 made forkserver the default on Linux: a start the program did not choose says so,
    one it chose does not, even when it chose the same method; children know it too."""
    default = platform_default()
    run = run_program("""
import sys
import tracedmp as multiprocessing

def work(x):
    return x

def starts_one():
    p = multiprocessing.Process(target=work, args=(1,))
    p.start()
    p.join()

if __name__ == "__main__":
    how, method = sys.argv[1], sys.argv[2]
    if how == "set":
        multiprocessing.set_start_method(method)
    ctx = multiprocessing.get_context(method) if how == "context" else multiprocessing
    p = ctx.Process(target=starts_one)
    p.start()
    p.join()
    with ctx.Pool(1) as pool:
        pool.map(work, [1])
    print(multiprocessing.get_start_method())
""", how, default)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == default
    starts = run.events("process_start")
    assert len(starts) == 3, starts  # the process, its own child, the Pool's worker
    assert any(s["process"] != "MainProcess" for s in starts)
    assert {s["start_method"] for s in starts} == {default}
    assert [s["default_method"] for s in starts] == [how == "none"] * 3
    if PY314 and sys.platform == "linux":
        assert default == "forkserver"


def test_report_says_when_starts_used_the_default_method(run_program, tmp_path):
    run = run_program("""
import tracedmp as multiprocessing

def work(x):
    return x

if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        pool.map(work, range(4))
""")
    assert run.returncode == 0, run.stderr
    report = subprocess.run([sys.executable, "-m", "tracedmp", "report", run.trace],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "all: the default start method (the program named none)" in report.stdout
    data = json.loads(subprocess.check_output(
        [sys.executable, "-m", "tracedmp", "report", "--json", run.trace], text=True,
        timeout=60))
    [starts] = data["process_starts"]
    assert starts["count"] == starts["default_method"] == 2
