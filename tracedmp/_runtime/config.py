"""One way to configure tracedmp: ``configure()``, readable back with ``get_config()``.

Explicit ``configure()`` arguments win over environment variables; environment variables are read
when tracing starts (never at import); anything left unset takes its default.
"""

from __future__ import annotations

import os
import time

from ._errors import ConfigError

TYPE_CHECKING = False  # typing and dataclasses cost milliseconds in every spawned child
if TYPE_CHECKING:
    from typing import Any, Callable, Literal, Optional, Sequence, Tuple, Union

    Processor = Callable[[Any, str, dict], Any]

__all__ = ["Config", "configure", "get_config", "reset_config"]

PICKLERS = ("pickle", "cloudpickle")
ENV_TRACE = "TRACEDMP_TRACE"
ENV_PICKLER = "TRACEDMP_PICKLER"
ENV_UNPICKLE = "TRACEDMP_UNPICKLE"
ENV_CHECK_SPAWN = "TRACEDMP_CHECK_SPAWN"
_OFF = {"off", "0", "false", "no", "none", ""}
_ON = {"1", "true", "yes", "on"}

class Config:
    """The settings tracing runs with (read-only; ``configure()`` changes them).

    ``trace`` is the trace file's path, ``False`` when tracing is off, or ``None`` before tracing
    starts when no path was chosen (a default file in the working directory is then used).
    """

    __slots__ = ("trace", "pickler", "unpickle", "check_spawn", "processors")

    trace: Union[str, bool, None]
    pickler: str
    unpickle: bool
    check_spawn: bool
    processors: Tuple[Processor, ...]

    def __init__(self, trace: Union[str, bool, None] = None, pickler: str = "pickle",
                 unpickle: bool = False, check_spawn: bool = False,
                 processors: Tuple[Processor, ...] = ()) -> None:
        for name, value in zip(self.__slots__, (trace, pickler, unpickle, check_spawn,
                                                processors)):
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


_UNSET: Any = object()  # the default of every configure() argument
_explicit: dict = {}


def configure(
    *,
    trace: Union[str, "os.PathLike[str]", bool, None] = _UNSET,
    pickler: str = _UNSET,
    unpickle: bool = _UNSET,
    check_spawn: bool = _UNSET,
    processors: Optional[Sequence[Processor]] = _UNSET,
) -> None:
    """Set tracing options; arguments left out keep their current setting.

    - ``trace``: path of the JSON Lines trace file every process appends to; ``False`` turns
      tracing off (``None`` goes back to the environment variable or the default).
    - ``pickler``: ``"pickle"`` (the stdlib's, as multiprocessing uses) or ``"cloudpickle"``.
    - ``unpickle``: also record every unpickling (``event: "unpickle"``).
    - ``check_spawn``: for processes started with fork, record whether their target and args
      would pickle, as spawn and forkserver need.
    - ``processors``: structlog processors run on every record before it is written.

    Giving a path as ``trace`` starts tracing at once; other changes apply to tracing that is
    already running and are used when it starts.
    """
    new = dict(_explicit)
    if trace is not _UNSET:
        new["trace"] = _check_trace(trace, "trace")
    if pickler is not _UNSET:
        new["pickler"] = _check_pickler(pickler, "pickler")
    if unpickle is not _UNSET:
        new["unpickle"] = _check_bool(unpickle, "unpickle")
    if check_spawn is not _UNSET:
        new["check_spawn"] = _check_bool(check_spawn, "check_spawn")
    if processors is not _UNSET:
        new["processors"] = _check_processors(processors)
    _explicit.clear()
    _explicit.update({k: v for k, v in new.items() if v is not None})
    from . import _tracer

    _tracer.reconfigure(start=isinstance(new.get("trace"), str))


def get_config() -> Config:
    """The settings in force: those of running tracing, else what starting it now would use."""
    from . import _tracer

    active = _tracer.current
    return active.config if active is not None else resolve()


def reset_config() -> None:
    """Forget every ``configure()`` setting (environment variables and defaults apply again)."""
    _explicit.clear()
    from . import _tracer

    _tracer.reconfigure(start=False)


def resolve() -> Config:
    """Explicit settings over environment variables over defaults."""
    env = os.environ
    cfg = Config()
    if ENV_TRACE in env:
        cfg = cfg.replace(trace=_check_trace(env[ENV_TRACE], ENV_TRACE))
    if ENV_PICKLER in env:
        cfg = cfg.replace(pickler=_check_pickler(env[ENV_PICKLER], ENV_PICKLER))
    if ENV_UNPICKLE in env:
        cfg = cfg.replace(unpickle=_env_bool(env[ENV_UNPICKLE], ENV_UNPICKLE))
    if ENV_CHECK_SPAWN in env:
        cfg = cfg.replace(check_spawn=_env_bool(env[ENV_CHECK_SPAWN], ENV_CHECK_SPAWN))
    return cfg.replace(**_explicit)


def default_trace_path() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(f"tracedmp-{stamp}-{os.getpid()}.jsonl")


def _check_trace(value: Any, name: str) -> Union[str, Literal[False], None]:
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


def _check_pickler(value: Any, name: str) -> str:
    if isinstance(value, str) and value.strip().lower() in PICKLERS:
        return value.strip().lower()
    raise ConfigError(
        f"{name}={value!r} is not a pickler tracedmp knows; use 'pickle' or 'cloudpickle'")


def _check_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{name}={value!r} must be True or False")


def _env_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ConfigError(f"{name}={value!r} is not a yes/no value; use 1 or 0")


def _check_processors(value: Any) -> Tuple[Processor, ...]:
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
