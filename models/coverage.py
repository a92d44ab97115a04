#!/usr/bin/env python3
"""ONNX fixtures as real converters emit them, for graphprune's coverage tests.

Usage::

    python -m models.coverage --out DIR [--only PATTERN ...] [--list] [--no-check]

Tests build the fixtures they need in memory with `build(name)` (every family but ``tf_keras_*``
and ``hf_*`` needs only onnx, numpy, torch and onnxruntime, which the test extra installs); the
real tf2onnx exports are bundled in ``models/onnx/coverage/`` because TensorFlow is not a test
dependency.

Every fixture is a small model (well under 200 KB) built from a fixed seed, so two runs write
byte-identical files. Next to each ``NAME.onnx`` goes ``NAME.inputs.npz``: one valid sample per
graph input (what ``graphprune --calib`` takes), because several fixtures only run on inputs
with real values (a sample rate, an index, a mask length). Each model is checked with
``onnx.checker`` and run once in ONNX Runtime on those inputs unless ``--no-check``.

Families (``--list`` prints every name):

``rnn_*``        torch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (batch_first) between a Linear and a
                 Linear head, legacy exporter (opset 17): ONNX ``LSTM`` / ``GRU`` / ``RNN`` ops,
                 uni-/bidirectional, 1 or 2 layers, with or without ``h0``/``c0`` graph inputs.
``q_*``          ONNX Runtime quantization of a small CNN and MLP: ``quantize_static`` in QDQ
                 format (per-channel weights) and QOperator format (QLinearConv, QLinearMatMul,
                 QLinearAdd, ...), ``quantize_dynamic`` (DynamicQuantizeLinear -> MatMulInteger /
                 ConvInteger, DynamicQuantizeLSTM), a weight-only graph (int8 initializer -> Cast ->
                 Mul(scale) -> MatMul) and INT4 ``DequantizeLinear`` (opset 21, per-axis and
                 blocked).
``tf_keras_*``   real Keras models through tf2onnx (only where ``tensorflow`` and ``tf2onnx``
                 import): an NHWC CNN with Reshape/EinsumDense/Conv1D, and EinsumDense head
                 split/merge ("abc,cde->abde", "abcd,cde->abe"), each with the default optimizers
                 and with none (raw Transpose sandwiches, Einsum kept). Node order and generated
                 names are canonicalized (tf2onnx's optimizers order by object ids).
``tf_style_*``   the same idioms built with onnx.helper (needs nothing): NHWC input, Transpose
                 sandwich around every Conv, a Reshape target from Shape -> Gather -> Cast ->
                 Slice -> Concat -> Cast, an ``Einsum`` dense layer, a Conv1D as Unsqueeze ->
                 Transpose -> Conv -> Transpose -> Squeeze, a keepdims=0 reduction head.
``paddle_*``     a CRNN text recognizer as paddle2onnx writes it: every weight a ``Constant`` node,
                 Conv -> BatchNormalization -> HardSwish, an SE block with ``Reshape``'d biases,
                 ``Squeeze`` + ``Transpose`` into a 2-layer bidirectional LSTM whose W/R/B are
                 built at run time (Concat of directions, Slice/Concat reordering paddle's
                 i,f,c,o gates to ONNX's i,o,f,c), initial states from the fill_constant_batch_
                 size_like pattern (Shape -> Slice -> Concat -> Tile -> Transpose), a MatMul + Add
                 head and Softmax. ``paddle_svtr_rec``: PP-OCRv4's pattern (width / 16, a
                 decomposed LayerNorm, an SVTR attention whose Reshape targets read x.shape[1]).
``skl_*``        scikit-learn pipelines through skl2onnx (only where it imports) and the same
                 ``Scaler -> LinearClassifier -> ZipMap`` pipeline built in the ai.onnx.ml domain.
``vit_*``        a ViT whose class token is taken with ``x[:, 0]`` (a scalar-index Gather):
                 torchvision's structure (nn.MultiheadAttention) and a hand-written attention,
                 each with both torch exporters.
``sym_*``        symbolic input dims that the weights fix ([N, F] into a Gemm of 81 features,
                 [N, C, T] into a Conv1d, an all-symbolic [N, C, H, W]).
``need_*``       inputs that need real values: a sample-rate scalar that selects a branch (If,
                 and Where/Gather) and errors unless it is 8000 or 16000, an index into a table of
                 one row, LSTM sequence lengths, an attention mask whose length must equal past +
                 current length.
``macs_*``       a YOLO-like detector at a static 320x320 input (both exporters), for MAC
                 counting.
``hf_*``         random-init Hugging Face encoders (BERT, DistilBERT, RoBERTa, T5 encoder), both
                 exporters (only where ``transformers`` imports).
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models._export_util import quiet_export, strip_metadata

REGISTRY: dict[str, tuple[Callable, str, tuple[str, ...], str]] = {}


def fixture(name: str, needs: tuple[str, ...] = (), doc: str = ""):
    """Register a builder returning (ModelProto, {input name: sample array})."""

    def deco(fn):
        REGISTRY[name] = (fn, name.split("_")[0], needs, doc or (fn.__doc__ or "").strip())
        return fn

    return deco


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 (any import failure means "not here")
        return False


# ============================================================================ common helpers
def _quiet():
    """Exporter and converter chatter silenced (see `quiet_export`)."""
    return quiet_export(("onnxruntime", "tensorflow", "tf2onnx", "skl2onnx", "root"))


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop exporter metadata (stack traces, paths) so files are small and reproducible; the
    producer is kept (converters are the point)."""
    strip_metadata(model)
    return model


class G:
    """A tiny graph builder over onnx.helper with seeded weights."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        k = self._count.get(base, 0)
        self._count[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    def w(self, *shape, scale: float | None = None) -> np.ndarray:
        """He-scaled normal weights, rows scaled by factors in [0.1, 2] (rankable channels)."""
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else np.sqrt(2.0 / max(fan_in, 1))
        a = self.rng.standard_normal(shape) * s
        if len(shape) > 1:
            a *= self.rng.uniform(0.1, 2.0, size=(shape[0],) + (1,) * (len(shape) - 1))
        return a.astype(np.float32)

    def b(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)

    def init(self, base: str, arr) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, base: str, arr) -> str:
        """A `Constant` node (how paddle2onnx stores every parameter)."""
        name = self.fresh(base)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_node",
                                           value=numpy_helper.from_array(np.asarray(arr), name)))
        return name

    def op(self, op_type: str, inputs, outputs=1, domain: str = "", name: str | None = None,
           **attrs):
        base = name or op_type
        nname = self.fresh(base)
        if isinstance(outputs, int):
            outs = [f"{nname}_out{i}" if outputs > 1 else f"{nname}_out" for i in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=nname,
                                           domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def input(self, name: str, elem: int, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int, shape) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)

    def model(self, opset: int, extra: dict[str, int] | None = None, producer: str = "",
              ir_version: int | None = None) -> onnx.ModelProto:
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v)
                                                 for d, v in (extra or {}).items()]
        m = helper.make_model(self.graph(), opset_imports=ops, producer_name=producer or "graphprune-fixtures")
        if ir_version is not None:
            m.ir_version = ir_version
        return m


def _ir_for(opset: int) -> int:
    return {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}.get(opset, 8)


# ============================================================================ torch helpers
def _seed(s: int):
    import torch

    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def _rankable(module, gen) -> None:
    """Scale each output row of every Linear/Conv/RNN weight by a factor in [0.1, 2] so channels
    rank differently under magnitude, and give biases random values."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                f = torch.rand(p.shape[0], generator=gen) * 1.9 + 0.1
                p.mul_(f.view(-1, *([1] * (p.dim() - 1))))
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _export_legacy(module, args, input_names, output_names, dynamic_axes=None, opset=17):
    import torch

    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, tuple(args), buf, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes or {})
    return _strip(onnx.load_from_string(buf.getvalue()))


def _export_dynamo(module, args, input_names, output_names, dynamic_shapes=None):
    import torch

    with _quiet(), torch.no_grad():
        prog = torch.onnx.export(module, tuple(args), dynamo=True, verbose=False,
                                 input_names=input_names, output_names=output_names,
                                 dynamic_shapes=dynamic_shapes)
    return _strip(onnx.load_from_string(prog.model_proto.SerializeToString()))


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


# ============================================================================ recurrent
_RNN_VARIANTS = {
    # name: (layers, bidirectional, states as graph inputs)
    "uni1": (1, False, False),
    "uni2_h0": (2, False, True),
    "bi1": (1, True, False),
    "bi2_h0": (2, True, True),
}
RNN_IN, RNN_PRE, RNN_HIDDEN, RNN_OUT = 8, 12, 16, 10


def _rnn_module(kind: str, layers: int, bidir: bool, with_state: bool):
    import torch
    from torch import nn

    class RNNHead(nn.Module):
        """x [B, T, 8] -> Linear(8, 12) -> ReLU -> RNN(12 -> 16, batch_first) -> Linear(., 10)."""

        def __init__(self):
            super().__init__()
            cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
            self.pre = nn.Linear(RNN_IN, RNN_PRE)
            self.rnn = cell(RNN_PRE, RNN_HIDDEN, layers, batch_first=True, bidirectional=bidir)
            self.head = nn.Linear(RNN_HIDDEN * (2 if bidir else 1), RNN_OUT)

        def forward(self, x, *state):
            x = torch.relu(self.pre(x))
            if not with_state:
                y, _ = self.rnn(x)
            elif kind == "lstm":
                y, _ = self.rnn(x, (state[0], state[1]))
            else:
                y, _ = self.rnn(x, state[0])
            return self.head(y)

    return RNNHead().eval()


