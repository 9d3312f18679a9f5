"""What the ``parts`` of large pickles say, summed over a trace, and the traps they name.

``report`` feeds every pickle record to ``Parts.add`` and asks ``Parts.findings`` at the end.
A part is grouped by where it was sent from (channel and the program's own function), its path
with the item of a chunk folded (``items[3][0]`` and ``items[7][0]`` are one ``items[*][0]``)
and its type.  Records the call site's budget left out (``parts_skipped``) count as messages
of their group: they are the same call from the same place.
Also here: which names are the program's own code and which are libraries' (``is_library``),
so that the report can put the program's functions first.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["Parts", "is_library", "user_first"]

_ITEM = re.compile(r"^items\[\d+\]")  # which item of a chunk: one part for all of them


class _Part:
    __slots__ = ("messages", "bytes", "min", "max", "type", "path", "captured", "method",
                 "storage_bytes", "numel", "pickle_bytes", "children", "processes")

    def __init__(self, path: str, type_: str) -> None:
        self.messages = 0  # records that carried it (once each, however many items)
        self.bytes = 0
        self.min: Optional[int] = None
        self.max = 0
        self.type = type_
        self.path = path
        self.captured: Optional[str] = None
        self.method: Optional[str] = None
        self.storage_bytes = 0
        self.numel = 0
        self.pickle_bytes = 0  # of the records that carried it
        self.children: set = set()  # launch data: which children received it
        self.processes: set = set()


class Parts:
    """Aggregates the ``parts`` field of pickle records."""

    def __init__(self) -> None:
        self.groups: Dict[tuple, _Part] = {}
        self.attributed: Dict[Tuple[str, str], int] = {}  # (channel, sender) -> records
        self.partial = 0
        self.skipped = 0
        self.skipped_by: Dict[Tuple[str, str], int] = {}
        self.threshold: Optional[int] = None

    def add(self, r: Mapping[str, Any], channel: str, sender: str, size: int) -> None:
        if r.get("parts_skipped"):
            self.skipped += 1
            key0 = (channel, sender)
            self.skipped_by[key0] = self.skipped_by.get(key0, 0) + 1
        parts = r.get("parts")
        if not isinstance(parts, list) or not parts:
            return
        if r.get("parts_partial"):
            self.partial += 1
        key0 = (channel, sender)
        self.attributed[key0] = self.attributed.get(key0, 0) + 1
        seen = set()
        for p in parts:
            if not isinstance(p, dict):
                continue
            path = p.get("path")
            part_size = p.get("size")
            if not isinstance(path, str) or type(part_size) is not int:
                continue
            type_ = p["type"] if isinstance(p.get("type"), str) else "?"
            folded = _ITEM.sub("items[*]", path)
            key = (channel, sender, folded, type_)
            group = self.groups.get(key)
            if group is None:
                self.groups[key] = group = _Part(folded, type_)
            group.bytes += part_size
            group.max = max(group.max, part_size)
            group.min = part_size if group.min is None else min(group.min, part_size)
            if key not in seen:
                seen.add(key)
                group.messages += 1
                group.pickle_bytes += size
            if isinstance(p.get("captured"), str):
                group.captured = p["captured"]
            if isinstance(p.get("method"), str):
                group.method = p["method"]
            if type(p.get("storage_bytes")) is int and type(p.get("numel")) is int:
                group.storage_bytes = max(group.storage_bytes, p["storage_bytes"])
                group.numel = max(group.numel, p["numel"])
            child = r.get("child")
            if isinstance(child, str):
                group.children.add(child)
            group.processes.add(r.get("pid"))

    def largest(self, limit: int = 10) -> List[Dict[str, Any]]:
        """The parts that weighed most over the trace, for the report's table."""
        rows = [{"channel": c, "sender": s, "path": g.path, "type": g.type,
                 "messages": g.messages, "bytes": g.bytes, "max_size": g.max}
                for (c, s, _, _), g in self.groups.items()]
        rows.sort(key=lambda row: (-row["bytes"], row["path"]))
        return rows[:limit]

    def findings(self, starts: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """The traps the parts show, largest first."""
        out: List[Tuple[int, Dict[str, Any]]] = []
        launch = {}
        for (channel, sender, path, type_), g in self.groups.items():
            each = g.bytes // max(g.messages, 1)
            # The messages the budget left out were the same call: count them in.
            looked = self.attributed.get((channel, sender), 0)
            messages = g.messages + (self.skipped_by.get((channel, sender), 0)
                                     if looked and g.messages >= looked else 0)
            where = f"{messages} {channel} message{'s' if messages != 1 else ''}"
            if channel == "manager":
                where = f"{messages} Manager {sender} message{'s' if messages != 1 else ''}"
            elif channel != "process":
                where += f" calling {sender}"
            total = f"{'about ' if messages > g.messages else ''}" \
                    f"{_fmt_bytes(each * messages)} in all"
            if channel == "process":
                if path.startswith(("args", "kwargs", "target")):
                    launch[(path, type_)] = g
                continue
            if g.storage_bytes and g.numel and g.storage_bytes > 4 * 8 * g.numel + 4096:
                out.append((g.bytes, {
                    "kind": "view_carries_base",
                    "message": (f"{where} each carried {path}, a {type_} of {g.numel:,} "
                                f"elements whose whole storage ({_fmt_bytes(g.storage_bytes)}) "
                                f"travels with it ({total}): send a copy of just the slice "
                                "(tensor[...].clone()) instead of the view"),
                    "channel": channel, "callable": sender, "path": path, "count": messages,
                    "size": each, "bytes": each * messages}))
            if path.endswith(".__self__") and messages >= 2:
                method = f" {g.method}()" if g.method else ""
                out.append((g.bytes, {
                    "kind": "bound_method_self",
                    "message": (f"{where} each carried the instance of the bound method"
                                f"{method} ({path}, a {type_}: {_fmt_bytes(each)} each; "
                                f"{total}): a bound method pickles its self with every task; "
                                "make it a module-level function and send the instance once "
                                "(a Pool initializer that keeps it in a global), or pass only "
                                "what the method needs"),
                    "channel": channel, "callable": sender, "path": path, "count": messages,
                    "size": each, "bytes": each * messages}))
            elif (".__closure__[" in path or ".__globals__[" in path) and messages >= 2:
                what = (f"captured variable {g.captured!r}" if g.captured else
                        "global " + path.split("__globals__", 1)[1].strip("[]'\"")
                        if ".__globals__[" in path else "a closure cell")
                out.append((g.bytes, {
                    "kind": "captured_data",
                    "message": (f"{where} each carried data the function captured ({what}, "
                                f"{path}, a {type_}: {_fmt_bytes(each)} each; {total}): a "
                                "function sent by value takes its closure and the globals it "
                                "uses along; pass the data once (a Pool initializer, shared "
                                "memory) or load it in the worker"),
                    "channel": channel, "callable": sender, "path": path, "count": messages,
                    "size": each, "bytes": each * messages}))
            elif (channel in _TASKS and path.startswith(_ARGUMENTS) and messages >= 2
                  and g.min == g.max and "__self__" not in path):
                out.append((g.bytes, {
                    "kind": "same_large_argument",
                    "message": (f"{where} each carried {path} (a {type_} of "
                                f"{_fmt_bytes(g.max)}, the same size every time; {total}): "
                                "if it is the same data each time, send it once with a Pool "
                                "initializer (initializer=..., initargs=(data,) on the Pool or "
                                "executor, keeping it in a module global), or put it in shared "
                                "memory"),
                    "channel": channel, "callable": sender, "path": path, "count": messages,
                    "size": g.max, "bytes": each * messages}))
        targets = _targets(starts)
        for (path, type_), g in list(launch.items()):
            # target.__self__ and target.__self__.dataset of the same size: name the inner one.
            if any(inner != path and inner.startswith(path) and inner[len(path)] in ".["
                   and other.bytes >= 0.9 * g.bytes for (inner, _), other in launch.items()):
                del launch[(path, type_)]
        for (path, type_), g in launch.items():
            children = max(len(g.children), g.messages)
            each = g.bytes // max(g.messages, 1)
            if each < 64 * 1024:
                continue
            names = sorted({targets[c] for c in g.children if c in targets})
            target = ", ".join(names) if names else "their target"
            out.append((g.bytes, {
                "kind": "large_launch_data",
                "message": (f"the launch data of each of {children} process"
                            f"{'es' if children != 1 else ''} ({target}) carried {path} "
                            f"(a {type_}: {_fmt_bytes(each)} each, {_fmt_bytes(g.bytes)} "
                            "pickled at start): under spawn and forkserver a Process's target "
                            "and arguments are pickled once per child; pass something small "
                            "(a path, a size) and load the data in the child, or create it "
                            "there (a DataLoader's dataset: load in __getitem__ or "
                            "worker_init_fn)"),
                "channel": "process", "path": path, "count": children, "size": each,
                "bytes": g.bytes}))
        out.sort(key=lambda pair: -pair[0])
        return [f for _, f in out]


_TASKS = ("pool.task", "executor.call")
_ARGUMENTS = ("args", "kwargs", "items", "func.args", "func.keywords")


def _targets(starts: Iterable[Mapping[str, Any]]) -> Dict[str, str]:
    """Each started child's target, by the child's name."""
    by_child: Dict[str, str] = {}
    for s in starts:
        child, target = s.get("child"), s.get("target")
        if isinstance(child, str) and isinstance(target, str):
            by_child[child] = target
    return by_child


# -- whose code a name is ---------------------------------------------------------------------

_library_cache: Dict[str, bool] = {}
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__builtin__"}
_SITE = ("site-packages", "dist-packages")


def is_library(name: str) -> bool:
    """Whether ``module.qualname`` belongs to the stdlib or an installed library (looked up in
    the Python reading the trace, without importing anything); the program's own code else."""
    top = name.split(".", 1)[0]
    known = _library_cache.get(top)
    if known is not None:
        return known
    if top in _STDLIB or top in ("tracedmp", "_tracedmp_autostart"):
        result = True
    elif top in ("__main__", "__mp_main__", "?", "..."):
        result = False
    else:
        result = _installed(top)
    if len(_library_cache) < 4096:
        _library_cache[top] = result
    return result


def _installed(top: str) -> bool:
    import importlib.util

    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    origin = spec.origin or ""
    if origin in ("built-in", "frozen"):
        return True
    paths = [origin, *(spec.submodule_search_locations or [])]
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    for path in paths:
        real = os.path.realpath(path) if path else ""
        if any(part in real for part in _SITE):
            return True
        if any(real.startswith(p + os.sep) for p in prefixes) and "site-packages" not in real \
                and os.sep + "lib" + os.sep in real:
            return True  # the stdlib of that Python
    return False


def user_first(names: Iterable[str]) -> List[str]:
    """``names`` with the program's own first (each group in its order)."""
    names = list(names)
    return [n for n in names if not is_library(n)] + [n for n in names if is_library(n)]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover
