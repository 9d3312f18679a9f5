"""Size attribution: large pickles name their largest parts, and the report names the trap."""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys

import pytest

from conftest import METHODS
from tracedmp import summarize
from tracedmp._runtime import parts
from tracedmp._runtime.picklers import pickler_class

cloudpickle = pytest.importorskip("cloudpickle")


def dumps(obj, pickler="pickle"):
    return bytes(pickler_class(pickler).dumps(obj))


def paths(obj, channel="queue", pickler="pickle", part=None):
    found, whole = parts.attribute_parts(dumps(obj, pickler), channel, part)
    assert whole
    return {p["path"]: p for p in found}


BIG = b"x" * 200_000


class Model:
    def __init__(self):
        self.weights = b"w" * 300_000
        self.vocab = {f"w{i}": i for i in range(5000)}

    def predict(self, x):
        return x


def task(func, args=(), kwds=None):
    return (1, 0, func, args, kwds or {})


def test_task_paths_args_kwargs_func_self():
    found = paths(task(len, (BIG, 3), {"model": b"m" * 100_000}), "pool.task")
    assert found["args[0]"]["size"] > 200_000 and found["args[0]"]["type"] == "builtins.bytes"
    assert found["kwargs['model']"]["size"] > 100_000
    found = paths(task(Model().predict, (1,)), "pool.task")
    assert found["func.__self__"]["type"].endswith("test_parts.Model")
    assert "func.__self__.weights" in found and "func.__self__.vocab" in found
    assert found["func.__self__"]["size"] > found["func.__self__.weights"]["size"]


def test_map_chunks_name_items_and_partial_arguments():
    from multiprocessing.pool import mapstar, starmapstar

    chunk = tuple(os.urandom(100_000) for _ in range(4))
    found = paths((1, 0, mapstar, ((len, chunk),), {}), "pool.task")
    assert {"items"} | {f"items[{i}]" for i in range(4)} == set(found)
    found = paths((1, 0, starmapstar, ((divmod, ((BIG, 1), (BIG, 2))),), {}), "pool.task")
    assert "items[0][0]" in found and "items[1][0]" not in found  # the memo: sent once
    found = paths(task(functools.partial(len, BIG)), "pool.task")
    assert found["func.args[0]"]["type"] == "builtins.bytes"


def test_executor_call_items_and_function():
    from concurrent.futures.process import _CallItem, _process_chunk

    item = _CallItem(1, functools.partial(_process_chunk, len), (((BIG,), (b"y" * 90_000,)),), {})
    found = paths(item, "executor.call")
    assert "items[0][0]" in found and "items[1][0]" in found
    item = _CallItem(2, Model().predict, (1,), {})
    assert "func.__self__" in paths(item, "executor.call")


def test_cloudpickle_closure_cell_names_the_captured_variable_and_globals():
    data = b"c" * 150_000

    def make():
        captured = data

        def f(y):
            return len(captured) + len(BIG) + y
        return f

    found = paths(task(make(), (1,)), "pool.task", pickler="cloudpickle")
    cell = found["func.__closure__[0]"]
    assert cell["captured"] == "captured" and cell["size"] > 150_000
    assert found["func.__globals__['BIG']"]["size"] > 200_000


def test_containers_dicts_lists_attributes_and_the_whole_object():
    obj = {"a": [b"0" * 100_000, b"1" * 10, b"2" * 120_000], "b": Model()}
    found = paths(obj)
    assert found["obj['a'][2]"]["size"] > found["obj['a'][0]"]["size"] > 100_000
    assert "obj['b'].weights" in found and "obj" not in found  # the record has its size
    assert "obj['a'][1]" not in found  # small parts are not named
    found = paths([1.5] * 20_000 + [3] * 20_000)  # no large member: the object itself
    assert list(found) == ["obj"] and found["obj"]["type"] == "builtins.list"


def test_at_most_five_parts_and_never_the_contents():
    obj = [os.urandom(50_000) for _ in range(20)]
    found, whole = parts.attribute_parts(dumps(obj), "queue")
    assert whole and len(found) == parts.TOP
    text = json.dumps(found)
    assert all(set(p) <= {"path", "type", "size", "captured", "method", "storage_bytes",
                          "numel"} for p in found)
    assert "urandom" not in text and len(text) < 1000


