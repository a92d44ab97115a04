"""Model cost: parameter count and multiply-accumulates (counted per op rule), and the
parameters each unit of a group carries."""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import GraphView, attr
from ..ops.registry import lookup
from .graph import DependencyGraph, Group

FLOAT_TYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64)}


class MacsContext:
    """Concrete shapes for one node; symbolic sizes count as 1 (one batch, one position)."""

    def __init__(self, view: GraphView, node: onnx.NodeProto):
        self.view = view
        self.node = node

    def shape(self, name: str) -> list[int]:
        s = self.view.shape(name) or ()
        return [d if isinstance(d, int) else 1 for d in s]

    def numel(self, name: str) -> int:
        if not name or self.view.shape(name) is None:
            return 0
        return int(np.prod(self.shape(name), dtype=np.int64))

    def numel_outputs(self) -> int:
        return sum(self.numel(o) for o in self.node.output)

    def attr(self, name, default=None):
        return attr(self.node, name, default)


def _is_float(dtype) -> bool:
    return np.dtype(dtype) in FLOAT_TYPES or "bfloat16" in str(dtype) or "float8" in str(dtype)


def count_params(view: GraphView) -> int:
    """Elements of all floating-point constants (initializers, Constant and ConstantOfShape)
    and of every block-quantized weight (its logical N × K elements, not its packed bytes,
    scales or zero points), plus the integer tensors DequantizeLinear turns into weights."""
    dq = {n.input[0] for n in view.graph.node if n.op_type == "DequantizeLinear" and n.input}
    return int(sum(c.numel for name, c in view.consts.items()
                   if name not in view.quant_storage and (_is_float(c.dtype) or name in dq)))


def count_macs(view: GraphView) -> int:
    total = 0
    for node in view.graph.node:
        r = lookup(node.op_type, node.domain)
        if r is None or any(n and view.shape(n) is None for n in node.input if n):
            continue
        try:
            total += int(r.macs(MacsContext(view, node)))
        except (IndexError, TypeError, ValueError):
            continue
    return total


def unit_param_costs(dg: DependencyGraph, g: Group) -> np.ndarray:
    """Parameters each unit of `g` carries: the slices of every floating-point constant that
    is a member of the group (weights, biases, norm scales) summed per unit."""
    cost = np.zeros(g.n_units)
    view = dg.view
    for (t, ax), units in g.unit_of.items():
        c = view.consts.get(t)
        if c is None or not np.issubdtype(np.dtype(c.dtype), np.floating) or not c.shape:
            continue
        per_position = c.numel // max(int(c.shape[ax]), 1)
        cost += np.bincount(units, minlength=g.n_units)[:g.n_units] * per_position
    return cost


def node_macs(view: GraphView) -> list[tuple[onnx.NodeProto, int]]:
    """MACs of every node that has them (what `count_macs` sums)."""
    out = []
    for node in view.graph.node:
        r = lookup(node.op_type, node.domain)
        if r is None or any(n and view.shape(n) is None for n in node.input if n):
            continue
        try:
            m = int(r.macs(MacsContext(view, node)))
        except (IndexError, TypeError, ValueError):
            continue
        if m:
            out.append((node, m))
    return out


class MacsModel:
    """MACs of the model as a function of the units each group keeps.

    A node's MACs are taken as proportional to the kept fraction of every group that has an
    axis on one of its tensors (an output axis when there is one, else an input axis): exact
    for convolutions and matrix products (input × output channels), elementwise ops, pooling
    and norms. `unit_costs(g)` are the first-order costs of `g`'s units (the MACs one unit
    carries while every other group keeps its width)."""

    def __init__(self, dg: DependencyGraph):
        self.total = 0
        self.terms: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
        for node, m in node_macs(dg.view):
            self.total += m
            axes: dict[int, np.ndarray] = {}
            for name in list(node.output) + list(node.input):
                for a in range(dg.view.rank(name) or 0) if name else ():
                    g = dg.group_for(name, a)
                    if g is None or not g.prunable or g.id in axes:
                        continue
                    units = g.unit_of.get((name, a))
                    if units is not None and len(units):
                        axes[g.id] = np.bincount(units, minlength=g.n_units)[:g.n_units] / len(units)
            if axes:
                self.terms.append((m, list(axes.items())))

    def unit_costs(self, g: Group) -> np.ndarray:
        cost = np.zeros(g.n_units)
        for m, axes in self.terms:
            for gid, share in axes:
                if gid == g.id:
                    cost += m * share
        return cost

    def removed(self, keep: dict[int, np.ndarray]) -> float:
        """MACs removed when each group `gid` keeps the units `keep[gid]` (others all)."""
        gone = 0.0
        for m, axes in self.terms:
            kept = 1.0
            for gid, share in axes:
                if gid in keep:
                    kept *= float(share[keep[gid]].sum())
            gone += m * (1.0 - kept)
        return gone
