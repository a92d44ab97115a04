"""The HTML report: the JSON report rendered for people, as one self-contained file.

Everything comes from the report dict (the same one `--report` writes), so the two never
disagree. The file has no external references — plots are inline base64 PNGs drawn with
matplotlib's Agg backend, styles are inline — so it can be attached to a CI run or mailed and
still open offline.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..ir.files import atomic_write_text
from .plots import plotting

MAX_BARS = 60
STRUCTURAL = "not carried through"


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib.pyplot as plt  # inside `plotting()` (see `render`)

    return plt


def _short(name: str, n: int = 38) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _prunable(report: dict) -> list[dict]:
    return [g for g in report["groups"] if g["frozen_reason"] is None][:MAX_BARS]


def cost_chart(report: dict) -> str:
    """Params, MACs, file size and (when measured) latency after pruning, as % of before."""
    plt = _plt()
    items = [(k, report[k]) for k in ("params", "macs", "file_bytes") if report.get(k)]
    if report.get("latency_ms"):
        items.append(("latency", report["latency_ms"]))
    labels = [k for k, _ in items]
    pct = [100.0 * v["after"] / v["before"] if v.get("before") else 100.0 for _, v in items]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(items)))
    ax.barh(labels, [100] * len(items), color="#d9d9d9", label="before")
    ax.barh(labels, pct, color="#3b7dd8", label="after")
    for y, p in enumerate(pct):
        ax.text(min(p, 100) + 1, y, f"{p:.0f}%", va="center", fontsize=9)
    ax.set_xlim(0, 115)
    ax.invert_yaxis()
    ax.set_xlabel("% of the original model")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Cost after pruning")
    return _fig_png(fig)


def width_chart(report: dict) -> str | None:
    """Width of every prunable group before and after."""
    groups = _prunable(report)
    if not groups:
        return None
    plt = _plt()
    names = [_short(g["name"]) for g in groups]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.28 * len(groups)))
    ax.barh(names, [g["size_before"] for g in groups], color="#d9d9d9", label="before")
    ax.barh(names, [g["size_after"] for g in groups], color="#3b7dd8", label="after")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("units (channels / heads)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Group widths")
    return _fig_png(fig)


def score_chart(report: dict) -> str | None:
    """Score distribution per group: box plots of per-unit scores when the report carries them
    (optional `scores` key), else the min–max range with the mean."""
    groups = [g for g in _prunable(report) if g.get("scores") or g.get("score_stats")]
    if not groups:
        return None
    plt = _plt()
    names = [_short(g["name"]) for g in groups]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.28 * len(groups)))
    if all(g.get("scores") for g in groups):
        ax.boxplot([g["scores"] for g in groups], vert=False, widths=0.6,
                   flierprops={"markersize": 3})
        ax.set_yticks(range(1, len(groups) + 1), names)
        ax.set_ylim(len(groups) + 0.5, 0.5)
    else:
        st = [g["score_stats"] for g in groups]
        y = list(range(len(groups)))
        ax.hlines(y, [s["min"] for s in st], [s["max"] for s in st], color="#3b7dd8", lw=3)
        ax.plot([s["mean"] for s in st], y, "k|", markersize=10)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel(f"unit score ({report.get('criterion', '')})")
    ax.set_title("Importance scores per group")
    return _fig_png(fig)


def latency_chart(report: dict) -> str | None:
    lat = report.get("latency_ms")
    if not lat:
        return None
    plt = _plt()
    med = [lat["before"], lat["after"]]
    p90 = [lat.get("p90_before", lat["before"]), lat.get("p90_after", lat["after"])]
    fig, ax = plt.subplots(figsize=(5, 2.2))
    ax.barh(["before", "after"], med, color=["#d9d9d9", "#3b7dd8"],
            xerr=[[0, 0], [p - m for p, m in zip(p90, med)]], capsize=4)
    ax.invert_yaxis()
    ax.set_xlabel("ms per run (median, whisker to p90)")
    ax.set_title(f"ONNX Runtime latency — speedup {lat.get('speedup', med[0] / med[1]):.2f}x")
    return _fig_png(fig)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _row(cells, tag="td") -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(_fmt(c))}</{tag}>" for c in cells) + "</tr>"


def _change(d: dict) -> str:
    b, a = d.get("before"), d.get("after")
    if not b or a is None:
        return "–"
    return f"{(1 - a / b) * 100:.1f}% fewer" if a <= b else f"{(a / b - 1) * 100:.1f}% more"


def summary_rows(report: dict) -> list[list]:
    rows = [["params", report["params"]["before"], report["params"]["after"],
             _change(report["params"])],
            ["MACs", report["macs"]["before"], report["macs"]["after"], _change(report["macs"])],
            ["file bytes", report["file_bytes"]["before"], report["file_bytes"]["after"],
             _change(report["file_bytes"])]]
    lat = report.get("latency_ms")
    if lat:
        rows.append(["latency ms (median)", lat["before"], lat["after"],
                     f"{lat.get('speedup', lat['before'] / lat['after']):.2f}x faster"])
        if "p90_before" in lat:
            rows.append(["latency ms (p90)", lat["p90_before"], lat["p90_after"], ""])
    mem = report.get("memory_bytes")
    if mem:
        rows.append(["peak RSS bytes", mem["before"], mem["after"], _change(mem)])
    return rows


def _fidelity_html(f: dict | None) -> str:
    if not f:
        return "<p>Fidelity not measured.</p>"
    items = [("cosine similarity", f.get("value")), ("max abs diff", f.get("max_abs_diff")),
             ("top-1 agreement", f.get("top1_agreement")),
             ("drop", f.get("drop")), ("drop measured as", f.get("drop_metric")),
             ("inputs", f.get("inputs")), ("samples", f.get("samples"))]
    return "<table>" + "".join(_row([k, v]) for k, v in items if v is not None) + "</table>"


def _gates_html(gates: list[dict] | None) -> str:
    if not gates:
        return ""
    rows = "".join(
        f"<tr class='{'ok' if g['passed'] else 'bad'}'><td>{html.escape(g['gate'])}</td>"
        f"<td>{_fmt(g['measured'])}</td><td>{_fmt(g['limit'])}</td>"
        f"<td>{'passed' if g['passed'] else 'FAILED'}</td></tr>" for g in gates)
    return ("<h2>Gates</h2><table><tr><th>gate</th><th>measured</th><th>limit</th>"
            f"<th>result</th></tr>{rows}</table>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1100px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:13px}table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}.members{font-family:monospace;font-size:11px;
color:#555}tr.bad td{background:#fde0e0}tr.ok td{background:#e3f5e3}
.plots img{max-width:100%;margin:6px 12px 6px 0;vertical-align:top}
"""


