"""Reading traces back: read_trace, report, timeline, explain; bad input gives one clear line."""

import json
import os
import subprocess
import sys

import pytest

import tracedmp
from tracedmp import TraceFileError, TraceFormatError, read_trace
from tracedmp._read.explain import explain, explain_bytes, render_tree

PROGRAM = """
import sys
import tracedmp as multiprocessing

TABLE = list(range(30000))

def lookup(args):
    table, i = args
    return table[i]

def tiny(x):
    return x

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        pool.map(lookup, [(TABLE, i) for i in range(20)], chunksize=1)
        pool.map(tiny, range(1200), chunksize=1)
        try:
            pool.map(tiny, [lambda: 1])
        except Exception:
            pass
"""


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tracedmp", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    """A trace written by a real traced program (spawn, so launch data is in it too)."""
    tmp = tmp_path_factory.mktemp("real")
    (tmp / "prog.py").write_text(PROGRAM)
    trace = tmp / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    env["TRACEDMP_TRACE"] = str(trace)
    subprocess.run([sys.executable, "prog.py", "spawn"], cwd=tmp, env=env, check=True,
                   timeout=120, capture_output=True)
    return trace


def test_read_trace_gives_typed_records(real_trace):
    trace = read_trace(real_trace)
    records = list(trace)
    # A whole run: no line left out, no seq number missing in any of its processes.
    assert trace.skipped == [] and trace.missing == [] and trace.records == len(records)
    assert records[0].event == "trace_start"
    pickles = [r for r in records if r.event == "pickle"]
    assert pickles and all(isinstance(r.size, int) and r["size"] == r.size for r in pickles)
    assert records[0].size is None  # a field the record does not have
    with pytest.raises(KeyError):
        records[0]["size"]


def test_report_text_on_a_real_trace(real_trace):
    proc = cli("report", str(real_trace))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in ("By channel", "By start method", "By type", "By callable", "Process starts",
                    "Largest pickles", "Pickling errors", "Findings"):
        assert heading in out, heading
    assert "spawn" in out and "launch data pickled" in out
    assert "__main__.lookup" in out
    assert "send it once with a Pool initializer" in out  # the big table re-sent per task
    assert "per-message overhead dominates" in out  # 1200 tiny tasks at chunksize=1
    assert "a lambda cannot travel by reference" in out


def test_report_json_filters_and_top(real_trace):
    proc = cli("report", str(real_trace), "--json", "--top", "3", "--channel", "pool.task")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [row["name"] for row in data["by_channel"]] == ["pool.task"]
    assert len(data["largest"]) <= 3 and len(data["by_type"]) <= 3
    kinds = {f["kind"] for f in data["findings"]}
    assert {"same_large_argument", "small_chunks"} <= kinds
    lookup = next(r for r in data["by_callable"] if r["name"] == "__main__.lookup")
    assert lookup["count"] == 20 and lookup["median_size"] > 50_000
    pid = data["runs"][0]["pid"]
    only_main = json.loads(cli("report", str(real_trace), "--json", "--pid", str(pid)).stdout)
    assert only_main["processes"] == 1


def test_summarize_api_matches_the_cli(real_trace):
    data = tracedmp.summarize(read_trace(real_trace))
    assert data["records"] == len(list(read_trace(real_trace)))
    assert data["totals"]["count"] == sum(r["count"] for r in data["by_channel"])


def test_timeline_is_chrome_trace_json(real_trace, tmp_path):
    out = tmp_path / "tl.json"
    proc = cli("timeline", str(real_trace), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    events = data["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert any(n.startswith("MainProcess") for n in names)
    assert any("SpawnPoolWorker" in n for n in names)
    slices = [e for e in events if e["ph"] == "X"]
    pickles = [r for r in read_trace(real_trace) if r.event == "pickle"]
    assert len(slices) == len(pickles)
    assert all(e["dur"] >= 0 and "size" in e["args"] for e in slices)


@pytest.mark.parametrize("content, message", [
    (None, "no such trace file"),
    (b"", "no records (an empty trace"),
    (b'not json at all\n{"v":1,"event":"pickle"}\n', ":1: not a JSON line ('not json at all')"),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR', ":1: not a JSON line ("),
    (b'{"a": 1}\n{"v":1,"event":"pickle"}\n', ":1: not a tracedmp record ('{\"a\": 1}')"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000 + b"\n", ":1: nested more than 200 levels deep",
                 id="a 100,000-deep array"),  # (a short id: pytest puts it in the environment)
    (b'[1, 2]\n', ":1: not a tracedmp record"),
    (b'{"v":7,"event":"pickle"}\n', ":1: record format v7 is newer than this tracedmp reads"),
])
def test_bad_input_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    for command in ("report", "timeline"):
        proc = cli(command, str(path), cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stdout)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("tracedmp: error: ") and message in proc.stderr, \
            proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".json")]  # no half-written output


def test_truncated_last_line_is_reported_not_fatal(tmp_path, real_trace):
    path = tmp_path / "cut.jsonl"
    data = real_trace.read_bytes()
    path.write_bytes(data + b'{"v":1,"event":"pickle","ts":1.0,"si')
    trace = read_trace(path)
    records = list(trace)
    assert trace.truncated_line == len(data.splitlines()) + 1
    assert len(records) == len([line for line in data.splitlines() if line.strip()])
    proc = cli("report", str(path))
    assert proc.returncode == 0
    assert "1 record cut off" in proc.stdout and "1 record cut off" in proc.stderr


def test_reader_never_unpickles(tmp_path):
    # A record whose fields look like pickles stays text: nothing is ever loaded.
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"v": 1, "event": "pickle", "type": "cos\nsystem\n(S'echo'\ntR.",
                                "size": 1}) + "\n")
    [r] = list(read_trace(path))
    assert r.type.startswith("cos")


def test_read_trace_errors_name_the_file():
    with pytest.raises(TraceFileError, match="no such trace file"):
        read_trace("/nonexistent/t.jsonl")
    assert issubclass(TraceFormatError, ValueError)


def test_explain_a_function_reference_and_a_closure_by_value():
    import operator

    node = explain(operator.add)
    assert node.kind == "global" and node.by == "reference" and node.ref == "_operator.add"
    assert "the definition does not travel" in render_tree(node)

    data = b"y" * 3000

    def closure(x):
        return x + len(data)

    node = explain(closure, "cloudpickle")
    text = render_tree(node)
    assert node.by == "value" and "function rebuilt by cloudpickle" in text
    assert node.size > 3000  # what the closure captured travels with it


def test_explain_a_global_sent_as_a_copyreg_extension_code():
    import copyreg
    import operator
    import pickle
    import pickletools

    copyreg.add_extension("_operator", "add", 0x7FFF0001)
    try:
        data = pickle.dumps([operator.add], protocol=2)
    finally:
        copyreg.remove_extension("_operator", "add", 0x7FFF0001)
    assert any(op.name == "EXT4" for op, _, _ in pickletools.genops(data))
    node = explain_bytes(data)
    assert node.size == len(data)
    text = render_tree(node)
    assert "extension code 2147418113" in text and "copyreg extension registry" in text


def test_explain_sizes_add_up_to_the_pickle():
    import pickle

    obj = {"a": [1, 2.5, "three", b"four"], "b": (None, True), "c": {1, 2}}
    data = pickle.dumps(obj, protocol=4)
    node = explain_bytes(data)
    assert node.size == len(data)
    assert node.kind == "dict"


def test_explain_cli_expression_and_file(tmp_path):
    (tmp_path / "helpers.py").write_text("def work(x):\n    return x\n")
    proc = cli("explain", "helpers.work", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("helpers.work  by reference")
    import pickle

    (tmp_path / "obj.pkl").write_bytes(pickle.dumps([1, "x"]))
    proc = cli("explain", "obj.pkl", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout)["kind"] == "list"
    proc = cli("explain", "lambda: 1", cwd=tmp_path)
    assert proc.returncode == 2 and "a lambda cannot travel by reference" in proc.stderr
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01not a pickle")
    proc = cli("explain", "junk.bin", cwd=tmp_path)
    assert proc.returncode == 2 and "not a pickle" in proc.stderr


def test_to_pandas(real_trace):
    trace = read_trace(real_trace)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"to_pandas\(\) needs pandas: pip install pandas"):
            trace.to_pandas()
        return
    df = trace.to_pandas()
    assert len(df) == len(list(read_trace(real_trace)))
    assert {"event", "size", "channel", "callables"} <= set(df.columns)


def test_odd_but_valid_records_never_crash_the_cli(tmp_path):
    import pickle

    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"v":1,"event":"pickle","size":9223372036854775808,"pid":1,"ts":1.0}\n'
                   '{"v":1,"event":"pickle","duration_ns":"5","pid":1,"ts":1e400}\n'
                   '{"v":1,"event":"pickle","duration_ns":-3,"pid":1,"ts":2.0}\n')
    proc = cli("report", str(odd))
    assert proc.returncode == 0 and "over 1.000 s" in proc.stdout, proc.stderr
    proc = cli("timeline", str(odd), "-o", str(tmp_path / "tl.json"))
    assert proc.returncode == 0, proc.stderr
    json.loads((tmp_path / "tl.json").read_text())  # strict JSON: no Infinity
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        # The Python pickler: the C one's depth limit ignores setrecursionlimit on 3.12+
        (tmp_path / "deep.pkl").write_bytes(pickle._dumps(deep))
    finally:
        sys.setrecursionlimit(limit)
    proc = cli("explain", str(tmp_path / "deep.pkl"))  # the tree shows the first levels
    assert proc.returncode == 0 and "1 more objects" in proc.stdout, proc.stderr
    proc = cli("explain", "--json", str(tmp_path / "deep.pkl"))
    assert proc.returncode == 2 and "nests too deeply" in proc.stderr
    assert "Traceback" not in proc.stderr


# Hostile or odd input (issue #12, item 7): a clean answer, never a traceback.

def test_a_deep_array_a_huge_ts_and_a_lone_surrogate_are_handled(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(
        b'{"v":1,"event":"pickle","pid":1,"ts":1.0,"seq":0,"size":5}\n'
        + b"[" * 100_000 + b"]" * 100_000 + b"\n"  # not a record: skipped, counted
        + b'{"v":1,"event":"pickle","pid":1,"seq":1,"ts":' + b"9" * 400 + b"}\n"
        + b'{"v":1,"event":"pickle","pid":1,"seq":2,"ts":2.0,"process":"\\ud800x",'
          b'"type":"bad\\udfffname","channel":"pipe","size":3}\n')
    trace = read_trace(path)
    records = list(trace)
    assert [r.seq for r in records] == [0, 1, 2]
    assert trace.skipped_count == 1 and trace.skipped[0].line == 2
    assert trace.skipped[0].reason == "not_a_record" and trace.cut_count == 0
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # a terminal's encoding, strict
    report = subprocess.run([sys.executable, "-m", "tracedmp", "report", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    assert "over 1.000 s" in report.stdout  # the 400-digit ts is no time at all
    assert "bad\\udfffname" in report.stdout
    assert "1 line that is not a record skipped: line 2" in report.stdout
    data = json.loads(cli("report", "--json", str(path)).stdout)
    assert data["lost"]["not_records"] == 1 and data["lost"]["other_lines"] == [2]
    out = tmp_path / "tl.json"
    timeline = cli("timeline", str(path), "-o", str(out))
    assert timeline.returncode == 0 and "Traceback" not in timeline.stderr, timeline.stderr
    events = json.loads(out.read_text())["traceEvents"]
    assert [e["ts"] for e in events if e["ph"] == "X"] == [1e6, 2e6]  # the 400 digits: no ts


def test_terminal_escapes_in_a_trace_are_shown_escaped(tmp_path):
    path = tmp_path / "esc.jsonl"
    evil = "\x1b]0;owned\x07\x1b[2J\r\u202e"
    path.write_text(json.dumps({
        "v": 1, "event": "pickle_error", "pid": 1, "ts": 1.0, "seq": 0, "process": evil,
        "channel": "pipe" + evil, "type": "T" + evil, "error": "E: " + evil + "\nforged line",
        "path": evil, "hint": evil}) + "\n" + json.dumps({
        "v": 1, "event": "pickle", "pid": 1, "ts": 2.0, "seq": 1, "process": evil,
        "channel": "pipe", "type": evil, "size": 10,
        "callables": [{"name": evil, "kind": "value"}] * 10}) + "\n")
    for args in (("report", str(path)), ("report", "--json", str(path)),
                 ("timeline", str(path), "-o", str(tmp_path / "tl.json"))):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        for text in (proc.stdout, proc.stderr):
            assert not any(c in text for c in "\x1b\x07\r\u202e"), (args, text)
    report = cli("report", str(path)).stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0d\\u202e" in report
    assert "\nforged line" not in report and "\\x0aforged line" in report
    # A trace path with an escape in it: the error line escapes it too.
    proc = cli("report", str(tmp_path / "no\x1b[31mfile.jsonl"))
    assert proc.returncode == 2 and "\x1b" not in proc.stderr and "\\x1b[31m" in proc.stderr


def test_explain_counts_shared_objects_once_and_stays_linear():
    import pickletools
    import time

    # DUP, TUPLE2 forty times: 2**40 objects if each use were a copy; 84 bytes of pickle.
    data = b"\x80\x02N" + b"2\x86" * 40 + b"."
    assert len(data) == 84
    start = time.perf_counter()
    node = explain_bytes(data)
    text = render_tree(node, depth=100)
    assert time.perf_counter() - start < 2
    assert node.size == len(data)
    assert text.count("(same ") == 40  # each reuse shown once, as a reference to the first
    assert len(text.splitlines()) == 81 + 1  # the tree, then the protocol it was written in
    assert len(node.as_dict()["children"]) == 2
    # Memo lookups the same: a thousand uses of one big string count its bytes once.
    import pickle

    big = "x" * 10_000
    data = pickle.dumps([big] * 1000, protocol=4)
    node = explain_bytes(data)
    assert node.size == len(data) < 20_000
    assert sum(1 for _ in pickletools.genops(data)) >= len(render_tree(node, width=5000)
                                                       .splitlines())


def test_explain_names_from_a_pickle_are_escaped():
    data = b"\x80\x02c\x1b[2Jevil\nname\x1b]0;x\x07\nq\x00."
    text = render_tree(explain_bytes(data))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2Jevil.name\\x1b]0;x\\x07" in text


@pytest.mark.parametrize("target", ["missing.pkl", "results.pickle", "sub/missing",
                                    "data.bin"])
def test_explain_a_missing_file_never_imports_a_module(tmp_path, target):
    module = target.split("/")[0].split(".")[0]
    (tmp_path / f"{module}.py").write_text(
        "import pathlib\npathlib.Path('imported').write_text('yes')\n")
    proc = cli("explain", target, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"tracedmp: error: {target}: No such file")
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "imported").exists()


def test_explain_a_file_without_a_suffix_and_an_expression_that_looks_like_one(tmp_path):
    import pickle

    (tmp_path / "saved").write_bytes(pickle.dumps({"a": 1}))  # exists: a file
    proc = cli("explain", "saved", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("dict"), proc.stderr
    proc = cli("explain", "--expr", "[1 / 2]", cwd=tmp_path)  # has a "/": --expr says
    assert proc.returncode == 0 and "0.5" in proc.stdout, proc.stderr


def test_a_cut_record_is_told_from_a_missing_one(tmp_path):
    def rec(pid, seq):
        return (f'{{"v":1,"event":"pickle","ts":1.0,"pid":{pid},"process":"P{pid}",'
                f'"start_method":"fork","seq":{seq},"channel":"pipe","size":1}}').encode()

    path = tmp_path / "t.jsonl"
    path.write_bytes(rec(5, 0) + b"\n"
                     + rec(5, 1)[:50] + rec(7, 0) + b"\n"  # pid 5's seq 1 cut before its seq
                     + rec(5, 2) + b"\n" + rec(5, 4) + b"\n"  # seq 3 never written
                     + rec(7, 1)[:95])  # pid 7's last record, cut after its seq
    trace = read_trace(path)
    assert [(r.pid, r.seq) for r in trace] == [(5, 0), (7, 0), (5, 2), (5, 4)]
    assert [(s.line, s.pid, s.seq) for s in trace.skipped] == [(2, 5, None), (5, 7, 1)]
    assert trace.truncated_line == 5
    lost = {m.pid: m for m in trace.missing}
    assert lost[5].cut == 1 and lost[5].missing == 1 and lost[5].ranges == [(3, 3)]
    assert not lost[5].tail_lost
    assert lost[7].cut == 1 and lost[7].missing == 0 and lost[7].tail_lost
    report = cli("report", str(path)).stdout
    assert "pid 5 (P5): 1 record cut off; 1 record missing (seq 3: made but never written)\n" \
        in report
    assert "pid 7 (P7): 1 record cut off; the last thing it wrote was cut off" in report
