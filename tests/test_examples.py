"""Every program in examples/ runs traced with `tracedmp run` and shows what it is there to show."""

import os
import subprocess
import sys

import pytest

from tracedmp import read_trace, summarize

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(tmp_path, name, *extra):
    trace = tmp_path / f"{os.path.basename(name)}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tracedmp", "run", *extra, "--trace", str(trace),
         os.path.join(EXAMPLES, f"{name}.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, list(read_trace(trace))


def test_start_methods(tmp_path):
    out, records = run_example(tmp_path, "start_methods")
    assert out.splitlines() == [f"hello {m}, 499500" for m in ("fork", "spawn", "forkserver")]
    starts = {r.child: r for r in records if r.event == "process_start"}
    assert starts["greeter-fork"].pickled is False
    assert starts["greeter-spawn"].pickled and starts["greeter-spawn"].size > 2000
    assert starts["greeter-forkserver"].pickled


def test_pool_big_argument(tmp_path):
    out, records = run_example(tmp_path, "pool_big_argument")
    assert out.startswith("40 results")
    kinds = {f["kind"] for f in summarize(records)["findings"]}
    assert "large_args_per_task" in kinds


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle"])
def test_lambda_cloudpickle(tmp_path, pickler):
    out, records = run_example(tmp_path, "lambda_cloudpickle", "--pickler", pickler)
    errors = [r for r in records if r.event == "pickle_error"]
    if pickler == "pickle":
        assert "lambda failed" in out and "closure failed" in out
        assert {e.path for e in errors} == {"task.func"}
    else:
        assert out.splitlines() == ["lambda 210", "closure 19000000"]
        assert not errors
        closure = [r for r in records if r.channel == "pool.task" and any(
            c["name"].endswith("make_scaler.<locals>.scale") and c["kind"] == "value"
            for c in r.callables or [])]
        assert len(closure) == 20 and all(r.size > 100_000 for r in closure)


def test_manager(tmp_path):
    out, records = run_example(tmp_path, "manager")
    assert out.strip() == "[('a', 2), ('b', 2), ('c', 1)]"
    manager = [r for r in records if r.channel == "manager"]
    assert len({r.pid for r in manager}) >= 3  # the parent, the server, the two workers


def test_executor_traced_without_tracedmp_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = str(tmp_path / "ex.jsonl")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "executor.py")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[7, 158, 2568]"
    channels = {r.channel for r in read_trace(tmp_path / "ex.jsonl")}
    assert {"executor.call", "executor.result", "process"} <= channels


def test_cookbook_initializer_sends_the_table_once_per_worker(tmp_path):
    out, records = run_example(tmp_path, os.path.join("cookbook", "initializer"))
    assert out.strip() == str(sum(2 * i for i in range(40)))
    tasks = [r for r in records if r.channel == "pool.task" and r.type == "builtins.tuple"]
    launches = [r for r in records if r.channel == "process" and r.part == "process_object"]
    assert tasks and max(r.size for r in tasks) < 500  # the table no longer rides along
    assert len(launches) == 2 and all(r.size > 70_000 for r in launches)  # once per worker


def test_cookbook_structlog_forwarding(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "cookbook",
                                                        "forward_to_structlog.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tracedmp.process_start" in proc.stdout
    assert (tmp_path / "trace.jsonl").exists()


def test_cookbook_pytest_fixture(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           os.path.join(EXAMPLES, "cookbook", "test_pickles_in_pytest.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_joblib_arrays(tmp_path):
    pytest.importorskip("joblib")
    pytest.importorskip("numpy")
    out, records = run_example(tmp_path, "joblib_arrays")
    assert out.splitlines() == ["200000.0", "60000.0", "50000.0"]
    sent = {a["sent_as"] for r in records if r.event == "pickle"
            for a in (r.get("arrays") or [])}
    assert sent == {"memmap", "copy"}
    assert [r.backend for r in records if r.event == "parallel"] == [
        "loky", "loky", "threading"]


def test_pytest_budgets_example_fails_where_it_says(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--tracedmp-check-spawn", os.path.join(EXAMPLES, "pytest_budgets")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed, 1 passed" in proc.stdout
    assert "pickle_budget(by_value=False) exceeded" in proc.stdout
    assert "test_budgets.log_progress): TypeError: cannot pickle '_thread.lock'" in proc.stdout