def _build_rnn(kind: str, variant: str, seed: int):
    import torch

    layers, bidir, with_state = _RNN_VARIANTS[variant]
    gen = _seed(seed)
    m = _rnn_module(kind, layers, bidir, with_state)
    _rankable(m, gen)
    d = 2 if bidir else 1
    x = torch.randn(2, 5, RNN_IN, generator=gen)
    args, names = [x], ["x"]
    axes = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    if with_state:
        states = ["h0", "c0"] if kind == "lstm" else ["h0"]
        for s in states:
            args.append(torch.randn(layers * d, 2, RNN_HIDDEN, generator=gen) * 0.5)
            names.append(s)
            axes[s] = {1: "batch"}
    model = _export_legacy(m, args, names, ["y"], axes)
    return model, {n: _np(a) for n, a in zip(names, args)}


def _register_rnn():
    for kind in ("lstm", "gru", "rnn"):
        for variant in _RNN_VARIANTS:
            name = f"rnn_{kind}_{variant}"
            seed = 100 + len(REGISTRY)

            def build(kind=kind, variant=variant, seed=seed):
                return _build_rnn(kind, variant, seed)

            layers, bidir, st = _RNN_VARIANTS[variant]
            fixture(name, needs=("torch",),
                    doc=f"torch nn.{kind.upper()} {'bi' if bidir else 'uni'}directional, {layers} "
                        f"layer(s), {'h0/c0 graph inputs' if st else 'zero initial state'}; "
                        "Linear before and after; legacy exporter opset 17")(build)


_register_rnn()


# ============================================================================ quantized
def _tiny_cnn(seed: int):
    """3 conv-BN-ReLU with a residual Add, global average pool, Linear: 3x16x16 -> 10."""
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.c2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                    nn.ReLU())
            self.c3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y = self.c2(self.c1(x))
            y = torch.relu(self.c3(y) + y)
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))

    gen = _seed(seed)
    m = TinyCNN().eval()
    _rankable(m, gen)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    x = torch.randn(1, 3, 16, 16, generator=gen)
    return _export_legacy(m, [x], ["input"], ["logits"]), x


def _tiny_mlp(seed: int):
    """x [1, 4, 16] -> Linear(16, 32) -> ReLU -> Linear(32, 32) -> ReLU -> Linear(32, 10):
    3-D input, so the legacy exporter writes MatMul + Add (what MatMulInteger/QLinearMatMul need)."""
    import torch
    from torch import nn

    gen = _seed(seed)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                      nn.Linear(32, 10)).eval()
    _rankable(m, gen)
    x = torch.randn(1, 4, 16, generator=gen)
    return _export_legacy(m, [x], ["input"], ["logits"]), x


