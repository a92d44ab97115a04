"""Quantized graphs from onnxruntime.quantization, pruned through their quantized ops.

The bundled CNNs (and a small MatMul MLP) are quantized here with `quantize_static` (a
calibration reader of random images; QDQ and QOperator formats, per-channel int8 weights,
uint8 activations) and `quantize_dynamic`; each is pruned at 0.3 and checked: the checker
passes, ONNX Runtime runs it, the outputs equal the original's with every consumer slice of a
removed channel set to its zero point, and ONNX Runtime still runs the same integer kernels
(the op types of its optimized graph are those of the unpruned model: no float fallback).
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

import graphprune
from graphprune.analysis.cost import count_params
from graphprune.ir import GraphView
from helpers import assert_equivalent, feeds_for, run
from models.coverage import build
from test_ops import builder

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "onnx"


class RandomImages(CalibrationDataReader):
    def __init__(self, name, shape, n=8):
        rng = np.random.default_rng(0)
        self.it = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.it, None)


def quantized(src: onnx.ModelProto, tmp_path, kind: str, **kw) -> onnx.ModelProto:
    a, b = tmp_path / f"{kind}_in.onnx", tmp_path / f"{kind}_out.onnx"
    onnx.save(src, a)
    if kind == "dynamic":
        quantize_dynamic(str(a), str(b), weight_type=kw.get("weight_type", QuantType.QInt8))
    else:
        inp = src.graph.input[0]
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        quantize_static(str(a), str(b), RandomImages(inp.name, shape),
                        quant_format=QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return onnx.load(str(b))


def ort_op_types(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """Op types of the graph ONNX Runtime runs (its optimized model)."""
    path = tmp_path / f"optimized_{len(os.listdir(tmp_path))}.onnx"
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(path)
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                   "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearAdd"}


def check_quantized(q: onnx.ModelProto, tmp_path, ratio=0.3, atol=1e-5, all_integer=True):
    res = graphprune.prune(q, ratio=ratio)
    assert res.report["summary"]["pruned_groups"] > 0
    assert res.report["params"]["after"] < res.report["params"]["before"]
    onnx.checker.check_model(res.model)
    feeds = feeds_for(q)
    before, after = run(q, feeds), run(res.model, feeds)
    for k in before:
        assert before[k].shape == after[k].shape and before[k].dtype == after[k].dtype
    assert_equivalent(q, res, atol=atol)
    ops_before, ops_after = ort_op_types(q, tmp_path), ort_op_types(res.model, tmp_path)
    assert ops_after == ops_before  # the same kernels: no float fallback
    if all_integer:
        assert set(ops_after) & INTEGER_KERNELS
        assert not {"Conv", "Gemm", "MatMul"} & set(ops_after)
    return res


@pytest.mark.parametrize("kind", ["qdq", "qoperator"])
@pytest.mark.parametrize("name", ["resnet_tiny", "vgg_flatten"])
def test_static_quantization_prunes_with_integer_kernels(name, kind, tmp_path):
    q = quantized(onnx.load(str(MODELS / f"{name}.legacy.onnx")), tmp_path, kind)
    res = check_quantized(q, tmp_path)
    if kind == "qdq":  # per-channel weight scales and zero points shrank with the filters
        view = GraphView(res.model)
        dq = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] in view.consts and len(view.consts[n.input[0]].shape) == 4]
        for n in dq:
            m = view.consts[n.input[0]].shape[0]
            assert view.consts[n.input[1]].shape == (m,) and view.consts[n.input[2]].shape == (m,)


def test_static_quantized_matmul_mlp(tmp_path):
    mlp, _ = build("q_qop_mlp")  # QLinearMatMul + QLinearAdd (quantize_static, QOperator)
    check_quantized(mlp, tmp_path, ratio=0.5)
    mlp, _ = build("q_qdq_mlp")
    check_quantized(mlp, tmp_path, ratio=0.5)


def test_dynamic_quantization_matmul_integer(tmp_path):
    base, _ = build("q_dyn_mlp")  # DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul
    # the activations' scales are taken at run time from the whole tensor, which the
    # consumer-zeroed original still computes with the removed units: equal up to rounding
    res = check_quantized(base, tmp_path, ratio=0.5, atol=3e-3)
    assert any(n.op_type == "MatMulInteger" for n in res.model.graph.node)


def test_dynamic_quantization_conv_integer(tmp_path):
    q = quantized(onnx.load(str(MODELS / "resnet_tiny.legacy.onnx")), tmp_path, "dynamic",
                  weight_type=QuantType.QUInt8)  # ORT's ConvInteger: uint8 x uint8
    assert any(n.op_type == "ConvInteger" for n in q.graph.node)
    res = graphprune.prune(q, ratio=0.3)
    assert res.report["summary"]["pruned_groups"] > 0
    assert_equivalent(q, res, atol=1e-5)  # uint8 weights: removed inputs set to zero points


@pytest.mark.parametrize("name", ["q_weightonly_int8", "q_int4_dq"])
def test_weight_only_and_int4_weights(name):
    """int8 → Cast → Mul(scale) and INT4 DequantizeLinear (per axis, and blocked by 8)."""
    model, _ = build(name)
    res = graphprune.prune(model, ratio=0.5)
    assert res.report["summary"]["pruned_groups"] >= 1
    assert_equivalent(model, res)
    view = GraphView(res.model)
    w0 = next(c for n, c in view.consts.items() if n.startswith("w0_int"))
    assert w0.shape == (16, 16) and str(np.dtype(w0.dtype)) in ("int8", "int4")


def test_integer_weights_count_as_parameters(tmp_path):
    float_model = onnx.load(str(MODELS / "resnet_tiny.legacy.onnx"))
    q = quantized(float_model, tmp_path, "qdq")
    n_float, n_q = count_params(GraphView(float_model)), count_params(GraphView(q))
    assert n_q == n_float  # int8 weights + int32 biases; scales and zero points are not params


FIXTURES = ("q_qdq_cnn", "q_qop_cnn", "q_qop_mlp", "q_dyn_cnn", "q_dyn_mlp", "q_int4_dq")


@builder(*FIXTURES)
def quantized_fixture(name):
    return build(name)[0]


@pytest.mark.parametrize("name", FIXTURES)
def test_quantized_fixtures(name, tmp_path):
    """The coverage fixtures (models/coverage.py): QDQ, QOperator (QLinearConv, QLinearAdd,
    QLinearGlobalAveragePool, QGemm), dynamic ConvInteger with uint8 weights, MatMulInteger,
    INT4 DequantizeLinear."""
    model = quantized_fixture(name)
    if name == "q_int4_dq":
        res = graphprune.prune(model, ratio=0.5)
        assert_equivalent(model, res)
        return
    check_quantized(model, tmp_path, ratio=0.5)


class _QOperatorZoo(torch.nn.Module):
    """Convs joined by the ops ORT's QOperator quantizer turns into com.microsoft kernels:
    Sigmoid and LeakyRelu (QLinearSigmoid / QLinearLeakyRelu), Mul (QLinearMul), AveragePool
    (QLinearAveragePool) and Concat (QLinearConcat)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(8, 8, 1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.c1(x)
        a = torch.sigmoid(y) * y
        b = torch.nn.functional.avg_pool2d(torch.nn.functional.leaky_relu(self.c2(a), 0.1), 2)
        d = self.c4(torch.cat([b, self.c3(b)], 1))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(d, 1), 1))


