"""Workloads timed by overhead.py, each in a fresh interpreter: ``python workloads.py MODE NAME``.

MODE is ``plain`` (import multiprocessing), ``traced`` (import tracedmp as multiprocessing, with
TRACEDMP_TRACE set by the caller), ``cloudpickle`` (traced, TRACEDMP_PICKLER=cloudpickle),
``off`` (import tracedmp, TRACEDMP_TRACE=off), ``noparts`` (traced, TRACEDMP_PARTS_THRESHOLD=off),
or a peer where installed: ``multiprocess``
(multiprocessing with dill) and ``loky`` (its reusable executor, for the Pool workloads only).
The script prints the seconds the workload itself took, as JSON, leaving interpreter start-up
out, and the CPU time of the process tree.
"""

import json
import os
import sys
import time


def noop(x):
    return x


def size_of(b):
    return len(b)


def child():
    pass


def tiny_tasks(mp, n=50_000):
    with mp.Pool(2) as pool:
        pool.map(noop, range(200))  # warm the workers up
        t = time.perf_counter()
        pool.map(noop, range(n), chunksize=1)
        return time.perf_counter() - t


def tiny_tasks_default_chunks(mp, n=2_000_000):  # long enough to time (~0.3 s)
    with mp.Pool(2) as pool:
        pool.map(noop, range(200))
        t = time.perf_counter()
        pool.map(noop, range(n))
        return time.perf_counter() - t


def big_args(mp, n=2_000, size=100_000):
    # Distinct objects: pickle's memo would otherwise send a repeated one once per chunk.
    args = [os.urandom(size) for _ in range(n)]
    with mp.Pool(2) as pool:
        pool.map(size_of, args[:50])
        t = time.perf_counter()
        pool.map(size_of, args)
        return time.perf_counter() - t


def huge_args(mp, n=40, size=10_000_000):
    payload = os.urandom(size)
    with mp.Pool(2) as pool:
        pool.map(size_of, [b"x"] * 4)
        t = time.perf_counter()
        pool.map(size_of, [payload] * n, chunksize=1)
        return time.perf_counter() - t


def _start_join(mp, method, n):
    ctx = mp.get_context(method)
    ctx.Process(target=child).start()  # warm up (forkserver starts its server here)
    t = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=child)
        p.start()
        p.join()
    return time.perf_counter() - t


def start_spawn(mp):
    return _start_join(mp, "spawn", 10)


def start_fork(mp):
    return _start_join(mp, "fork", 100)


def start_forkserver(mp):
    return _start_join(mp, "forkserver", 40)


def _echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def pipe_roundtrip(mp, n=20_000):
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_echo, args=(b,))
    p.start()
    msg = {"id": 1, "values": list(range(10))}
    t = time.perf_counter()
    for _ in range(n):
        a.send(msg)
        a.recv()
    elapsed = time.perf_counter() - t
    a.send(None)
    p.join()
    return elapsed


def _queue_echo(q_in, q_out):
    for msg in iter(q_in.get, None):
        q_out.put(msg)


def queue_roundtrip(mp, n=10_000):
    ctx = mp.get_context("fork")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_echo, args=(q_in, q_out))
    p.start()
    msg = {"id": 1, "values": list(range(10))}
    t = time.perf_counter()
    for _ in range(n):
        q_in.put(msg)
        q_out.get()
    elapsed = time.perf_counter() - t
    q_in.put(None)
    p.join()
    return elapsed


def _joblib_run(mp, calls, **kwargs):
    """Time one Parallel call on loky; tracing started as a joblib program would start it (the
    workload uses no multiprocessing API that would start it on first use).  The executor is
    shut down inside the timed section, so that its workers are reaped and their CPU counted."""
    from joblib import Parallel
    from joblib.externals.loky import get_reusable_executor

    if hasattr(mp, "install"):  # traced or off: install() reads TRACEDMP_TRACE
        mp.install()
    t = time.perf_counter()
    out = Parallel(n_jobs=2, **kwargs)(calls)
    get_reusable_executor().shutdown(wait=True)
    return time.perf_counter() - t, out


def joblib_tiny_tasks(mp, n=20_000):
    from joblib import delayed

    elapsed, out = _joblib_run(mp, (delayed(noop)(i) for i in range(n)))
    assert len(out) == n
    return elapsed


def array_sum(a, i):
    return float(a[i::4].sum())


def joblib_memmap(mp, n=80, size=5_000_000):
    import numpy as np
    from joblib import delayed

    # 40 MB: memmapped (above max_nbytes), a reference in each batch; each task reads a
    # quarter of it, as a worker on a shared array does
    data = np.ones(size)
    elapsed, out = _joblib_run(mp, (delayed(array_sum)(data, i % 4) for i in range(n)),
                               batch_size=1)
    assert out == [size / 4] * n
    return elapsed


class LokyAsPool:
    """Just enough of multiprocessing's API to run the Pool workloads on loky's executor."""

    class _Pool:
        def __init__(self, processes):
            import loky

            self.processes = processes
            self.executor = loky.get_reusable_executor(max_workers=processes)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.executor.shutdown(wait=True)

        def map(self, fn, items, chunksize=None):
            items = list(items)
            if chunksize is None:  # what Pool.map would choose
                chunksize, extra = divmod(len(items), self.processes * 4)
                chunksize += bool(extra)
            return list(self.executor.map(fn, items, chunksize=max(1, chunksize)))

    def Pool(self, processes):  # noqa: N802 - multiprocessing's name
        return self._Pool(processes)


# Which workloads each peer can run (all, if not listed).
PEER_WORKLOADS = {"loky": {"tiny_tasks", "tiny_tasks_default_chunks", "big_args", "huge_args"},
                  "multiprocess": {"tiny_tasks", "tiny_tasks_default_chunks", "big_args",
                                   "huge_args", "start_spawn", "start_fork", "start_forkserver",
                                   "pipe_roundtrip", "queue_roundtrip"}}

WORKLOADS = {f.__name__: f for f in (
    tiny_tasks, tiny_tasks_default_chunks, big_args, huge_args, start_spawn, start_fork,
    start_forkserver, pipe_roundtrip, queue_roundtrip, joblib_tiny_tasks, joblib_memmap,
)}

if __name__ == "__main__":
    # Run the workloads from the importable module, not from __main__: cloudpickle would send
    # __main__'s functions by value, and the comparison is about module-level functions.
    import workloads

    import resource

    def cpu() -> float:
        # This process and every child it has reaped: a Pool's workers once it is closed.
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    mode, name = sys.argv[1], sys.argv[2]
    if mode == "plain":
        import multiprocessing as mp
    elif mode == "multiprocess":
        import multiprocess as mp
    elif mode == "loky":
        mp = workloads.LokyAsPool()
    else:
        import tracedmp as mp
    before = cpu()
    seconds = workloads.WORKLOADS[name](mp)
    print(json.dumps({"seconds": seconds, "cpu": cpu() - before}))
