"""Export the tiny transformers of :mod:`models.transformers_zoo` to ONNX with both exporters.

Usage::

    python -m models.export_transformers [--only NAME ...] [--out DIR] [--exporters legacy,dynamo]
                                         [--no-verify] [--shapes] [--no-export]

Files are named ``NAME.EXPORTER.onnx``.  Random-init models go to ``models/onnx/tx/`` (bundled,
each well under 600 KB); ``minilm`` (real weights, ~90 MB) is only exported when named with
``--only`` and goes to ``models/cache/tx/`` (git-ignored).

``legacy``
    TorchScript exporter, opset 17, ``dynamic_axes`` batch and sequence (ViT: batch only).
``dynamo``
    ``torch.export`` based exporter (opset 18+, default onnxscript optimisation) with
    ``dynamic_shapes`` ``Dim("batch")`` / ``Dim("seq")`` (ViT: batch only).

Every file is self-contained (no external data) and stripped of per-node metadata (stack
traces, absolute source paths), so re-exporting gives byte-identical files.  Verification runs
``onnx.checker`` (full_check) and compares onnxruntime with torch (atol 1e-4) at the export size
and at other batch/sequence sizes, which proves the dynamic axes work.

``--shapes`` prints, for every Reshape/Expand, the expression tree of its shape input (depth 4),
which shows where head counts and head sizes live in each export; with ``--no-export`` it
inspects the files already there, e.g. ``--no-export --no-verify --shapes --only llama_gqa``.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from models._export_util import quiet_export, strip_metadata
from models.transformers_zoo import ON_DEMAND, TEXT_MODELS, TX_MODELS, build_tx, make_inputs

__all__ = ["EXPORTERS", "BUNDLED_DIR", "CACHE_DIR", "VERIFY_SIZES", "export_tx", "verify_tx",
           "op_counts", "shape_trees", "main"]

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 17
INPUT_NAMES = ["input"]
OUTPUT_NAMES = ["output"]

_MODELS_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = _MODELS_DIR / "onnx" / "tx"
CACHE_DIR = _MODELS_DIR / "cache" / "tx"

#: (batch, seq) sizes checked against torch besides the export size (2, 8); seq is ignored for vit.
VERIFY_SIZES = ((2, 8), (1, 5), (1, 11), (3, 11))


def _axes(name: str) -> dict[int, str]:
    return {0: "batch"} if name not in TEXT_MODELS else {0: "batch", 1: "seq"}


def _export_legacy(name: str, model: torch.nn.Module, inputs: tuple) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = _axes(name)
    torch.onnx.export(
        model, inputs, buf, dynamo=False, opset_version=LEGACY_OPSET,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
        dynamic_axes={"input": axes, "output": axes},
    )
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(name: str, model: torch.nn.Module, inputs: tuple) -> onnx.ModelProto:
    dims = {k: torch.export.Dim(v) for k, v in _axes(name).items()}
    program = torch.onnx.export(
        model, inputs, dynamo=True, verbose=False,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_shapes=(dims,),
    )
    # model_proto serialises every initializer inline (nothing is external at this point).
    return program.model_proto


def export_tx(name: str, path: str | os.PathLike, exporter: str) -> Path:
    """Export transformer ``name`` to ``path`` with ``exporter`` ("legacy" or "dynamo").

    The model is rebuilt from its seed, so repeated calls write identical files.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, inputs = build_tx(name)
    with quiet_export(), torch.no_grad():
        if exporter == "legacy":
            proto = _export_legacy(name, model, inputs)
        else:
            proto = _export_dynamo(name, model, inputs)
    strip_metadata(proto)
    # Round-trip through bytes and write ONE self-contained file; remove a stale sidecar if any.
    proto = onnx.load_from_string(proto.SerializeToString())
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    onnx.save(proto, str(path), save_as_external_data=False)
    return path


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_tx(name: str, path: str | os.PathLike, sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
              atol: float = 1e-4, rtol: float = 1e-4, model: torch.nn.Module | None = None) -> float:
    """Checker (full_check) + onnxruntime vs torch at every (batch, seq) in ``sizes``.

    Returns the largest max-abs difference; raises ``AssertionError`` on a mismatch.
    """
    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    if model is None:
        model, _ = build_tx(name)
    sess = _ort_session(path)
    worst = 0.0
    for batch, seq in sizes:
        (x,) = make_inputs(name, batch, seq)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        where = f"{path.name} at batch={batch} seq={seq}"
        if actual.shape != expected.shape:
            raise AssertionError(f"{where}: shape {actual.shape} != torch {expected.shape}")
        diff = float(np.max(np.abs(actual - expected)))
        worst = max(worst, diff)
        if not np.allclose(actual, expected, atol=atol, rtol=rtol):
            raise AssertionError(f"{where}: onnxruntime differs from torch (max |diff| = {diff:.3g})")
    return worst


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _format_ops(counts: collections.Counter) -> str:
    return " ".join(f"{op}:{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------
# Shape-expression dump (--shapes)
# ---------------------------------------------------------------------------


def _const_value(model: onnx.ModelProto, producers: dict, inits: dict, name: str):
    if name in inits:
        return onnx.numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return onnx.numpy_helper.to_array(a.t)
            if a.name in ("value_int", "value_ints"):
                return np.array(onnx.helper.get_attribute_value(a))
    return None


def _fmt_const(v: np.ndarray) -> str:
    if v.size <= 8:
        return f"const{list(v.reshape(-1).tolist()) if v.ndim else v.item()}"
    return f"const<{v.dtype} {list(v.shape)}>"


def shape_trees(model: onnx.ModelProto, depth: int = 4) -> list[str]:
    """One line per Reshape/Expand: ``op(data) <- expression of its shape input``."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}

    def expr(name: str, d: int) -> str:
        v = _const_value(model, producers, inits, name)
        if v is not None:
            return _fmt_const(v)
        if name in graph_inputs:
            return name
        node = producers.get(name)
        if node is None:
            return name
        attrs = []
        for a in node.attribute:
            if a.name in ("axis", "axes", "to", "starts", "ends", "start", "end"):
                attrs.append(f"{a.name}={onnx.helper.get_attribute_value(a)}")
        head = node.op_type + (f"[{','.join(attrs)}]" if attrs else "")
        if d == 0:
            return head + "(...)"
        args = [expr(i, d - 1) if i else "_" for i in node.input]
        return f"{head}({', '.join(args)})"

    lines = []
    for node in model.graph.node:
        if node.op_type in ("Reshape", "Expand"):
            lines.append(f"{node.op_type} {node.name}: {expr(node.input[1], depth)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export_transformers",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: models/onnx/tx; minilm: models/cache/tx)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(TX_MODELS),
                        help="export only these models (the only way to export minilm)")
    parser.add_argument("--exporters", default=",".join(EXPORTERS),
                        help=f"comma-separated subset of {','.join(EXPORTERS)}")
    parser.add_argument("--no-verify", action="store_true", help="skip checker/onnxruntime checks")
    parser.add_argument("--shapes", action="store_true",
                        help="print the shape-input expression of every Reshape/Expand")
    parser.add_argument("--no-export", action="store_true",
                        help="only inspect (and verify) files already exported")
    args = parser.parse_args(argv)

    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    unknown = sorted(set(exporters) - set(EXPORTERS))
    if unknown:
        parser.error(f"unknown exporter(s): {', '.join(unknown)}")
    names = args.only or [n for n in TX_MODELS if n not in ON_DEMAND]

    header = f"{'model':<10} {'exporter':<8} {'KB':>8} {'opset':>5} {'max|diff|':>9}  ops"
    print(header)
    print("-" * len(header))
    failures = 0
    for name in names:
        out_dir = args.out or (CACHE_DIR if name in ON_DEMAND else BUNDLED_DIR)
        model = None
        if not (args.no_export and args.no_verify):
            try:
                model, _ = build_tx(name)
            except ImportError as exc:
                print(f"{name:<10} skipped: {exc}")
                continue
        for exporter in exporters:
            path = out_dir / f"{name}.{exporter}.onnx"
            if args.no_export:
                if not path.exists():
                    failures += 1
                    print(f"{name:<10} {exporter:<8} missing: {path}", file=sys.stderr)
                    continue
            else:
                try:
                    export_tx(name, path, exporter)
                except Exception as exc:  # report every failure, then exit non-zero
                    failures += 1
                    print(f"{name:<10} {exporter:<8} export FAILED: {type(exc).__name__}: {exc}",
                          file=sys.stderr)
                    continue
            proto = onnx.load(str(path))
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            status = "-"
            if not args.no_verify:
                try:
                    status = f"{verify_tx(name, path, model=model):.1e}"
                except Exception as exc:
                    failures += 1
                    status = "FAIL"
                    print(f"  {exc}", file=sys.stderr)
            size_kb = path.stat().st_size / 1024
            print(f"{name:<10} {exporter:<8} {size_kb:>8.1f} {opset:>5} {status:>9}  "
                  f"{_format_ops(op_counts(proto))}", flush=True)
            if args.shapes:
                for line in shape_trees(proto):
                    print(f"    {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
