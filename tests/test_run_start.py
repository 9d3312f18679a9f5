"""What `tracedmp run` does before the program starts (issue 19): little, and exactly right.

The command execs a second interpreter for the program: it must hand over every interpreter
setting (sys.flags, -W, -X) as subprocess would, without importing subprocess, re or threading
first, and read its own options as argparse does, abbreviations included.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from tracedmp import _cli

# Interpreter options, each also known to the oldest Python where it is accepted.
_FLAG_CASES = [
    ([], (3, 9)), (["-O"], (3, 9)), (["-OO"], (3, 9)), (["-B"], (3, 9)), (["-S"], (3, 9)),
    (["-b"], (3, 9)), (["-bb"], (3, 9)), (["-q"], (3, 9)), (["-d"], (3, 9)),
    (["-I"], (3, 9)), (["-E"], (3, 9)), (["-s"], (3, 9)), (["-E", "-s"], (3, 9)),
    (["-P"], (3, 11)), (["-I", "-P"], (3, 11)),
    (["-W", "error"], (3, 9)), (["-W", "ignore::DeprecationWarning", "-W", "default"], (3, 9)),
    (["-X", "dev"], (3, 9)), (["-X", "dev", "-W", "default", "-bb"], (3, 9)),
    (["-X", "dev", "-b", "-W", "error::UserWarning"], (3, 9)),
    (["-X", "faulthandler"], (3, 9)), (["-X", "tracemalloc=3"], (3, 9)),
    (["-X", "utf8"], (3, 9)), (["-X", "utf8=0"], (3, 9)), (["-X", "showrefcount"], (3, 9)),
    (["-X", "frozen_modules=off"], (3, 11)), (["-X", "int_max_str_digits=5000"], (3, 11)),
    (["-X", "warn_default_encoding"], (3, 10)), (["-X", "no_debug_ranges"], (3, 11)),
    (["-X", "pycache_prefix=/nonexistent/cache"], (3, 9)),
    (["-O", "-B", "-s", "-X", "utf8", "-X", "int_max_str_digits=0", "-W", "once"], (3, 11)),
]
_FLAGS_PROBE = """
import json, subprocess, sys
from tracedmp._cli import _interpreter_flags
print(json.dumps([_interpreter_flags(), subprocess._args_from_interpreter_flags()]))
"""


def _split_x(args):
    """(the arguments but -X pairs, the -X values)"""
    rest, xs, i = [], [], 0
    while i < len(args):
        if args[i] == "-X":
            xs.append(args[i + 1])
            i += 2
        else:
            rest.append(args[i])
            i += 1
    return rest, xs


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACEDMP_", "PYTHONDEVMODE", "PYTHONWARNINGS", "PYTHONOPTIMIZE"))}
    # -I and -E ignore PYTHONPATH: the probe must still find tracedmp.
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(_cli.__file__)))
    env.update(extra)
    return env


@pytest.mark.parametrize("options", [c for c, since in _FLAG_CASES if sys.version_info >= since],
                         ids=lambda c: " ".join(c) or "none")
def test_interpreter_flags_are_subprocesss(options, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(_FLAGS_PROBE)
    # -I and -E drop PYTHONPATH: the probe's directory (sys.path[0]) holds a path file instead.
    (tmp_path / "tracedmp").symlink_to(os.path.dirname(os.path.abspath(_cli.__file__)))
    proc = subprocess.run([sys.executable, *options, str(probe)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    ours, theirs = json.loads(proc.stdout.splitlines()[-1])
    if sys.version_info >= (3, 14):
        assert ours == theirs
    else:
        # 3.9-3.13's pass only some -X options (theirs, a subset, in a fixed order); ours passes
        # them all, sorted, as 3.14's does.  Everything else is the same, in the same order.
        (our_rest, our_x), (their_rest, their_x) = _split_x(ours), _split_x(theirs)
        assert our_rest == their_rest
        assert set(their_x) <= set(our_x)
        if "dev" in our_x:
            assert our_x[0] == "dev"
            our_x = our_x[1:]
        assert our_x == sorted(our_x)


@pytest.mark.parametrize("env_extra", [{"PYTHONDEVMODE": "1"}, {"PYTHONOPTIMIZE": "2"},
                                       {"PYTHONWARNINGS": "error::ResourceWarning"}],
                         ids=lambda e: ",".join(e))
def test_interpreter_flags_from_the_environment(env_extra, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(_FLAGS_PROBE)
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=_clean_env(**env_extra))
    assert proc.returncode == 0, proc.stderr
    ours, theirs = json.loads(proc.stdout.splitlines()[-1])
    if "PYTHONDEVMODE" in env_extra and sys.version_info < (3, 11):
        # 3.9/3.10's subprocess tell dev mode by -X dev alone: -Wdefault for the environment's
        # dev mode, where ours passes -X dev (the same settings in the program).
        assert theirs == ["-Wdefault"] and ours == ["-X", "dev"]
    else:
        assert ours == theirs


_SETTINGS = ("import json, sys; print(json.dumps([list(sys.flags), sys.warnoptions, "
             "sys._xoptions]))")


@pytest.mark.parametrize("options", [
    ["-O", "-X", "dev", "-W", "error::UserWarning", "-bb"],
    ["-B", "-s", "-X", "utf8", "-X", "faulthandler", "-W", "ignore", "-W", "default"],
] + ([["-P", "-X", "int_max_str_digits=1000", "-X", "frozen_modules=off"]]
     if sys.version_info >= (3, 11) else []), ids=lambda c: " ".join(c))
def test_the_program_gets_the_interpreters_settings(options, tmp_path):
    """`python OPTIONS -m tracedmp run prog.py` runs prog.py as `python OPTIONS prog.py` would."""
    (tmp_path / "prog.py").write_text(_SETTINGS)
    env = _clean_env()
    plain = subprocess.run([sys.executable, *options, "prog.py"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path, env=env)
    traced = subprocess.run([sys.executable, *options, "-m", "tracedmp", "run", "--trace",
                             str(tmp_path / "t.jsonl"), "prog.py"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    assert plain.returncode == 0 and traced.returncode == 0, (plain.stderr, traced.stderr)
    assert json.loads(traced.stdout) == json.loads(plain.stdout)


@pytest.mark.parametrize("options, expect", [
    (["--pick", "pickle", "x.py", "a"], {"pickler": "pickle", "program": ["x.py", "a"]}),
    (["--pi", "cloudpickle", "--tr", "t.jsonl", "x.py"],
     {"pickler": "cloudpickle", "trace": "t.jsonl", "program": ["x.py"]}),
    (["--t", "t.jsonl", "--unp", "x.py", "--pick"], {"trace": "t.jsonl", "unpickle": True,
                                                      "program": ["x.py", "--pick"]}),
    (["--trace=t.jsonl", "--su", "x.py"], {"trace": "t.jsonl", "summary": True,
                                           "program": ["x.py"]}),
    (["-mjson.tool", "--sort-keys"], {"module": "json.tool", "program": ["--sort-keys"]}),
    (["--tr", "t.jsonl", "-m", "json.tool", "--tr"], {"module": "json.tool",
                                                      "program": ["--tr"]}),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_run_reads_abbreviated_options_as_argparse_does(options, expect):
    argv, program = _cli._split_run(["run", *options])
    args = _cli._parser(bench=False).parse_args(argv)
    args.program = program or args.program
    for name, value in expect.items():
        assert getattr(args, name) == value, (options, vars(args))


def test_run_with_an_abbreviated_pickler_runs_the_script(tmp_path):
    (tmp_path / "prog.py").write_text("import sys, os; print(sys.argv[1:], "
                                      "os.environ['TRACEDMP_PICKLER'])")
    proc = subprocess.run([sys.executable, "-m", "tracedmp", "run", "--pick", "cloudpickle",
                           "--tr", str(tmp_path / "t.jsonl"), "prog.py", "--pick", "x"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['--pick', 'x'] cloudpickle\n"


# The modules a command loads that a bare interpreter had not: printed with repr, since json
# (like the console-script wrapper pip writes) imports re, which is what is being looked for.
_STAGE_ONE = """
import os, sys
before = set(sys.modules)

def report(*args):
    sys.stdout.write(repr(sorted(set(sys.modules) - before)) + "\\n")
    sys.stdout.flush()
    os._exit(0)

os.execve = report
script = sys.argv[1]
del sys.argv[0]
try:
    exec(compile(open(script).read(), script, "exec"), {"__name__": "__main__"})
except SystemExit:
    pass
report()
"""
# Imported by the command before the program starts, each paid by every `tracedmp run`; the
# program imports what it needs itself.
_NOT_BEFORE_THE_PROGRAM = {"re", "subprocess", "threading", "types", "importlib", "argparse",
                           "typing", "enum", "collections", "functools", "multiprocessing",
                           "warnings", "json", "tracedmp._read"}


def _installed_command():
    script = os.path.join(os.path.dirname(sys.executable), "tracedmp")
    if not os.path.exists(script):
        pytest.skip("tracedmp is not installed beside this Python")
    return script


def test_run_imports_almost_nothing_before_the_exec(tmp_path):
    (tmp_path / "prog.py").write_text("print('hi')\n")
    cmd = [sys.executable, "-c", _STAGE_ONE, _installed_command()]
    env = _clean_env()
    for argv in (["run", "--trace", str(tmp_path / "t.jsonl"), "prog.py"], ["--version"]):
        proc = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        loaded = set(ast.literal_eval(proc.stdout.splitlines()[-1]))
        assert not loaded & _NOT_BEFORE_THE_PROGRAM, (argv, sorted(loaded))
        if argv[0] == "run":
            assert "tracedmp._runtime.sink" in loaded  # it did check the trace file
            assert os.path.exists(tmp_path / "t.jsonl")


def test_the_command_is_tracedmps_own_script_not_an_entry_point_wrapper():
    """The wrapper installers write for an entry point imports re (~10 ms of CPU on 3.11)."""
    with open(_installed_command()) as f:
        text = f.read()
    assert text.startswith("#!") and "from tracedmp._cli import main" in text
    assert "import re" not in text


def test_report_parsed_without_argparse_gets_what_argparse_would():
    cases = [["t.jsonl"], ["t.jsonl", "--json"], ["--top", "3", "t.jsonl", "--pid", "42"],
             ["--channel", "pool.task", "--html", "out.html", "t.jsonl"], ["--top", "010", "x"]]
    for options in cases:
        quick = _cli._quick_report_args(options)
        full = _cli._parser(bench=False).parse_args(["report", *options])
        assert quick is not None, options
        del full.func
        assert vars(full) == vars(quick), options
    for odd in ([], ["--top", "0", "t"], ["--top=3", "t"], ["--pid", "-1", "t"], ["--js", "t"],
                ["a", "b"], ["--top"], ["--top", "²", "t"], ["--help"], ["-"], ["--top", "x", "t"]):
        assert _cli._quick_report_args(odd) is None, odd


def test_report_of_a_small_trace_imports_neither_argparse_nor_orjson(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"v": 1, "event": "pickle", "pid": 1, "seq": 0, "size": 5}\n')
    proc = subprocess.run([sys.executable, "-c", _STAGE_ONE, _installed_command(), "report",
                           str(trace)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=_clean_env())
    assert proc.returncode == 0, proc.stderr
    loaded = set(ast.literal_eval(proc.stdout.splitlines()[-1]))
    assert "tracedmp._read.report" in loaded
    assert not {"argparse", "orjson"} & loaded, sorted(loaded)


def test_the_startup_hook_imports_nothing_when_not_tracing():
    """tracedmp-autostart.pth runs in every Python process of the environment: when not tracing
    it is one environment lookup (0.55 million instructions, docs/benchmarks.md)."""
    code = "import sys; print(sorted(m for m in sys.modules if 'tracedmp' in m))"
    env = _clean_env()
    for flags in ([], ["-I"]):
        out = subprocess.run([sys.executable, *flags, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == "[]", (flags, out.stderr)
    env["TRACEDMP_AUTOSTART"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "['_tracedmp_autostart']", out.stderr
