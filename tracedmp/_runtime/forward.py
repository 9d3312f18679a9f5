"""A sink for a process whose trace file is elsewhere: records kept in memory and handed over in
batches (a Dask worker or scheduler that tracedmp did not start, ``_integrations/dask_plugin``).

```text
 record ──> ForwardingSink.write: appended to a deque (no system call, no lock)
                │  count or bytes over a bound: wake() asks the owner to flush soon
 owner, every interval or when woken ──> take(limit): whole lines, oldest first ──> the owner's
                                          channel to the process writing the trace
```

The process's own children (a task's multiprocessing Pool) cannot reach the owner's channel:
they write to ``spool``, a file of this process's, as any traced child writes to its trace file
(forked ones through the inherited descriptor, spawned ones by its path), and ``take`` hands on
its whole lines after the buffered ones.  Nothing here knows who the owner is.

What a process killed before its owner flushed had buffered is lost: at most one interval of
records, visible to readers as the numbers after the last ``seq`` that arrived.
"""

from __future__ import annotations

import os
from collections import deque

from .sink import TraceFile

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Callable, Deque, Optional

__all__ = ["ForwardingSink"]


class ForwardingSink:
    """Lines kept for ``take``; ``wake()`` is called (once until the next ``take``) when
    ``max_lines`` or ``max_bytes`` are waiting.  Past ``cap`` bytes waiting (nobody takes them)
    new lines are dropped, each still numbered: readers count them as lost."""

    __slots__ = ("path", "failed", "write", "_lines", "_bytes", "_wake", "_woken", "max_lines",
                 "max_bytes", "cap", "_file", "_spool_fd", "_spool_at", "dropped")

    def __init__(self, spool: str, wake: Callable[[], None], *, max_lines: int = 4096,
                 max_bytes: int = 512 * 1024, cap: int = 64 * 1024 * 1024) -> None:
        self.path = spool  # what children trace to (the process's Config.trace)
        self.failed = False
        self._lines: Deque[bytes] = deque()
        self._bytes = 0  # waiting, roughly: threads may race on it; take() only subtracts
        self._wake = wake
        self._woken = False
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.cap = cap
        self._file: Optional[TraceFile] = None  # a forked child's: it writes to the spool
        self._spool_fd = -1
        self._spool_at = 0
        self.dropped = 0
        self.write = self._keep

    def _keep(self, line: bytes) -> None:
        self._lines.append(line)  # deque.append is atomic: any thread, a signal handler
        n = self._bytes = self._bytes + len(line)
        if n >= self.max_bytes or len(self._lines) >= self.max_lines:
            self._overflow(n)

    def _overflow(self, n: int) -> None:
        if n >= self.cap:
            self.write = self._drop
        if self._woken:
            return
        self._woken = True
        try:
            self._wake()
        except Exception:  # the owner going away must not reach the program's pickle
            pass

    def put(self, line: bytes) -> None:
        """The pickler's hot-path write (TraceFile's raises ValueError where write would
        reserve; this never does)."""
        self.write(line)

    def _drop(self, line: bytes) -> None:
        self.dropped += 1

    def waiting(self) -> int:
        """Lines kept, not taken yet."""
        return len(self._lines)

    def take(self, limit: int = 1024 * 1024) -> bytes:
        """Whole lines waiting, oldest first, about ``limit`` bytes at most (at least one line);
        then the spool's new whole lines.  ``b""``: nothing waiting."""
        lines = self._lines
        out = []
        size = 0
        while lines and size < limit:
            line = lines.popleft()
            out.append(line)
            size += len(line)
        self._bytes = max(0, self._bytes - size)
        if not lines:
            self._woken = False
            if self.write == self._drop and self._file is None:
                self.write = self._keep
        if size < limit:
            out.append(self._read_spool(limit - size))
        return b"".join(out)

    def _read_spool(self, limit: int) -> bytes:
        if self._spool_fd < 0:
            try:
                self._spool_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                                         | getattr(os, "O_NOFOLLOW", 0))
            except OSError:  # no child has written yet
                return b""
        try:
            data = os.pread(self._spool_fd, max(limit, 64 * 1024), self._spool_at)
        except OSError:
            return b""
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        if end == 0 and len(data) >= 64 * 1024:  # one line longer than a batch: skipped
            self._spool_at += len(data)
            return b""
        self._spool_at += end
        return data[:end]

    def open(self) -> None:
        """Nothing to open: the lines stay in memory."""

    # TraceFile's put-off first line (tracing started by first use, in a main process): never
    # here, where tracing is started by a plugin and writes no trace_start.
    def pending(self) -> bool:
        return False

    def drop_pending(self) -> bool:
        return False

    def write_pending(self) -> None:
        """Nothing put off."""

    def flush(self) -> None:
        """Nothing to do: the owner takes the lines."""

    def after_fork_in_child(self) -> None:
        # The parent forwards what it had buffered; the child, which has no way to the owner,
        # writes to the spool like any traced child.
        self._lines = deque()
        self._bytes = 0
        self._spool_fd = -1
        self._file = TraceFile(self.path)
        self.write = self._file.write

    def close(self, remove: bool = False) -> None:
        """Stop reading the spool (removing it if ``remove``: the last take is done)."""
        if self._file is not None:
            self._file.close()
            return
        if self._spool_fd >= 0:
            try:
                os.close(self._spool_fd)
            except OSError:
                pass
            self._spool_fd = -1
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
