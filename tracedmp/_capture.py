"""``tracedmp.capture()``: trace one block of code, in every process it starts, and read it back.

    with tracedmp.capture() as cap:
        run_the_code()
    cap.pickles(channel="pool.task"), cap.total_bytes, cap.largest, cap.errors, cap.summary()

The block traces to a file of its own (a temporary one unless ``path`` is given), with the
settings in force otherwise (pickler, unpickling, spawn check).  Tracing that was running before
is suspended, not stopped: its file stays open, and when the block ends the block's records are
appended to it as well (the main process's through its structlog processors), so an outer trace
or an outer capture still holds everything.  Then tracing is exactly as it was: off with no hook
left, or the outer trace running.

Children started in the block trace to the block's file: forked ones share it, spawned and
forkserver ones are handed its path with their launch data (grandchildren too).  A child still
running when the block ends goes on writing there; ``cap.complete`` is then false and
``cap.still_running`` names it, and reading the capture later includes what it wrote since.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import weakref
from typing import Any, Dict, Iterable, List, Optional, Union

from ._errors import TracedmpError
from ._read.reader import Record, Trace
from ._runtime import config as _config
from ._runtime import control as _control
from ._runtime import tracer as _tracer

__all__ = ["Capture", "capture"]


def capture(path: Union[str, "os.PathLike[str]", None] = None, *,
            pickler: Optional[str] = None, unpickle: Optional[bool] = None,
            check_spawn: Optional[bool] = None) -> "Capture":
    """Trace the ``with`` block that uses the result, in every process it starts.

    - ``path``: where the block's trace goes (created anew; kept afterwards). By default a
      temporary file, removed when the capture object is.
    - ``pickler``, ``unpickle``, ``check_spawn``: as for :func:`tracedmp.configure`; by default
      the settings in force (those of running tracing, else the configured ones).

    Tracing that was running before is suspended for the block and gets the block's records
    appended when it ends; a trace that was off is off again, with every hook removed.
    """
    return Capture(path, pickler=pickler, unpickle=unpickle, check_spawn=check_spawn)


class Capture:
    """What one ``with tracedmp.capture()`` block traced (see :func:`tracedmp.capture`).

    The records are read from the block's trace file when asked for, so a capture read while
    its block runs, or after a child it left running wrote more, sees what is there then.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]", None] = None, *,
                 pickler: Optional[str] = None, unpickle: Optional[bool] = None,
                 check_spawn: Optional[bool] = None) -> None:
        given = {"pickler": pickler, "unpickle": unpickle, "check_spawn": check_spawn}
        self._changes: Dict[str, Any] = {name: _config.check_option(name, value)
                                         for name, value in given.items() if value is not None}
        self._own_dir: Optional[str] = None
        if path is None:
            self.path = ""  # made on entry: a capture never entered leaves no file
        else:
            checked = _config.check_trace(path, "path")
            if not isinstance(checked, str):
                raise TracedmpError(
                    f"capture(path={path!r}): give a file path for the block's trace, or leave "
                    "it out for a temporary file")
            self.path = checked
        self._state = "new"
        self._tracer: Any = None
        self._suspended: Any = None
        # (file size, records) of the last read once the block is done: only children write
        # then, appending (the main process writes into space reserved at the file's end)
        self._cache: Optional[tuple] = None
        self.still_running: List[Dict[str, Any]] = []
        self._finalizer: Optional[weakref.finalize] = None

    # -- the block ----------------------------------------------------------------------------

    def __enter__(self) -> "Capture":
        if self._state != "new":
            raise TracedmpError("a capture can be used for one block only; "
                                "make a new tracedmp.capture() for the next one")
        child = sys.modules.get("tracedmp._runtime.child")
        if child is not None:  # a spawned child's own tracing comes first: it is the outer one
            child.start_pending()
        outer = _tracer.current
        base = outer.config if outer is not None else _config.resolve()
        if not self.path:
            self._own_dir = tempfile.mkdtemp(prefix="tracedmp-capture-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._own_dir, True)
            self.path = os.path.join(self._own_dir, "trace.jsonl")
        else:
            try:
                os.unlink(self.path)  # the block's own records only
            except OSError:
                pass  # none there; or the sink's error will name what is wrong with it
        changes = dict(self._changes)
        if "mode" in _config.Config.__slots__:  # a capture is read record by record: never
            changes["mode"] = "full"            # a summary trace's aggregates
        cfg = base.replace(trace=self.path, processors=(), **changes)
        self._tracer, self._suspended = _control.push(cfg, trace_start=outer is None)
        self._state = "running"
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._state != "running":
            return
        self._state = "done"
        self._cache = None  # read while running: the main process may have written since, into
        # space it had reserved in the file (the file's size does not tell)
        ours = self._tracer
        current = _tracer.current
        if current is ours or (current is not None and current.config.trace == self.path):
            _control.pop(self._suspended, forward=self._forward)
        else:  # the block changed tracing itself (uninstall(), configure(trace=...)): its choice
            ours.sink.close()
        self.still_running = self._running_children()

    def _forward(self, outer: Any) -> None:
        """Append the block's records to the outer trace: other processes' lines as they are,
        this process's numbered on from the outer trace's numbers (the block's file numbered
        them from 0) and through its processors, as they would have gone."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        mine = b'"pid":%d,' % os.getpid()
        with f:
            chunk: List[bytes] = []
            for line in f:
                if not line.endswith(b"\n") or not line.strip():
                    continue  # a line a child is still writing, or nothing
                if mine in line:
                    if chunk:
                        outer.sink.write(b"".join(chunk))
                        chunk = []
                    record = _loads(line)
                    if isinstance(record, dict) and record.get("pid") == os.getpid():
                        record["seq"] = next(_tracer._seq)
                        outer.emit(record)
                        continue
                chunk.append(line)
                if len(chunk) >= 512:
                    outer.sink.write(b"".join(chunk))
                    chunk = []
            if chunk:
                outer.sink.write(b"".join(chunk))

    def _running_children(self) -> List[Dict[str, Any]]:
        """The processes started in the block that still run: their records may be missing."""
        running: List[Dict[str, Any]] = []
        try:
            f = open(self.path, "rb")
        except OSError:
            return running
        with f:  # only the process_start lines are parsed: a large capture costs a scan
            for line in f:
                if b'"process_start"' not in line:
                    continue
                r = _loads(line)
                pid = r.get("child_pid") if isinstance(r, dict) else None
                if type(pid) is int and r.get("event") == "process_start" and _alive(pid):
                    running.append({"pid": pid, "process": r.get("child"),
                                    "target": r.get("target")})
        return running

    # -- reading ------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """False while the block runs, or when it left processes running (their records may
        be missing; ``still_running`` names them)."""
        if self._state != "done":
            return False
        if self.still_running:
            self.still_running = [p for p in self.still_running if _alive(p["pid"])]
        return not self.still_running

    def records(self, event: Optional[str] = None) -> List[Record]:
        """Every record of the block (``event``: only those of that kind)."""
        if not self.path or self._state == "new":
            return []
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return []
        if self._state == "running" or self._cache is None or self._cache[0] != size:
            try:
                records = list(Trace(self.path))
            except FileNotFoundError:  # pragma: no cover - removed by close() meanwhile
                records = []
            self._cache = (size, records)
        records = self._cache[1]
        if event is None:
            return list(records)
        return [r for r in records if r.get("event") == event]

    def pickles(self, channel: Union[str, Iterable[str], None] = None) -> List[Record]:
        """The ``pickle`` records, of ``channel`` only if given (a name or several)."""
        pickles = self.records("pickle")
        if channel is None:
            return pickles
        wanted = {channel} if isinstance(channel, str) else set(channel)
        return [r for r in pickles if r.get("channel") in wanted]

    @property
    def errors(self) -> List[Record]:
        """The ``pickle_error`` records: pickles that failed."""
        return self.records("pickle_error")

    @property
    def process_starts(self) -> List[Record]:
        """One ``process_start`` record per process started in the block."""
        return self.records("process_start")

    @property
    def total_bytes(self) -> int:
        """Bytes of every pickle of the block."""
        return sum(r.get("size") or 0 for r in self.pickles())

    @property
    def largest(self) -> Optional[Record]:
        """The largest pickle record, or None."""
        return max(self.pickles(), key=lambda r: r.get("size") or 0, default=None)

    def summary(self, *, top: int = 10) -> Dict[str, Any]:
        """What ``tracedmp report --json`` says of the block's records, and ``still_running``."""
        from ._read.report import summarize

        data = summarize(self.records(), top=top)
        data["trace"] = self.path
        data["complete"] = self.complete
        data["still_running"] = list(self.still_running)
        return data

    def report(self, *, top: int = 10) -> str:
        """The text ``tracedmp report`` prints for the block."""
        from ._read.report import render_text

        text = render_text(self.summary(top=top))
        if self.still_running:
            names = ", ".join(f"{p['process']} (pid {p['pid']})" for p in self.still_running)
            text += f"\nStill running when the block ended, records may be missing: {names}\n"
        return text

    def close(self) -> None:
        """Remove the temporary trace file now (a ``path`` given is kept)."""
        if self._state == "running":
            self.__exit__(None, None, None)
        if self._finalizer is not None:
            self._finalizer()
        self._cache = None

    def __repr__(self) -> str:
        return f"<tracedmp.Capture {self._state} {self.path or '(no file yet)'}>"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (an exited child not yet reaped counts as ended;
    nothing is reaped here)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def _loads(line: bytes) -> Any:
    import json

    try:
        return json.loads(line)
    except ValueError:
        return None
