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
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


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
