"""Statistics correction: give every kept output channel of every layer the mean and variance
it had in the original model on the calibration data.

After pruning (and compensation or reconstruction) the pre-activation outputs of the layers
downstream of a removed unit drift: least-squares fits shrink their variance, and the error
of earlier layers shifts their means. In the spirit of REPAIR and of EagleEye's adaptive
BatchNorm (the exporters fold BatchNorm into the convolutions, so there is usually none left to
re-estimate), each channel c of a producer's output y gets the affine correction

    y_c ← a_c (y_c − μ′_c) + μ_c,   a_c = σ_c / σ′_c   (mode "meanvar"; a_c = 1 for "mean")

(μ, σ: the original model's; μ′, σ′: the pruned model's, after the corrections upstream),
folded into the producer's weight (output channel c scaled by a_c) and bias. Producers are every
Conv (depthwise and grouped too), Gemm and MatMul with a constant, unshared weight whose output
changed; they are corrected in graph order, stage by stage (the runner's `Segments`: about one
forward pass of each model in all), so each layer's statistics are measured with the
corrections upstream applied. Scale factors are clipped to [1/`MAX_SCALE`, `MAX_SCALE`];
channels (nearly) constant in either model only get the mean shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..analysis.graph import DependencyGraph
from ..calibration.stats import Runner, Segments
from ..ir import GraphView, attr, subgraph_outer_names
from .compensate import _add_to_bias, _insert_after
from .masking import BATCH, find_bias, masked_overrides
from .rewrite import Rewriter, keep_positions
from .select import Plan

MODES = ("meanvar", "mean")
MAX_SCALE = 4.0


@dataclass
class Producer:
    """A layer whose output channels are corrected (attribute names as `Consumer`'s,
    so the bias helpers serve both)."""

    node: onnx.NodeProto
    op: str
    y: str
    y_axis: int
    w: str
    out_axis: int  # the weight axis of the output channels
    bias: str
    bias_kind: str = "new"
    bias_name: str = ""
    tap: str = ""  # the output measured and corrected: after the bias (a following Add's)
    stage: int = 0
    n: float = 0.0
    s: np.ndarray | None = None  # [Σy, Σy², Σy′, Σy′²] per channel
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None  # y ← scale·y + shift


def find_producers(view: GraphView) -> list[Producer]:
    """Conv / Gemm / MatMul nodes with a constant weight read by no other node."""
    out = []
    for node in view.graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or not node.output:
            continue
        w = node.input[1]
        if w not in view.consts or len(view.consumers.get(w, [])) != 1 \
                or view.consts[w].kind == "constant_of_shape" \
                or not np.issubdtype(np.dtype(view.consts[w].dtype), np.floating) \
                or node.input[0] in view.consts:
            continue
        shape = view.consts[w].shape
        bias = node.input[2] if len(node.input) > 2 else ""
        if node.op_type == "Conv" and len(shape) >= 3:
            p = Producer(node, "Conv", node.output[0], 1, w, 0, bias)
        elif node.op_type == "Gemm" and len(shape) == 2 and float(attr(node, "alpha", 1.0)) == 1.0:
            p = Producer(node, "Gemm", node.output[0], 1, w, 0 if attr(node, "transB", 0) else 1,
                         bias)
        elif node.op_type == "MatMul" and len(shape) == 2:
            rank = view.rank(node.output[0]) or view.rank(node.input[0])
            if rank is None:
                continue
            p = Producer(node, "MatMul", node.output[0], rank - 1, w, 1, "")
        else:
            continue
        p.bias_kind, p.bias_name, _ = find_bias(view, p, int(shape[p.out_axis]))
        if p.bias_kind != "none":
            p.tap = view.consumers[p.y][0].output[0] if p.bias_kind == "add" else p.y
            out.append(p)
    return out


def producer_stages(view: GraphView, prods: dict[str, Producer], zeroed: set[str],
                    layers: dict | None = None) -> set[str]:
    """Tensors whose value differs in the masked model (they read a zeroed or refitted weight,
    or lie downstream of one); sets each producer's stage, and with `layers` (refitted
    consumers by output, see `transforms.reconstruct`) each layer's stage too: how many
    refitted or corrected layers lie upstream of its input."""
    dirty: set[str] = set()
    level: dict[str, int] = {}
    layers = layers or {}
    for node in view.graph.node:
        ins = [i for i in node.input if i] + sorted(subgraph_outer_names(node))
        is_dirty = any(i in dirty or i in zeroed for i in ins)
        base = max((level.get(i, 0) for i in ins), default=0)
        out0 = node.output[0] if node.output else None
        lay = layers.get(out0)
        if lay is not None:
            lay.stage = level.get(lay.c.x, 0)
            base = lay.stage + 1
        p = prods.get(out0)
        if p is not None:
            p.stage = base - 1 if lay is not None else base
            base = p.stage + 1
        for o in node.output:
            if o:
                level[o] = base
                if is_dirty:
                    dirty.add(o)
    return dirty


def _channel_sums(a: np.ndarray, axis: int) -> tuple[float, np.ndarray, np.ndarray]:
    r = np.moveaxis(np.asarray(a, np.float64), axis, -1).reshape(-1, a.shape[axis])
    return len(r), r.sum(0), np.einsum("ij,ij->j", r, r)


def correct(view: GraphView, dg: DependencyGraph, plan: Plan, original: onnx.ModelProto,
            feeds: dict[str, np.ndarray], runner: Runner, mode: str = "meanvar",
            batch: int = BATCH) -> dict:
    """Correct the statistics of every changed producer (see the module docstring), in place
    on `view.model`; `original` is the unpruned model (before any compensation). Returns a
    summary for the report. (`transforms.reconstruct` runs the same correction interleaved with
    its refits.)"""
    if mode not in MODES:
        raise ValueError(f"unknown statistics correction {mode!r}")
    keep = keep_positions(dg, plan)
    overrides = masked_overrides(view, dg, plan)
    # the working model may carry compensated weights and the bias nodes compensation added
    # (which `view`, the analysis' view, does not index): the masked model starts from it
    edited_model = view.model
    fv = GraphView(edited_model, view.shapes)
    prods = {p.y: p for p in find_producers(fv)}
    dirty = producer_stages(fv, prods, set(overrides) | _changed(fv, original))
    todo = [p for p in prods.values() if p.y in dirty]
    ref, edited = runner.segments(original, feeds, batch), runner.segments(edited_model, feeds,
                                                                           batch)
    stages = sorted({p.stage for p in todo})
    for s in stages:
        measure(fv, [p for p in todo if p.stage == s], ref, edited, overrides, {}, mode, keep)
    done = write(view, fv, todo, keep)
    return {"mode": mode, "stages": len(stages), "layers": done}


def measure(fv: GraphView, stage: list[Producer], ref: Segments, edited: Segments,
            overrides: dict, adds: dict, mode: str, keep) -> None:
    """Run one stage's producers in both models, set their corrections, and apply them to
    the values the edited model's later stages read (the producers' nodes have run)."""
    taps = sorted({p.tap for p in stage})
    for yo, ye in zip(ref.advance(taps), edited.advance(taps, overrides, adds)):
        for p in stage:
            n, s1, s2 = _channel_sums(yo[p.tap], p.y_axis)
            _, t1, t2 = _channel_sums(ye[p.tap], p.y_axis)
            if p.s is None:
                p.s = np.zeros((4, len(s1)))
            p.n += n
            p.s += np.stack([s1, s2, t1, t2])
    for p in stage:
        _affine(p, mode, keep.get((p.w, p.out_axis)))
        bshape = [1] * (fv.rank(p.y) or fv.rank(p.node.input[0]) or 1)
        bshape[p.y_axis] = -1
        sc = p.scale.reshape(bshape).astype(np.float32)
        sh = p.shift.reshape(bshape).astype(np.float32)
        edited.update(p.tap, lambda v, sc=sc, sh=sh: (v * sc + sh).astype(v.dtype))


def _changed(view: GraphView, original: onnx.ModelProto) -> set[str]:
    """Weights of `view.model` whose value differs from `original`'s (compensated ones)."""
    orig = GraphView(original)
    out = set()
    for name, c in view.consts.items():
        o = orig.consts.get(name)
        if o is None:
            out.add(name)
        elif c.numel > 1 and c.kind != "constant_of_shape" and \
                np.issubdtype(np.dtype(c.dtype), np.floating):
            a, b = view.const_value(name), orig.const_value(name)
            if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b):
                out.add(name)
    return out


