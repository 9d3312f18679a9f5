#!/usr/bin/env python3
"""Run CPython's own multiprocessing test suites plain and traced by tracedmp, and compare.

For each start method: ``python -m test test_multiprocessing_<method> -j2`` once plain and once
with tracedmp's startup hook switched on (TRACEDMP_AUTOSTART + TRACEDMP_TRACE, as ``tracedmp
run`` does), in a venv with tracedmp installed from this checkout.  Prints a plain-vs-traced
table, checks the traced run's trace, and exits 1 if the traced run has any failure, error, skip,
hang or crash the plain run has not (or if its trace is not complete and parseable).

    python conformance/run.py --python 3.11 --methods fork,spawn,forkserver
    tools/sid-python python3.14 conformance/run.py --python 3.14,3.15
    python conformance/run.py --python 3.14 --suite concurrent_futures

Standard library only; runs under any Python 3.9+.  See conformance/README.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DRIVERS = os.path.join(HERE, "drivers")
PYENV = os.path.expanduser("~/.pyenv/versions")
METHODS = ("fork", "spawn", "forkserver")
# test_concurrent_futures runs every start method itself: one run per Python, under this name.
FUTURES = "futures"
SUBMODULES = ("test_manager", "test_misc", "test_processes", "test_threads")
# An upstream race makes it stall until its timeout before 3.13: deselected in both runs.
STALLING_BEFORE_313 = ["*WithThreadsTestPool.test_terminate"]
TRACE_FIELDS = ("v", "event", "ts", "pid", "process", "start_method", "seq")
EVENTS = {"pickle", "pickle_error", "process_start", "unpickle", "trace_start"}


def log(msg: str) -> None:
    print(msg, flush=True)


# -- Pythons and venvs ------------------------------------------------------------------------

def find_python(spec: str) -> str:
    """``3.11``, ``3.11.7`` (under ~/.pyenv/versions, else ``python3.11`` on PATH, as inside
    tools/sid-python for 3.14 and 3.15) or a path to an interpreter."""
    if os.sep in spec:
        return spec
    candidates = [d for d in glob.glob(os.path.join(PYENV, spec + "*"))
                  if re.fullmatch(re.escape(spec) + r"(\.\d+)*", os.path.basename(d))]
    candidates.sort(key=lambda d: [int(x) for x in os.path.basename(d).split(".")])
    if not candidates:
        on_path = shutil.which(f"python{spec}") if re.fullmatch(r"\d+\.\d+", spec) else None
        if on_path:
            return on_path
        sys.exit(f"run.py: no Python {spec} under {PYENV} nor python{spec} on PATH "
                 f"(3.14 and 3.15: run this under tools/sid-python)")
    return os.path.join(candidates[-1], "bin", "python")


def python_info(python: str) -> dict:
    code = ("import sys, sysconfig, json; print(json.dumps({'version': sys.version.split()[0], "
            "'info': list(sys.version_info[:2]), 'stdlib': sysconfig.get_paths()['stdlib']}))")
    return json.loads(subprocess.check_output([python, "-c", code], text=True))


def ensure_venv(base_python: str, version: str, root: str, reinstall: bool) -> str:
    venv = os.path.join(root, f"venv-{version}")
    python = os.path.join(venv, "bin", "python")
    fresh = not os.path.exists(python)
    if fresh:
        log(f"creating {venv}")
        subprocess.check_call([base_python, "-m", "venv", venv])
    if fresh or reinstall:
        # Dependencies once; tracedmp itself afresh each time, so the current checkout is tested.
        log(f"installing tracedmp from {REPO} into {venv}")
        pip = [python, "-m", "pip", "install", "-q"]
        if not fresh:
            pip += ["--force-reinstall", "--no-deps"]
        subprocess.check_call(pip + [REPO], stdout=subprocess.DEVNULL)
    check = ("import os, site, tracedmp; d = site.getsitepackages()[0]; "
             "assert os.path.exists(os.path.join(d, 'tracedmp-autostart.pth')), d; "
             "print(tracedmp.__version__)")
    ver = subprocess.check_output([python, "-c", check], text=True).strip()
    log(f"venv {venv}: tracedmp {ver}")
    return python


def has_test(testdir: str, name: str) -> bool:
    return os.path.isdir(os.path.join(testdir, name)) or os.path.exists(
        os.path.join(testdir, name + ".py"))


def suite_selection(info: dict, method: str, extra_testdir: str = "") -> tuple:
    """(test names, extra regrtest args) for one start method on this Python."""
    testdir = os.path.join(info["stdlib"], "test")
    if method == FUTURES:
        name = "test_concurrent_futures"
        if has_test(testdir, name):
            return [name], []
        if extra_testdir and has_test(extra_testdir, name):
            return [name], ["--testdir", extra_testdir]
        sys.exit(f"run.py: Python {info['version']} has no {name} under {testdir}: give "
                 f"--testdir (see conformance/README.md)")
    name = f"test_multiprocessing_{method}"
    if os.path.isdir(os.path.join(testdir, name)) or os.path.exists(
            os.path.join(testdir, name + ".py")):
        return [name], []
    # 3.11.7 and 3.12.1 ship _test_multiprocessing.py but not the driver packages; regrtest would
    # also look for the package under Lib/test when splitting it, so name its modules one by one.
    return [f"{name}.{sub}" for sub in SUBMODULES], ["--testdir", DRIVERS]


# -- one run of the test runner ---------------------------------------------------------------

def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}


def run_suite(python: str, info: dict, method: str, mode: str, args, outdir: str) -> dict:
    tests, extra = suite_selection(info, method, args.testdir)
    tag = f"{info['version']}-{method}-{mode}"
    if args.tag:
        tag += f"-{args.tag}"
    xml_path = os.path.join(outdir, f"{tag}.xml")
    log_path = os.path.join(outdir, f"{tag}.log")
    trace = os.path.join(outdir, f"{tag}.jsonl") if mode == "traced" else None
    for p in (xml_path, log_path, trace):
        if p and os.path.exists(p):
            os.remove(p)
    jobs = [f"-j{args.jobs}"] if args.jobs > 0 else []  # 0: in the runner's own process
    cmd = [python, "-m", "test", *tests, *jobs, "--timeout", str(args.timeout),
           "--junit-xml", xml_path, *extra]
    # regrtest applies -m/-i in order, the last matching pattern winning: selections first.
    for pat in args.match:
        cmd += ["-m", pat]
    ignores = list(args.ignore)
    if tuple(info["info"]) < (3, 13) and not args.keep_terminate:
        ignores += STALLING_BEFORE_313
    for pat in ignores:
        cmd += ["-i", pat]
    if args.verbose:
        cmd.append("-v")
    env = clean_env()
    if trace and args.via_cli:
        # tracedmp run execs the runner with TRACEDMP_AUTOSTART = its own pid: the runner's
        # process is the traced main process (buffered writes, trace_start record).
        tracedmp = os.path.join(os.path.dirname(python), "tracedmp")
        cmd = [tracedmp, "run", "--trace", trace, "-m", *cmd[2:]]
    elif trace:
        env["TRACEDMP_AUTOSTART"] = args.autostart
        env["TRACEDMP_TRACE"] = trace
    workdir = os.path.join(outdir, f"work-{tag}")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    shown = " ".join(cmd)
    if trace and not args.via_cli:
        shown = f"TRACEDMP_AUTOSTART={args.autostart} TRACEDMP_TRACE={trace} {shown}"
    log(f"[{tag}] {shown}")
    # A hard limit over regrtest's own per-file timeout, in case the runner itself hangs.
    limit = args.timeout * (len(tests) + 2) + 120
    start = time.monotonic()
    hung = False
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    wall = time.monotonic() - start
    shutil.rmtree(workdir, ignore_errors=True)
    res = parse_results(xml_path, log_path)
    res.update(tag=tag, rc=rc, wall=wall, log=log_path, hung_runner=hung, trace=trace)
    if hung:
        res["timeouts"].add("(whole run killed after %d s)" % limit)
    if trace:
        res["trace_check"] = check_trace(trace)
    log(f"[{tag}] {res['result']} in {wall:.0f} s: run={res['run']} failures={res['failures']} "
        f"errors={res['errors']} skipped={res['skipped']} rc={rc}; log {log_path}")
    return res


# -- reading the results ----------------------------------------------------------------------

_STATE = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\] (\S+) (timed out|crashed|failed \(env changed\)"
                    r"|failed|skipped|passed|run no tests|interrupted)")
_UNITTEST = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)]*)\)")


def parse_results(xml_path: str, log_path: str) -> dict:
    res = {
        "run": 0, "failures": 0, "errors": 0, "skipped": 0,
        "failed_names": set(), "skipped_names": set(), "xml_mismatch": False,
        "failed_modules": set(), "timeouts": set(), "crashes": set(), "env_changed": set(),
        "skipped_modules": set(), "result": "?", "total_line": None, "total": {},
    }
    if os.path.exists(xml_path):
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            res["xml_error"] = str(exc)
            root = None
        if root is not None:
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            declared_f = declared_e = 0
            for suite in suites:
                declared_f += int(suite.get("failures", 0))
                declared_e += int(suite.get("errors", 0))
                for case in suite.iter("testcase"):
                    res["run"] += 1
                    name = case.get("name", "?")
                    if case.find("failure") is not None:
                        res["failures"] += 1
                        res["failed_names"].add(name)
                    if case.find("error") is not None:
                        res["errors"] += 1
                        res["failed_names"].add(name)
                    if case.find("skipped") is not None:
                        res["skipped"] += 1
                        res["skipped_names"].add(name)
            # Subtest failures count in the suite's totals but have no testcase element.
            if (declared_f, declared_e) != (res["failures"], res["errors"]):
                res["xml_mismatch"] = True
                res["failures"], res["errors"] = declared_f, declared_e
    text = open(log_path, encoding="utf-8", errors="replace").read() if os.path.exists(
        log_path) else ""
    for m in _STATE.finditer(text):
        module, state = m.groups()
        if state == "timed out":
            res["timeouts"].add(module)
        elif state == "crashed":
            res["crashes"].add(module)
        elif state == "failed (env changed)":
            res["env_changed"].add(module)
        elif state == "failed":
            res["failed_modules"].add(module)
        elif state == "skipped":
            res["skipped_modules"].add(module)
    for line in text.splitlines():
        m = _UNITTEST.match(line)
        if m:  # "FAIL: test_x (pkg.mod.Class.test_x)" or "(pkg.mod.Class)" before 3.11
            ident = m.group(3)
            if not ident.endswith("." + m.group(2)):
                ident = ident + "." + m.group(2)
            res["failed_names"].add(ident)
        if line.startswith("Total tests:"):  # 3.11.7+: the runner's own counts
            res["total_line"] = line.strip()
            res["total"] = {k: int(v.replace(",", "")) for k, v in
                            re.findall(r"(\w+)=([\d,]+)", line)}
        m = re.match(r"^(?:== )?Tests result: (.*?)(?: ==)?$", line)
        if m:
            res["result"] = m.group(1)
    if "Timeout (" in text and not res["timeouts"]:
        # regrtest's faulthandler dump of a stalled test file
        res["timeouts"].add("(faulthandler timeout dump in log)")
    return res


def check_trace(path: str) -> dict:
    """Every line one JSON record of format v1; how many, from how many processes."""
    out = {"records": 0, "bad": [], "truncated_last_line": False, "pids": 0,
           "events": collections.Counter(), "channels": collections.Counter(),
           "start_methods": collections.Counter(), "seq_gaps": 0, "exists": os.path.exists(path)}
    if not out["exists"]:
        out["bad"].append("no trace file")
        return out
    seqs = collections.defaultdict(list)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        out["truncated_last_line"] = True  # allowed by the format: a killed writer's last line
        lines.pop()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            out["bad"].append(f"line {n}: not JSON ({exc}): {line[:120]!r}")
            continue
        if not isinstance(rec, dict) or rec.get("v") != 1:
            out["bad"].append(f"line {n}: not a v1 record: {line[:120]!r}")
            continue
        missing = [k for k in TRACE_FIELDS if k not in rec]
        if missing or rec["event"] not in EVENTS:
            out["bad"].append(f"line {n}: missing {missing} or unknown event: {line[:120]!r}")
            continue
        out["records"] += 1
        out["events"][rec["event"]] += 1
        out["start_methods"][rec["start_method"]] += 1
        if "channel" in rec:
            out["channels"][rec["channel"]] += 1
        seqs[rec["pid"]].append(rec["seq"])
    out["pids"] = len(seqs)
    # Sequence numbers restart at 0 in each process (and in each process a pid is reused for);
    # a gap means a record made but not written.
    for pid, ss in seqs.items():
        ss.sort()
        expected = 0
        for s in ss:
            if s > expected:
                out["seq_gaps"] += 1
            expected = max(expected, s + 1)
    return out


def trace_ok(tc: dict, min_pids: int) -> bool:
    return tc["exists"] and not tc["bad"] and tc["records"] > 0 and tc["pids"] >= min_pids


# -- comparing --------------------------------------------------------------------------------

def differences(plain: dict, traced: dict) -> list:
    diffs = []
    new_failed = traced["failed_names"] - plain["failed_names"]
    if new_failed:
        diffs.append(("new failures/errors", sorted(new_failed)))
    if traced["failures"] + traced["errors"] > plain["failures"] + plain["errors"] and not new_failed:
        diffs.append(("more failures/errors (subtests?)",
                      [f"{traced['failures']}+{traced['errors']} vs "
                       f"{plain['failures']}+{plain['errors']}"]))
    new_skipped = traced["skipped_names"] - plain["skipped_names"]
    if new_skipped:
        diffs.append(("new skips", sorted(new_skipped)))
    for key, label in (("timeouts", "new hangs (timed out)"), ("crashes", "new crashes"),
                       ("failed_modules", "new failed test files"),
                       ("skipped_modules", "new skipped test files")):
        new = traced[key] - plain[key]
        if new:
            diffs.append((label, sorted(new)))
    if traced["rc"] != 0 and plain["rc"] == 0:
        diffs.append(("runner exit status", [f"{traced['rc']} vs 0 ({traced['result']})"]))
    if traced["run"] < plain["run"]:
        diffs.append(("fewer tests run", [f"{traced['run']} vs {plain['run']}"]))
    # The runner's own totals also count what the JUnit XML leaves out (subtests, class skips).
    pt, tt = plain["total"], traced["total"]
    if pt and tt:
        for key in ("failures", "skipped"):
            if tt.get(key, 0) > pt.get(key, 0):
                diffs.append((f"runner total: more {key}", [f"{tt.get(key, 0)} vs "
                                                            f"{pt.get(key, 0)}"]))
        if tt.get("run", 0) < pt.get("run", 0):
            diffs.append(("runner total: fewer tests run", [f"{tt['run']} vs {pt['run']}"]))
    return diffs


def warnings_of(plain: dict, traced: dict) -> list:
    warns = []
    new_env = traced["env_changed"] - plain["env_changed"]
    if new_env:
        warns.append(("new 'env changed' test files", sorted(new_env)))
    return warns


def fmt_set(s: set, limit: int = 3) -> str:
    if not s:
        return "-"
    items = sorted(s)
    short = [i.rsplit(".", 2)[-2] + "." + i.rsplit(".", 1)[-1] if i.count(".") >= 2 else i
             for i in items[:limit]]
    more = f" +{len(items) - limit}" if len(items) > limit else ""
    return ", ".join(short) + more


def table(rows: list) -> str:
    header = ["Python", "method", "mode", "result", "tests", "fail", "err", "skip",
              "hang/crash", "env chg", "failing tests", "wall s", "trace recs/pids"]
    body = []
    for r in rows:
        tc = r.get("trace_check")
        total = r["total"]

        def cell(key, total_key):
            # JUnit XML count, and the runner's own total in brackets where it differs
            v = r[key]
            t = total.get(total_key, 0) if total else None
            return str(v) if t is None or t == v else f"{v} ({t})"

        body.append([r["python"], r["method"], r["mode"], r["result"], cell("run", "run"),
                     str(r["failures"]), str(r["errors"]), cell("skipped", "skipped"),
                     fmt_set(r["timeouts"] | r["crashes"]), fmt_set(r["env_changed"]),
                     fmt_set(r["failed_names"]), f"{r['wall']:.0f}",
                     f"{tc['records']}/{tc['pids']}" if tc else "-"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="3.11",
                    help="comma-separated versions under ~/.pyenv/versions (3.11, 3.13.0) or "
                         "interpreter paths (default 3.11)")
    ap.add_argument("--methods", default="fork,spawn,forkserver")
    ap.add_argument("--suite", default="multiprocessing",
                    choices=("multiprocessing", "concurrent_futures"),
                    help="test_multiprocessing_<method> (default), or test_concurrent_futures "
                         "(every start method in one run; --methods is then ignored)")
    ap.add_argument("--testdir", default="",
                    help="where to find test_concurrent_futures for a Python that lacks it "
                         "(e.g. Debian's libpython3.11-testsuite, unpacked)")
    ap.add_argument("--modes", default="plain,traced",
                    help="which runs to make, in order (default plain,traced)")
    ap.add_argument("--jobs", "-j", type=int, default=2,
                    help="regrtest -j (default 2); 0 runs the tests in the runner's process")
    ap.add_argument("--timeout", type=int, default=300,
                    help="regrtest's per-test-file timeout in seconds (default 300)")
    ap.add_argument("--match", "-m", action="append", default=[],
                    help="pass -m PATTERN to regrtest (run only matching tests); repeatable")
    ap.add_argument("--ignore", "-i", action="append", default=[],
                    help="pass -i PATTERN to regrtest (deselect); repeatable")
    ap.add_argument("--keep-terminate", action="store_true",
                    help="do not deselect WithThreadsTestPool.test_terminate before 3.13")
    ap.add_argument("--verbose", "-v", action="store_true", help="pass -v to regrtest")
    ap.add_argument("--autostart", default="1",
                    help="TRACEDMP_AUTOSTART value for traced runs (default 1: no process is "
                         "the traced main process, every process writes through)")
    ap.add_argument("--via-cli", action="store_true",
                    help="traced runs go through 'tracedmp run -m test ...' (the runner's "
                         "process is the traced main process; with --jobs 0 the tests too)")
    ap.add_argument("--root", default="/tmp/tracedmp-conformance",
                    help="venvs, logs, junit XML and traces go here")
    ap.add_argument("--no-reinstall", action="store_true",
                    help="reuse an existing venv's tracedmp as is")
    ap.add_argument("--min-pids", type=int, default=10,
                    help="a traced trace must hold records from at least this many processes")
    ap.add_argument("--tag", default="", help="suffix for this run's log, XML and trace names")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown start method {m!r}")
    if args.suite == "concurrent_futures":
        methods = [FUTURES]
    for m in modes:
        if m not in ("plain", "traced"):
            ap.error(f"unknown mode {m!r}")
    os.makedirs(args.root, exist_ok=True)
    rows, verdicts, failed = [], [], False
    t0 = time.monotonic()
    for spec in [s.strip() for s in args.python.split(",") if s.strip()]:
        base = find_python(spec)
        info = python_info(base)
        venv_python = ensure_venv(base, info["version"], args.root, not args.no_reinstall)
        outdir = os.path.join(args.root, "runs")
        os.makedirs(outdir, exist_ok=True)
        for method in methods:
            results = {}
            for mode in modes:
                res = run_suite(venv_python, info, method, mode, args, outdir)
                res.update(python=info["version"], method=method, mode=mode)
                results[mode] = res
                rows.append(res)
            tc = results.get("traced", {}).get("trace_check")
            if tc is not None:
                ok = trace_ok(tc, args.min_pids)
                failed |= not ok
                verdicts.append((info["version"], method, "trace", ok, [
                    f"{tc['records']} records from {tc['pids']} processes; "
                    f"events {dict(tc['events'])}; channels {dict(tc['channels'])}; "
                    f"seq gaps {tc['seq_gaps']}; truncated last line: "
                    f"{tc['truncated_last_line']}"] + tc["bad"][:5]))
            if "plain" in results and "traced" in results:
                diffs = differences(results["plain"], results["traced"])
                failed |= bool(diffs)
                verdicts.append((info["version"], method, "diff", not diffs, diffs))
                warns = warnings_of(results["plain"], results["traced"])
                if warns:
                    verdicts.append((info["version"], method, "warn", True, warns))
            elif any(r["failed_names"] or r["timeouts"] or r["crashes"]
                     for r in results.values()):
                failed = True
    log("")
    log(table(rows))
    log("")
    for version, method, kind, ok, detail in verdicts:
        if kind == "trace":
            log(f"{version} {method}: trace {'OK' if ok else 'NOT OK'}: {detail[0]}")
            for d in detail[1:]:
                log(f"    {d}")
        elif kind == "diff":
            if ok:
                log(f"{version} {method}: traced == plain (no new failure, error, skip or hang)")
            for label, items in detail:
                log(f"{version} {method}: DIFFERENCE {label}: {', '.join(items)}")
        else:
            for label, items in detail:
                log(f"{version} {method}: warning: {label}: {', '.join(items)}")
    for r in rows:
        if r["total_line"]:
            log(f"{r['tag']}: {r['total_line']}")
    log(f"total wall time {time.monotonic() - t0:.0f} s; logs under {args.root}/runs")
    if args.json:
        def enc(o):
            return sorted(o) if isinstance(o, set) else dict(o) if isinstance(o, dict) else str(o)
        with open(args.json, "w") as f:
            json.dump(rows, f, default=enc, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