def test_every_protocol_walks_to_the_same_sizes():
    obj = {"k": [b"z" * 70_000, "s" * 80_000], "n": list(range(1000))}
    sizes = {}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(obj, protocol)
        found, whole = parts.attribute_parts(data, "queue")
        assert whole, protocol
        assert found and found[0]["path"].startswith("obj"), protocol
        sizes[protocol] = {p["path"]: p["size"] for p in found}
        # spans add up: no part is larger than the pickle
        assert all(size <= len(data) for size in sizes[protocol].values())
    assert "obj['k'][1]" in sizes[4] and "obj['k'][0]" in sizes[4]


def test_memo_references_of_every_width_are_read_by_one_helper():
    # GET and PUT take a 1-byte index (BINGET/BINPUT), a 4-byte one past 255 memo entries
    # (LONG_BINGET/LONG_BINPUT) or a line (protocol 0); parts._memo_index reads each.
    assert parts._memo_index(b"h\x05", 0, 1) == (5, 1)
    assert parts._memo_index(b"j\x01\x02\x00\x00", 0, 4) == (513, 4)
    assert parts._memo_index(b"g12\n", 0, parts._ARG[ord("g")]) == (12, 3)
    assert parts._memo_index(b"p7\n", 0, parts._ARG[ord("p")]) == (7, 2)
    big = b"x" * 70_000
    obj = [[str(i) for i in range(300)], big, big]  # the second big one: a memo reference
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        found, whole = parts.attribute_parts(pickle.dumps(obj, protocol), "queue")
        assert whole, protocol
        assert [p["path"] for p in found] == ["obj[1]", "obj[0]"], protocol  # where it first was
        assert 70_000 < found[0]["size"] < 70_100, protocol  # the bytes counted once
    nested = {"a": [big], "b": [1, big]}  # first inside a, then referred to from b
    found, _ = parts.attribute_parts(pickle.dumps(nested), "queue")
    assert found[0]["path"] == "obj['a'][0]"


def test_walk_time_budget_cuts_a_long_pickle_short():
    data = dumps([{"a": i, "b": str(i)} for i in range(200_000)])
    found, whole = parts.attribute_parts(data, "queue", deadline_ns=1)  # already past
    assert not whole
    assert found and found[0]["path"] == "obj"


class Launch:
    """Stands in for a Process object: what spawn pickles as launch data."""


class Holder:
    def __init__(self):
        self.dataset = [bytes(1000) for _ in range(3000)]

    def predict(self, x):
        return x


def test_a_walk_cut_short_still_names_the_path_to_where_it_stopped():
    owner = Holder()
    launch = Launch()
    launch._name, launch._target, launch._args = "Launch-1", owner.predict, (1, 2)
    data = dumps(launch)
    min_part = max(256, len(data) >> 9)
    root, whole = parts.walk(data, min_part, ops_budget=4096)  # stops inside the dataset
    assert not whole
    cut = {p["path"]: p for p in parts.select(root, "process", "process_object", min_part)}
    root, whole = parts.walk(data, min_part)
    full = {p["path"]: p for p in parts.select(root, "process", "process_object", min_part)}
    assert whole and "target.__self__.dataset" in full and "target.__self__" in full
    assert set(cut) == set(full) == {"target.__self__", "target.__self__.dataset"}
    assert all(cut[p]["size"] >= full[p]["size"] - 100 for p in cut)  # upper bounds


def test_call_site_budget_first_few_then_a_sample():
    parts.forget_budgets()
    data = dumps([b"q" * 100_000])
    got = [parts.fields(data, "queue", None, 1000, "site") for _ in range(50)]
    walked = [g for g in got if "parts" in g]
    assert len(walked) == parts.FIRST  # 1 us of pickling each: no room for more
    assert all(g == {"parts_skipped": "budget"} for g in got[parts.FIRST:])
    got = [parts.fields(data, "queue", None, 10**9, "slow site") for _ in range(20)]
    assert all("parts" in g for g in got)  # walking is cheap next to 1 s of pickling
    parts.forget_budgets()


def test_numpy_views_pickle_only_their_own_elements():
    np = pytest.importorskip("numpy")
    base = np.zeros(1_000_000)
    found, _ = parts.attribute_parts(dumps((base[:100], base)), "queue")
    assert found[0]["path"] == "obj[1]" and found[0]["type"] == "numpy.ndarray"
    assert all(p["path"] != "obj[0]" for p in found)  # 800 bytes: not a large part


def test_torch_view_pickled_by_value_carries_its_storage():
    torch = pytest.importorskip("torch")
    base = torch.zeros(100_000)
    # torch's own reducers (registered with ForkingPickler on import) move tensors to shared
    # memory; plain pickle sends the whole storage of a view.
    data = pickle.dumps(base[:10], protocol=4)
    found, whole = parts.attribute_parts(data, "queue")
    assert whole and found[0]["type"] == "torch.Tensor"
    assert found[0]["numel"] == 10 and found[0]["storage_bytes"] >= 400_000


