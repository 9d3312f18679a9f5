"""Shared fixtures: run real programs in fresh interpreters and read back what they traced."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional

import pytest

import tracedmp
from tracedmp._runtime import control

METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    """Each test starts untraced, with default settings, and leaves no child process behind."""
    for var in ("TRACEDMP_TRACE", "TRACEDMP_PICKLER", "TRACEDMP_UNPICKLE", "TRACEDMP_CHECK_SPAWN",
                "TRACEDMP_DIAGNOSE",
                "TRACEDMP_AUTOSTART", "TRACEDMP_MODE", "TRACEDMP_SUMMARY_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    tracedmp.reset_config()
    control.deactivate()
    control._implicit_allowed = True
    yield
    tracedmp.reset_config()
    control.deactivate()
    control._implicit_allowed = True
    leftovers = multiprocessing.active_children()
    for p in leftovers:
        p.kill()
        p.join(5)
    assert not leftovers, f"test left child processes running: {leftovers}"


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, trace: str) -> None:
        self.proc = proc
        self.trace = trace
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.returncode = proc.returncode

    @property
    def records(self) -> List[dict]:
        if not os.path.exists(self.trace):
            return []
        with open(self.trace, "rb") as f:
            return [json.loads(line) for line in f if line.strip()]

    def events(self, event: str, **match) -> List[dict]:
        return [r for r in self.records if r["event"] == event
                and all(r.get(k) == v for k, v in match.items())]

    def output(self) -> dict:
        """The last stdout line, as JSON (programs print their findings there)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_program(tmp_path):
    """Write ``code`` to a script and run it; tracing set up by ``env`` (or ``tracedmp run``)."""

    def run(code: str, *args: str, env: Optional[Dict[str, str]] = None, via_run: bool = False,
            python_args: tuple = (), timeout: float = 90, name: str = "prog.py",
            trace: Optional[str] = None) -> Run:
        script = tmp_path / name
        script.write_text(textwrap.dedent(code))
        trace_path = trace or str(tmp_path / "trace.jsonl")
        full_env = dict(os.environ)
        for var in list(full_env):
            if var.startswith("TRACEDMP_"):
                del full_env[var]
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(tmp_path)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if not via_run:
            full_env["TRACEDMP_TRACE"] = trace_path
        for var, value in (env or {}).items():  # None: leave the variable out
            if value is None:
                full_env.pop(var, None)
            else:
                full_env[var] = value
        if via_run:
            cmd = [sys.executable, *python_args, "-m", "tracedmp", "run", "--trace", trace_path,
                   str(script), *args]
        else:
            cmd = [sys.executable, *python_args, str(script), *args]
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(tmp_path))
        return Run(proc, trace_path)

    return run
