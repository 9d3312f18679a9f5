"""tracedmp's public API is multiprocessing's, plus its own small set."""

import concurrent.futures
import json
import multiprocessing
import multiprocessing.pool

import pytest

import tracedmp

OURS = {
    "FORMAT_VERSION", "Capture", "Config", "ConfigError", "TraceFileError", "TraceFormatError",
    "TracedmpError", "__version__", "capture", "configure", "get_config", "install", "is_tracing",
    "reset_config", "uninstall", "Record", "Trace", "read_trace", "summarize",
}
# Names that start tracing before calling the stdlib: every function (the exceptions and
# `reducer` are the stdlib's objects).
ACTIVATING = {
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock",
    "Manager", "Pipe", "Pool", "Process", "Queue", "RLock", "RawArray", "RawValue", "Semaphore",
    "SimpleQueue", "Value", "active_children", "allow_connection_pickling", "cpu_count",
    "current_process", "freeze_support", "get_all_start_methods", "get_context", "get_logger",
    "get_start_method", "log_to_stderr", "parent_process", "set_executable",
    "set_forkserver_preload", "set_start_method",
}


def test_exported_names_are_multiprocessing_all_plus_ours():
    assert set(tracedmp.__all__) == set(multiprocessing.__all__) | OURS
    assert len(tracedmp.__all__) == len(set(tracedmp.__all__))
    for name in tracedmp.__all__:
        assert hasattr(tracedmp, name), name


@pytest.mark.parametrize("name", sorted(set(multiprocessing.__all__) - ACTIVATING))
def test_passthrough_names_are_the_stdlib_objects(name):
    assert getattr(tracedmp, name) is getattr(multiprocessing, name)


def test_activating_names_delegate_with_the_stdlib_signature():
    import inspect

    for name in ACTIVATING - {"Process"}:
        ours, theirs = getattr(tracedmp, name), getattr(multiprocessing, name)
        assert inspect.signature(ours) == inspect.signature(theirs), name
        assert ours.__doc__ == theirs.__doc__


def test_process_is_a_multiprocessing_process():
    assert issubclass(tracedmp.Process, multiprocessing.Process)
    assert tracedmp.Process.__module__ == "tracedmp"


def test_contexts_are_the_stdlib_contexts(monkeypatch):
    monkeypatch.setenv("TRACEDMP_TRACE", "off")
    assert tracedmp.get_context() is multiprocessing.get_context()
    for method in ("fork", "spawn", "forkserver"):
        assert tracedmp.get_context(method) is multiprocessing.get_context(method)
    with pytest.raises(ValueError, match="cannot find context"):
        tracedmp.get_context("nonsense")


def test_activating_names_pickle_by_name():
    import pickle

    for name in ACTIVATING:
        assert pickle.loads(pickle.dumps(getattr(tracedmp, name))) is getattr(tracedmp, name)


def test_other_multiprocessing_attributes_and_submodules_forward(monkeypatch):
    monkeypatch.setenv("TRACEDMP_TRACE", "off")  # reaching them starts tracing
    assert tracedmp.pool is multiprocessing.pool
    assert tracedmp.SUBDEBUG == multiprocessing.SUBDEBUG
    assert tracedmp.shared_memory.SharedMemory is __import__(
        "multiprocessing.shared_memory").shared_memory.SharedMemory
    with pytest.raises(AttributeError, match="no attribute 'not_a_thing'"):
        tracedmp.not_a_thing  # noqa: B018


def test_executor_accepts_a_tracedmp_context(monkeypatch):
    monkeypatch.setenv("TRACEDMP_TRACE", "off")
    ctx = tracedmp.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert ex.submit(abs, -3).result(timeout=30) == 3


def test_import_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = ("import sys, tracedmp, multiprocessing.connection as c, multiprocessing.reduction as r;"
            "assert c._ForkingPickler is r.ForkingPickler;"
            "assert not tracedmp.is_tracing();"
            "import os; assert not [f for f in os.listdir('.') if f.startswith('tracedmp-')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)


def test_a_spawned_child_that_uses_nothing_traced_loads_only_its_bootstrap(run_program, tmp_path):
    # Every spawn start pays for what its child imports: the package and the child bootstrap
    # (named by the launch data); tracing starts for real, and loads the rest, at the child's
    # first use of it.
    run = run_program("""
import json, sys
import tracedmp as multiprocessing

def child(path):
    with open(path, "w") as f:
        json.dump(sorted(m for m in sys.modules if m.startswith(("tracedmp", "orjson"))), f)

if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    p.start()
    p.join()
""", str(tmp_path / "modules.json"))
    assert run.returncode == 0, run.stderr
    loaded = json.loads((tmp_path / "modules.json").read_text())
    assert loaded == ["tracedmp", "tracedmp._runtime", "tracedmp._runtime.child"]
    assert run.events("process_start", pickled=True)


USES = {
    # import tracedmp as multiprocessing; then only a call that configures multiprocessing, and
    # the work done through the stdlib (as tqdm's process_map or any library would)
    "set_start_method": """
import concurrent.futures
import tracedmp as multiprocessing

def square(x):
    return x * x

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        assert list(ex.map(square, range(3))) == [0, 1, 4]
""",
    "managers submodule": """
import tracedmp

class Registry(tracedmp.managers.BaseManager):
    pass

Registry.register("table", callable=dict, proxytype=tracedmp.managers.DictProxy)

if __name__ == "__main__":
    with Registry() as m:
        t = m.table()
        t["a"] = 1
        assert t.copy() == {"a": 1}
""",
    "pool submodule": """
import tracedmp

if __name__ == "__main__":
    with tracedmp.pool.Pool(1) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
""",
    "cpu_count": """
import multiprocessing as plain
import tracedmp

if __name__ == "__main__":
    n = tracedmp.cpu_count()
    with plain.get_context("fork").Pool(1) as pool:
        assert pool.map(abs, [-1] * n) == [1] * n
""",
}


@pytest.mark.parametrize("use", sorted(USES))
def test_any_use_through_tracedmp_starts_tracing(run_program, use):
    run = run_program(USES[use])
    assert run.returncode == 0, run.stderr
    assert run.events("trace_start") and run.events("pickle"), run.records


def test_naming_the_exceptions_starts_nothing(run_program):
    run = run_program("""
import tracedmp
try:
    raise tracedmp.TimeoutError("x")
except (tracedmp.TimeoutError, tracedmp.ProcessError):
    pass
from tracedmp import *
assert not tracedmp.is_tracing()
""")
    assert run.returncode == 0, run.stderr
    assert run.records == []
