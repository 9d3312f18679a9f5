"""``tracedmp report --html``: one self-contained page, checked in a real (headless) Chromium.

The browser tests need Debian's ``chromium`` (``.ci/run`` installs it when missing); without it
they skip, saying so.  The page's screenshot is saved in the test's directory, and in
``$TRACEDMP_SCREENSHOTS`` when that is set (to look at).
"""

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tracedmp._read.html import render_html, report_data
from tracedmp._read.report import _fmt_bytes

PROGRAM = """
import threading
import tracedmp as multiprocessing

TABLE = list(range(20000))

def lookup(args):
    table, i = args
    return table[i]

def tiny(x):
    return x

def child(q):
    q.put(list(range(2000)))

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(lookup, [(TABLE, i) for i in range(20)], chunksize=1)
        pool.map(tiny, range(1100), chunksize=1)
        try:
            pool.apply(tiny, (threading.Lock(),))
        except TypeError:
            pass
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    q.get()
    p.join()
"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on this machine: `apt-get install -y chromium` (Debian) to run the "
                "HTML report's browser tests (.ci/run installs it)")


def browse(page, tmp_path, *, screenshot=None, fragment=""):
    """Open ``page`` in headless Chromium: the DOM after its scripts ran, and every URL the page
    itself asked the network for (from Chromium's net log: the page's requests are those its
    opaque file: origin initiated; the browser's own background ones are "not an origin")."""
    profile = tmp_path / "chromium-profile"
    netlog = tmp_path / "net.json"
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}"]
    shot = [f"--screenshot={screenshot}", "--window-size=1400,2000", "--hide-scrollbars"] \
        if screenshot is not None else []
    proc = subprocess.run(
        base + [f"--log-net-log={netlog}", *shot, "--dump-dom", page.as_uri() + fragment],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls, by_page = {}, set()
    for event in log["events"]:
        params = event.get("params") or {}
        source = event.get("source", {}).get("id")
        if "url" in params:
            urls.setdefault(source, params["url"])
        # A file: page's origin is opaque: its requests have initiator "null"
        if event["type"] == start_job and str(params.get("initiator")).startswith(("null",
                                                                                  "file")):
            by_page.add(source)
    requested = sorted(urls.get(s, "?") for s in by_page
                       if not urls.get(s, "?").startswith(("file:", "data:")))
    if screenshot is not None:
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keep = os.environ.get("TRACEDMP_SCREENSHOTS")
        if keep:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(screenshot, os.path.join(keep, screenshot.name))
    return proc.stdout, requested


def text_of(dom):
    """The page's visible text, roughly: tags out, entities decoded, spaces collapsed."""
    body = re.sub(r"<script\b.*?</script>", " ", dom, flags=re.S)
    body = re.sub(r"<title>.*?</title>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    (tmp / "prog.py").write_text(PROGRAM)
    trace = tmp / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    subprocess.run([sys.executable, "-m", "tracedmp", "run", "--trace", str(trace), "prog.py"],
                   cwd=tmp, env=env, check=True, timeout=120, capture_output=True)
    return trace


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tracedmp", *args], capture_output=True,
                          text=True, timeout=120)


def test_html_report_of_a_real_trace_in_chromium(real_trace, tmp_path):
    out = tmp_path / "report.html"
    proc = cli("report", str(real_trace), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    page = out.read_text()
    # Self-contained: nothing to fetch, and a policy that would refuse it anyway.
    assert "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "@font-face" not in page and "url(" not in page

    dom, requested = browse(out, tmp_path, screenshot=tmp_path / "html-report.png")
    assert requested == []
    assert 'data-ready="1"' in dom  # the script ran to its end
    text = text_of(dom)
    data = report_data(str(real_trace))
    t = data["totals"]
    for figure in (f"{data['records']:,}", f"{t['count']:,}", _fmt_bytes(t["bytes"]),
                   "prog.py", "spawn", "fork"):
        assert figure in text, figure
    for heading in ("Findings", "Over time", "Processes over time", "Largest pickles",
                    "Sent by value", "Pickling failures", "Process starts", "By channel"):
        assert heading in text, heading
    assert "MainProcess" in text and "SpawnPoolWorker-1" in text and "ForkProcess-" in text
    assert "cannot pickle '_thread.lock' object" in text and "task.args[0]" in text
    assert "per-message overhead dominates" in text  # a finding, with its link to the records
    assert "the pickles behind it" in text
    assert "__main__.lookup" in text and "pool.task" in text
    assert dom.count("<circle") >= 100  # few enough pickles: every one is drawn
    assert "<th" in dom and 'aria-sort="descending"' in dom  # sortable tables, sorted


def test_filters_narrow_the_per_record_tables(real_trace, tmp_path):
    out = tmp_path / "report.html"
    assert cli("report", str(real_trace), "--html", str(out)).returncode == 0
    pid = report_data(str(real_trace))["timeline"]["lanes"][0]["pid"]
    dom, _ = browse(out, tmp_path, fragment=f"#filter?channel=pool.result&pid={pid}")
    assert 'data-ready="1"' in dom
    largest = re.search(r'<section id="largest">(.*?)</section>', dom, re.S).group(1)
    assert "no row matches the filter" in largest or "pool.result" in largest
    assert "pool.task" not in largest and "rows (filtered)" in largest
    dom, _ = browse(out, tmp_path, fragment="#filter?channel=pool.result")
    largest = re.search(r'<section id="largest">(.*?)</section>', dom, re.S).group(1)
    assert "pool.result" in largest and "pool.task" not in largest


def test_hostile_names_cannot_inject_markup_or_script(tmp_path):
    marker = "document.body.append(Object.assign(document.createElement('b'),{id:'pw'+'ned'}))"
    hostile = f"</script><script>{marker}</script><img src=x onerror=\"{marker}\">"
    records = [
        {"v": 1, "event": "trace_start", "ts": 1000.0, "pid": 1, "process": "MainProcess",
         "seq": 0, "program": f"prog{hostile}.py", "python": "3.12", "pickler": "pickle",
         "tracedmp": "0"},
        {"v": 1, "event": "pickle", "ts": 1000.5, "pid": 1, "process": f"P<b>{hostile}",
         "seq": 1, "channel": f"queue{hostile}", "size": 123456, "kind": "value",
         "type": f"evil.T{hostile}\u2028\u2029<!--", "pickler": "pickle", "duration_ns": 5000,
         "callables": [{"name": f"f{hostile}", "kind": "value"}],
         "parts": [{"path": f"[0]{hostile}", "size": 100000}]},
        {"v": 1, "event": "pickle_error", "ts": 1001.0, "pid": 1, "process": "MainProcess",
         "seq": 2, "channel": "queue", "type": "x", "error": f"ValueError: {hostile}",
         "path": f"[0]{hostile}", "hint": f"fix {hostile} &amp; &lt;", "duration_ns": 1},
    ]
    trace = tmp_path / "hostile.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "hostile.html"
    proc = cli("report", str(trace), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    # Exactly the page's own two script elements; the data has no '<', '>' or '&' at all.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    payload = re.search(r'<script type="application/json" id="tracedmp-data">(.*?)</script>',
                        page, re.S).group(1)
    assert not set("<>&\u2028\u2029") & set(payload)
    assert json.loads(payload)["by_type"][0]["name"].startswith("evil.T</script>")

    dom, requested = browse(out, tmp_path, screenshot=tmp_path / "hostile.png")
    assert requested == []  # the <img src=x> never became an element
    assert 'data-ready="1"' in dom
    assert "pwned" not in dom and "<img" not in dom and "<b>" not in dom
    text = text_of(dom)
    assert f"evil.T{hostile}" in text.replace("\u2028", "").replace("\u2029", "") or \
        "evil.T</script><script>" in text  # shown as text
    assert "ValueError: </script>" in text and "fix </script>" in text and "&amp; &lt;" in text
    largest = text_of(re.search(r'<section id="largest">(.*?)</section>', dom, re.S).group(1))
    assert "[0]</script>" in largest and "100.0 KB" in largest  # its parts, as text


def test_a_big_trace_gives_a_bounded_page(tmp_path):
    def trace_of(n):
        path = tmp_path / f"big{n}.jsonl"
        with open(path, "w") as f:
            f.write(json.dumps({"v": 1, "event": "trace_start", "ts": 0.0, "pid": 1,
                                "process": "MainProcess", "seq": 0, "program": "big.py"}) + "\n")
            for i in range(n):
                f.write(json.dumps({
                    "v": 1, "event": "pickle", "ts": 1.0 + i * 1e-4, "pid": 100 + i % 80,
                    "process": f"Worker-{i % 80}", "seq": i // 80,
                    "channel": ("pool.task", "pool.result", "queue")[i % 3],
                    "size": (i * 7919) % 5000, "type": "builtins.tuple", "kind": "value",
                    "duration_ns": 1000}, separators=(",", ":")) + "\n")
        return path

    sizes = {}
    for n in (4_000, 40_000):
        start = time.perf_counter()
        page = render_html(report_data(str(trace_of(n))))
        sizes[n] = len(page)
        assert time.perf_counter() - start < 30
    # Ten times the records, about the same page: lanes aggregated, detail for the top only.
    assert sizes[40_000] < 600_000 and sizes[40_000] < 1.3 * sizes[4_000]
    data = report_data(str(tmp_path / "big40000.jsonl"))
    timeline = data["timeline"]
    assert not timeline["marks_all"] and len(timeline["marks"]) <= 400
    assert len(timeline["lanes"]) == 49  # 48 busiest processes and one lane for the rest
    assert sum(map(sum, timeline["lane_count"])) == 40_000  # every pickle is in a lane


def test_the_network_check_sees_a_page_that_fetches(tmp_path):
    page = tmp_path / "fetches.html"
    page.write_text('<!DOCTYPE html><img src="http://192.0.2.1/x.png"><p>hi</p>')
    _, requested = browse(page, tmp_path)
    assert requested == ["http://192.0.2.1/x.png"]


def test_html_refuses_text_only_options(real_trace, tmp_path):
    proc = cli("report", str(real_trace), "--html", str(tmp_path / "r.html"), "--json")
    assert proc.returncode == 2 and "--html takes the whole trace" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_summary_trace_renders_from_its_aggregates(tmp_path):
    # Summary mode (docs/trace-format.md, `summary`): aggregates per kind and process, with the
    # largest pickles kept in full as exemplars, already counted in a summary.
    base = {"v": 1, "pid": 7, "process": "MainProcess", "start_method": "spawn"}
    records = [
        {**base, "event": "trace_start", "ts": 100.0, "seq": 0, "program": "s.py",
         "mode": "summary"},
        {**base, "event": "pickle", "ts": 100.5, "seq": 1, "channel": "pool.task",
         "size": 90_000, "duration_ns": 10, "type": "builtins.tuple", "exemplar": True},
        {**base, "event": "summary", "ts": 101.0, "seq": 2, "of": "pickle", "since": 100.0,
         "channel": "pool.task", "type": "builtins.tuple", "count": 1000, "bytes": 5_000_000,
         "min_size": 10, "max_size": 90_000, "duration_ns": 4_000_000,
         "sizes": [[10, 999], [90_000, 1]], "sizes_exact": True},
        {**base, "pid": 8, "process": "W-1", "event": "summary", "ts": 102.0, "seq": 0,
         "of": "pickle", "since": 101.0, "channel": "pool.result", "type": "builtins.int",
         "count": 1000, "bytes": 30_000, "duration_ns": 1_000_000,
         "sizes": [[30, 1000]], "sizes_exact": True},
    ]
    trace = tmp_path / "summary.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    timeline = report_data(str(trace))["timeline"]
    assert timeline["summary_mode"] and timeline["pickles"] == 2000  # the exemplar counted once
    assert sum(map(sum, timeline["lane_count"])) == 2000
    assert sum(map(sum, timeline["bytes"])) == 5_030_000
    # Spread over the interval each summary covers: W-1's in the second half only.
    w1 = [lane["proc"] for lane in timeline["lanes"]].index(timeline["pids"].index(8))
    assert sum(timeline["lane_bytes"][w1][:110]) == 0 and sum(timeline["lane_bytes"][w1]) == 30_000
    assert [m[1] for m in timeline["marks"]] == [90_000]  # the exemplar, as a dot
    out = tmp_path / "summary.html"
    out.write_text(render_html(report_data(str(trace))))
    dom, requested = browse(out, tmp_path)
    assert 'data-ready="1"' in dom and requested == []
    assert "A summary-mode trace (2 summary records)" in text_of(dom)


def test_a_real_summary_trace_adds_up_to_the_text_report(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    trace = tmp_path / "summary.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEDMP_")}
    subprocess.run([sys.executable, "-m", "tracedmp", "run", "--summary", "--trace", str(trace),
                    "prog.py"], cwd=tmp_path, env=env, check=True, timeout=120,
                   capture_output=True)
    data = report_data(str(trace))
    timeline = data["timeline"]
    assert timeline["summary_mode"] and timeline["summaries"] >= 3
    # The chart and the lanes hold exactly the pickles and bytes the text report counts.
    assert timeline["pickles"] == data["totals"]["count"] > 1000
    assert sum(map(sum, timeline["lane_bytes"])) == data["totals"]["bytes"]
    assert sum(map(sum, timeline["bytes"])) == data["totals"]["bytes"]
