"""Sensitivity sweep: prune one model at several ratios and measure what each costs.

Picking a ratio is a trade between fidelity and speed that depends on the model; the sweep
measures the curve (fidelity, MACs ratio, measured speedup per ratio) so the choice is made on
numbers, and recommends the largest ratio whose fidelity drop stays within `max_drop`.

The model is read, analyzed, calibrated and scored once; every ratio then starts from a copy of
that state and only selects, compensates, rewrites and validates.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import onnx

from ..calibration.data import load_npz
from ..errors import UserError
from ..ir import GraphView
from ..ir.load import load_model
from ..progress import bar
from ..runtime import bench
from ..runtime.fidelity import fidelity
from ..runtime.taps import TapRunner
from .options import CALIB_CRITERIA, PruneOptions, check_gate_limits
from .parallel import run_jobs
from .pipeline import PIPELINE, result_of, run_stages
from .state import PruneState, Source

log = logging.getLogger(__name__)


def parse_ratios(text: str) -> list[float]:
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
              progress: bool = False, jobs: int = 1, scheduler: str | None = None,
              **prune_options) -> dict:
    """Prune at each ratio; returns {"model", "criterion", "baseline", "rows", "recommended",
    "calibration"}. The ratios (select, rewrite, validate, fidelity) run as `jobs` local
    processes, or on the Dask cluster at `scheduler` (see `graphprune.pipeline.parallel`);
    the latency of every model is then measured here, interleaved in one process."""
    check_gate_limits(max_drop)
    original = load_model(model_path)
    calib = load_npz(calib_path, original) if calib_path else None
    calib_name = Path(calib_path).name if calib_path else None
    if calib is not None and criterion in CALIB_CRITERIA:
        prune_options.setdefault("calib", calib)  # the data-aware criteria calibrate on it
    opts = PruneOptions(ratio=ratios[0], criterion=criterion, seed=seed, **prune_options)
    opts.check()
    base = run_stages(PruneState(original, opts, TapRunner(provider=opts.provider)),
                      PIPELINE[:_index("score") + 1])
    cost0 = dict(base.before)  # MACs at the sizes of the prune's input plan
    shared = {"base": pack(base), "original": original, "calib": calib,
              "calib_name": calib_name, "seed": seed, "max_drop": max_drop,
              "macs": cost0["macs"]}
    done = run_jobs(_ratio_job, [(r,) for r in bar(ratios, progress, "sweep", len(ratios))],
                    shared, workers=jobs, scheduler=scheduler)
    rows = [row for row, _ in done]
    pruned = [onnx.load_from_string(b) for _, b in done]
    timing = None
    if latency:
        # one interleaved measurement of the original and every pruned model: comparable ratios
        meas = bench.benchmark_many([str(model_path)] + pruned, threads=threads, warmup=warmup,
                                    repeats=repeats, seed=seed, progress=progress,
                                    memory=False, provider=opts.provider,
                                    input_shapes=opts.input_shapes)
        timing = meas[0]
        for row, b in zip(rows, meas[1:]):
            row["latency_ms"] = b["latency_ms"]["median"]
            row["latency_p90_ms"] = b["latency_ms"]["p90"]
            row["speedup"] = timing["latency_ms"]["median"] / b["latency_ms"]["median"]
    ok = [row["ratio"] for row in rows if row["meets_max_drop"]]
    return {
        "model": str(model_path), "criterion": criterion, "max_drop": max_drop,
        "drop_metric": "top1_agreement" if calib is not None and rows
        and rows[0]["top1_agreement"] is not None else "cosine",
        "inputs": f"calib:{calib_name}" if calib is not None else "random",
        "baseline": {"params": cost0["params"], "macs": cost0["macs"],
                     "latency_ms": timing["latency_ms"]["median"] if timing else None,
                     "threads": threads, "repeats": repeats},
        "rows": rows,
        "recommended": max(ok) if ok else None,
        "calibration": _calibration_summary(base),
    }


def _ratio_job(shared: dict, ratio: float) -> tuple[dict, bytes]:
    """One ratio of a sweep: select, compensate, rewrite, validate and measure fidelity on a
    fork of the scored state. Returns its row and the pruned model's bytes."""
    base, original, calib = shared["base"], shared["original"], shared["calib"]
    seed, max_drop = shared["seed"], shared["max_drop"]
    log.debug("sweep: ratio %s", ratio)
    res = result_of(run_stages(fork(base, ratio), PIPELINE[_index("score") + 1:]))
    opts = base.options
    fid = fidelity(original, res.model, calib=calib, seed=seed, calib_name=shared["calib_name"],
                   shapes=opts.input_shapes, provider=opts.provider, inputs=base.inputs,
                   io=res.io)
    macs = res.report["macs"]
    row = {"ratio": ratio, "params": res.report["params"]["after"], "macs": macs["after"],
           "macs_ratio": macs["before"] / max(macs["after"], 1),
           "cosine": fid["value"], "top1_agreement": fid["top1_agreement"],
           "drop": fid["drop"], "max_abs_diff": fid["max_abs_diff"],
           "latency_ms": None, "latency_p90_ms": None, "speedup": None,
           "meets_max_drop": None if max_drop is None else bool(fid["drop"] <= max_drop)}
    return row, res.model.SerializeToString()