def _ort_quant(kind: str, base: onnx.ModelProto, sample: np.ndarray, seed: int, **kw):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(base, src)
        name = base.graph.input[0].name
        with _quiet():
            if kind == "dynamic":
                quantize_dynamic(src, dst, weight_type=kw.get("weight_type", QuantType.QInt8),
                                 op_types_to_quantize=kw.get("op_types"))
            else:
                class Reader(CalibrationDataReader):
                    def __init__(self):
                        self.it = iter([{name: rng.standard_normal(sample.shape).astype(np.float32)}
                                        for _ in range(8)])

                    def get_next(self):
                        return next(self.it, None)

                fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
                quantize_static(src, dst, Reader(), quant_format=fmt,
                                per_channel=kw.get("per_channel", True),
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return _strip(onnx.load(dst))


@fixture("q_qdq_cnn", needs=("torch",))
def _q_qdq_cnn():
    """quantize_static, QDQ format, per-channel int8 weights, uint8 activations, of TinyCNN."""
    base, x = _tiny_cnn(200)
    return _ort_quant("qdq", base, _np(x), 200), {"input": _np(x)}


@fixture("q_qop_cnn", needs=("torch",))
def _q_qop_cnn():
    """quantize_static, QOperator format (QLinearConv, QLinearAdd, QLinearGlobalAveragePool,
    QGemm), per-channel, of TinyCNN."""
    base, x = _tiny_cnn(200)
    return _ort_quant("qop", base, _np(x), 200), {"input": _np(x)}


@fixture("q_qdq_mlp", needs=("torch",))
def _q_qdq_mlp():
    """quantize_static, QDQ format, per-channel weights, of the MatMul+Add MLP."""
    base, x = _tiny_mlp(201)
    return _ort_quant("qdq", base, _np(x), 201), {"input": _np(x)}


@fixture("q_qop_mlp", needs=("torch",))
def _q_qop_mlp():
    """quantize_static, QOperator format (QLinearMatMul, QLinearAdd), per-channel, of the MLP."""
    base, x = _tiny_mlp(201)
    return _ort_quant("qop", base, _np(x), 201), {"input": _np(x)}


@fixture("q_dyn_mlp", needs=("torch",))
def _q_dyn_mlp():
    """quantize_dynamic of the MLP: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul."""
    base, x = _tiny_mlp(201)
    return _ort_quant("dynamic", base, _np(x), 201), {"input": _np(x)}


@fixture("q_dyn_cnn", needs=("torch",))
def _q_dyn_cnn():
    """quantize_dynamic of TinyCNN with uint8 weights (ORT's ConvInteger is uint8 x uint8):
    DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add(bias)."""
    from onnxruntime.quantization import QuantType

    base, x = _tiny_cnn(200)
    return (_ort_quant("dynamic", base, _np(x), 200, weight_type=QuantType.QUInt8),
            {"input": _np(x)})


@fixture("q_dyn_lstm", needs=("torch",))
def _q_dyn_lstm():
    """quantize_dynamic of rnn_lstm_bi1: the LSTM becomes com.microsoft DynamicQuantizeLSTM
    (int8 W/R transposed to [D, input, 4H] / [D, H, 4H] with per-gate-column scales), the
    Linear layers MatMulInteger."""
    base, feeds = _build_rnn("lstm", "bi1", 300)
    return _ort_quant("dynamic", base, feeds["x"], 300), feeds


def _weight_only_mlp(int4: bool):
    opset = 21 if int4 else 17
    g = G("weight_only_int4" if int4 else "weight_only_int8", 210 + int4)
    x = g.input("input", TensorProto.FLOAT, ["batch", 16])
    h = x
    dims = [16, 32, 10]
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        w = g.w(k, n, scale=np.sqrt(2.0 / k))
        if int4:
            if i == 0:  # per-axis (output column) scales
                scale = np.abs(w).max(axis=0) / 7.0
                q = np.clip(np.round(w / scale), -8, 7).astype(np.int8)
                wq = g.fresh(f"w{i}_int4")
                g.inits.append(helper.make_tensor(wq, TensorProto.INT4, [k, n], q.reshape(-1).tolist()))
                s = g.init(f"w{i}_scale", scale.astype(np.float32))
                zp = g.fresh(f"w{i}_zero_point")
                g.inits.append(helper.make_tensor(zp, TensorProto.INT4, [n], [0] * n))
                wf = g.op("DequantizeLinear", [wq, s, zp], axis=1, name=f"w{i}_dq")
            else:  # blocked along K (block_size 8): scale [K / 8, N]
                blk = 8
                scale = np.abs(w.reshape(k // blk, blk, n)).max(axis=1) / 7.0
                q = np.clip(np.round(w / np.repeat(scale, blk, axis=0)), -8, 7).astype(np.int8)
                wq = g.fresh(f"w{i}_int4")
                g.inits.append(helper.make_tensor(wq, TensorProto.INT4, [k, n], q.reshape(-1).tolist()))
                s = g.init(f"w{i}_scale", scale.astype(np.float32))
                wf = g.op("DequantizeLinear", [wq, s], axis=0, block_size=blk, name=f"w{i}_dq")
        else:
            scale = np.abs(w).max(axis=0) / 127.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            wq = g.init(f"w{i}_int8", q)
            s = g.init(f"w{i}_scale", scale.astype(np.float32))
            wc = g.op("Cast", [wq], to=TensorProto.FLOAT, name=f"w{i}_cast")
            wf = g.op("Mul", [wc, s], name=f"w{i}_dequant")
        h = g.op("MatMul", [h, wf], name=f"fc{i}")
        h = g.op("Add", [h, g.init(f"b{i}", g.b(n))], name=f"fc{i}_bias")
        if i < len(dims) - 2:
            h = g.op("Relu", [h])
    g.nodes[-1].output[0] = "logits"
    g.output("logits", TensorProto.FLOAT, ["batch", 10])
    m = g.model(opset, ir_version=_ir_for(opset))
    return m, {"input": g.rng.standard_normal((2, 16)).astype(np.float32)}


@fixture("q_weightonly_int8")
def _q_weightonly_int8():
    """Weight-only int8 MLP (onnx.helper): int8 initializer -> Cast(float) -> Mul(per-column
    scale [N]) -> MatMul -> Add(bias), twice."""
    return _weight_only_mlp(False)


@fixture("q_int4_dq")
def _q_int4_dq():
    """INT4 weights, opset 21: DequantizeLinear(int4 [16, 32], scale [32], zp int4, axis=1) ->
    MatMul, then blocked DequantizeLinear(int4 [32, 10], scale [4, 10], axis=0, block_size=8)."""
    return _weight_only_mlp(True)


# ============================================================================ tf2onnx (real)
def _keras_model():
    """NHWC CNN: Conv2D(relu) -> Conv2D(stride 2, no bias) -> BatchNorm -> ReLU -> Conv2D ->
    Reshape((64, 16)) -> EinsumDense("bij,jk->bik") -> Conv1D -> GlobalAveragePooling1D -> Dense."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.backend.clear_session()  # layer names (dense, dense_1, ...) restart
    tf.keras.utils.set_random_seed(400)
    L = tf.keras.layers
    rnd = tf.keras.initializers.RandomNormal(stddev=0.1, seed=401)
    inp = tf.keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", bias_initializer=rnd)(inp)
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(beta_initializer=rnd, moving_mean_initializer=rnd)(x)
    x = L.ReLU()(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", bias_initializer=rnd)(x)
    x = L.Reshape((64, 16))(x)
    x = L.EinsumDense("bij,jk->bik", output_shape=(None, 24), bias_axes="k",
                      bias_initializer=rnd)(x)
    x = L.Conv1D(12, 3, padding="same", activation="relu", bias_initializer=rnd)(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(10, bias_initializer=rnd)(x)
    return tf.keras.Model(inp, x), tf


def _canonical_tf2onnx(model: onnx.ModelProto, keep_prefix: str = "model/") -> onnx.ModelProto:
    """Make a tf2onnx export byte-reproducible. Its optimizers iterate sets and name constants
    after object ids (einsum140242458802832_id_axes__127), so node order and generated names vary
    from run to run. Nodes are put in a canonical topological order (post-order DFS from the graph
    outputs, inputs in input order) and every generated name (not a Keras variable or layer name
    starting with `keep_prefix`, not a graph input/output) is renamed by position: nodes OpType_K,
    tensors t_K, initializers const_K (equal constants under two names collapse to one)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    seen, order = set(), []

    def visit(t):
        n = producer.get(t)
        if n is None or id(n) in seen:
            return
        seen.add(id(n))
        for i in n.input:
            visit(i)
        order.append(n)

    for o in g.output:
        visit(o.name)
    for n in g.node:  # anything not reaching an output keeps its relative order at the end
        if id(n) not in seen:
            seen.add(id(n))
            order.append(n)
    fixed = {i.name for i in g.input} | {o.name for o in g.output}
    inits = {t.name: t for t in g.initializer}
    rename: dict[str, str] = {}
    for k, n in enumerate(order):
        if not n.name.startswith(keep_prefix):
            n.name = f"{n.op_type}_{k}"
        for i in n.input:
            if i in inits and i not in rename and not i.startswith(keep_prefix):
                rename[i] = f"const_{sum(v.startswith('const_') for v in rename.values())}"
        for j, o in enumerate(n.output):
            if o and o not in fixed and not o.startswith(keep_prefix) and o not in rename:
                rename[o] = f"t_{k}_{j}"
    for n in order:
        for k, i in enumerate(n.input):
            n.input[k] = rename.get(i, i)
        for k, o in enumerate(n.output):
            n.output[k] = rename.get(o, o)
    keep = {}
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
        keep.setdefault(t.name, t)
    del g.initializer[:]
    g.initializer.extend(sorted(keep.values(), key=lambda t: t.name))
    del g.node[:]
    g.node.extend(order)
    vis = [vi for vi in g.value_info]
    for vi in vis:
        vi.name = rename.get(vi.name, vi.name)
    return model


def _keras_export(optimized: bool):
    import tf2onnx

    m, tf = _keras_model()
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="image"),)
    with _quiet():
        kw = {} if optimized else {"optimizers": {}}
        proto, _ = tf2onnx.convert.from_keras(m, input_signature=spec, opset=13, **kw)
    x = np.random.default_rng(402).standard_normal((2, 16, 16, 3)).astype(np.float32)
    return _canonical_tf2onnx(_strip(proto)), {"image": x}


@fixture("tf_keras_cnn", needs=("tensorflow", "tf2onnx"))
def _tf_keras_cnn():
    """A real Keras NHWC CNN through tf2onnx 1.17 (default optimizers, opset 13)."""
    return _keras_export(True)


@fixture("tf_keras_cnn_raw", needs=("tensorflow", "tf2onnx"))
def _tf_keras_cnn_raw():
    """The same Keras model through tf2onnx with no optimizer: every Conv in a Transpose
    sandwich, Einsum kept, shape arithmetic left as exported."""
    return _keras_export(False)


def _keras_einsum_export(optimized: bool):
    """Keras attention-style projections: EinsumDense("abc,cde->abde") splits 16 features into 2
    heads of 12, EinsumDense("abcd,cde->abe") merges them back (what keras MultiHeadAttention
    uses), then Dense. tf2onnx keeps both Einsum ops when not optimized; its EinsumOptimizer
    rewrites them into Shape -> Gather -> ReduceProd -> Concat -> Reshape -> Gemm -> Reshape."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(405)
    L = tf.keras.layers
    rnd = tf.keras.initializers.RandomNormal(stddev=0.1, seed=406)
    inp = tf.keras.Input((8, 16), name="x")
    x = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 12), bias_axes="de",
                      bias_initializer=rnd)(inp)
    x = L.Activation("relu")(x)
    x = L.EinsumDense("abcd,cde->abe", output_shape=(None, 16), bias_axes="e",
                      bias_initializer=rnd)(x)
    x = L.Dense(4, bias_initializer=rnd)(x)
    m = tf.keras.Model(inp, x)
    spec = (tf.TensorSpec((None, 8, 16), tf.float32, name="x"),)
    with _quiet():
        kw = {} if optimized else {"optimizers": {}}
        proto, _ = tf2onnx.convert.from_keras(m, input_signature=spec, opset=13, **kw)
    return _canonical_tf2onnx(_strip(proto)), {"x": np.random.default_rng(407).standard_normal((2, 8, 16)).astype(np.float32)}


@fixture("tf_keras_einsum", needs=("tensorflow", "tf2onnx"))
def _tf_keras_einsum():
    """Keras EinsumDense head split/merge through tf2onnx with its default optimizers."""
    return _keras_einsum_export(True)


@fixture("tf_keras_einsum_raw", needs=("tensorflow", "tf2onnx"))
def _tf_keras_einsum_raw():
    """Keras EinsumDense head split/merge through tf2onnx with no optimizer: Einsum ops kept."""
    return _keras_einsum_export(False)


# ============================================================================ tf2onnx style
@fixture("tf_style_nhwc_cnn")
def _tf_style_nhwc_cnn():
    """tf2onnx idioms with onnx.helper (opset 13, dims named unk__N as tf2onnx names them):
    Transpose(0,3,1,2) -> Conv -> Transpose(0,2,3,1) around each conv with the activation in
    NHWC; a Reshape whose target is Shape(nchw) -> Gather(perm [0,2,3,1]) -> Cast(int32) ->
    Slice[0:1] -> Concat(int32 [64], [16]) -> Cast(int64); Einsum "bij,jk->bik" + Add; a Conv1D
    as Unsqueeze(1) -> Transpose -> Conv(1x3) -> Transpose -> Squeeze(1); ReduceMean(axes=[1],
    keepdims=0) -> MatMul -> Add."""
    g = G("tf2onnx", 410)
    x = g.input("image", TensorProto.FLOAT, ["unk__59", 16, 16, 3])
    h = x
    for i, (cin, cout, stride) in enumerate([(3, 8, 1), (8, 16, 2), (16, 16, 1)]):
        t = g.op("Transpose", [h], perm=[0, 3, 1, 2], name=f"model/conv2d_{i}/Conv2D__{6 + i}")
        pads = [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]  # TF 'same' pads at the end
        c = g.op("Conv", [t, g.init(f"model/conv2d_{i}/Conv2D/ReadVariableOp:0", g.w(cout, cin, 3, 3)),
                          g.init(f"model/conv2d_{i}/BiasAdd/ReadVariableOp:0", g.b(cout))],
                 kernel_shape=[3, 3], strides=[stride, stride], pads=pads, dilations=[1, 1],
                 group=1, name=f"model/conv2d_{i}/Conv2D")
        nchw = c
        h = g.op("Transpose", [c], perm=[0, 2, 3, 1], name=f"model/conv2d_{i}/Conv2D__{10 + i}")
        h = g.op("Relu", [h], name=f"model/conv2d_{i}/Relu")
    # keras Reshape((64, 16)): tf.reshape(x, (tf.shape(x)[0], 64, 16)); tf2onnx reads the shape of
    # the NCHW tensor and permutes it back to NHWC with a Gather
    shp = g.op("Shape", [nchw], name="Shape__49")
    perm = g.init("Const__51", np.array([0, 2, 3, 1], dtype=np.int64))
    shp = g.op("Gather", [shp, perm], axis=0, name="model/reshape/Shape")
    shp = g.op("Cast", [shp], to=TensorProto.INT32, name="model/reshape/Shape__22")
    bstart = g.init("const_starts__23", np.array([0], dtype=np.int64))
    bend = g.init("const_ends__24", np.array([1], dtype=np.int64))
    baxes = g.init("const_axes__25", np.array([0], dtype=np.int64))
    batch = g.op("Slice", [shp, bstart, bend, baxes], name="model/reshape/strided_slice")
    tgt = g.op("Concat", [batch, g.init("const_fold_opt__54", np.array([64], dtype=np.int32)),
                          g.init("const_fold_opt__55", np.array([16], dtype=np.int32))], axis=0,
               name="model/reshape/Reshape/shape_Concat__34")
    tgt = g.op("Cast", [tgt], to=TensorProto.INT64, name="model/reshape/Reshape__35")
    h = g.op("Reshape", [h, tgt], name="model/reshape/Reshape")
    # EinsumDense("bij,jk->bik", bias_axes="k")
    h = g.op("Einsum", [h, g.init("model/einsum_dense/einsum/Einsum/ReadVariableOp:0",
                                  g.w(16, 24, scale=0.35))],
             equation="bij,jk->bik", name="model/einsum_dense/einsum/Einsum")
    h = g.op("Add", [h, g.init("model/einsum_dense/add/ReadVariableOp:0", g.b(24))],
             name="model/einsum_dense/add")
    # Conv1D(12, 3, padding="same"): ExpandDims(1) -> Conv2D -> Squeeze(1)
    u = g.op("Unsqueeze", [h, g.init("const_axes__37", np.array([1], dtype=np.int64))],
             name="model/conv1d/Conv1D/ExpandDims")
    t = g.op("Transpose", [u], perm=[0, 3, 1, 2], name="model/conv1d/Conv1D__39")
    c = g.op("Conv", [t, g.init("model/conv1d/Conv1D/ExpandDims_1:0", g.w(12, 24, 1, 3)),
                      g.init("model/conv1d/BiasAdd/ReadVariableOp:0", g.b(12))],
             kernel_shape=[1, 3], strides=[1, 1], pads=[0, 1, 0, 1], dilations=[1, 1], group=1,
             name="model/conv1d/Conv1D")
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1], name="model/conv1d/Conv1D__42")
    s = g.op("Squeeze", [t, g.init("axes_const__43", np.array([1], dtype=np.int64))],
             name="model/conv1d/Conv1D/Squeeze")
    s = g.op("Relu", [s], name="model/conv1d/Relu")
    # GlobalAveragePooling1D: tf.reduce_mean(x, axis=1) -> ReduceMean keepdims=0
    r = g.op("ReduceMean", [s], axes=[1], keepdims=0, name="model/global_average_pooling1d/Mean")
    y = g.op("MatMul", [r, g.init("model/dense/MatMul/ReadVariableOp:0", g.w(12, 10, scale=0.4))],
             name="model/dense/MatMul")
    g.op("Add", [y, g.init("model/dense/BiasAdd/ReadVariableOp:0", g.b(10))], outputs=["dense"],
         name="model/dense/BiasAdd")
    g.output("dense", TensorProto.FLOAT, ["unk__60", 10])
    m = g.model(13, producer="tf2onnx", ir_version=7)
    return m, {"image": g.rng.standard_normal((2, 16, 16, 3)).astype(np.float32)}


# ============================================================================ paddle2onnx style
def _paddle_lstm_layer(g: G, x: str, state_h: str, state_c: str, layer: int, cin: int, hid: int):
    """One paddle `rnn` layer (bidirectional) exactly as paddle2onnx's RnnMapper writes it.

    Paddle keeps one [4H, in] / [4H, H] / [4H] / [4H] tensor per direction with gates in order
    i, f, c, o. paddle2onnx unsqueezes each to [1, ...], concatenates the directions (axis 0), and
    reorders gates with Slice(axis 1) [0:H], [3H:4H], [H:3H] + Concat(axis 1) into ONNX's i, o, f, c;
    B = Concat(input bias, hidden bias) on axis 1. The initial states are Slice(axis 0) of the
    PreState tensors. (onnxoptimizer's fuse_consecutive/constant passes fold the Unsqueeze of a
    Constant, so the Unsqueezed weights are Constant nodes here.)
    """
    def reform(t):
        parts = []
        for a, b in ((0, 1), (3, 4), (1, 3)):
            parts.append(g.op("Slice", [t, g.const("p2o.Constant", np.array([a * hid], np.int64)),
                                        g.const("p2o.Constant", np.array([b * hid], np.int64)),
                                        g.const("p2o.Constant", np.array([1], np.int64))],
                              name="p2o.Slice"))
        return g.op("Concat", parts, axis=1, name="p2o.Concat")

    tensors = {}
    for kind, shape in (("wi", (4 * hid, cin)), ("wh", (4 * hid, hid)), ("bi", (4 * hid,)),
                        ("bh", (4 * hid,))):
        dirs = []
        for d in range(2):
            v = g.w(*shape, scale=1.0 / np.sqrt(hid)) if len(shape) > 1 else g.b(shape[0])
            dirs.append(g.const(f"lstm_{layer}.{kind}_{d}.unsqueezed", v[None]))
        tensors[kind] = reform(g.op("Concat", dirs, axis=0, name="p2o.Concat"))
    b = g.op("Concat", [tensors["bi"], tensors["bh"]], axis=1, name="p2o.Concat")
    h0 = g.op("Slice", [state_h, g.const("p2o.Constant", np.array([2 * layer], np.int64)),
                        g.const("p2o.Constant", np.array([2 * layer + 2], np.int64)),
                        g.const("p2o.Constant", np.array([0], np.int64))], name="p2o.Slice")
    c0 = g.op("Slice", [state_c, g.const("p2o.Constant", np.array([2 * layer], np.int64)),
                        g.const("p2o.Constant", np.array([2 * layer + 2], np.int64)),
                        g.const("p2o.Constant", np.array([0], np.int64))], name="p2o.Slice")
    y, _, _ = g.op("LSTM", [x, tensors["wi"], tensors["wh"], b, "", h0, c0], outputs=3,
                   direction="bidirectional", hidden_size=hid, name="p2o.LSTM")
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3], name="p2o.Transpose")
    return g.op("Reshape", [y, g.const("p2o.Constant", np.array([0, 0, -1], np.int64))],
                name="p2o.Reshape")


def _p2o_conv_bn(g: G, h, cin, cout, k, stride, groups=1, act="hardswish"):
    """paddle conv2d (no bias) -> batch_norm -> activation, as paddle2onnx writes them."""
    pad = k // 2
    w = g.const("conv2d.w_0", g.w(cout, cin // groups, k, k))
    h = g.op("Conv", [h, w], kernel_shape=[k, k], strides=list(stride), pads=[pad] * 4,
             dilations=[1, 1], group=groups, name="p2o.Conv")
    bn = [g.const("batch_norm.w_0", g.rng.uniform(0.5, 1.5, cout).astype(np.float32)),
          g.const("batch_norm.b_0", g.b(cout)),
          g.const("batch_norm.w_1", g.b(cout)),
          g.const("batch_norm.w_2", g.rng.uniform(0.5, 1.5, cout).astype(np.float32))]
    h = g.op("BatchNormalization", [h] + bn, epsilon=1e-5, momentum=0.9,
             name="p2o.BatchNormalization")
    if act == "hardswish":  # paddle2onnx's opset-7 form: x * clip(x + 3, 0, 6) / 6
        a = g.op("Add", [h, g.const("p2o.Constant", np.array(3.0, np.float32))], name="p2o.Add")
        a = g.op("Clip", [a, g.const("p2o.Constant", np.array(0.0, np.float32)),
                          g.const("p2o.Constant", np.array(6.0, np.float32))], name="p2o.Clip")
        h = g.op("Div", [g.op("Mul", [h, a], name="p2o.Mul"),
                         g.const("p2o.Constant", np.array(6.0, np.float32))], name="p2o.Div")
    elif act == "relu":
        h = g.op("Relu", [h], name="p2o.Relu")
    return h


def _p2o_conv_bias(g: G, h, cin, cout):
    """paddle conv2d + elementwise_add(axis=1): the bias is Reshape'd to [1, C, 1, 1] and added."""
    w = g.const("conv2d.w_0", g.w(cout, cin, 1, 1))
    h = g.op("Conv", [h, w], kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0],
             dilations=[1, 1], group=1, name="p2o.Conv")
    bias = g.op("Reshape", [g.const("conv2d.b_0", g.b(cout)),
                            g.const("p2o.Constant", np.array([1, cout, 1, 1], np.int64))],
                name="p2o.Reshape")
    return g.op("Add", [h, bias], name="p2o.Add")


