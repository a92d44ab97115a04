"""Rotating the residual stream to its principal axes before hidden-size pruning.

A decoder's residual stream can be rotated by any orthogonal Q without changing what the model
computes (the computational invariance SliceGPT builds on): every weight that writes the stream
(embedding rows, output projections, their biases) is multiplied by Q, every weight that reads
it by Qᵀ, residual additions commute with Q, and an RMS norm's statistic Σx² is the same in
any basis. Only a norm's per-feature scale γ does not commute: it is folded into the weights
that read the norm's output (diag(γ)·W), or, where such a weight is also written to (an
embedding table tied to the language-model head), replaced by the d×d matrix Qᵀ diag(γ) Q.

Rotated to the eigenvectors of the normalized stream's covariance (pooled over every norm's
input on the calibration samples), the stream's energy sits in its first features: removing
the last ones removes the directions the model uses least, where removing original features
removes whole coordinates that every direction shares. Hidden-size pruning then cuts far less.

Every op on the stream must be one of those above; anything else (a LayerNorm's mean, which a
rotation does not preserve, a reshape, the stream as a graph output) leaves the model as it is,
and the reason goes into the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis.graph import DependencyGraph, Group
from ..calibration.stats import Runner
from ..ir import GraphView
from ..ops.registry import ROLE_IN
from .depth import remove_dead_code
from .rewrite import Rewriter

BATCH = 8  # calibration samples per run that taps the normalized streams
PASS_THROUGH = {"Add", "Sub", "Cast", "Identity"}  # commute with a rotation of every operand
LINEAR = {"MatMul", "Gemm", "Gather"}  # a constant weight along the stream axis is rotated
SQUARES_READ_BY = {"ReduceMean", "ReduceSum"}  # Σx² over the stream axis: invariant
SIZE_ONLY = {"Shape", "Size"}  # read the stream's sizes, which a rotation keeps


@dataclass
class Scale:
    """A norm's per-feature scale: `node` multiplies the normalized stream `normed` by the
    constant `gamma`; `fold_into`: the weights (name, stream axis) that read its output and
    absorb it, or None when it becomes a matrix."""
    node: onnx.NodeProto
    gamma: str
    normed: str
    fold_into: list[tuple[str, int]] | None


@dataclass
class StreamRotation:
    group: Group
    weights: list[tuple[str, int]]  # every constant rotated: (name, stream axis)
    scales: list[Scale] = field(default_factory=list)


def _from_const(view: GraphView, t: str) -> bool:
    """A transpose of a constant (a tied language-model head's weight): rotated at its source."""
    p = view.producer.get(t)
    return p is not None and p.op_type == "Transpose" and p.input[0] in view.consts


def _stream_on_last_axis(view: GraphView, grp: Group, stream: set[str]) -> bool:
    """Every position of the group is its own unit, and every stream tensor carries the
    hidden size on its last axis."""
    for (t, a), units in grp.unit_of.items():
        if not np.array_equal(units, np.arange(len(units))):
            return False
        if t in stream and a != (view.rank(t) or 0) - 1:
            return False
    return True


def _is_square(view: GraphView, t: str) -> bool:
    """x², computed by Pow(x, 2) or Mul(x, x)."""
    p = view.producer.get(t)
    if p is None:
        return False
    if p.op_type == "Mul":
        return len(p.input) == 2 and p.input[0] == p.input[1]
    if p.op_type != "Pow" or len(p.input) < 2:
        return False
    e = view.small_const(p.input[1])
    return e is not None and np.asarray(e).size == 1 and float(np.asarray(e).reshape(-1)[0]) == 2.0


def _size_one_on_last(view: GraphView, name: str) -> bool:
    shape = view.shape(name)
    return shape is not None and len(shape) >= 1 and shape[-1] == 1


def find_rotation(view: GraphView, dg: DependencyGraph, copies=()) -> tuple[
        StreamRotation | None, str]:
    """The rotation of the (first prunable) hidden-size group, or None and why not."""
    groups = [g for g in dg.groups if g.kind == "hidden" and g.prunable]
    if not groups:
        return None, "no prunable hidden-size group"
    grp = groups[0]
    members = {(m.tensor, m.axis): m for m in grp.members}
    stream = {t for t, _ in grp.unit_of if t not in view.consts and not _from_const(view, t)}
    if not _stream_on_last_axis(view, grp, stream):
        return None, "the hidden size is not the last axis of every stream tensor"
    for t in stream:
        if t in view.graph_outputs or t in view.graph_inputs:
            return None, f"the residual stream '{t}' is a graph input or output"
    scales: list[Scale] = []
    nodes = {id(n): n for t in stream for n in
             view.consumers.get(t, []) + ([view.producer[t]] if t in view.producer else [])}
    for node in nodes.values():
        why = _check(view, node, stream, members, scales, set(copies))
        if why:
            return None, why
    gammas = {s.gamma for s in scales}
    weights = [(m.tensor, m.axis) for m in grp.members if m.tensor not in gammas]
    if any(view.consts[w].kind not in ("initializer", "constant_node") for w, _ in weights
           if w in view.consts):
        return None, "a weight on the stream is not a plain constant (quantized or computed)"
    return StreamRotation(grp, weights, scales), ""


def _is_member(view, t, members) -> bool:
    src = view.producer[t].input[0] if _from_const(view, t) else t
    return any((src, a) in members for a in range(view.rank(src) or 0))


def _check(view, node, stream, members, scales, copies) -> str:
    """Why `node` stops a rotation of the stream ("" when it does not)."""
    op, ins = node.op_type, [i for i in node.input if i]
    label = f"{op} '{node.name or node.output[0]}'"
    if op in LINEAR:
        rest = [i for k, i in enumerate(ins) if i not in stream
                and not (op == "Gather" and k == 1)]
        weights = [i for i in rest if i in view.consts or _from_const(view, i)]
        computed = [i for i in rest if i not in weights]
        reads = any(i in stream for i in ins)
        ok = weights and all(_is_member(view, w, members) for w in weights) \
            and not (reads and computed)
        return "" if ok else f"{label} meets the stream with a computed operand"
    if op in SIZE_ONLY:
        return ""
    if op in PASS_THROUGH:
        bad = [i for i in ins if i not in stream and (i, (view.rank(i) or 0) - 1) not in members]
        return f"{label} adds what a rotation does not turn" if bad else ""
    if op == "Pow" or (op == "Mul" and len(ins) == 2 and ins[0] == ins[1]):
        readers = view.consumers.get(node.output[0], [])
        if not _is_square(view, node.output[0]) or not readers \
                or any(r.op_type not in SQUARES_READ_BY for r in readers):
            return f"{label} raises the stream to a power other than the square it sums"
        return ""
    if op in SQUARES_READ_BY and _is_square(view, ins[0]):
        return ""
    if op in ("Mul", "Div"):
        why = f"{label} scales the stream by something other than a per-row scalar"
        x = [i for i in ins if i in stream]
        other = [i for i in ins if i not in stream]
        if len(x) != 1 or len(other) != 1:
            return why
        o = other[0]
        if o not in view.consts:
            return "" if _size_one_on_last(view, o) else why  # the norm's 1/rms
        if view.consts[o].numel == 1:
            return ""  # a scalar
        if op == "Mul" and _is_member(view, o, members):  # a norm's per-feature scale
            scales.append(Scale(node, o, x[0], _foldable(view, node, members, copies)))
            return ""
        return why
    return f"{label} reads the residual stream"


def _foldable(view, node, members, copies) -> list[tuple[str, int]] | None:
    """The weights that read the scale's output, when all of them can absorb it (private
    constants of a MatMul/Gemm read along the stream axis, not copies of a tied weight)."""
    out = []
    for r in view.consumers.get(node.output[0], []):
        if r.op_type in SIZE_ONLY:
            continue
        if r.op_type not in ("MatMul", "Gemm") or node.output[0] != r.input[0]:
            return None
        w = r.input[1]
        ax = [a for a in range(view.rank(w) or 0) if (w, a) in members
              and members[(w, a)].role == ROLE_IN]
        if w not in view.consts or len(ax) != 1 or w in copies \
                or len(view.consumers.get(w, [])) != 1:
            return None
        out.append((w, ax[0]))
    return out or None


def stream_covariance(model: onnx.ModelProto, rot: StreamRotation, feeds: dict,
                      runner: Runner) -> np.ndarray:
    """Σ over every norm's normalized input and every token of n nᵀ (each row of n has the
    same norm, so every layer weighs alike)."""
    names = sorted({s.normed for s in rot.scales})
    d = rot.group.n_units
    cov = np.zeros((d, d))
    for _, acts in runner.taps(model, names, feeds, BATCH):
        for n in names:
            rows = np.asarray(acts[n], dtype=np.float64).reshape(-1, d)
            cov += rows.T @ rows
    return cov


def principal_axes(cov: np.ndarray) -> np.ndarray:
    """Orthogonal Q whose columns are the covariance's eigenvectors, largest eigenvalue first."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return vecs[:, np.argsort(-vals, kind="stable")]


def rotate(view: GraphView, rot: StreamRotation, q: np.ndarray) -> dict:
    """Rotate the stream by Q in place (see the module docstring). Returns the report entry."""
    rw = Rewriter(view, {})
    folded: dict[str, np.ndarray] = {}
    n_folded = n_matrices = 0
    for s in rot.scales:
        gamma = np.asarray(view.const_value(s.gamma), dtype=np.float64).reshape(-1)
        if s.fold_into is not None:
            for w, ax in s.fold_into:
                val = folded.get(w, np.asarray(view.const_value(w), dtype=np.float64))
                shape = [1] * val.ndim
                shape[ax] = -1
                folded[w] = val * gamma.reshape(shape)
            dtype = view.consts[s.gamma].dtype
            rw.write_const(s.gamma, np.ones(view.consts[s.gamma].shape, dtype=dtype))
            n_folded += 1
        else:  # normed · Qᵀ diag(γ) Q: the scale in the rotated basis
            m = q.T @ (gamma[:, None] * q)
            name = rw.fresh_name(f"{s.gamma}_rotated")
            rw.add_initializer(name, m.astype(view.consts[s.gamma].dtype))
            s.node.op_type = "MatMul"
            del s.node.input[:]
            s.node.input.extend([s.normed, name])
            n_matrices += 1
    for w, ax in rot.weights:
        val = folded.pop(w, None)
        val = np.asarray(view.const_value(w), dtype=np.float64) if val is None else val
        turned = np.moveaxis(np.tensordot(val, q, axes=([ax], [0])), -1, ax)
        rw.write_const(w, turned.astype(view.consts[w].dtype))
    if n_matrices:
        remove_dead_code(view.model)  # the scales the matrices replaced
    return {"applied": True, "hidden_size": int(q.shape[0]), "norm_scales_folded": n_folded,
            "norm_scales_as_matrices": n_matrices, "weights_rotated": len(rot.weights)}
