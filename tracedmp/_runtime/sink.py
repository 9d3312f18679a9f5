"""Append whole JSON lines to one trace file, from any number of processes at once.

Each ``os.write`` goes to a descriptor opened with ``O_APPEND``: the kernel puts every write at
the end of the file as one unit, so lines from concurrent processes never interleave.

Children write each record as it is made: a Pool terminates its workers with SIGTERM, and a
record must not die with them.  The main process, which nothing in multiprocessing kills, keeps
up to 64 KiB of records (or until a record comes 50 ms after the first waiting; there is no
timer thread) and writes them in one go (appends from many processes to one
file contend for its inode lock: batching halves the cost of tracing a Pool's tasks).  It writes
them out before every fork, when tracing stops, and at exit after multiprocessing's own exit
handlers, then writes through.
"""

from __future__ import annotations

import os
import sys
import threading
from time import monotonic

from .._errors import TraceFileError

__all__ = ["TraceFile"]

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class TraceFile:
    """A trace file shared by every process of a program.

    The descriptor is opened on first use in each process that did not inherit it (exec'd
    children reopen by path; forked children share the parent's).  A write that fails stops
    tracing in that process with one warning: the traced program never sees the error.
    """

    __slots__ = ("path", "_fd", "failed", "_buffer", "_since", "_lock", "write")

    BUFFER_BYTES = 64 * 1024
    BUFFER_SECONDS = 0.05

    def __init__(self, path: str, *, buffered: bool = False) -> None:
        self.path = path
        self._fd = -1
        self.failed = False
        # One bytearray, not a list of lines: ~200 lines held until a flush make malloc hand
        # memory back to the kernel at every flush and fault it in again (2 page faults and
        # several us of system time a record); a line appended to a bytearray is freed at once.
        self._buffer: "bytearray | None" = bytearray() if buffered else None
        self._since = 0.0
        self._lock = threading.Lock()  # serializes flushes only
        # write(line): bound to the mode, so writing through costs one call, not two.
        self.write = self._append if buffered else self._write

    def open(self) -> None:
        """Open (creating) the file now; raise :class:`TraceFileError` naming the path if not."""
        if self._fd >= 0:
            return
        try:
            # 0o666: the user's umask decides, as for any file the program creates.
            self._fd = os.open(self.path, _FLAGS, 0o666)
        except OSError as exc:
            raise TraceFileError(
                f"cannot write the trace file {self.path!r}: {exc.strerror}; "
                "set TRACEDMP_TRACE (or configure(trace=...)) to a writable path, "
                "or TRACEDMP_TRACE=off to turn tracing off"
            ) from exc

    def _append(self, line: bytes) -> None:
        buffer = self._buffer
        if buffer is None:  # stopped buffering while another thread was on its way here
            self._write(line)
            return
        if not buffer:
            self._since = monotonic()
        buffer += line  # one C call: atomic under the GIL, appending needs no lock
        if len(buffer) >= self.BUFFER_BYTES or monotonic() - self._since >= self.BUFFER_SECONDS:
            # A flush already under way (another thread's, or the one a signal handler
            # interrupted) leaves these lines to the next: never wait here.
            if self._lock.acquire(blocking=False):
                try:
                    self._flush_locked()
                finally:
                    self._lock.release()

    def flush(self, *, then_write_through: bool = False) -> None:
        """Write out what is buffered; optionally stop buffering (at exit)."""
        if self._buffer is None:
            return
        # Bounded wait: a flush interrupted by a signal whose handler flushes must not deadlock.
        if self._lock.acquire(timeout=5):
            try:
                self._flush_locked()
                if then_write_through:
                    self.write = self._write
                    old, self._buffer = self._buffer, None
                    if old:  # appended by another thread while the first write ran
                        self._write(bytes(old))
            finally:
                self._lock.release()

    def after_fork_in_child(self) -> None:
        # The parent keeps (and writes) its own buffer; a child writes through.
        self.write = self._write
        self._buffer = None
        self._lock = threading.Lock()

    def _flush_locked(self) -> None:
        buffer = self._buffer
        if buffer:
            # A copy: a signal handler that runs while os.write retries (EINTR) may append to
            # the buffer, which a bytearray exported to os.write would refuse.
            data = bytes(buffer)
            del buffer[:len(data)]  # lines other threads added meanwhile stay
            self._write(data)

    def _write(self, line: bytes) -> None:
        if self._fd < 0:
            if self.failed:
                return
            try:
                self.open()
            except TraceFileError as exc:
                self._fail(str(exc))
                return
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # only on a full disk or a size limit
                written += os.write(self._fd, line[written:])
        except OSError as exc:
            self._fail(f"cannot write the trace file {self.path!r}: {exc}")

    def close(self) -> None:
        self.flush()
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def _fail(self, message: str) -> None:
        self.write = self._write  # which writes nothing from now on
        self._buffer = None
        self._close_fd()
        self.failed = True
        try:
            sys.stderr.write(f"tracedmp: {message}; tracing stopped in process {os.getpid()}\n")
        except Exception:  # stderr may be closed too; the program must not notice
            pass