def pack(state: PruneState) -> PruneState:
    """The scored state made self-contained, so it can be sent to other processes: the
    reference run collected, consumers naming their node by index."""
    from ..runtime.isolate import Pending

    if isinstance(state.reference, Pending):
        state.reference = state.reference.result()
    ctx = state.calib_ctx
    if ctx is not None:
        by_id = {id(n): k for k, n in enumerate(state.source.work.graph.node)}
        ctx.consumers = [copy.copy(c) for c in ctx.consumers]
        for c in ctx.consumers:
            if not isinstance(c.node, int):
                c.node = by_id[id(c.node)]
    state.progress = None
    return state


def _index(stage: str) -> int:
    return next(k for k, st in enumerate(PIPELINE) if st.name == stage)


def _calibration_summary(state: PruneState) -> dict | None:
    ctx = state.calib_ctx
    if ctx is None:
        return None
    return {"source": ctx.source, "samples": ctx.samples, "calibrated": ctx.calibrated}


def fork(state: PruneState, ratio: float) -> PruneState:
    """A copy of an analyzed and scored state, for another ratio: the model is copied (the
    rewrite edits it in place), and the view, the dependency graph and the calibration
    context are rebound to the copy; groups, units and scores are shared (nothing after
    scoring changes them)."""
    src = state.source
    work = onnx.ModelProto()
    work.CopyFrom(src.work)
    old = state.view
    view = GraphView(work, old.shapes, store=old.store)
    view.folded, view.folded_reads, view.partial = old.folded, old.folded_reads, old.partial
    dg = copy.copy(state.graph)
    dg.view = view
    by_id = {id(n): k for k, n in enumerate(src.work.graph.node)}
    ctx = state.calib_ctx
    if ctx is not None:
        ctx = copy.copy(ctx)
        ctx.notes = list(ctx.notes)
        ctx.consumers = [copy.copy(c) for c in ctx.consumers]
        for c in ctx.consumers:  # packed states name the node by index (see `pack`)
            c.node = work.graph.node[c.node if isinstance(c.node, int) else by_id[id(c.node)]]
    opts = copy.copy(state.options)
    opts.ratio = ratio
    return PruneState(state.input, opts, state.runner, in_memory=state.in_memory,
                      source=Source(work, src.original, src.path, src.in_bytes, src.store,
                                    src.files),
                      inputs=state.inputs, reference=state.reference,
                      copies=dict(state.copies), view=view,
                      before=state.before, calibration=state.calibration, blocks=state.blocks,
                      graph=dg, calib_ctx=ctx, scores=state.scores, timings=dict(state.timings))


