"""Append whole JSON lines to one trace file, from any number of processes at once.

Children write each record with one ``os.write`` to a descriptor opened with ``O_APPEND``: the
kernel puts every write at the end of the file as one unit, so lines from concurrent processes
never interleave, and a record is in the file the moment it is made (a Pool terminates its
workers with SIGTERM).

The main process, which makes most of a Pool's records, reserves space at the end of the file
(one ``os.write`` of spaces ending in a newline, 4 KiB and doubling to 64 KiB) and copies its
records into that space through a shared memory mapping of the file: no system call per record,
and the pages belong to the kernel's page cache, which writes them to the file even if the
process is killed the next instant (SIGTERM, SIGKILL, a crash).  What a region does not use stays
spaces before a newline: JSON allows whitespace around a value, and readers skip blank lines.

The descriptors sit at a high number (``F_DUPFD_CLOEXEC``) where a program's own ``open`` or
``Pipe`` does not land: a program that closes descriptors it did not open (daemons,
``os.closerange``) gets EBADF on our next write, and the file is reopened by path, never a
descriptor of the program's written to.  No lock here is ever waited on: a write that finds
another under way (another thread's, or the one a signal handler interrupted) appends on its own.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from _thread import allocate_lock  # threading's Lock; threading itself costs `tracedmp run`

from .._errors import TraceFileError

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from mmap import mmap
    from typing import Any, Callable, List, Optional, Tuple

__all__ = ["TraceFile"]

# O_NOFOLLOW: a symbolic link planted at the trace path is refused, not followed.  O_NONBLOCK: a
# FIFO must not block the program before it starts (it is refused once open, as is any file that
# is not a regular one).
_FLAGS = (os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
          | getattr(os, "O_NONBLOCK", 0))
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))
# Descriptors are moved at or above this number (lowered to fit a smaller RLIMIT_NOFILE): open()
# hands out the lowest free number, so a program reaches it only with ~1,000 descriptors open.
_HIGH_FD = 1000


class TraceFile:
    """A trace file shared by every process of a program.

    The descriptor is opened on first use in each process that did not inherit it (exec'd
    children reopen by path; forked children share the parent's).  A write that fails stops
    tracing in that process with one warning: the traced program never sees the error.
    ``mapped`` (the main process): records go through a shared mapping of reserved space.
    """

    __slots__ = ("path", "_fd", "failed", "_map", "_map_fd", "_rfd", "_ident", "_chunk", "_lock",
                 "write", "put", "_first", "_then")

    CHUNK_MIN = 4 * 1024
    CHUNK_MAX = 64 * 1024

    def __init__(self, path: str, *, mapped: bool = False) -> None:
        self.path = path
        self._fd = -1  # O_WRONLY, shared with forked children: their writes, and fallbacks
        self.failed = False
        # The region reserved last, up to its closing newline, positioned at its first free
        # byte (None: none yet, or not mapping).
        self._map: Optional[mmap] = None
        self._map_fd = -1  # the descriptor the mmap module keeps for _map (Python < 3.13)
        self._rfd = -1  # O_RDWR, this process's own file offset: where its reservation ended
        self._ident: Tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file _fd was opened on
        self._chunk = self.CHUNK_MIN
        self._lock = allocate_lock()  # only ever tried, never waited on
        # write(line): bound to the mode, so a write costs one call, not two.
        self.write = self._map_write if mapped else self._write
        # put(line): the hot path's write, raising ValueError where write() would reserve: the
        # region's own mmap.write while there is one (no Python frame between: ~400 machine
        # instructions less a record), else write().
        self.put: Callable[[bytes], Any] = self.write
        # What write_first() asked to go before this process's first line (at most one), and
        # the write that comes back once it is written.
        self._first: List[Callable[[], None]] = []
        self._then = self.write

    def open(self) -> None:
        """Open (creating) the file now; raise :class:`TraceFileError` naming the path if not."""
        if self._fd < 0:
            self._fd = open_trace(self.path, os.O_WRONLY)
            self._ident = _identity(self._fd)

    def check(self, *, ours: bool = False) -> None:
        """Raise :class:`TraceFileError` now if this file could not be written, leaving
        nothing behind: an existing path is opened; for a new one, a nameless file is made in
        its folder and dropped (``O_TMPFILE``), so the first write makes the file.  Where the
        file system cannot do that, ``ours`` (a path no other program uses: the default one)
        is made and removed at once, any other checked with ``access()``."""
        if self._fd >= 0 or os.path.lexists(self.path):
            self.open()
            return
        folder = os.path.dirname(self.path) or os.curdir
        try:
            try:
                fd = os.open(folder, getattr(os, "O_TMPFILE", 0) | os.O_WRONLY
                             | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                if not ours:  # (root passes access() where only a write could tell)
                    if not os.access(folder, os.W_OK | os.X_OK):
                        raise OSError(errno.EACCES, os.strerror(errno.EACCES)) from None
                    return
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.unlink(self.path)
            os.close(fd)
        except OSError as exc:
            raise TraceFileError(_refusal(self.path, exc)) from exc

    def write_first(self, preamble: Callable[[], None]) -> None:
        """Call ``preamble`` (which writes its own line here) just before this process writes its
        first line, or at :meth:`write_pending`: ``write`` stands in until then, so the lines
        after the first cost nothing more."""
        self._first[:] = [preamble]
        self._then = self.write
        self.write = self.put = self._write_first

    def _write_first(self, line: bytes) -> None:
        self.write_pending()
        self.write(line)

    def write_pending(self) -> None:
        """Write what :meth:`write_first` put off, if it is still to be written."""
        if self.write == self._write_first:
            self.write = self.put = self._then  # first: the preamble writes through it
        try:
            preamble = self._first.pop()  # one thread gets it (list.pop is atomic)
        except IndexError:
            return
        preamble()

    def pending(self) -> bool:
        """Whether what :meth:`write_first` put off is still to be written."""
        return bool(self._first)

    def drop_pending(self) -> bool:
        """Forget what :meth:`write_first` put off; whether anything was still pending."""
        if self.write == self._write_first:
            self.write = self.put = self._then
        pending = bool(self._first)
        self._first.clear()
        return pending

    def flush(self) -> None:
        """Nothing to do: every record is in the file (or its page cache) once written."""

    def _map_write(self, line: bytes) -> None:
        # mmap.write copies at the region's position and advances it in one C call, which
        # neither a thread switch nor a signal handler can interrupt.
        try:
            self._map.write(line)  # type: ignore[union-attr]
        except (ValueError, AttributeError):  # the region is full (or closed), or none yet
            self._write_reserving(line)

    def _write_reserving(self, line: bytes) -> None:
        if not self._lock.acquire(False):  # another thread's reservation, or the one we interrupted
            self._write(line)
            return
        try:
            try:
                self._map.write(line)  # type: ignore[union-attr]  # reserved while we waited
                return
            except (ValueError, AttributeError):
                pass
            if len(line) < self.CHUNK_MAX and self.write == self._map_write \
                    and self._reserve(len(line)):
                self._map.write(line)  # type: ignore[union-attr]  # it fits: reserved for it
            else:
                self._write(line)
        finally:
            self._lock.release()

    def _reserve(self, need: int) -> bool:
        """Append a region of padding that holds at least ``need`` bytes and map it; False
        (writing through from now on) if not."""
        size = self._chunk
        while size <= need:  # a line longer than the next region: a larger one (need < MAX)
            size *= 2
        try:
            if self._fd >= 0 and _identity(self._fd) != self._ident:  # closed by the program
                self._fd = -1  # (that number is not ours to close)
            self.open()
            fd = self._rfd
            if fd < 0 or _identity(fd) != self._ident:  # not opened yet, or closed by the program
                fd = self._rfd = open_trace(self.path, os.O_RDWR)
                if _identity(fd) != self._ident:  # the path names another file now
                    raise OSError(errno.ESTALE, "the trace file was replaced")
            written = os.write(fd, b" " * (size - 1) + b"\n")
            if written != size:  # a full disk or a size limit: what was written stays blank
                raise OSError(errno.ENOSPC, "short write")
            # This process alone writes through this descriptor (and only here, holding the
            # lock): its offset is the end of the region, wherever other writers appended.
            end = os.lseek(fd, 0, os.SEEK_CUR)
            start = end - size
            # Up to the closing newline, which stays.
            region, dup = _map_region(fd, start, end - 1, self._ident)
        except (OSError, ValueError, TraceFileError):  # e.g. a file system that cannot map
            self._stop_mapping()
            return False
        self._release()
        self._map, self._map_fd = region, dup
        self.put = region.write
        if size < self.CHUNK_MAX:
            self._chunk = min(size * 2, self.CHUNK_MAX)
        return True

    def _release(self) -> None:
        # The old region is unmapped once no thread is still on its way to write into it, and
        # its descriptor closed with it: unless the program closed that one and has its number
        # now (Python < 3.13), when the region is kept instead, unused.
        old, self._map = self._map, None
        self.put = self.write  # a put already on its way to the old region: ValueError, write()
        if old is not None and self._map_fd >= 0 and _identity(self._map_fd) != self._ident:
            _kept.append(old)
        self._map_fd = -1

    def _stop_mapping(self) -> None:
        self.write = self._write
        self._release()  # a write already on its way to it finds none and writes through
        self._rfd = _close(self._rfd, self._ident)

    def after_fork_in_child(self) -> None:
        # The region is the parent's; a child writes through the shared descriptor.  The lock
        # may have been held by a parent thread at the fork.  What the parent put off to its
        # first line stays the parent's to write.
        self._lock = allocate_lock()
        self.drop_pending()
        self._stop_mapping()

    def _write(self, line: bytes) -> None:
        fd = self._fd
        if fd < 0:
            if self.failed:
                return
            try:
                self.open()
            except TraceFileError as exc:
                self._fail(str(exc))
                return
            fd = self._fd
        try:
            written = os.write(fd, line)
            while written < len(line):  # only on a full disk or a size limit
                written += os.write(fd, line[written:])
        except OSError as exc:
            if exc.errno == errno.EBADF and self._reopen():  # the program closed it
                self._write(line)
                return
            self._fail(f"cannot write the trace file {self.path!r}: {exc}")

    def _reopen(self) -> bool:
        # The number is not ours any more (it may already be one of the program's, open for
        # reading): forget it, never close it.
        if self._fd < 0:
            return False
        self._fd = -1
        try:
            self.open()
        except TraceFileError as exc:
            self._fail(str(exc))
            return False
        return True

    def close(self) -> None:
        if self._lock.acquire(False):  # else a reservation under way: left to the collector
            try:
                self._stop_mapping()
                self._fd = _close(self._fd, self._ident)
            finally:
                self._lock.release()

    def _fail(self, message: str) -> None:
        self.write = self._write  # which writes nothing from now on
        self._release()
        self._fd = _close(self._fd, self._ident)
        self._rfd = _close(self._rfd, self._ident)
        self.failed = True
        try:
            sys.stderr.write(f"tracedmp: {message}; tracing stopped in process {os.getpid()}\n")
        except Exception:  # stderr may be closed too; the program must not notice
            pass


def open_trace(path: str, access: int = os.O_WRONLY) -> int:
    """Open ``path`` for appending, creating it, as a descriptor at a high number.

    Raise :class:`TraceFileError`, with one line naming the path, for what is not a regular
    file of this user's: a symbolic link, a FIFO, a device, a directory, someone else's file.
    """
    try:
        # 0o666: the user's umask decides, as for any file the program creates.
        fd = os.open(path, access | _FLAGS, 0o666)
    except OSError as exc:
        raise TraceFileError(_refusal(path, exc)) from exc
    try:
        st = os.fstat(fd)
        what = next((name for test, name in _KINDS if test(st.st_mode)), None)
        if what is not None:
            raise TraceFileError(
                f"the trace path {path!r} is {what}, not a regular file; {_FIX}")
        uid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid
        if st.st_uid != uid:
            raise TraceFileError(
                f"the trace file {path!r} belongs to another user (uid {st.st_uid}, not {uid}); "
                f"tracedmp appends only to a file of yours; {_FIX}")
        os.set_blocking(fd, True)
        return _move_high(fd)
    except BaseException:
        os.close(fd)
        raise


_FIX = ("set TRACEDMP_TRACE (or configure(trace=...)) to a writable path, "
        "or TRACEDMP_TRACE=off to turn tracing off")


def _refusal(path: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP and os.path.islink(path):
        return (f"the trace path {path!r} is a symbolic link, which tracedmp does not follow "
                f"(someone may have planted it); {_FIX}")
    if exc.errno == errno.ENXIO:  # O_NONBLOCK open of a FIFO no one reads
        return f"the trace path {path!r} is a FIFO, not a regular file; {_FIX}"
    if exc.errno == errno.EISDIR:
        return f"the trace path {path!r} is a directory, not a regular file; {_FIX}"
    return f"cannot write the trace file {path!r}: {exc.strerror}; {_FIX}"


def _move_high(fd: int) -> int:
    try:
        import fcntl  # already imported by multiprocessing in every child it starts

        try:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
        except OSError:  # RLIMIT_NOFILE at or below _HIGH_FD: as high as it allows
            import resource

            floor = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2
            if floor <= fd:
                return fd
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    except (ImportError, OSError, ValueError):  # no room up there: the number open() gave
        return fd
    os.close(fd)
    return high


_kept: List[mmap] = []  # regions whose descriptor number the program took over (see _release)


def _map_region(fd: int, start: int, end: int, ident: Tuple[int, int]) -> Tuple[mmap, int]:
    """Map bytes ``start:end`` of the file open as ``fd``, positioned at ``start``; with the
    descriptor the mapping keeps open (-1: none)."""
    import mmap

    base = start - start % mmap.ALLOCATIONGRANULARITY
    if sys.version_info >= (3, 13):
        region = mmap.mmap(fd, end - base, access=mmap.ACCESS_WRITE, offset=base,
                           trackfd=False)
        dup = -1
    else:
        # The mmap module keeps a dup() of fd, which takes the lowest free number: learn which.
        probe = os.dup(fd)
        os.close(probe)
        region = mmap.mmap(fd, end - base, access=mmap.ACCESS_WRITE, offset=base)
        dup = probe
        if _identity(dup) != ident:  # another thread took that number meanwhile: unknown
            region.close()
            raise OSError(errno.EBADF, "cannot tell the mapping's descriptor")
    region.seek(start - base)
    return region, dup


def _identity(fd: int) -> Tuple[int, int]:
    try:
        st = os.fstat(fd)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def _close(fd: int, ident: Tuple[int, int]) -> int:
    """Close ``fd`` if it is still the file ``ident`` names (else the program's now)."""
    if fd >= 0 and _identity(fd) == ident:
        try:
            os.close(fd)
        except OSError:
            pass
    return -1
