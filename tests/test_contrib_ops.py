"""ONNX Runtime contrib ops (com.microsoft) found in optimized transformer graphs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import graphprune
from helpers import assert_equivalent

MS = "com.microsoft"
RNG = np.random.default_rng(0)


def w(name, shape):
    scale = RNG.uniform(0.1, 2.0, size=shape[-1])
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def model(nodes, inits, hidden=16, opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 5, hidden])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [1, 5, hidden])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid(MS, 1)])


def test_multihead_attention_prunes_whole_heads_and_num_heads():
    nodes = [helper.make_node("MatMul", ["x", n], [n + "_o"]) for n in ("wq", "wk", "wv")]
    nodes.append(helper.make_node("MultiHeadAttention", ["wq_o", "wk_o", "wv_o"], ["att"],
                                  domain=MS, num_heads=4))
    nodes.append(helper.make_node("MatMul", ["att", "wo"], ["y"]))
    m = model(nodes, [w("wq", [16, 32]), w("wk", [16, 32]), w("wv", [16, 32]), w("wo", [32, 16])])
    res = graphprune.prune(m, ratio=0.5)
    mha = next(n for n in res.model.graph.node if n.op_type == "MultiHeadAttention")
    assert helper.get_attribute_value(mha.attribute[0]) == 2
    heads = [g for g in res.report["groups"] if g["kind"] == "head"]
    assert heads and heads[0]["size_before"] == 4 and heads[0]["size_after"] == 2
    assert_equivalent(m, res)


def test_fastgelu_mlp_with_bias():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("FastGelu", ["h", "b1"], ["g"], domain=MS),
             helper.make_node("MatMul", ["g", "w2"], ["y"])]
    m = model(nodes, [w("w1", [16, 24]), w("b1", [24]), w("w2", [24, 16])])
    res = graphprune.prune(m, ratio=0.5)
    assert [t.dims for t in res.model.graph.initializer if t.name == "b1"][0] == [12]
    assert_equivalent(m, res)


def test_fused_matmul_transposed_weight():
    nodes = [helper.make_node("FusedMatMul", ["x", "w1"], ["h"], domain=MS, transB=1, alpha=0.5),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = model(nodes, [w("w1", [24, 16]), w("w2", [24, 16])])
    res = graphprune.prune(m, ratio=0.5)
    assert [t.dims for t in res.model.graph.initializer if t.name == "w1"][0] == [12, 16]
    assert_equivalent(m, res)


def test_skip_layer_norm_freezes_hidden_without_attention():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("SkipLayerNormalization", ["h", "x", "gamma", "beta"], ["n"],
                              domain=MS, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"])]
    m = model(nodes, [w("w1", [16, 16]), w("gamma", [16]), w("beta", [16]), w("w2", [16, 16])])
    res = graphprune.prune(m, ratio=0.5)
    frozen = [g for g in res.report["groups"] if "SkipLayerNormalization" in (g["frozen_reason"] or "")
              or "graph" in (g["frozen_reason"] or "")]
    assert frozen
    assert res.report["params"]["after"] == res.report["params"]["before"]
    onnx.checker.check_model(res.model)


def test_elementwise_contrib_ops():
    for op, extra in (("BiasGelu", ["b1"]), ("QuickGelu", []), ("Gelu", [])):
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
                 helper.make_node("MatMul", ["x", "w0"], ["skip"]),
                 helper.make_node(op, ["h"] + extra, ["g"], domain=MS),
                 helper.make_node("MatMul", ["g", "w2"], ["y"])]
        m = model(nodes, [w("w1", [16, 24]), w("w0", [16, 24]), w("b1", [24]),
                          w("w2", [24, 16])])
        res = graphprune.prune(m, ratio=0.5)
        assert [t.dims for t in res.model.graph.initializer if t.name == "w1"][0] == [16, 12], op
        assert_equivalent(m, res)


def test_simplified_layer_norms_freeze_without_hidden_pruning():
    for op, ins, dom in (("SimplifiedLayerNormalization", ["h", "gamma"], ""),
                         ("SkipSimplifiedLayerNormalization", ["h", "x", "gamma"], MS)):
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
                 helper.make_node(op, ins, ["n"], domain=dom, epsilon=1e-5),
                 helper.make_node("MatMul", ["n", "w2"], ["y"])]
        m = model(nodes, [w("w1", [16, 16]), w("gamma", [16]), w("w2", [16, 16])])
        res = graphprune.prune(m, ratio=0.5)  # validated by an ORT run (not an ONNX op)
        assert res.report["params"]["after"] == res.report["params"]["before"], op


def test_every_contrib_rule_is_covered():
    from graphprune.ops.registry import RULES

    covered = {"MultiHeadAttention", "FastGelu", "FusedMatMul", "SkipLayerNormalization",
               "BiasGelu", "QuickGelu", "Gelu", "SkipSimplifiedLayerNormalization"}
    # on the bundled GenAI models: tests/test_llm_formats.py
    covered |= {"GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized"}
    assert {op for d, op in RULES if d == MS} <= covered
