"""The outputs of a sweep: sweep.json, sweep.csv and sweep.png, and its text table."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..ir.writer import OutputSet
from .plots import plotting

CSV_COLUMNS = ["ratio", "params", "macs", "macs_ratio", "cosine", "top1_agreement", "drop",
               "max_abs_diff", "latency_ms", "latency_p90_ms", "speedup", "meets_max_drop"]


def write_outputs(result: dict, out_dir, protect=()) -> dict[str, Path]:
    """sweep.json, sweep.csv and sweep.png in `out_dir` (created if needed), rendered first and
    committed together through the output writer: never through a link or a device, never
    over `protect`ed files (the input model and its data files), all three or none."""
    d = Path(out_dir)
    paths = {"json": d / "sweep.json", "csv": d / "sweep.csv", "png": d / "sweep.png"}
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    w.writeheader()
    for row in result["rows"]:
        w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    png = io.BytesIO()
    plot(result, png)
    with OutputSet(protect=protect, create_folders=True) as out:
        out.add_text(paths["json"], json.dumps(result, indent=2) + "\n")
        out.add_text(paths["csv"], text.getvalue())
        out.add_bytes(paths["png"], png.getvalue())
    return paths


def plot(result: dict, path) -> None:
    """Two panels over the ratio: fidelity (with the max-drop line) and speedup vs MACs ratio,
    as a PNG at `path` (a file name or a binary file object)."""
    with plotting() as plt:
        _plot(plt, result, path)


def _plot(plt, result: dict, path) -> None:
    rows = result["rows"]
    x = [r["ratio"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(x, [r["cosine"] for r in rows], "o-", label="cosine similarity")
    if any(r["top1_agreement"] is not None for r in rows):
        a1.plot(x, [r["top1_agreement"] for r in rows], "s-", label="top-1 agreement")
    if result.get("max_drop") is not None:
        a1.axhline(1 - result["max_drop"], color="r", ls="--", lw=1,
                   label=f"1 − max-drop ({result['drop_metric']})")
    if result.get("recommended") is not None:
        a1.axvline(result["recommended"], color="g", ls=":", lw=1, label="recommended")
    a1.set_xlabel("pruning ratio")
    a1.set_ylabel("fidelity to the original")
    a1.set_title(f"Fidelity ({result['inputs']} inputs)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.plot(x, [r["macs_ratio"] for r in rows], "o--", label="MACs ratio (ideal)")
    if any(r["speedup"] is not None for r in rows):
        a2.plot(x, [r["speedup"] for r in rows], "s-", label="measured speedup (ORT)")
    a2.axhline(1, color="gray", lw=0.8)
    a2.set_xlabel("pruning ratio")
    a2.set_ylabel("× faster than the original")
    a2.set_title("Speed")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle(f"{Path(result['model']).name} — {result['criterion']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def format_table(result: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    head = (f"{'ratio':>6} {'params':>10} {'MACs':>12} {'MACs x':>7} {'cosine':>7} "
            f"{'top-1':>6} {'drop':>7} {'ms':>8} {'speedup':>7}  ok")
    lines = [head]
    for r in result["rows"]:
        ok = {None: "", True: "yes", False: "no"}[r["meets_max_drop"]]
        lines.append(f"{r['ratio']:>6.2f} {r['params']:>10,} {r['macs']:>12,} "
                     f"{r['macs_ratio']:>7.2f} {r['cosine']:>7.4f} "
                     f"{f(r['top1_agreement'], '.3f'):>6} {r['drop']:>7.4f} "
                     f"{f(r['latency_ms'], '.3f'):>8} {f(r['speedup'], '.2f'):>7}  {ok}")
    if result.get("max_drop") is not None:
        rec = result["recommended"]
        lines.append(f"recommended ratio: {rec}" if rec is not None else
                     f"recommended ratio: none (no ratio keeps drop <= {result['max_drop']})")
    return "\n".join(lines)
