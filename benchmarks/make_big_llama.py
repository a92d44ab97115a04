"""Build a LLaMA-shaped ONNX model of a chosen size, with random fp32 weights in external data.

    python -m benchmarks.make_big_llama --gb 3 --out DIR          # DIR/llama_3gb.onnx (+ .data)
    python -m benchmarks.make_big_llama --layers 2 --hidden 256 --out DIR --name tiny

The graph is built directly with onnx.helper (no framework, no export): token embedding Gather;
per layer RMSNorm written out as Pow/ReduceMean/Add/Sqrt/Div/Mul, q/k/v/o MatMul projections with
Reshape/Transpose into heads, QK^T MatMul, Softmax, MatMul with V, a SiLU-gated MLP (gate, up,
down MatMuls) and residual Adds; a final norm and the lm_head MatMul. Batch and sequence sizes
are symbolic.

Weights are generated and written one tensor at a time straight into the `.data` file (large
tensors start at 64 KiB-aligned offsets so ONNX Runtime can map them), so building a model
never holds more than its largest tensor in memory. `--layers`/`--hidden` default to values that
reach `--gb`: hidden and vocabulary stay fixed and the layer count grows with the size, so models
of different sizes differ only in depth (time and memory should be linear in it).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 1 << 16
ALIGN_MIN = 1 << 20


def layer_params(hidden: int, mlp: int) -> int:
    return 4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden


def fixed_params(hidden: int, vocab: int) -> int:
    return 2 * vocab * hidden + hidden


def layers_for(gb: float, hidden: int, mlp: int, vocab: int) -> int:
    target = gb * 1e9 / 4
    return max(1, round((target - fixed_params(hidden, vocab)) / layer_params(hidden, mlp)))


class Writer:
    """Appends tensors to one external data file and returns initializers pointing at them."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.pos = 0

    def add(self, name: str, value: np.ndarray) -> TensorProto:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if value.nbytes >= ALIGN_MIN and self.pos % ALIGN:
            pad = ALIGN - self.pos % ALIGN
            self.f.write(b"\0" * pad)
            self.pos += pad
        self.f.write(memoryview(value.reshape(-1).view(np.uint8)))
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(value.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(self.pos)),
                     ("length", str(value.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.pos += value.nbytes
        return t

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def build(out: Path, layers: int, hidden: int, heads: int, mlp: int, vocab: int,
          seed: int = 0) -> Path:
    """Write `out` (the model) and `out.data` (its weights); returns `out`."""
    if hidden % heads:
        raise SystemExit("--hidden must be a multiple of --heads")
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    data = Writer(out.with_name(out.name + ".data"))
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name, shape, std):
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(std)
        inits.append(data.add(name, w))
        return name

    def norm_weight(name):
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, [hidden],
                                        (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)))
        return name

    def const(name, value, dtype=TensorProto.FLOAT):
        arr = np.asarray(value)
        inits.append(helper.make_tensor(name, dtype, list(arr.shape), arr.reshape(-1).tolist()))
        return name

    def op(op_type, inputs, name, **attrs):
        nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    const("two", 2.0)
    const("eps", 1e-6)
    const("rms_axes", [-1], TensorProto.INT64)
    const("heads_shape", [0, 0, heads, head_dim], TensorProto.INT64)
    const("merge_shape", [0, 0, hidden], TensorProto.INT64)
    const("scale", 1.0 / np.sqrt(head_dim))

    def rmsnorm(x, p):
        sq = op("Pow", [x, "two"], f"{p}.pow")
        mean = op("ReduceMean", [sq, "rms_axes"], f"{p}.mean", keepdims=1)
        var = op("Add", [mean, "eps"], f"{p}.add_eps")
        rms = op("Sqrt", [var], f"{p}.sqrt")
        normed = op("Div", [x, rms], f"{p}.div")
        return op("Mul", [normed, norm_weight(f"{p}.weight")], f"{p}.out")

    std_in, std_mlp = 1.0 / np.sqrt(hidden), 1.0 / np.sqrt(mlp)
    x = op("Gather", [weight("embed.weight", [vocab, hidden], 1.0), "input_ids"], "embed")
    for i in range(layers):
        p = f"layers.{i}"
        h = rmsnorm(x, f"{p}.input_norm")
        q = op("MatMul", [h, weight(f"{p}.attn.q.weight", [hidden, hidden], std_in)], f"{p}.q")
        k = op("MatMul", [h, weight(f"{p}.attn.k.weight", [hidden, hidden], std_in)], f"{p}.k")
        v = op("MatMul", [h, weight(f"{p}.attn.v.weight", [hidden, hidden], std_in)], f"{p}.v")
        qh = op("Transpose", [op("Reshape", [q, "heads_shape"], f"{p}.q_split")], f"{p}.q_heads",
                perm=[0, 2, 1, 3])
        kh = op("Transpose", [op("Reshape", [k, "heads_shape"], f"{p}.k_split")], f"{p}.k_heads_t",
                perm=[0, 2, 3, 1])
        vh = op("Transpose", [op("Reshape", [v, "heads_shape"], f"{p}.v_split")], f"{p}.v_heads",
                perm=[0, 2, 1, 3])
        scores = op("Mul", [op("MatMul", [qh, kh], f"{p}.qk"), "scale"], f"{p}.scores")
        probs = op("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = op("MatMul", [probs, vh], f"{p}.ctx")
        merged = op("Reshape", [op("Transpose", [ctx], f"{p}.ctx_t", perm=[0, 2, 1, 3]),
                                "merge_shape"], f"{p}.ctx_merged")
        o = op("MatMul", [merged, weight(f"{p}.attn.o.weight", [hidden, hidden], std_in)],
               f"{p}.o")
        x = op("Add", [x, o], f"{p}.attn_residual")
        h = rmsnorm(x, f"{p}.post_norm")
        gate = op("MatMul", [h, weight(f"{p}.mlp.gate.weight", [hidden, mlp], std_in)],
                  f"{p}.gate")
        silu = op("Mul", [gate, op("Sigmoid", [gate], f"{p}.gate_sigmoid")], f"{p}.silu")
        up = op("MatMul", [h, weight(f"{p}.mlp.up.weight", [hidden, mlp], std_in)], f"{p}.up")
        down = op("MatMul", [op("Mul", [silu, up], f"{p}.gated"),
                             weight(f"{p}.mlp.down.weight", [mlp, hidden], std_mlp)], f"{p}.down")
        x = op("Add", [x, down], f"{p}.mlp_residual")
    h = rmsnorm(x, "final_norm")
    nodes.append(helper.make_node("MatMul", [h, weight("lm_head.weight", [hidden, vocab], std_in)],
                                  ["logits"], name="lm_head"))
    data.close()
    graph = helper.make_graph(
        nodes, "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="graphprune.benchmarks.make_big_llama")
    model.ir_version = 8
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=None, help="target size in GB (10^9 bytes)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--mlp", type=int, default=None, help="MLP width (default ~8/3 hidden)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--name", default=None, help="file name stem (default llama_<size>)")
    a = ap.parse_args(argv)
    mlp = a.mlp or int(round(8 * a.hidden / 3 / 256)) * 256
    if a.layers is None and a.gb is None:
        ap.error("give --gb or --layers")
    layers = a.layers or layers_for(a.gb, a.hidden, mlp, a.vocab)
    a.out.mkdir(parents=True, exist_ok=True)
    name = a.name or (f"llama_{a.gb:g}gb" if a.gb else f"llama_{layers}x{a.hidden}")
    path = build(a.out / f"{name}.onnx", layers, a.hidden, a.heads, mlp, a.vocab, a.seed)
    params = layers * layer_params(a.hidden, mlp) + fixed_params(a.hidden, a.vocab)
    size = path.stat().st_size + path.with_name(path.name + ".data").stat().st_size
    print(f"{path}: {layers} layers, hidden {a.hidden}, mlp {mlp}, vocab {a.vocab}, "
          f"{params:,} params, {size / 1e9:.3f} GB on disk")


if __name__ == "__main__":
    main()
