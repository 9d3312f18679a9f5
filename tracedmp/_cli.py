"""The ``tracedmp`` command: thin over the library; one clear line and exit 2 on failure."""

from __future__ import annotations

import os
import sys

from ._errors import TracedmpError

TYPE_CHECKING = False  # typing costs every command milliseconds to import
if TYPE_CHECKING:
    import argparse
    from typing import IO, Any, Callable, List, Optional

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # as argparse's version action prints it, without building it
        from ._version import __version__

        print(f"tracedmp {__version__}")
        return 0
    program: List[str] = []
    if argv[:1] == ["run"]:
        # Everything from the script (or -m MODULE) on is the program's own command line, even
        # what looks like an option: argparse would claim "-m pytest -q"'s -q for itself.
        argv, program = _split_run(argv)
        quick = _quick_run_args(argv[1:], program)
        if quick is not None:
            return _call(_run, quick)
    if argv[:1] == ["report"]:
        quick = _quick_report_args(argv[1:])
        if quick is not None:
            return _call(_report, quick)
    # Only `tracedmp bench` builds bench's options: they import multiprocessing, statistics and
    # the rest, which every other command (`run` above all, before the program starts) would pay.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(bench=command == "bench")
    args = parser.parse_args(argv)
    if program:
        args.program = program
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    return _call(args.func, args)


