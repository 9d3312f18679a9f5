"""The worker plugin tracedmp registers, sent *by value*: it must load on a worker that cannot
import tracedmp.

A worker unpickles the plugins registered on its scheduler as it starts, and one that fails to
unpickle stops it from starting ("failure-to-start").  So this module imports nothing of
tracedmp at module level, and ``dask_plugin`` pickles it with cloudpickle by value; on the
worker, ``setup`` imports tracedmp, and if it cannot, says so to the client (a
``remote_untraced`` record naming the worker) instead of tracing.
"""

from __future__ import annotations

import os
import socket

from distributed.diagnostics.plugin import WorkerPlugin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["WorkerBootstrap"]

TOPIC = "tracedmp"  # dask_plugin.TOPIC (this module is sent by value: no import of it)


class WorkerBootstrap(WorkerPlugin):  # type: ignore[misc]  # (Any to mypy)
    """Starts ``dask_plugin``'s forwarding in the worker, or says why it cannot."""

    name = "tracedmp"

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self._forwarding: Any = None

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_forwarding": None}

    def setup(self, worker):  # type: ignore[no-untyped-def]
        try:
            from tracedmp._integrations import dask_plugin

            forwarding = dask_plugin._Forwarding(worker, "worker", self.settings)
        except Exception as exc:  # tracedmp not installed here (or another version)
            try:
                worker.log_event(TOPIC, {
                    "v": 1, "kind": "untraced", "role": "worker", "address": str(worker.address),
                    "host": socket.gethostname(), "pid": os.getpid(),
                    "error": f"{type(exc).__name__}: {exc}"[:500]})
            except Exception:
                pass
            return
        self._forwarding = forwarding
        forwarding.start()

    def teardown(self, worker):  # type: ignore[no-untyped-def]
        forwarding, self._forwarding = self._forwarding, None
        if forwarding is not None:
            forwarding.stop()
