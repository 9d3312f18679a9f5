"""Reading traces back: records as typed objects, one line at a time.

The reader parses JSON and nothing else: it never unpickles anything.  One bad line never makes
a trace unreadable.  A line a process left unfinished (killed, or out of disk, or over a file
size limit in the middle of its write) is skipped and counted wherever it is: at the end of the
file, followed by other processes' lines, or with the next record glued to it (that record is
read).  So is any other line that is not a record, once the file has shown itself to be a
trace.  Only a file whose first lines are not tracedmp records is an error, naming the file and
the line.

While reading, the reader follows each process's ``seq`` numbers (0, 1, 2, ... in every
process): numbers that never appear are records that process made but the file never got.
"""

from __future__ import annotations

import os
import re
import sys
from bisect import bisect_left
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .._errors import TraceFileError, TraceFormatError
from .._version import FORMAT_VERSION

from json import loads as _json_loads


def _std_loads(line: bytes) -> Any:
    """json.loads as orjson fails: a ValueError for a line nested too deeply to read."""
    try:
        return _json_loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# orjson reads a line ~3x sooner than json, but importing it costs ~45 ms of CPU (it imports
# dataclasses, datetime, uuid, inspect): worth it only from a trace of a few thousand records.
# Either reads the same records (a line one refuses goes to _parse, which tries both).
FAST_FROM = 512 * 1024  # bytes of trace
_fast_loads: Callable[[bytes], Any] = _std_loads  # orjson's once imported


def _loads_for(size: int) -> Callable[[bytes], Any]:
    global _fast_loads
    if size >= FAST_FROM and _fast_loads is _std_loads:
        try:
            from orjson import loads
        except ImportError:  # pragma: no cover - orjson is a dependency
            return _std_loads
        _fast_loads = loads
    return _fast_loads

__all__ = ["MissingRecords", "Record", "SkippedLine", "Trace", "printable", "read_trace"]

# Records nest three levels (record, callables, entry); anything much deeper is not a record,
# and would make every consumer that walks it (json.dumps, repr) recurse towards its limit.
MAX_DEPTH = 200
SKIPPED_KEPT = 1000  # SkippedLine entries kept; trace.skipped_count counts them all
_RANGES_KEPT = 20  # missing seq ranges listed per process (all are counted)
_RUNS_LIMIT = 10_000  # seq runs followed per process before giving up on a scattered one
_SEQ_LIMIT = 2**53  # a seq beyond any real process's (and exact as a float)


class Record(Dict[str, Any]):
    """One trace record: a dict of its JSON fields, with the contract fields as attributes.

    ``record.size`` and ``record["size"]`` are the same; a field a record does not have is
    ``None`` as an attribute (``record.size`` of a ``process_start``) and a ``KeyError`` as a key.
    """

    __slots__ = ()

    v: int
    event: str
    ts: float
    pid: int
    process: str
    start_method: str
    seq: int
    channel: Optional[str]
    size: Optional[int]
    kind: Optional[str]
    type: Optional[str]
    pickler: Optional[str]
    duration_ns: Optional[int]
    callables: Optional[List[Dict[str, str]]]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


class SkippedLine(NamedTuple):
    """A line the reader left out.

    ``reason`` is ``"cut"`` for a record a process left unfinished (its start is there, its
    end is not), ``"not_a_record"`` for anything else.  ``pid`` and ``seq`` are the writer's,
    when the cut text still holds them whole; ``text`` is the line's start, for showing.
    """

    line: int
    reason: str
    pid: Optional[int]
    seq: Optional[int]
    text: str


class MissingRecords(NamedTuple):
    """What one process recorded that is not in the file.

    ``missing`` counts the ``seq`` numbers below the process's highest that appear in no line
    (records it could not write: disk full, a file size limit, lost permissions; a record cut
    off before its own seq is taken to have had the number after the one before it); ``ranges``
    lists the first of them as inclusive ``(first, last)`` pairs.  ``cut`` counts its records
    that were cut off; ``tail_lost`` is true when the last thing the process wrote was cut off,
    so whatever it recorded after that is lost too, uncounted.  ``scattered`` is true when its
    seq numbers were too disordered to follow (a foreign writer): ``missing`` is then 0.
    """

    pid: int
    process: str
    missing: int
    ranges: List[Tuple[int, int]]
    cut: int
    tail_lost: bool
    scattered: bool = False
    host: Optional[str] = None  # a Dask process tracedmp did not start: its records came
    # through the client (``host`` in each), so its pid is told apart from this machine's


