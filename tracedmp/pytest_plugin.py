"""tracedmp's pytest plugin: pickle budgets, the spawn gate, per-test traces.

Registered through the ``pytest11`` entry point (``-p no:tracedmp`` turns it off) and inactive
until asked for: a test with the ``pickle_budget`` marker or the ``tracedmp_capture`` fixture,
or a run with one of the ``--tracedmp`` options.  Other tests run exactly as without it.

A test that is asked for runs its call (the test function itself, not its fixtures' setup and
teardown) inside :func:`tracedmp.capture`, so every process it starts is traced, whether the
test imports tracedmp or plain ``multiprocessing``; the verdicts are read from those records.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any, Dict, Generator, List, Optional

import pytest

__all__ = ["tracedmp_capture"]

_MARKER = "pickle_budget"
_FIXTURE = "tracedmp_capture"
_DEFAULT_DIR = "tracedmp-traces"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("tracedmp", "tracedmp: what multiprocessing pickles")
    group.addoption(
        "--tracedmp", nargs="?", const=_DEFAULT_DIR, default=None, metavar="DIR",
        help="trace every test: one trace per test in DIR (default: ./tracedmp-traces; write "
             "--tracedmp=DIR), and a summary of the heaviest tests at the end")
    group.addoption(
        "--tracedmp-check-spawn", action="store_true", default=False,
        help="fail tests whose fork-started processes would not start under spawn or "
             "forkserver (the default from Python 3.14), naming what fails and the fix")
    group.addoption(
        "--tracedmp-start-method", default=None, metavar="METHOD",
        help="run the suite's default multiprocessing context with METHOD "
             "(fork, spawn or forkserver)")
    group.addoption(
        "--tracedmp-top", type=int, default=10, metavar="N",
        help="how many tests the --tracedmp summary lists (default 10)")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(per_message=None, total=None, messages=None, by_value=None, errors=None, "
        "channel=None): fail the test if what its processes pickle exceeds these limits; "
        "sizes like 2048, '100 KB', '1.5 MiB' (tracedmp)")
    opt = config.option
    method = getattr(opt, "tracedmp_start_method", None)
    if (getattr(opt, "tracedmp", None) is not None or getattr(opt, "tracedmp_check_spawn", False)
            or method is not None):
        config.pluginmanager.register(_Session(config), "tracedmp-session")


def pytest_unconfigure(config: Any) -> None:
    session = config.pluginmanager.get_plugin("tracedmp-session")
    if session is not None:
        session.close()
        config.pluginmanager.unregister(session)


@pytest.fixture
def tracedmp_capture(request: Any) -> Any:
    """The :class:`tracedmp.Capture` of this test's call: read it in the test (or after, in a
    fixture's teardown) for what the test's processes pickled."""
    return _new_state(request.node).capture


# -- one test ----------------------------------------------------------------------------------

class _ItemState:
    """What the plugin keeps for one test while it runs."""

    def __init__(self, item: Any, session: Optional["_Session"]) -> None:
        from tracedmp._capture import capture

        path = session.trace_path(item) if session is not None else None
        self.session = session
        self.check_spawn = bool(session is not None and session.check_spawn)
        self.capture = capture(path, check_spawn=True if self.check_spawn else None)
        self.stats: Optional[Dict[str, Any]] = None


_STATE_ATTR = "_tracedmp_state"


def _session_of(item: Any) -> Optional["_Session"]:
    return item.config.pluginmanager.get_plugin("tracedmp-session")


def _item_state(item: Any) -> Optional[_ItemState]:
    """The test's state if it asked for tracing (made now if not yet), else None."""
    state = getattr(item, _STATE_ATTR, None)
    if state is None and _wanted(item):
        state = _new_state(item)
    return state


def _new_state(item: Any) -> _ItemState:
    state = getattr(item, _STATE_ATTR, None)
    if state is None:
        state = _ItemState(item, _session_of(item))
        setattr(item, _STATE_ATTR, state)
    return state


