"""``tracedmp bench``: what pickling one payload costs, alone and inside ``Pool.map``.

Three measurements of one sample argument, all on plain multiprocessing (tracing stays off):

- the picklers: size, ``dumps`` and ``loads`` time with multiprocessing's ``ForkingPickler``,
  cloudpickle and (when installed) dill;
- ``Pool.map`` per start method, sending the payload to a function that does nothing, against a
  baseline run sending ``None`` the same number of times: the time beyond the baseline is what
  the payload cost (pickling, the pipe, unpickling);
- the same pair of runs over a few chunksizes, to show where per-message overhead stops mattering.

Variants are interleaved and repeated; the figures are medians, ratios are medians of the ratios
within each round, so that a slow stretch of a shared machine hits both sides of a ratio.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import multiprocessing
import os
import pickle
import platform
import statistics
import sys
import time
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple, Union

from ._args import evaluate_expression, positive
from ._errors import TracedmpError

__all__ = ["add_parser", "run"]

CHUNKSIZES = (1, 4, 16, 64)
# Every task gets its own copy of the payload (pickle's memo would otherwise send an object
# repeated within a chunk only once); this bounds the memory those copies take.
COPY_BUDGET = 256 * 1000 * 1000
# Seconds one timed Pool.map aims at, and the bounds on its task count.
_TARGET = {"normal": 0.3, "quick": 0.03}
_TASKS = {"normal": (200, 20_000), "quick": (40, 200)}
# Seconds one timed dumps or loads loop aims at.
_MICRO_TARGET = {"normal": 0.02, "quick": 0.002}
_PER_MESSAGE_S = 30e-6  # a guess at Pool's own cost per task, to size runs before measuring


# ---------------------------------------------------------------------- run in pool workers
# Module level, so that spawn and forkserver workers import them by reference.

def noop(x: Any) -> None:
    """The trivial task: returns None, so results cost the same whatever was sent."""
    return None


def probe_loads(data: bytes) -> Optional[str]:
    """Unpickle ``data`` in a worker; the error as text, since a task that cannot be unpickled
    kills its worker and leaves ``Pool.map`` waiting forever."""
    try:
        pickle.loads(data)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------- the command

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``tracedmp`` command's subparsers."""
    bench = subparsers.add_parser(
        "bench", help="measure what pickling a payload costs, alone and in Pool.map",
        description="Measure one sample argument's pickle overhead on plain multiprocessing: "
        "size and dumps/loads time per pickler, Pool.map tasks/s per start method against a "
        "no-op baseline, and a chunksize sweep.  Medians of interleaved, repeated runs.")
    what = bench.add_mutually_exclusive_group(required=True)
    what.add_argument("--payload", metavar="MODULE:FUNCTION",
                      help="a function returning a sample argument (the current directory is "
                      "importable), e.g. mymod:sample")
    what.add_argument("--expr", metavar="EXPR",
                      help="a Python expression for the payload; modules named in it are "
                      "imported, e.g. 'list(range(10_000))' or 'decimal.Decimal(1)'")
    bench.add_argument("--methods", type=_methods, metavar="M[,M...]",
                       help="start methods to time (default: all of "
                       f"{','.join(multiprocessing.get_all_start_methods())})")
    bench.add_argument("--tasks", type=positive, metavar="N",
                       help="tasks per Pool.map (default: enough for ~0.3 s a run)")
    bench.add_argument("--processes", type=positive, metavar="N",
                       help="pool size (default: cores, at most 4)")
    bench.add_argument("--chunksizes", type=_chunksizes, metavar="C[,C...]",
                       help=f"chunksize sweep (default {','.join(map(str, CHUNKSIZES))})")
    bench.add_argument("--repeat", type=positive, metavar="N",
                       help="rounds; figures are medians (default 5, 1 with --quick)")
    bench.add_argument("--quick", "--fast", action="store_true", dest="quick",
                       help="a small, fast run: few tasks, one round")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--plot", metavar="OUT.png", help="also draw a chart (needs matplotlib)")
    bench.set_defaults(func=run)
    return bench


