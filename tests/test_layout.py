"""The package's layout holds: _runtime's imports form a line, and the readers and integrations
stay out of the traced program until it needs them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tracedmp"

# _runtime, bottom first: each module may import only those before it (as _runtime's docstring
# says).  child, the spawned child's bootstrap, imports nothing of ours at module level, and one
# module above it inside a function: control, to start tracing (its comment says why).
RUNTIME = ["config", "sink", "forward", "parts", "channels", "render", "tracer", "summary",
           "records", "diagnose", "picklers", "spawncheck", "child", "hooks", "control"]


def _imports(path: Path, package: str) -> set:
    """Every tracedmp module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names]
            found.update(n if _is_module(n) else module for n in names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "tracedmp" or m.startswith("tracedmp.")}


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_runtime_modules_are_all_in_the_line():
    on_disk = {p.stem for p in (PACKAGE / "_runtime").glob("*.py")} - {"__init__"}
    assert on_disk == set(RUNTIME), "add the new module to RUNTIME and _runtime's docstring"


def test_runtime_imports_only_downward():
    for i, name in enumerate(RUNTIME):
        allowed = {f"tracedmp._runtime.{m}" for m in RUNTIME[:i]}
        allowed |= {"tracedmp", "tracedmp._runtime", "tracedmp._errors", "tracedmp._version"}
        if name == "control":
            allowed.add("tracedmp._integrations")  # the registry, which imports nothing of ours
        if name == "child":
            allowed.add("tracedmp._runtime.control")  # the bootstrap's one way up
        imported = _imports(PACKAGE / "_runtime" / f"{name}.py", "tracedmp._runtime")
        assert imported <= allowed, f"_runtime/{name}.py imports {sorted(imported - allowed)}"


def test_the_child_bootstrap_imports_nothing_of_ours_at_module_level():
    tree = ast.parse((PACKAGE / "_runtime" / "child.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.Import) or not n.level for n in top), ast.dump(top[-1])


def test_the_integration_registry_imports_nothing_of_ours():
    assert _imports(PACKAGE / "_integrations" / "__init__.py", "tracedmp._integrations") == set()


def test_the_commands_import_each_other_in_one_direction():
    assert "tracedmp._cli" not in _imports(PACKAGE / "_bench.py", "tracedmp")


def test_a_traced_program_loads_no_reader_and_no_integration_it_does_not_use(tmp_path):
    code = f"""
import json, sys
import tracedmp as multiprocessing

def square(x):
    return x * x

if __name__ == "__main__":
    multiprocessing.configure(trace={str(tmp_path / "trace.jsonl")!r})
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            assert pool.map(square, range(3)) == [0, 1, 4]
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("tracedmp"))))
"""
    script = tmp_path / "prog.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tracedmp._runtime.picklers" in loaded  # it did trace
    assert not [m for m in loaded if m.startswith("tracedmp._read")], loaded
    assert not [m for m in loaded if m.startswith("tracedmp._integrations.")], loaded
    assert not {"tracedmp._cli", "tracedmp._bench"} & set(loaded), loaded


# What each command must not import: `run` pays its imports before the program starts (issue 19).
_HEAVY = {"multiprocessing", "tracedmp._bench", "typing", "statistics"}
_COMMAND_MODULES = """
import json, os, sys

def report_modules(*args):  # `run` ends in an exec: what was loaded by then
    sys.stdout.flush()
    print(json.dumps(sorted(sys.modules)))
    sys.stdout.flush()
    os._exit(0)

os.execve = report_modules
from tracedmp._cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
report_modules()
"""


def _modules_of_command(tmp_path, *argv: str) -> set:
    proc = subprocess.run([sys.executable, "-c", _COMMAND_MODULES, *argv], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_each_command_imports_only_what_it_uses(tmp_path):
    trace = tmp_path / "t.jsonl"
    (tmp_path / "prog.py").write_text("print('hi')\n")
    run = _modules_of_command(tmp_path, "run", "--trace", str(trace), "prog.py")
    assert "tracedmp._runtime.sink" in run, sorted(run)  # it did get as far as the exec
    assert not (_HEAVY | {"tracedmp._read.reader", "argparse"}) & run, sorted(run)
    version = _modules_of_command(tmp_path, "--version")
    assert not (_HEAVY | {"tracedmp._runtime.config"}) & version, sorted(_HEAVY & version)
    trace.write_text('{"v": 1, "event": "pickle", "pid": 1, "seq": 0}\n')
    report = _modules_of_command(tmp_path, "report", str(trace))
    assert "tracedmp._read.report" in report
    # run's options spelt unusually go through argparse, which still reaches the exec.
    odd = _modules_of_command(tmp_path, "run", f"--trace={trace}", "--unp", "prog.py")
    assert {"argparse", "tracedmp._runtime.sink"} <= odd
    assert not ({"multiprocessing", "tracedmp._bench"} & report), sorted(report)


def test_bench_is_listed_and_built_only_when_asked_for(tmp_path):
    from tracedmp import _bench, _cli

    help_text = subprocess.run([sys.executable, "-m", "tracedmp", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert _cli._BENCH_HELP in " ".join(help_text.split())
    assert f'help="{_cli._BENCH_HELP}"' in Path(_bench.__file__).read_text()
    bench = _modules_of_command(tmp_path, "bench", "--help")
    assert "tracedmp._bench" in bench


def test_run_parsed_without_argparse_gets_what_argparse_would(tmp_path):
    from tracedmp import _cli

    cases = [["--trace", "t.jsonl", "--pickler", "cloudpickle", "--unpickle", "prog.py", "-q"],
             ["--summary", "prog.py"],
             ["--check-spawn", "-m", "pytest", "-x", "--trace", "y"],
             ["--trace", "a", "--trace", "b", "--", "prog.py"], ["prog.py", "--unpickle"]]
    for options in cases:
        argv, program = _cli._split_run(["run", *options])
        quick = _cli._quick_run_args(argv[1:], program)
        full = _cli._parser(bench=False).parse_args(argv)
        full.program = program or full.program
        assert quick is not None, options
        del full.func
        assert vars(full) == vars(quick), options  # every option argparse knows, read alike
    for odd in (["--trace=t", "p.py"], ["--pickler", "dill", "p.py"], ["--help"], [],
                ["--trace"], ["--tr", "t", "p.py"], ["--trace", "-x", "p.py"]):
        argv, program = _cli._split_run(["run", *odd])
        assert _cli._quick_run_args(argv[1:], program) is None, odd