def _p2o_layer_norm(g: G, x, c):
    """paddle layer_norm below opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div,
    Mul(weight), Add(bias)."""
    mean = g.op("ReduceMean", [x], axes=[-1], name="p2o.ReduceMean")
    d = g.op("Sub", [x, mean], name="p2o.Sub")
    var = g.op("ReduceMean", [g.op("Pow", [d, g.const("p2o.helper.constant", np.array([2.0], np.float32))],
                                   name="p2o.Pow")], axes=[-1], name="p2o.ReduceMean")
    std = g.op("Sqrt", [g.op("Add", [var, g.const("p2o.helper.constant", np.array([1e-5], np.float32))],
                             name="p2o.Add")], name="p2o.Sqrt")
    y = g.op("Mul", [g.op("Div", [d, std], name="p2o.Div"),
                     g.const("layer_norm.w_0", g.rng.uniform(0.5, 1.5, c).astype(np.float32))], name="p2o.Mul")
    return g.op("Add", [y, g.const("layer_norm.b_0", g.b(c))], name="p2o.Add")


def _p2o_shape_entry(g: G, x, axis):
    """`x.shape[axis]` inside a paddle reshape's shape list: Shape -> Cast(int32) -> Slice."""
    shp = g.op("Cast", [g.op("Shape", [x], name="p2o.Shape")], to=TensorProto.INT32, name="p2o.Cast")
    return g.op("Slice", [shp, g.const("p2o.helper.constant", np.array([axis], np.int64)),
                          g.const("p2o.helper.constant", np.array([axis + 1], np.int64)),
                          g.const("p2o.helper.constant", np.array([0], np.int64)),
                          g.const("p2o.helper.constant", np.array([1], np.int64))], name="p2o.Slice")


def _p2o_shape_list(g: G, entries):
    """A reshape2 ShapeTensor list: every entry (int32 fill_constant or x.shape[i]) Cast to int64
    and Concat'ed."""
    parts = []
    for e in entries:
        if isinstance(e, int):
            e = g.const("fill_constant.tmp_0", np.array([e], np.int32))
        parts.append(g.op("Cast", [e], to=TensorProto.INT64, name="p2o.Cast"))
    return g.op("Concat", parts, axis=0, name="p2o.Concat")