def _call(func: Callable[[Any], int], args: Any) -> int:
    try:
        return func(args)
    except TracedmpError as exc:
        from ._read.reader import printable

        print(f"tracedmp: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tracedmp report ... | head`
        return 0


# `bench`'s line in `tracedmp --help`, without importing it (_bench.add_parser has the same).
_BENCH_HELP = "measure what pickling a payload costs, alone and in Pool.map"


class _RunArgs:
    """run's or report's arguments read without argparse (the attributes argparse's Namespace
    would have); not types.SimpleNamespace: the types module is one more import before the
    program starts."""

    command: str
    trace: Any  # run's: a path or None; report's: a path
    json: bool
    top: int
    channel: Optional[str]
    pid: Optional[int]
    html: Any
    pickler: Optional[str]
    module: Optional[str]
    program: List[str]
    unpickle: bool
    summary: bool
    check_spawn: bool

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _quick_run_args(options: List[str], program: List[str]) -> Optional[_RunArgs]:
    """``run``'s arguments when they are plainly spelt, without argparse.

    Importing argparse and building the parser costs `tracedmp run` milliseconds before the
    program starts (3.14's also imports _colorize, dataclasses and inspect); anything unusual
    (an abbreviation, ``--opt=value``, a bad choice, ``--help``, nothing to run) goes through
    argparse, which says what is wrong exactly as before.
    """
    args = _RunArgs(command="run", trace=None, pickler=None, module=None, program=program,
                    **{s[2:].replace("-", "_"): False for s in _SWITCHES})
    i = 0
    while i < len(options):
        opt = options[i]
        if opt in _SWITCHES:
            setattr(args, opt[2:].replace("-", "_"), True)
            i += 1
            continue
        if opt not in ("--trace", "--pickler", "-m") or i + 1 >= len(options):
            return None
        value = options[i + 1]
        if value.startswith("-") or (opt == "--pickler" and value not in _PICKLERS):
            return None
        setattr(args, {"--trace": "trace", "--pickler": "pickler", "-m": "module"}[opt], value)
        i += 2
    if args.module is None and not program:
        return None
    return args


def _quick_report_args(options: List[str]) -> Optional[_RunArgs]:
    """``report``'s arguments when they are plainly spelt, without argparse (on 3.14 it imports
    dataclasses, inspect and annotationlib: more than the report of a small trace costs);
    anything else (an abbreviation, ``--opt=value``, a number argparse would refuse, ``--help``)
    goes through argparse."""
    args = _RunArgs(command="report", trace=None, json=False, top=10, channel=None, pid=None,
                    html=None)
    i = 0
    while i < len(options):
        opt = options[i]
        if opt == "--json":
            args.json = True
            i += 1
            continue
        if opt in ("--top", "--channel", "--pid", "--html"):
            if i + 1 >= len(options) or options[i + 1].startswith("-"):
                return None
            value = options[i + 1]
            if opt in ("--top", "--pid"):
                if not (value.isascii() and value.isdigit()) or (opt == "--top" and
                                                                 int(value) < 1):
                    return None
                setattr(args, opt[2:], int(value))
            else:
                setattr(args, opt[2:], value)
            i += 2
            continue
        if opt.startswith("-") or args.trace is not None:
            return None
        args.trace = opt
        i += 1
    return args if args.trace is not None else None


_PICKLERS = ("pickle", "cloudpickle")
_SWITCHES = ("--unpickle", "--summary", "--check-spawn")  # run's store_true options


def _parser(bench: bool = True) -> argparse.ArgumentParser:
    import argparse

    from ._args import positive
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="tracedmp",
        description="See exactly what multiprocessing pickles.",
    )
    parser.add_argument("--version", action="version", version=f"tracedmp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run an unchanged Python program with every process traced",
        description="Run a program as `python SCRIPT ARGS` or `python -m MODULE ARGS` would, "
        "with every process it starts traced (fork, spawn, forkserver, even python -E/-I).",
    )
    run.add_argument("--trace", metavar="PATH", help="trace file (default: $TRACEDMP_TRACE, "
                     "else tracedmp-<time>-<pid>.jsonl here)")
    run.add_argument("--pickler", choices=_PICKLERS,
                     help="pickler for every process (default: pickle, as multiprocessing)")
    run.add_argument("--unpickle", action="store_true", help="record unpickling too")
    run.add_argument("--summary", action="store_true",
                     help="summary mode: per process, aggregates per kind of pickle (count, "
                     "bytes, sizes, time) and the largest few in full, instead of a record per "
                     "pickle; for long runs (the trace grows with kinds, not pickles)")
    run.add_argument("--check-spawn", action="store_true",
                     help="for fork-started processes, record whether spawn could start them")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module as a script")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS...]")
    run.set_defaults(func=_run)

    report = sub.add_parser(
        "report", help="summarize a trace: totals, breakdowns, largest pickles, errors, findings",
        description="Summarize a trace in one streaming pass.")
    report.add_argument("trace", metavar="TRACE", help="a trace file (JSON Lines)")
    report.add_argument("--json", action="store_true", help="print the summary as JSON")
    report.add_argument("--top", type=positive, default=10, metavar="N",
                        help="rows in the top-N tables (default 10)")
    report.add_argument("--channel", help="only records of this channel (e.g. pool.task)")
    report.add_argument("--pid", type=int, help="only records of this process id")
    report.add_argument("--html", metavar="OUT",
                        help="also write the report as one self-contained HTML file (charts, "
                        "process lanes, sortable tables; opens offline)")
    report.set_defaults(func=_report)

    timeline = sub.add_parser(
        "timeline", help="write a trace as Chrome Trace Event JSON (Perfetto, chrome://tracing)",
        description="One track per process, one slice per pickle (its duration), sizes in the "
        "slice arguments.  Open the output at ui.perfetto.dev or chrome://tracing.")
    timeline.add_argument("trace", metavar="TRACE")
    timeline.add_argument("-o", "--output", metavar="OUT",
                          help="output file (default: TRACE with .timeline.json)")
    timeline.set_defaults(func=_timeline)

    explain = sub.add_parser(
        "explain", help="show what is inside one pickle, as a tree",
        description="Pickle a Python expression as multiprocessing would (modules named in it "
        "are imported) and show each object in it: how many bytes, by reference or by value.  "
        "Given a file instead, explain the pickle in it without unpickling it: an argument "
        "that exists, holds a /, or ends in .pkl, .pickle, .bin (and the like) is a file, "
        "never imported.")
    explain.add_argument("target", metavar="EXPR_OR_FILE",
                         help="an expression such as 'mymod.work' or '[mymod.work, 1]', or a "
                         "file holding a pickle")
    explain.add_argument("--pickler", choices=("pickle", "cloudpickle"), default="pickle")
    explain.add_argument("--depth", type=positive, default=8, help="levels shown (default 8)")
    explain.add_argument("--json", action="store_true", help="print the tree as JSON")
    explain.add_argument("--expr", action="store_true",
                         help="TARGET is an expression even if it looks like a file name "
                         "(has a / or ends in .pkl, .pickle, .bin, ...)")
    explain.set_defaults(func=_explain)

    if bench:
        from ._bench import add_parser as add_bench

        add_bench(sub)
    else:
        sub.add_parser("bench", help=_BENCH_HELP, add_help=False)
    return parser


