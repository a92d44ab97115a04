"""Model cost: parameter count and multiply-accumulates (counted per op rule), and the
parameters each unit of a group carries."""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import GraphView, attr
from ..ops.registry import lookup
from .graph import DependencyGraph, Group

FLOAT_TYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64)}

# Input slots of quantized ops that hold scales and zero points: quantization metadata, not
# parameters (their data and weight slots are counted whatever their integer type).
QUANT_META = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "DynamicQuantizeLinear": (),
    "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "MatMulInteger": (2, 3), "ConvInteger": (2, 3), "QGemm": (1, 2, 4, 5, 7, 8),
    "QLinearAdd": (1, 2, 4, 5, 6, 7), "QLinearMul": (1, 2, 4, 5, 6, 7),
    "QLinearGlobalAveragePool": (1, 2, 3, 4), "QLinearAveragePool": (1, 2, 3, 4),
    "QLinearSigmoid": (1, 2, 3, 4), "QLinearLeakyRelu": (1, 2, 3, 4),
    "DynamicQuantizeLSTM": (8, 9, 10, 11), "MatMulIntegerToFloat": (2, 3, 4, 5),
    "DynamicQuantizeMatMul": (2, 3),
}
# Integer slots that hold quantized parameters of 16 or 32 bits (int32 conv/gemm biases)
QUANT_DATA = {"DequantizeLinear": (0,), "QLinearConv": (3, 8), "QGemm": (3, 6),
              "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1), "ConvInteger": (0, 1)}


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
    return np.dtype(dtype) in FLOAT_TYPES or "bfloat16" in str(dtype) or "float8" in str(dtype) \
        or "float4" in str(dtype)


def _slots(view: GraphView, name: str) -> set[tuple[str, int]]:
    return {(n.op_type, k) for n in view.consumers.get(name, []) for k, i in enumerate(n.input)
            if i == name}


def is_param(view: GraphView, name: str) -> bool:
    """Whether a constant is a parameter: floating point of any width, an 8- or 4-bit
    integer (quantized weights), or a wider integer in a quantized op's data slot (an int32
    bias); scales and zero points of quantized ops and integer shape vectors are not."""
    c = view.consts[name]
    slots = _slots(view, name)
    if slots and all(k in QUANT_META.get(op, ()) for op, k in slots):
        return False
    if _is_float(c.dtype):
        return True
    dt = np.dtype(c.dtype)
    if dt.itemsize == 1 and (np.issubdtype(dt, np.integer) or str(dt) in ("int4", "uint4")):
        return True
    return any(k in QUANT_DATA.get(op, ()) for op, k in slots) and dt.kind in "iu"


def count_params(view: GraphView) -> int:
    """Elements of every parameter (see `is_param`): initializers, Constant and
    ConstantOfShape values, of every weight dtype (fp32/fp16/bf16, int8/uint8/int4, ...); a
    block-quantized weight counts its logical N x K elements, not its packed bytes, scales or
    zero points."""
    return int(sum(c.numel for name, c in view.consts.items()
                   if name not in view.quant_storage and is_param(view, name)))


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
    """Parameters each unit of `g` carries: the slices of every parameter (`is_param`) that
    is a member of the group (weights, biases, norm scales) summed per unit."""
    cost = np.zeros(g.n_units)
    view = dg.view
    for (t, ax), units in g.unit_of.items():
        c = view.consts.get(t)
        if c is None or not c.shape or not is_param(view, t):
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
    carries while every other group keeps its width). `view`: the shapes to count at (the
    analysis' by default)."""

    def __init__(self, dg: DependencyGraph, view: GraphView | None = None):
        self.total = 0
        self.terms: list[tuple[int, list[tuple[int, np.ndarray]]]] = []
        for node, m in node_macs(view if view is not None else dg.view):
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