# -- in real processes ---------------------------------------------------------------------------

PROGRAM = """
import json, sys
import tracedmp as multiprocessing
from concurrent.futures import ProcessPoolExecutor

class Model:
    def __init__(self):
        self.weights = b"w" * 300_000
    def predict(self, x):
        return x + 1

def score(table, i):
    return len(table) + i

class Loader:
    def __init__(self):
        self.dataset = b"d" * 500_000
    def run(self):
        pass

if __name__ == "__main__":
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    table = b"t" * 200_000
    with ctx.Pool(2) as pool:
        pool.map(Model().predict, range(8))
        pool.starmap(score, [(table, i) for i in range(8)])
        pool.map(len, [table] * 8)
        pool.map(abs, range(100))  # small: nothing to say
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        list(ex.map(score, [table] * 6, range(6)))
    loaders = [ctx.Process(target=Loader().run) for _ in range(2)]
    for p in loaders:
        p.start()
    for p in loaders:
        p.join()
    print("ok")
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", METHODS)
def test_traps_named_in_real_programs(run_program, method):
    run = run_program(PROGRAM, method, timeout=200)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    start = run.events("trace_start")[0]
    assert start["parts_threshold"] == 65536
    big = [r for r in run.events("pickle") if r["size"] >= 65536]
    small = [r for r in run.events("pickle") if r["size"] < 65536]
    assert big and all("parts" in r or r.get("parts_skipped") == "budget" for r in big)
    assert not any("parts" in r or "parts_skipped" in r for r in small)
    tasks = [r for r in big if r["channel"] == "pool.task" and "parts" in r]
    assert any(p["path"] == "func.__self__" for r in tasks for p in r["parts"])
    assert any(p["path"] == "items[0][0]" for r in tasks for p in r["parts"])
    assert any(p["path"] == "items[0]" for r in tasks for p in r["parts"])
    calls = [r for r in big if r["channel"] == "executor.call" and "parts" in r]
    assert calls and all(p["path"].startswith("items[") for r in calls for p in r["parts"])
    launch = [r for r in run.events("pickle", channel="process") if r.get("part") ==
              "process_object"]
    if method == "fork":
        assert not launch  # inherited, not pickled
    else:
        loader = [r for r in launch if r["size"] > 500_000]
        assert len(loader) == 2
        assert {p["path"] for r in loader for p in r["parts"]} >= {
            "target.__self__", "target.__self__.dataset"} or {
            p["path"] for r in loader for p in r["parts"]} >= {"target.__self__.dataset"}
    kinds = [f["kind"] for f in summarize(run.records)["findings"]]
    assert kinds.count("bound_method_self") == 1
    assert kinds.count("same_large_argument") >= 3  # starmap, map, executor.map
    assert ("large_launch_data" in kinds) == (method != "fork")
    messages = " ".join(f["message"] for f in summarize(run.records)["findings"])
    assert "__main__.Model.predict" in messages and "__main__.score" in messages


def test_a_clean_program_has_no_findings(run_program):
    run = run_program("""
import sys
import tracedmp as multiprocessing

def work(x):
    return x * 2

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(work, range(100))
        pool.apply_async(work, (1,)).get(timeout=30)
""")
    assert run.returncode == 0, run.stderr
    assert not any("parts" in r for r in run.records)
    assert summarize(run.records)["findings"] == []


CLOSURE = """
import sys
import tracedmp as multiprocessing

DATA = b"g" * 100_000

def make():
    table = b"c" * 200_000
    def f(x):
        return len(table) + len(DATA) + x
    return f

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        print(sum(pool.map(make(), range(8))))
"""


def test_captured_data_with_cloudpickle(run_program):
    run = run_program(CLOSURE, env={"TRACEDMP_PICKLER": "cloudpickle"})
    assert run.returncode == 0, run.stderr
    found = summarize(run.records)["findings"]
    captured = [f for f in found if f["kind"] == "captured_data"]
    assert {f["path"] for f in captured} == {"func.__closure__[0]", "func.__globals__['DATA']"}
    assert any("captured variable 'table'" in f["message"] for f in captured)


def test_threshold_from_configure_and_environment(run_program, tmp_path):
    program = """
import json, sys
import tracedmp
if len(sys.argv) > 1:
    tracedmp.configure(parts_threshold=int(sys.argv[1]) if sys.argv[1].isdigit() else False)
