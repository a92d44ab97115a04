"""The real values of quantized weights, for criteria that compare weight magnitudes.

An int8 weight quantized per channel has every channel scaled to the same integer range, so its
integers say nothing about which channel is larger; its values are (q - zero_point) · scale.
`float_value` finds the op that dequantizes a constant (DequantizeLinear, the QOperator ops,
MatMulInteger/ConvInteger, DynamicQuantizeLSTM, or a weight-only Cast → Mul(scale)) and applies
its scale and zero point (per tensor, per axis or per block).
"""
from __future__ import annotations

import numpy as np

from .graph import GraphView, attr

# op -> {weight slot: (scale slot, zero point slot, axis)}; axis None: the op's `axis` attribute,
# negative: from the end
_SLOTS = {
    "DequantizeLinear": {0: (1, 2, None)},
    "QLinearConv": {3: (4, 5, 0)},
    "QLinearMatMul": {0: (1, 2, -2), 3: (4, 5, -1)},
    "QGemm": {3: (4, 5, "gemm")},
    "MatMulInteger": {0: (None, 2, -2), 1: (None, 3, -1)},
    "ConvInteger": {1: (None, 3, 0)},
    "DynamicQuantizeLSTM": {1: (8, 9, -1), 2: (10, 11, -1)},
}


def _expand(p: np.ndarray, x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """A scale / zero point broadcast to `x`'s shape."""
    if p.size == 1:
        return p.reshape(())
    if block and p.ndim == x.ndim:
        return np.repeat(p, block, axis=axis)[tuple(slice(0, n) for n in x.shape)]
    if p.ndim == 1:
        if p.shape[0] != x.shape[axis] and p.shape[0] == x.shape[0]:
            axis = 0  # DynamicQuantizeLSTM: one scale per direction
        shape = [1] * x.ndim
        shape[axis] = p.shape[0]
        return p.reshape(shape)
    if p.ndim == 2 and x.ndim == 3:  # DynamicQuantizeLSTM per-channel: [D, 4H] of [D, ., 4H]
        return p[:, None, :]
    return p


def float_value(view: GraphView, name: str) -> np.ndarray:
    """The constant's values as float32, dequantized where an op dequantizes it."""
    v = np.asarray(view.const_value(name))
    if np.issubdtype(v.dtype, np.floating):
        return v.astype(np.float32, copy=False)
    out = v.astype(np.float32)
    for node in view.consumers.get(name, []):
        slots = _SLOTS.get(node.op_type, {})
        for k, i in enumerate(node.input):
            if i != name or k not in slots:
                continue
            s_slot, z_slot, axis = slots[k]
            if axis is None:
                axis = int(attr(node, "axis", 1))
            elif axis == "gemm":
                axis = 0 if int(attr(node, "transB", 0)) else 1
            axis = axis % max(out.ndim, 1)
            block = int(attr(node, "block_size", 0) or 0)
            ins = list(node.input) + [""] * 12
            zp = view.small_const(ins[z_slot], limit=1 << 20) if ins[z_slot] else None
            sc = (view.small_const(ins[s_slot], limit=1 << 20)
                  if s_slot is not None and ins[s_slot] else None)
            if zp is not None:
                out = out - _expand(np.asarray(zp, dtype=np.float32), out, axis, block)
            if sc is not None:
                out = out * _expand(np.asarray(sc, dtype=np.float32), out, axis, block)
            return out
        if node.op_type == "Cast":  # weight-only: Cast → Mul(scale)
            for mul in view.consumers.get(node.output[0], []):
                if mul.op_type == "Mul":
                    other = [i for i in mul.input if i != node.output[0]]
                    sc = view.small_const(other[0], limit=1 << 20) if other else None
                    if sc is not None:
                        return out * np.asarray(sc, dtype=np.float32)
            return out
    return out
