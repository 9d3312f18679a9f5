"""Property-based tests of the trace reader: any bytes give records or one clear error."""

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tracedmp import TraceFormatError, read_trace, summarize  # noqa: E402
from tracedmp._read.report import render_text  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                       max_size=4),
    max_leaves=10,
)
records = st.fixed_dictionaries(
    {"v": st.just(1), "event": st.sampled_from(["pickle", "pickle_error", "process_start",
                                                 "unpickle", "trace_start", "other"])},
    optional={"size": json_values, "ts": json_values, "pid": json_values,
              "channel": json_values, "callables": json_values, "type": json_values,
              "duration_ns": json_values, "pickled": json_values, "spawn_check": json_values},
)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])  # a loaded machine
FEWER = settings(SETTINGS, max_examples=60)  # the suite stays fast


@SETTINGS
@given(st.binary(max_size=300))
def test_any_bytes_give_records_or_a_format_error(tmp_path, data):
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    trace = read_trace(path)
    try:
        list(trace)
    except TraceFormatError as exc:
        assert str(exc).startswith(f"{path}:")


@SETTINGS
@given(st.lists(records, max_size=20), st.booleans())
def test_any_records_summarize_without_error(tmp_path, recs, cut_last):
    path = tmp_path / "t.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in recs)
    if cut_last and text:
        text = text[:-2]  # a killed writer's unfinished last line
    path.write_text(text)
    trace = read_trace(path)
    data = summarize(trace)
    assert render_text(data)  # and it renders
    assert data["records"] == len(recs) - (1 if cut_last and recs and trace.truncated_line
                                           else 0)


# What the reader does with damage (issue #12, item 5): records as tracedmp writes them, "v"
# first; their fields never hold a nested "v" key, as tracedmp's never do.
safe_values = st.recursive(
    # (orjson reads an integer beyond 64 bits as a float: tracedmp writes none)
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "kind", "", "{\"v\":", "é\n"]), children, max_size=3),
    max_leaves=5,
)
whole_records = st.builds(
    lambda event, pid, seq, extra: {"v": 1, "event": event, "ts": 1.5, "pid": pid,
                                    "seq": seq, **extra},
    st.sampled_from(["pickle", "unpickle", "process_start"]), st.integers(1, 3),
    st.integers(0, 50), st.dictionaries(st.sampled_from(["size", "type", "channel", "x"]),
                                        safe_values, max_size=3))


@FEWER
@given(st.lists(st.tuples(whole_records, st.none() | st.floats(0, 1), st.booleans()),
                min_size=1, max_size=15))
def test_cut_lines_anywhere_cost_only_themselves(tmp_path, lines):
    # Each line is whole, or cut anywhere after its '{"v":' (its newline gone, so the next line
    # is glued to it), possibly followed by a reserved region's padding.  (Two cuts in a row
    # that both end before '{"v":' count as one: what is left of them cannot be told apart.)
    data = b""
    kept, cut = [], 0
    for record, cut_at, padding in lines:
        line = json.dumps(record, separators=(",", ":")).encode()
        if cut_at is None:
            data += line + b"\n"
            kept.append(record)
        else:
            at = 5 + int(cut_at * (len(line) - 6))  # never the whole line
            data += line[:at]
            cut += 1
        if padding:
            data += b" " * 40 + b"\n"
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    trace = read_trace(path)
    assert list(trace) == kept
    assert trace.cut_count == cut and trace.skipped_count == cut
    assert all(s.reason == "cut" for s in trace.skipped)


@FEWER
@given(st.binary(max_size=200))
def test_garbage_after_the_first_record_never_stops_the_reader(tmp_path, junk):
    first = b'{"v":1,"event":"trace_start","pid":1,"seq":0}\n'
    last = b'{"v":1,"event":"pickle","pid":1,"seq":1}\n'
    path = tmp_path / "t.jsonl"
    path.write_bytes(first + junk + last)
    trace = read_trace(path)
    records = list(trace)
    assert records[0]["seq"] == 0 and records[-1]["seq"] == 1
    assert render_text(summarize(read_trace(path)))


@FEWER
@given(st.dictionaries(st.integers(1, 4), st.integers(1, 60), min_size=1),
       st.randoms(use_true_random=False), st.floats(0, 1))
def test_missing_seq_numbers_are_counted_whatever_the_order(tmp_path, counts, rnd, share):
    # Each process numbers its records 0, 1, 2...; some never reach the file; the rest arrive
    # in any order (threads, interleaved processes).
    made = [(pid, seq) for pid, n in counts.items() for seq in range(n)]
    written = [r for r in made if rnd.random() >= share]
    rnd.shuffle(written)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"v": 1, "event": "pickle", "pid": pid, "seq": seq})
                            + "\n" for pid, seq in written))
    trace = read_trace(path)
    list(trace)
    expected = {}
    for pid in counts:
        seen = {seq for p, seq in written if p == pid}
        if seen:
            lost = [seq for seq in range(max(seen)) if seq not in seen]
            if lost:
                expected[pid] = lost
    got = {m.pid: m for m in trace.missing}
    assert set(got) == set(expected)
    for pid, lost in expected.items():
        assert got[pid].missing == len(lost)
        listed = [s for first, last in got[pid].ranges for s in range(first, last + 1)]
        assert listed == lost[:len(listed)] and (len(got[pid].ranges) == 20 or listed == lost)


