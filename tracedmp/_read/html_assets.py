# ruff: noqa: E501  (the script and style sheet below are JavaScript and CSS, not Python)
"""The HTML report's style sheet and script, inlined into every page (no file is fetched).

The script reads the page's one JSON document and builds every element with ``textContent`` and
``createElementNS``: no text from the trace ever goes through ``innerHTML``.
"""

__all__ = ["CSS", "SCRIPT"]

CSS = r"""
:root { --fg:#1d2430; --muted:#5b6574; --line:#e3e7ee; --bg:#f6f7f9; --card:#fff;
  --accent:#2f6fde; --bad:#c62828; --warn:#a15c00; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1360px; margin:0 auto; padding:20px 28px 60px; }
h1 { font-size:22px; margin:4px 0 2px; font-weight:650; letter-spacing:-.01em; }
h2 { font-size:16px; margin:0 0 10px; font-weight:650; }
h3 { font-size:13px; margin:14px 0 6px; color:var(--muted); font-weight:600;
  text-transform:uppercase; letter-spacing:.04em; }
.sub { color:var(--muted); margin:0 0 14px; word-break:break-all; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:16px 18px; margin:14px 0; }
section.flash { animation:flash 1.4s ease-out; }
@keyframes flash { from { box-shadow:0 0 0 3px #2f6fde88; } to { box-shadow:none; } }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 12px; background:#fbfcfd; }
.card .k { font-size:11px; color:var(--muted); text-transform:uppercase; letter-spacing:.05em; }
.card .v { font-size:18px; font-weight:600; font-variant-numeric:tabular-nums;
  overflow-wrap:anywhere; }
.card.wide { grid-column:span 2; }
.card .v.long { font-size:14px; display:-webkit-box; -webkit-line-clamp:3;
  -webkit-box-orient:vertical; overflow:hidden; }
.note { background:#fff6e5; border:1px solid #f2d49b; color:#6b4700; border-radius:6px;
  padding:8px 12px; margin-top:10px; }
.bar { position:sticky; top:0; z-index:5; background:#ffffffee; backdrop-filter:blur(4px);
  border:1px solid var(--line); border-radius:8px; padding:8px 14px; display:flex; gap:18px;
  align-items:center; flex-wrap:wrap; }
.bar label { color:var(--muted); font-size:13px; }
select, button { font:inherit; font-size:13px; padding:3px 6px; border:1px solid #c9d0db;
  border-radius:5px; background:#fff; color:var(--fg); max-width:360px; }
button { cursor:pointer; }
button:hover { border-color:var(--accent); }
.findings { list-style:none; margin:0; padding:0; }
.findings li { border-left:4px solid var(--warn); background:#fffaf2; padding:8px 12px;
  margin:0 0 8px; border-radius:0 6px 6px 0; overflow-wrap:anywhere; }
.findings li.morebox { border:0; background:none; padding:0 0 0 12px; }
.findings li.none { border-left-color:#2e7d32; background:#f3faf3; }
.findings a, a.jump { color:var(--accent); cursor:pointer; text-decoration:none;
  margin-left:6px; white-space:nowrap; font-size:13px; }
.findings a:hover, a.jump:hover { text-decoration:underline; }
.tablewrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 10px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { font-weight:600; color:var(--muted); background:#f8f9fb; cursor:pointer;
  user-select:none; white-space:nowrap; position:relative; }
th:hover { color:var(--fg); }
th[aria-sort="ascending"]::after { content:" \25B2"; font-size:9px; }
th[aria-sort="descending"]::after { content:" \25BC"; font-size:9px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px;
  overflow-wrap:break-word; }
td.nw { white-space:nowrap; }
tr.hl td { background:#eef4ff; }
tbody tr:hover td { background:#f5f8fc; }
.empty { color:var(--muted); font-style:italic; }
.legend { display:flex; flex-wrap:wrap; gap:6px 16px; margin:6px 0 4px; font-size:12px; }
.legend span { display:inline-flex; align-items:center; gap:6px; }
.legend i { width:11px; height:11px; border-radius:2px; display:inline-block; }
svg { display:block; width:100%; height:auto; }
svg text { font-size:11px; fill:#5b6574; font-family:inherit; }
svg .lbl { fill:#1d2430; font-size:12px; }
.parts { margin:0; padding:0; list-style:none; }
.parts li { display:flex; gap:8px; align-items:baseline; }
.parts .track { flex:none; width:62px; }
.parts .pb { display:block; height:6px; background:#9db7e8; border-radius:3px; }
.parts .num { white-space:nowrap; color:var(--muted); }
td.brk { overflow-wrap:anywhere; min-width:150px; }
td.brk.widecol { min-width:300px; }
.hint { color:#1b5e20; }
.err { color:var(--bad); }
.two { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
.two > div { min-width:0; }
@media (max-width:900px) { .two { grid-template-columns:1fr; } }
footer { color:var(--muted); font-size:12px; margin-top:20px; }
.noscript { padding:20px; }
"""

