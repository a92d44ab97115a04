"""Recurrent ops: LSTM, GRU, RNN, and ONNX Runtime's DynamicQuantizeLSTM.

Layouts (layout=0; layout=1 puts batch first): X [T, B, I], W [D, G·H, I], R [D, G·H, H],
B [D, 2·G·H] = [Wb | Rb], initial_h / initial_c [D, B, H], P [D, 3H] (LSTM peepholes), outputs
Y [T, D, B, H], Y_h / Y_c [D, B, H]; G = 4 gate blocks for LSTM (i, o, f, c), 3 for GRU (z, r,
h), 1 for RNN; D = 2 for a bidirectional op.

A hidden unit j is row j of every gate block of W, R, B and P (an index map, like a fused QKV),
column j of R (the recurrence reads h_j), entry j of the initial states and of every output.
Both directions share `hidden_size`, so a unit is the same j in both (the direction axis is
never pruned). The input size couples X's feature axis to W's last axis. An initial state the
graph computes from pruned tensors shrinks with the unit; one that comes from outside (a graph
input, a zero fill of a run-time shape) is read through a Gather of the kept units. The
`hidden_size` attribute is rewritten.

DynamicQuantizeLSTM stores W [D, I, 4H] and R [D, H, 4H] transposed, int8, with scales and zero
points per direction [D] or per gate column [D, 4H].
"""
from __future__ import annotations

import numpy as np

from .registry import ROLE_AUX, ROLE_IN, ROLE_OUT, OpRule, rule

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}
WHY_DIRECTION = "direction axis of a recurrent op"
# ops a state passes through unchanged on its hidden axis on its way from outside the graph
_STATE_PATH = {"Slice", "Identity", "Cast", "Squeeze", "Unsqueeze", "Transpose", "Reshape",
               "Expand", "Concat"}
_FILLS = {"ConstantOfShape", "Tile", "Expand"}


def _slots(op: str, inputs: list[str]) -> dict:
    ins = inputs + [""] * (12 - len(inputs))
    lstm = op in ("LSTM", "DynamicQuantizeLSTM")
    return {"x": ins[0], "w": ins[1], "r": ins[2], "b": ins[3], "lens": ins[4], "h0": ins[5],
            "c0": ins[6] if lstm else "", "p": ins[7] if lstm else "",
            "quant": ins[8:12] if op == "DynamicQuantizeLSTM" else []}


def _from_outside(view, name: str) -> bool:
    """Whether a state tensor is a graph input or a fill, reached through ops that only move
    it (so its hidden axis is coupled to no pruned unit)."""
    seen = 0
    while seen < 32:
        seen += 1
        if name in view.graph_inputs:
            return True
        if name in view.consts:
            return False
        node = view.producer.get(name)
        if node is None:
            return False
        if node.op_type in _FILLS:
            return node.op_type == "ConstantOfShape" or node.input[0] in view.consts
        if node.op_type not in _STATE_PATH or not node.input:
            return False
        name = node.input[0]
    return False