class _Seqs:
    """The seq numbers seen from one process, as sorted runs of consecutive numbers.

    Records arrive nearly in order (threads of one process may swap neighbours), so the common
    case extends the current run by one.  A number seen twice means a new process with the same
    pid (pids are reused); the old one's numbers are kept aside in ``earlier``.
    """

    __slots__ = ("lo", "next", "runs", "earlier", "process", "cut", "cut_mark", "guess",
                 "scattered")

    def __init__(self, process: str) -> None:
        self.lo = -1  # the current (highest) run is lo .. next-1; -1: nothing seen yet
        self.next = -1
        self.runs: List[List[int]] = []  # earlier runs [first, last], sorted, all below lo - 1
        self.earlier: List["_Seqs"] = []  # previous processes that had this pid
        self.process = process
        self.cut = 0
        # ``next`` when a cut record was last seen (-2: none since the last whole record): if
        # nothing moved it since, the last thing this process wrote was cut off.
        self.cut_mark = -2
        # The seq a record cut off before its own is taken to have had: the next one (-1: none).
        self.guess = -1
        self.scattered = False

    def add(self, seq: int) -> None:
        """Slow path: ``seq`` does not extend the current run."""
        if self.scattered:
            return
        if self.lo < 0:
            self.lo, self.next = seq, seq + 1
        elif seq > self.next:  # a gap: the current run is done
            self.runs.append([self.lo, self.next - 1])
            self.lo, self.next = seq, seq + 1
        elif seq >= self.lo:  # seen already (the fast path takes seq == next)
            self._new_process(seq)
        elif seq == self.lo - 1:
            self.lo = seq
            if self.runs and self.runs[-1][1] == seq - 1:
                self.lo = self.runs.pop()[0]
        else:
            self._insert(seq)
        if len(self.runs) > _RUNS_LIMIT:
            self.scattered = True
            self.runs = []

    def _insert(self, seq: int) -> None:
        runs = self.runs
        i = bisect_left(runs, [seq, seq])
        if i < len(runs) and runs[i][0] == seq or i and runs[i - 1][1] >= seq:
            self._new_process(seq)
            return
        joins_before = i > 0 and runs[i - 1][1] == seq - 1
        joins_after = i < len(runs) and runs[i][0] == seq + 1
        if joins_before and joins_after:
            runs[i - 1][1] = runs.pop(i)[1]
        elif joins_before:
            runs[i - 1][1] = seq
        elif joins_after:
            runs[i][0] = seq
        else:
            runs.insert(i, [seq, seq])

    def _new_process(self, seq: int) -> None:
        old = _Seqs(self.process)
        old.lo, old.next, old.runs, old.cut, old.cut_mark, old.scattered = (
            self.lo, self.next, self.runs, self.cut, self.cut_mark, self.scattered)
        self.earlier.append(old)
        self.lo, self.next, self.runs = seq, seq + 1, []
        self.cut, self.cut_mark = 0, -2

    def missing(self, key: Any) -> List[MissingRecords]:
        """``key``: the pid, or (host, pid) for a forwarded process's records."""
        out = [m for old in self.earlier for m in old.missing(key)]
        host, pid = key if type(key) is tuple else (None, key)
        tail_lost = self.cut_mark == self.next
        if self.scattered:
            out.append(MissingRecords(pid, self.process, 0, [], self.cut, tail_lost, True, host))
            return out
        gaps: List[Tuple[int, int]] = []
        count = 0
        edge = 0  # the lowest number not yet accounted for
        runs = [*self.runs, [self.lo, self.next - 1]] if self.lo >= 0 else []
        for first, last in runs:
            if first > edge:
                count += first - edge
                if len(gaps) < _RANGES_KEPT:
                    gaps.append((edge, first - 1))
            edge = last + 1
        if count or self.cut:
            out.append(MissingRecords(pid, self.process, count, gaps, self.cut, tail_lost,
                                      host=host))
        return out


