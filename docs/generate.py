"""Regenerate every trace excerpt, report and explain tree the docs show.

    python docs/generate.py

Runs the programs in examples/ with `tracedmp run` (tracedmp must be installed with pip) and
writes what the docs include into docs/generated/.  Pids, times and sizes will differ from run to
run; the shapes are what the pages explain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
OUT = os.path.join(ROOT, "docs", "generated")


def tracedmp(*args: str, cwd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    proc = subprocess.run([sys.executable, "-m", "tracedmp", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"tracedmp {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def trace(name: str, tmp: str, *flags: str, args: tuple = ()) -> str:
    path = os.path.join(tmp, f"{name}{'-'.join(flags)}.jsonl")
    tracedmp("run", *flags, "--trace", path, os.path.join(EXAMPLES, f"{name}.py"), *args, cwd=tmp)
    return path


def records(path: str, **match: object) -> list:
    with open(path) as f:
        out = [json.loads(line) for line in f if line.strip()]  # blank: unused reserved space
    return [r for r in out if all(r.get(k) == v for k, v in match.items())]


def write(name: str, text: str) -> None:
    with open(os.path.join(OUT, name), "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    print(f"wrote docs/generated/{name}")


def jsonl(rs: list) -> str:
    return "\n".join(json.dumps(r, separators=(",", ":")) for r in rs)


def section(report: str, title: str) -> str:
    """One section of a report: from its title line to the next blank line."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def readme(name: str, text: str) -> None:
    """Replace README.md's generated block ``name`` with ``text``."""
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        content = f.read()
    start = content.index(f"<!-- generated: {name} ")
    start = content.index("\n", start) + 1
    end = content.index("<!-- end generated -->", start)
    with open(path, "w") as f:
        f.write(content[:start] + text.rstrip("\n") + "\n" + content[end:])
    print(f"updated README.md ({name})")