@rule("LSTM", "GRU", "RNN")
@rule("DynamicQuantizeLSTM", domain="com.microsoft")
class Recurrent(OpRule):
    """Hidden-size and input-size pruning of a recurrent op (see the module docstring)."""

    couples = ("hidden unit j: row j of every gate block of W, R, B, P, column j of R, the "
               "initial states, Y / Y_h / Y_c (both directions alike); X's features ↔ W's "
               "input axis")
    shrinks = ("W, R, B, P, constant states, per-gate scales; `hidden_size`; a state from "
               "outside read through a Gather")
    frozen = "the direction axis; weights of unexpected shape"

    def analyze(self, ctx):
        op = ctx.node.op_type
        s = _slots(op, ctx.inputs)
        outs = ctx.outputs + ["", "", ""]
        quant = op == "DynamicQuantizeLSTM"
        w_gate, w_in = (2, 1) if quant else (1, 2)
        h = int(ctx.attr("hidden_size", 0) or 0) or ctx.static_dim(s["r"], 2 if not quant else 1)
        g = GATES[op]
        if not h or ctx.static_dim(s["w"], w_gate) != g * h:
            ctx.block_node("recurrent weights of unexpected shape")
            return
        layout = int(ctx.attr("layout", 0))
        x_t, x_b = (0, 1) if layout == 0 else (1, 0)
        hidden = ctx.virtual("hidden", h)
        gate = np.arange(g * h)
        for t in (s["w"], s["r"]):
            ctx.couple(t, w_gate, hidden, 0, (gate, gate % h))
            ctx.role(t, w_gate, ROLE_OUT)
            ctx.block(t, 0, WHY_DIRECTION)
        ctx.couple(s["r"], w_in, hidden, 0)
        ctx.role(s["r"], w_in, ROLE_IN)
        ctx.couple(s["x"], 2, s["w"], w_in)
        ctx.role(s["w"], w_in, ROLE_IN)
        for extra, blocks in ((s["b"], 2 * g), (s["p"], 3)):
            if extra:
                pos = np.arange(blocks * h)
                ctx.couple(extra, 1, hidden, 0, (pos, pos % h))
                ctx.role(extra, 1, ROLE_OUT)
                ctx.block(extra, 0, WHY_DIRECTION)
        if s["lens"]:
            ctx.couple(s["lens"], 0, s["x"], x_b)
        s_d, s_b = (0, 1) if layout == 0 else (1, 0)
        for state in (s["h0"], s["c0"]):
            if not state:
                continue
            ctx.couple(state, s_b, s["x"], x_b)
            ctx.block(state, s_d, WHY_DIRECTION)
            if _from_outside(ctx.view, state):
                ctx.free(state, 2)  # read through a Gather of the kept units (rewrite)
            else:
                ctx.couple(state, 2, hidden, 0)
        y_t, y_d, y_b = (0, 1, 2) if layout == 0 else (1, 2, 0)
        if outs[0]:
            ctx.couple(outs[0], 3, hidden, 0)
            ctx.couple(outs[0], y_t, s["x"], x_t)
            ctx.couple(outs[0], y_b, s["x"], x_b)
            ctx.block(outs[0], y_d, WHY_DIRECTION)
        for state_out in outs[1:3]:
            if state_out:
                ctx.couple(state_out, 2, hidden, 0)
                ctx.couple(state_out, s_b, s["x"], x_b)
                ctx.block(state_out, s_d, WHY_DIRECTION)
        for q, t in zip(s["quant"], (s["w"], s["w"], s["r"], s["r"])):
            if not q:
                continue
            ctx.block(q, 0, WHY_DIRECTION)
            if ctx.rank(q) == 2:  # per gate column
                ctx.couple(q, 1, hidden, 0, (gate, gate % h))
                ctx.role(q, 1, ROLE_AUX)

    def rewrite(self, ctx):
        keep = ctx.keep(ctx.virtual_name("hidden"), 0)
        if keep is None:
            return
        ctx.set_attr("hidden_size", int(len(keep)))
        s = _slots(ctx.node.op_type, ctx.inputs)
        for idx, state in ((5, s["h0"]), (6, s["c0"])):
            if state and ctx.keep(state, 2) is None:
                ctx.gather_input(idx, 2, keep)

    def macs(self, ctx):
        op = ctx.node.op_type
        s = _slots(op, list(ctx.node.input))
        quant = op == "DynamicQuantizeLSTM"
        y = ctx.node.output[0] if ctx.node.output and ctx.node.output[0] else ""
        x = ctx.shape(s["x"])
        w = ctx.shape(s["w"])
        h = ctx.shape(s["r"])[1 if quant else 2]
        d = w[0]
        steps_batch = (ctx.numel(y) // max(d * h, 1)) if y else x[0] * x[1]
        inp = w[1] if quant else w[2]
        return int(steps_batch * d * GATES[op] * h * (inp + h + 1))

