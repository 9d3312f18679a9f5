"""Pickle budgets: limits on what a block of code pickles, checked on a capture's records.

Used by the pytest plugin's ``pickle_budget`` marker; nothing here imports pytest.  A verdict
depends on the records only (sizes, counts, kinds), never on timing: the same code gives the
same verdict on a slow machine.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ._errors import ConfigError

__all__ = ["Budget", "parse_size"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*\Z")


def parse_size(value: Any, name: str = "size") -> int:
    """Bytes from a size as people write it: ``2048``, ``"100 KB"``, ``"1.5 MiB"``.

    KB, MB, GB are powers of 1000 (as ``tracedmp report`` prints them); KiB, MiB, GiB powers
    of 1024; case does not matter."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name}={value!r} is not a size; write e.g. 2048, '100 KB' or '1.5 MiB'")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ConfigError(f"{name}={value!r} is not a size: it must be 0 or more bytes")
        return int(value)
    match = _SIZE.match(value)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ConfigError(
            f"{name}={value!r} is not a size; write a number and a unit: B, KB, MB, GB (powers "
            "of 1000) or KiB, MiB, GiB (powers of 1024), e.g. '100 KB' or '1.5 MiB'")
    return int(float(match.group(1)) * unit)


def fmt_bytes(n: int) -> str:
    """``1.2 MB (1,234,567 bytes)``: the report's unit and the exact figure."""
    from ._read.report import _fmt_bytes

    return f"{_fmt_bytes(n)} ({n:,} bytes)" if n >= 1000 else f"{n:,} bytes"


_OPTIONS = ("per_message", "total", "messages", "by_value", "errors", "channel")


