"""`tracedmp bench`: measures plain multiprocessing, reports real figures, fails in one line."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import textwrap
from multiprocessing.reduction import ForkingPickler

import pytest

from tracedmp import _bench
from tracedmp._errors import TracedmpError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tracedmp")
    sub = parser.add_subparsers(dest="command")
    _bench.add_parser(sub)
    return parser.parse_args(["bench", *argv])


def _bench_json(capsys, *argv: str) -> dict:
    assert _bench.run(_parse("--quick", "--json", *argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current directory for payload modules; sys.path and sys.modules restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("benchmod_") or name == "dill":
            del sys.modules[name]


def _write(directory, name: str, code: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(code))


@pytest.mark.timeout(60)
def test_quick_json_has_real_figures(capsys):
    payload = {"ids": list(range(500)), "name": "x" * 1000}
    res = _bench_json(capsys, "--expr", repr(payload), "--methods", "fork")
    assert res["payload"]["size"] == len(ForkingPickler.dumps(payload))
    assert res["payload"]["type"] == "builtins.dict"
    pick = res["picklers"]["pickle"]
    assert pick["available"] and pick["size"] == len(ForkingPickler.dumps(payload))
    assert pick["dumps_s"] > 0 and pick["loads_s"] > 0
    assert pick["size_ratio"] == 1 and pick["time_ratio"] == pytest.approx(1)
    cloud = res["picklers"]["cloudpickle"]
    assert cloud["available"] and cloud["size"] > 0 and cloud["dumps_s"] > 0
    dill = res["picklers"]["dill"]
    assert dill["available"] or dill["note"] == "not installed (pip install dill)"

    settings = res["settings"]
    assert settings["repeat"] == 1 and settings["methods"] == ["fork"]
    assert settings["chunksizes"] == [1, 4, 16, 64] and settings["sweep_method"] == "fork"
    tasks = settings["tasks"]
    assert 40 <= tasks <= 200
    fork = res["pool"]["fork"]
    assert fork["startup_s"] > 0 and fork["slowdown"] > 0
    for row in [fork, *res["sweep"]]:
        for key in ("baseline", "payload"):
            assert row[key]["seconds"] > 0
            assert row[key]["tasks_per_s"] == pytest.approx(tasks / row[key]["seconds"])
        assert 0 <= row["pickling_share"] <= 1 and row["overhead_per_task_s"] >= 0
        assert len(row["runs"]["payload_s"]) == 1
    assert [row["chunksize"] for row in res["sweep"]] == [1, 4, 16, 64]
    assert "TRACEDMP_TRACE" not in os.environ  # the bench's own setting was undone


@pytest.mark.timeout(90)
def test_payload_from_a_module_under_every_start_method(workdir, capsys):
    # A class of the user's module: spawn and forkserver workers must import it to unpickle.
    _write(workdir, "benchmod_ok", """
        class Point:
            def __init__(self, x):
                self.x = x

        def sample():
            return [Point(i) for i in range(50)]
    """)
    args = _parse("--quick", "--payload", "benchmod_ok:sample", "--repeat", "2",
                  "--chunksizes", "1,8")
    assert _bench.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("tracedmp bench: benchmod_ok:sample (builtins.list, ")
    for heading in ("Picklers (protocol", "Pool.map(noop,", "Chunksize sweep ("):
        assert heading in out
    for method in ("fork", "spawn", "forkserver"):
        assert f"\n  {method} " in out
    assert "medians of 2 rounds" in out


@pytest.mark.timeout(60)
def test_dill_is_compared_when_installed(workdir, capsys):
    # A stand-in dill: the bench only needs dumps(obj, protocol=) and loads.
    _write(workdir, "dill", """
        import pickle
        def dumps(obj, protocol=None):
            return pickle.dumps(obj, protocol)
        loads = pickle.loads
    """)
    res = _bench_json(capsys, "--expr", "list(range(100))", "--methods", "fork",
                      "--chunksizes", "4", "--tasks", "50")
    assert res["settings"]["tasks"] == 50
    dill = res["picklers"]["dill"]
    assert dill["available"] and dill["size"] == len(ForkingPickler.dumps(list(range(100))))


@pytest.mark.timeout(60)
def test_a_payload_workers_cannot_unpickle_is_an_error_not_a_hang(workdir, monkeypatch):
    _write(workdir, "benchmod_picky", """
        import os

        def _make():
            if os.environ["BENCH_PARENT"] != str(os.getpid()):
                raise ValueError("only the parent can build this")
            return Picky()

        class Picky:
            def __reduce__(self):
                return _make, ()

        def sample():
            return Picky()
    """)
    monkeypatch.setenv("BENCH_PARENT", str(os.getpid()))
    with pytest.raises(TracedmpError, match="a fork worker cannot unpickle the payload: "
                       "ValueError: only the parent can build this; the module"):
        _bench.run(_parse("--quick", "--payload", "benchmod_picky:sample", "--methods", "fork"))


@pytest.mark.parametrize("argv, message", [
    (["--payload", "benchmod_nowhere:sample"],
     "cannot import 'benchmod_nowhere' (No module named 'benchmod_nowhere'); run tracedmp "
     "bench from the directory holding it"),
    (["--payload", "benchmod_err:sample"], "benchmod_err:sample': sample() raised "
     "KeyError: 'size'; it is called with no arguments"),
    (["--payload", "benchmod_err:missing"], "benchmod_err has no 'missing'; define it in"),
    (["--payload", "benchmod_err:CONSTANT"],
     "CONSTANT is not callable (it is int 3); name a function"),
    (["--payload", "benchmod_err"], "give MODULE:FUNCTION, e.g. --payload mymod:sample"),
    (["--payload", "benchmod_broken:sample"], "importing 'benchmod_broken' failed: "
     "ZeroDivisionError"),
    (["--payload", "benchmod_err:unpicklable"], "multiprocessing cannot pickle the payload at "
     "['lock']: TypeError: cannot pickle '_thread.lock' object; a lock cannot be sent"),
    (["--expr", "lambda: 1"], "cannot pickle the payload"),
    (["--expr", "list(range("], "is not a Python expression"),
    (["--expr", "no_such_name + 1"], "NameError: name 'no_such_name' is not defined; use builtins"),
])
def test_bad_input_is_one_clear_error(workdir, argv, message):
    _write(workdir, "benchmod_err", """
        import threading
        CONSTANT = 3

        def sample():
            return {}["size"]

        def unpicklable():
            return {"lock": threading.Lock()}
    """)
    _write(workdir, "benchmod_broken", "1 / 0\n")
    with pytest.raises(TracedmpError) as info:
        _bench.run(_parse("--quick", *argv))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_plot_without_matplotlib_fails_before_measuring(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(_bench, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(TracedmpError) as info:
        _bench.run(_parse("--expr", "1", "--plot", "out.png"))
    assert str(info.value) == "--plot needs matplotlib: pip install matplotlib"


@pytest.mark.timeout(60)
def test_plot_writes_a_chart(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    _bench.run(_parse("--quick", "--expr", "list(range(100))", "--methods", "fork",
                      "--chunksizes", "1,4", "--plot", str(out)))
    assert out.read_bytes().startswith(b"\x89PNG")
    assert capsys.readouterr().err.endswith(f"chart written to {out}\n")


def test_refuses_to_run_while_tracing(tmp_path):
    import tracedmp

    tracedmp.configure(trace=str(tmp_path / "t.jsonl"))
    tracedmp.install()
    with pytest.raises(TracedmpError, match="tracing is on in this process"):
        _bench.run(_parse("--quick", "--expr", "1"))


def test_arguments():
    args = _parse("--fast", "--expr", "1", "--methods", "spawn,fork,spawn", "--chunksizes", "2,2,8")
    assert args.quick and args.methods == ["spawn", "fork"] and args.chunksizes == [2, 8]
    assert args.func is _bench.run
    for bad in (["--methods", "threads"], ["--repeat", "0"], ["--chunksizes", "x"], []):
        with pytest.raises(SystemExit):
            _parse("--expr", "1", *bad) if bad else _parse()
    with pytest.raises(SystemExit):
        _parse("--expr", "1", "--payload", "m:f")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_only_after_the_delay():
    tty = _Tty()
    bar = _bench._Progress(4, tty, delay=0)
    bar.step("fork")
    assert "[#######" in tty.getvalue() and "1/4 fork" in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\r")
    quiet = _Tty()
    bar = _bench._Progress(4, quiet, delay=60)
    bar.step("fork")
    bar.close()
    assert quiet.getvalue() == ""
    pipe = io.StringIO()
    bar = _bench._Progress(4, pipe, delay=0)
    bar.step("fork")
    assert pipe.getvalue() == ""