def _affine(p: Producer, mode: str, out_keep) -> None:
    m, sq, m2, sq2 = p.s / max(p.n, 1.0)
    var, var2 = np.maximum(sq - m * m, 0.0), np.maximum(sq2 - m2 * m2, 0.0)
    scale = np.ones_like(m)
    if mode == "meanvar":
        ok = (var > 1e-12 * (1 + m * m)) & (var2 > 1e-12 * (1 + m2 * m2))
        scale[ok] = np.clip(np.sqrt(var[ok] / var2[ok]), 1 / MAX_SCALE, MAX_SCALE)
    shift = m - scale * m2
    if out_keep is not None:  # removed channels: nobody reads them
        drop = np.setdiff1d(np.arange(len(m)), out_keep)
        scale[drop], shift[drop] = 1.0, 0.0
    p.scale, p.shift = scale, shift


def write(view: GraphView, fv: GraphView, prods: list[Producer], keep) -> list[dict]:
    """Fold every correction into its producer's weight and bias. `view` indexes the
    constants the rewrite will slice (full widths); `fv` (a view of the same model built after
    compensation) also knows the biases compensation created, which are already sliced to the
    kept outputs."""
    for p in prods:  # compensation may have given the producer a bias since it was found
        shape = fv.consts[p.w].shape
        p.bias_kind, p.bias_name, _ = find_bias(fv, p, int(shape[p.out_axis]))
    rw, rw_new = Rewriter(view, {}), Rewriter(fv, {})
    new_nodes: list = []
    done = []
    for p in prods:
        if p.scale is None:
            continue
        w = np.asarray(view.const_value(p.w))
        shape = [1] * w.ndim
        shape[p.out_axis] = -1
        rw.write_const(p.w, (w.astype(np.float64) * p.scale.reshape(shape)).astype(w.dtype))
        # the corrected output includes the bias: b ← scale·b + shift (a Gemm's as beta·C)
        if p.bias_kind in ("input", "add"):
            beta = float(attr(p.node, "beta", 1.0)) if (p.op == "Gemm" and p.bias_kind == "input") \
                else 1.0
            scale, shift = p.scale, p.shift / beta
            if p.bias_name in view.consts:
                b, writer = np.asarray(view.const_value(p.bias_name)), rw
            else:  # created by compensation, already sliced to the kept outputs
                b, writer = np.asarray(fv.const_value(p.bias_name)), rw_new
                out_keep = keep.get((p.w, p.out_axis))
                if out_keep is not None:
                    scale, shift = scale[out_keep], shift[out_keep]
            new_b = scale * b.reshape(-1).astype(np.float64) + shift
            writer.write_const(p.bias_name, new_b.reshape(b.shape).astype(b.dtype))
            how = "updated"
        else:
            how = _add_to_bias(fv, rw_new, p, p.shift, keep, new_nodes) or "unchanged"
        done.append({"node": p.node.name or p.y, "op": p.op, "stage": p.stage,
                     "scale_min": round(float(p.scale.min()), 4),
                     "scale_max": round(float(p.scale.max()), 4), "bias": how})
    _insert_after(fv, new_nodes)
    return done