@fixture("paddle_crnn")
def _paddle_crnn():
    """CRNN text recognizer as paddle2onnx (opset 11) writes PP-OCR's MobileNetV3 + BiLSTM +
    CTC head: see the module docstring."""
    g = G("Model from PaddlePaddle.", 420)
    x = g.input("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3, 32, "p2o.DynamicDimension.1"])

    def conv_bn(h, cin, cout, k, stride, groups=1, act="hardswish"):
        return _p2o_conv_bn(g, h, cin, cout, k, stride, groups, act)

    def conv_bias(h, cin, cout):
        return _p2o_conv_bias(g, h, cin, cout)

    h = conv_bn(x, 3, 8, 3, (2, 2))                       # 16 x W/2
    h = conv_bn(h, 8, 16, 3, (2, 1))                      # 8 x W/2
    h = conv_bn(h, 16, 16, 3, (2, 1), groups=16)          # depthwise, 4 x W/2
    # squeeze-excitation
    se = g.op("GlobalAveragePool", [h], name="p2o.GlobalAveragePool")
    se = g.op("Relu", [conv_bias(se, 16, 4)], name="p2o.Relu")
    se = g.op("HardSigmoid", [conv_bias(se, 4, 16)], alpha=0.2, beta=0.5, name="p2o.HardSigmoid")
    h = g.op("Mul", [h, se], name="p2o.Mul")
    h = conv_bn(h, 16, 24, 1, (1, 1))                     # pointwise
    h = conv_bn(h, 24, 24, 3, (2, 1), groups=24)          # 2 x W/2
    h = conv_bn(h, 24, 32, 1, (1, 1))
    h = g.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
             name="p2o.MaxPool")                          # 1 x W/4
    # Im2Seq: squeeze(axis=2).transpose([0, 2, 1])
    h = g.op("Squeeze", [h], axes=[2], name="p2o.Squeeze")
    h = g.op("Transpose", [h], perm=[0, 2, 1], name="p2o.Transpose")      # [N, T, 32]
    # paddle.nn.LSTM(time_major=False).forward: zero initial states from the batch-first input
    # (fill_constant_batch_size_like(inputs, [4, -1, 16], input_dim_idx=0, output_dim_idx=1)),
    # then the input is transposed to time-major for the rnn op
    hid, layers = 16, 2
    states = []
    for _ in range(2):
        shp = g.op("Shape", [h], name="p2o.Shape")
        batch = g.op("Slice", [shp, g.const("p2o.Constant", np.array([0], np.int64)),
                               g.const("p2o.Constant", np.array([1], np.int64)),
                               g.const("p2o.Constant", np.array([0], np.int64))], name="p2o.Slice")
        rep = g.op("Concat", [batch, g.const("p2o.Constant", np.array([1, 1], np.int64))], axis=0,
                   name="p2o.Concat")
        fill = g.const("p2o.Constant", np.zeros((1, 2 * layers, hid), np.float32))
        tiled = g.op("Tile", [fill, rep], name="p2o.Tile")
        states.append(g.op("Transpose", [tiled], perm=[1, 0, 2], name="p2o.Transpose"))
    t = g.op("Transpose", [h], perm=[1, 0, 2], name="p2o.Transpose")      # [T, N, 32]
    cin = 32
    for layer in range(layers):
        t = _paddle_lstm_layer(g, t, states[0], states[1], layer, cin, hid)
        cin = 2 * hid
    h = g.op("Transpose", [t], perm=[1, 0, 2], name="p2o.Transpose")      # [N, T, 32]
    # CTCHead: Linear(32, 37) as matmul_v2 + elementwise_add, then softmax(axis=2)
    h = g.op("MatMul", [h, g.const("linear_0.w_0", g.w(2 * hid, 37, scale=0.3))], name="p2o.MatMul")
    h = g.op("Add", [h, g.const("linear_0.b_0", g.b(37))], name="p2o.Add")
    g.op("Softmax", [h], outputs=["softmax_0.tmp_0"], axis=2, name="p2o.Softmax")
    g.output("softmax_0.tmp_0", TensorProto.FLOAT,
             ["p2o.DynamicDimension.2", "p2o.DynamicDimension.3", 37])
    m = g.model(11, producer="PaddlePaddle", ir_version=6)
    return m, {"x": g.rng.standard_normal((1, 3, 32, 64)).astype(np.float32)}


@fixture("paddle_svtr_rec")
def _paddle_svtr_rec():
    """PP-OCRv4-style recognizer as paddle2onnx (opset 12) writes it: a conv stack that divides
    the width by 16 (so any width under 16 gives ONE time step), flatten(2) via Shape -> Slice ->
    Concat(.., -1) -> Reshape, Transpose, a decomposed LayerNorm, and an SVTR attention block whose
    qkv Reshape target is Concat(Cast(0), Cast(x.shape[1]), Cast(3), Cast(2), Cast(12)) with
    x.shape[1] read by Shape -> Cast(int32) -> Slice; q/k/v by Slice + Squeeze; CTC head with
    Softmax. Weights are Constant nodes."""
    g = G("Model from PaddlePaddle.", 425)
    x = g.input("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3, 32, "p2o.DynamicDimension.1"])
    h = _p2o_conv_bn(g, x, 3, 8, 3, (2, 2))            # 16 x W/2
    h = _p2o_conv_bn(g, h, 8, 16, 3, (2, 2))           # 8 x W/4
    h = _p2o_conv_bn(g, h, 16, 16, 3, (2, 2), groups=16)   # 4 x W/8
    h = _p2o_conv_bn(g, h, 16, 24, 1, (1, 1))
    h = _p2o_conv_bn(g, h, 24, 24, 3, (2, 2), groups=24)   # 2 x W/16
    h = g.op("MaxPool", [h], kernel_shape=[2, 1], strides=[2, 1], pads=[0, 0, 0, 0],
             name="p2o.MaxPool")                       # 1 x W/16
    c, heads, dh = 24, 2, 12
    # z = x.flatten(2).transpose([0, 2, 1])
    shp = g.op("Shape", [h], name="p2o.Shape")
    first = g.op("Slice", [shp, g.const("p2o.helper.constant", np.array([0], np.int64)),
                           g.const("p2o.helper.constant", np.array([2], np.int64)),
                           g.const("p2o.helper.constant", np.array([0], np.int64))], name="p2o.Slice")
    tgt = g.op("Concat", [first, g.const("p2o.helper.constant", np.array([-1], np.int64))], axis=0,
               name="p2o.Concat")
    z = g.op("Transpose", [g.op("Reshape", [h, tgt], name="p2o.Reshape")], perm=[0, 2, 1],
             name="p2o.Transpose")                     # [N, T, 24]
    ln = _p2o_layer_norm(g, z, c)
    t = _p2o_shape_entry(g, ln, 1)                     # T at run time
    qkv = g.op("Add", [g.op("MatMul", [ln, g.const("linear.w_0", g.w(c, 3 * c, scale=0.3))],
                            name="p2o.MatMul"), g.const("linear.b_0", g.b(3 * c))], name="p2o.Add")
    qkv = g.op("Reshape", [qkv, _p2o_shape_list(g, [0, t, 3, heads, dh])], name="p2o.Reshape")
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4], name="p2o.Transpose")   # [3, N, H, T, D]
    qkvs = []
    for i in range(3):
        sl = g.op("Slice", [qkv, g.const("p2o.helper.constant", np.array([i], np.int64)),
                            g.const("p2o.helper.constant", np.array([i + 1], np.int64)),
                            g.const("p2o.helper.constant", np.array([0], np.int64)),
                            g.const("p2o.helper.constant", np.array([1], np.int64))], name="p2o.Slice")
        qkvs.append(g.op("Squeeze", [sl], axes=[0], name="p2o.Squeeze"))
    q = g.op("Mul", [qkvs[0], g.const("p2o.helper.constant", np.array([dh ** -0.5], np.float32))],
             name="p2o.Mul")
    a = g.op("MatMul", [q, g.op("Transpose", [qkvs[1]], perm=[0, 1, 3, 2], name="p2o.Transpose")],
             name="p2o.MatMul")
    a = g.op("Softmax", [a], axis=3, name="p2o.Softmax")
    o = g.op("Transpose", [g.op("MatMul", [a, qkvs[2]], name="p2o.MatMul")], perm=[0, 2, 1, 3],
             name="p2o.Transpose")
    o = g.op("Reshape", [o, _p2o_shape_list(g, [0, t, c])], name="p2o.Reshape")
    o = g.op("Add", [g.op("MatMul", [o, g.const("linear.w_0", g.w(c, c, scale=0.3))], name="p2o.MatMul"),
                     g.const("linear.b_0", g.b(c))], name="p2o.Add")
    z = g.op("Add", [z, o], name="p2o.Add")
    # CTC head
    y = g.op("Add", [g.op("MatMul", [z, g.const("linear.w_0", g.w(c, 37, scale=0.3))], name="p2o.MatMul"),
                     g.const("linear.b_0", g.b(37))], name="p2o.Add")
    g.op("Softmax", [y], outputs=["softmax_0.tmp_0"], axis=2, name="p2o.Softmax")
    g.output("softmax_0.tmp_0", TensorProto.FLOAT,
             ["p2o.DynamicDimension.2", "p2o.DynamicDimension.3", 37])
    m = g.model(12, producer="PaddlePaddle", ir_version=7)
    return m, {"x": g.rng.standard_normal((1, 3, 32, 160)).astype(np.float32)}


# ============================================================================ skl2onnx
def _iris():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def _skl(clf):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _iris()
    with _quiet():
        pipe = make_pipeline(StandardScaler(), clf).fit(X, y)
        m = convert_sklearn(pipe, initial_types=[("input", FloatTensorType([None, 4]))],
                            target_opset={"": 17, "ai.onnx.ml": 3})
    m.graph.name = "skl2onnx_pipeline"  # skl2onnx names the graph with a random uuid
    return _strip(m), {"input": X[:8]}