def _no_records(path: str, lost: Optional[dict] = None) -> TracedmpError:
    from ._read.report import losses_note

    note = losses_note(lost)
    if note:
        return TracedmpError(f"{path}: no whole record ({note})")
    return TracedmpError(f"{path}: no records (an empty trace: was the program traced? "
                         "see `tracedmp run --help`)")


def _timeline(args: argparse.Namespace) -> int:
    from ._read.reader import printable, read_trace
    from ._read.report import losses
    from ._read.timeline import write_timeline

    out_path = args.output or (os.path.splitext(args.trace)[0] + ".timeline.json")
    trace = read_trace(args.trace)

    def write(out: IO[str]) -> int:
        count = write_timeline(trace, out)
        if count == 0:
            raise _no_records(args.trace, losses(trace)) if not trace.records else TracedmpError(
                f"{args.trace}: no record with a time and a process id to place on a timeline")
        return count

    count = _write_new(out_path, write)
    print(printable(f"wrote {count} events to {out_path}; open it at https://ui.perfetto.dev "
                    "or chrome://tracing"))
    _note_losses(args.trace, losses(trace))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ._args import evaluate_expression
    from ._read.explain import explain, explain_bytes, render_tree

    target = args.target
    if not args.expr and _looks_like_a_file(target):
        try:
            with open(target, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise TracedmpError(
                f"{target}: {exc.strerror or exc} (an argument that looks like a file is read as "
                "one, never evaluated; give --expr to explain it as a Python expression)"
            ) from None
        try:
            node = explain_bytes(data)
        except Exception as exc:  # pickletools' errors for bytes that are not a pickle
            raise TracedmpError(f"{target}: not a pickle ({exc})") from None
    else:
        obj = evaluate_expression(target)
        try:
            node = explain(obj, args.pickler)
        except Exception as exc:
            from ._runtime.diagnose import diagnose
            from ._runtime.picklers import dump_untraced

            path, hint, _ = diagnose(obj, exc, args.pickler, dump=dump_untraced)
            where = f" at {path}" if path else ""
            raise TracedmpError(f"{target!r} cannot be pickled{where}: "
                                f"{type(exc).__name__}: {exc}; {hint}") from None
    try:
        if args.json:
            import json

            print(json.dumps(node.as_dict(), indent=1))
        else:
            sys.stdout.write(render_tree(node, depth=args.depth))
    except RecursionError:
        raise TracedmpError(f"{target}: the pickle nests too deeply to show as JSON "
                            "(show it as a tree, without --json)") from None
    return 0


# What pickles are saved as: an argument ending so names a file, even one that is not there.
_FILE_SUFFIXES = (".pkl", ".pickle", ".pck", ".pcl", ".bin", ".dat", ".jsonl", ".json")


def _looks_like_a_file(target: str) -> bool:
    """Whether ``target`` names a file: it exists, has a path separator, or a file's suffix.

    Evaluating ``results.pkl`` as an expression would import ``results.py`` from the current
    directory: a name that looks like a file is never imported.
    """
    if os.path.exists(target) or os.sep in target or (os.altsep and os.altsep in target):
        return True
    return target.strip().lower().endswith(_FILE_SUFFIXES)


# run's long options (argparse also takes any unambiguous abbreviation of one), and which take
# a value: `--pick pickle app.py` runs app.py, not a script named pickle.
_RUN_LONG_OPTIONS = ("--trace", "--pickler", "--unpickle", "--summary", "--check-spawn", "--help")
_RUN_OPTIONS_WITH_VALUE = ("--trace", "--pickler")


def _split_run(argv: List[str]) -> "tuple[List[str], List[str]]":
    """``run``'s own options, and the program's command line (``-m MODULE`` kept ahead)."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[:i + 2], argv[i + 2:]
        if arg.startswith("-m") and not arg.startswith("--"):  # -mMODULE, as argparse reads it
            return argv[:i + 1], argv[i + 1:]
        if arg == "--":
            return argv[:i], argv[i + 1:]
        if not arg.startswith("-"):
            return argv[:i], argv[i:]
        i += 2 if _takes_value(arg) else 1
    return argv, []


def _takes_value(arg: str) -> bool:
    """Whether ``arg`` is run's --trace or --pickler, spelt in full or abbreviated, without
    ``=VALUE`` (then its value is the next argument)."""
    if not arg.startswith("--") or "=" in arg:
        return False
    if arg in _RUN_LONG_OPTIONS:
        return arg in _RUN_OPTIONS_WITH_VALUE
    matches = [o for o in _RUN_LONG_OPTIONS if o.startswith(arg)]
    return len(matches) == 1 and matches[0] in _RUN_OPTIONS_WITH_VALUE


def _report(args: argparse.Namespace | _RunArgs) -> int:
    from ._read.report import render_text, summarize_file

    if args.html:
        return _report_html(args)
    data = summarize_file(args.trace, top=args.top, channel=args.channel, pid=args.pid)
    if data["records"] == 0:
        raise _no_records(args.trace, data["lost"])
    if args.json:
        import json

        print(json.dumps(data, indent=1, default=list))
    else:
        sys.stdout.write(render_text(data))
    _note_losses(args.trace, data["lost"])
    return 0


def _report_html(args: argparse.Namespace | _RunArgs) -> int:
    from ._read.html import render_html, report_data
    from ._read.reader import printable, read_trace

    if args.json or args.channel is not None or args.pid is not None:
        raise TracedmpError("--html takes the whole trace (filter by channel and process on "
                            "the page); leave out --json, --channel and --pid")
    data = report_data(read_trace(args.trace), top=args.top)
    if data["records"] == 0:
        raise _no_records(args.trace, data["lost"])
    page = render_html(data)
    _write_new(args.html, lambda out: out.write(page))
    print(printable(f"wrote {args.html} ({len(page.encode()) / 1000:.0f} KB): open it in a "
                    "browser (it loads nothing from the network)"))
    _note_losses(args.trace, data["lost"])
    return 0


def _write_new(path: str, write: Callable[[IO[str]], Any]) -> Any:
    """``write(out)`` into a new file of ours beside ``path``, then put it in place: a reader of
    ``path`` never sees half a file, and a symbolic link there is replaced, never written
    through.  What ``write`` returns is returned; nothing is left behind if it raises."""
    tmp = path + ".part"
    made = False
    try:
        out = _create(tmp)
        made = True
        with out:
            result = write(out)
        os.replace(tmp, path)
        made = False
    except OSError as exc:
        raise TracedmpError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if made:
            os.unlink(tmp)
    return result


def _create(path: str) -> IO[str]:
    """A new file of ours at ``path``, for writing: never through a symbolic link planted there,
    never into a file someone else made (a leftover of ours from a killed run is replaced)."""
    import stat

    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise TracedmpError(f"cannot write {path}: it is a symbolic link, which tracedmp "
                                "does not follow (someone may have planted it); remove it or "
                                "choose another output (-o)") from None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise TracedmpError(f"cannot write {path}: it is not a file of yours; remove it or "
                                "choose another output (-o)") from None
        os.unlink(path)
        fd = os.open(path, flags, 0o666)
    return os.fdopen(fd, "w")


def _note_losses(path: str, lost: dict) -> None:
    from ._read.reader import printable
    from ._read.report import losses_note

    note = losses_note(lost)
    if note:
        print(printable(f"tracedmp: note: {path}: {note} (see Records lost in "
                        "`tracedmp report`)"), file=sys.stderr)


def _run(args: argparse.Namespace | _RunArgs) -> int:
    from ._runtime import config as _config
    from ._runtime.sink import TraceFile

    if args.module is None and not args.program:
        raise TracedmpError("nothing to run: give a script (tracedmp run app.py) or a module "
                            "(tracedmp run -m package.module)")
    _check_startup_hook()
    env = dict(os.environ)
    announce = False
    if args.trace is not None:
        trace = _config.check_trace(args.trace, "--trace")
    elif _config.ENV_TRACE in env:
        trace = _config.check_trace(env[_config.ENV_TRACE], _config.ENV_TRACE)
    else:
        trace, announce = None, True
    if trace is False:
        raise TracedmpError("tracing is off (TRACEDMP_TRACE=off): give --trace PATH to trace")
    if trace is None:
        trace = _config.default_trace_path()
    sink = TraceFile(trace)
    sink.open()
    sink.close()
    env[_config.ENV_TRACE] = trace
    env["TRACEDMP_AUTOSTART"] = str(os.getpid())  # exec keeps the pid: the program's main process
    if args.pickler:
        env[_config.ENV_PICKLER] = args.pickler
    if args.unpickle:
        env[_config.ENV_UNPICKLE] = "1"
    if args.summary:
        env[_config.ENV_MODE] = "summary"
    if args.check_spawn:
        env[_config.ENV_CHECK_SPAWN] = "1"
    if announce:
        print(f"tracedmp: tracing to {trace}", file=sys.stderr)
    flags = _interpreter_flags()
    if args.module is not None:
        argv = [sys.executable, *flags, "-m", args.module, *args.program]
    else:
        argv = [sys.executable, *flags, *args.program]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def _interpreter_flags() -> List[str]:
    """The options that give the program this interpreter's settings (sys.flags, -W, -X).

    subprocess._args_from_interpreter_flags without importing subprocess (~5 ms of the time
    before the program starts), and passing every -X option as 3.14's does (3.9-3.13's pass six
    or seven and drop the rest, such as -X int_max_str_digits or -X warn_default_encoding).
    tests/test_run_start.py compares the two, and what the program gets, flag by flag.
    """
    flags = sys.flags
    args = ["-" + "O" * flags.optimize] if flags.optimize > 0 else []
    for name, opt in (("debug", "d"), ("dont_write_bytecode", "B"), ("no_site", "S"),
                      ("verbose", "v"), ("bytes_warning", "b"), ("quiet", "q")):
        value = getattr(flags, name)
        if value > 0:
            args.append("-" + opt * value)
    if flags.isolated:
        args.append("-I")
    else:
        if flags.ignore_environment:
            args.append("-E")
        if flags.no_user_site:
            args.append("-s")
        if getattr(flags, "safe_path", False):  # 3.11+
            args.append("-P")
    warnopts = list(sys.warnoptions)
    # The interpreter adds these to sys.warnoptions for -b, -bb and -X dev: given by the flags.
    if flags.bytes_warning > 1 and "error::BytesWarning" in warnopts:
        warnopts.remove("error::BytesWarning")
    elif flags.bytes_warning == 1 and "default::BytesWarning" in warnopts:
        warnopts.remove("default::BytesWarning")
    if flags.dev_mode and "default" in warnopts:
        warnopts.remove("default")
    args += ["-W" + opt for opt in warnopts]
    if flags.dev_mode:
        args += ["-X", "dev"]
    xoptions = getattr(sys, "_xoptions", {})
    for opt in sorted(xoptions):
        if opt != "dev":
            value = xoptions[opt]
            args += ["-X", opt if value is True else f"{opt}={value}"]
    return args


def _check_startup_hook() -> None:
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    if not any(os.path.exists(os.path.join(d, "tracedmp-autostart.pth")) for d in dirs):
        raise TracedmpError(
            "tracedmp's startup hook (tracedmp-autostart.pth) is not in this Python's "
            "site-packages, so the program's processes could not be traced; install tracedmp "
            "with pip (pip install tracedmp, or pip install . from a checkout)"
        )
