"""The settings tracing runs with, and where they come from; the bottom of ``_runtime``.

Explicit ``configure()`` arguments (kept in ``_explicit``; ``control.configure`` checks them with
the functions here) win over environment variables; environment variables are read when tracing
starts (never at import); anything left unset takes its default.
"""

from __future__ import annotations

import os
import time

from .._errors import ConfigError

TYPE_CHECKING = False  # typing and dataclasses cost milliseconds in every spawned child
if TYPE_CHECKING:
    from typing import Any, Callable, Literal, Tuple, Union

    Processor = Callable[[Any, str, dict], Any]

__all__ = ["Config", "resolve"]

PICKLERS = ("pickle", "cloudpickle")
ENV_TRACE = "TRACEDMP_TRACE"
ENV_PICKLER = "TRACEDMP_PICKLER"
ENV_UNPICKLE = "TRACEDMP_UNPICKLE"
ENV_CHECK_SPAWN = "TRACEDMP_CHECK_SPAWN"
ENV_DIAGNOSE = "TRACEDMP_DIAGNOSE"
ENV_PARTS_THRESHOLD = "TRACEDMP_PARTS_THRESHOLD"
PARTS_THRESHOLD = 64 * 1024  # pickles this large or larger say which parts weigh the most
ENV_MODE = "TRACEDMP_MODE"
ENV_SUMMARY_INTERVAL = "TRACEDMP_SUMMARY_INTERVAL"
MODES = ("full", "summary")
_OFF = {"off", "0", "false", "no", "none", ""}
_ON = {"1", "true", "yes", "on"}