def _wanted(item: Any) -> bool:
    session = _session_of(item)
    return (item.get_closest_marker(_MARKER) is not None
            or _FIXTURE in getattr(item, "fixturenames", ())
            or (session is not None and session.traces_every_test))


def _budgets(item: Any) -> List[Any]:
    from tracedmp._budget import Budget
    from tracedmp._errors import ConfigError

    budgets = []
    for mark in item.iter_markers(_MARKER):
        try:
            budgets.append(Budget.from_marker(mark.args, mark.kwargs))
        except ConfigError as exc:
            problem = str(exc)
        else:
            continue
        pytest.fail(f"{_MARKER} of {item.nodeid}: {problem}", pytrace=False)
    return budgets


# Old-style hook wrappers: they work with every pluggy pytest 7 and 8 may bring (new-style
# ``wrapper=True`` needs pluggy 1.1, and a plugin that fails to import breaks every test run).

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: Any) -> Generator[None, Any, None]:
    state = _item_state(item)
    if state is None:
        yield
        return
    budgets = _budgets(item)  # a bad marker fails before the test runs
    cap = state.capture
    with cap:
        outcome = yield
    state.stats = _stats(cap)
    if outcome.excinfo is not None:
        return  # the test failed by itself: its own error is the one to see
    problems = []
    if budgets:
        if cap.still_running:
            problems.append(_still_running(cap))
        else:
            for budget in budgets:
                problems += budget.violations(cap.pickles(), cap.errors)
    if state.check_spawn:
        problems += _spawn_problems(cap)
    if problems:
        try:
            pytest.fail("\n\n".join(problems), pytrace=False)
        except pytest.fail.Exception as exc:
            if hasattr(outcome, "force_exception"):  # pluggy >= 1.1
                outcome.force_exception(exc)
            else:  # pragma: no cover - older pluggy takes the exception as the call's
                raise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    state = getattr(item, _STATE_ATTR, None)
    if state is not None and call.when == "call" and state.stats is not None:
        # Plain data: pytest-xdist sends it with the report to the controller.
        outcome.get_result().tracedmp = state.stats


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: Any, nextitem: Any) -> Generator[None, Any, None]:
    yield
    state = getattr(item, _STATE_ATTR, None)
    if state is not None:
        delattr(item, _STATE_ATTR)
        if state.session is None or state.session.directory is None:
            state.capture.close()  # the temporary trace goes
        elif state.stats is not None and not state.stats["records"]:
            _remove(state.capture.path)  # nothing traced: no file


def _still_running(cap: Any) -> str:
    names = ", ".join(f"{p['process']} (pid {p['pid']}, target {p['target']})"
                      for p in cap.still_running)
    return (f"{_MARKER} cannot be checked: the test left {len(cap.still_running)} process(es) "
            f"running, whose records may still be to come: {names}. Join (or terminate and "
            "join) the processes a test starts before it ends, so that its verdict does not "
            "depend on timing")


def _spawn_problems(cap: Any) -> List[str]:
    found = []
    for r in cap.records():
        check = r.get("spawn_check")
        if isinstance(check, dict) and check.get("would_pickle") is False:
            found.append((r, check))
    if not found:
        return []
    lines = [f"--tracedmp-check-spawn: {len(found)} process(es) started with fork would not "
             "start under spawn or forkserver (the default start method from Python 3.14 on "
             "Linux):"]
    for r, check in found:
        lines.append(f"  {r.get('child') or 'a process'} (target {r.get('target') or '?'}): "
                     f"{check.get('error')}")
        if check.get("path"):
            lines.append(f"    at {check['path']}")
        if check.get("hint"):
            lines.append(f"    fix: {check['hint']}")
    return ["\n".join(lines)]


def _stats(cap: Any) -> Dict[str, Any]:
    records = cap.records()
    pickles = [r for r in records if r.get("event") == "pickle"]
    sizes = [r.get("size") for r in pickles if type(r.get("size")) is int]
    largest = max(pickles, key=lambda r: r.get("size") or 0, default=None)
    return {
        "records": sum(1 for r in records if r.get("event") != "trace_start"),
        "pickles": len(pickles),
        "bytes": sum(sizes),
        "largest": largest.get("size") if largest is not None else 0,
        "largest_channel": largest.get("channel") if largest is not None else None,
        "errors": sum(1 for r in records if r.get("event") == "pickle_error"),
        "processes": sum(1 for r in records if r.get("event") == "process_start"),
        "complete": not cap.still_running,
        "trace": cap.path,
    }


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- the run -----------------------------------------------------------------------------------

