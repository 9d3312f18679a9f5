"""Every program in examples/ runs traced with `tracedmp run` and shows what it is there to show."""

import os
import subprocess
import sys

import pytest

from tracedmp import read_trace, summarize

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(tmp_path, name, *extra, args=()):
    trace = tmp_path / f"{os.path.basename(name)}.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tracedmp", "run", *extra, "--trace", str(trace),
         os.path.join(EXAMPLES, f"{name}.py"), *args],
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
    # The table is items[k][0] of every chunk: the parts name it (the older, size-only
    # large_args_per_task gives way to that).
    assert "same_large_argument" in kinds and "large_args_per_task" not in kinds


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


def _findings(records):
    return {f["kind"]: f for f in summarize(records)["findings"]}


def test_bound_method(tmp_path):
    out, records = run_example(tmp_path, "bound_method")
    assert out.startswith("64 predictions")
    finding = _findings(records)["bound_method_self"]
    assert finding["path"] == "func.__self__" and finding["callable"] == "__main__.Model.predict"
    assert finding["count"] == 8 and finding["size"] > 4_000_000


def test_same_argument(tmp_path):
    out, records = run_example(tmp_path, "same_argument")
    assert out.startswith("64 + 8 matches")
    same = [f for f in summarize(records)["findings"] if f["kind"] == "same_large_argument"]
    assert {(f["channel"], f["path"], f["count"]) for f in same} == {
        ("pool.task", "items[*][0]", 8), ("executor.call", "items[*][0]", 8)}


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_launch_data(tmp_path, method):
    out, records = run_example(tmp_path, "launch_data", args=(method,))
    assert out.strip() == "4 workers, 12000 samples seen"
    finding = _findings(records).get("large_launch_data")
    if method == "fork":
        assert finding is None  # inherited: nothing pickled
    else:
        assert finding["path"] == "target.__self__.dataset" and finding["count"] == 4


def test_lambda_cloudpickle_names_the_captured_data(tmp_path):
    _, records = run_example(tmp_path, "lambda_cloudpickle", "--pickler", "cloudpickle")
    finding = _findings(records)["captured_data"]
    assert finding["path"] == "func.__closure__[0]" and finding["count"] == 20
    assert "captured variable 'table'" in finding["message"]


def test_pytest_budgets_example_fails_where_it_says(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--tracedmp-check-spawn", os.path.join(EXAMPLES, "pytest_budgets")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed, 1 passed" in proc.stdout
    assert "pickle_budget(by_value=False) exceeded" in proc.stdout
    assert "test_budgets.log_progress): TypeError: cannot pickle '_thread.lock'" in proc.stdout
