"""Compensation: after selection, before the rewrite, let the consumers of removed units absorb
what those units used to contribute, so accuracy survives without fine-tuning.

Modes (chosen by the criterion unless the caller says otherwise):

- ``flap``: bias only. For every consumer losing input positions P,
  b ← b + W_{:,P} · E[X_P] (Conv: summed over kernel offsets), so the layer's mean output over
  the calibration data is unchanged.
- ``obspa``: least-squares reconstruction. With the bias-augmented Hessian H (see
  `graphprune.calibration.stats.augmented_hessian`), the kept columns K and the bias get
  δ_{K∪b} = W_P · H_{P,K∪b} · (H_{K∪b,K∪b})⁻¹, which is the OBS update
  δW = −W_P ([H⁻¹]_PP)⁻¹ [H⁻¹]_{P,:} restricted to the survivors, computed with one Cholesky
  solve on the kept block (stable for thousands of columns). Conv rows are (output channel,
  kernel offset) pairs sharing the channel Hessian; the per-row bias updates of one output
  channel add up to its bias update.

Only the consumer weight's *surviving* columns and its bias change here; the rewrite then slices
the removed columns away as usual. A consumer without a bias gets one: a new Conv/Gemm bias
input, or an ``Add`` after a MatMul. A new bias is created already sliced to the consumer's kept
output channels, because the rewrite only slices tensors the dependency analysis knows.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..analysis.graph import DependencyGraph
from ..calibration.stats import CalibContext, Consumer, augmented_hessian
from ..ir import GraphView, attr
from .rewrite import Rewriter, keep_positions
from .select import Plan

MODES = ("flap", "obspa")


def compensate(view: GraphView, dg: DependencyGraph, plan: Plan, ctx: CalibContext,
               mode: str) -> dict:
    """Apply `mode` compensation in place on `view.model`. Returns a summary for the report."""
    import scipy.linalg  # only compensating runs pay its import time

    if mode not in MODES:
        raise ValueError(f"unknown compensation {mode!r}")
    keep = keep_positions(dg, plan)
    rw = Rewriter(view, {})
    done, skipped, seen_w = [], [], set()
    new_nodes: list[tuple[object, object]] = []
    for c in ctx.consumers:
        kept = keep.get((c.w, c.w_axis))
        st = ctx.stats.get((c.x, c.x_axis))
        if kept is None or st is None:
            continue
        label = c.node.name or c.node.output[0]
        if c.w in seen_w:
            skipped.append(f"{label}: weight shared with another consumer")
            continue
        seen_w.add(c.w)
        w = np.asarray(view.const_value(c.w))
        wm = c.matrix(w.astype(np.float64))
        n_in = wm.shape[1]
        pruned = np.setdiff1d(np.arange(n_in), kept)
        if mode == "flap":
            d_rows = wm[:, pruned] @ st.mean[pruned]
        else:
            ha = augmented_hessian(st)
            kb = np.append(kept, n_in)  # kept columns + the bias input
            rhs = ha[np.ix_(kb, pruned)]
            try:
                cf = scipy.linalg.cho_factor(ha[np.ix_(kb, kb)], lower=True)
                sol = scipy.linalg.cho_solve(cf, rhs)  # (K+1, P)
            except np.linalg.LinAlgError:
                sol = np.linalg.lstsq(ha[np.ix_(kb, kb)], rhs, rcond=None)[0]
            delta = wm[:, pruned] @ sol.T  # (rows, K+1)
            wm = wm.copy()
            wm[:, kept] += delta[:, :-1]
            d_rows = delta[:, -1]
            rw.write_const(c.w, c.unmatrix(wm, w.shape).astype(w.dtype))
        d_out = np.bincount(c.row_outputs(w.shape), weights=d_rows,
                            minlength=w.shape[c.out_axis])
        how = _add_to_bias(view, rw, c, d_out, keep, new_nodes)
        if how is None:
            skipped.append(f"{label}: bias is not a constant of a known shape")
        done.append({"node": label, "op": c.op, "removed_inputs": int(len(pruned)),
                     "bias": how or "unchanged"})
    _insert_after(view, new_nodes)
    return {"mode": mode, "layers": done, "skipped": skipped}


def _add_to_bias(view: GraphView, rw: Rewriter, c: Consumer, d_out: np.ndarray, keep,
                 new_nodes) -> str | None:
    """Add `d_out` (one value per output channel) to the consumer's bias; create one if none."""
    node = c.node
    if c.op == "Gemm":
        beta = float(attr(node, "beta", 1.0))
        if c.bias:
            if beta == 0.0:
                return None
            d_out = d_out / beta
        elif beta != 1.0:
            # a new C input would be scaled by beta; there is no C so beta is free to reset
            for i, a in enumerate(node.attribute):
                if a.name == "beta":
                    del node.attribute[i]
                    break
    if c.bias:
        if c.bias not in view.consts or view.consts[c.bias].kind == "constant_of_shape":
            return None
        b = np.asarray(view.const_value(c.bias))
        if b.ndim == 0 or b.shape[-1] != len(d_out):
            return None
        rw.write_const(c.bias, (b.astype(np.float64) + d_out).astype(b.dtype))
        return "updated"
    dtype = view.consts[c.w].dtype
    out_keep = keep.get((c.w, c.out_axis))
    value = (d_out if out_keep is None else d_out[out_keep]).astype(dtype)
    base = f"{node.name or node.output[0]}_bias_comp"
    name = rw.fresh_name(base)
    rw.add_initializer(name, value)
    if c.op in ("Conv", "Gemm", "MatMulNBits"):
        slot = 5 if c.op == "MatMulNBits" else 2
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name
        return "added"
    # MatMul: y = MatMul(x, W) becomes y = Add(MatMul(x, W), b), keeping y's name
    y = node.output[0]
    mid = rw.fresh_name(f"{y}_nobias")
    node.output[0] = mid
    view.same_shape[mid] = y  # so the pruned model's MACs still count the MatMul
    add = helper.make_node("Add", [mid, name], [y], name=rw.fresh_name(f"{base}_add"))
    new_nodes.append((node, add))
    return "added (Add node)"


def _insert_after(view: GraphView, pairs) -> None:
    """Insert each new node right after its node, in place: the nodes already there stay the
    same messages, so what the view holds of them (a Constant node that is a weight, the
    consumers of a tensor) still edits the model. Rebuilding the list would copy every node
    and leave those references on detached copies."""
    if not pairs:
        return
    after = {id(n): a for n, a in pairs}
    nodes = view.model.graph.node
    at = [(i + 1, after[id(n)]) for i, n in enumerate(nodes) if id(n) in after]
    for i, new in reversed(at):
        nodes.insert(i, new)
