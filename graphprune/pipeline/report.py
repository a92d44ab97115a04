"""The JSON report, built from the final state of a prune (keys: see README "Report")."""
from __future__ import annotations

import numpy as np
import onnx

from ..ir.storage import approx_bytes
from ..version import __version__
from .options import allocating
from .state import PHASES, PruneState


def _io(vi) -> dict:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tt.shape.dim] if tt.HasField("shape") else None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
    return {"name": vi.name, "dtype": dtype, "shape": dims}


def model_info(model: onnx.ModelProto) -> dict:
    """Opset, IR version, producer and the graph's inputs and outputs with their shapes."""
    inits = {t.name for t in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    return {"opset": opset, "ir_version": model.ir_version, "producer": producer or None,
            "inputs": [_io(i) for i in model.graph.input if i.name not in inits],
            "outputs": [_io(o) for o in model.graph.output]}


def build_report(state: PruneState) -> dict:
    opts, dg, plan, src = state.options, state.graph, state.plan, state.source
    groups = []
    for g in dg.groups:
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
            "kept": plan.keep[g.id].tolist() if g.id in plan.keep else None,
        }
        s = state.scores.get(g.id)
        if s is not None and len(s):
            entry["score_stats"] = {"min": float(np.min(s)), "mean": float(np.mean(s)),
                                    "max": float(np.max(s))}
        groups.append(entry)
    prunable = [g for g in groups if g["frozen_reason"] is None]
    report = {
        "graphprune_version": __version__,
        "input": src.path,
        "output": None,
        "criterion": opts.criterion_name,
        "target": {"ratio": opts.ratio, "params": opts.target_params, "macs": opts.target_macs,
                   "dims": list(opts.dims), "global": opts.global_rank,
                   "round_to": opts.round_to, "min_keep": opts.min_keep,
                   "max_ratio": opts.max_ratio, "ratio_for": dict(opts.ratio_for),
                   "protect": list(opts.protect), "protect_op": list(opts.protect_op),
                   "steps": opts.steps, "seed": opts.seed,
                   "allocate": allocating(opts), "allocation": state.allocation},
        "model": model_info(src.work),
        "ops": {"before": state.before.get("ops", {}), "after": state.after.get("ops", {})},
        "params": {"before": state.before["params"], "after": state.after["params"]},
        "macs": {"before": state.before["macs"], "after": state.after["macs"],
                 "input_shapes": state.inputs.cost_shapes(),
                 "assumed": list(state.inputs.assumed)},
        "file_bytes": {"before": src.in_bytes, "after": approx_bytes(src.work)},
        "summary": {
            "groups": len(groups),
            "prunable_groups": len(prunable),
            "pruned_groups": len(plan.keep),
            "frozen_groups": len(groups) - len(prunable),
            "units_before": int(sum(g["size_before"] for g in prunable)),
            "units_after": int(sum(g["size_after"] for g in prunable)),
            "unsupported_ops": dict(sorted(dg.unsupported_ops.items())),
            **state.counts,
        },
        "groups": groups,
        "fidelity": state.fidelity,
        "timings_s": {k: state.timings.get(k, 0.0) for k in PHASES},
    }
    ctx = state.calib_ctx
    if ctx is not None:
        report["calibration"] = {
            "source": ctx.source, "samples": ctx.samples,
            "consumers": len(ctx.consumers), "calibrated": ctx.calibrated,
            "data_free": sorted({st.source for st in ctx.stats.values()} - {"calibration"}),
            "notes": ctx.notes}
    if state.io:
        report["io_changes"] = io_changes(state)
    faults = (state.fidelity or {}).get("input_faults")
    if faults:
        report["input_faults"] = faults
    if state.rotation is not None:
        report["rotation"] = state.rotation
    if state.compensation is not None:
        report["compensation"] = state.compensation
    if state.correction is not None:
        report["correction"] = state.correction
    if state.blocks:
        report["blocks"] = [{"add": b.add, "kind": b.kind, "score": round(b.score, 6),
                             "dropped": b.dropped} for b in state.blocks]
        report["groups"] += [{"id": f"block:{b.add}", "kind": "block", "name": b.add,
                              "size_before": 1, "size_after": 0 if b.dropped else 1,
                              "members": [], "frozen_reason": None} for b in state.blocks]
    return report


def io_changes(state: PruneState) -> list[dict]:
    """How the model's input/output signature changed: KV-cache tensors resized (their head
    axis follows the key/value heads), removed (the cache pair of a dropped attention block)
    or renamed (cache layers renumbered after a drop)."""
    io, view = state.io, state.view
    kinds = dict(state.graph_io)
    new_name = io.renamed
    out = []
    for name, kind in kinds.items():
        if name in io.removed:
            out.append({"name": name, "io": kind, "change": "removed"})
            continue
        entry = {"name": name, "io": kind}
        if name in new_name:
            entry.update(change="renamed", renamed_to=new_name[name])
        cur = new_name.get(name, name)
        if cur in io.kept:
            axis, pos = io.kept[cur]
            entry.update(change=entry.get("change", "resized") if "renamed_to" not in entry
                         else "renamed+resized", axis=axis,
                         before=view.static_dim(cur, axis), after=int(len(pos)))
        if "change" in entry:
            out.append(entry)
    return out