SCRIPT = r"""
"use strict";
(function () {
const D = JSON.parse(document.getElementById("tracedmp-data").textContent);
const T = D.timeline;
const app = document.getElementById("app");
const PALETTE = ["#4e79a7","#f28e2b","#59a14f","#e15759","#76b7b2","#edc948","#b07aa1",
  "#ff9da7","#9c755f","#6f8fb3","#bab0ac"];
const state = { channel: "", proc: "", highlight: null };
const redraws = [];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const k in (attrs || {})) {
    if (k === "class") e.className = attrs[k];
    else if (k === "text") e.textContent = attrs[k];
    else e.setAttribute(k, attrs[k]);
  }
  for (const kid of kids) if (kid != null) e.append(kid instanceof Node ? kid : String(kid));
  return e;
}
function sv(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  return e;
}
function tip(node, text) { node.append(sv("title", {}, text)); return node; }
function fmtBytes(n) {
  if (n == null) return "";
  for (const u of ["B", "KB", "MB", "GB"]) {
    if (Math.abs(n) < 1000 || u === "GB") return u === "B" ? n.toFixed(0) + " B" : n.toFixed(1) + " " + u;
    n /= 1000;
  }
}
function fmtNs(ns) {
  if (ns == null) return "";
  if (ns >= 1e9) return (ns / 1e9).toFixed(2) + " s";
  if (ns >= 1e6) return (ns / 1e6).toFixed(1) + " ms";
  return (ns / 1e3).toFixed(0) + " \u00b5s";
}
function fmtS(s) { return s == null ? "" : (s < 10 ? s.toFixed(3) : s.toFixed(1)) + " s"; }
function fmtInt(n) { return n == null ? "" : Number(n).toLocaleString("en-US"); }
function str(v) { return v == null ? "" : String(v); }
function colorOf(channel) {
  const i = T.chart_channels.indexOf(channel);
  return PALETTE[(i < 0 ? T.chart_channels.length - 1 : i) % PALETTE.length];
}
function procName(p) {
  const pid = T.pids[p];
  return str(T.processes[p]) + (pid != null ? " (" + pid + ")" : "");
}
function pidSelected() {
  return state.proc === "" ? null : T.pids[Number(state.proc)];
}

function section(id, title, note) {
  const s = el("section", { id: id });
  s.append(el("h2", { text: title }));
  if (note) s.append(el("p", { class: "sub", text: note }));
  app.append(s);
  return s;
}
function jump(id) {
  const s = document.getElementById(id);
  if (!s) return;
  s.scrollIntoView({ behavior: "smooth", block: "start" });
  s.classList.remove("flash"); void s.offsetWidth; s.classList.add("flash");
}

// A table sortable by column; `keep(row)` filters, `mark(row)` highlights.
function table(parent, cols, rows, opts) {
  opts = opts || {};
  const wrap = el("div", { class: "tablewrap" });
  const t = el("table");
  const head = el("tr");
  const body = el("tbody");
  if (!rows.length && opts.none) { parent.append(el("p", { class: "empty", text: opts.none })); return; }
  let sortKey = opts.sort || null, desc = !opts.asc;
  cols.forEach(c => {
    const th = el("th", { class: c.num ? "num" : "", text: c.label, scope: "col" });
    if (c.title) th.title = c.title;
    th.addEventListener("click", () => {
      if (sortKey === c.key) desc = !desc; else { sortKey = c.key; desc = !!c.num; }
      draw();
    });
    c.th = th;
    head.append(th);
  });
  t.append(el("thead", {}, head), body);
  wrap.append(t);
  parent.append(wrap);
  const count = el("p", { class: "sub" });
  parent.append(count);
  function value(r, c) { return c.sortValue ? c.sortValue(r) : r[c.key]; }
  function draw() {
    let shown = rows.filter(r => !opts.keep || opts.keep(r));
    if (sortKey) {
      const c = cols.find(c => c.key === sortKey);
      shown = shown.slice().sort((a, b) => {
        const x = value(a, c), y = value(b, c);
        const r = (typeof x === "number" && typeof y === "number") ? x - y
          : str(x).localeCompare(str(y));
        return desc ? -r : r;
      });
    }
    cols.forEach(c => c.th.setAttribute("aria-sort",
      c.key === sortKey ? (desc ? "descending" : "ascending") : "none"));
    body.replaceChildren();
    for (const r of shown) {
      const tr = el("tr");
      if (opts.mark && opts.mark(r)) tr.className = "hl";
      for (const c of cols) {
        const td = el("td", { class: (c.num ? "num " : "") + (c.mono ? "mono " : "") + (c.nw ? "nw " : "") +
          (c.brk ? "brk " : "") + (c.widecol ? "widecol" : "") });
        const v = c.render ? c.render(r) : (c.fmt ? c.fmt(r[c.key], r) : str(r[c.key]));
        if (v instanceof Node) td.append(v); else td.textContent = v;
        tr.append(td);
      }
      body.append(tr);
    }
    if (!shown.length) body.append(el("tr", {}, el("td", { class: "empty",
      colspan: String(cols.length), text: rows.length ? "no row matches the filter" : "none" })));
    count.textContent = rows.length > shown.length
      ? shown.length + " of " + rows.length + " rows (filtered)" : "";
    count.style.display = count.textContent ? "" : "none";
  }
  draw();
  redraws.push(draw);
  return draw;
}
const sizeCols = [
  { key: "count", label: "count", num: true, fmt: fmtInt },
  { key: "bytes", label: "bytes", num: true, fmt: fmtBytes },
  { key: "median_size", label: "median", num: true, fmt: fmtBytes },
  { key: "p95_size", label: "p95", num: true, fmt: fmtBytes },
  { key: "max_size", label: "max", num: true, fmt: fmtBytes },
  { key: "pickle_ns", label: "pickling", num: true, fmt: fmtNs },
];

// ---- headline
const run = (D.runs || [])[0] || {};
const top = el("header");
top.append(el("h1", { text: "tracedmp report" + (run.program ? ": " + run.program : "") }));
top.append(el("p", { class: "sub", text: str(D.trace) }));
app.append(top);
const head = section("headline", "Headline");
const cards = el("div", { class: "cards" });
function card(k, v, wide) {
  cards.append(el("div", { class: "card" + (wide ? " wide" : ""), "data-figure": k },
    el("div", { class: "k", text: k }), el("div", { class: "v" + (v.length > 40 ? " long" : ""),
      text: v, title: v })));
}
const tot = D.totals;
card("program", str(run.program || "?"), true);
card("Python", str(run.python || "?"));
card("pickler", str(run.pickler || "?"));
card("start methods", D.start_methods.join(", ") || "none");
card("records", fmtInt(D.records));
card("pickles", fmtInt(tot.count));
card("bytes pickled", fmtBytes(tot.bytes));
card("pickling time", fmtNs(tot.pickle_ns));
card("processes", fmtInt(D.processes));
card("span", fmtS(D.span_s));
card("failures", fmtInt(T.failure_count));
head.append(cards);
if (run.tracedmp) head.append(el("p", { class: "sub", style: "margin:10px 0 0",
  text: "traced by tracedmp " + run.tracedmp + (D.runs.length > 1 ? "; " + D.runs.length +
  " runs in this trace" : "") }));
if (D.lost_note) head.append(el("div", { class: "note", text: "This trace lost records: " +
  D.lost_note + " (see `tracedmp report` for which processes)." }));
else if (D.truncated_line) head.append(el("div", { class: "note",
  text: "line " + D.truncated_line + " was cut short and is left out" }));

// ---- filters
const bar = el("div", { class: "bar", id: "filters" });
const chSel = el("select", { id: "filter-channel", "aria-label": "channel" },
  el("option", { value: "", text: "all channels" }));
T.channels.forEach(c => chSel.append(el("option", { value: c, text: c })));
const prSel = el("select", { id: "filter-process", "aria-label": "process" },
  el("option", { value: "", text: "all processes" }));
T.lanes.forEach(l => { if (l.proc >= 0) prSel.append(el("option", { value: String(l.proc),
  text: procName(l.proc) })); });
const reset = el("button", { type: "button", text: "clear filters" });
bar.append(el("label", {}, "Channel ", chSel), el("label", {}, "Process ", prSel), reset);
const barNote = el("span", { class: "sub", style: "margin:0" });
bar.append(barNote);
app.append(bar);
function refresh() {
  barNote.textContent = (state.channel || state.proc)
    ? "filtering the chart, the lanes and the per-record tables" : "";
  redraws.forEach(f => f());
}
chSel.addEventListener("change", () => { state.channel = chSel.value; state.highlight = null; refresh(); });
prSel.addEventListener("change", () => { state.proc = prSel.value; refresh(); });
reset.addEventListener("click", () => { state.channel = state.proc = ""; state.highlight = null;
  chSel.value = prSel.value = ""; refresh(); });
// A link may carry filters: report.html#filter?channel=pool.task&pid=1234
if (location.hash.startsWith("#filter?")) {
  const q = new URLSearchParams(location.hash.slice(8));
  if (T.channels.indexOf(q.get("channel")) >= 0) state.channel = chSel.value = q.get("channel");
  const lane = T.lanes.find(l => l.pid != null && String(l.pid) === q.get("pid"));
  if (lane) state.proc = prSel.value = String(lane.proc);
}
function keepChannel(c) { return !state.channel || c === state.channel; }
function keepPid(pid) { const p = pidSelected(); return p == null || pid === p; }

// ---- findings
const fs = section("findings", "Findings");
const ul = el("ul", { class: "findings" });
const LINKS = { largest: "the pickles behind it", value: "the functions sent by value",
  failures: "the failures", starts: "the process starts", chart: "the chart",
  headline: "the headline" };
if (!D.findings.length) ul.append(el("li", { class: "none",
  text: "None of the known problems shows in this trace." }));
const perKind = {};
D.findings.forEach(f => {
  const kind = str(f.kind), seen = perKind[kind] = (perKind[kind] || 0) + 1;
  const li = el("li", { "data-kind": kind }, str(f.message));
  if (seen > 3) {  // a kind that repeats (one finding per function, say) shows 3, then a button
    li.hidden = true;
    if (seen === 4) {
      const more = D.findings.filter(g => str(g.kind) === kind).length - 3;
      const button = el("button", { type: "button", class: "more",
        text: "show " + more + " more like the above" });
      button.addEventListener("click", () => {
        ul.querySelectorAll("li[hidden]").forEach(n => { if (n.dataset.kind === kind) n.hidden = false; });
        button.remove();
      });
      ul.append(el("li", { class: "morebox" }, button));
    }
  }
  const link = f.link || {};
  const a = el("a", { href: "#" + (link.section || "headline"),
    text: "\u2192 " + (LINKS[link.section] || "details") });
  a.addEventListener("click", ev => {
    ev.preventDefault();
    if (link.channel && T.channels.indexOf(link.channel) >= 0) {
      state.channel = link.channel; chSel.value = link.channel;
    }
    state.highlight = link.name || null;
    refresh();
    jump(link.section || "headline");
  });
  li.append(" ", a);
  ul.append(li);
});
fs.append(ul);

// ---- chart: bytes and pickling time per time bucket, stacked by channel
const chart = section("chart", "Over time",
  "Bytes pickled and time spent pickling per " + fmtS(T.bucket_s).replace(" s", "") +
  " s interval, stacked by channel (pickles counted when they finished).");
const legend = el("div", { class: "legend" });
T.chart_channels.forEach((c, i) => legend.append(el("span", {},
  el("i", { style: "background:" + PALETTE[i % PALETTE.length] }), c)));
chart.append(legend);
const chartBox = el("div", { class: "two" });
chart.append(chartBox);
const bytesBox = el("div"), nsBox = el("div");
chartBox.append(bytesBox, nsBox);
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function timeTicks(svg, x0, w, y, span) {
  const step = niceMax(span / 6);
  for (let t = 0; t <= span + 1e-12; t += step) {
    const x = x0 + w * t / span;
    svg.append(sv("line", { x1: x, x2: x, y1: y, y2: y + 4, stroke: "#aab2bf" }));
    svg.append(sv("text", { x: x, y: y + 16, "text-anchor": "middle" },
      (step < 0.01 ? t.toFixed(4) : step < 1 ? t.toFixed(2) : t.toFixed(0)) + " s"));
  }
}
function drawSeries(box, title, series, fmt) {
  box.replaceChildren(el("h3", { text: title }));
  const W = 640, H = 230, L = 62, R = 10, TOP = 10, B = 26;
  const w = W - L - R, h = H - TOP - B, n = T.buckets;
  const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
  let rows = series.map((s, i) => ({ s: s, i: i, name: T.chart_channels[i] }));
  const p = pidSelected();
  if (p != null) {  // one process: its lane's buckets (all channels; bytes only)
    const lane = T.lanes.findIndex(l => l.pid === p);
    rows = (series === T.bytes && lane >= 0)
      ? [{ s: T.lane_bytes[lane], i: T.chart_channels.length - 1, name: procName(T.lanes[lane].proc) }]
      : [];
  } else if (state.channel) rows = rows.filter(r => r.name === state.channel);
  const sums = new Array(n).fill(0);
  rows.forEach(r => r.s.forEach((v, b) => { sums[b] += v; }));
  const max = niceMax(Math.max(0, ...sums));
  for (let k = 0; k <= 5; k++) {
    const y = TOP + h - h * k / 5;
    svg.append(sv("line", { x1: L, x2: L + w, y1: y, y2: y, stroke: k ? "#edf0f4" : "#aab2bf" }));
    svg.append(sv("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, fmt(max * k / 5)));
  }
  const bw = w / n, base = new Array(n).fill(0);
  rows.forEach(r => {
    const color = p != null ? "#4e79a7" : PALETTE[r.i % PALETTE.length];
    r.s.forEach((v, b) => {
      if (!v) return;
      const bh = h * v / max;
      const y = TOP + h - base[b] - bh;
      base[b] += bh;
      svg.append(tip(sv("rect", { x: (L + b * bw).toFixed(2), y: y.toFixed(2),
        width: Math.max(bw - 0.3, 0.6).toFixed(2), height: Math.max(bh, 0.5).toFixed(2), fill: color }),
        r.name + ": " + fmt(v) + " at " + fmtS(b * T.bucket_s) + "\u2013" + fmtS((b + 1) * T.bucket_s)));
    });
  });
  timeTicks(svg, L, w, TOP + h, T.span);
  if (!rows.length) svg.append(sv("text", { x: L + w / 2, y: TOP + h / 2, "text-anchor": "middle" },
    "no data for this filter"));
  box.append(svg);
}
function drawChart() {
  drawSeries(bytesBox, "Bytes pickled", T.bytes, fmtBytes);
  drawSeries(nsBox, "Pickling time", T.ns, fmtNs);
}
drawChart();
redraws.push(drawChart);

// ---- lanes
const lanesSec = section("lanes", "Processes over time",
  (T.summary_mode ? "A summary-mode trace (" + fmtInt(T.summaries) + " summary records): shading " +
    "shows the bytes each process pickled per interval, spread over the interval each summary " +
    "covers; the dots are the pickles it kept in full (the largest of each kind); " :
   T.marks_all ? "Every pickle is a dot sized by its bytes, colored by channel; "
    : "Shading shows the bytes each process pickled per interval; the " + T.marks.length +
      " largest of " + fmtInt(T.pickles) + " pickles are dots sized by bytes; ") +
  "\u25BC a process start (in the parent) and \u25B6 where the child began; \u2716 a pickling failure.");
const lanesBox = el("div");
lanesSec.append(lanesBox);
function drawLanes() {
  const p = pidSelected();
  const lanes = T.lanes.map((l, i) => ({ l: l, i: i })).filter(x => p == null || x.l.pid === p);
  const W = 1300, L = 230, R = 16, LH = lanes.length > 16 ? 20 : 30, TOP = 6;
  const w = W - L - R, H = TOP + lanes.length * LH + 28;
  const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "process lanes" });
  const X = t => L + w * Math.min(Math.max(t, 0), T.span) / T.span;
  const row = {};
  lanes.forEach((x, k) => { row[x.l.proc] = k; });
  const maxSize = Math.max(1, ...T.marks.map(m => m[1]));
  const maxBucket = Math.max(1, ...T.lane_bytes.map(b => Math.max(...b)));
  lanes.forEach((x, k) => {
    const y = TOP + k * LH, l = x.l;
    if (k % 2) svg.append(sv("rect", { x: 0, y: y, width: W, height: LH, fill: "#fafbfc" }));
    const label = l.proc >= 0 ? procName(l.proc) : l.process;
    svg.append(tip(sv("text", { x: 8, y: y + LH / 2 + 4, class: "lbl" },
      label.length > 32 ? label.slice(0, 31) + "\u2026" : label),
      label + ": " + fmtInt(l.count) + " pickles, " + fmtBytes(l.bytes)));
    svg.append(sv("rect", { x: X(l.from), y: y + LH / 2 - 1, width: Math.max(X(l.to) - X(l.from), 1),
      height: 2, fill: "#cfd6e0" }));
    if (!T.marks_all) {
      const bw = w / T.buckets;
      T.lane_bytes[x.i].forEach((v, b) => {
        if (!v) return;
        const a = 0.12 + 0.88 * Math.sqrt(v / maxBucket);
        svg.append(tip(sv("rect", { x: (L + b * bw).toFixed(2), y: y + 5, width: Math.max(bw, 0.6).toFixed(2),
          height: LH - 10, fill: "#4e79a7", "fill-opacity": a.toFixed(2) }),
          fmtInt(T.lane_count[x.i][b]) + " pickles, " + fmtBytes(v) + " at " + fmtS(b * T.bucket_s)));
      });
    }
  });
  T.marks.forEach(m => {
    const [t, size, ns, c, proc, seq] = m;
    const k = row[proc] != null ? row[proc] : (p == null ? row[-1] : null);
    if (k == null || !keepChannel(T.channels[c])) return;
    const r = 2 + Math.min(7, LH / 2 - 4) * Math.sqrt(size / maxSize);
    svg.append(tip(sv("circle", { cx: X(t).toFixed(2), cy: TOP + k * LH + LH / 2, r: r.toFixed(2),
      fill: colorOf(T.channels[c]), "fill-opacity": "0.75", stroke: "#fff", "stroke-width": "0.6" }),
      T.channels[c] + ": " + fmtBytes(size) + ", " + fmtNs(ns) + " at " + fmtS(t) + " (" +
      procName(proc) + ", seq " + seq + ")"));
  });
  T.starts.forEach(s => {
    if (s.t == null) return;
    const k = row[s.proc] != null ? row[s.proc] : row[-1];
    if (k != null) svg.append(tip(sv("path", { d: "M" + (X(s.t) - 5) + " " + (TOP + k * LH + 2) + "h10l-5 7z",
      fill: "#2e7d32" }), "started " + str(s.child) + " (" + str(s.method) + ")" +
      (s.pickled ? ", launch data " + fmtBytes(s.size) : ", nothing pickled") + " at " + fmtS(s.t)));
    const child = T.lanes.find(l => l.pid != null && l.pid === s.child_pid);
    if (child && row[child.proc] != null) svg.append(tip(sv("path", {
      d: "M" + X(s.t) + " " + (TOP + row[child.proc] * LH + LH / 2 - 5) + "l8 5l-8 5z", fill: "#2e7d32" }),
      str(s.child) + " started by " + procName(s.proc) + " at " + fmtS(s.t)));
  });
  T.failures.forEach(f => {
    if (f.t == null || !keepChannel(f.channel)) return;
    const k = row[f.proc] != null ? row[f.proc] : row[-1];
    if (k == null) return;
    const cx = X(f.t), cy = TOP + k * LH + LH / 2;
    svg.append(tip(sv("path", { d: "M" + (cx - 5) + " " + (cy - 5) + "l10 10m0 -10l-10 10",
      stroke: "#c62828", "stroke-width": "2.4", "stroke-linecap": "round" }),
      "failed: " + str(f.type) + " on " + str(f.channel) + ": " + str(f.error)));
  });
  timeTicks(svg, L, w, TOP + lanes.length * LH, T.span);
  lanesBox.replaceChildren(svg);
}
if (T.pickles || T.starts.length || T.failures.length) { drawLanes(); redraws.push(drawLanes); }
else lanesBox.append(el("p", { class: "empty", text: "no per-record times in this trace" }));

// ---- tables by group
const groups = section("tables", "Where the bytes went");
const grid = el("div", { class: "two" });
groups.append(grid);
const wide = el("div");
groups.append(wide);
function groupTable(parent, title, rows, name, keep) {
  const box = el("div");
  box.append(el("h3", { text: title }));
  table(box, [{ key: "name", label: name, mono: true }].concat(sizeCols), rows,
    { sort: "bytes", keep: keep });
  parent.append(box);
}
groupTable(grid, "By channel", D.by_channel, "channel", r => keepChannel(r.name));
groupTable(grid, "By start method", D.by_start_method, "start method");
groupTable(wide, "By type (top-level object)", D.by_type, "type");
groupTable(wide, "By callable (pickles that name it)", D.by_callable, "callable");

// ---- largest pickles, with their parts
function partsList(parts) {
  let items = [];
  if (Array.isArray(parts)) items = parts.map(p => {
    if (Array.isArray(p)) return [str(p[0]), Number(p[1])];
    if (p && typeof p === "object") return [str(p.path != null ? p.path : p.name != null ? p.name
      : p.type != null ? p.type : p.key != null ? p.key : "?") + (p.type != null && (p.path != null || p.name != null)
      ? " (" + p.type + ")" : ""), Number(p.size != null ? p.size : p.bytes)];
    return [str(p), NaN];
  });
  else if (parts && typeof parts === "object") items = Object.keys(parts).map(k => {
    const v = parts[k];
    return [k, Number(v && typeof v === "object" ? (v.size != null ? v.size : v.bytes) : v)];
  });
  else if (parts != null) return document.createTextNode(str(parts));
  if (!items.length) return "";
  items.sort((a, b) => (isNaN(b[1]) ? -1 : b[1]) - (isNaN(a[1]) ? -1 : a[1]));
  const max = Math.max(1, ...items.map(i => isNaN(i[1]) ? 0 : i[1]));
  const list = el("ul", { class: "parts" });
  items.slice(0, 6).forEach(([name, size]) => list.append(el("li", {},
    el("span", { class: "track" }, el("span", { class: "pb",
      style: "width:" + (isNaN(size) ? 0 : Math.max(2, 60 * size / max)).toFixed(0) + "px" })),
    el("span", { class: "mono", text: name }), el("span", { class: "num", text: isNaN(size) ? "" : fmtBytes(size) }))));
  if (items.length > 6) list.append(el("li", { class: "sub", text: "+" + (items.length - 6) + " more" }));
  return list;
}
const largest = section("largest", "Largest pickles",
  "The largest single pickles (identical ones counted together), with the record behind each " +
  "(process and seq) and where its bytes went when the trace attributes them.");
const hasParts = D.largest.some(r => r.parts != null);
table(largest, [
  { key: "size", label: "size", num: true, fmt: fmtBytes },
  { key: "count", label: "times", num: true, fmt: fmtInt },
  { key: "channel", label: "channel", mono: true },
  { key: "type", label: "type", mono: true, brk: true },
  { key: "process", label: "process", render: r => str(r.process) + " (" + str(r.pid) + ")" },
  { key: "seq", label: "seq", num: true, fmt: v => v == null ? "" : String(v) },
  { key: "ts", label: "at", num: true, sortValue: r => r.ts == null ? -1 : r.ts,
    render: r => r.ts == null ? "" : fmtS(r.ts - T.t0) },
  { key: "duration_ns", label: "pickling", num: true, fmt: fmtNs },
].concat(hasParts ? [{ key: "parts", label: "parts (where the bytes are)", sortValue: r => 0, render: r => {
  const list = partsList(r.parts);
  return r.parts_partial && list instanceof Node
    ? el("div", {}, list, el("span", { class: "sub", text: "sizes are upper bounds (read stopped early)" })) : list;
} }] : []).concat([
  { key: "callables", label: "names", mono: true, brk: true, widecol: true, sortValue: r => (r.callables || []).length,
    render: r => {
      const names = (r.callables || []).map(c => str(c.name) + (c.kind === "value" ? " (by value)" : ""));
      const span = el("span", { text: names.slice(0, 3).join(", ") +
        (names.length > 3 ? ", +" + (names.length - 3) + " more" : "") });
      if (names.length > 3) span.title = names.join("\n");
      return span;
    } },
]),
  D.largest, { sort: "size", keep: r => keepChannel(r.channel) && keepPid(r.pid) });

// ---- by value
const byValue = section("value", "Sent by value",
  "Functions and classes whose definition travelled (cloudpickle serialized it).");
table(byValue, [{ key: "name", label: "callable", mono: true }].concat(sizeCols), D.by_value,
  { sort: "bytes", mark: r => state.highlight != null && r.name === state.highlight,
    none: "Nothing was sent by value." });

// ---- failures
const fails = section("failures", "Pickling failures",
  T.failure_count > T.failures.length ? "The first " + T.failures.length + " of " +
  fmtInt(T.failure_count) + " failures, one by one; the table below the first counts them all." : null);
table(fails, [
  { key: "t", label: "at", num: true, fmt: fmtS },
  { key: "process", label: "process", nw: true, render: r => str(r.process) + " (" + str(r.pid) + ")" },
  { key: "seq", label: "seq", num: true },
  { key: "channel", label: "channel", mono: true },
  { key: "type", label: "type", mono: true },
  { key: "error", label: "error", render: r => el("span", { class: "err", text: str(r.error) }) },
  { key: "path", label: "path", mono: true, fmt: v => v == null ? "(top level)" : v },
  { key: "hint", label: "fix", render: r => el("span", { class: "hint", text: str(r.hint) }) },
], T.failures, { sort: "t", asc: true, none: "No pickling failed.",
  keep: r => keepChannel(r.channel) && keepPid(r.pid) });
if (D.errors.length) {
  fails.append(el("h3", { text: "Distinct failures" }));
  table(fails, [
    { key: "count", label: "count", num: true, fmt: fmtInt },
    { key: "channel", label: "channel", mono: true },
    { key: "type", label: "type", mono: true },
    { key: "error", label: "error", render: r => el("span", { class: "err", text: str(r.error) }) },
    { key: "path", label: "path", mono: true, fmt: v => v == null ? "(top level)" : v },
    { key: "hint", label: "fix", render: r => el("span", { class: "hint", text: str(r.hint) }) },
    { key: "processes", label: "processes", render: r => (r.processes || []).join(", ") },
  ], D.errors, { sort: "count", keep: r => keepChannel(r.channel) });
}

// ---- process starts
const starts = section("starts", "Process starts",
  T.start_count > T.starts.length ? "The " + T.starts.length + " largest launches of " +
  fmtInt(T.start_count) + " process starts." : null);
table(starts, [
  { key: "start_method", label: "start method", mono: true },
  { key: "count", label: "started", num: true, fmt: fmtInt },
  { key: "pickled", label: "launch data", render: r => r.pickled ? "pickled" : "nothing pickled (fork)" },
  { key: "bytes", label: "launch bytes", num: true, fmt: (v, r) => r.pickled ? fmtBytes(v) : "" },
  { key: "default_method", label: "default method", num: true, fmt: v => v ? fmtInt(v) : "" },
  { key: "targets", label: "targets", mono: true, sortValue: r => Object.keys(r.targets).length,
    render: r => Object.keys(r.targets).slice(0, 4).map(k => k + " \u00d7" + r.targets[k]).join(", ") },
], D.process_starts, { sort: "count" });
starts.append(el("h3", { text: "Each start" }));
table(starts, [
  { key: "t", label: "at", num: true, fmt: fmtS },
  { key: "child", label: "child", render: r => str(r.child) + (r.child_pid != null ? " (" + r.child_pid + ")" : "") },
  { key: "method", label: "start method", mono: true },
  { key: "size", label: "launch size", num: true, fmt: (v, r) => r.pickled ? fmtBytes(v) : "\u2014" },
  { key: "target", label: "target", mono: true, fmt: v => v == null ? "(run method)" : v },
  { key: "process", label: "started by", render: r => procName(r.proc) },
], T.starts, { sort: "t", asc: true, none: "No process was started while tracing.",
  keep: r => keepPid(r.pid) || keepPid(r.child_pid) });
if ((D.spawn_problems || []).length) {
  starts.append(el("h3", { text: "Would not start under spawn or forkserver" }));
  table(starts, [
    { key: "child", label: "child" }, { key: "target", label: "target", mono: true },
    { key: "error", label: "error", render: r => el("span", { class: "err", text: str(r.error) }) },
    { key: "path", label: "path", mono: true, fmt: v => v == null ? "(top level)" : v },
    { key: "hint", label: "fix", render: r => el("span", { class: "hint", text: str(r.hint) }) },
  ], D.spawn_problems);
}

// ---- libraries, unpickling, summary records
if ((D.parallel || []).length || (D.arrays || []).length || (D.untraced || []).length) {
  const lib = section("libraries", "joblib and other engines");
  if (D.parallel.length) table(lib, [{ key: "library", label: "library" },
    { key: "backend", label: "backend", mono: true }, { key: "calls", label: "calls", num: true },
    { key: "pickles", label: "pickled", fmt: v => v === false ? "no (threads or this process)" :
      v == null ? "through channels not traced" : "yes" }], D.parallel, { sort: "calls" });
  if (D.arrays.length) table(lib, [{ key: "nbytes", label: "array", num: true, fmt: fmtBytes },
    { key: "dtype", label: "dtype", mono: true }, { key: "sent_as", label: "sent as" },
    { key: "messages", label: "messages", num: true }, { key: "bytes", label: "bytes", num: true, fmt: fmtBytes },
    { key: "channel", label: "channel", mono: true }], D.arrays, { sort: "nbytes",
      keep: r => keepChannel(r.channel) });
  if (D.untraced.length) table(lib, [{ key: "engine", label: "not traced", mono: true },
    { key: "processes", label: "imported by", render: r => r.processes.join(", ") }], D.untraced);
}
if (D.dask && (D.dask.channels || []).length) {
  const dk = section("dask", "Dask distributed",
    "what distributed.protocol serialized to send; out of band: pickle protocol 5 buffers and " +
    "Dask's own serializers' frames");
  table(dk, [{ key: "channel", label: "channel", mono: true },
    { key: "count", label: "messages", num: true },
    { key: "bytes", label: "bytes", num: true, fmt: fmtBytes },
    { key: "buffer_bytes", label: "out of band", num: true, fmt: fmtBytes },
    { key: "by_value", label: "by value", num: true }], D.dask.channels,
    { sort: "bytes", keep: r => keepChannel(r.channel) });
  if ((D.dask.prefixes || []).length) table(dk, [
    { key: "prefix", label: "task prefix", mono: true }, { key: "channel", label: "channel", mono: true },
    { key: "count", label: "messages", num: true },
    { key: "bytes", label: "bytes", num: true, fmt: fmtBytes }], D.dask.prefixes,
    { sort: "bytes", keep: r => keepChannel(r.channel) });
  if ((D.dask.large_graphs || []).length) table(dk, [
    { key: "size", label: "graph", num: true, fmt: fmtBytes }, { key: "type", label: "type", mono: true },
    { key: "part", label: "largest part", mono: true, sortValue: r => r.part ? r.part.size : 0,
      render: r => el("span", { text: r.part ? r.part.path + " (" + r.part.type + ")" : "" }) }],
    D.dask.large_graphs, { sort: "size" });
}
if (D.unpickles) {
  const u = D.unpickles;
  section("unpickles", "Unpickling", fmtInt(u.count) + " loads, " + fmtBytes(u.bytes) + ", " +
    fmtNs(u.pickle_ns));
}
app.append(el("footer", { text: "Generated " + D.generated + " by tracedmp" +
  (run.tracedmp ? " " + run.tracedmp : "") + " from " + fmtInt(D.records) +
  " records. This file is self-contained: it loads nothing from anywhere." }));
if (state.channel || state.proc) refresh();
document.body.setAttribute("data-ready", "1");
})();
"""
