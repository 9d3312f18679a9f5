"""How tracing reaches children that start in a fresh interpreter (spawn and forkserver).

The settings ride in the process object's ``_config`` dict, which multiprocessing pickles with the
process and which every Process created in the child copies: unpickling them in the child starts
tracing there before the target runs, and hands it on to grandchildren.  Forked children need
none of this: they inherit the parent's hooks and open trace file.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict

__all__ = ["ChildSettings", "attach", "detach"]

KEY = "tracedmp"


class ChildSettings:
    """Picklable carrier of the settings a child traces with."""

    __slots__ = ("settings",)

    def __init__(self, settings: Dict[str, Any]) -> None:
        self.settings = settings

    def __reduce__(self) -> Any:
        return (restore, (self.settings,))


def restore(settings: Dict[str, Any]) -> ChildSettings:
    """Runs in the child while it unpickles its process object: start tracing there."""
    from . import _config, _tracer

    config = _config.Config(**settings)
    current = _tracer.current
    if current is None or current.config != config:
        # The parent's settings win over what re-importing the main module may have started
        # here (a module-level tracedmp.Queue() would trace to a file of the child's own).
        try:
            _tracer.deactivate()
            _tracer.activate(config, main=False)
        except Exception as exc:  # never keep a child from starting
            sys.stderr.write(f"tracedmp: tracing not started in this child: {exc}\n")
    return ChildSettings(settings)


def attach(process_obj: Any, config: Any) -> None:
    settings = {
        "trace": config.trace,
        "pickler": config.pickler,
        "unpickle": config.unpickle,
        "check_spawn": config.check_spawn,
    }
    process_obj._config[KEY] = ChildSettings(settings)


def detach(process_obj: Any) -> None:
    process_obj._config.pop(KEY, None)
