"""Helpers shared by the transformer benchmarks: dynamo export, ONNX Runtime sessions, tables.

Nothing here prunes; the benchmarks call :func:`graphprune.prune` themselves.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "benchmarks" / "results" / "cache"


def export_dynamo(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path,
                  input_names: Sequence[str], output_name: str = "output",
                  refresh: bool = False) -> Path:
    """Export ``module`` with ``torch.onnx.export(dynamo=True)``, dims 0/1 of each input dynamic.

    The export is cached at ``path`` and reused unless ``refresh`` is set.  All inputs share the
    same ``batch`` and ``seq`` dimensions (e.g. ``input_ids`` and ``attention_mask``).
    """
    path = Path(path)
    if path.exists() and not refresh:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = tuple({0: batch, 1: seq} for _ in example)
    program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dynamic,
                                input_names=list(input_names), output_names=[output_name],
                                verbose=False)
    tmp = path.with_suffix(".tmp.onnx")
    program.save(str(tmp))
    os.replace(tmp, path)
    return path


def session_options(threads: int, optimized_path: Path | None = None) -> ort.SessionOptions:
    """CPU session options: ``threads`` intra-op threads, one inter-op thread, all optimizations."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # the "serializing an optimized model" warning is expected
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def make_session(model: str | Path | bytes, threads: int,
                 optimized_path: Path | None = None) -> ort.InferenceSession:
    """An ``InferenceSession`` on the CPU execution provider (see :func:`session_options`)."""
    if isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, session_options(threads, optimized_path),
                                providers=["CPUExecutionProvider"])


def optimized_op_counts(model_path: Path, threads: int, work_dir: Path) -> dict[str, int]:
    """Op-type counts (``domain::Op`` for non-default domains) of ORT's optimized graph."""
    out = Path(work_dir) / (Path(model_path).stem + ".ort_optimized.onnx")
    make_session(model_path, threads, optimized_path=out)
    m = onnx.load(str(out), load_external_data=False)
    counts = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in m.graph.node)
    for p in out.parent.glob(out.name + "*"):
        p.unlink()
    return dict(sorted(counts.items()))


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given static shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    return m


def macs_at_shape(model_path: Path, shapes: dict[str, Sequence[int]]) -> int | None:
    """Multiply-accumulates at static input ``shapes``, counted with graphprune's own op rules.

    ``report["macs"]`` counts symbolic dimensions as 1 (one sequence position), which leaves out
    the attention score/value products that grow with the sequence length; this count is taken
    at the shape the latency is measured at.  Returns ``None`` if the count fails.
    """
    try:
        from graphprune.analysis.cost import count_macs
        from graphprune.pipeline.stages import model_view

        m = fix_input_shapes(onnx.load(str(model_path)), shapes)
        return int(count_macs(model_view(m)))
    except Exception as exc:  # noqa: BLE001 - an optional figure; report and go on
        print(f"  (MACs at {shapes} not counted: {type(exc).__name__}: {exc})")
        return None


def profile_op_time(model_path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int,
                    work_dir: Path) -> dict[str, float]:
    """Mean time per run (ms) spent in each op type, from ORT's profiler over ``runs`` runs."""
    import json

    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(work_dir) / (Path(model_path).stem + "_profile"))
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feeds)
    # The trace also holds the warm-up runs; count only the last `runs` by run index.
    for _ in range(runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_ts = run_starts[-runs] if len(run_starts) >= runs else 0
    totals: Counter = Counter()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < first_ts:
            continue
        totals[e.get("args", {}).get("op_name", "?")] += e["dur"]
    return {k: round(v / runs / 1000.0, 4) for k, v in totals.most_common()}


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """Hardware and library versions the numbers were taken with."""
    import transformers

    import graphprune

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "graphprune": graphprune.__version__,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_params(n: int) -> str:
    """``52161027`` -> ``52.16M``."""
    return f"{n / 1e6:.2f}M"
