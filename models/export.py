"""Export the model zoo to ONNX with both torch exporters and check the results.

Usage::

    python -m models.export [--out DIR] [--only NAME ...] [--exporters legacy,dynamo]

Both exporters are exercised because they produce structurally different graphs
for the same network (e.g. ``Flatten`` vs ``Reshape``, ``GlobalAveragePool`` vs
``ReduceMean``, ``opset 17`` vs ``opset 20``), and a pruner has to cope with both.

Exporter variants (``exporter`` argument / ``--exporters`` list):

``legacy``
    TorchScript exporter, opset 17, eval mode.  Conv->BatchNorm pairs are folded
    into the Conv by the exporter; only BNs not preceded by a Conv survive.
``dynamo``
    ``torch.export`` based exporter with its default onnxscript optimisation,
    which also folds Conv->BatchNorm pairs.
``legacy_bn`` / ``dynamo_bn``
    The same exporters with BatchNorm fusion disabled (legacy:
    ``TrainingMode.PRESERVE`` on an eval-mode model; dynamo: no rewrite rules,
    only constant folding), so every ``BatchNormalization`` stays a node.  Not
    exported by default; useful for BN-based importance criteria.

Files are named ``NAME.EXPORTER.onnx``.  Every file is self-contained (no
external data) unless it would exceed protobuf's 2 GB limit.  Dynamo exports
are stripped of per-node metadata (stack traces with absolute source paths,
FX node dumps) so the output is reproducible: re-running the export gives
byte-identical files.

A default run also refreshes ``models/demo.onnx`` (a copy of
``resnet_tiny.legacy.onnx``).

Models listed in :data:`models.zoo.ON_DEMAND` (``resnet50``) are skipped unless
named with ``--only``; without ``--out`` they go to ``models/cache/`` (ignored
by git) instead of the bundled ``models/onnx/``.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from models._export_util import quiet_export, strip_metadata
from models.zoo import MODELS, ON_DEMAND, build, example_input

__all__ = ["EXPORTERS", "export_model", "verify_model", "op_counts", "main"]

EXPORTERS = ("legacy", "dynamo", "legacy_bn", "dynamo_bn")
DEFAULT_EXPORTERS = ("legacy", "dynamo")

LEGACY_OPSET = 17
INPUT_NAMES = ["input"]
OUTPUT_NAMES = ["output"]

_MODELS_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = _MODELS_DIR / "onnx"
CACHE_DIR = _MODELS_DIR / "cache"
#: Small ready-made model for the README and CLI smoke tests: a copy of
#: ``resnet_tiny.legacy.onnx``, refreshed whenever that file is re-exported
#: to its default location.
DEMO_PATH = _MODELS_DIR / "demo.onnx"

# Stay well below protobuf's hard 2 GiB message limit.
_INLINE_LIMIT_BYTES = 1_800_000_000


def _export_legacy(model: torch.nn.Module, x: torch.Tensor, keep_bn: bool) -> onnx.ModelProto:
    # TrainingMode.PRESERVE skips the eval-mode peephole pass that folds BN into
    # Conv; the model itself is in eval mode, so BN still uses running stats.
    training = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    buf = io.BytesIO()
    torch.onnx.export(
        model, (x,), buf, dynamo=False, opset_version=LEGACY_OPSET,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, training=training,
    )
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, keep_bn: bool) -> onnx.ModelProto:
    program = torch.onnx.export(
        model, (x,), dynamo=True, optimize=not keep_bn, verbose=False,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
    )
    if keep_bn:
        # The default optimiser applies rewrite rules, one of which fuses
        # BatchNorm into Conv.  Constant folding alone removes the Shape/Expand/
        # CastLike scaffolding of the raw export but keeps BN nodes.
        import onnx_ir.passes.common as common_passes
        import onnxscript.optimizer

        ir_model = program.model
        onnxscript.optimizer.fold_constants(ir_model)
        onnxscript.optimizer.remove_unused_nodes(ir_model)
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
        proto = program.model_proto
        _drop_zero_conv_bias(proto)
        return proto
    # model_proto holds every initializer in memory, so nothing is written as
    # external data at this point.
    return program.model_proto


def _drop_zero_conv_bias(model: onnx.ModelProto) -> None:
    """Remove the all-zero bias the unoptimised dynamo export gives bias-free Convs.

    Keeps ``dynamo_bn`` graphs parallel to ``legacy_bn`` ones (Conv without bias,
    followed by BatchNormalization) instead of carrying dead zero tensors.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    dropped = set()
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) == 3 and node.input[2] in inits:
            if not np.any(onnx.numpy_helper.to_array(inits[node.input[2]])):
                dropped.add(node.input[2])
                del node.input[2]
    still_used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name not in dropped or init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names_kept = {init.name for init in keep}
    vis = [vi for vi in graph.value_info if vi.name not in dropped or vi.name in names_kept]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def export_model(name: str, path: str | os.PathLike, exporter: str) -> Path:
    """Export zoo model ``name`` to ``path`` with one of :data:`EXPORTERS`; return the path.

    The model and its example input are rebuilt from their seeds, so repeated
    calls produce identical files.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build(name)
    x = example_input(name)
    keep_bn = exporter.endswith("_bn")
    with quiet_export(), torch.no_grad():
        if exporter.startswith("legacy"):
            proto = _export_legacy(model, x, keep_bn)
        else:
            proto = _export_dynamo(model, x, keep_bn)
    strip_metadata(proto)

    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    if proto.ByteSize() < _INLINE_LIMIT_BYTES:
        onnx.save(proto, path, save_as_external_data=False)
    else:
        onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_path.name, size_threshold=1024)
    return path


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    """Count op types in the main graph (the zoo exports contain no subgraphs)."""
    return collections.Counter(node.op_type for node in model.graph.node)


def verify_model(name: str, path: str | os.PathLike, atol: float = 1e-4, rtol: float = 1e-4) -> float:
    """Check ``path`` with the ONNX checker and against torch via onnxruntime.

    Returns the max absolute difference; raises ``AssertionError`` when outputs
    disagree beyond ``atol + rtol * |torch|``.
    """
    import onnxruntime as ort

    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)
    x = example_input(name)
    with torch.no_grad():
        expected = build(name)(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (actual,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    if actual.shape != expected.shape:
        raise AssertionError(f"{path.name}: shape {actual.shape} != torch {expected.shape}")
    diff = float(np.max(np.abs(actual - expected)))
    if not np.allclose(actual, expected, atol=atol, rtol=rtol):
        raise AssertionError(f"{path.name}: onnxruntime differs from torch (max |diff| = {diff:.3g})")
    return diff


def _format_ops(counts: collections.Counter) -> str:
    return " ".join(f"{op}:{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: models/onnx; on-demand models: models/cache)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(MODELS),
                        help="export only these models (the only way to export on-demand models)")
    parser.add_argument("--exporters", default=",".join(DEFAULT_EXPORTERS),
                        help=f"comma-separated subset of {','.join(EXPORTERS)}")
    parser.add_argument("--no-verify", action="store_true", help="skip checker/onnxruntime verification")
    args = parser.parse_args(argv)

    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    unknown = sorted(set(exporters) - set(EXPORTERS))
    if unknown:
        parser.error(f"unknown exporter(s): {', '.join(unknown)}")
    names = args.only or [n for n in MODELS if n not in ON_DEMAND]

    header = f"{'model':<20} {'exporter':<10} {'KB':>8} {'opset':>5} {'max|diff|':>9}  ops"
    print(header)
    print("-" * len(header))
    failures = 0
    for name in names:
        out_dir = args.out or (CACHE_DIR if name in ON_DEMAND else BUNDLED_DIR)
        for exporter in exporters:
            path = export_model(name, out_dir / f"{name}.{exporter}.onnx", exporter)
            proto = onnx.load(str(path), load_external_data=False)
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            size_kb = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1024
            status = "-"
            if not args.no_verify:
                try:
                    status = f"{verify_model(name, path):.1e}"
                except Exception as exc:  # report every failing file, then exit non-zero
                    failures += 1
                    status = "FAIL"
                    print(f"  {exc}", file=sys.stderr)
            print(f"{name:<20} {exporter:<10} {size_kb:>8.1f} {opset:>5} {status:>9}  "
                  f"{_format_ops(op_counts(proto))}", flush=True)
    if args.out is None and "resnet_tiny" in names and "legacy" in exporters:
        shutil.copyfile(BUNDLED_DIR / "resnet_tiny.legacy.onnx", DEMO_PATH)
        print(f"copied resnet_tiny.legacy.onnx -> {DEMO_PATH.name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
