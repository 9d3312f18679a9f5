"""What runs inside the traced program: on every pickle, in every process.

Modules, bottom first; each imports only those before it (a test pins this)::

    config      the settings and where they come from
    sink        TraceFile: whole lines appended to the one trace file
    forward     ForwardingSink: lines kept for a process whose trace file is elsewhere (Dask)
    parts       a large pickle's largest parts, from its bytes (imported at the first one)
    channels    which channel carried a pickle, told from the calling frames
    render      records as JSON lines (templates' small writer, orjson)
    tracer      the running Tracer, process identity, the record pipeline
    summary     summary mode: aggregates per kind of pickle, written now and then
    records     what one pickle's record says; its cached templates
    diagnose    after a failure: the path to the bad object and a hint
    picklers    the tracing picklers (stdlib and cloudpickle): time, size, record
    spawncheck  --check-spawn: would a fork-started child also start under spawn?
    child       a spawned child's start, and the import watcher (imports nothing of ours but,
                inside the function that starts tracing, control: its one way up)
    hooks       the patches in multiprocessing, and how they come out again
    control     activate / deactivate, configure, install, uninstall

Nothing here imports ``tracedmp._read`` (traces are read afterwards) or an integration whose
library the program has not imported.  Kept empty: a spawned child imports this package.
"""
