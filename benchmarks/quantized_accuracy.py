"""Accuracy of int8-quantized models pruned at 0.3, next to the float model's.

The MNIST and Fashion-MNIST cases of `benchmarks/accuracy.py` (its trained ResCNN, legacy export,
the first 2,000 test images, 256 training images for calibration) are quantized with
onnxruntime.quantization's `quantize_static` (per-channel int8 weights, uint8 activations, the
256 calibration images) in QDQ and QOperator formats, and each of the float and the quantized
models is pruned with graphprune at ratio 0.3 (`magnitude`, data-free; for the float model also
`obspa` calibrated on the same 256 images). For every pruned quantized model the op types ONNX
Runtime runs (its optimized graph) are compared with the unpruned quantized model's: the same
integer kernels, no float fallback.

    python -m benchmarks.quantized_accuracy [--models mnist,fashion] [--ratio 0.3]

Results: benchmarks/results/quantized_accuracy.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def quantize(model: onnx.ModelProto, calib: np.ndarray, fmt: str, work: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.it, None)

    src, dst = work / "float.onnx", work / f"{fmt}.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def kernels(model: onnx.ModelProto, work: Path) -> dict[str, int]:
    import onnxruntime as ort

    path = work / "optimized.onnx"
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(sorted(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
                       .items()))


def run(dataset: str, ratio: float, work: Path) -> dict:
    import graphprune
    from benchmarks.accuracy import cnn_case

    args = argparse.Namespace(test_n=2000, calib_n=256, seed=0)
    case = cnn_case(dataset, args)
    calib = case.calib["input"]
    evaluate = case.evaluate_onnx
    rows = []

    def add(name, model, pruned, fmt, **extra):
        rows.append({"model": name, "format": fmt, "accuracy_unpruned": evaluate(model),
                     "accuracy_pruned": evaluate(pruned.model),
                     "params": pruned.report["params"], "macs": pruned.report["macs"],
                     **extra})

    base = case.onnx
    add("float32", base, graphprune.prune(base, ratio=ratio), "float", criterion="magnitude")
    obspa = graphprune.prune(base, ratio=ratio, criterion="obspa", calib={"input": calib})
    add("float32", base, obspa, "float", criterion="obspa (calibrated)")
    for fmt in ("qdq", "qoperator"):
        q = quantize(base, calib, fmt, work)
        res = graphprune.prune(q, ratio=ratio)
        before, after = kernels(q, work), kernels(res.model, work)
        add("int8", q, res, fmt, criterion="magnitude", ort_kernels=after,
            same_kernels=before == after)
    # the other order: prune the float model with calibrated obspa, then quantize it
    q_after = quantize(obspa.model, calib, "qdq", work)
    rows.append({"model": "int8 of the obspa-pruned float model", "format": "qdq",
                 "criterion": "obspa (calibrated), then quantize_static",
                 "accuracy_unpruned": rows[2]["accuracy_unpruned"],
                 "accuracy_pruned": evaluate(q_after), "params": obspa.report["params"],
                 "macs": obspa.report["macs"]})
    return {"dataset": dataset, "ratio": ratio, "title": case.title, "rows": rows}


def markdown(results: list[dict]) -> str:
    out = []
    for r in results:
        out.append(f"| {r['title']} | format | criterion | unpruned | pruned {r['ratio']} | "
                   "params | same ORT kernels |")
        out.append("|---|---|---|---:|---:|---|---|")
        for row in r["rows"]:
            p = row["params"]
            same = {True: "yes", False: "no", None: "–"}[row.get("same_kernels")]
            out.append(f"| {row['model']} | {row['format']} | {row['criterion']} | "
                       f"{row['accuracy_unpruned'] * 100:.1f}% | "
                       f"{row['accuracy_pruned'] * 100:.1f}% | "
                       f"{p['before']:,} → {p['after']:,} | {same} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mnist,fashion")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "quantized_accuracy.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    results = []
    with tempfile.TemporaryDirectory() as d:
        for dataset in args.models.split(","):
            results.append(run(dataset.strip(), args.ratio, Path(d)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