@fixture("skl_linear_zipmap", needs=("sklearn", "skl2onnx"))
def _skl_linear_zipmap():
    """skl2onnx: StandardScaler + LogisticRegression on iris -> ai.onnx.ml Scaler ->
    LinearClassifier(post_transform SOFTMAX) -> Normalizer(L1) -> ZipMap (a seq(map) output)."""
    from sklearn.linear_model import LogisticRegression

    return _skl(LogisticRegression(max_iter=500))


@fixture("skl_mlp_zipmap", needs=("sklearn", "skl2onnx"))
def _skl_mlp_zipmap():
    """skl2onnx: StandardScaler + MLPClassifier(16) on iris -> Scaler -> Cast -> MatMul/Add/Relu
    -> MatMul/Add -> Softmax -> ArgMax -> ArrayFeatureExtractor; ZipMap."""
    from sklearn.neural_network import MLPClassifier

    return _skl(MLPClassifier((16,), max_iter=400, random_state=0))


def _skl_style(mlp: bool):
    g = G("skl2onnx-style", 430 + mlp)
    x = g.input("input", TensorProto.FLOAT, [None, 4])
    rng = g.rng
    offset = rng.standard_normal(4).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    h = g.op("Scaler", [x], outputs=["variable"], domain="ai.onnx.ml", offset=offset.tolist(),
             scale=scale.tolist(), name="Scaler")
    if not mlp:
        label, prob = g.op("LinearClassifier", [h], outputs=["label", "probability_tensor"],
                           domain="ai.onnx.ml", classlabels_ints=[0, 1, 2],
                           coefficients=g.w(3, 4).reshape(-1).tolist(),
                           intercepts=g.b(3).tolist(), multi_class=1, post_transform="SOFTMAX",
                           name="LinearClassifier")
        g.op("Cast", [label], outputs=["output_label"], to=TensorProto.INT64, name="Cast")
        probs = g.op("Normalizer", [prob], outputs=["probabilities"], domain="ai.onnx.ml",
                     norm="L1", name="Normalizer")
    else:
        h = g.op("Cast", [h], outputs=["cast_input"], to=TensorProto.FLOAT, name="Cast")
        h = g.op("MatMul", [h, g.init("coefficient", g.w(16, 4).T.copy())], name="MatMul")
        h = g.op("Add", [h, g.init("intercepts", g.b(16))], name="Add")
        h = g.op("Relu", [h], name="Relu")
        h = g.op("MatMul", [h, g.init("coefficient1", g.w(3, 16).T.copy())], name="MatMul1")
        h = g.op("Add", [h, g.init("intercepts1", g.b(3))], name="Add1")
        probs = g.op("Softmax", [h], outputs=["out_activations_result"], axis=1, name="Softmax")
        am = g.op("ArgMax", [probs], axis=1, keepdims=1, name="ArgMax")
        lab = g.op("ArrayFeatureExtractor", [g.init("classes", np.array([0, 1, 2], np.int64)), am],
                   domain="ai.onnx.ml", name="ArrayFeatureExtractor")
        lab = g.op("Reshape", [lab, g.init("shape_tensor", np.array([-1], np.int64))], name="Reshape")
        g.op("Cast", [lab], outputs=["output_label"], to=TensorProto.INT64, name="Cast1")
    g.op("ZipMap", [probs], outputs=["output_probability"], domain="ai.onnx.ml",
         classlabels_int64s=[0, 1, 2], name="ZipMap")
    g.outputs.append(helper.make_tensor_value_info("output_label", TensorProto.INT64, [None]))
    g.outputs.append(helper.make_value_info(
        "output_probability", helper.make_sequence_type_proto(helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))))
    m = g.model(17, {"ai.onnx.ml": 3}, producer="skl2onnx", ir_version=8)
    return m, {"input": rng.standard_normal((8, 4)).astype(np.float32)}


@fixture("skl_style_linear_zipmap")
def _skl_style_linear_zipmap():
    """skl_linear_zipmap's node pattern built with onnx.helper (ai.onnx.ml 3): Scaler ->
    LinearClassifier -> Cast / Normalizer -> ZipMap."""
    return _skl_style(False)


@fixture("skl_style_mlp_zipmap")
def _skl_style_mlp_zipmap():
    """skl_mlp_zipmap's node pattern built with onnx.helper."""
    return _skl_style(True)


# ============================================================================ ViT (x[:, 0])
VIT_IMG, VIT_PATCH, VIT_DIM, VIT_HEADS, VIT_MLP, VIT_LAYERS, VIT_CLASSES = 32, 8, 32, 4, 64, 2, 10


def _vit_module(style: str):
    import torch
    from torch import nn

    class TimmAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(VIT_DIM, 3 * VIT_DIM)
            self.proj = nn.Linear(VIT_DIM, VIT_DIM)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, VIT_HEADS, c // VIT_HEADS).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            a = (q @ k.transpose(-2, -1)) * (c // VIT_HEADS) ** -0.5
            x = (a.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(x)

    class Block(nn.Module):
        """torchvision EncoderBlock: ln_1 -> self_attention -> + ; ln_2 -> MLP -> +."""

        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(VIT_DIM, eps=1e-6)
            if style == "tv":
                self.self_attention = nn.MultiheadAttention(VIT_DIM, VIT_HEADS, batch_first=True)
            else:
                self.self_attention = TimmAttention()
            self.ln_2 = nn.LayerNorm(VIT_DIM, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(VIT_DIM, VIT_MLP), nn.GELU(), nn.Linear(VIT_MLP, VIT_DIM))

        def forward(self, inp):
            x = self.ln_1(inp)
            if style == "tv":
                x, _ = self.self_attention(x, x, x, need_weights=False)
            else:
                x = self.self_attention(x)
            x = x + inp
            return x + self.mlp(self.ln_2(x))

    class ViT(nn.Module):
        """torchvision VisionTransformer, shrunk: conv_proj, class token, pos embedding, blocks,
        ln, x[:, 0], heads."""

        def __init__(self):
            super().__init__()
            n = (VIT_IMG // VIT_PATCH) ** 2
            self.conv_proj = nn.Conv2d(3, VIT_DIM, VIT_PATCH, VIT_PATCH)
            self.class_token = nn.Parameter(torch.randn(1, 1, VIT_DIM) * 0.1)
            self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, VIT_DIM) * 0.1)
            self.layers = nn.Sequential(*[Block() for _ in range(VIT_LAYERS)])
            self.ln = nn.LayerNorm(VIT_DIM, eps=1e-6)
            self.heads = nn.Linear(VIT_DIM, VIT_CLASSES)

        def forward(self, x):
            n = x.shape[0]
            x = self.conv_proj(x)
            x = x.reshape(n, VIT_DIM, -1).permute(0, 2, 1)
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
            x = self.ln(self.layers(x + self.pos_embedding))
            return self.heads(x[:, 0])

    return ViT().eval()


