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
    """Elements of all floating-point constants: initializers, Constant and ConstantOfShape."""
    return int(sum(c.numel for c in view.consts.values() if _is_float(c.dtype)))


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
