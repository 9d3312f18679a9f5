"""Tracing keeps nothing alive that the program let go of: its caches hold the program's
functions and classes weakly (docs/design.md, "What tracing keeps alive")."""

import pytest

RSS = """
import gc, os, sys
mode, what, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "traced":
    import tracedmp as multiprocessing
else:
    import multiprocessing

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def closure_over(buf):
    def target():
        return len(buf)
    return target

def starts(n, size):  # fork targets that are closures and lambdas, each over a new buffer
    ctx = multiprocessing.get_context("fork")
    for i in range(n):
        buf = b"x" * size
        p = ctx.Process(target=closure_over(buf) if i % 2 else (lambda: len(buf)))
        p.start()
        p.join()

def classes(n, size):  # classes made at run time with a big attribute, instances sent
    a, b = multiprocessing.get_context("fork").Pipe()
    for i in range(n):
        cls = type(f"Made{i}", (), {"blob": b"x" * size, "__reduce__": lambda self: (int, (7,))})
        a.send(cls())
        assert b.recv() == 7
        try:
            a.send([cls])  # not importable by name: a pickle_error, named by type
        except Exception:
            pass

if __name__ == "__main__":
    # What the program itself holds: tracedmp's own modules (~1.5 MB) are then a small part.
    ballast = b"b" * (48 << 20)
    (starts if what == "starts" else classes)(n, size)
    gc.collect()
    print(rss())
"""


@pytest.mark.parametrize("what,n,size", [("starts", 60, 4 << 20), ("classes", 1000, 256 << 10)])
def test_parent_rss_stays_within_ten_percent_of_plain(run_program, what, n, size):
    plain = run_program(RSS, "plain", what, str(n), str(size), env={"TRACEDMP_TRACE": "off"})
    traced = run_program(RSS, "traced", what, str(n), str(size))
    assert plain.returncode == traced.returncode == 0, (plain.stderr, traced.stderr)
    assert traced.records, traced.stderr
    plain_rss, traced_rss = int(plain.stdout), int(traced.stdout)
    # today's caches held every target and class: +240 MB and +256 MB
    assert traced_rss <= plain_rss * 1.10, (plain_rss, traced_rss)


DIES = """
import gc, json, sys, types, weakref
import tracedmp as multiprocessing

def closure_over(buf):
    def target():
        return len(buf)
    return target

def dies(make, use):
    obj = make()
    ref = weakref.ref(obj)
    use(obj)
    del obj
    gc.collect()
    return ref() is None

def start(target):
    p = ctx.Process(target=target)
    p.start()
    p.join()
    assert p.exitcode == 0

def send(obj):
    a.send(obj)
    b.recv()

def send_failing(obj):
    try:
        a.send(obj)
    except Exception:
        pass

def made_class():
    return type("Made", (), {"__reduce__": lambda self: (int, (7,))})

def module_function():
    # importable by name while it is sent, then the module drops it
    mod = types.ModuleType("madeup")
    exec("def f(x):\\n    return x", mod.__dict__)
    sys.modules["madeup"] = mod
    return mod.f

def forget_module(f):
    del sys.modules["madeup"]

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    out = {
        "closure target": dies(lambda: closure_over(b"x"), start),
        "lambda target": dies(lambda: (lambda: None), start),
        "Process subclass": dies(lambda: type("P", (ctx.Process,), {"run": lambda s: None}),
                                 lambda cls: (lambda p: (p.start(), p.join()))(cls())),
        "class of a sent object": dies(made_class, lambda cls: (send(cls()), send(cls()))),
        "class of an unpicklable object": dies(lambda: type("Bad", (), {}),
                                               lambda cls: send_failing(cls())),
        "function sent by reference": dies(
            module_function, lambda f: (send((f, 1)), send((f, 2)), forget_module(f))),
    }
    print(json.dumps(out))
"""


@pytest.mark.parametrize("pickler", ["pickle", "cloudpickle"])
def test_objects_the_program_dropped_die(run_program, pickler):
    run = run_program(DIES, env={"TRACEDMP_PICKLER": pickler})
    assert run.returncode == 0, run.stderr
    assert run.output() == dict.fromkeys(run.output(), True)
    assert run.events("process_start") and run.events("pickle", channel="pipe")
