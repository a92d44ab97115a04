"""The pipeline, declared in one place:

    load → analyze → score → select → rewrite → validate → write (+ report)

`prune()` and `analyze_model()` are the Python API; the CLI is a thin layer over them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from . import __version__
from .dependency import KINDS, DependencyGraph, analyze
from .errors import UserError
from .fold import static_view
from .ir import WEIGHTS, GraphView
from .metrics import count_macs, count_params
from .model_io import (TWO_GB, WeightStore, check_graph_sanity, check_outputs,
                       check_tensor_storage, infer_shapes, open_model, save_model)
from .passes import validate as validate_pass
from .passes.rewrite import rewrite
from .passes.untie import retie_identical, untie_shared_constants
from .passes.score import CRITERIA
from .passes.select import Plan, apply_protect, select

PHASES = ("load", "depth", "analyze", "calibrate", "score", "select", "compensate", "rewrite",
          "validate", "write")


@dataclass
class PruneOptions:
    ratio: float = 0.3
    criterion: str = "magnitude"
    global_rank: bool = False
    round_to: int = 1
    min_keep: int = 1
    protect: list[str] = field(default_factory=list)
    seed: int = 0
    validate: bool = True
    dims: tuple[str, ...] = KINDS
    drop_blocks: int = 0
    # calibration for the data-aware criteria (see graphprune.calib.load_calibration): a .npz
    # path, a folder of images, a dict of arrays, or an int N for N random samples
    calib: object = None
    preprocess: str = "imagenet"
    labels: object = None
    # compensation after selection: None = what the criterion implies (obspa -> "obspa",
    # flap -> "flap"), False/"none" = off, or "flap" / "obspa" explicitly
    compensate: object = None
    # calibration from text for language models (graphprune.text): a text file, a tokenizer
    # (tokenizer.json, a tokenizer folder or a callable text -> ids) and the window length
    calib_text: object = None
    tokenizer: object = None
    seq_len: int = 128
    # remove this fraction of the model's parameters instead of `ratio` of every group's units
    # (uniform widths, or ranked across groups with global_rank; see passes.select)
    target_params: float | None = None

    def check(self) -> None:
        if isinstance(self.dims, str):
            self.dims = tuple(d.strip() for d in self.dims.split(",") if d.strip())
        bad = [d for d in self.dims if d not in KINDS]
        if bad or not self.dims:
            raise UserError(f"--dims takes a comma list of {','.join(KINDS)}; got {bad or 'nothing'}")
        if self.drop_blocks < 0:
            raise UserError(f"--drop-blocks must be >= 0, got {self.drop_blocks}")
        if not 0.0 <= self.ratio < 1.0:
            raise UserError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose from {sorted(CRITERIA)}")
        if self.calib_text is not None and self.calib is not None:
            raise UserError("give either --calib/--calib-random or --calib-text, not both")
        if self.target_params is not None and not 0.0 < self.target_params < 1.0:
            raise UserError(f"--target-params must be in (0, 1), got {self.target_params}")
        if self.round_to < 1:
            raise UserError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_keep < 1:
            raise UserError(f"--min-keep must be >= 1, got {self.min_keep}")
        if not 0 <= self.seed < 2 ** 63:
            raise UserError(f"--seed must be in [0, 2^63), got {self.seed}")
        if isinstance(self.protect, str):
            self.protect = [self.protect]


@dataclass
class PruneResult:
    """A pruned model and its report.

    For a model whose weights stay on disk (external data), `model` references them and `store`
    holds the rewritten tensors; such a model is validated when it is saved, from the written
    files, before they are renamed into place (`report["fidelity"]` is filled then).
    """

    model: onnx.ModelProto
    report: dict
    graph: DependencyGraph
    plan: Plan
    store: WeightStore | None = None
    pending: tuple | None = None  # reference (feeds, outputs) while validation waits for files
    source: str | None = None  # the input file
    external: bool = False  # the input kept its weights in external data: so does the output
    scores: dict = field(default_factory=dict)  # group id -> the criterion's unit scores

    def save(self, path: str | os.PathLike, external_data: bool = False) -> Path:
        t0 = time.perf_counter()
        p = Path(path)
        check_outputs(self.source, p)
        spent = {"validate": 0.0}
        check = None
        if self.pending is not None:
            ref = self.pending

            def check(tmp: str) -> None:
                t1 = time.perf_counter()
                self.report["fidelity"] = validate_pass.validate_file(tmp, ref)
                spent["validate"] = time.perf_counter() - t1

        token = WEIGHTS.set(self.store)
        try:
            size = save_model(self.model, p, external_data=external_data or self.external,
                              store=self.store, validate=check)
        finally:
            WEIGHTS.reset(token)
        self.pending = None
        t = self.report["timings_s"]
        t["validate"] = round(t.get("validate", 0.0) + spent["validate"], 4)
        self.report["output"] = str(p)
        self.report["file_bytes"]["after"] = size
        t["write"] = round(time.perf_counter() - t0 - spent["validate"], 4)
        return p


class _Timer:
    def __init__(self, progress: Callable[[str], None] | None):
        self.t: dict[str, float] = {}
        self.progress = progress

    def phase(self, name: str):
        timer = self

        class _P:
            def __enter__(self):
                if timer.progress:
                    timer.progress(name)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                spent = time.perf_counter() - self.t0
                timer.t[name] = round(timer.t.get(name, 0.0) + spent, 4)

        return _P()


@dataclass
class _Source:
    work: onnx.ModelProto  # what the passes edit (a copy when given a ModelProto)
    original: onnx.ModelProto | str  # what the reference run loads: the file when there is one
    path: str | None
    in_bytes: int
    store: WeightStore | None  # weights left on disk (None: all in memory)
    external: bool  # the input keeps weights in external data files


def _load(model, in_memory: bool = False) -> _Source:
    """The model to work on. From a file, large external weights stay on disk unless
    `in_memory` (passes that run the edited model in ONNX Runtime need them in memory)."""
    if isinstance(model, onnx.ModelProto):
        check_tensor_storage(model, None)
        if not model.graph.node:
            raise UserError("the model has no graph nodes")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        check_graph_sanity(work)
        return _Source(work, model, None, model.ByteSize(), None, False)
    path = Path(model)
    work, store, files = open_model(path)
    size = path.stat().st_size + sum(f.stat().st_size for f in files)
    if in_memory and store is not None:
        if size > TWO_GB:
            raise UserError(f"{path}: --drop-blocks, --calib, --benchmark and --html need the "
                            "weights in memory, which is not possible for models over 2 GB")
        store.materialize(work)
        store = None
    return _Source(work, str(path), str(path), size, store, bool(files))


def analyze_model(model, progress=None, dims=KINDS):
    """Dependency groups of a model (path or ModelProto), without changing it."""
    src = _load(model)
    token = WEIGHTS.set(src.store)
    try:
        untie_shared_constants(src.work)
        view = static_view(src.work, infer_shapes(src.work))
        return view, analyze(view, dims=dims)
    finally:
        WEIGHTS.reset(token)


def prune(model, ratio: float = 0.3, criterion: str = "magnitude",
          progress: Callable[[str], None] | None = None, in_memory: bool = False,
          **options) -> PruneResult:
    """Prune a model (path or ModelProto). Returns the pruned ModelProto and the report.

    Options: global_rank, round_to, min_keep, protect (list of fnmatch patterns), seed, validate,
    dims, drop_blocks. The input model object is never modified.

    Weights a model file keeps in external data are read one tensor at a time and never all
    held in memory; such a model is validated when the result is saved (see `PruneResult`).
    `in_memory` loads every weight instead (needed to run the pruned model from memory).
    """
    opts = PruneOptions(ratio=ratio, criterion=criterion, **options)
    opts.check()
    timer = _Timer(progress)
    with timer.phase("load"):
        src = _load(model, in_memory or bool(opts.drop_blocks) or _has_calibration(opts))
    token = WEIGHTS.set(src.store)
    try:
        return _prune(src, opts, timer)
    finally:
        WEIGHTS.reset(token)


def _prune(src: _Source, opts: PruneOptions, timer: _Timer) -> PruneResult:
    work, lazy = src.work, src.store is not None
    ref = None
    if opts.validate:
        # first: an input ORT cannot run is refused before any work, and for big models the
        # original's session is gone before anything else takes memory
        with timer.phase("validate"):
            ref = validate_pass.reference(src.original, seed=opts.seed, low_memory=lazy)
    with timer.phase("load"):
        params_before = count_params(GraphView(work))
        copies = untie_shared_constants(work)
        view = static_view(work, infer_shapes(work))
        before = {"params": params_before, "macs": count_macs(view)}
    cal = None
    if _has_calibration(opts):
        with timer.phase("calibrate"):
            cal = _load_calibration(src.original, work, opts)
    blocks = []
    if opts.drop_blocks:
        with timer.phase("depth"):
            view, blocks = _drop_blocks(work, view, opts, cal)
    with timer.phase("analyze"):
        dg = analyze(view, dims=opts.dims)
        apply_protect(dg, opts.protect)
    cctx = None
    if opts.criterion in CALIB_CRITERIA or cal is not None:
        with timer.phase("calibrate"):
            cctx = _calibrate(dg, opts, cal)
    with timer.phase("score"):
        extra = {"calib_ctx": cctx} if cctx is not None else {}
        scores = CRITERIA[opts.criterion](dg, seed=opts.seed, **extra)
    with timer.phase("select"):
        plan = select(dg, scores, opts.ratio, global_rank=opts.global_rank,
                      round_to=opts.round_to, min_keep=opts.min_keep,
                      params_budget=_params_budget(opts, params_before, view))
    comp = None
    mode = _compensation_mode(opts)
    if mode and cctx is not None and cctx.stats and plan.keep:
        from .passes.compensate import compensate

        with timer.phase("compensate"):
            comp = compensate(view, dg, plan, cctx, mode)
    with timer.phase("rewrite"):
        counts, shapes = rewrite(view, dg, plan)
        counts["constants_retied"] = retie_identical(work, copies)
    fid = None
    with timer.phase("validate"):
        after_view = GraphView(work, shapes)
        after = {"params": count_params(after_view), "macs": count_macs(after_view)}
        if opts.validate and not lazy:
            fid = validate_pass.validate(None, work, seed=opts.seed, ref=ref)
    report = build_report(src.path, opts, before, after, src.in_bytes, work, dg, plan, fid,
                          timer.t, counts, scores)
    if cctx is not None:
        report["calibration"] = {
            "source": cctx.source, "samples": cctx.samples,
            "consumers": len(cctx.consumers), "calibrated": cctx.calibrated,
            "data_free": sorted({st.source for st in cctx.stats.values()} - {"calibration"}),
            "notes": cctx.notes}
    if comp is not None:
        report["compensation"] = comp
    if blocks:
        report["blocks"] = [{"add": b.add, "kind": b.kind, "score": round(b.score, 6),
                             "dropped": b.dropped} for b in blocks]
        report["groups"] += [{"id": f"block:{b.add}", "kind": "block", "name": b.add,
                              "size_before": 1, "size_after": 0 if b.dropped else 1,
                              "members": [], "frozen_reason": None} for b in blocks]
    return PruneResult(work, report, dg, plan, store=src.store,
                       pending=ref if (lazy and opts.validate) else None, source=src.path,
                       external=src.external, scores=scores)


CALIB_CRITERIA = ("wanda", "flap", "obspa", "amp", "lrp")
STATS_CRITERIA = ("wanda", "flap", "obspa", "amp")


def _params_budget(opts, params_before: int, view) -> float | None:
    """Parameters width pruning still has to remove for --target-params (blocks dropped by
    --drop-blocks already count)."""
    if opts.target_params is None:
        return None
    return opts.target_params * params_before - (params_before - count_params(view))


def _has_calibration(opts) -> bool:
    return opts.calib is not None or opts.calib_text is not None


def _load_calibration(original, work, opts):
    """The calibration samples: `opts.calib` (npz, images, arrays, N random) or token windows
    of `opts.calib_text` (see graphprune.calib and graphprune.text). `original` is the input
    (path or ModelProto) ORT can run, `work` the loaded copy (its graph inputs name the feeds)."""
    from .calib import load_calibration

    if opts.calib_text is not None:
        from .text import text_calibration

        cal = text_calibration(work, opts.calib_text, opts.tokenizer, opts.seq_len)
        return load_calibration(cal, original, labels=opts.labels)
    return load_calibration(opts.calib, original, preprocess=opts.preprocess,
                            labels=opts.labels, seed=opts.seed)


def _calibrate(dg, opts, cal):
    """Consumers and activation statistics for the data-aware criteria (see graphprune.calib):
    measured on the calibration samples `cal`, else data-free for obspa; wanda/flap without
    data fall back to magnitude (their notes say so)."""
    from .calib import build_context

    # consumer statistics serve the statistics-based criteria and compensation; lrp runs the
    # model itself, magnitude/random need nothing (the samples may be there for depth scoring)
    stats = opts.criterion in STATS_CRITERIA or _compensation_mode(opts) is not None
    ctx = build_context(dg, cal, data_free=opts.criterion == "obspa", stats=stats)
    ctx.source = cal.source if cal is not None else (
        "data-free" if opts.criterion == "obspa" else "none")
    ctx.samples = cal.n if cal is not None else 0
    if cal is None and opts.criterion in ("wanda", "flap", "amp"):
        ctx.notes.append(f"{opts.criterion}: no calibration data; every group is scored by "
                         "magnitude")
    return ctx


def _compensation_mode(opts) -> str | None:
    c = opts.compensate
    if c is None:
        return {"obspa": "obspa", "flap": "flap"}.get(opts.criterion)
    if c is False or c == "none":
        return None
    if c is True:
        return {"flap": "flap"}.get(opts.criterion, "obspa")
    if c not in ("flap", "obspa"):
        raise UserError(f"compensate takes flap, obspa or none; got {c!r}")
    return c


def _drop_blocks(work, view, opts, cal=None):
    """Score residual blocks on the calibration samples (random inputs without them) and
    remove the `drop_blocks` least useful."""
    from .passes.depth import (calibration_feeds, drop_blocks, find_residual_blocks,
                               score_blocks, split_feeds)

    blocks = find_residual_blocks(view)
    if opts.drop_blocks > len(blocks):
        raise UserError(f"--drop-blocks {opts.drop_blocks}: the model has only {len(blocks)} "
                        "residual blocks")
    feeds = split_feeds(work, cal.feeds) if cal is not None else calibration_feeds(work, view,
                                                                              seed=opts.seed)
    score_blocks(work, blocks, feeds)
    drop_blocks(work, blocks, opts.drop_blocks)
    return static_view(work, infer_shapes(work)), blocks


def build_report(in_path, opts, before, after, in_bytes, work, dg, plan, fid, timings, counts,
                 scores) -> dict:
    groups = []
    for g in dg.groups:
        if not g.members and g.frozen_reason == "no weights to shrink":
            continue
        if g.frozen_reason == "no weights to shrink":
            continue
        entry = {
            "id": g.id,
            "kind": g.kind,
            "name": g.label(),
            "size_before": g.n_units,
            "size_after": len(plan.keep[g.id]) if g.id in plan.keep else g.n_units,
            "members": [f"{m.tensor}[{m.axis}]" for m in g.members],
            "frozen_reason": g.frozen_reason,
        }
        if g.id in scores and len(scores[g.id]):
            s = scores[g.id]
            entry["score_stats"] = {"min": float(np.min(s)), "mean": float(np.mean(s)),
                                    "max": float(np.max(s))}
        groups.append(entry)
    prunable = [g for g in groups if g["frozen_reason"] is None]
    return {
        "graphprune_version": __version__,
        "input": in_path,
        "output": None,
        "criterion": opts.criterion,
        "target": {"ratio": opts.ratio, "params": opts.target_params, "dims": list(opts.dims),
                   "global": opts.global_rank, "round_to": opts.round_to,
                   "min_keep": opts.min_keep, "protect": list(opts.protect), "seed": opts.seed},
        "params": {"before": before["params"], "after": after["params"]},
        "macs": {"before": before["macs"], "after": after["macs"]},
        "file_bytes": {"before": in_bytes, "after": work.ByteSize()},
        "summary": {
            "groups": len(groups),
            "prunable_groups": len(prunable),
            "pruned_groups": len(plan.keep),
            "frozen_groups": len(groups) - len(prunable),
            "units_before": int(sum(g["size_before"] for g in prunable)),
            "units_after": int(sum(g["size_after"] for g in prunable)),
            "unsupported_ops": dict(sorted(dg.unsupported_ops.items())),
            **counts,
        },
        "groups": groups,
        "fidelity": fid,
        "timings_s": {k: timings.get(k, 0.0) for k in PHASES},
    }
