"""Draw the overhead table as a chart (needs matplotlib: pip install 'tracedmp[plot]').

    python benchmarks/overhead.py --json results.json
    python benchmarks/plot.py results.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys


def main(src: str, out: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(src) as f:
        data = json.load(f)
    results = data["results"]
    names = list(results)
    columns = sorted({c for r in results.values() for c in r["summary"] if "/" in c},
                     key=lambda c: (not c.startswith("traced"), c))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.6))
    height = 0.8 / len(columns)
    for i, column in enumerate(columns):
        cells = [results[n]["summary"].get(column, {}) for n in names]
        values = [c.get("wall", float("nan")) for c in cells]
        # 95 % intervals of the medians, where the run had enough rounds for one
        intervals = [c.get("wall_interval") or (v, v) for c, v in zip(cells, values)]
        errors = [[v - lo for v, (lo, _) in zip(values, intervals)],
                  [hi - v for v, (_, hi) in zip(values, intervals)]]
        ax.barh([y + i * height for y in range(len(names))], values, height=height,
                label=column, xerr=errors, error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([y + height * (len(columns) - 1) / 2 for y in range(len(names))])
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("wall-time ratio (paired median and its 95 % interval; "
                  "1.0 = plain multiprocessing)")
    ax.set_title(f"tracedmp overhead, CPython {data['python']}, {data['cores']} cores, "
                 f"{data['date']}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
