"""configure() / get_config() / reset_config(), environment variables, install and uninstall."""

import inspect
import multiprocessing
import os
import re
from multiprocessing import connection, context, queues, reduction

import pytest

import tracedmp
from tracedmp import ConfigError, TraceFileError


def _patched() -> bool:
    return connection._ForkingPickler is not reduction.ForkingPickler


def test_defaults_and_read_back(tmp_path):
    cfg = tracedmp.get_config()
    assert cfg == tracedmp.Config(trace=None, pickler="pickle", unpickle=False, check_spawn=False)
    tracedmp.configure(pickler="cloudpickle", unpickle=True)
    assert tracedmp.get_config().pickler == "cloudpickle"
    assert tracedmp.get_config().unpickle is True
    assert not tracedmp.is_tracing()  # only a trace path starts tracing
    tracedmp.reset_config()
    assert tracedmp.get_config() == cfg


def test_explicit_settings_win_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACEDMP_PICKLER", "cloudpickle")
    monkeypatch.setenv("TRACEDMP_TRACE", str(tmp_path / "env.jsonl"))
    assert tracedmp.get_config().pickler == "cloudpickle"
    assert tracedmp.get_config().trace == str(tmp_path / "env.jsonl")
    tracedmp.configure(pickler="pickle")
    assert tracedmp.get_config().pickler == "pickle"


