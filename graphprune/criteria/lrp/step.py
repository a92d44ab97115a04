"""One backward step of LRP: what a rule sees for one node, and the rule registry.

Each op type has one rule mapping the relevance of a node's outputs to its inputs: a function
`(Step) -> list of relevances per input (None for none)`, or None when the rule cannot apply to
this node (propagation stops there and the criterion's notes say where). Rules live in
`graphprune.criteria.lrp.layers` (weighted layers and normalizations) and
`graphprune.criteria.lrp.flow` (joins, pooling, activations, data movement).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .kernels import f64

PASS_THROUGH = ("Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Celu", "Gelu",
                "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Softplus", "Softsign", "Mish",
                "ThresholdedRelu", "Identity", "Dropout", "Cast", "Neg")
ACTIVATION_DEPTH = 8  # how far back an activation-function subgraph (GELU, Swish) may reach


class Step:
    """What a rule sees for one node: input/output values (activations of this batch, constants)
    and the relevance of its outputs."""

    def __init__(self, ex, node: onnx.NodeProto, acts: dict, r_out: list):
        self.ex, self.node, self.acts, self.r_out = ex, node, acts, r_out
        self.eps = ex.cfg.eps

    def name(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def is_const(self, i: int) -> bool:
        n = self.name(i)
        return bool(n) and n not in self.acts and (n in self.ex.view.consts or
                                                   n in self.ex.view.folded)

    def raw(self, i: int):
        """Input i as stored (activation of this batch, constant, or folded shape value)."""
        n = self.name(i)
        if not n:
            return None
        if n in self.acts:
            return self.acts[n]
        if n in self.ex.view.consts:
            return self.ex.view.const_value(n)
        return self.ex.view.folded.get(n)

    def inp(self, i: int):
        return f64(self.raw(i))

    def shape(self, i: int):
        v = self.raw(i)
        return None if v is None else np.shape(v)

    def out(self, i: int = 0):
        return f64(self.acts.get(self.node.output[i]))

    def r(self, i: int = 0) -> np.ndarray:
        """Relevance of output i (zeros when none reached it)."""
        r = self.r_out[i]
        return r if r is not None else np.zeros(np.shape(self.acts[self.node.output[i]]))

    def none(self) -> list:
        return [None] * len(self.node.input)

    def only(self, i: int, r) -> list:
        """Relevance `r` for input i, nothing for the others (constants, shapes, axes)."""
        out = self.none()
        out[i] = r
        return out

    def fold(self):
        """(scale, shift) of a BatchNorm folded into this layer's output, else None."""
        return self.ex.fold.get(self.node.output[0])

    def reads_graph_input(self) -> bool:
        return self.name(0) in self.ex.view.graph_inputs


RULES: dict[str, Callable[[Step], list | None]] = {}


def rule(*ops: str):
    """Register a backward rule for op types: (Step) -> relevance per input (None = none), or
    None when the rule cannot apply to this node (propagation stops, noted)."""

    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn

    return deco