with tracedmp.get_context("fork").Pool(1) as pool:
    pool.map(len, [b"a" * 5000, b"b" * 100_000], chunksize=1)
print(tracedmp.get_config().parts_threshold)
"""
    def trace(name):
        return str(tmp_path / f"{name}.jsonl")

    run = run_program(program, trace=trace("default"))
    sizes = {r["size"] for r in run.records if "parts" in r}
    assert run.stdout.strip() == "65536" and sizes and min(sizes) > 100_000
    run = run_program(program, "1000", trace=trace("1000"))
    assert min(r["size"] for r in run.records if "parts" in r) < 10_000
    run = run_program(program, "off", trace=trace("off"))
    assert run.stdout.strip() == "0" and not any("parts" in r for r in run.records)
    run = run_program(program, env={"TRACEDMP_PARTS_THRESHOLD": "2k"}, trace=trace("env"))
    assert run.stdout.strip() == "2048"
    run = run_program(program, env={"TRACEDMP_PARTS_THRESHOLD": "lots"}, trace=trace("bad"))
    assert run.returncode != 0 and "TRACEDMP_PARTS_THRESHOLD='lots' is not a size" in run.stderr


def test_manager_messages_name_their_method(run_program):
    run = run_program("""
import tracedmp as multiprocessing
if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Manager() as m:
        d = m.dict()
        d["k"] = b"v" * 100_000
        assert len(d["k"]) == 100_000
        d.keys()
""")
    assert run.returncode == 0, run.stderr
    manager = run.events("pickle", channel="manager")
    pairs = {(r.get("method"), r.get("message")) for r in manager}
    assert {("__setitem__", "request"), ("__setitem__", "reply"), ("__getitem__", "request"),
            ("__getitem__", "reply"), ("keys", "request"), ("keys", "reply"),
            ("create", "request"), ("create", "reply")} <= pairs
    reply = next(r for r in manager if r.get("method") == "__getitem__"
                 and r["message"] == "reply")
    assert reply["size"] > 100_000 and reply["parts"][0]["path"] == "result"
    request = next(r for r in manager if r.get("method") == "__setitem__"
                   and r["message"] == "request")
    assert request["parts"][0]["path"] == "args[1]"
    data = summarize(run.records)
    assert ("__getitem__", "reply") in {(m["method"], m["message"])
                                       for m in data["manager_methods"]}


def test_report_puts_the_programs_functions_first(tmp_path):
    records = [{"v": 1, "event": "pickle", "ts": 1.0, "pid": 1, "process": "MainProcess",
                "start_method": "fork", "seq": i, "channel": "pool.task", "size": size,
                "kind": "value", "type": "builtins.tuple", "pickler": "pickle",
                "duration_ns": 10, "callables": [{"name": n, "kind": "reference"}
                                                 for n in names]}
               for i, (size, names) in enumerate(
                   [(10_000, ["multiprocessing.pool.mapstar", "json.loads", "json.dumps",
                              "pickle.loads"])] * 5
                   + [(10, ["multiprocessing.pool.mapstar", "__main__.mine"])])]
    data = summarize(records, top=3)
    assert data["by_callable"][0]["name"] == "__main__.mine"
    assert {r["name"] for r in data["by_library"]} >= {"multiprocessing", "json"}
    out = subprocess.run([sys.executable, "-m", "tracedmp", "report", "-"], input="\n".join(
        json.dumps(r) for r in records), capture_output=True, text=True, timeout=60)
    if out.returncode == 0:  # reading stdin is optional
        assert out.stdout.index("__main__.mine") < out.stdout.index("Libraries")


def test_explain_shows_the_paths_the_trace_names():
    from tracedmp._read.explain import explain, render_tree

    tree = render_tree(explain(Model().predict))
    assert "├─ .__self__: " in tree and ".weights: bytes" in tree and ".vocab: dict" in tree
    captured = b"k" * 100_000

    def f():
        return captured

    tree = render_tree(explain(f, "cloudpickle"), depth=3)
    assert ".__closure__: tuple" in tree and "[0]: closure cell" in tree
    tree = render_tree(explain({"model": b"m" * 10}))
    assert "['model']: " in tree


def test_small_pickles_never_load_the_attribution_module(run_program):
    run = run_program("""
import json, sys
import tracedmp as multiprocessing

def loaded(_):
    return "tracedmp._runtime.parts" in sys.modules

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        workers = pool.map(loaded, range(20))
    print(json.dumps({"parent": "tracedmp._runtime.parts" in sys.modules, "workers": workers}))
""")
    assert run.returncode == 0, run.stderr
    assert run.output() == {"parent": False, "workers": [False] * 20}