MS_OPS = {"QLinearSigmoid", "QLinearLeakyRelu", "QLinearMul", "QLinearAveragePool",
          "QLinearConcat", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool", "QuantizeLinear",
          "DequantizeLinear"}


def test_qoperator_contrib_kernels(tmp_path):
    from models.coverage import _export_legacy, _rankable, _seed

    gen = _seed(5)
    m = _QOperatorZoo().eval()
    _rankable(m, gen)
    base = _export_legacy(m, [torch.randn(1, 3, 16, 16, generator=gen)], ["input"], ["y"])
    q = quantized(base, tmp_path, "qoperator")
    ms = {n.op_type for n in q.graph.node if n.domain == "com.microsoft"}
    assert {"QLinearSigmoid", "QLinearLeakyRelu", "QLinearMul", "QLinearAveragePool",
            "QLinearConcat"} <= ms
    check_quantized(q, tmp_path, ratio=0.5)
    src, dst = tmp_path / "qdq_in.onnx", tmp_path / "qdq_ms.onnx"
    onnx.save(base, src)
    quantize_static(str(src), str(dst), RandomImages("input", [1, 3, 16, 16]),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    extra_options={"UseQDQContribOps": True})
    qdq = onnx.load(str(dst))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {
        n.op_type for n in qdq.graph.node if n.domain == "com.microsoft"}
    # ORT fuses only ONNX-domain Q/DQ into integer kernels: the unpruned model runs float
    # convolutions as well, and the pruned one runs the same kernels
    check_quantized(qdq, tmp_path, ratio=0.5, all_integer=False)