class Trace:
    """An iterable over the records of a trace file (iterate once per pass).

    After a full pass:

    - ``skipped`` lists the lines left out, as :class:`SkippedLine` (the first 1,000;
      ``skipped_count`` counts them all), and ``cut_count`` how many of them were records cut
      off;
    - ``missing`` lists, per process that lost records, a :class:`MissingRecords`;
    - ``truncated_line`` is the number of the file's last line if it was cut off (or ``None``),
      ``lines`` how many lines were read and ``records`` how many records.
    """

    def __init__(self, path: "str | os.PathLike[str]", *, strict_version: bool = True) -> None:
        self.path = os.fspath(path)
        self.strict_version = strict_version
        self._reset()
        if not os.path.exists(self.path):
            raise TraceFileError(f"{self.path}: no such trace file")
        if os.path.isdir(self.path):
            raise TraceFileError(f"{self.path}: is a directory, not a trace file")

    def _reset(self) -> None:
        self.truncated_line: Optional[int] = None
        self.lines = 0
        self.records = 0
        self._odd_lines = 0  # lines the slow path read, and the records it found in them
        self._odd_records = 0
        self.skipped: List[SkippedLine] = []
        self.skipped_count = 0
        self.cut_count = 0
        self.missing: List[MissingRecords] = []
        self._seqs: Dict[Any, _Seqs] = {}  # pid, or (host, pid) of a forwarded process

    def __iter__(self) -> Iterator[Record]:
        for data in self.dicts():
            yield Record(data)

    def dicts(self) -> Iterator[Dict[str, Any]]:
        """The records as plain dicts (a little faster than :class:`Record` for one pass)."""
        _flush_if_tracing_to(self.path)
        self._reset()
        path = self.path
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise TraceFileError(f"{path}: cannot read the trace: {exc.strerror}") from exc
        seqs = self._seqs
        try:
            loads = _loads_for(os.fstat(f.fileno()).st_size)
        except BaseException:
            f.close()
            raise
        version_ok = FORMAT_VERSION if self.strict_version else None
        trusted = False  # until a first record shows the file is a trace
        number = 0
        with f:
            for number, line in enumerate(f, 1):  # noqa: B007
                try:
                    data = loads(line)
                    if type(data) is not dict or "event" not in data or (
                            version_ok is not None and data.get("v") != version_ok):
                        raise ValueError
                    # Nesting deeper than MAX_DEPTH takes twice as many bytes: a long line only.
                    if len(line) > 2 * MAX_DEPTH and _depth(data) > MAX_DEPTH:
                        raise ValueError
                except ValueError:
                    # The rare lines: blank, padded, cut, glued, deep, foreign, another version.
                    self._odd_lines += 1
                    for data in self._slow_line(line, number, trusted):
                        self._odd_records += 1
                        trusted = True
                        self._count_seq(data)
                        yield data
                    continue
                trusted = True
                # Follow the writer's seq numbers (inlined: this runs for every record).
                try:
                    # A process on another machine (its records forwarded, with its host):
                    # its numbers are its own, whatever pid this machine's processes had.
                    entry = seqs[data["pid"] if "host" not in data else (data["host"],
                                                                          data["pid"])]
                except (KeyError, TypeError):  # a new process, or no pid that can be one
                    self._count_seq(data)
                else:
                    seq = data.get("seq")
                    if seq == entry.next and type(seq) is int:
                        entry.next = seq + 1
                    else:
                        self._count_seq(data)
                yield data
            self.lines = number
        self.records = number - self._odd_lines + self._odd_records
        self.missing = [m for key, entry in seqs.items() for m in entry.missing(key)]

    def _count_seq(self, data: Dict[str, Any]) -> None:
        pid, seq = data.get("pid"), data.get("seq")
        if type(pid) is not int or type(seq) is not int or not 0 <= seq < _SEQ_LIMIT:
            return
        host = data.get("host")
        key: Any = pid if host is None else (str(host), pid)
        entry = self._seqs.get(key)
        if entry is None:
            entry = self._seqs[key] = _Seqs(_name(data.get("process")))
        entry.cut_mark = -2
        guess, entry.guess = entry.guess, -1
        if guess >= 0 and seq == guess + 1 and (entry.next == guess or entry.lo < 0):
            # The record cut off before its seq came just before this one: it had that number.
            if entry.lo < 0:
                entry.lo = guess
            entry.next = guess + 1
        if seq == entry.next:
            entry.next = seq + 1
        else:
            entry.add(seq)

    def _slow_line(self, line: bytes, number: int, trusted: bool) -> Iterator[Dict[str, Any]]:
        text = line.strip(b" \t\r\n\x00")  # NULs: space a dead writer reserved, never filled
        if not text:
            return
        strict = self.strict_version
        data, why = _parse(text, strict)
        if data is not None:
            yield data
            return
        # A record starting later in the line: what comes before it is one or more records
        # that processes left unfinished (each later write lands right after the cut).
        tail = None
        pieces: List[Tuple[bytes, Optional[str]]]
        for start in _record_starts(text):
            tail, _ = _parse(text[start:], strict)
            if tail is not None:
                pieces = [(piece, None) for piece in _split_records(text[:start])]
                trusted = True
                break
        else:
            parts = _split_records(text)
            pieces = [(text, why)] if len(parts) == 1 else [(part, None) for part in parts]
        for piece, piece_why in pieces:
            if piece_why is None:
                whole, piece_why = _parse(piece, strict)
                if whole is not None:  # a whole record whose newline went missing
                    yield whole
                    continue
            cut = not piece_why and piece.startswith(b'{"')
            if not cut and not trusted:
                if piece_why:
                    raise TraceFormatError(f"{self.path}:{number}: {piece_why}")
                raise TraceFormatError(
                    f"{self.path}:{number}: not a JSON line ({_preview(piece)}); a tracedmp "
                    "trace has one JSON object per line")
            self._skip(number, piece, cut, at_end=tail is None and not line.endswith(b"\n"))
        if tail is not None:
            yield tail

    def _skip(self, number: int, piece: bytes, cut: bool, *, at_end: bool) -> None:
        self.skipped_count += 1
        pid = seq = None
        if cut:
            self.cut_count += 1
            if at_end:
                self.truncated_line = number
            pid, seq = _field(piece, b"pid"), _field(piece, b"seq")
            if pid is not None:
                entry = self._seqs.get(pid)
                if entry is None:
                    entry = self._seqs[pid] = _Seqs(_cut_process(piece))
                if seq is not None:
                    self._count_seq({"pid": pid, "seq": seq})
                else:
                    entry.guess = max(entry.next, 0)
                entry.cut += 1
                entry.cut_mark = entry.next
        if len(self.skipped) < SKIPPED_KEPT:
            self.skipped.append(SkippedLine(number, "cut" if cut else "not_a_record", pid, seq,
                                            _preview(piece)))

    def mode(self) -> str:
        """``"full"``, ``"summary"`` or ``"mixed"``: whether the trace holds summary-mode records
        (aggregates, see the trace format), full records of each pickle, or both (several runs).
        One quick pass over the file's bytes."""
        summaries = full = False
        with open(self.path, "rb") as f:
            for line in f:
                if b'"event":"summary"' in line:
                    summaries = True
                elif (b'"event":"pickle"' in line or b'"event":"unpickle"' in line) \
                        and b'"exemplar":true' not in line:
                    full = True
                if summaries and full:
                    return "mixed"
        return "summary" if summaries else "full"

    def to_pandas(self) -> Any:
        """The records as a pandas DataFrame (needs pandas); nested fields stay Python objects."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "to_pandas() needs pandas: pip install pandas (or pip install 'tracedmp[pandas]')"
            ) from None
        return pd.DataFrame.from_records(list(self))


def read_trace(path: "str | os.PathLike[str]") -> Trace:
    """Open a trace for reading: ``for record in read_trace("trace.jsonl"): ...``.

    Raises :class:`TraceFileError` if the file is missing and, while iterating,
    :class:`TraceFormatError` naming the file and line if the file does not start with
    tracedmp records.  Later lines that are not records are skipped and counted
    (``trace.skipped``), and records the file never got are counted per process
    (``trace.missing``).
    """
    return Trace(path)


def _parse(text: bytes, strict: bool = True) -> "tuple[Optional[Dict[str, Any]], str]":
    """A record, or None and why not ('' for text that is not JSON, as a cut record is)."""
    try:
        data = _fast_loads(text)
    except ValueError:
        try:
            # orjson refuses escaped lone surrogates, which other writers may produce (integers
            # beyond 64 bits it refused before 3.13; since, it reads them as floats).
            data = _json_loads(text)
        except RecursionError:
            return None, f"nested more than {MAX_DEPTH} levels deep: not a tracedmp record"
        except ValueError:  # UnicodeDecodeError too
            return None, ""
    if type(data) is not dict or "event" not in data:
        return None, f"not a tracedmp record ({_preview(text)})"
    if _depth(data) > MAX_DEPTH:
        return None, f"nested more than {MAX_DEPTH} levels deep: not a tracedmp record"
    version = data.get("v")
    if version != FORMAT_VERSION and strict:
        if type(version) is int and version > FORMAT_VERSION:
            return None, (f"record format v{version} is newer than this tracedmp reads "
                          f"(v{FORMAT_VERSION}); upgrade tracedmp")
        return None, (f"unknown record format version {_preview_value(version)}; this "
                      f"tracedmp reads v{FORMAT_VERSION}")
    return data, ""


def _depth(value: Any) -> int:
    """How deep ``value`` nests (iteratively: the value may be deeper than the stack)."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        item, level = todo.pop()
        if level > deepest:
            deepest = level
            if level > MAX_DEPTH:
                break
        if type(item) is dict:
            todo.extend((v, level + 1) for v in item.values() if type(v) in (dict, list))
        elif type(item) is list:
            todo.extend((v, level + 1) for v in item if type(v) in (dict, list))
    return deepest