class Budget:
    """The limits of one ``pickle_budget(...)``; ``None`` leaves a limit unchecked.

    - ``per_message``: the largest pickle, in bytes or as a size string;
    - ``total``: all pickles' bytes added up;
    - ``messages``: how many pickles;
    - ``by_value``: ``False`` (or 0) forbids pickles carrying a function, method or class by
      value (a bound method carrying its instance, a lambda cloudpickle serialized); a number
      allows that many such pickles; ``True`` allows any;
    - ``errors``: how many pickles may fail (``pickle_error`` records);
    - ``channel``: count only pickles (and errors) of this channel, or of these channels.
    """

    def __init__(self, per_message: Union[int, str, None] = None,
                 total: Union[int, str, None] = None, messages: Optional[int] = None,
                 by_value: Union[bool, int, None] = None, errors: Optional[int] = None,
                 channel: Union[str, Sequence[str], None] = None) -> None:
        self.given: Dict[str, Any] = {k: v for k, v in zip(_OPTIONS, (
            per_message, total, messages, by_value, errors, channel)) if v is not None}
        self.per_message = None if per_message is None else parse_size(per_message, "per_message")
        self.total = None if total is None else parse_size(total, "total")
        self.messages = _count(messages, "messages")
        if by_value is True:
            by_value = None
        self.by_value = _count(by_value, "by_value")
        self.errors = _count(errors, "errors")
        if channel is None:
            self.channels: Optional[Tuple[str, ...]] = None
        elif isinstance(channel, str):
            self.channels = (channel,)
        elif isinstance(channel, (list, tuple, set, frozenset)) and channel \
                and all(isinstance(c, str) for c in channel):
            self.channels = tuple(sorted(channel))
        else:
            raise ConfigError(f"channel={channel!r} is not a channel name; give one like "
                              "'pool.task', or a list of them")

    @classmethod
    def from_marker(cls, args: Sequence[Any], kwargs: Mapping[str, Any]) -> "Budget":
        if args:
            raise ConfigError(f"pickle_budget{tuple(args)!r}: give the limits by name, e.g. "
                              "pickle_budget(per_message='100 KB', total='10 MB')")
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"pickle_budget: unknown option(s) {', '.join(unknown)}; the "
                              f"options are {', '.join(_OPTIONS)}")
        if not kwargs:
            raise ConfigError("pickle_budget() sets no limit; give at least one of "
                              f"{', '.join(_OPTIONS[:5])}")
        return cls(**kwargs)

    def label(self, *only: str) -> str:
        """``pickle_budget(per_message="100 KB", channel="pool.task")``: the options that
        matter to one verdict, as written."""
        keep = [k for k in _OPTIONS if k in self.given and (not only or k in only
                                                           or k == "channel")]
        return "pickle_budget(" + ", ".join(f"{k}={self.given[k]!r}" for k in keep) + ")"

    def _in_scope(self, records: Iterable[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
        if self.channels is None:
            return list(records)
        return [r for r in records if r.get("channel") in self.channels]

    def violations(self, pickles: Iterable[Mapping[str, Any]],
                   errors: Iterable[Mapping[str, Any]] = ()) -> List[str]:
        """One message per limit exceeded (empty: within budget)."""
        pickles = self._in_scope(pickles)
        out = []
        where = f" on {', '.join(self.channels)}" if self.channels else ""
        if self.per_message is not None:
            over = [r for r in pickles if _size(r) > self.per_message]
            if over:
                over.sort(key=_size, reverse=True)
                lines = [f"{self.label('per_message')} exceeded: the largest pickle{where} was "
                         f"{fmt_bytes(_size(over[0]))}, over the limit of "
                         f"{fmt_bytes(self.per_message)}; {len(over)} of {len(pickles)} "
                         "pickles were over it"]
                lines += _largest(over, 3)
                out.append("\n".join(lines))
        if self.total is not None:
            total = sum(_size(r) for r in pickles)
            if total > self.total:
                lines = [f"{self.label('total')} exceeded: {len(pickles)} pickles{where} came "
                         f"to {fmt_bytes(total)}, over the limit of {fmt_bytes(self.total)}"]
                lines += _by_site(pickles, "bytes")
                lines += _largest(sorted(pickles, key=_size, reverse=True), 3)
                out.append("\n".join(lines))
        if self.messages is not None and len(pickles) > self.messages:
            lines = [f"{self.label('messages')} exceeded: {len(pickles)} pickles{where}, over "
                     f"the limit of {self.messages}"]
            lines += _by_site(pickles, "count")
            out.append("\n".join(lines))
        if self.by_value is not None:
            carrying = [r for r in pickles if _by_value_names(r)]
            if len(carrying) > self.by_value:
                names: Dict[str, int] = {}
                for r in carrying:
                    for n in _by_value_names(r):
                        names[n] = names.get(n, 0) + 1
                allowed = "none" if not self.by_value else f"at most {self.by_value}"
                lines = [f"{self.label('by_value')} exceeded: {len(carrying)} pickles{where} "
                         f"carried a function, method or class by value ({allowed} allowed)"]
                for name, count in sorted(names.items(), key=lambda kv: -kv[1])[:5]:
                    lines.append(f"  {name} by value in {count} pickle(s)")
                lines.append("  fix: a bound method carries its instance and a closure its "
                             "captured data; pass a module-level function (and the data it "
                             "needs once, e.g. with a Pool initializer)")
                lines += _largest(sorted(carrying, key=_size, reverse=True), 1)
                out.append("\n".join(lines))
        if self.errors is not None:
            failed = self._in_scope(errors)
            if len(failed) > self.errors:
                lines = [f"{self.label('errors')} exceeded: {len(failed)} pickle(s){where} "
                         f"failed, over the limit of {self.errors}"]
                for r in failed[:3]:
                    lines.append(f"  {_site(r)}: {r.get('error')}")
                    if r.get("path"):
                        lines.append(f"    at {r.get('path')}")
                    if r.get("hint"):
                        lines.append(f"    fix: {r.get('hint')}")
                out.append("\n".join(lines))
        return out


def _count(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, int) and value >= 0:  # False is 0
        return int(value)
    raise ConfigError(f"{name}={value!r} must be a whole number, 0 or more")


def _size(r: Mapping[str, Any]) -> int:
    size = r.get("size")
    return size if type(size) is int else 0


def _by_value_names(r: Mapping[str, Any]) -> List[str]:
    callables = r.get("callables")
    if not isinstance(callables, list):
        return []
    return [str(c.get("name")) for c in callables
            if isinstance(c, dict) and c.get("kind") == "value"]


_MACHINERY = ("multiprocessing.", "concurrent.futures.", "cloudpickle.", "copyreg.",
              "tracedmp.", "_codecs.", "builtins.")


def _user_callables(r: Mapping[str, Any]) -> List[str]:
    """The functions and classes a pickle names that are the program's own (else the last
    one that is not the transport's: ``builtins.len`` in ``pool.map(len, ...)``)."""
    callables = r.get("callables")
    if not isinstance(callables, list):
        return []
    names = [str(c.get("name")) for c in callables
             if isinstance(c, dict) and c.get("kind") in ("reference", "value")]
    own = [n for n in names if not n.startswith(_MACHINERY)]
    if own:
        return list(dict.fromkeys(own))
    builtins = [n for n in names if n.startswith("builtins.")]
    return builtins[-1:]


def _site(r: Mapping[str, Any]) -> str:
    """Where a pickle came from, in the trace's words: carrier, process, the code it calls
    (and a ``site`` field's source location, where a record has one)."""
    process = re.sub(r"-[0-9]+$", "-*", str(r.get("process") or "?"))  # workers alike
    parts = [str(r.get("channel") or "?"), f"in {process}"]
    site = r.get("site") or r.get("call_site")
    if isinstance(site, str):
        parts.append(f"at {site}")
    elif isinstance(site, dict):
        text = ":".join(str(site[k]) for k in ("file", "line") if site.get(k) is not None)
        if site.get("function"):
            text = f"{text} in {site['function']}" if text else str(site["function"])
        if text:
            parts.append(f"at {text}")
    if r.get("method") and r.get("channel") == "manager":
        parts.append(f"{r.get('message') or 'call'} {r.get('method')}")
    names = _user_callables(r)
    if names:
        parts.append("calling " + ", ".join(names))
    if r.get("part"):
        parts.append(f"{r.get('part')} of {r.get('child') or 'a child'}")
    if r.get("type"):
        parts.append(f"({r.get('type')})")
    return " ".join(parts)


def _parts(r: Mapping[str, Any]) -> List[str]:
    """The record's largest parts (size attribution), read defensively: a list of dicts with
    a path, a type and a size (``size`` or ``bytes``)."""
    parts = r.get("parts")
    if not isinstance(parts, list):
        return []
    out = []
    for p in parts[:5]:
        if not isinstance(p, dict):
            continue
        size = p.get("size", p.get("bytes"))
        text = str(p.get("path") or "?")
        if p.get("captured"):
            text += f" (captured {p['captured']})"
        if p.get("type"):
            text += f" ({p['type']})"
        if type(size) is int and not isinstance(size, bool):
            text += f": {fmt_bytes(size)}"
        out.append(text)
    if out and r.get("parts_partial") is True:
        out[-1] += " (read in part: sizes are upper bounds)"
    return out


def _largest(records: Sequence[Mapping[str, Any]], n: int) -> List[str]:
    """The ``n`` largest pickles (``records`` sorted), alike ones (size, site, parts) once."""
    shown: Dict[tuple, List[Any]] = {}
    for r in records:
        key = (_size(r), _site(r), tuple(_parts(r)))
        if key in shown:
            shown[key][0] += 1
        elif len(shown) < n:
            shown[key] = [1]
        else:
            break
    lines = []
    for (size, site, parts), (count,) in shown.items():
        times = f" (x{count})" if count > 1 else ""
        lines.append(f"  largest: {fmt_bytes(size)}{times}: {site}")
        if parts:
            lines.append("    largest parts: " + "; ".join(parts))
    return lines


def _by_site(records: Sequence[Mapping[str, Any]], order: str) -> List[str]:
    groups: Dict[str, List[int]] = {}
    for r in records:
        key = _site(r)
        g = groups.setdefault(key, [0, 0])
        g[0] += 1
        g[1] += _size(r)
    ranked = sorted(groups.items(), key=(lambda kv: -kv[1][1]) if order == "bytes"
                    else (lambda kv: -kv[1][0]))
    return [f"  {count} pickle(s), {fmt_bytes(total)}: {key}"
            for key, (count, total) in ranked[:3]]
