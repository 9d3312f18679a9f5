"""Dask processes tracedmp did not start: their records reach the client's trace.

A ``dask scheduler`` or ``dask worker`` started on its own (on another machine, say) is never
reached by tracedmp's start-up hook.  When a traced program's ``distributed.Client`` connects,
it registers, through Dask's own plugin mechanism, a scheduler plugin and a worker plugin that
start tracing in each such process with a ``forward.ForwardingSink``, and forward what it
records over Dask's event log; the client writes the lines into its trace::

    worker / scheduler: record ──> ForwardingSink (memory) ──every interval, or when
        max lines/bytes wait──> server.log_event("tracedmp", batch)  (the scheduler's comms)
    client: subscribe_topic("tracedmp") ──> Receiver: each line checked to be one JSON record,
        given "host", "dask_role", "dask_address" ──> the client's trace file

A process that already traces (a ``LocalCluster``'s workers, spawned by a traced nanny; the
client's own in-process scheduler) is left as it is: it writes the trace file itself.  A process
where tracedmp cannot be imported or cannot start says so in a ``remote_untraced`` record; one
that goes away with records not yet sent, in a ``remote_lost`` record.

Closing the client (or ``tracedmp.uninstall()``) unregisters the plugins: each process sends
what it still holds and stops tracing, and the client waits (a bounded time) for the last batch
of each.  If the client process dies instead, the scheduler plugin sees its client leave and
unregisters both plugins itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

from distributed.diagnostics.plugin import SchedulerPlugin

from .._runtime import tracer as _tracer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Set, Tuple

__all__ = ["NAME", "TOPIC", "Receiver", "SchedulerForwarder", "install", "uninstall"]

NAME = "tracedmp"  # the plugins' name on the scheduler and workers
TOPIC = "tracedmp"  # the event-log topic batches travel on
INTERVAL = 0.5  # seconds between a process's batches: what a SIGKILL can cost
MAX_BATCH = 1024 * 1024  # bytes of lines in one event (a busy process sends several)
MAX_LINE = 256 * 1024  # a forwarded line longer than this is refused (no real record is)
CLOSE_WAIT = 3.0  # seconds a closing client waits for each process's last batch
_ROLES = ("worker", "scheduler")
_forwarding_here = False  # this process forwards its records to a client elsewhere
_OFF = ("0", "off", "false", "no", "none")


# -- in the worker or scheduler ----------------------------------------------------------------

def _traced_here() -> bool:
    """Whether this process traces already (or will: a spawned child waiting for its first
    pickle), so that it writes the trace file itself."""
    tracer = sys.modules.get("tracedmp._runtime.tracer")
    if tracer is not None and getattr(tracer, "current", None) is not None:
        return True
    child = sys.modules.get("tracedmp._runtime.child")
    return child is not None and getattr(child, "_pending", None) is not None


class _Forwarding:
    """Tracing in one server process, its sink and the periodic flush on the server's loop."""

    def __init__(self, server: Any, role: str, settings: Dict[str, Any]) -> None:
        self.server = server
        self.role = role
        self.settings = settings
        self.sink: Any = None
        self.tracer: Any = None
        self.callback: Any = None
        self.batches = 0
        self.identity = {"v": 1, "role": role, "address": str(server.address),
                         "host": socket.gethostname(), "pid": os.getpid()}

    def start(self) -> None:
        if _traced_here():
            self._send("traced")
            return
        if os.environ.get("TRACEDMP_TRACE", "on").strip().lower() in _OFF:
            self._send("untraced", error="TRACEDMP_TRACE turns tracing off in this process")
            return
        try:
            self._activate()
        except Exception as exc:  # the server must go on; the trace says why it is blind here
            self._send("untraced", error=f"{type(exc).__name__}: {exc}"[:500])
            return
        self._send("start", interval=INTERVAL)

    def _activate(self) -> None:
        global _forwarding_here
        import tempfile

        from tornado.ioloop import PeriodicCallback

        from .._runtime import control
        from .._runtime.config import Config
        from .._runtime.forward import ForwardingSink

        spool = os.path.join(tempfile.gettempdir(),
                             f"tracedmp-forward-{os.getpid()}-{os.urandom(4).hex()}.jsonl")
        self.sink = ForwardingSink(spool, self._wake)
        _forwarding_here = True  # a client made here (get_client() in a task) registers nothing
        settings = dict(self.settings)
        mode = "summary" if settings.pop("summary", False) else "full"
        config = Config(trace=spool, mode=mode, **settings)
        self.tracer = control.activate(config, main=False, trace_start=False, sink=self.sink)
        self.callback = PeriodicCallback(self.flush, INTERVAL * 1000)
        self.callback.start()

    def _wake(self) -> None:  # any thread: many records wait
        self.server.loop.add_callback(self.flush)

    def flush(self) -> None:
        """On the server's loop: send what waits, in batches of about MAX_BATCH bytes."""
        sink = self.sink
        if sink is None:
            return
        while True:
            data = sink.take(MAX_BATCH)
            if not data:
                return
            self._send("batch", n=self.batches, lines=data)
            self.batches += 1

    def stop(self) -> None:
        """Send the last batch, stop tracing here, say so."""
        if self.callback is not None:
            self.callback.stop()
            self.callback = None
        if self.sink is None:
            return
        from .._runtime import control

        if _tracer.current is self.tracer:
            control.deactivate()
        self.flush()
        self._send("end", batches=self.batches, dropped=self.sink.dropped)
        self.sink.close(remove=True)
        self.sink = None

    def _send(self, kind: str, **fields: Any) -> None:
        msg = dict(self.identity, kind=kind, **fields)
        try:
            self.server.log_event(TOPIC, msg)
        except Exception:  # a server closing: its comms are gone, and so is the batch
            pass


