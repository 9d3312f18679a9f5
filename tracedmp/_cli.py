"""The ``tracedmp`` command: thin over the library, one clear line and a non-zero exit on failure."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ._errors import TracedmpError

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except TracedmpError as exc:
        print(f"tracedmp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tracedmp report ... | head`
        return 0


def _parser() -> argparse.ArgumentParser:
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
    run.add_argument("--pickler", choices=("pickle", "cloudpickle"),
                     help="pickler for every process (default: pickle, as multiprocessing)")
    run.add_argument("--unpickle", action="store_true", help="record unpickling too")
    run.add_argument("--check-spawn", action="store_true",
                     help="for fork-started processes, record whether spawn could start them")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module as a script")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS...]")
    run.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from . import _config
    from ._sink import TraceFile

    if args.module is None and not args.program:
        raise TracedmpError("nothing to run: give a script (tracedmp run app.py) or a module "
                            "(tracedmp run -m package.module)")
    _check_startup_hook()
    env = dict(os.environ)
    announce = False
    if args.trace is not None:
        trace = _config._check_trace(args.trace, "--trace")
    elif _config.ENV_TRACE in env:
        trace = _config._check_trace(env[_config.ENV_TRACE], _config.ENV_TRACE)
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
    if args.check_spawn:
        env[_config.ENV_CHECK_SPAWN] = "1"
    if announce:
        print(f"tracedmp: tracing to {trace}", file=sys.stderr)
    import subprocess

    flags = subprocess._args_from_interpreter_flags()
    if args.module is not None:
        argv = [sys.executable, *flags, "-m", args.module, *args.program]
    else:
        argv = [sys.executable, *flags, *args.program]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def _check_startup_hook() -> None:
    import site

    dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
    if not any(os.path.exists(os.path.join(d, "tracedmp-autostart.pth")) for d in dirs):
        raise TracedmpError(
            "tracedmp's startup hook (tracedmp-autostart.pth) is not in this Python's "
            "site-packages, so the program's processes could not be traced; install tracedmp "
            "with pip (pip install tracedmp, or pip install . from a checkout)"
        )