def _vit(style: str, exporter: str):
    import torch

    gen = _seed(440 + (style == "tv"))
    m = _vit_module(style)
    _rankable(m, gen)
    x = torch.randn(2, 3, VIT_IMG, VIT_IMG, generator=gen)
    if exporter == "legacy":
        # under no_grad nn.MultiheadAttention takes its fused fast path
        # (aten::_native_multi_head_attention), which the legacy exporter cannot export
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            model = _export_legacy(m, [x], ["pixel_values"], ["logits"],
                                   {"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)
    else:
        model = _export_dynamo(m, [x], ["pixel_values"], ["logits"],
                               ({0: torch.export.Dim("batch")},))
    return model, {"pixel_values": _np(x)}


for _style, _what in (("tv", "torchvision structure (nn.MultiheadAttention)"),
                      ("timm", "hand-written qkv attention")):
    for _exp in ("legacy", "dynamo"):
        fixture(f"vit_{_style}_{_exp}", needs=("torch",),
                doc=f"ViT 32x32, patch 8, dim 32, 4 heads, 2 blocks, {_what}; class token "
                    f"x[:, 0] (Gather with a scalar index); {_exp} exporter")(
            lambda s=_style, e=_exp: _vit(s, e))


# ============================================================================ symbolic dims
@fixture("sym_feat_gemm")
def _sym_feat_gemm():
    """Input [N, F] with F symbolic; the Gemm weight [64, 81] (transB) fixes F = 81."""
    g = G("sym_feat_gemm", 450)
    x = g.input("features", TensorProto.FLOAT, ["N", "F"])
    h = g.op("Gemm", [x, g.init("fc1.weight", g.w(64, 81)), g.init("fc1.bias", g.b(64))], transB=1)
    h = g.op("Relu", [h])
    g.op("Gemm", [h, g.init("fc2.weight", g.w(10, 64)), g.init("fc2.bias", g.b(10))],
         outputs=["logits"], transB=1)
    g.output("logits", TensorProto.FLOAT, ["N", 10])
    m = g.model(17, ir_version=8)
    return m, {"features": g.rng.standard_normal((3, 81)).astype(np.float32)}


@fixture("sym_feat_conv1d")
def _sym_feat_conv1d():
    """Input [N, C, T], all symbolic; Conv weight [16, 81, 3] fixes C = 81 (an MFCC-like front)."""
    g = G("sym_feat_conv1d", 451)
    x = g.input("mfcc", TensorProto.FLOAT, ["N", "C", "T"])
    h = g.op("Conv", [x, g.init("conv1.weight", g.w(16, 81, 3)), g.init("conv1.bias", g.b(16))],
             kernel_shape=[3], pads=[1, 1])
    h = g.op("Relu", [h])
    h = g.op("Conv", [h, g.init("conv2.weight", g.w(16, 16, 3)), g.init("conv2.bias", g.b(16))],
             kernel_shape=[3], pads=[1, 1])
    h = g.op("Relu", [h])
    h = g.op("ReduceMean", [h], axes=[2], keepdims=0)
    g.op("Gemm", [h, g.init("fc.weight", g.w(5, 16)), g.init("fc.bias", g.b(5))],
         outputs=["logits"], transB=1)
    g.output("logits", TensorProto.FLOAT, ["N", 5])
    m = g.model(17, ir_version=8)
    return m, {"mfcc": g.rng.standard_normal((2, 81, 20)).astype(np.float32)}


@fixture("sym_all_nchw")
def _sym_all_nchw():
    """Input [N, C, H, W], every dim symbolic; the first Conv weight [8, 3, 3, 3] fixes C = 3."""
    g = G("sym_all_nchw", 452)
    x = g.input("image", TensorProto.FLOAT, ["N", "C", "H", "W"])
    h = g.op("Conv", [x, g.init("conv1.weight", g.w(8, 3, 3, 3)), g.init("conv1.bias", g.b(8))],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = g.op("Relu", [h])
    h = g.op("Conv", [h, g.init("conv2.weight", g.w(16, 8, 3, 3)), g.init("conv2.bias", g.b(16))],
             kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    h = g.op("Relu", [h])
    h = g.op("GlobalAveragePool", [h])
    h = g.op("Flatten", [h], axis=1)
    g.op("Gemm", [h, g.init("fc.weight", g.w(10, 16)), g.init("fc.bias", g.b(10))],
         outputs=["logits"], transB=1)
    g.output("logits", TensorProto.FLOAT, ["N", 10])
    m = g.model(17, ir_version=8)
    return m, {"image": g.rng.standard_normal((1, 3, 24, 24)).astype(np.float32)}


# ============================================================================ inputs needing values
def _sr_front(g: G):
    x = g.input("input", TensorProto.FLOAT, ["batch", "samples"])
    sr = g.input("sr", TensorProto.INT64, [])
    x3 = g.op("Unsqueeze", [x, g.init("axes1", np.array([1], np.int64))], name="unsqueeze")
    return x3, sr


def _sr_tail(g: G, feat: str):
    h = g.op("Relu", [feat])
    h = g.op("Conv", [h, g.init("enc.weight", g.w(16, 8, 1)), g.init("enc.bias", g.b(16))],
             kernel_shape=[1])
    h = g.op("Relu", [h])
    h = g.op("ReduceMean", [h], axes=[2], keepdims=0)
    h = g.op("Gemm", [h, g.init("out.weight", g.w(1, 16)), g.init("out.bias", g.b(1))], transB=1)
    g.op("Sigmoid", [h], outputs=["prob"])
    g.output("prob", TensorProto.FLOAT, ["batch", 1])


@fixture("need_sr_if")
def _need_sr_if():
    """Silero-VAD-like: If(Equal(sr, 16000)) selects a 16 kHz front end (Conv k64 s32), else
    If(Equal(sr, 8000)) an 8 kHz one (Conv k32 s16), else a Gather with index 2 into a 2-row
    table fails at run time. Random integer inputs (0/1) take the failing branch."""
    g = G("need_sr_if", 460)
    x3, sr = _sr_front(g)
    w16 = g.init("stft16.weight", g.w(8, 1, 64))
    w8 = g.init("stft8.weight", g.w(8, 1, 32))
    table = g.init("sr_table", np.ones((2, 8, 1), np.float32))
    feat_vi = [helper.make_tensor_value_info("feat", TensorProto.FLOAT, None)]

    def branch(name, build):
        sub = G(name, 0)
        sub._count = g._count  # one namespace for node/tensor names
        out = build(sub)
        sub.nodes.append(helper.make_node("Identity", [out], ["feat"], name=sub.fresh(name + "_out")))
        return helper.make_graph(sub.nodes, name, [], feat_vi)

    def bad(sub):
        c = sub.op("Conv", [x3, w8], kernel_shape=[32], strides=[16])
        idx = sub.op("Add", [sub.op("Mul", [sr, g.init("zero_i64", np.array(0, np.int64))]),
                             g.init("two_i64", np.array(2, np.int64))])
        return sub.op("Mul", [c, sub.op("Gather", [table, idx], axis=0)])

    else8 = branch("sr_other", bad)
    then8 = branch("sr_8k", lambda s: s.op("Conv", [x3, w8], kernel_shape=[32], strides=[16]))

    def is8(sub):
        cond = sub.op("Equal", [sr, g.init("c8000", np.array(8000, np.int64))])
        return sub.op("If", [cond], then_branch=then8, else_branch=else8)

    then16 = branch("sr_16k", lambda s: s.op("Conv", [x3, w16], kernel_shape=[64], strides=[32]))
    else16 = branch("sr_not16k", is8)
    cond = g.op("Equal", [sr, g.init("c16000", np.array(16000, np.int64))])
    feat = g.op("If", [cond], then_branch=then16, else_branch=else16)
    _sr_tail(g, feat)
    m = g.model(17, ir_version=8)
    return m, {"input": g.rng.standard_normal((1, 1024)).astype(np.float32),
               "sr": np.array(16000, np.int64)}


@fixture("need_sr_where")
def _need_sr_where():
    """The same selection without If: idx = Where(sr == 16000, 0, Where(sr == 8000, 1, 2)) ->
    Gather(stacked front-end weights [2, 8, 1, 32], idx) -> Conv; idx 2 is out of range."""
    g = G("need_sr_where", 461)
    x3, sr = _sr_front(g)
    c16 = g.op("Equal", [sr, g.init("c16000", np.array(16000, np.int64))])
    c8 = g.op("Equal", [sr, g.init("c8000", np.array(8000, np.int64))])
    inner = g.op("Where", [c8, g.init("one", np.array(1, np.int64)), g.init("two", np.array(2, np.int64))])
    idx = g.op("Where", [c16, g.init("zero", np.array(0, np.int64)), inner])
    w = g.op("Gather", [g.init("stft.weight_by_sr", g.w(2, 8, 1, 32)), idx], axis=0)
    feat = g.op("Conv", [x3, w], kernel_shape=[32], strides=[16])
    _sr_tail(g, feat)
    m = g.model(17, ir_version=8)
    return m, {"input": g.rng.standard_normal((1, 1024)).astype(np.float32),
               "sr": np.array(8000, np.int64)}


@fixture("need_index_range")
def _need_index_range():
    """RoBERTa-like embeddings: token_type_ids index a table of ONE row (type_vocab_size=1), so
    only 0 is valid (random integer inputs 0/1 fail); input_ids index a 50-row table."""
    g = G("need_index_range", 462)
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    tt = g.input("token_type_ids", TensorProto.INT64, ["batch", "seq"])
    e = g.op("Add", [g.op("Gather", [g.init("word_embeddings", g.w(50, 16, scale=0.5)), ids]),
                     g.op("Gather", [g.init("token_type_embeddings", g.w(1, 16, scale=0.5)), tt])])
    h = g.op("Add", [g.op("MatMul", [e, g.init("fc1.weight", g.w(16, 32, scale=0.35))]),
                     g.init("fc1.bias", g.b(32))])
    h = g.op("Relu", [h])
    h = g.op("MatMul", [h, g.init("fc2.weight", g.w(32, 4, scale=0.25))])
    g.op("Add", [h, g.init("fc2.bias", g.b(4))], outputs=["logits"])
    g.output("logits", TensorProto.FLOAT, ["batch", "seq", 4])
    m = g.model(17, ir_version=8)
    return m, {"input_ids": g.rng.integers(0, 50, (2, 7)).astype(np.int64),
               "token_type_ids": np.zeros((2, 7), np.int64)}


@fixture("need_seq_lens")
def _need_seq_lens():
    """ONNX LSTM with a sequence_lens graph input (int32 [N]); values must lie in [1, T]."""
    g = G("need_seq_lens", 463)
    x = g.input("x", TensorProto.FLOAT, ["seq", "batch", 8])
    lens = g.input("lengths", TensorProto.INT32, ["batch"])
    h = g.op("Relu", [g.op("Add", [g.op("MatMul", [x, g.init("pre.weight", g.w(8, 12, scale=0.5))]),
                                   g.init("pre.bias", g.b(12))])])
    s = 1.0 / np.sqrt(16)
    y, _, _ = g.op("LSTM", [h, g.init("lstm.W", g.w(1, 64, 12, scale=s)),
                            g.init("lstm.R", g.w(1, 64, 16, scale=s)),
                            g.init("lstm.B", (g.rng.standard_normal((1, 128)) * s).astype(np.float32)),
                            lens], outputs=3, hidden_size=16)
    y = g.op("Squeeze", [y, g.init("axes1", np.array([1], np.int64))])
    h = g.op("MatMul", [y, g.init("head.weight", g.w(16, 5, scale=0.35))])
    g.op("Add", [h, g.init("head.bias", g.b(5))], outputs=["y"])
    g.output("y", TensorProto.FLOAT, ["seq", "batch", 5])
    m = g.model(17, ir_version=8)
    return m, {"x": g.rng.standard_normal((6, 2, 8)).astype(np.float32),
               "lengths": np.array([6, 3], np.int32)}


@fixture("need_mask_len")
def _need_mask_len():
    """Decoder step with a KV cache: keys = Concat(past_key [N, P, 16], new [N, S, 16]) and an
    attention_mask [N, M] added to the [N, S, P+S] scores: M must equal P + S (random inputs
    give every symbolic dim the same size, so M = P = S and the Add fails)."""
    g = G("need_mask_len", 464)
    hs = g.input("hidden_states", TensorProto.FLOAT, ["batch", "seq"])
    g.inputs[-1] = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", "seq", 16])
    past = g.input("past_key", TensorProto.FLOAT, ["batch", "past_seq", 16])
    mask = g.input("attention_mask", TensorProto.INT64, ["batch", "total_seq"])
    q = g.op("MatMul", [hs, g.init("q.weight", g.w(16, 16, scale=0.35))], name="q_proj")
    k = g.op("MatMul", [hs, g.init("k.weight", g.w(16, 16, scale=0.35))], name="k_proj")
    keys = g.op("Concat", [past, k], outputs=["present_key"], axis=1, name="cache")
    sc = g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 2, 1])], name="scores")
    sc = g.op("Mul", [sc, g.init("scale", np.array(0.25, np.float32))])
    mf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    mf = g.op("Mul", [g.op("Sub", [g.init("one", np.array(1.0, np.float32)), mf]),
                      g.init("neg", np.array(-1e4, np.float32))])
    mf = g.op("Unsqueeze", [mf, g.init("axes1", np.array([1], np.int64))])
    p = g.op("Softmax", [g.op("Add", [sc, mf], name="masked")], axis=-1)
    ctx = g.op("MatMul", [p, keys], name="context")
    g.op("MatMul", [ctx, g.init("o.weight", g.w(16, 16, scale=0.35))], outputs=["out"], name="o_proj")
    g.output("out", TensorProto.FLOAT, ["batch", "seq", 16])
    g.output("present_key", TensorProto.FLOAT, ["batch", "total_seq", 16])
    m = g.model(17, ir_version=8)
    r = g.rng
    return m, {"hidden_states": r.standard_normal((1, 3, 16)).astype(np.float32),
               "past_key": r.standard_normal((1, 5, 16)).astype(np.float32),
               "attention_mask": np.ones((1, 8), np.int64)}


