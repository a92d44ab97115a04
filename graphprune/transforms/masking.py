"""The masked model and layer biases, shared by sequential reconstruction and statistics
correction (`transforms.reconstruct`, `transforms.correct`).

The *masked* model keeps every width and sets to zero each weight slice that reads a removed
unit (and, for the hidden size, each slice that writes one): it computes exactly what the
pruned model computes (up to a LayerNorm's mean over fewer features), so the activations of a partly
pruned model come from the original graph with edited weights."""
from __future__ import annotations

import numpy as np

from ..analysis.graph import DependencyGraph, Group
from ..calibration.stats import Consumer
from ..ir import GraphView, attr
from ..ops.registry import ROLE_IN
from .select import Plan

BATCH = 16  # calibration samples per ONNX Runtime run of a segment


def find_bias(view: GraphView, c: Consumer, n_out: int) -> tuple[str, str, tuple]:
    """Where the consumer's bias lives: ("input", name) for a Conv/Gemm bias input,
    ("add", name) for a constant vector added right after a MatMul (or a bias-less
    Conv/Gemm), ("new", "") when there is none."""
    if c.bias:
        cs = view.consts.get(c.bias)
        if cs is None or cs.kind == "constant_of_shape" or not cs.shape \
                or cs.shape[-1] != n_out or int(np.prod(cs.shape)) != n_out:
            return "none", "", ()
        if c.op == "Gemm" and float(attr(c.node, "beta", 1.0)) == 0.0:
            return "none", "", ()
        return "input", c.bias, tuple(cs.shape)
    y = c.node.output[0]
    users = view.consumers.get(y, [])
    if len(users) == 1 and users[0].op_type == "Add" and y not in view.graph_outputs:
        add = users[0]
        other = [i for i in add.input if i != y]
        if len(other) == 1 and other[0] in view.consts:
            cs = view.consts[other[0]]
            shape = tuple(cs.shape)
            axis_ok = (c.op == "Conv" and len(shape) >= 1 and shape[0] == n_out
                       and int(np.prod(shape)) == n_out) or \
                      (c.op != "Conv" and shape and shape[-1] == n_out
                       and int(np.prod(shape)) == n_out)
            if cs.kind != "constant_of_shape" and axis_ok and \
                    len(view.consumers.get(other[0], [])) == 1 and \
                    np.issubdtype(np.dtype(cs.dtype), np.floating):
                return "add", other[0], shape
    return "new", "", ()


def cuts(grp: Group, kept: np.ndarray):
    """(member, positions) of every constant slice that removing all of `grp`'s units but
    `kept` cuts: the slices of weights that read a removed unit, and for removed units no
    weight reads (the feature positions of attention heads, which queries and keys contract
    against each other) the slices of every other constant of the group, their producers.
    A hidden-size group is cut at its producers too: norms read every feature of the
    residual stream, and they see the pruned model's stream only where the removed features
    are zero (the rewrite takes their statistics over the kept features with the original
    count)."""
    if grp.kind == "hidden":
        read = np.zeros(0, dtype=np.int64)
    else:
        read = [np.unique(grp.unit_of[(m.tensor, m.axis)]) for m in grp.members
                if m.role == ROLE_IN]
        read = np.concatenate(read) if read else np.zeros(0, dtype=np.int64)
    for mem in grp.members:
        units = grp.unit_of[(mem.tensor, mem.axis)]
        gone = ~np.isin(units, kept)
        if mem.role != ROLE_IN:
            gone &= ~np.isin(units, read)
        drop = np.flatnonzero(gone)
        if len(drop):
            yield mem, drop


def masked_overrides(view: GraphView, dg: DependencyGraph, plan: Plan) -> dict[str, np.ndarray]:
    """Every constant with a slice `cuts` names, with those slices set to zero: the masked
    model computes what the pruned model does."""
    edits: dict[str, np.ndarray] = {}
    for gid, kept in plan.keep.items():
        for mem, drop in cuts(dg.groups[gid], kept):
            if mem.tensor not in view.consts:
                continue
            val = edits.get(mem.tensor)
            if val is None:
                val = np.array(view.const_value(mem.tensor))
            idx = [slice(None)] * val.ndim
            idx[mem.axis] = drop
            val[tuple(idx)] = 0
            edits[mem.tensor] = val
    return edits
