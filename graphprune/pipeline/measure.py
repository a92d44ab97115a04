"""Measuring a prune against its original (fidelity on calibration data, latency and memory),
and the CI gates built on those numbers."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..analysis.cost import count_params
from ..calibration.checks import check_feeds
from ..calibration.data import Calibration, load_calibration, npz_batches
from ..ir import WEIGHTS
from ..ir.input_sizes import plan_inputs
from ..ir.inputs import parse_input_shapes
from ..ir.load import graph_of, open_model
from ..runtime import bench
from ..runtime.fidelity import fidelity
from .options import check_gate_limits
from .stages import macs_at, model_view


def model_cost(model, input_shapes=None, inputs=None) -> dict:
    """Params and MACs as the pruning report counts them (MACs at the input sizes `inputs`
    plans, by default planned from the graph with `input_shapes`: see graphprune.ir.
    input_sizes), of a ModelProto or a model file (whose external weights stay on disk)."""
    store = None
    if not isinstance(model, onnx.ModelProto):
        model, store, _ = open_model(model)
    token = WEIGHTS.set(store)
    try:
        plan = inputs if inputs is not None else plan_inputs(
            model, shapes=parse_input_shapes(input_shapes))
        view = model_view(model, plan)
        return {"params": count_params(view), "macs": macs_at(model, plan, view)}
    finally:
        WEIGHTS.reset(token)


def cost_with(input_shapes):
    """`model_cost` with `input_shapes` (for the benchmarks' cost callback)."""
    return lambda model: model_cost(model, input_shapes)


def check_gates(report: dict, max_drop: float | None = None,
                min_speedup: float | None = None) -> list[dict]:
    """Gate results ({"gate", "measured", "limit", "passed"}) from a report's numbers; limits
    that are not finite numbers in range are refused (`check_gate_limits`)."""
    check_gate_limits(max_drop, min_speedup)
    gates = []
    if max_drop is not None:
        d = report["fidelity"]["drop"]
        gates.append({"gate": "max-drop", "measured": d, "limit": max_drop,
                      "passed": bool(d <= max_drop)})
    if min_speedup is not None:
        s = report["latency_ms"]["speedup"]
        gates.append({"gate": "min-speedup", "measured": s, "limit": min_speedup,
                      "passed": bool(s >= min_speedup)})
    return gates


def gate_failure_line(gates: list[dict]) -> str | None:
    """The one stderr line for failed gates, or None when all passed."""
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return None
    return "graphprune: gate failed: " + "; ".join(
        f"{g['gate']} {g['measured']:.4g} vs {g['limit']:.4g}" for g in failed)


def evaluate_result(result, original, calib_path=None, benchmark: bool = False,
                    threads: int = 0, repeats: int = 50, warmup: int = 5, seed: int = 0,
                    progress: bool = False, provider: str = "CPUExecutionProvider",
                    input_shapes=None, calib: dict | None = None,
                    calib_name: str | None = None, pruned=None) -> dict:
    """Measure a `PruneResult` against its original (path or ModelProto) and put the numbers in
    its report: `fidelity` (calibration or random inputs, with top-1 agreement and `drop`) and,
    with `benchmark`, `latency_ms` {before, after, p90_before, p90_after, threads, repeats,
    provider, method, speedup, macs_ratio} and `memory_bytes` {before, after} (peak RSS of a
    fresh process per model). Calibration inputs: an .npz file (`calib_path`) or arrays
    (`calib`, named `calib_name` in the report), checked against the model's inputs either
    way. `pruned`: the written file of the pruned model to measure (default `result.model`,
    whose weights may stay on disk and in `result.store`). The original and the pruned model
    run one after the other, never together (models of any size)."""
    if benchmark:
        bench.check_counts(threads=(threads, 0, bench.MAX_THREADS),
                           repeats=(repeats, 1, bench.MAX_RUNS),
                           warmup=(warmup, 0, bench.MAX_RUNS))
    proto = graph_of(original)
    shapes = parse_input_shapes(input_shapes)
    if calib_path:
        calib, calib_name = npz_batches(calib_path, proto), Path(calib_path).name
    elif calib is not None:
        calib = check_feeds(proto, calib, "calibration arrays: ")
        calib_name = calib_name or "arrays"
    src = original if isinstance(original, onnx.ModelProto) else str(original)
    target, store = (str(pruned), None) if pruned is not None else (result.model, result.store)
    token = WEIGHTS.set(store)
    try:
        fid = fidelity(src, target, calib=calib, seed=seed, calib_name=calib_name,
                       shapes=shapes, provider=provider, io=result.io, store=store,
                       inputs=getattr(result, "inputs", None))
        if benchmark:
            pair = bench.benchmark_pair(src, target, threads=threads, repeats=repeats,
                                        warmup=warmup, seed=seed, progress=progress,
                                        cost=cost_with(shapes), provider=provider,
                                        input_shapes=shapes)
    finally:
        WEIGHTS.reset(token)
    faults = (result.report.get("fidelity") or {}).get("input_faults")
    if faults:
        fid["input_faults"] = faults
    result.report["fidelity"] = fid
    if benchmark:
        b, a, c = pair["before"], pair["after"], pair["compare"]
        macs = result.report["macs"]
        result.report["latency_ms"] = {
            "before": b["latency_ms"]["median"], "after": a["latency_ms"]["median"],
            "p90_before": b["latency_ms"]["p90"], "p90_after": a["latency_ms"]["p90"],
            "threads": threads, "repeats": repeats, "provider": b["provider"],
            "method": b["latency_method"], "speedup": c["speedup"],
            "macs_ratio": macs["before"] / macs["after"] if macs.get("after") else None}
        result.report["memory_bytes"] = {"before": b["peak_rss_bytes"],
                                         "after": a["peak_rss_bytes"]}
    return result.report


def load_inputs(model_path, source, preprocess: str = "imagenet", labels=None,
                seed: int = 0) -> Calibration:
    """Calibration/fidelity inputs (an .npz file or a folder of images, with optional labels)
    read and checked against the model file's inputs, before any pruning work: only the graph
    is read, not the weights."""
    model = open_model(model_path)[0]
    return load_calibration(str(source), model, preprocess=preprocess, labels=labels, seed=seed)


def benchmark(model, **kw) -> dict:
    """`graphprune.runtime.bench.benchmark` with the params and MACs the report counts."""
    return bench.benchmark(model, cost=model_cost, **kw)


def benchmark_pair(model_a, model_b, **kw) -> dict:
    """`graphprune.runtime.bench.benchmark_pair` with params and MACs (the MACs ratio)."""
    return bench.benchmark_pair(model_a, model_b, cost=model_cost, **kw)
