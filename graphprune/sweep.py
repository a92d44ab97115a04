"""Sensitivity sweep: prune one model at several ratios and measure what each costs.

Picking a ratio is a trade between fidelity and speed that depends on the model; the sweep
measures the curve (fidelity, MACs ratio, measured speedup per ratio) so the choice is made on
numbers, and recommends the largest ratio whose fidelity drop stays within `max_drop`.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path


from .backends import bench
from .evaluate import fidelity, load_calib
from .model_io import load_model

log = logging.getLogger(__name__)

CSV_COLUMNS = ["ratio", "params", "macs", "macs_ratio", "cosine", "top1_agreement", "drop",
               "max_abs_diff", "latency_ms", "latency_p90_ms", "speedup", "meets_max_drop"]


def parse_ratios(text: str) -> list[float]:
    from .errors import UserError

    try:
        ratios = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise UserError(f"--ratios must be comma-separated numbers, got {text!r}") from e
    if not ratios or any(not 0 <= r < 1 for r in ratios):
        raise UserError(f"--ratios must be in [0, 1), got {text!r}")
    return ratios


def run_sweep(model_path, ratios: list[float], criterion: str = "magnitude",
              calib_path=None, max_drop: float | None = None, latency: bool = True,
              threads: int = 0, repeats: int = 30, warmup: int = 5, seed: int = 0,
              progress: bool = False, **prune_options) -> dict:
    """Prune at each ratio; returns {"model", "criterion", "baseline", "rows", "recommended"}."""
    from .pipeline import CALIB_CRITERIA, prune

    original = load_model(model_path)
    calib = load_calib(calib_path, original) if calib_path else None
    calib_name = Path(calib_path).name if calib_path else None
    cost0 = bench.model_cost(original)
    rows, pruned = [], []
    for r in bench.bar(ratios, progress, "sweep", len(ratios)):
        log.debug("sweep: ratio %s", r)
        if calib is not None and criterion in CALIB_CRITERIA:
            prune_options.setdefault("calib", calib)  # the data-aware criteria calibrate on it
        res = prune(original, ratio=r, criterion=criterion, seed=seed, **prune_options)
        fid = fidelity(original, res.model, calib=calib, seed=seed, calib_name=calib_name)
        rows.append({"ratio": r, "params": res.report["params"]["after"],
                     "macs": res.report["macs"]["after"],
                     "macs_ratio": cost0["macs"] / max(res.report["macs"]["after"], 1),
                     "cosine": fid["value"], "top1_agreement": fid["top1_agreement"],
                     "drop": fid["drop"], "max_abs_diff": fid["max_abs_diff"],
                     "latency_ms": None, "latency_p90_ms": None, "speedup": None,
                     "meets_max_drop": None if max_drop is None else bool(fid["drop"] <= max_drop)})
        pruned.append(res.model)
    base = None
    if latency:
        # one interleaved measurement of the original and every pruned model: comparable ratios
        meas = bench.benchmark_many([str(model_path)] + pruned, threads=threads, warmup=warmup,
                                    repeats=repeats, seed=seed, progress=progress,
                                    memory=False, cost=False)
        base = meas[0]
        for row, b in zip(rows, meas[1:]):
            row["latency_ms"] = b["latency_ms"]["median"]
            row["latency_p90_ms"] = b["latency_ms"]["p90"]
            row["speedup"] = base["latency_ms"]["median"] / b["latency_ms"]["median"]
    ok = [row["ratio"] for row in rows if row["meets_max_drop"]]
    return {
        "model": str(model_path), "criterion": criterion, "max_drop": max_drop,
        "drop_metric": "top1_agreement" if calib is not None and rows
        and rows[0]["top1_agreement"] is not None else "cosine",
        "inputs": f"calib:{calib_name}" if calib is not None else "random",
        "baseline": {"params": cost0["params"], "macs": cost0["macs"],
                     "latency_ms": base["latency_ms"]["median"] if base else None,
                     "threads": threads, "repeats": repeats},
        "rows": rows,
        "recommended": max(ok) if ok else None,
    }


def write_outputs(result: dict, out_dir) -> dict[str, Path]:
    """sweep.json, sweep.csv and sweep.png in `out_dir` (created if needed)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "sweep.json", "csv": d / "sweep.csv", "png": d / "sweep.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in result["rows"]:
            w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    plot(result, paths["png"])
    return paths


def plot(result: dict, path) -> None:
    """Two panels over the ratio: fidelity (with the max-drop line) and speedup vs MACs ratio."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
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