def render(report: dict) -> str:
    """The full HTML document for a report dict."""
    e = html.escape
    t = report.get("target", {})
    title = f"graphprune report — {Path(report.get('input') or 'model').name}"
    with plotting():
        charts = [c for c in (cost_chart(report), latency_chart(report), width_chart(report),
                              score_chart(report)) if c]
    imgs = "".join(f'<img alt="chart" src="{c}">' for c in charts)
    pruned = [g for g in report["groups"] if g["frozen_reason"] is None
              and g["size_after"] < g["size_before"]]
    kept = [g for g in report["groups"] if g["frozen_reason"] is None
            and g["size_after"] == g["size_before"]]
    frozen = [g for g in report["groups"] if g["frozen_reason"] is not None]
    # axes nothing could prune by nature (no weights, or kernel/spatial axes no op carries)
    # go in a collapsed list so the frozen groups a user can act on stand out
    no_weights = [g for g in frozen if not g["members"] or STRUCTURAL in g["frozen_reason"]]
    frozen = [g for g in frozen if g not in no_weights]
    pr_rows = "".join(
        f"<tr><td>{g['id']}</td><td>{e(g['name'])}</td><td>{e(g['kind'])}</td>"
        f"<td class='num'>{g['size_before']}</td><td class='num'>{g['size_after']}</td>"
        f"<td class='members'>{e(', '.join(g['members']))}</td></tr>" for g in pruned + kept)
    fr_rows = "".join(
        f"<tr><td>{g['id']}</td><td>{e(g['name'])}</td><td class='num'>{g['size_before']}</td>"
        f"<td>{e(g['frozen_reason'])}</td></tr>" for g in frozen)
    nw_rows = "".join(
        f"<tr><td>{g['id']}</td><td>{e(g['name'])}</td><td class='num'>{g['size_before']}</td>"
        f"<td>{e(g['frozen_reason'])}</td></tr>" for g in no_weights)
    timings = report.get("timings_s", {})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{CSS}</style></head><body>
<h1>{e(title)}</h1>
<div class="meta">input {e(str(report.get('input')))} → output {e(str(report.get('output')))}
 · criterion {e(str(report.get('criterion')))} · ratio {e(_fmt(t.get('ratio')))}
 {'(global)' if t.get('global') else '(uniform)'} · round-to {e(_fmt(t.get('round_to')))}
 · graphprune {e(str(report.get('graphprune_version')))}</div>
<h2>Summary</h2>
<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>
{''.join(_row(r) for r in summary_rows(report))}</table>
<h2>Fidelity</h2>{_fidelity_html(report.get('fidelity'))}
{_gates_html(report.get('gates'))}
<h2>Plots</h2><div class="plots">{imgs}</div>
<h2>Pruned regions ({len(pruned)} pruned, {len(kept)} unchanged)</h2>
<table><tr><th>id</th><th>group</th><th>kind</th><th>width before</th><th>width after</th>
<th>members</th></tr>{pr_rows}</table>
<h2>Frozen groups ({len(frozen)})</h2>
<table><tr><th>id</th><th>group</th><th>width</th><th>reason</th></tr>{fr_rows}</table>
<details><summary>{len(no_weights)} axes that are not prunable by nature (kernel, spatial,
batch, ...)</summary>
<table><tr><th>id</th><th>axis</th><th>width</th><th>reason</th></tr>{nw_rows}</table></details>
<h2>Tool time</h2><table>{''.join(_row([k, f'{v:.3f} s']) for k, v in timings.items())}</table>
</body></html>
"""


def write(report: dict, path: str | Path, protect=()) -> Path:
    """Write the HTML report through the output writer (rendered first, then staged, fsynced
    and renamed into place; never through a link or a device)."""
    atomic_write_text(path, render(report), protect)
    return Path(path)


def attach_unit_scores(report: dict, scores: dict) -> None:
    """Add each group's per-unit scores (optional `scores` key; the criterion's own numbers,
    calibration included) so the HTML can draw their distribution."""
    for g in report["groups"]:
        s = scores.get(g["id"])
        if s is not None and len(s) == g["size_before"] and "scores" not in g:
            g["scores"] = [round(float(x), 6) for x in s]