# ============================================================================ MACs
def _yolo_module():
    import torch
    from torch import nn

    def conv(c1, c2, k=1, s=1, p=None):
        p = k // 2 if p is None else p
        return nn.Sequential(nn.Conv2d(c1, c2, k, s, p, bias=False), nn.BatchNorm2d(c2), nn.SiLU())

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = conv(c, c, 1), conv(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C3(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            c = c2 // 2
            self.cv1, self.cv2, self.cv3 = conv(c1, c, 1), conv(c1, c, 1), conv(2 * c, c2, 1)
            self.m = Bottleneck(c)

        def forward(self, x):
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            c = c1 // 2
            self.cv1, self.cv2 = conv(c1, c, 1), conv(4 * c, c2, 1)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class Detect(nn.Module):
        def __init__(self, nc=2, ch=(16, 32)):
            super().__init__()
            self.na, self.no = 3, nc + 5
            self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in ch)

        def forward(self, xs):
            z = []
            for conv_, x in zip(self.m, xs):
                x = conv_(x)
                bs, _, ny, nx = x.shape
                x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
                z.append(x.sigmoid().view(bs, -1, self.no))
            return torch.cat(z, 1)

    class YoloLike(nn.Module):
        """YOLOv5-shaped: stem Conv k6 s2, C3 blocks, SPPF, nearest Upsample + Concat neck,
        Detect with view/permute on shapes read from the tensors."""

        def __init__(self):
            super().__init__()
            self.b0 = nn.Sequential(conv(3, 4, 6, 2, 2), conv(4, 8, 3, 2), C3(8, 8),
                                    conv(8, 16, 3, 2), C3(16, 16))
            self.b1 = nn.Sequential(conv(16, 32, 3, 2), C3(32, 32), SPPF(32, 32))
            self.lat = conv(32, 16, 1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.c3 = C3(32, 16)
            self.detect = Detect()

        def forward(self, x):
            p3 = self.b0(x)
            p4 = self.b1(p3)
            n3 = self.c3(torch.cat([self.up(self.lat(p4)), p3], 1))
            return self.detect([n3, p4])

    return YoloLike().eval()


def yolo_true_macs(size: int = 320) -> int:
    """Conv MACs of the YOLO-like model at batch 1 (output elements x Cin/g x kh x kw), from
    torch forward hooks: what a MAC count should report (BN is folded by the export)."""
    import torch

    m = _yolo_module()
    total = [0]

    def hook(mod, inp, out):
        k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
        total[0] += out.numel() * k

    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.zeros(1, 3, size, size))
    return total[0]


def _macs_yolo(exporter: str):
    import torch

    gen = _seed(470)
    m = _yolo_module()
    _rankable(m, gen)
    x = torch.randn(1, 3, 320, 320, generator=gen)
    if exporter == "dynamic":  # what `dynamic=True` exports: batch, height and width symbolic
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}}
        model = _export_legacy(m, [x], ["images"], ["output0"], axes)
    elif exporter == "legacy":
        model = _export_legacy(m, [x], ["images"], ["output0"])
    else:
        model = _export_dynamo(m, [x], ["images"], ["output0"])
    return model, {"images": _np(x)}


fixture("macs_yolo_dynamic", needs=("torch",),
        doc="the YOLOv5-shaped detector exported with symbolic batch, height and width "
            "(legacy exporter)")(lambda: _macs_yolo("dynamic"))
for _exp in ("legacy", "dynamo"):
    fixture(f"macs_yolo_{_exp}", needs=("torch",),
            doc=f"YOLOv5-shaped detector, static 1x3x320x320 input, {_exp} exporter; "
                "Conv MACs 'should be' yolo_true_macs()")(lambda e=_exp: _macs_yolo(e))


# ============================================================================ Hugging Face encoders
HF_VOCAB = 100


def _hf_module(arch: str):
    import torch
    import transformers as tr
    from torch import nn

    common = dict(vocab_size=HF_VOCAB)
    if arch == "bert":
        model = tr.BertModel(tr.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=64,
                                           **common), add_pooling_layer=False)
    elif arch == "distilbert":
        model = tr.DistilBertModel(tr.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                       max_position_embeddings=64, **common))
    elif arch == "roberta":
        model = tr.RobertaModel(tr.RobertaConfig(hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=66, type_vocab_size=1,
                                                 pad_token_id=1, **common), add_pooling_layer=False)
    elif arch == "t5enc":
        model = tr.T5EncoderModel(tr.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                              num_heads=4, **common))
    else:
        raise ValueError(arch)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    w = Wrap().eval()
    if hasattr(w.m.config, "_attn_implementation"):
        pass
    return w


def _hf(arch: str, exporter: str):
    import torch

    gen = _seed(480)
    m = _hf_module(arch)
    _rankable(m, gen)
    ids = torch.randint(2, HF_VOCAB, (2, 8), generator=gen)
    mask = torch.ones(2, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask"]
    if exporter == "legacy":
        ax = {0: "batch", 1: "seq"}
        model = _export_legacy(m, [ids, mask], names, ["last_hidden_state"],
                               {"input_ids": ax, "attention_mask": ax, "last_hidden_state": ax})
    else:
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
        model = _export_dynamo(m, [ids, mask], names, ["last_hidden_state"],
                               ({0: b, 1: s}, {0: b, 1: s}))
    return model, {"input_ids": _np(ids), "attention_mask": _np(mask)}


for _arch in ("bert", "distilbert", "roberta", "t5enc"):
    for _exp in ("legacy", "dynamo"):
        fixture(f"hf_{_arch}_{_exp}", needs=("torch", "transformers"),
                doc=f"random-init Hugging Face {_arch} (hidden 32, 2 layers, 4 heads of 8), inputs "
                    f"input_ids + attention_mask, {_exp} exporter")(lambda a=_arch, e=_exp: _hf(a, e))


# ============================================================================ main
def build(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The fixture `name` and one valid sample per graph input."""
    fn, _, needs, _ = REGISTRY[name]
    missing = [m for m in needs if not _have(m)]
    if missing:
        raise ImportError(f"fixture {name} needs {', '.join(missing)}")
    return fn()


def check(model: onnx.ModelProto, feeds: dict) -> str:
    """onnx.checker (full) and one ONNX Runtime run on the sample inputs; returns a summary."""
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=not any(
        o.domain not in ("", "ai.onnx", "ai.onnx.ml") for o in model.opset_import))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    return ", ".join(f"{o.name}{list(np.shape(v)) if isinstance(v, np.ndarray) else '<' + type(v).__name__ + '>'}"
                     for o, v in zip(sess.get_outputs(), outs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=False, help="output folder")
    ap.add_argument("--only", nargs="*", default=None, help="fnmatch patterns of fixture names")
    ap.add_argument("--list", action="store_true", help="list fixtures and exit")
    ap.add_argument("--no-check", action="store_true", help="skip the checker / ORT run")
    args = ap.parse_args(argv)
    names = [n for n in REGISTRY if not args.only or any(fnmatch.fnmatch(n, p) for p in args.only)]
    if args.list:
        for n in names:
            fn, fam, needs, doc = REGISTRY[n]
            print(f"{n:24s} {'[' + ','.join(needs) + '] ' if needs else ''}{' '.join(doc.split())[:160]}")
        return 0
    if not args.out:
        ap.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for n in names:
        fn, fam, needs, doc = REGISTRY[n]
        missing = [m for m in needs if not _have(m)]
        if missing:
            print(f"skip  {n}: needs {', '.join(missing)}")
            continue
        try:
            model, feeds = fn()
            summary = "" if args.no_check else check(model, feeds)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL  {n}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            continue
        path = out / f"{n}.onnx"
        onnx.save(model, str(path))
        np.savez(out / f"{n}.inputs.npz", **feeds)
        print(f"ok    {n}  {path.stat().st_size / 1024:.1f} KB  -> {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

