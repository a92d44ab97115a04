"""Hidden-size pruning through a norm: the statistics over the kept features are taken as if
the removed features were zeros, so removing features that are zero everywhere leaves every
output unchanged (the pruned model equals the masked one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.errors import UserError
from helpers import run
from test_transformers import feeds

D, DROP = 8, (6, 7)  # hidden size; the features the producers never write


def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    w_in = rng.normal(size=(4, D)).astype(np.float32)
    w_in2 = rng.normal(size=(4, D)).astype(np.float32)
    w_out = rng.normal(size=(D, 3)).astype(np.float32)
    for j in DROP:
        w_in[:, j] = w_in2[:, j] = 0.0  # the stream is exactly zero there
        w_out[j] *= 1e-3  # and its consumer reads them least: magnitude removes them
    gamma = (1.0 + 0.1 * rng.normal(size=D)).astype(np.float32)
    return w_in, w_in2, w_out, gamma


def _model(kind: str) -> onnx.ModelProto:
    w_in, w_in2, w_out, gamma = _weights()
    inits = [numpy_helper.from_array(w_in, "w_in"), numpy_helper.from_array(w_in2, "w_in2"),
             numpy_helper.from_array(w_out, "w_out"), numpy_helper.from_array(gamma, "gamma")]
    # self-attention over the inputs makes it a transformer graph, where norms may shrink
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
             helper.make_node("MatMul", ["probs", "x"], ["z"]),
             helper.make_node("MatMul", ["z", "w_in"], ["s"])]
    opsets = [helper.make_opsetid("", 18)]
    if kind == "decomposed":
        inits += [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                  numpy_helper.from_array(np.array([-1], np.int64), "last"),
                  numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
        nodes += [helper.make_node("Pow", ["s", "two"], ["sq"]),
                  helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
                  helper.make_node("Add", ["ms", "eps"], ["mse"]),
                  helper.make_node("Sqrt", ["mse"], ["rms"]),
                  helper.make_node("Reciprocal", ["rms"], ["inv"]),
                  helper.make_node("Mul", ["s", "inv"], ["normed"]),
                  helper.make_node("Mul", ["normed", "gamma"], ["h"])]
    elif kind == "simplified":
        nodes.append(helper.make_node("SimplifiedLayerNormalization", ["s", "gamma"], ["h"],
                                      axis=-1, epsilon=1e-6))
    else:  # skip-simplified (ONNX Runtime's fused residual + RMSNorm)
        nodes += [helper.make_node("MatMul", ["z", "w_in2"], ["s2"]),
                  helper.make_node("SkipSimplifiedLayerNormalization", ["s", "s2", "gamma"],
                                   ["h"], domain="com.microsoft", epsilon=1e-6)]
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    nodes.append(helper.make_node("MatMul", ["h", "w_out"], ["y"]))
    graph = helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 3])], inits)
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


@pytest.mark.parametrize("kind", ["decomposed", "simplified", "skip_simplified"])
def test_removing_zero_features_leaves_a_norm_unchanged(kind):
    model = _model(kind)
    res = graphprune.prune(model, ratio=0.25, dims="hidden", criterion="magnitude")
    hidden = [g for g in res.report["groups"] if g["kind"] == "hidden"]
    assert hidden and hidden[0]["size_before"] == D and hidden[0]["size_after"] == D - len(DROP)
    sizes = {t.name: list(t.dims) for t in res.model.graph.initializer}
    assert sizes["w_out"] == [D - len(DROP), 3]
    if kind == "decomposed":  # the fused norms are ONNX Runtime ops the checker does not know
        onnx.checker.check_model(res.model, full_check=True)
    x = {"x": np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(res.model, x)["y"], run(model, x)["y"], rtol=1e-5, atol=1e-5)


LLAMA = sorted((Path(__file__).resolve().parent.parent / "models" / "onnx" / "tx")
               .glob("llama*.onnx"))


@pytest.mark.parametrize("path", LLAMA, ids=[p.name[:-5] for p in LLAMA])
@pytest.mark.parametrize("batch,seq", [(1, 3), (2, 9)])
def test_masked_model_computes_what_the_hidden_pruned_model_computes(path, batch, seq):
    """The masked model that reconstruction, correction and the measured allocation run cuts a
    hidden-size group at its producers too (the removed features of the residual stream are
    zero), and the rewritten RMSNorms take their mean over the kept features with the original
    count: the two compute the same, at any batch and sequence size (both exporters)."""
    from graphprune.pipeline.pipeline import analyze_model
    from graphprune.runtime.segments import tap_model
    from graphprune.transforms.masking import masked_overrides

    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.3, dims="hidden")
    assert any(g["kind"] == "hidden" and g["size_after"] < g["size_before"]
               for g in res.report["groups"])
    view, _ = analyze_model(model, dims="hidden")
    out = model.graph.output[0].name
    f = feeds(model, batch, seq)
    masked = run(tap_model(model, [out], masked_overrides(view, res.graph, res.plan)), f)[out]
    np.testing.assert_allclose(run(res.model, f)[out], masked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", LLAMA, ids=[p.name[:-5] for p in LLAMA])
def test_rotation_is_exact_and_cuts_the_hidden_size_with_less_error(path):
    """--rotate turns the residual stream to its principal axes without changing what the model
    computes (ratio 0 keeps every output), and hidden-size pruning of the turned stream loses
    less than the same cut of the original features."""
    model = onnx.load(str(path))
    f = feeds(model, 2, 7)
    out = model.graph.output[0].name
    ref = run(model, f)[out]
    calib = {"input": feeds(model, 16, 12, seed=3)["input"]}
    same = graphprune.prune(model, ratio=0.0, dims="hidden", rotate=True, calib=calib)
    assert same.report["rotation"]["applied"], same.report["rotation"]
    onnx.checker.check_model(same.model, full_check=True)
    np.testing.assert_allclose(run(same.model, f)[out], ref, rtol=1e-4, atol=1e-4)
    errors = {}
    for rotate in (False, True):
        res = graphprune.prune(model, ratio=0.25, dims="hidden", criterion="flap",
                               rotate=rotate, calib=calib)
        errors[rotate] = float(np.mean((run(res.model, f)[out] - ref) ** 2))
    assert errors[True] < errors[False], errors


def test_rotation_refused_where_the_stream_meets_a_layer_norm():
    """GPT-2's LayerNorm subtracts the mean of the stream, which no rotation keeps: the model is
    pruned unrotated and the report says why."""
    path = LLAMA[0].parent / "gpt2.dynamo.onnx"
    model = onnx.load(str(path))
    calib = {"input": feeds(model, 4, 8, seed=3)["input"]}
    res = graphprune.prune(model, ratio=0.25, dims="hidden", rotate=True, calib=calib)
    rot = res.report["rotation"]
    assert not rot["applied"] and rot["reason"]


def test_rotation_needs_hidden_and_data():
    model = onnx.load(str(LLAMA[0]))
    with pytest.raises(UserError, match="hidden"):
        graphprune.prune(model, ratio=0.2, dims="heads", rotate=True)
    with pytest.raises(UserError, match="calibration"):
        graphprune.prune(model, ratio=0.2, dims="hidden", rotate=True)
