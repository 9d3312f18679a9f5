"""Records as JSON lines: the small writer for templates and one-off records, and orjson.

Nothing here knows what a record means; ``tracer`` renders whole records, ``records`` makes
templates (JSON with %-format holes for the fields that change).
"""

from __future__ import annotations

from time import time_ns

try:
    from _json import encode_basestring as _quote  # json's own C string escaper
except ImportError:  # pragma: no cover - Pythons without the accelerator
    from json.encoder import py_encode_basestring as _quote

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple

__all__ = ["TS_HOLE", "json_bytes", "json_string", "new_second", "render", "template_of",
           "ts_parts", "ts_second"]

# ts to the microsecond (as precise as a float of seconds since 1970 gets): the second's digits
# and point, then the microseconds into it.
TS_HOLE = b"%s%06d"

# (the current second's first microsecond since 1970, its digits and point), made once a
# second: formatting the seconds and dividing the time cost ~500 machine instructions a record,
# a twentieth of what tracing adds to a small pickle.  One tuple: a thread reads a consistent
# pair.
ts_second: Tuple[int, bytes] = (0, b"0.")


def ts_parts() -> Tuple[bytes, int]:
    """The two values TS_HOLE takes, now (the hot path inlines this)."""
    us = time_ns() // 1000
    start, digits = ts_second
    if 0 <= us - start < 1_000_000:
        return digits, us - start
    return new_second(us)


def new_second(us: int) -> Tuple[bytes, int]:
    """The two values TS_HOLE takes at ``us`` microseconds since 1970, a second not cached yet
    (or the clock went back)."""
    global ts_second
    seconds, micros = divmod(us, 1_000_000)
    ts_second = (us - micros, b"%d." % seconds)
    return ts_second[1], micros

_PICKLE_HOLES = {"ts": TS_HOLE, "seq": b"%d", "size": b"%d", "duration_ns": b"%d"}


def template_of(rec: Dict[str, Any], holes: Dict[str, bytes]) -> bytes:
    """``rec`` as one JSON line, with the %-format codes ``holes`` gives for some fields.

    Raises TypeError or ValueError (lone surrogates) for what only the dict path renders."""
    return b"{" + b",".join(
        json_bytes(key).replace(b"%", b"%%") + b":"
        + (holes[key] if key in holes else json_bytes(value).replace(b"%", b"%%"))
        for key, value in rec.items()
    ) + b"}\n"


def json_bytes(value: Any) -> bytes:
    """JSON of the few kinds of value records hold (templates; a program's one-off records).
    Not orjson: it costs ~14 ms to import, and a spawned child's records are all templates.

    Raises TypeError for anything else and ValueError for lone surrogates (undecodable names):
    the caller then renders with orjson, or the stdlib's json, which escape them."""
    if isinstance(value, str):
        return json_string(value)
    if value is None:
        return b"null"
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int):
        return b"%d" % value
    if type(value) is float and value - value == 0:  # finite: inf - inf and nan - nan are nan
        return repr(value).encode("ascii")
    if isinstance(value, list):
        return b"[" + b",".join(map(json_bytes, value)) + b"]"
    if isinstance(value, dict):
        return b"{" + b",".join(_key(k) + b":" + json_bytes(v) for k, v in value.items()) + b"}"
    raise TypeError(f"cannot render a {type(value).__name__}")


def json_string(text: str) -> bytes:
    """``text`` as a JSON string; ValueError for lone surrogates."""
    return _quote(text).encode("utf-8")


def _key(key: Any) -> bytes:
    if not isinstance(key, str):  # JSON's keys are strings; the stdlib path converts others
        raise TypeError(f"cannot render a {type(key).__name__} key")
    return json_string(key)



_dumps = None  # orjson.dumps, imported once a process makes records no template fits

# orjson renders a record in ~0.4 us but takes ~14 ms to import (dataclasses, inspect, uuid...),
# about what a short traced program spends on everything else tracedmp does.  Records no template
# fits (trace_start, launch data, the first of each kind) are rendered by the templates' own small
# JSON writer (~9 us each) until it has cost about what that import would; only a process that
# goes on making such records (functions by value, failures, structlog processors) loads orjson.
_SMALL_WRITER_RECORDS = 1024
_small_writer_left = _SMALL_WRITER_RECORDS


def render(record: dict) -> bytes:
    global _dumps, _small_writer_left
    dumps = _dumps
    if dumps is None:
        if _small_writer_left > 0:
            _small_writer_left -= 1
            try:
                return json_bytes(record) + b"\n"
            except (TypeError, ValueError, RecursionError):  # what only orjson or json renders
                pass
        dumps = _dumps = _load_dumps()
    try:
        return dumps(record)
    except Exception:  # lone surrogates (undecodable names), odd values from processors
        return _render_safe(record)


def _load_dumps():  # type: ignore[no-untyped-def]
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
        return _render_safe
    option = orjson.OPT_APPEND_NEWLINE
    return lambda record: orjson.dumps(record, option=option)


def _render_safe(record: dict) -> bytes:
    import json

    # Names that are not valid Unicode (lone surrogates from undecodable bytes) are written as
    # their backslash escapes, so the line stays valid UTF-8 JSON for every reader.
    return json.dumps(_clean(record), ensure_ascii=False, separators=(",", ":"),
                      default=repr).encode("utf-8") + b"\n"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