class SchedulerForwarder(SchedulerPlugin):  # type: ignore[misc]  # (Any to mypy)
    """Traces the scheduler if tracedmp did not start it; tells the client of workers joining
    and leaving; keeps the scheduler's event log of ``TOPIC`` empty (batches are passed on as
    they come, never kept); cleans up if the client goes away without closing."""

    name = NAME

    def __init__(self, settings: Dict[str, Any], client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._forwarding: Optional[_Forwarding] = None
        self.scheduler: Any = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"settings": self.settings, "client_id": self.client_id, "_forwarding": None,
                "scheduler": None}

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._forwarding = _Forwarding(scheduler, "scheduler", self.settings)
        self._forwarding.start()

    def stop(self) -> None:
        if self._forwarding is not None:
            self._forwarding.stop()
            self._forwarding = None

    async def close(self) -> None:
        self.stop()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self._note("joined", worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self._note("gone", worker)

    def _note(self, kind: str, worker: str) -> None:
        if self.scheduler is not None:
            self.scheduler.log_event(TOPIC, {"v": 1, "kind": kind, "role": "worker",
                                             "address": str(worker)})

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != TOPIC or self.scheduler is None:
            return
        # Published to the subscribed clients already: not kept (a busy cluster's batches
        # would fill the scheduler's memory up to its log length, 1,000 events).
        broker = getattr(self.scheduler, "_broker", None)
        if broker is not None and hasattr(broker, "truncate"):
            broker.truncate(TOPIC)
        if isinstance(msg, dict) and msg.get("kind") == "stop" and msg.get("client") == \
                self.client_id:
            self.stop()

    def remove_client(self, scheduler: Any, client: str) -> None:
        if client != self.client_id:
            return
        self.stop()  # the client went away without closing: nobody reads the batches now
        asyncio.ensure_future(_unregister_everything(scheduler))


async def _unregister_everything(scheduler: Any) -> None:
    try:
        if NAME in getattr(scheduler, "worker_plugins", {}):
            await scheduler.unregister_worker_plugin(None, NAME)
        if NAME in scheduler.plugins:
            scheduler.remove_plugin(NAME)
    except Exception:
        pass


# -- in the client -----------------------------------------------------------------------------

class _Origin:
    __slots__ = ("role", "address", "host", "pid", "suffix", "host_only", "last_seq", "ended",
                 "records", "refused")

    def __init__(self, role: str, address: str, host: str, pid: int) -> None:
        self.role, self.address, self.host, self.pid = role, address, host, pid
        # What the client adds to each of its lines: where it came from (a record of Dask's
        # own names its sender already: then only the host).
        self.host_only = b"".join((b',"host":', _json(host), b"}\n"))
        self.suffix = b"".join((b',"host":', _json(host), b',"dask_role":', _json(role),
                                b',"dask_address":', _json(address), b"}\n"))
        self.last_seq: Optional[int] = None
        self.ended = False
        self.records = 0
        self.refused = 0


def _json(text: str) -> bytes:
    return json.dumps(text).encode("ascii")


class Receiver:
    """The client's end: each event of ``TOPIC`` checked and written into the trace."""

    def __init__(self, tracer: Any, client: Any) -> None:
        self.tracer = tracer
        self.client = client
        self.origins: Dict[Tuple[str, int], _Origin] = {}  # (host, pid) of a sending process
        self.workers: Set[str] = set()  # addresses known to have (or have had) a worker
        self.heard: Set[str] = set()  # worker addresses that answered (start, traced, untraced)
        self.closed = False
        from .._version import FORMAT_VERSION

        self.version = FORMAT_VERSION

    def __call__(self, event: Any) -> None:
        if self.closed:
            return
        try:
            msg = event[1]
            if isinstance(msg, dict):
                self._handle(msg)
        except Exception as exc:  # a hostile or broken message costs itself, never the client
            _tracer.internal_error(exc)

    def _handle(self, msg: Dict[str, Any]) -> None:
        kind = msg.get("kind")
        role: Any = msg.get("role")  # checked below: anything may arrive
        address: Any = msg.get("address")
        if role not in _ROLES or not _short(address):
            return
        if kind in ("joined", "gone"):
            if kind == "joined":
                self.workers.add(address)
            else:
                self._gone(address)
            return
        host: Any = msg.get("host")
        pid = msg.get("pid")
        if not _short(host) or type(pid) is not int:
            return
        if role == "worker":
            self.heard.add(address)
            self.workers.add(address)
        if kind == "untraced":
            error = msg.get("error")
            self._note("remote_untraced", role=role, address=address, remote_host=host,
                       remote_pid=pid, error=error[:500] if isinstance(error, str) else None)
            return
        if kind not in ("start", "batch", "end"):
            return
        origin = self.origins.get((host, pid))
        if origin is None:
            origin = self.origins[(host, pid)] = _Origin(role, address, host, pid)
            self._note("remote_start", role=role, address=address, remote_host=host,
                       remote_pid=pid)
        if kind == "batch":
            lines = msg.get("lines")
            if isinstance(lines, (bytes, bytearray, memoryview)) and len(lines) <= 4 * MAX_BATCH:
                self._write(origin, bytes(lines))
        elif kind == "end":
            origin.ended = True

    def _write(self, origin: _Origin, data: bytes) -> None:
        tracer = self.tracer  # (uninstall() took it out of tracer.current; its file is open)
        if tracer is None:
            return
        for line in data.split(b"\n"):
            if not line:
                continue
            rec = _record(line, self.version)
            if rec is None:
                origin.refused += 1
                continue
            if rec["pid"] == origin.pid and (origin.last_seq is None
                                             or rec["seq"] > origin.last_seq):
                origin.last_seq = rec["seq"]
            origin.records += 1
            if tracer._processors or "host" in rec:
                rec["host"] = origin.host
                rec.setdefault("dask_role", origin.role)
                rec.setdefault("dask_address", origin.address)
                tracer.emit(rec)
            elif "dask_role" in rec or "dask_address" in rec:
                tracer.sink.write(line.rstrip()[:-1] + origin.host_only)
            else:
                tracer.sink.write(line.rstrip()[:-1] + origin.suffix)

    def _gone(self, address: str) -> None:
        for origin in self.origins.values():
            if origin.role == "worker" and origin.address == address and not origin.ended:
                self._lost(origin, "went away (killed, or its connection lost) before it sent "
                                   "its last batch")

    def _lost(self, origin: _Origin, reason: str) -> None:
        origin.ended = True
        self._note("remote_lost", role=origin.role, address=origin.address,
                   remote_host=origin.host, remote_pid=origin.pid, last_seq=origin.last_seq,
                   interval=INTERVAL, reason=reason)

    def finish(self) -> None:
        """The client is closing: say what did not come."""
        if self.closed:
            return
        for origin in self.origins.values():
            if not origin.ended:
                self._lost(origin, "did not send its last batch before the client closed")
            if origin.refused:
                self._note("remote_refused", role=origin.role, address=origin.address,
                           remote_host=origin.host, remote_pid=origin.pid, lines=origin.refused)
        for address in sorted(self.workers - self.heard):
            self._note("remote_untraced", role="worker", address=address, remote_host=None,
                       remote_pid=None, error="the worker never answered tracedmp's plugin "
                       "(is tracedmp installed there?)")
        self.closed = True
        self.tracer = None  # (the handler stays subscribed until the client closes: ignoring)

    def pending(self) -> int:
        return sum(1 for origin in self.origins.values() if not origin.ended)

    def _note(self, event: str, **fields: Any) -> None:
        if self.tracer is None:
            return
        rec = _tracer.base_record(event, None)
        rec.update(fields)
        self.tracer.emit(rec)


def _short(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 512


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _record(line: bytes, version: int) -> Optional[Dict[str, Any]]:
    """``line`` as a record if it is one JSON object with the fields every record has (else
    None): what the client writes is a line of its trace, whatever a worker sent."""
    if len(line) > MAX_LINE or b"\r" in line:
        return None
    try:
        rec = json.loads(line, parse_constant=_reject_constant)
    except Exception:  # not JSON, not UTF-8, nested too deep
        return None
    if (type(rec) is not dict or rec.get("v") != version or type(rec.get("event")) is not str
            or type(rec.get("pid")) is not int or type(rec.get("seq")) is not int):
        return None
    return rec


# -- the client hook ---------------------------------------------------------------------------

_patched: list = []  # (owner, name, original)
_receivers: Dict[int, Tuple[Any, Receiver]] = {}  # id(client) -> (client, receiver), live ones


def _settings(config: Any) -> Dict[str, Any]:
    return {"pickler": config.pickler, "unpickle": config.unpickle,
            "check_spawn": config.check_spawn, "diagnose": config.diagnose,
            "parts_threshold": config.parts_threshold, "summary": config.mode == "summary",
            "summary_interval": float(config.summary_interval)}


async def _attach(client: Any) -> None:
    from distributed.protocol.pickle import dumps

    tracer = _tracer.current
    # Only the program's main process: a client made in a worker (get_client() in a task) or in
    # a child of the program must not take the plugins over from the program's own client.
    if tracer is None or not tracer.main or _forwarding_here or id(client) in _receivers:
        return
    receiver = Receiver(tracer, client)
    _receivers[id(client)] = (client, receiver)
    client.subscribe_topic(TOPIC, receiver)
    settings = _settings(tracer.config)
    scheduler = client.scheduler
    try:
        await scheduler.register_scheduler_plugin(
            plugin=dumps(SchedulerForwarder(settings, client.id)), name=NAME, idempotent=False)
    except Exception as exc:
        receiver._note("remote_untraced", role="scheduler", address=str(scheduler.address),
                       remote_host=None, remote_pid=None,
                       error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        responses = await scheduler.register_worker_plugin(
            plugin=_by_value(settings), name=NAME, idempotent=False)
    except Exception as exc:  # some worker could not set it up (the others did)
        error = f"{type(exc).__name__}: {exc}"[:500]
        await asyncio.sleep(INTERVAL)  # the others' "start" (it names them) comes meanwhile
        try:
            workers = list((await scheduler.identity()).get("workers", ()))
        except Exception:
            workers = []
        unheard = sorted(set(map(str, workers)) - receiver.heard)
        for address in unheard:
            receiver.workers.add(address)
            receiver.heard.add(address)
            receiver._note("remote_untraced", role="worker", address=address,
                           remote_host=None, remote_pid=None, error=error)
        if not unheard:
            receiver._note("remote_untraced", role="worker", address=None,
                           remote_host=None, remote_pid=None, error=error)
        return
    for address, response in (responses or {}).items():
        receiver.workers.add(str(address))
        if isinstance(response, dict) and response.get("status") == "error":
            receiver.heard.add(str(address))
            receiver._note("remote_untraced", role="worker", address=str(address),
                           remote_host=None, remote_pid=None,
                           error=str(response.get("exception"))[:500])


def _by_value(settings: Dict[str, Any]) -> bytes:
    """The worker plugin, pickled by value (``dask_bootstrap`` says why)."""
    import cloudpickle

    from . import dask_bootstrap

    cloudpickle.register_pickle_by_value(dask_bootstrap)
    try:
        return cloudpickle.dumps(dask_bootstrap.WorkerBootstrap(settings))
    finally:
        cloudpickle.unregister_pickle_by_value(dask_bootstrap)


async def _detach(client: Any) -> None:
    """Unregister the plugins, wait (bounded) for each process's last batch, note what did not
    come."""
    entry = _receivers.pop(id(client), None)
    if entry is None:
        return
    receiver = entry[1]
    scheduler = client.scheduler
    try:
        if scheduler is not None and client.status in ("running", "closing"):
            await asyncio.wait_for(_unregister(client, scheduler), CLOSE_WAIT)
            deadline = asyncio.get_running_loop().time() + CLOSE_WAIT
            while receiver.pending() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
    except Exception:  # a scheduler gone already: what it had not sent is lost, and said so
        pass
    receiver.finish()
    try:  # (the closed receiver stays the topic's handler: Dask unsubscribes a topic with none)
        client.unsubscribe_topic(TOPIC)
    except Exception:
        pass


async def _unregister(client: Any, scheduler: Any) -> None:
    try:
        await scheduler.unregister_worker_plugin(name=NAME)
    except Exception:
        pass
    try:  # the scheduler plugin stops its process's forwarding when it sees this event
        await scheduler.log_event(topic=TOPIC, msg={"v": 1, "kind": "stop",
                                                    "client": client.id})
        await scheduler.unregister_scheduler_plugin(name=NAME)
    except Exception:
        pass


def install(tracer: Any) -> None:
    if _patched:
        return
    from distributed import client as _client

    klass = _client.Client
    start, close = klass.__dict__["_start"], klass.__dict__["_close"]

    async def _start(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await start(self, *args, **kwargs)
        try:
            await _attach(self)
        except Exception as exc:  # the program's client must start whatever happens here
            _tracer.internal_error(exc)
        return result

    async def _close(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            await _detach(self)
        except Exception as exc:
            _tracer.internal_error(exc)
        return await close(self, *args, **kwargs)

    for name, original, replacement in (("_start", start, _start), ("_close", close, _close)):
        replacement.__wrapped__ = original  # type: ignore[attr-defined]
        replacement.__name__ = original.__name__
        replacement.__qualname__ = original.__qualname__
        setattr(klass, name, replacement)
        _patched.append((klass, name, original, replacement))


def uninstall() -> None:
    """Remove the client hook; each live client's plugins are unregistered (their processes
    stop tracing) and its last batches written, when called outside the client's loop."""
    while _patched:
        klass, name, original, replacement = _patched.pop()
        if klass.__dict__.get(name) is replacement:
            setattr(klass, name, original)
    for client, _receiver in list(_receivers.values()):
        try:
            if client.asynchronous or _on_loop(client):  # cannot wait here: unregister only
                _receivers.pop(id(client), None)
                _receiver.finish()
                if client.scheduler is not None:
                    client.loop.add_callback(_unregister, client, client.scheduler)
                continue
            client.sync(_detach, client, callback_timeout=2 * CLOSE_WAIT + 1)
        except Exception as exc:
            _receivers.pop(id(client), None)
            _tracer.internal_error(exc)


def _on_loop(client: Any) -> bool:
    try:
        return asyncio.get_running_loop() is client.loop.asyncio_loop
    except RuntimeError:
        return False