class _Session:
    """What the --tracedmp options set up for the whole run, and the summary at its end."""

    def __init__(self, config: Any) -> None:
        opt = config.option
        self.config = config
        self.check_spawn = bool(opt.tracedmp_check_spawn)
        self.top = opt.tracedmp_top
        self.directory: Optional[str] = None
        self.tests: List[Dict[str, Any]] = []
        self._old_default: Any = None
        if opt.tracedmp is not None:
            self.directory = os.path.abspath(opt.tracedmp)
            os.makedirs(self.directory, exist_ok=True)
        if opt.tracedmp_start_method is not None:
            self._set_start_method(opt.tracedmp_start_method)
        # --tracedmp-start-method alone traces nothing
        self.traces_every_test = self.directory is not None or self.check_spawn

    def _set_start_method(self, method: str) -> None:
        import multiprocessing
        from multiprocessing import context

        allowed = multiprocessing.get_all_start_methods()
        if method not in allowed:
            raise pytest.UsageError(
                f"--tracedmp-start-method={method!r} is not a start method of this Python; use "
                f"one of {', '.join(allowed)}")
        # As Python 3.14 changes the default: the default context's default, not a method set,
        # so a test that calls set_start_method() itself still can.
        default: Any = context._default_context
        self._old_default = default._default_context
        default._default_context = multiprocessing.get_context(method)

    def close(self) -> None:
        if self._old_default is not None:
            from multiprocessing import context

            default: Any = context._default_context
            default._default_context = self._old_default
            self._old_default = None

    def trace_path(self, item: Any) -> Optional[str]:
        if self.directory is None:
            return None
        return os.path.join(self.directory, _file_name(item.nodeid))

    def pytest_runtest_logreport(self, report: Any) -> None:
        stats = getattr(report, "tracedmp", None)
        if report.when == "call" and isinstance(stats, dict):
            self.tests.append({"nodeid": report.nodeid, **stats})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.directory is None:
            return
        from tracedmp._read.report import _fmt_bytes

        tr = terminalreporter
        traced = [t for t in self.tests if t.get("records")]
        ranked = sorted(traced, key=lambda t: (-t.get("bytes", 0), -t.get("pickles", 0),
                                               t["nodeid"]))[:max(self.top, 0)]
        shown = f"the {len(ranked)} tests" if len(ranked) != 1 else "the test"
        tr.write_sep("=", f"tracedmp: {shown} that pickled most")
        if not traced:
            tr.write_line("no test pickled anything across a process boundary")
        for t in ranked:
            notes = []
            if t.get("largest"):
                notes.append(f"largest {_fmt_bytes(t['largest'])} ({t['largest_channel']})")
            if t.get("processes"):
                notes.append(f"{t['processes']} started")
            if t.get("errors"):
                notes.append(f"{t['errors']} failed")
            if not t.get("complete", True):
                notes.append("left processes running: records may be missing")
            n = t.get("pickles", 0)
            tr.write_line(f"{_fmt_bytes(t.get('bytes', 0)):>9} {n:>7} "
                          f"{'pickle ' if n == 1 else 'pickles'}"
                          f"  {t['nodeid']}" + (f"  [{', '.join(notes)}]" if notes else ""))
        tr.write_line(f"traces of {len(traced)} test(s) in {self.directory} "
                      "(read one with: tracedmp report FILE)")


def _file_name(nodeid: str) -> str:
    """A file name for a test's trace: readable, unique (a checksum of the whole id), short."""
    readable = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid.replace("::", "__")).strip("_.")
    return f"{readable[:120]}-{zlib.crc32(nodeid.encode()):08x}.jsonl"