def test_environment_is_read_when_tracing_starts_not_at_import(monkeypatch, tmp_path):
    path = tmp_path / "later.jsonl"
    monkeypatch.setenv("TRACEDMP_TRACE", str(path))  # set after tracedmp was imported
    tracedmp.install()
    assert tracedmp.is_tracing() and tracedmp.get_config().trace == str(path)
    assert path.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"pickler": "dill"}, "pickler='dill' is not a pickler tracedmp knows; use 'pickle' or"),
    ({"unpickle": "yes"}, "unpickle='yes' must be True or False"),
    ({"trace": 3.5}, "trace=3.5 is not a path"),
    ({"processors": [42]}, "42 is not callable"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tracedmp.configure(**kwargs)
    assert isinstance(ConfigError("x"), ValueError)


# A value each option refuses, and the start of what configure() says.
BAD = {"trace": (3.5, "trace=3.5 is not a path"),
       "pickler": ("dill", "pickler='dill' is not a pickler"),
       "unpickle": ("yes", "unpickle='yes' must be True or False"),
       "check_spawn": (1, "check_spawn=1 must be True or False"),
       "processors": ([42], "processors: 42 is not callable"),
       "diagnose": ("no", "diagnose='no' must be True or False"),
       "parts_threshold": ("big", "parts_threshold='big' is not a size in bytes"),
       "mode": ("fast", "mode='fast' is not a tracing mode"),
       "summary_interval": (0, "summary_interval=0 is not a number of seconds")}


def test_every_option_is_checked_in_one_place_for_configure_and_capture():
    # configure() and capture() check their options with the one config.check_option: an
    # option added to Config cannot be left unchecked, nor checked two ways.
    from tracedmp._runtime import config

    assert list(BAD) == list(config.Config.__slots__)
    assert list(inspect.signature(tracedmp.configure).parameters) == list(BAD)
    for name, (value, message) in BAD.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            config.check_option(name, value)
        with pytest.raises(ConfigError, match=re.escape(message)):
            tracedmp.configure(**{name: value})
    capture_options = [n for n in inspect.signature(tracedmp.capture).parameters if n != "path"]
    for name in capture_options:
        value, message = BAD[name]
        with pytest.raises(ConfigError, match=re.escape(message)):
            tracedmp.capture(**{name: value})
    assert config.check_option("parts_threshold", None) is None  # back to env or default
    assert config.check_option("summary_interval", "2.5") == 2.5
    assert tracedmp.capture(pickler=" Pickle ")._changes == {"pickler": "pickle"}
    assert not tracedmp.is_tracing()


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("TRACEDMP_UNPICKLE", "maybe")
    with pytest.raises(ConfigError, match="TRACEDMP_UNPICKLE='maybe' is not a yes/no value"):
        tracedmp.get_config()


def test_unwritable_trace_path_is_a_clear_error(tmp_path):
    path = tmp_path / "missing-dir" / "t.jsonl"
    with pytest.raises(TraceFileError, match=r"cannot write the trace file .*missing-dir.*"
                       r"No such file or directory; set TRACEDMP_TRACE"):
        tracedmp.configure(trace=path)
    assert not tracedmp.is_tracing() and not _patched()


def test_off_means_no_hooks_at_all(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACEDMP_TRACE", "off")
    q = tracedmp.Queue()
    q.put(1)
    assert q.get(timeout=10) == 1
    q.close()
    q.join_thread()
    assert not tracedmp.is_tracing() and not _patched()
    assert tracedmp.get_config().trace is False
    assert os.listdir(tmp_path) == []


def test_first_use_starts_tracing_to_a_default_file_and_says_where(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = tracedmp.Pipe()
    a.send("x")
    assert b.recv() == "x"
    assert tracedmp.is_tracing()
    trace = tracedmp.get_config().trace
    assert os.path.dirname(trace) == str(tmp_path)
    assert os.path.basename(trace).startswith("tracedmp-")
    err = capsys.readouterr().err
    assert f"tracedmp: tracing to {trace}" in err and "TRACEDMP_TRACE=off" in err
    tracedmp.Pipe()  # said once only
    assert "tracing to" not in capsys.readouterr().err


def test_install_and_uninstall_are_idempotent_and_restore_the_stdlib(tmp_path):
    originals = (connection._ForkingPickler, queues._ForkingPickler, reduction.dump,
                 {k: k.__dict__["_Popen"] for k in (context.ForkProcess, context.SpawnProcess,
                                                   context.ForkServerProcess)})
    tracedmp.configure(trace=tmp_path / "t.jsonl")
    tracedmp.install()
    tracedmp.install()
    assert _patched() and queues._ForkingPickler is connection._ForkingPickler
    assert reduction.dump is not originals[2]
    assert all(k.__dict__["_Popen"] is not v for k, v in originals[3].items())
    tracedmp.uninstall()
    tracedmp.uninstall()
    assert (connection._ForkingPickler, queues._ForkingPickler, reduction.dump) == originals[:3]
    assert all(k.__dict__["_Popen"] is v for k, v in originals[3].items())
    # After an explicit uninstall, using the API does not bring the hooks back...
    tracedmp.Pipe()
    assert not _patched()
    # ...but an explicit install does.
    tracedmp.install()
    assert _patched()


def test_configure_trace_false_stops_tracing(tmp_path):
    tracedmp.configure(trace=tmp_path / "t.jsonl")
    assert tracedmp.is_tracing()
    tracedmp.configure(trace=False)
    assert not tracedmp.is_tracing() and not _patched()


def test_processors_run_on_every_record(tmp_path):
    import json

    import structlog

    def add_host(logger, method, event_dict):
        event_dict["host"] = "h1"
        return event_dict

    def drop_process_start(logger, method, event_dict):
        if event_dict["event"] == "process_start":
            raise structlog.DropEvent
        return event_dict

    path = tmp_path / "t.jsonl"
    tracedmp.configure(trace=path, processors=[add_host, drop_process_start])
    p = tracedmp.get_context("fork").Process(target=abs, args=(-1,))
    p.start()
    p.join()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert records and all(r["host"] == "h1" for r in records)
    assert not [r for r in records if r["event"] == "process_start"]


def test_multiprocessing_itself_is_traced_once_hooks_are_in(tmp_path):
    import json

    path = tmp_path / "t.jsonl"
    tracedmp.configure(trace=path)
    a, b = multiprocessing.Pipe()  # the stdlib's own name, not tracedmp's
    a.send({"k": 1})
    b.recv()
    tracedmp.uninstall()
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    sizes = [r["size"] for r in records if r["event"] == "pickle"]
    assert sizes == [len(reduction.ForkingPickler.dumps({"k": 1}))]


def test_each_trace_file_numbers_a_process_from_zero(run_program, tmp_path):
    # A process that traced to one file and then configure()s another must not leave a gap
    # at the start of the second: readers would count the first file's records as lost.
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    run = run_program("""
import sys
import tracedmp

if __name__ == "__main__":
    tracedmp.configure(trace=sys.argv[1])
    a, b = tracedmp.Pipe()
    for i in range(5):
        a.send(i); b.recv()
    tracedmp.configure(trace=sys.argv[2])
    a.send("again"); b.recv()
""", str(first), str(second))
    assert run.returncode == 0, run.stderr
    trace = tracedmp.read_trace(second)
    seqs = [r.seq for r in trace]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 2, seqs
    assert not trace.missing
