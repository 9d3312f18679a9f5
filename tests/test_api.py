"""tracedmp's public API is multiprocessing's, plus its own small set."""

import concurrent.futures
import json
import multiprocessing
import multiprocessing.pool

import pytest

import tracedmp

OURS = {
    "FORMAT_VERSION", "Config", "ConfigError", "TraceFileError", "TraceFormatError",
    "TracedmpError", "__version__", "configure", "get_config", "install", "is_tracing",
    "reset_config", "uninstall", "Record", "Trace", "read_trace", "summarize",
}
# Names that start tracing before calling the stdlib (everything else is the stdlib's object).
ACTIVATING = {
    "Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock",
    "Manager", "Pipe", "Pool", "Process", "Queue", "RLock", "RawArray", "RawValue", "Semaphore",
    "SimpleQueue", "Value", "get_context",
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


def test_other_multiprocessing_attributes_and_submodules_forward():
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
