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
from .ir import GraphView
from .metrics import count_macs, count_params
from .model_io import file_bytes, infer_shapes, load_model, save_model
from .passes import validate as validate_pass
from .passes.rewrite import rewrite
from .passes.untie import retie_identical, untie_shared_constants
from .passes.score import CRITERIA
from .passes.select import Plan, apply_protect, select

PHASES = ("load", "depth", "analyze", "score", "select", "rewrite", "validate", "write")


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
        if self.round_to < 1:
            raise UserError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_keep < 1:
            raise UserError(f"--min-keep must be >= 1, got {self.min_keep}")


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: dict
    graph: DependencyGraph
    plan: Plan

    def save(self, path: str | os.PathLike, external_data: bool = False) -> Path:
        t0 = time.perf_counter()
        p = Path(path)
        size = save_model(self.model, p, external_data=external_data)
        self.report["output"] = str(p)
        self.report["file_bytes"]["after"] = size
        self.report["timings_s"]["write"] = round(time.perf_counter() - t0, 4)
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
                timer.t[name] = round(time.perf_counter() - self.t0, 4)

        return _P()


def _load(model) -> tuple[onnx.ModelProto, str | None, int | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None, None
    path = Path(model)
    return load_model(path), str(path), file_bytes(path) if path.exists() else None


def analyze_model(model, progress=None, dims=KINDS):
    """Dependency groups of a model (path or ModelProto), without changing it."""
    m, _, _ = _load(model)
    work = onnx.ModelProto()
    work.CopyFrom(m)
    untie_shared_constants(work)
    view = static_view(work, infer_shapes(work))
    return view, analyze(view, dims=dims)


def prune(model, ratio: float = 0.3, criterion: str = "magnitude",
          progress: Callable[[str], None] | None = None, **options) -> PruneResult:
    """Prune a model (path or ModelProto). Returns the pruned ModelProto and the report.

    Options: global_rank, round_to, min_keep, protect (list of fnmatch patterns), seed, validate.
    The input model object is never modified.
    """
    opts = PruneOptions(ratio=ratio, criterion=criterion, **options)
    opts.check()
    timer = _Timer(progress)
    with timer.phase("load"):
        original, in_path, in_bytes = _load(model)
        work = onnx.ModelProto()
        work.CopyFrom(original)
        params_before = count_params(GraphView(work))
        copies = untie_shared_constants(work)
        view = static_view(work, infer_shapes(work))
        before = {"params": params_before, "macs": count_macs(view)}
        if in_bytes is None:
            in_bytes = original.ByteSize()
    blocks = []
    if opts.drop_blocks:
        with timer.phase("depth"):
            view, blocks = _drop_blocks(work, view, opts)
    with timer.phase("analyze"):
        dg = analyze(view, dims=opts.dims)
        apply_protect(dg, opts.protect)
    with timer.phase("score"):
        scores = CRITERIA[opts.criterion](dg, seed=opts.seed)
    with timer.phase("select"):
        plan = select(dg, scores, opts.ratio, global_rank=opts.global_rank,
                      round_to=opts.round_to, min_keep=opts.min_keep)
    with timer.phase("rewrite"):
        counts = rewrite(view, dg, plan)
        counts["constants_retied"] = retie_identical(work, copies)
    fid = None
    with timer.phase("validate"):
        after_view = static_view(work, infer_shapes(work))
        after = {"params": count_params(after_view), "macs": count_macs(after_view)}
        if opts.validate:
            from .backends import ort as ortb

            # the original runs from its file when there is one: no re-serialization
            osess = ortb.session(in_path) if in_path else None
            fid = validate_pass.validate(original, work, seed=opts.seed, original_sess=osess)
    report = build_report(in_path, opts, before, after, in_bytes, work, dg, plan, fid, timer.t,
                          counts, scores)
    if blocks:
        report["blocks"] = [{"add": b.add, "kind": b.kind, "score": round(b.score, 6),
                             "dropped": b.dropped} for b in blocks]
        report["groups"] += [{"id": f"block:{b.add}", "kind": "block", "name": b.add,
                              "size_before": 1, "size_after": 0 if b.dropped else 1,
                              "members": [], "frozen_reason": None} for b in blocks]
    return PruneResult(work, report, dg, plan)


def _drop_blocks(work, view, opts):
    """Score residual blocks on random inputs and remove the `drop_blocks` least useful."""
    from .passes.depth import calibration_feeds, drop_blocks, find_residual_blocks, score_blocks

    blocks = find_residual_blocks(view)
    if opts.drop_blocks > len(blocks):
        raise UserError(f"--drop-blocks {opts.drop_blocks}: the model has only {len(blocks)} "
                        "residual blocks")
    score_blocks(work, blocks, calibration_feeds(work, view, seed=opts.seed))
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
        "target": {"ratio": opts.ratio, "dims": list(opts.dims), "global": opts.global_rank,
                   "round_to": opts.round_to,
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
