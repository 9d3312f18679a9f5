"""Reading traces back: records as typed objects, one line at a time.

The reader parses JSON and nothing else: it never unpickles anything.  A last line without its
newline is what a killed process leaves; it is reported, not fatal.  Anything else that is not a
record is an error naming the file and the line.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional

from .._errors import TraceFileError, TraceFormatError
from .._runtime.tracer import FORMAT_VERSION

from json import loads as _json_loads

try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = _json_loads  # type: ignore[assignment]


def _loads(line: bytes) -> Any:
    try:
        return _fast_loads(line)
    except ValueError:
        # orjson refuses escaped lone surrogates, which other writers may produce.
        return _json_loads(line)

__all__ = ["Record", "Trace", "read_trace"]


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


class Trace:
    """An iterable over the records of a trace file (iterate once per pass).

    After a pass, ``truncated_line`` is the number of a last line cut short by a killed process
    (or ``None``), and ``lines`` how many lines were read.
    """

    def __init__(self, path: "str | os.PathLike[str]", *, strict_version: bool = True) -> None:
        self.path = os.fspath(path)
        self.strict_version = strict_version
        self.truncated_line: Optional[int] = None
        self.lines = 0
        if not os.path.exists(self.path):
            raise TraceFileError(f"{self.path}: no such trace file")
        if os.path.isdir(self.path):
            raise TraceFileError(f"{self.path}: is a directory, not a trace file")

    def __iter__(self) -> Iterator[Record]:
        for data in self.dicts():
            yield Record(data)

    def dicts(self) -> Iterator[Dict[str, Any]]:
        """The records as plain dicts (a little faster than :class:`Record` for one pass)."""
        _flush_if_tracing_to(self.path)
        self.truncated_line = None
        self.lines = 0
        path = self.path
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise TraceFileError(f"{path}: cannot read the trace: {exc.strerror}") from exc
        with f:
            number = 0
            for number, line in enumerate(f, 1):  # noqa: B007
                if not line.strip():
                    continue
                try:
                    data = _loads(line)
                except ValueError:
                    if not line.endswith(b"\n"):
                        self.truncated_line = number  # a killed writer's unfinished last line
                        break
                    raise TraceFormatError(
                        f"{path}:{number}: not a JSON line ({_preview(line)}); a tracedmp trace "
                        "has one JSON object per line"
                    ) from None
                if not isinstance(data, dict) or "event" not in data:
                    raise TraceFormatError(
                        f"{path}:{number}: not a tracedmp record ({_preview(line)})")
                version = data.get("v")
                if version != FORMAT_VERSION and self.strict_version:
                    if isinstance(version, int) and version > FORMAT_VERSION:
                        raise TraceFormatError(
                            f"{path}:{number}: record format v{version} is newer than this "
                            f"tracedmp reads (v{FORMAT_VERSION}); upgrade tracedmp")
                    raise TraceFormatError(
                        f"{path}:{number}: unknown record format version {version!r}; "
                        f"this tracedmp reads v{FORMAT_VERSION}")
                yield data
            self.lines = number

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
    :class:`TraceFormatError` naming the file and line of anything that is not a record.
    """
    return Trace(path)


def _flush_if_tracing_to(path: str) -> None:
    # A program reading its own trace sees the records its main process still holds in memory.
    from .._runtime import tracer as _tracer

    tracer = _tracer.current
    if tracer is not None and isinstance(tracer.config.trace, str) \
            and os.path.abspath(tracer.config.trace) == os.path.abspath(path):
        tracer.sink.flush()


def _preview(line: bytes) -> str:
    text = line.strip()[:60].decode("utf-8", "backslashreplace")
    return repr(text) + ("..." if len(line.strip()) > 60 else "")