_START = re.compile(rb'\{"v":')


def _record_starts(text: bytes) -> Iterator[int]:
    # tracedmp writes "v" first; a glued line rarely holds more than a couple of starts.
    for n, match in enumerate(_START.finditer(text, 1)):
        if n >= 64:
            return
        yield match.start()


def _split_records(prefix: bytes) -> List[bytes]:
    """The unfinished records that ``prefix`` holds, one piece each."""
    starts = [0] + [m.start() for m in _START.finditer(prefix, 1)][:63]
    return [prefix[a:b] for a, b in zip(starts, starts[1:] + [len(prefix)]) if prefix[a:b]]


def _field(piece: bytes, name: bytes) -> Optional[int]:
    """An integer field of a cut record, if it is there whole (followed by , or })."""
    match = re.search(b'"' + name + rb'":(\d{1,18})[,}]', piece)
    return int(match.group(1)) if match else None


def _cut_process(piece: bytes) -> str:
    """The process name in a cut record, if it is there whole."""
    match = re.search(rb'"process":("(?:[^"\\]|\\.)*")', piece)
    try:
        return _name(_json_loads(match.group(1))) if match else "?"
    except ValueError:
        return "?"


def _name(value: Any) -> str:
    return value if isinstance(value, str) else "?"


def _flush_if_tracing_to(path: str) -> None:
    # A program reading its own trace sees the records its main process still holds in memory.
    # Nothing traces in a process that has not imported the tracer (the `tracedmp report`
    # command): importing it would import multiprocessing.
    _tracer = sys.modules.get("tracedmp._runtime.tracer")
    tracer = _tracer.current if _tracer is not None else None
    if tracer is not None and isinstance(tracer.config.trace, str) \
            and os.path.abspath(tracer.config.trace) == os.path.abspath(path):
        tracer.sink.flush()


def _preview(line: bytes) -> str:
    text = line.strip()[:60].decode("utf-8", "backslashreplace")
    return repr(text) + ("..." if len(line.strip()) > 60 else "")


def _preview_value(value: Any) -> str:
    text = repr(value) if type(value) in (int, float, str, bool, type(None)) else \
        type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def printable(text: str) -> str:
    """``text`` (a name or message taken from a trace or a pickle) safe to print on a terminal.

    Control characters (escape sequences, carriage returns, newlines), lone surrogates and
    other characters that do not print are shown as their backslash escapes.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else \
        f"\\U{code:08x}"
