"""Converter idioms: tf2onnx / Keras (NHWC Transpose sandwiches, Reshape targets built at run
time from Shape → Gather → Cast → Slice → Concat, Einsum dense layers, Tensordot targets with
ReduceProd), paddle2onnx (weights in Constant nodes, recurrent weights built at run time by
Slice/Concat, a width divided by 16), skl2onnx (ai.onnx.ml Scaler and ZipMap next to an MLP).

Real tf2onnx 1.17 exports of Keras models are bundled in models/onnx/coverage/ (TensorFlow is
not a test dependency; `python -m models.coverage --only 'tf_keras*'` rebuilds them where
tensorflow and tf2onnx are installed); the rest is built by models/coverage.py. Each model is
pruned and checked: checker, ORT, output signature, consumer-zeroing equivalence.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.ir import GraphView
from models.coverage import build
from test_ops import GB, assert_pruned, builder, const_shape, node_attr, prune_checked

BUNDLED = Path(__file__).resolve().parent.parent / "models" / "onnx" / "coverage"


def _load(name):
    path = BUNDLED / f"{name}.onnx"
    return onnx.load(str(path)) if path.exists() else build(name)[0]


@pytest.mark.parametrize("name,min_lost", [("tf_keras_cnn", 0.3), ("tf_keras_cnn_raw", 0.3),
                                           ("tf_keras_einsum", 0.2),
                                           ("tf_keras_einsum_raw", 0.2),
                                           ("tf_style_nhwc_cnn", 0.3)])
def test_tf2onnx_exports(name, min_lost):
    model = _load(name)
    res = prune_checked(model, ratio=0.3)
    p = res.report["params"]
    assert 1 - p["after"] / p["before"] >= min_lost, p


def test_tf2onnx_einsum_dense_layers_prune_through_einsum():
    model = _load("tf_keras_einsum_raw")  # Einsum "abc,cde->abde" and "abcd,cde->abe"
    res = prune_checked(model, ratio=0.5)
    w1 = "model/einsum_dense/einsum/Einsum/ReadVariableOp:0"
    w2 = "model/einsum_dense_1/einsum/Einsum/ReadVariableOp:0"
    assert const_shape(model, w1) == (16, 2, 12) and const_shape(res.model, w1) == (16, 1, 6)
    assert const_shape(res.model, w2) == (1, 6, 8)


@pytest.mark.parametrize("name", ["paddle_crnn", "paddle_svtr_rec"])
def test_paddle2onnx_recognizers(name):
    model, _ = build(name)
    # hidden-size pruning through SVTR's LayerNorms is an approximation: left out here
    res = prune_checked(model, ratio=0.3, dims="channels,heads,mlp")
    assert res.report["params"]["after"] < 0.9 * res.report["params"]["before"]
    if name == "paddle_crnn":  # the BiLSTM's hidden size shrank, its weights built at run time
        lstm = [n for n in res.model.graph.node if n.op_type == "LSTM"]
        assert lstm and all(node_attr(res.model, n.name, "hidden_size") < 24 for n in lstm)


@builder(("skl_style_mlp_zipmap",), ("skl_style_linear_zipmap",))
def skl_model(name):
    """skl2onnx's Scaler → MLP / LinearClassifier → Normalizer → ZipMap (models/coverage.py)."""
    return build(name)[0]


def test_skl2onnx_pipeline_with_zipmap():
    res = graphprune.prune(skl_model("skl_style_linear_zipmap"), ratio=0.5)
    assert res.report["fidelity"]["value"] == 1.0  # nothing to prune beside the classifier
    model = skl_model("skl_style_mlp_zipmap")
    res = graphprune.prune(model, ratio=0.5)
    assert res.report["summary"]["pruned_groups"] == 1
    assert "ai.onnx.ml::ZipMap" not in res.report["summary"]["unsupported_ops"]
    assert const_shape(res.model, "coefficient") == (4, 8)


@builder()
def scaler_model():
    """Gemm → Relu → ai.onnx.ml Scaler (per-feature offset and scale) → MatMul."""
    g = GB()
    g.domains["ai.onnx.ml"] = 3
    h = g.op("Relu", [g.gemm(g.input([2, 4]), 4, 8, name="m1")])
    rng = np.random.default_rng(1)
    s = g.op("Scaler", [h], name="scaler", domain="ai.onnx.ml",
             offset=rng.standard_normal(8).tolist(), scale=rng.uniform(0.5, 2, 8).tolist())
    g.output(g.matmul(s, 8, 3, name="m2"))
    return g.build()