def run(args: argparse.Namespace) -> int:
    """``tracedmp bench``: measure, then print a table (or JSON) and maybe draw a chart."""
    _check_plot(args.plot)
    _check_not_tracing()
    source = args.payload or args.expr
    payload = load_payload(args.payload) if args.payload else evaluate_payload(args.expr)
    data = check_payload(payload, source)
    mode = "quick" if args.quick else "normal"
    methods = args.methods or multiprocessing.get_all_start_methods()
    processes = args.processes or max(1, min(4, os.cpu_count() or 1))
    repeat = args.repeat or (1 if args.quick else 5)
    with _untraced_children():
        results = measure(payload, data, source=source, mode=mode, methods=methods,
                          processes=processes, repeat=repeat, tasks=args.tasks,
                          chunksizes=args.chunksizes or list(CHUNKSIZES))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        sys.stdout.write(render_text(results))
    if args.plot:
        plot(results, args.plot)
        print(f"tracedmp: chart written to {args.plot}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ the payload

def load_payload(spec: str) -> Any:
    """Call ``module:function`` and return the sample argument it makes."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise TracedmpError(f"--payload {spec!r}: give MODULE:FUNCTION, e.g. --payload "
                            "mymod:sample (a function in mymod.py that returns a sample argument)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TracedmpError(f"--payload {spec!r}: cannot import {module_name!r} ({exc}); run "
                            "tracedmp bench from the directory holding it, or install it") from None
    except Exception as exc:
        raise TracedmpError(f"--payload {spec!r}: importing {module_name!r} failed: "
                            f"{type(exc).__name__}: {exc}; fix the module") from None
    func: Any = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise TracedmpError(f"--payload {spec!r}: {module_name} has no {func_name!r}; "
                                f"define it in {getattr(module, '__file__', module_name)}")
    if not callable(func):
        raise TracedmpError(f"--payload {spec!r}: {func_name} is not callable (it is "
                            f"{type(func).__name__} {func!r:.40}); name a function that returns a "
                            "sample argument")
    try:
        return func()
    except Exception as exc:
        raise TracedmpError(f"--payload {spec!r}: {func_name}() raised {type(exc).__name__}: "
                            f"{exc}; it is called with no arguments and must return a sample "
                            "argument") from None


def evaluate_payload(expr: str) -> Any:
    """Evaluate ``--expr`` as ``tracedmp explain`` does, importing the modules it names."""
    import ast

    try:
        ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise TracedmpError(f"--expr {expr!r} is not a Python expression ({exc.msg}); quote it "
                            "for the shell, e.g. --expr 'list(range(1000))'") from None
    try:
        return evaluate_expression(expr)
    except TracedmpError as exc:
        raise TracedmpError(f"--expr: {exc}; use builtins and modules named in full (e.g. "
                            "--expr 'decimal.Decimal(1)'), or --payload MODULE:FUNCTION") from None


def check_payload(payload: Any, source: str) -> bytes:
    """The payload as multiprocessing pickles it; an error naming the bad part if it cannot."""
    try:
        data = bytes(ForkingPickler.dumps(payload))
    except Exception as exc:
        from ._runtime.diagnose import diagnose
        from ._runtime.picklers import dump_untraced

        path, hint, _ = diagnose(payload, exc, "pickle", dump=dump_untraced)
        where = f" at {path}" if path else ""
        raise TracedmpError(f"{source!r}: multiprocessing cannot pickle the payload{where}: "
                            f"{type(exc).__name__}: {exc}; {hint}") from None
    try:
        pickle.loads(data)
    except Exception as exc:
        raise TracedmpError(f"{source!r}: the payload pickles but does not unpickle: "
                            f"{type(exc).__name__}: {exc}; check its __reduce__ or "
                            "__setstate__") from None
    return data


# ---------------------------------------------------------------------------- measurements

class _Pickler:
    """One pickler's dumps and loads, at the protocol multiprocessing uses."""

    def __init__(self, name: str, dumps: Callable[[Any], Union[bytes, memoryview]],
                 loads: Callable[[bytes], Any]) -> None:
        self.name = name
        self.dumps = dumps
        self.loads = loads
        self.data = b""
        self.loops = 1
        self.error: Optional[str] = None


def picklers(payload: Any) -> Tuple[List[_Pickler], Dict[str, str]]:
    """The picklers to compare, and a note for each one that is missing or fails."""
    proto = pickle.DEFAULT_PROTOCOL  # what ForkingPickler uses; the others too, for fairness
    # ForkingPickler.dumps returns a memoryview, which Connection.send writes as it is.
    found = [_Pickler("pickle", lambda o: ForkingPickler.dumps(o, proto), pickle.loads)]
    notes: Dict[str, str] = {}
    import cloudpickle

    found.append(_Pickler("cloudpickle", lambda o: cloudpickle.dumps(o, protocol=proto),
                          pickle.loads))
    try:
        import dill
    except ImportError:
        notes["dill"] = "not installed (pip install dill)"
    else:
        found.append(_Pickler("dill", lambda o: dill.dumps(o, protocol=proto), dill.loads))
    usable = []
    for p in found:
        try:
            p.data = bytes(p.dumps(payload))
            p.loads(p.data)
        except Exception as exc:
            notes[p.name] = f"fails: {type(exc).__name__}: {exc}"
            continue
        usable.append(p)
    return usable, notes


def _calibrate(p: _Pickler, payload: Any, target: float) -> float:
    """Pick the loop count that makes one timed dumps loop last ``target``; the time per call."""
    loops = 1
    while True:
        per_call = _time_loop(p.dumps, payload, loops)
        if per_call * loops >= target or loops >= 1_000_000:
            break
        loops = min(loops * 10, max(loops * 2, int(target / max(per_call, 1e-9)) + 1))
    p.loops = loops
    return per_call


def _time_loop(fn: Callable[[Any], Any], arg: Any, loops: int) -> float:
    t = time.perf_counter()
    for _ in range(loops):
        fn(arg)
    return (time.perf_counter() - t) / loops


def _default_chunksize(tasks: int, processes: int) -> int:
    # Pool.map's own rule.
    chunksize, extra = divmod(tasks, processes * 4)
    return chunksize + 1 if extra else chunksize


def _tasks_for(per_task: float, size: int, mode: str, notes: List[str]) -> int:
    low, high = _TASKS[mode]
    tasks = max(low, min(high, int(_TARGET[mode] / per_task)))
    cap = max(1, COPY_BUDGET // max(size, 1))
    if tasks > cap:
        notes.append(f"tasks limited to {cap}: each task gets its own copy of the payload, "
                     f"kept under {COPY_BUDGET // 1_000_000} MB in all")
        tasks = cap
    return tasks


def measure(payload: Any, data: bytes, *, source: str, mode: str, methods: Sequence[str],
            processes: int, repeat: int, tasks: Optional[int],
            chunksizes: Sequence[int], stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """Run every variant ``repeat`` times, interleaved, and summarize them."""
    notes: List[str] = []
    gc.collect()  # start clean: earlier garbage is not the first run's to collect
    usable, pickler_notes = picklers(payload)
    per_call = {p.name: _calibrate(p, payload, _MICRO_TARGET[mode]) for p in usable}
    loads_s = _time_loop(pickle.loads, data, max(1, usable[0].loops))
    if tasks is None:
        tasks = _tasks_for(per_call["pickle"] + loads_s + _PER_MESSAGE_S, len(data), mode, notes)
    elif tasks * len(data) > COPY_BUDGET:
        notes.append(f"{tasks} copies of the payload take {tasks * len(data) / 1e6:.0f} MB")
    # Distinct copies: the memo of one chunk's pickle must not shorten a repeated payload.
    copies = [pickle.loads(data) for _ in range(tasks)]
    baseline = [None] * tasks
    timeout = 60 + 50 * tasks * (per_call["pickle"] + loads_s + _PER_MESSAGE_S)
    sweep_method = methods[0]
    steps = repeat * (1 + len(methods) + len(chunksizes))
    progress = _Progress(steps, stream or sys.stderr)
    raw: Dict[str, Any] = {
        "picklers": {p.name: {"size": len(p.data), "dumps_s": [], "loads_s": []}
                     for p in usable},
        "pool": {m: {"startup_s": [], "baseline_s": [], "payload_s": []} for m in methods},
        "sweep": {c: {"baseline_s": [], "payload_s": []} for c in chunksizes},
    }
    try:
        for r in range(repeat):
            _micro_round(_rotate(usable, r), payload, raw["picklers"])
            progress.step("picklers")
            for method in _rotate(methods, r):
                ctx = multiprocessing.get_context(method)
                t = time.perf_counter()
                with ctx.Pool(processes) as pool:
                    _timed_map(pool, list(range(processes)), 1, timeout, method)
                    raw["pool"][method]["startup_s"].append(time.perf_counter() - t)
                    _probe(pool, data, method, source)
                    # Every worker imports what the payload names before the timing starts.
                    _timed_map(pool, copies[:2 * processes], 1, timeout, method)
                    _pair(pool, r, copies, baseline, None, timeout, method, raw["pool"][method])
                    progress.step(method)
                    if method != sweep_method:
                        continue
                    for c in _rotate(chunksizes, r):
                        _pair(pool, r, copies, baseline, c, timeout, method, raw["sweep"][c])
                        progress.step(f"{method} chunksize {c}")
    finally:
        progress.close()
    return summarize(raw, data=data, payload=payload, source=source, mode=mode, tasks=tasks,
                     processes=processes, repeat=repeat, sweep_method=sweep_method,
                     pickler_notes=pickler_notes, notes=notes)


def _rotate(items: Sequence[Any], r: int) -> List[Any]:
    # Each round starts with a different variant, so none always runs first (or last).
    k = r % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


def _micro_round(usable: List[_Pickler], payload: Any, raw: Dict[str, Any]) -> None:
    for p in usable:
        raw[p.name]["dumps_s"].append(_time_loop(p.dumps, payload, p.loops))
        raw[p.name]["loads_s"].append(_time_loop(p.loads, p.data, p.loops))


def _probe(pool: Any, data: bytes, method: str, source: str) -> None:
    error = pool.apply_async(probe_loads, (data,)).get(60)
    if error:
        raise TracedmpError(f"{source!r}: a {method} worker cannot unpickle the payload: {error}; "
                            "the module defining its classes must be importable by the workers "
                            "(run from its directory, or install it)")


def _pair(pool: Any, r: int, copies: List[Any], baseline: List[None], chunksize: Optional[int],
          timeout: float, method: str, into: Dict[str, List[float]]) -> None:
    """Time the baseline and the payload run back to back, alternating which goes first."""
    order = [("baseline_s", baseline), ("payload_s", copies)]
    for key, items in (order if r % 2 == 0 else order[::-1]):
        into[key].append(_timed_map(pool, items, chunksize, timeout, method))


def _timed_map(pool: Any, items: List[Any], chunksize: Optional[int], timeout: float,
               method: str) -> float:
    t = time.perf_counter()
    result = pool.map_async(noop, items, chunksize)
    try:
        result.get(timeout)
    except multiprocessing.TimeoutError:
        raise TracedmpError(f"Pool.map under {method} did not finish in {timeout:.0f} s: a "
                            "worker may have died (see its traceback above; under spawn, the "
                            "main module must guard its code with if __name__ == '__main__'), "
                            "or try fewer --tasks") from None
    return time.perf_counter() - t


# ------------------------------------------------------------------------------- summaries

def _med(values: List[float]) -> float:
    return statistics.median(values)


def _share(base: List[float], load: List[float]) -> float:
    # Time beyond the baseline, as a share of the payload run: what the payload cost.
    return _med([max(0.0, 1 - b / p) for b, p in zip(base, load)])


def _runs(into: Dict[str, List[float]], tasks: int) -> Dict[str, Any]:
    base, load = into["baseline_s"], into["payload_s"]
    return {
        "baseline": {"seconds": _med(base), "tasks_per_s": tasks / _med(base)},
        "payload": {"seconds": _med(load), "tasks_per_s": tasks / _med(load)},
        "slowdown": _med([p / b for b, p in zip(base, load)]),
        "pickling_share": _share(base, load),
        "overhead_per_task_s": max(0.0, _med([(p - b) / tasks for b, p in zip(base, load)])),
        "runs": into,
    }


def summarize(raw: Dict[str, Any], *, data: bytes, payload: Any, source: str, mode: str,
              tasks: int, processes: int, repeat: int, sweep_method: str,
              pickler_notes: Dict[str, str], notes: List[str]) -> Dict[str, Any]:
    """The results as plain data: what ``--json`` prints."""
    from ._version import __version__

    ref = raw["picklers"]["pickle"]
    ref_time = [d + lo for d, lo in zip(ref["dumps_s"], ref["loads_s"])]
    table: Dict[str, Any] = {}
    for name in ("pickle", "cloudpickle", "dill"):
        if name in pickler_notes:
            table[name] = {"available": False, "note": pickler_notes[name]}
        if name not in raw["picklers"]:
            continue
        runs = dict(raw["picklers"][name])
        size = runs.pop("size")
        table[name] = {
            "available": True, "size": size,
            "dumps_s": _med(runs["dumps_s"]), "loads_s": _med(runs["loads_s"]),
            "size_ratio": size / len(data),
            "time_ratio": _med([(d + lo) / t for d, lo, t in
                                zip(runs["dumps_s"], runs["loads_s"], ref_time)]),
            "runs": runs,
        }
    return {
        "tracedmp": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": f"{sys.platform} {platform.machine()}",
        "cores": os.cpu_count(),
        "payload": {"source": source, "type": _type_name(payload), "size": len(data),
                    "protocol": _protocol_of(data)},
        "settings": {"mode": mode, "tasks": tasks, "processes": processes, "repeat": repeat,
                     "methods": list(raw["pool"]), "default_chunksize":
                     _default_chunksize(tasks, processes), "sweep_method": sweep_method,
                     "chunksizes": list(raw["sweep"])},
        "picklers": table,
        "pool": {m: {"startup_s": _med(v["startup_s"]), **_runs(v, tasks)}
                 for m, v in raw["pool"].items()},
        "sweep": [{"chunksize": c, **_runs(v, tasks)} for c, v in raw["sweep"].items()],
        "notes": notes,
    }


def _protocol_of(data: bytes) -> int:
    """The protocol of a pickle multiprocessing wrote (its default: 5 from Python 3.14, else 4),
    read from the pickle itself; 0 and 1 have no PROTO opcode."""
    return data[1] if data[:1] == pickle.PROTO and len(data) > 1 else 0


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


# ------------------------------------------------------------------------------ rendering

def render_text(res: Dict[str, Any]) -> str:
    """The results as tables for a terminal."""
    from ._read.report import _fmt_bytes

    s, pay = res["settings"], res["payload"]
    lines = [
        f"tracedmp bench: {pay['source']} ({pay['type']}, {_fmt_bytes(pay['size'])} as "
        f"multiprocessing pickles it)",
        f"  {res['implementation']} {res['python']} on {res['platform']}, {res['cores']} cores; "
        f"{s['processes']} workers, {s['tasks']} tasks a run, medians of {s['repeat']} "
        f"round{'s' if s['repeat'] != 1 else ''}",
        "",
        f"Picklers (protocol {pay['protocol']}, one call each)",
        f"  {'pickler':12} {'size':>10} {'size x':>7} {'dumps':>9} {'loads':>9} {'time x':>7}",
    ]
    for name, row in res["picklers"].items():
        if not row["available"]:
            lines.append(f"  {name:12} {row['note']}")
            continue
        lines.append(f"  {name:12} {_fmt_bytes(row['size']):>10} {row['size_ratio']:6.2f}x "
                     f"{_fmt_s(row['dumps_s']):>9} {_fmt_s(row['loads_s']):>9} "
                     f"{row['time_ratio']:6.2f}x")
    lines += [
        "",
        f"Pool.map(noop, {s['tasks']} tasks), default chunksize {s['default_chunksize']}: "
        "baseline sends None, payload sends the payload",
        f"  {'method':11} {'start':>8} {'baseline/s':>11} {'payload/s':>11} {'slowdown':>9} "
        f"{'per task':>9} {'pickling':>9}",
    ]
    for method, row in res["pool"].items():
        lines.append(f"  {method:11} {_fmt_s(row['startup_s']):>8} " + _run_cells(row))
    lines += [
        "",
        f"Chunksize sweep ({s['sweep_method']}, {s['tasks']} tasks)",
        f"  {'chunksize':>11} {'':>8} {'baseline/s':>11} {'payload/s':>11} {'slowdown':>9} "
        f"{'per task':>9} {'pickling':>9}",
    ]
    for row in res["sweep"]:
        lines.append(f"  {row['chunksize']:>11} {'':>8} " + _run_cells(row))
    lines += [
        "",
        "  pickling: share of the payload run's time beyond the baseline (pickling, the pipe,",
        "  unpickling); per task: that extra time per task.  'x' columns are ratios to pickle.",
    ]
    lines += [f"  note: {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def _run_cells(row: Dict[str, Any]) -> str:
    return (f"{row['baseline']['tasks_per_s']:>11,.0f} {row['payload']['tasks_per_s']:>11,.0f} "
            f"{row['slowdown']:8.2f}x {_fmt_s(row['overhead_per_task_s']):>9} "
            f"{row['pickling_share']:>8.0%}")


def _fmt_s(seconds: float) -> str:
    from ._read.report import _fmt_ns

    return _fmt_ns(seconds * 1e9)


def plot(res: Dict[str, Any], path: str) -> None:
    """Draw the three tables as one chart: pickler times, tasks/s per method, the sweep."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
    rows = {n: r for n, r in res["picklers"].items() if r["available"]}
    xs = range(len(rows))
    ax1.bar([x - 0.2 for x in xs], [r["dumps_s"] * 1e3 for r in rows.values()], 0.4,
            label="dumps")
    ax1.bar([x + 0.2 for x in xs], [r["loads_s"] * 1e3 for r in rows.values()], 0.4,
            label="loads")
    ax1.set_xticks(list(xs), list(rows))
    ax1.set_ylabel("ms per call")
    ax1.set_title("Picklers")
    ax1.legend()
    methods = list(res["pool"])
    xs = range(len(methods))
    for dx, key in ((-0.2, "baseline"), (0.2, "payload")):
        ax2.bar([x + dx for x in xs], [res["pool"][m][key]["tasks_per_s"] for m in methods],
                0.4, label=key)
    ax2.set_xticks(list(xs), methods)
    ax2.set_yscale("log")  # payload runs can be thousands of times slower than the baseline
    ax2.set_ylabel("tasks/s")
    ax2.set_title(f"Pool.map, chunksize {res['settings']['default_chunksize']}")
    ax2.legend()
    sizes = [r["chunksize"] for r in res["sweep"]]
    for key in ("baseline", "payload"):
        ax3.plot(sizes, [r[key]["tasks_per_s"] for r in res["sweep"]], marker="o", label=key)
    ax3.set_xscale("log", base=2)
    ax3.set_xticks(sizes, [str(c) for c in sizes])
    ax3.set_yscale("log")
    ax3.set_xlabel("chunksize")
    ax3.set_ylabel("tasks/s")
    ax3.set_title(f"Chunksize sweep ({res['settings']['sweep_method']})")
    ax3.legend()
    fig.suptitle(f"tracedmp bench: {res['payload']['source']}")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise TracedmpError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


# -------------------------------------------------------------------------------- plumbing

class _Progress:
    """``[#####.....] 3/10 spawn`` on a terminal's stderr, once a run has taken a second."""

    def __init__(self, total: int, stream: TextIO, delay: float = 1.0) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()
        self.delay = delay
        self.drawn = False
        isatty = getattr(stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled or time.monotonic() - self.start < self.delay:
            return
        filled = 30 * self.done // max(self.total, 1)
        self.stream.write(f"\rtracedmp bench [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{self.done}/{self.total} {label[:24]:24}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * 75 + "\r")
            self.stream.flush()


class _untraced_children:
    """Children started while benchmarking never trace, whatever the environment says."""

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in ("TRACEDMP_AUTOSTART", "TRACEDMP_TRACE")}
        os.environ.pop("TRACEDMP_AUTOSTART", None)
        os.environ["TRACEDMP_TRACE"] = "off"

    def __exit__(self, *exc: Any) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_not_tracing() -> None:
    from ._runtime import tracer

    if tracer.current is not None:
        raise TracedmpError("tracing is on in this process, and the bench measures plain "
                            "multiprocessing: run tracedmp bench outside `tracedmp run` "
                            "(unset TRACEDMP_AUTOSTART)")


def _check_plot(path: Optional[str]) -> None:
    # Before measuring, so that a missing matplotlib does not cost a whole run.
    if path is None:
        return
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise TracedmpError("--plot needs matplotlib: pip install matplotlib")


def _chunksizes(text: str) -> List[int]:
    sizes = [positive(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("name at least one chunksize, e.g. 1,4,16,64")
    return list(dict.fromkeys(sizes))


def _methods(text: str) -> List[str]:
    known = multiprocessing.get_all_start_methods()
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    for m in chosen:
        if m not in known:
            raise argparse.ArgumentTypeError(f"{m!r} is not a start method here (choose from "
                                             f"{','.join(known)})")
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one start method")
    return list(dict.fromkeys(chosen))
