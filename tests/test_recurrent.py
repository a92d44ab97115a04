"""Recurrent ops (LSTM, GRU, RNN, DynamicQuantizeLSTM): hidden-size and input-size pruning.

Real exports (torch nn.LSTM/GRU/RNN through the legacy exporter: uni- and bidirectional, one
and two layers, zero initial states or h0/c0 graph inputs; see models/coverage.py), ORT's
dynamically quantized LSTM, and graphs built with onnx.helper for what exporters do not write
(layout=1, peepholes, GRU with linear_before_reset=0, constant and computed initial states, a
consumed Y_h, sequence lengths). Each is pruned and checked like the op tests: checker, ORT,
output signature, consumer-zeroing equivalence.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T

import graphprune
from graphprune.ir import GraphView
from helpers import assert_equivalent
from models.coverage import build
from test_ops import GB, assert_pruned, builder, const_shape, node_attr, prune_checked

EXPORTS = [f"rnn_{k}_{v}" for k in ("lstm", "gru", "rnn") for v in ("uni1", "uni2_h0", "bi1",
                                                                       "bi2_h0")]


def _rnn_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]


@pytest.mark.parametrize("name", EXPORTS)
def test_exported_recurrent_layers_prune(name):
    model, _ = build(name)
    res = prune_checked(model, ratio=0.5)
    for before, after in zip(_rnn_nodes(model), _rnn_nodes(res.model)):
        h = node_attr(res.model, after.name, "hidden_size")
        assert h == 8  # 16 hidden units, half removed
        g = {"LSTM": 4, "GRU": 3, "RNN": 1}[after.op_type]
        w, r, b = (const_shape(res.model, after.input[k]) for k in (1, 2, 3))
        d = 2 if "bi" in name else 1
        assert w[:2] == (d, g * h) and r == (d, g * h, h) and b == (d, 2 * g * h)
    if "_h0" in name:  # h0 / c0 graph inputs keep their size and are read through a Gather
        gathers = [n for n in res.model.graph.node if n.op_type == "Gather"
                   and n.input[0].startswith("/rnn/Slice")]
        assert len(gathers) == (4 if "lstm" in name else 2)
        assert [i.type for i in res.model.graph.input] == [i.type for i in model.graph.input]


def test_dynamically_quantized_lstm():
    model, _ = build("q_dyn_lstm")  # com.microsoft DynamicQuantizeLSTM, W [D, I, 4H] int8
    res = graphprune.prune(model, ratio=0.5)
    node = next(n for n in res.model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    assert node_attr(res.model, node.name, "hidden_size") == 8
    assert const_shape(res.model, node.input[1])[2] == 32 and const_shape(res.model, node.input[2])[1:] == (8, 32)
    # dynamic quantization takes its scale from the whole tensor at run time, and the
    # consumer-zeroed original still computes the removed units: equal up to that rounding
    assert_equivalent(model, res, atol=3e-3, rtol=1e-2)


H = 6


def _lstm_inputs(g: GB, op: str, d: int, i: int, peephole=False):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    w = g.weight([d, gates * H, i], f"{op}.W", axis=1)
    r = g.weight([d, gates * H, H], f"{op}.R", axis=1)
    b = g.weight([d, 2 * gates * H], f"{op}.B", axis=1)
    extra = ["", "", "", g.weight([d, 3 * H], f"{op}.P", axis=1)] if peephole else []
    return [w, r, b] + extra


CASES = ("lstm_peephole", "gru_reset0_lengths", "rnn_const_h0", "lstm_yh_consumed",
         "gru_computed_h0", "lstm_reverse")


@builder(*CASES, "lstm_layout1")
def recurrent_model(case):
    g = GB()
    layout1 = case == "lstm_layout1"
    x = g.input([2, 5, 4] if layout1 else [5, 2, 4])
    pre = g.op("Relu", [g.op("Add", [g.matmul(x, 4, 8, name="pre"), g.weight([8], "pre.B")])])
    op = case.split("_")[0].upper()
    ins = _lstm_inputs(g, op, 1, 8, peephole=case in ("lstm_peephole", "lstm_layout1"))
    attrs = {"hidden_size": H}
    if layout1:
        attrs["layout"] = 1
    if case == "gru_reset0_lengths":
        lens = g.input([2], "lengths", T.INT32)
        ins = ins + [lens]
        attrs["linear_before_reset"] = 0
    if case == "rnn_const_h0":
        ins = ins + ["", g.weight([1, 2, H], "h0", axis=2)]
    if case == "lstm_reverse":
        attrs["direction"] = "reverse"
    if case == "gru_computed_h0":  # the initial state is a projection of the input's mean
        mean = g.op("ReduceMean", [pre], axes=[0], keepdims=1)
        ins = ins + ["", g.matmul(mean, 8, H, name="h0proj")]
    outs = g.op(op, [pre] + ins, n_out=3 if op == "LSTM" else 2, name="rnn", **attrs)
    y = outs[0]
    if case == "lstm_yh_consumed":
        yh = g.op("Squeeze", [outs[1], g.i64([0])])
        g.output(g.matmul(yh, H, 3, name="head_h"))
    sq = g.op("Squeeze", [y, g.i64([2 if layout1 else 1])])
    g.output(g.matmul(g.op("Tanh", [sq]), H, 3, name="head"))
    return g.build(opset=17)


@pytest.mark.parametrize("case", CASES)
def test_recurrent_variants(case):
    model = recurrent_model(case)
    res = prune_checked(model, ratio=0.5)
    op = case.split("_")[0].upper()
    assert_pruned(model, res, (f"{op}.W", 1), (f"{op}.R", 1), (f"{op}.R", 2), (f"{op}.B", 1),
                  ("head.W", 0), ("pre.W", 1), (f"{op}.W", 2))
    assert node_attr(res.model, "rnn", "hidden_size") == H // 2
    if case == "rnn_const_h0":
        assert const_shape(res.model, "h0") == (1, 2, H // 2)
    if case == "lstm_peephole":
        assert const_shape(res.model, "LSTM.P") == (1, 3 * H // 2)
    if case == "gru_computed_h0":  # coupled to the projection's output, not gathered
        assert const_shape(res.model, "h0proj.W")[1] == H // 2
        assert not any(n.op_type == "Gather" for n in res.model.graph.node)


def test_batch_first_layout_couples_the_same_units():
    """layout=1 (X [B, T, I], Y [B, T, D, H]): ONNX Runtime's CPU kernels do not run it, so
    the pruned graph is checked by the ONNX checker and its shapes only."""
    model = recurrent_model("lstm_layout1")
    res = graphprune.prune(model, ratio=0.5, validate=False)
    onnx.checker.check_model(res.model, full_check=True)
    assert node_attr(res.model, "rnn", "hidden_size") == H // 2
    assert const_shape(res.model, "LSTM.W") == (1, 4 * H // 2, 4)
    assert const_shape(res.model, "LSTM.P") == (1, 3 * H // 2)
    assert const_shape(res.model, "head.W") == (H // 2, 3)


def test_recurrent_macs_are_counted():
    model, _ = build("rnn_lstm_uni1")
    res = graphprune.prune(model, ratio=0.5)
    # seq 16, batch 1: one LSTM step is 4 gates x 16 units x (12 inputs + 16 hidden + 1)
    assert res.report["macs"]["before"] >= 16 * 4 * 16 * (12 + 16)
    assert res.report["macs"]["after"] < res.report["macs"]["before"]
    view = GraphView(res.model)
    assert view.consts  # the model kept its weights
