"""ONNX Runtime contrib ops (com.microsoft) found in optimized transformer graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import graphprune
from helpers import assert_equivalent, run, zero_consumers

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

    from test_quantized import MS_OPS  # quantized kernels: tested on ORT's quantizer output

    covered = {"MultiHeadAttention", "FastGelu", "FusedMatMul", "SkipLayerNormalization",
               "BiasGelu", "QuickGelu", "Gelu", "SkipSimplifiedLayerNormalization",
               "DynamicQuantizeLSTM"} | MS_OPS  # DynamicQuantizeLSTM: test_recurrent
    # on the bundled GenAI models: tests/test_llm_formats.py
    covered |= {"GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized"}
    covered |= {"Attention", "RotaryEmbedding"}
    assert {op for d, op in RULES if d == MS} <= covered


# ---------------------------------------------------------------- fused attention, rotary
ORT = Path(__file__).resolve().parent.parent / "models" / "onnx" / "ort"


def _bert_feeds(batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 100, (batch, seq)),
            "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


@pytest.mark.parametrize("name,op", [("bert_attention", "Attention"),
                                     ("bert_mha", "MultiHeadAttention")])
def test_ort_fused_bert_prunes_heads_and_mlp_exactly(name, op):
    """BERT after ONNX Runtime's transformer optimizer (models/export_ort_fused.py): the packed
    [64, 192] QKV weight of Attention, or MultiHeadAttention's packed q|k|v bias, lose whole
    heads; num_heads is rewritten; outputs equal the consumer-zeroed original."""
    model = onnx.load(str(ORT / f"{name}.onnx"))
    res = graphprune.prune(model, ratio=0.5, dims="heads,mlp")
    kinds = {(g["kind"], g["size_before"], g["size_after"]) for g in res.report["groups"]
             if g["frozen_reason"] is None}
    assert kinds == {("head", 4, 2), ("mlp", 128, 64)}
    nodes = [n for n in res.model.graph.node if n.op_type == op]
    assert len(nodes) == 2 and all(helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "num_heads")) == 2 for n in nodes)
    oracle = zero_consumers(model, res)
    for b, s in ((1, 5), (3, 9)):
        f = _bert_feeds(b, s)
        want, out = run(oracle, f), run(res.model, f)
        for k in want:
            np.testing.assert_allclose(out[k], want[k], atol=1e-4, rtol=1e-4)


def _rotary_mha(domain: str, opset: int) -> onnx.ModelProto:
    """q/k projections rotated by RotaryEmbedding ([B, S, H·D], cos/sin caches [32, 8]), then
    MultiHeadAttention and an output projection: the layout of ONNX Runtime GenAI's builder
    for execution providers without fused rotary attention."""
    rng = np.random.default_rng(1)
    pos = np.arange(32)[:, None] * (1e4 ** (-np.arange(8) / 8))[None]
    inits = [numpy_helper.from_array(np.cos(pos).astype(np.float32), "cos"),
             numpy_helper.from_array(np.sin(pos).astype(np.float32), "sin")]
    nodes = []
    for n in ("wq", "wk", "wv"):
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), n))
        nodes.append(helper.make_node("MatMul", ["x", n], [n + "_o"]))
    for n in ("wq", "wk"):
        ins = ([n + "_o", "pos", "cos", "sin"] if domain == MS else [n + "_o", "cos", "sin", "pos"])
        nodes.append(helper.make_node("RotaryEmbedding", ins, [n + "_r"], domain=domain,
                                      **({} if domain == MS else {"num_heads": 4})))
    nodes.append(helper.make_node("MultiHeadAttention", ["wq_r", "wk_r", "wv_o"], ["att"],
                                  domain=MS, num_heads=4))
    inits.append(numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "wo"))
    nodes.append(helper.make_node("MatMul", ["att", "wo"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["b", "s", 16]),
                                       helper.make_tensor_value_info("pos", T.INT64, ["b", "s"])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["b", "s", 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("domain,opset", [(MS, 17), ("", 23)])
def test_rotary_embedding_heads_prune_exactly(domain, opset):
    model = _rotary_mha(domain, opset)
    res = graphprune.prune(model, ratio=0.5, dims="heads")
    heads = [g for g in res.report["groups"] if g["kind"] == "head" and not g["frozen_reason"]]
    assert [(g["size_before"], g["size_after"]) for g in heads] == [(4, 2)]
    oracle = zero_consumers(model, res)
    for b, s in ((1, 5), (2, 7)):
        rng = np.random.default_rng(s)
        f = {"x": rng.standard_normal((b, s, 16)).astype(np.float32),
             "pos": np.broadcast_to(np.arange(s), (b, s)).copy()}
        np.testing.assert_allclose(run(res.model, f)["y"], run(oracle, f)["y"], atol=1e-4)


def _mha_cache_model(packed: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    if packed:  # [B, S, H, 3, D] (ONNX Runtime implements it for GPUs only)
        nodes = [helper.make_node("MatMul", ["x", "wqkv"], ["qkv"]),
                 helper.make_node("Reshape", ["qkv", "shape"], ["q"])]
        inits = [numpy_helper.from_array(rng.standard_normal((16, 192)).astype(np.float32),
                                         "wqkv"),
                 numpy_helper.from_array(np.array([0, 0, 4, 3, 16], np.int64), "shape")]
        qkv = ["q", "", ""]
    else:
        nodes = [helper.make_node("MatMul", ["x", n], [n[1]]) for n in ("wq", "wk", "wv")]
        inits = [numpy_helper.from_array(rng.standard_normal((16, 64)).astype(np.float32), n)
                 for n in ("wq", "wk", "wv")]
        qkv = ["q", "k", "v"]
    nodes += [helper.make_node("MultiHeadAttention", qkv + ["", "", "", "past_key_values.0.key",
                                                           "past_key_values.0.value"],
                               ["att", "present.0.key", "present.0.value"], domain=MS,
                               num_heads=4),
              helper.make_node("MatMul", ["att", "wo"], ["y"])]
    inits.append(numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "wo"))
    kv = ("key", "value")
    past = [helper.make_tensor_value_info(f"past_key_values.0.{n}", T.FLOAT, ["b", 4, "p", 16])
            for n in kv]
    present = [helper.make_tensor_value_info(f"present.0.{n}", T.FLOAT, ["b", 4, "t", 16])
               for n in kv]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["b", "s", 16])]
                          + past, [helper.make_tensor_value_info("y", T.FLOAT, ["b", "s", 16])]
                          + present, inits)
    # ONNX shape inference does not know contrib ops (and ONNX Runtime cannot run this one on
    # CPU to observe it): the attention output's shape is declared, as converters do
    g.value_info.append(helper.make_tensor_value_info("att", T.FLOAT, ["b", "s", 64]))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid(MS, 1)])


@pytest.mark.parametrize("packed", [False, True])
def test_multihead_attention_cache_follows_the_heads(packed):
    """MultiHeadAttention with past/present key/value [B, H, T, D] (a KV cache: its head axis
    shrinks with the heads), from separate q/k/v or a packed QKV query [B, S, H, 3, D]."""
    model = _mha_cache_model(packed)
    res = graphprune.prune(model, ratio=0.5, dims="heads", validate=not packed)
    mha = next(n for n in res.model.graph.node if n.op_type == "MultiHeadAttention")
    assert helper.get_attribute_value(next(a for a in mha.attribute if a.name == "num_heads")) == 2
    kv = ("key", "value")
    assert {c["name"]: c["after"] for c in res.report["io_changes"]} == {
        f"{p}.0.{n}": 2 for p in ("past_key_values", "present") for n in kv}
    if packed:
        w = next(t for t in res.model.graph.initializer if t.name == "wqkv")
        assert list(w.dims) == [16, 96]
        return
    oracle = zero_consumers(model, res)
    rng = np.random.default_rng(3)
    for b, s, p in ((1, 5, 3), (2, 1, 4)):
        f = {"x": rng.standard_normal((b, s, 16)).astype(np.float32)}
        f.update({f"past_key_values.0.{n}": rng.standard_normal((b, 4, p, 16)).astype(np.float32)
                  for n in kv})
        want, out = res.io.apply(run(oracle, f)), run(res.model, res.io.apply(f))
        for k in want:
            np.testing.assert_allclose(out[k], want[k], atol=1e-4, err_msg=k)