def pytest_run(tmp: str) -> str:
    """What pytest prints for examples/pytest_budgets with the plugin's gates on."""
    import re
    import shutil

    project = os.path.join(tmp, "project")
    shutil.copytree(os.path.join(EXAMPLES, "pytest_budgets"), project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    cmd = ["-p", "no:cacheprovider", "--tracedmp-check-spawn", "--tracedmp=traces"]
    proc = subprocess.run([sys.executable, "-m", "pytest", *cmd], capture_output=True,
                          text=True, cwd=project, env=env, timeout=300)
    out = proc.stdout
    start = out.index("=== FAILURES ===")
    start = out.rindex("\n", 0, start) + 1
    end = out.index("=== short test summary info ===")
    end = out.rindex("\n", 0, end) + 1
    text = out[start:end].replace(project + os.sep, "")
    text = re.sub(r"pid [0-9]+", "pid 4242", text)
    return f"$ pytest {' '.join(cmd[2:])}\n...\n{text}..."


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = trace("start_methods", tmp)
        write("start_methods.records.jsonl", jsonl(records(t, event="process_start")))
        write("start_methods.launch.jsonl", jsonl(
            [r for r in records(t, channel="process") if r["child"] == "greeter-spawn"]))
        write("start_methods.report.txt", section(tracedmp("report", t, cwd=tmp),
                                                  "Process starts"))

        t = trace("pool_big_argument", tmp)
        task = next(r for r in records(t, channel="pool.task") if r["type"] == "builtins.tuple")
        write("pool_task.record.json", json.dumps(task, indent=1))
        report = tracedmp("report", t, cwd=tmp)
        write("pool_big_argument.report.txt", report)
        shown = [section(report, "By channel"), "...", section(report, "Process starts"), "...",
                 section(report, "Findings")]
        readme("report", "```text\n$ tracedmp report trace.jsonl\n" + "\n".join(shown)
               + "\n```")
        readme("record", "```json\n" + json.dumps(task, separators=(",", ":")) + "\n```")
        write("explain_function.txt", tracedmp("explain", "pool_big_argument.score", cwd=EXAMPLES))
        write("explain_task.txt", tracedmp(
            "explain", "(7, 0, multiprocessing.pool.mapstar, ((pool_big_argument.score, "
            "(([1, 2, 3], 0), ([1, 2, 3], 1))),), {})", cwd=EXAMPLES))

        t = trace("lambda_cloudpickle", tmp)
        error = records(t, event="pickle_error")[0]
        write("lambda_pickle.error.json", json.dumps(error, indent=1))
        write("lambda_pickle.errors.txt", section(tracedmp("report", t, cwd=tmp),
                                                  "Pickling errors"))
        t = trace("lambda_cloudpickle", tmp, "--pickler", "cloudpickle")
        report = tracedmp("report", t, cwd=tmp)
        write("lambda_cloud.byvalue.txt", section(report, "Sent by value"))
        write("lambda_cloud.findings.txt", section(report, "Findings"))
        closure = next(r for r in records(t, channel="pool.task")
                       if any(c["kind"] == "value" and "scale" in c["name"]
                              for c in r["callables"]))
        write("lambda_cloud.record.json", json.dumps(closure, indent=1))
        write("explain_closure.txt", tracedmp(
            "explain", "--pickler", "cloudpickle", "--depth", "2",
            "lambda_cloudpickle.make_scaler(bytes(100_000))", cwd=EXAMPLES))

        t = trace("fork_only", tmp, "--check-spawn")
        write("fork_only.records.jsonl", jsonl(records(t, event="process_start")))
        write("fork_only.report.txt", section(tracedmp("report", t, cwd=tmp), "Spawn check"))

        t = trace("joblib_arrays", tmp)
        memmapped = next(r for r in records(t, channel="loky.call")
                         if any(a.get("sent_as") == "memmap" for a in r.get("arrays", [])))
        write("joblib.call.record.json", json.dumps(memmapped, indent=1))
        write("joblib.start.record.json", json.dumps(
            records(t, event="process_start")[0], indent=1))
        write("joblib.parallel.jsonl", jsonl(records(t, event="parallel")))
        report = tracedmp("report", t, cwd=tmp)
        write("joblib.report.txt", "\n".join(
            [section(report, "By channel"), "", section(report, "Process starts"), "",
             section(report, "Parallel calls"), "", section(report, "Arrays joblib pickled"),
             "", section(report, "Findings")]))

        write("pytest_budgets.txt", pytest_run(tmp))

        t = trace("manager", tmp)
        write("manager.report.txt", section(tracedmp("report", t, "--channel", "manager",
                                                     cwd=tmp), "By type"))
        write("why_big.manager.txt", section(tracedmp("report", t, cwd=tmp),
                                             "Manager messages by method"))

        why_big(tmp)


def why_big(tmp: str) -> None:
    """docs/why-big.md: the parts of large pickles, and the traps the report names."""
    t = trace("bound_method", tmp)
    task = next(r for r in records(t, channel="pool.task") if r.get("parts"))
    write("why_big.bound_method.record.json", json.dumps(task, indent=1))
    report = tracedmp("report", t, cwd=tmp)
    write("why_big.bound_method.largest.txt", section(report, "Largest pickles"))
    write("why_big.bound_method.findings.txt", section(report, "Findings"))
    write("why_big.explain_method.txt", tracedmp("explain", "bound_method.Model().predict",
                                                 cwd=EXAMPLES))
    t = trace("same_argument", tmp)
    write("why_big.same_argument.findings.txt", section(tracedmp("report", t, cwd=tmp),
                                                        "Findings"))
    t = trace("launch_data", tmp)
    launch = next(r for r in records(t, channel="process", part="process_object")
                  if r.get("parts"))
    write("why_big.launch_data.record.json", json.dumps(launch, indent=1))
    write("why_big.launch_data.findings.txt", section(tracedmp("report", t, cwd=tmp),
                                                      "Findings"))


if __name__ == "__main__":
    main()