def test_scaler_slices_its_per_feature_attributes():
    model = scaler_model()
    res = prune_checked(model, ratio=0.5)
    assert_pruned(model, res, ("m1.W", 0), ("m2.W", 0))
    assert len(node_attr(res.model, "scaler", "offset")) == 4
    assert len(node_attr(res.model, "scaler", "scale")) == 4


EINSUM_CASES = {"dense": ("bij,jk->bik", [2, 5, 8]), "implicit": ("bij,jk", [2, 5, 8]),
                "ellipsis": ("...j,jk->...k", [2, 5, 8]), "heads": ("bsd,dhk->bshk", [2, 5, 8])}


@builder(*EINSUM_CASES)
def einsum_model(case):
    eq, shape = EINSUM_CASES[case]
    g = GB()
    x = g.input(shape)
    h = g.op("Relu", [g.op("Add", [g.matmul(x, 8, 12, name="m1"), g.weight([12], "m1.B")])])
    if case == "heads":
        w = g.weight([12, 2, 6], "e.W", axis=2)
        z = g.op("Einsum", [h, w], name="einsum", equation=eq)
        z = g.op("Einsum", [g.op("Relu", [z]), g.weight([2, 6, 4], "o.W", axis=1)],
                 equation="bshk,hkd->bsd")
        g.output(z)
        return g.build()
    z = g.op("Einsum", [h, g.weight([12, 6], "e.W", axis=1)], name="einsum", equation=eq)
    g.output(g.matmul(g.op("Relu", [z]), 6, 4, name="m2"))
    return g.build()


@pytest.mark.parametrize("case", list(EINSUM_CASES))
def test_einsum(case):
    model = einsum_model(case)
    res = prune_checked(model, ratio=0.5)
    assert_pruned(model, res, ("m1.W", 1), ("e.W", 0))
    if case == "heads":
        assert const_shape(res.model, "e.W") == (6, 1, 3) and const_shape(res.model, "o.W") == (1, 3, 4)
    else:
        assert_pruned(model, res, ("e.W", 1), ("m2.W", 0))


def test_unused_after_rewrite_is_dropped_but_not_before():
    """tf2onnx reads the shape of a weight (Shape(W)): once pinned, the weight copy only the
    Shape read goes; an initializer the input already left unused stays."""
    model = _load("tf_keras_einsum")
    extra = onnx.numpy_helper.from_array(np.ones(3, np.float32), "unused_in_input")
    model.graph.initializer.append(extra)
    res = graphprune.prune(model, ratio=0.3)
    names = set(GraphView(res.model).consts)
    assert "unused_in_input" in names
    assert not [n for n in names if n.endswith("__use1") and n.startswith("const_4")]


@builder()
def regroup_model():
    """[1, 5, 8] features times a per-head weight [4, 1]: [1, 5, 4, 8] merged back to [1, 5,
    32]. Both merged axes carry weights; the merge keeps whole heads (blocks of 8)."""
    g = GB()
    h = g.op("Relu", [g.matmul(g.input([1, 5, 6]), 6, 8, name="m1")])
    u = g.op("Unsqueeze", [h, g.i64([2])])
    z = g.op("Mul", [u, g.weight([4, 1], "head.scale")])
    r = g.op("Reshape", [z, g.i64([1, 5, 32])], name="merge")
    g.output(g.matmul(r, 32, 3, name="m2"))
    return g.build()


def test_reshape_merging_two_carrying_axes_keeps_whole_blocks():
    model = regroup_model()
    res = prune_checked(model, ratio=0.5)
    assert_pruned(model, res, ("head.scale", 0), ("m2.W", 0))
    assert const_shape(res.model, "head.scale") == (2, 1)
    assert const_shape(res.model, "m2.W") == (16, 3)  # two whole heads of 8
    assert const_shape(res.model, "m1.W") == (6, 8)  # the inner axis is not pruned


@pytest.mark.parametrize("name", ["vit_timm_legacy", "vit_timm_dynamo", "vit_tv_legacy",
                                  "vit_tv_dynamo"])
def test_vits_with_a_class_token_prune(name):
    """x[:, 0] is a scalar-index Gather; timm's fused QKV reshape [.., 3, H, D] has its heads
    on H; its head size is computed from the hidden size at run time (pinned when the hidden
    size shrinks)."""
    model, _ = build(name)
    res = graphprune.prune(model, ratio=0.3)  # hidden size included: validated in ORT
    assert res.report["params"]["after"] < 0.75 * res.report["params"]["before"]
    res = prune_checked(model, ratio=0.5, dims="heads,mlp")
    heads = [g for g in res.report["groups"] if g["kind"] == "head" and g["frozen_reason"] is None]
    assert bool(heads) == name.startswith("vit_timm")  # torchvision's MultiheadAttention: frozen