class Config:
    """The settings tracing runs with (read-only; ``configure()`` changes them).

    ``trace`` is the trace file's path, ``False`` when tracing is off, or ``None`` before tracing
    starts when no path was chosen (a default file in the working directory is then used).
    """

    __slots__ = ("trace", "pickler", "unpickle", "check_spawn", "processors", "diagnose",
                 "parts_threshold", "mode", "summary_interval")

    trace: Union[str, bool, None]
    pickler: str
    unpickle: bool
    check_spawn: bool
    diagnose: bool
    processors: Tuple[Processor, ...]
    parts_threshold: int  # 0: off
    mode: str
    summary_interval: float

    def __init__(self, trace: Union[str, bool, None] = None, pickler: str = "pickle",
                 unpickle: bool = False, check_spawn: bool = False,
                 processors: Tuple[Processor, ...] = (), diagnose: bool = True,
                 parts_threshold: int = PARTS_THRESHOLD, mode: str = "full",
                 summary_interval: float = 1.0) -> None:
        for name, value in zip(self.__slots__, (trace, pickler, unpickle, check_spawn,
                                                processors, diagnose, parts_threshold, mode,
                                                summary_interval)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is read-only; use tracedmp.configure({name}=...)")

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return Config(**values)

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Config({fields})"

    @property
    def enabled(self) -> bool:
        return self.trace is not False


_explicit: dict = {}  # what configure() set, checked


def resolve() -> Config:
    """Explicit settings over environment variables over defaults."""
    env = os.environ
    cfg = Config()
    if ENV_TRACE in env:
        cfg = cfg.replace(trace=check_trace(env[ENV_TRACE], ENV_TRACE))
    if ENV_PICKLER in env:
        cfg = cfg.replace(pickler=check_pickler(env[ENV_PICKLER], ENV_PICKLER))
    if ENV_UNPICKLE in env:
        cfg = cfg.replace(unpickle=_env_bool(env[ENV_UNPICKLE], ENV_UNPICKLE))
    if ENV_CHECK_SPAWN in env:
        cfg = cfg.replace(check_spawn=_env_bool(env[ENV_CHECK_SPAWN], ENV_CHECK_SPAWN))
    if ENV_DIAGNOSE in env:
        cfg = cfg.replace(diagnose=_env_bool(env[ENV_DIAGNOSE], ENV_DIAGNOSE))
    if ENV_PARTS_THRESHOLD in env:
        cfg = cfg.replace(parts_threshold=check_threshold(env[ENV_PARTS_THRESHOLD],
                                                           ENV_PARTS_THRESHOLD))
    if ENV_MODE in env:
        cfg = cfg.replace(mode=check_mode(env[ENV_MODE], ENV_MODE))
    if ENV_SUMMARY_INTERVAL in env:
        cfg = cfg.replace(summary_interval=check_interval(env[ENV_SUMMARY_INTERVAL],
                                                          ENV_SUMMARY_INTERVAL))
    return cfg.replace(**_explicit)


def default_trace_path() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(f"tracedmp-{stamp}-{os.getpid()}.jsonl")


def check_trace(value: Any, name: str) -> Union[str, Literal[False], None]:
    if value is None or value is False:
        return value
    if value is True:
        return None  # "on": the environment variable or the default path
    if isinstance(value, str) and value.strip().lower() in _OFF:
        return False
    try:
        path = os.fspath(value)
    except TypeError:
        raise ConfigError(
            f"{name}={value!r} is not a path; give a file path, or False/'off' to turn tracing off"
        ) from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.abspath(path)


def check_pickler(value: Any, name: str) -> str:
    if isinstance(value, str) and value.strip().lower() in PICKLERS:
        return value.strip().lower()
    raise ConfigError(
        f"{name}={value!r} is not a pickler tracedmp knows; use 'pickle' or 'cloudpickle'")


def check_mode(value: Any, name: str) -> str:
    if isinstance(value, str) and value.strip().lower() in MODES:
        return value.strip().lower()
    raise ConfigError(f"{name}={value!r} is not a tracing mode; use 'full' (a record per "
                      "pickle) or 'summary' (aggregates per kind of pickle)")


def check_interval(value: Any, name: str) -> float:
    seconds = float("nan")
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except ValueError:
            pass
    if not 0.001 <= seconds <= 86400:  # false for nan too
        raise ConfigError(f"{name}={value!r} is not a number of seconds from 0.001 to 86400; "
                          "e.g. 1 (the default) or 10")
    return seconds


def check_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{name}={value!r} must be True or False")


def check_threshold(value: Any, name: str) -> int:
    """A size in bytes (``65536``, ``"64k"``, ``"1m"``), or off (``False``, ``0``, ``"off"``)."""
    if value is False:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _OFF:
            return 0
        scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
        digits = text[:-1] if scale > 1 else text
        if digits.isdigit():
            return int(digits) * scale
    raise ConfigError(
        f"{name}={value!r} is not a size in bytes; give a number of bytes (65536, '64k', '1m'), "
        "or 0/'off' to name no parts")


def check_option(name: str, value: Any) -> Any:
    """``value`` checked as a value of the ``configure()`` option ``name`` (``capture()``'s
    options too): the value tracing uses, or a :class:`ConfigError` naming the option."""
    if name == "processors":
        return check_processors(value)
    if name == "parts_threshold" and value is None:
        return None  # back to the environment variable or the default
    return _CHECKS[name](value, name)


def _env_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ConfigError(f"{name}={value!r} is not a yes/no value; use 1 or 0")


def check_processors(value: Any) -> Tuple[Processor, ...]:
    if value is None:
        return ()
    procs = tuple(value)
    for p in procs:
        if not callable(p):
            raise ConfigError(
                f"processors: {p!r} is not callable; a processor is a structlog processor, "
                "a callable (logger, method_name, event_dict) -> event_dict"
            )
    return procs


# How each of configure()'s options (Config's fields) is checked; processors: check_processors.
_CHECKS = {"trace": check_trace, "pickler": check_pickler, "unpickle": check_bool,
           "check_spawn": check_bool, "diagnose": check_bool,
           "parts_threshold": check_threshold, "mode": check_mode,
           "summary_interval": check_interval}