# tracedmp explain (issue #12, item 7): sizes add up, however a pickle shares its objects, and
# any sequence of opcodes ends in a tree or an ordinary error, quickly.
pickled_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=5) | st.binary(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=3), children, max_size=3)
    | st.frozensets(st.integers(), max_size=3),
    max_leaves=20)


@FEWER
@given(pickled_values, st.integers(0, 5), st.booleans())
def test_explain_sizes_add_up_whatever_is_shared(value, protocol, share):
    import pickle

    from tracedmp._read.explain import explain_bytes, render_tree

    data = pickle.dumps([value, value, [value, (value,)]] if share else value, protocol)
    node = explain_bytes(data)
    assert node.size == len(data)
    assert render_tree(node) and node.as_dict()


@FEWER
@given(st.lists(st.sampled_from([b"2", b"\x85", b"\x86", b"\x87", b"]", b"}", b"(", b"l",
                                 b"t", b"a", b"e", b"s", b"u", b"b", b"0", b"1", b"N",
                                 b"K\x01", b"q\x00", b"h\x00", b"\x94", b"R", b"\x81",
                                 b"\x8c\x01a", b"\x93"]), max_size=60))
def test_explain_any_opcodes_end_in_a_tree_or_an_error(ops):
    import time

    from tracedmp._read.explain import explain_bytes, render_tree

    data = b"\x80\x04" + b"".join(ops) + b"."
    start = time.perf_counter()
    try:
        node = explain_bytes(data)
    except Exception:  # noqa: BLE001 - what `tracedmp explain` reports as "not a pickle"
        return
    render_tree(node, depth=100)
    assert node.size <= len(data)
    assert time.perf_counter() - start < 30  # never exponential (a loaded machine: generous)


# Lines orjson and json read differently: NaN, lone surrogates, deep nesting, UTF-16, a cut
# line, raw bytes.  Not integers beyond 64 bits (never written by tracedmp): orjson 3.9 refuses
# them (then json reads them as int), 3.13 reads them as float.
odd_lines = st.sampled_from([
    b'{"v": 1, "event": "pickle", "pid": 7, "seq": 0, "size": NaN}',
    b'{"v": 1, "event": "pickle", "pid": 7, "seq": 2, "type": "\\ud800"}',
    b'{"v": 1, "event": "pickle", "pid": 7, "seq": 3, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    '{"v": 1, "event": "pickle", "pid": 7, "seq": 4}'.encode("utf-16"),
    b'{"v": 1, "event": "pickle", "pid": 7, "se', b"\xff\xfe\x00garbage", b"", b"  ",
    b'{"v": 1, "event": "pickle", "pid": 7, "seq": 5, "size": 1e400}',
])


def _beyond_64_bits(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return not -2**63 <= value < 2**64
    if isinstance(value, dict):
        return any(_beyond_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(_beyond_64_bits(v) for v in value)
    return False


@FEWER
@given(st.lists(st.one_of(records.filter(lambda r: not _beyond_64_bits(r))
                          .map(lambda r: json.dumps(r).encode()), odd_lines),
                min_size=1, max_size=12))
def test_small_and_large_traces_read_alike(tmp_path, lines):
    """Below reader.FAST_FROM bytes the stdlib's json reads a trace, from there orjson: the
    same records, the same losses, whichever reads it."""
    from tracedmp._read import reader

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))

    def read(loads):
        trace = read_trace(path)
        saved = reader._loads_for, reader._fast_loads
        reader._loads_for, reader._fast_loads = (lambda size: loads), loads
        try:
            try:
                found = list(trace.dicts())
            except TraceFormatError as exc:
                return str(exc)
        finally:
            reader._loads_for, reader._fast_loads = saved
        return (repr(found), trace.records, trace.lines, trace.truncated_line,
                trace.skipped_count, trace.cut_count, trace.skipped, trace.missing)

    import orjson

    assert read(reader._std_loads) == read(orjson.loads)


def test_which_loads_reads_a_trace(tmp_path, monkeypatch):
    from tracedmp._read import reader

    monkeypatch.setattr(reader, "_fast_loads", reader._std_loads)
    assert reader._loads_for(reader.FAST_FROM - 1) is reader._std_loads
    import orjson

    assert reader._loads_for(reader.FAST_FROM) is orjson.loads
    assert reader._loads_for(10) is orjson.loads  # once imported, for every trace
