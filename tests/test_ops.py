"""One small real graph per op rule of the registry, pruned at ratio 0.5.

Most models follow one pattern: graph input X → weighted producers (Conv / Gemm / MatMul) → the
op under test on the channel axis → a weighted consumer → graph output. Each test checks:

1. the group through the op was pruned (its weights got smaller) or, for ops that must freeze,
   that the group is frozen with a reason naming the op and that nothing in it shrank;
2. `onnx.checker.check_model(pruned, full_check=True)` passes;
3. ONNX Runtime runs the pruned model and its output shapes equal the original's;
4. the pruned outputs equal the original's with every consumer slice of a removed unit zeroed
   (`helpers.assert_equivalent`).

Every model builder is registered in `BUILDERS` with all the parameter sets its tests use, so
`test_every_registered_rule_is_covered` can rebuild them all (whatever tests were selected) and
check that each op type of `graphprune.ops.registry.RULES` appears in at least one graph.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import graphprune
from graphprune.ir import GraphView
from graphprune.ops.registry import RULES
from helpers import assert_equivalent, feeds_for, run

INT64_MAX = np.iinfo(np.int64).max

# ====================================================================== model building


def rand_weight(rng: np.random.Generator, shape, axis: int = 0) -> np.ndarray:
    """Nonzero random weights whose slice magnitudes along `axis` vary (0.1x .. 2x, shuffled),
    scaled by 1/sqrt(fan-in) so activations stay O(1)."""
    shape = tuple(int(s) for s in shape)
    w = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    if len(shape) > axis and shape[axis] > 1:
        scale = rng.permutation(np.geomspace(0.1, 2.0, shape[axis]))
        w = w * scale.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (w / math.sqrt(fan)).astype(np.float32)


def _collect_ops(graph: onnx.GraphProto, out: set) -> None:
    for n in graph.node:
        out.add(("" if n.domain in ("", "ai.onnx") else n.domain, n.op_type))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _collect_ops(a.g, out)
            for g in a.graphs:
                _collect_ops(g, out)


class GB:
    """A tiny graph builder: node names double as their (first) output names."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.domains: dict[str, int] = {}
        self._k = 0

    def fresh(self, prefix: str) -> str:
        self._k += 1
        return f"{prefix}_{self._k}"

    # ---------------------------------------------------------------- values
    def input(self, shape, name="X", elem=T.FLOAT) -> str:
        self.inputs.append(h.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem=T.FLOAT) -> str:
        self.outputs.append(h.make_tensor_value_info(name, elem, None))  # shape filled at build
        return name

    def declare(self, name: str, shape, elem=T.FLOAT) -> str:
        """value_info for an intermediate tensor (as exporters write it)."""
        self.value_info.append(h.make_tensor_value_info(name, elem, shape))
        return name

    def init(self, value, name=None) -> str:
        name = name or self.fresh("k")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape, name=None, axis=0) -> str:
        return self.init(rand_weight(self.rng, shape, axis), name)

    def i64(self, values, name=None) -> str:
        return self.init(np.array(values, dtype=np.int64), name)

    def f32(self, values, name=None) -> str:
        return self.init(np.array(values, dtype=np.float32), name)

    def constant(self, value, name) -> str:
        """A value stored as a `Constant` node instead of an initializer."""
        self.nodes.append(h.make_node("Constant", [], [name], name=f"{name}_node",
                                      value=numpy_helper.from_array(np.asarray(value))))
        return name

    # ---------------------------------------------------------------- nodes
    def op(self, op_type, inputs, n_out=1, name=None, domain="", **attrs):
        name = name or self.fresh(op_type.lower())
        outs = [name] if n_out == 1 else [f"{name}_{i}" for i in range(n_out)]
        self.nodes.append(h.make_node(op_type, list(inputs), outs, name=name, domain=domain,
                                      **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, cin, cout, k=1, group=1, bias=True, name=None, **attrs) -> str:
        name = name or self.fresh("conv")
        ins = [x, self.weight([cout, cin // group, k, k], f"{name}.W")]
        if bias:
            ins.append(self.weight([cout], f"{name}.B"))
        if k > 1 and "pads" not in attrs:
            attrs["pads"] = [k // 2] * 4
        return self.op("Conv", ins, name=name, group=group, **attrs)

    def conv_t(self, x, cin, cout, k=2, group=1, bias=True, name=None, **attrs) -> str:
        name = name or self.fresh("convt")
        ins = [x, self.weight([cin, cout // group, k, k], f"{name}.W")]
        if bias:
            ins.append(self.weight([cout], f"{name}.B"))
        return self.op("ConvTranspose", ins, name=name, group=group, strides=[k, k], **attrs)

    def gemm(self, x, k, n, name=None, trans_b=1, bias=True) -> str:
        name = name or self.fresh("gemm")
        shape = [n, k] if trans_b else [k, n]
        ins = [x, self.weight(shape, f"{name}.W", axis=0 if trans_b else 1)]
        if bias:
            ins.append(self.weight([n], f"{name}.B"))
        return self.op("Gemm", ins, name=name, transB=trans_b)

    def matmul(self, x, k, n, name=None) -> str:
        name = name or self.fresh("matmul")
        return self.op("MatMul", [x, self.weight([k, n], f"{name}.W", axis=1)], name=name)

    # ---------------------------------------------------------------- model
    def build(self, opset=17, ir_version=None) -> onnx.ModelProto:
        main = [h.make_opsetid("", opset)]
        ir_version = ir_version or h.find_min_ir_version_for(main)
        inputs = list(self.inputs)
        if ir_version < 4:  # IR 3: every initializer is also a graph input
            inputs += [h.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        graph = h.make_graph(self.nodes, "g", inputs, self.outputs, self.inits,
                             value_info=self.value_info)
        model = h.make_model(graph, opset_imports=main + [
            h.make_opsetid(d, v) for d, v in self.domains.items()])
        model.ir_version = ir_version
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
        for o, io in zip(model.graph.output, inferred):
            if not o.type.tensor_type.HasField("shape"):
                o.CopyFrom(io)
        if not all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
            # ONNX cannot infer some function ops (MVN, GroupNormalization): ask ORT
            outs = run(model, feeds_for(model))
            for o in model.graph.output:
                o.type.tensor_type.shape.CopyFrom(
                    h.make_tensor_type_proto(T.FLOAT, outs[o.name].shape).tensor_type.shape)
        onnx.checker.check_model(model, full_check=True)
        return model


# Every builder with the parameter sets the tests use (for the coverage test).
BUILDERS: list[tuple[Callable, list[tuple]]] = []


def builder(*param_sets):
    """Register a model builder with its parameter tuples (none: called without arguments)."""

    def deco(fn):
        BUILDERS.append((fn, [p if isinstance(p, tuple) else (p,) for p in param_sets] or [()]))
        return fn

    return deco


CONSUMER_AXIS = {"conv": 1, "gemm": 1, "matmul": 0}


def chain(mid=None, *, c=8, hw=5, opset=17, consumer="conv", cin=None, seed=0,
          ir_version=None, batch=1) -> onnx.ModelProto:
    """X[batch,3,hw,hw] → c0 (Conv 3→6) → Relu → c1 (Conv 6→c) → mid → c2 (consumer cin→4) → out.

    Group c0|c1 is always prunable; group c1 → mid → c2 is the one under test. `mid(g, y)`
    returns the tensor the consumer reads (`consumer`: conv on NCHW, gemm (transB=1) on [N, K],
    matmul on [..., K]); `cin` is its channel count (default c). A symbolic `batch` ("N") keeps
    shape computations dynamic.
    """
    g = GB(seed)
    x = g.input([batch, 3, hw, hw])
    y = g.conv(g.op("Relu", [g.conv(x, 3, 6, k=3, name="c0")], name="c0_relu"), 6, c, name="c1")
    z = mid(g, y) if mid else y
    cin = c if cin is None else cin
    if consumer == "conv":
        out = g.conv(z, cin, 4, name="c2")
    elif consumer == "gemm":
        out = g.gemm(z, cin, 4, name="c2")
    else:
        out = g.matmul(z, cin, 4, name="c2")
    g.output(out)
    return g.build(opset, ir_version=ir_version)


# ====================================================================== checks


def const_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    """Shape of a constant, wherever it is stored (initializer, Constant, ConstantOfShape)."""
    return tuple(GraphView(model).consts[name].shape)


def prune_checked(model, ratio=0.5, oracle=None, **kw) -> graphprune.pipeline.PruneResult:
    """Prune, then checks (2)-(4). `oracle`: an equivalent initializer-only model with the same
    tensor names (the consumer-zeroing oracle only edits initializers)."""
    res = graphprune.prune(model, ratio=ratio, **kw)
    onnx.checker.check_model(res.model, full_check=True)
    feeds = feeds_for(model)
    before, after = run(model, feeds), run(res.model, feeds)
    assert list(before) == list(after)
    for k in before:
        assert before[k].shape == after[k].shape, k
        assert before[k].dtype == after[k].dtype, k
    assert_equivalent(oracle or model, res)
    return res


def assert_pruned(model, res, *dims):
    """Each (constant, axis) lies in a pruned group and got smaller."""
    assert res.plan.keep, "nothing was pruned"
    for name, axis in dims:
        grp = res.graph.group_for(name, axis)
        assert grp is not None, f"{name}[{axis}] is in no group"
        assert grp.id in res.plan.keep, f"{name}[{axis}] not pruned: {grp.frozen_reason}"
        old, new = const_shape(model, name), const_shape(res.model, name)
        assert new[axis] < old[axis], f"{name}: {old} -> {new}"


def assert_frozen(model, res, name, axis, word):
    """The group of (name, axis) is frozen with a reason mentioning `word`; nothing in it shrank."""
    grp = res.graph.group_for(name, axis)
    assert grp is not None
    assert grp.frozen_reason and word in grp.frozen_reason, grp.frozen_reason
    entry = next(e for e in res.report["groups"] if e["id"] == grp.id)
    assert entry["frozen_reason"] == grp.frozen_reason
    assert entry["size_after"] == entry["size_before"]
    assert grp.id not in res.plan.keep
    for m in grp.members:
        old, new = const_shape(model, m.tensor), const_shape(res.model, m.tensor)
        assert new[m.axis] == old[m.axis], f"{m.tensor}[{m.axis}]: {old} -> {new}"


def check_chain(model, consumer="conv", **kw):
    """Prune a `chain` model whose middle group must be pruned."""
    res = prune_checked(model, **kw)
    assert_pruned(model, res, ("c0.W", 0), ("c1.W", 0), ("c1.B", 0),
                  ("c2.W", CONSUMER_AXIS[consumer]))
    return res


def check_chain_frozen(model, word, **kw):
    """Prune a `chain` model whose middle group must freeze because of `word` (an op type)."""
    res = prune_checked(model, **kw)
    assert_pruned(model, res, ("c0.W", 0))
    assert_frozen(model, res, "c1.W", 0, word)
    return res


def node_attr(model, node_name, attr_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(h.get_attribute_value(a) for a in node.attribute if a.name == attr_name)


def node_input_value(model, node_name, idx):
    node = next(n for n in model.graph.node if n.name == node_name)
    return GraphView(model).const_value(node.input[idx])


# ====================================================================== Conv / ConvTranspose


@builder(("plain",), ("depthwise",), ("grouped",), ("multiplier",))
def conv_model(kind):
    if kind == "plain":
        return chain(lambda g, y: g.op("Relu", [y]))
    if kind == "depthwise":  # group = C
        return chain(lambda g, y: g.conv(y, 8, 8, k=3, group=8, name="mid"))
    if kind == "grouped":  # 2 groups of 4: whole groups go
        return chain(lambda g, y: g.conv(y, 8, 8, k=3, group=2, name="mid"))
    # depthwise with multiplier 2: M = 2C
    return chain(lambda g, y: g.conv(y, 4, 8, k=3, group=4, name="mid"), c=4, cin=8)


def test_conv_plain():
    model = conv_model("plain")
    res = check_chain(model)
    assert const_shape(res.model, "c1.W") == (4, 3, 1, 1)
    assert const_shape(res.model, "c0.W") == (3, 3, 3, 3)


def test_conv_depthwise():
    model = conv_model("depthwise")
    res = check_chain(model)
    assert_pruned(model, res, ("mid.W", 0), ("mid.B", 0))
    assert const_shape(res.model, "mid.W") == (4, 1, 3, 3)
    assert node_attr(res.model, "mid", "group") == 4


def test_conv_grouped_prunes_whole_groups():
    model = conv_model("grouped")
    res = check_chain(model)
    grp = res.graph.group_for("c1.W", 0)
    assert grp.n_units == 2  # one unit per conv group
    assert const_shape(res.model, "c1.W")[0] == 4
    assert const_shape(res.model, "mid.W") == (4, 4, 3, 3)
    assert node_attr(res.model, "mid", "group") == 1


def test_conv_depthwise_multiplier():
    model = conv_model("multiplier")
    res = check_chain(model)
    assert const_shape(res.model, "c1.W")[0] == 2
    assert const_shape(res.model, "mid.W") == (4, 1, 3, 3)
    assert const_shape(res.model, "c2.W")[1] == 4
    assert node_attr(res.model, "mid", "group") == 2


@builder((1,), (2,))
def conv_transpose_model(group):
    return chain(lambda g, y: g.conv_t(y, 8, 6, group=group, name="mid"), cin=6)


def test_conv_transpose_plain():
    model = conv_transpose_model(1)
    res = check_chain(model, consumer="conv")
    assert_pruned(model, res, ("mid.W", 0), ("mid.W", 1), ("mid.B", 0))
    assert const_shape(res.model, "mid.W") == (4, 3, 2, 2)


def test_conv_transpose_grouped():
    model = conv_transpose_model(2)
    res = check_chain(model)
    assert const_shape(res.model, "mid.W") == (4, 3, 2, 2)
    assert const_shape(res.model, "mid.B") == (3,)
    assert node_attr(res.model, "mid", "group") == 1


# ====================================================================== Gemm / MatMul

GEMM_CASES = [(0, 0, (8,)), (0, 1, (8,)), (1, 1, (8,)), (0, 1, (1, 8)), (1, 0, (3, 8))]


@builder(*GEMM_CASES)
def gemm_model(trans_a, trans_b, c_shape):
    """X → Gemm(W1, C1) → Relu → Gemm(W2, C2) → out, with the given layouts."""
    g = GB()
    x = g.input([5, 3] if trans_a else [3, 5])
    w1 = g.weight([8, 5] if trans_b else [5, 8], "g1.W", axis=0 if trans_b else 1)
    c1 = g.weight(list(c_shape), "g1.B", axis=len(c_shape) - 1)
    y = g.op("Gemm", [x, w1, c1], name="g1", transA=trans_a, transB=trans_b, alpha=0.9, beta=1.1)
    w2 = g.weight([8, 4] if trans_b else [4, 8], "g2.W", axis=1 if trans_b else 0)
    y = g.op("Gemm", [g.op("Relu", [y]), w2], name="g2", transB=1 - trans_b)
    g.output(y)
    return g.build()


@pytest.mark.parametrize("trans_a,trans_b,c_shape", GEMM_CASES)
def test_gemm(trans_a, trans_b, c_shape):
    model = gemm_model(trans_a, trans_b, c_shape)
    res = prune_checked(model)
    assert_pruned(model, res, ("g1.W", 0 if trans_b else 1), ("g1.B", len(c_shape) - 1),
                  ("g2.W", 0 if trans_b else 1))


@builder(("2d",), ("3d",), ("3d_batched_weight",))
def matmul_model(kind):
    g = GB()
    if kind == "2d":
        x = g.input([3, 5])
        y = g.op("Add", [g.matmul(x, 5, 8, name="m1"), g.weight([8], "m1.B")])
    elif kind == "3d":
        x = g.input([2, 3, 5])
        y = g.matmul(x, 5, 8, name="m1")
    else:
        x = g.input([2, 3, 5])
        y = g.op("MatMul", [x, g.weight([2, 5, 8], "m1.W", axis=2)], name="m1")
    g.output(g.matmul(g.op("Relu", [y]), 8, 4, name="m2"))
    return g.build()


@pytest.mark.parametrize("kind", ["2d", "3d", "3d_batched_weight"])
def test_matmul(kind):
    model = matmul_model(kind)
    res = prune_checked(model)
    w1_axis = 2 if kind == "3d_batched_weight" else 1
    assert_pruned(model, res, ("m1.W", w1_axis), ("m2.W", 0))
    if kind == "2d":
        assert_pruned(model, res, ("m1.B", 0))


# ====================================================================== normalizations


def _bn(g, y, c=8):
    stats = [g.weight([c], "bn.scale"), g.weight([c], "bn.bias"), g.weight([c], "bn.mean"),
             g.init(g.rng.uniform(0.5, 2.0, c).astype(np.float32), "bn.var")]
    return g.op("BatchNormalization", [y] + stats, name="bn", epsilon=1e-3)


def _in(g, y, c=8):
    return g.op("InstanceNormalization", [y, g.weight([c], "in.scale"), g.weight([c], "in.bias")],
                name="in")


def _mvn(axes):
    # axes always explicit: with the default, onnx's own full_check rejects the model
    return lambda g, y: g.op("MeanVarianceNormalization", [y], name="mvn", axes=axes)


def _layernorm(axis):
    def mid(g, y):
        shape = [8, 5, 5][axis - 1:] if axis > 0 else [5]
        return g.op("LayerNormalization", [y, g.weight(shape, "ln.scale"),
                                           g.weight(shape, "ln.bias")], name="ln", axis=axis)
    return mid


PRUNING_NORMS = {"BatchNormalization": _bn, "InstanceNormalization": _in,
                 "MeanVarianceNormalization": _mvn([0, 2, 3]), "LayerNormalization": _layernorm(-1)}


@builder(*PRUNING_NORMS)
def norm_model(op):
    return chain(PRUNING_NORMS[op])


@pytest.mark.parametrize("op", list(PRUNING_NORMS))
def test_per_channel_norm_prunes(op):
    model = norm_model(op)
    res = check_chain(model)
    if op in ("BatchNormalization", "InstanceNormalization"):
        stats = [n.input[1] for n in model.graph.node if n.op_type == op]
        assert_pruned(model, res, (stats[0], 0))
    if op == "BatchNormalization":  # running statistics are sliced too
        assert const_shape(res.model, "bn.var") == (4,)
        assert const_shape(res.model, "bn.mean") == (4,)


FROZEN_NORMS = {
    "LRN": lambda g, y: g.op("LRN", [y], name="lrn", size=3),
    "LayerNormalization": _layernorm(1),
    # ONNX shape inference gives no shape for this function op: declare it like exporters do
    "GroupNormalization": lambda g, y: g.declare(g.op(
        "GroupNormalization", [y, g.weight([8], "gn.scale"), g.weight([8], "gn.bias")],
        name="gn", num_groups=2), [1, 8, 5, 5]),
    "MeanVarianceNormalization": _mvn([0, 1, 2, 3]),
}


@builder(*FROZEN_NORMS)
def frozen_norm_model(op):
    return chain(FROZEN_NORMS[op], opset=21 if op == "GroupNormalization" else 17)


@pytest.mark.parametrize("op", list(FROZEN_NORMS))
def test_channel_mixing_norm_freezes(op):
    model = frozen_norm_model(op)
    check_chain_frozen(model, op)


# ====================================================================== elementwise

BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu"]
# the other operand: a per-channel constant [C,1,1] / [1,C,1,1], a scalar, a [1,C,1,1] tensor
# broadcast over H, W (squeeze-excite style), or a second producer of the same shape
OPERANDS = ["const_c11", "const_1c11", "scalar", "tensor_1c11", "producer"]


BINARY_CASES = [(op, kind) for op in BINARY for kind in OPERANDS if op != "PRelu"] + [
    ("PRelu", "const_c11"), ("PRelu", "scalar")]


@builder(*BINARY_CASES)
def binary_model(op, kind):
    def mid(g, y):
        positive = op in ("Pow", "Div")  # keep Pow/Div finite: positive exponents/divisors
        if kind.startswith("const"):
            shape = [8, 1, 1] if kind == "const_c11" else [1, 8, 1, 1]
            val = rand_weight(g.rng, shape, axis=len(shape) - 3) * 3
            other = g.init(np.abs(val) + 0.5 if positive else val, "k")
        elif kind == "scalar":
            other = g.f32(1.7 if positive else -0.3, "k")
        elif kind == "tensor_1c11":
            other = g.op("GlobalAveragePool", [y], name="gap")
        else:
            other = g.conv("c0_relu", 6, 8, name="c1b")
        if positive and not kind.startswith("const") and kind != "scalar":
            other = g.op("Sigmoid", [other])
        if op == "Pow":
            return g.op("Pow", [g.op("Sigmoid", [y]), other], name="op")
        if op == "Where":
            cond = g.op("Greater", [y, other], name="cond")
            return g.op("Where", [cond, y, other], name="op")
        if op in ("Sum", "Mean", "Max", "Min"):
            return g.op(op, [y, other, g.op("Relu", [y])], name="op")
        return g.op(op, [y, other], name="op")

    return chain(mid)


@pytest.mark.parametrize("op,kind", BINARY_CASES)
def test_broadcasting_binary(op, kind):
    model = binary_model(op, kind)
    res = check_chain(model)
    if kind.startswith("const"):
        axis = 0 if kind == "const_c11" else 1
        assert_pruned(model, res, ("k", axis))
    if kind == "producer":
        assert_pruned(model, res, ("c1b.W", 0))



# ---------------------------------------------------------------------- unary

# float activations ORT runs; some get a pre-op keeping them inside their domain
FLOAT_UNARY = [
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Erf", "Gelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Exp", "Log",
    "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Swish", "Identity",
]
UNARY_PRE = {"Log": "Sigmoid", "Sqrt": "Sigmoid", "Reciprocal": "Sigmoid", "Tan": "Sin",
             "Asin": "Sin", "Acos": "Sin", "Atanh": "Sin", "Acosh": "Cosh"}
UNARY_OPSET = {"Gelu": 20, "Mish": 18, "Swish": 24}


@builder(*FLOAT_UNARY)
def unary_model(op):
    def mid(g, y):
        if op in UNARY_PRE:
            y = g.op(UNARY_PRE[op], [y])
        return g.op(op, [y], name="op")
    return chain(mid, opset=UNARY_OPSET.get(op, 17))


@pytest.mark.parametrize("op", FLOAT_UNARY)
def test_unary(op):
    check_chain(unary_model(op))


@builder(("Clip",), ("Dropout",), ("Cast",), ("CastLike",))
def passthrough_model(op):
    def mid(g, y):
        if op == "Clip":
            return g.op("Clip", [y, g.f32(-0.2), g.f32(0.4)], name="op")
        if op == "Dropout":  # inference mode: identity, with the optional mask output unused
            return g.op("Dropout", [y, g.f32(0.3)], n_out=2, name="op")[0]
        if op == "Cast":
            return g.op("Cast", [g.op("Cast", [y], name="op", to=T.FLOAT16)], to=T.FLOAT)
        half = g.init(np.array(0, dtype=np.float16))
        return g.op("CastLike", [g.op("CastLike", [y, half], name="op"), g.f32(0.0)])
    return chain(mid)


@pytest.mark.parametrize("op", ["Clip", "Dropout", "Cast", "CastLike"])
def test_passthrough(op):
    check_chain(passthrough_model(op))


@builder()
def logic_model():
    """Comparisons and boolean logic feed a Where that selects channels of y."""
    def mid(g, y):
        gt = g.op("Greater", [y, g.weight([8, 1, 1], "k_gt")])
        lt = g.op("Less", [y, g.f32(0.5)])
        ge = g.op("GreaterOrEqual", [y, g.weight([1, 8, 1, 1], "k_ge", axis=1)])
        le = g.op("LessOrEqual", [y, g.f32(-0.1)])
        c = g.op("And", [gt, lt])
        c = g.op("Or", [c, ge])
        c = g.op("Xor", [c, le])
        c = g.op("And", [c, g.op("Equal", [y, g.op("Relu", [y])])])
        c = g.op("Or", [c, g.op("IsNaN", [y])])
        c = g.op("Or", [c, g.op("IsInf", [y])])
        return g.op("Where", [g.op("Not", [c]), y, g.weight([8, 1, 1], "k_where")])
    return chain(mid)


def test_logic_ops():
    model = logic_model()
    res = check_chain(model)
    assert_pruned(model, res, ("k_gt", 0), ("k_ge", 1), ("k_where", 0))


@builder()
def integer_model():
    """Float → int32 / uint32 bit manipulation and Mod → back to float."""
    def mid(g, y):
        ten = g.op("Mul", [y, g.f32(10.0)])
        q = g.op("Cast", [ten], to=T.INT32)
        q = g.op("BitwiseAnd", [q, g.init(np.arange(8, dtype=np.int32).reshape(8, 1, 1) + 60,
                                          "k_and")])
        q = g.op("BitwiseOr", [q, g.init(np.array(1, dtype=np.int32))])
        q = g.op("BitwiseXor", [q, g.init(np.arange(1, 9, dtype=np.int32).reshape(8, 1, 1))])
        q = g.op("BitwiseNot", [q])
        q = g.op("Mod", [q, g.init(np.arange(3, 11, dtype=np.int32).reshape(8, 1, 1), "k_mod")])
        u = g.op("Cast", [g.op("Abs", [ten])], to=T.UINT32)
        u = g.op("BitShift", [u, g.init((np.arange(8) % 4).astype(np.uint32).reshape(8, 1, 1),
                                        "k_shift")], direction="LEFT")
        u = g.op("BitShift", [u, g.init(np.array(1, dtype=np.uint32))], direction="RIGHT")
        fm = g.op("Mod", [y, g.f32(np.linspace(0.5, 2, 8).reshape(8, 1, 1))], fmod=1)
        s = g.op("Add", [g.op("Cast", [q], to=T.FLOAT), g.op("Cast", [u], to=T.FLOAT)])
        return g.op("Add", [s, fm])
    return chain(mid, opset=18)


def test_bitwise_shift_and_mod_ops():
    model = integer_model()
    res = check_chain(model)
    assert const_shape(res.model, "k_and") == (4, 1, 1)
    assert const_shape(res.model, "k_mod") == (4, 1, 1)
    assert const_shape(res.model, "k_shift") == (4, 1, 1)


# ---------------------------------------------------------------------- softmax family

SOFTMAX_CASES = [  # (op, axis, opset, channel prunable?)
    ("Softmax", 3, 13, True), ("Softmax", -1, 17, True), ("Softmax", 1, 13, False),
    ("Softmax", 3, 11, True), ("Softmax", 2, 11, True), ("Softmax", 1, 11, False),
    ("LogSoftmax", 2, 17, True), ("LogSoftmax", 1, 17, False),
    ("Hardmax", 3, 17, True), ("Hardmax", 1, 17, False),
]


@builder(*SOFTMAX_CASES)
def softmax_model(op, axis, opset, prunable):
    return chain(lambda g, y: g.op(op, [y], name="op", axis=axis), opset=opset)


@pytest.mark.parametrize("op,axis,opset,prunable", SOFTMAX_CASES)
def test_softmax_family(op, axis, opset, prunable):
    model = softmax_model(op, axis, opset, prunable)
    if prunable:
        check_chain(model)
    else:
        check_chain_frozen(model, op)


# ====================================================================== pooling / reductions

POOLS = {
    "MaxPool": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "AveragePool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "LpPool": dict(kernel_shape=[2, 2], p=2),
    "GlobalAveragePool": {}, "GlobalMaxPool": {}, "GlobalLpPool": dict(p=3),
}


@builder(*POOLS)
def pool_model(op):
    return chain(lambda g, y: g.op(op, [y], name="op", **POOLS[op]))


@pytest.mark.parametrize("op", list(POOLS))
def test_pool(op):
    check_chain(pool_model(op))


REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
# axes as an attribute (ReduceSum until opset 12, the rest until 17) or as an input
REDUCE_CASES = [(op, opset, keepdims) for op in REDUCE
                for opset in ((11, 13) if op == "ReduceSum" else (13, 18)) for keepdims in (0, 1)]


def _reduce(g, y, op, opset, axes, keepdims):
    attr_axes = opset < (13 if op == "ReduceSum" else 18)
    if op == "ReduceLogSum":
        y = g.op("Sigmoid", [y])
    if attr_axes:
        return g.op(op, [y], name="op", axes=axes, keepdims=keepdims)
    return g.op(op, [y, g.i64(axes)], name="op", keepdims=keepdims)


@builder(*REDUCE_CASES)
def reduce_model(op, opset, keepdims):
    return chain(lambda g, y: _reduce(g, y, op, opset, [2, -1], keepdims), opset=opset,
                 consumer="conv" if keepdims else "gemm")


@pytest.mark.parametrize("op,opset,keepdims", REDUCE_CASES)
def test_reduce_over_spatial_axes(op, opset, keepdims):
    check_chain(reduce_model(op, opset, keepdims), consumer="conv" if keepdims else "gemm")


@builder((13,), (18,))
def reduce_channels_model(opset):
    return chain(lambda g, y: g.op("Mul", [y, _reduce(g, y, "ReduceMean", opset, [1], 1)]),
                 opset=opset)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_over_channels_freezes(opset):
    check_chain_frozen(reduce_channels_model(opset), "ReduceMean")


ARG_CASES = [("ArgMax", 2, 1), ("ArgMin", 3, 0)]


@builder(*ARG_CASES)
def arg_model(op, axis, keepdims):
    def mid(g, y):
        a = g.op(op, [y], name="op", axis=axis, keepdims=keepdims)
        if not keepdims:
            a = g.op("Unsqueeze", [a, g.i64([axis])])
        return g.op("Cast", [a], to=T.FLOAT)
    return chain(mid)


@pytest.mark.parametrize("op,axis,keepdims", ARG_CASES)
def test_arg_reduce_over_spatial(op, axis, keepdims):
    check_chain(arg_model(op, axis, keepdims))


# ====================================================================== joining and cutting


@builder(("channel",), ("spatial",))
def concat_model(axis_kind):
    """Two conv producers of different widths joined on channels (or equal widths on H)."""
    g = GB()
    x = g.op("Relu", [g.conv(g.input([1, 3, 5, 5]), 3, 6, k=3, name="c0")], name="c0_relu")
    if axis_kind == "channel":
        a, b = g.conv(x, 6, 4, name="ca"), g.conv(x, 6, 6, name="cb")
        y = g.op("Concat", [a, b], name="cat", axis=1)
        cin = 10
    else:
        a, b = g.conv(x, 6, 6, name="ca"), g.conv(x, 6, 6, k=3, name="cb")
        y = g.op("Concat", [a, b], name="cat", axis=-2)
        cin = 6
    g.output(g.conv(g.op("Relu", [y]), cin, 4, name="c2"))
    return g.build()


@pytest.mark.parametrize("axis_kind", ["channel", "spatial"])
def test_concat(axis_kind):
    model = concat_model(axis_kind)
    res = prune_checked(model)
    assert_pruned(model, res, ("ca.W", 0), ("cb.W", 0), ("c2.W", 1))
    if axis_kind == "channel":
        assert res.graph.group_for("ca.W", 0).n_units == 10
        wa, wb = const_shape(res.model, "ca.W")[0], const_shape(res.model, "cb.W")[0]
        assert const_shape(res.model, "c2.W")[1] == wa + wb == 5
    else:
        assert res.graph.group_for("ca.W", 0).id == res.graph.group_for("cb.W", 0).id


SPLIT_CASES = [  # (how the sizes are given, opset, channels)
    ("attr", 11, 8), ("attr_default_equal", 11, 8), ("input", 13, 8), ("equal", 13, 8),
    ("num_outputs", 18, 7), ("input", 18, 8), ("input_computed", 13, 8),
]


@builder(*SPLIT_CASES)
def split_model(how, opset, c):
    """c1 → Split on channels → two consumer convs → two outputs."""
    sizes = {8: [3, 5], 7: [4, 3]}[c] if how in ("attr", "input", "num_outputs") else [4, 4]
    g = GB()
    x = g.op("Relu", [g.conv(g.input([1, 3, 5, 5]), 3, 6, k=3, name="c0")], name="c0_relu")
    y = g.conv(x, 6, c, name="c1")
    if how == "attr":
        parts = g.op("Split", [y], n_out=2, name="split", axis=1, split=sizes)
    elif how == "input":
        parts = g.op("Split", [y, g.i64(sizes)], n_out=2, name="split", axis=1)
    elif how == "input_computed":  # exporter-style chunk: C // 2 from Shape, twice
        half = g.op("Div", [g.op("Gather", [g.op("Shape", [y]), g.i64([1])]), g.i64([2])])
        sizes_t = g.op("Concat", [half, half], axis=0)
        parts = g.op("Split", [y, sizes_t], n_out=2, name="split", axis=1)
    elif how == "num_outputs":
        parts = g.op("Split", [y], n_out=2, name="split", axis=1, num_outputs=2)
    else:
        parts = g.op("Split", [y], n_out=2, name="split", axis=1)
    g.output(g.conv(parts[0], sizes[0], 4, name="ca"))
    g.output(g.conv(g.op("Relu", [parts[1]]), sizes[1], 3, name="cb"))
    return g.build(opset)


@pytest.mark.parametrize("how,opset,c", SPLIT_CASES)
def test_split_feeding_two_consumers(how, opset, c):
    model = split_model(how, opset, c)
    res = prune_checked(model)
    assert_pruned(model, res, ("c1.W", 0))
    kept = const_shape(res.model, "c1.W")[0]
    assert const_shape(res.model, "ca.W")[1] + const_shape(res.model, "cb.W")[1] == kept
    assert const_shape(res.model, "ca.W")[1] >= 1 and const_shape(res.model, "cb.W")[1] >= 1


SLICE_CASES = {  # name: (opset, starts, ends, axes, steps, consumer channels); None = absent
    "channel_to_int64_max": (13, [2], [INT64_MAX], [1], None, 6),
    "channel_negative": (13, [-6], [-1], [-3], [1], 5),
    "channel_int32": (13, [1], [7], [1], None, 6),
    "channel_and_spatial": (13, [1, 1], [7, 4], [1, 2], [1, 1], 6),
    "spatial_only": (13, [1, 0], [4, 100], [2, 3], None, 8),
    "opset9_attrs_channel": (9, [1], [7], [1], None, 6),
    "opset9_attrs_no_axes": (9, [0, 2], [1, 8], None, None, 6),
}


@builder(*SLICE_CASES)
def slice_model(case):
    opset, starts, ends, axes, steps, cin = SLICE_CASES[case]

    def mid(g, y):
        if opset < 10:
            attrs = dict(starts=starts, ends=ends, **({} if axes is None else {"axes": axes}))
            return g.op("Slice", [y], name="slice", **attrs)
        mk = (lambda v: g.init(np.array(v, dtype=np.int32))) if "int32" in case else g.i64
        ins = [y, mk(starts), mk(ends), mk(axes)] + ([mk(steps)] if steps else [])
        return g.op("Slice", ins, name="slice")
    return chain(mid, opset=opset, cin=cin)


@pytest.mark.parametrize("case", list(SLICE_CASES))
def test_slice(case):
    check_chain(slice_model(case))


@builder()
def strided_slice_model():
    return chain(lambda g, y: g.op("Slice", [y, g.i64([0]), g.i64([8]), g.i64([1]), g.i64([2])],
                                   name="slice"), cin=4)


def test_strided_slice_on_channels_freezes():
    check_chain_frozen(strided_slice_model(), "Slice")


GATHER_CASES = {  # name: (axis, indices, consumer channels)
    "channel_repeated_negative": (1, [0, 2, -1, 2, 3, -3], 6),
    "channel_int32": (1, np.array([7, 1, 4], dtype=np.int32), 3),
    "spatial": (2, [4, 0, 1], 8),
}


@builder(*GATHER_CASES)
def gather_model(case):
    axis, idx, cin = GATHER_CASES[case]
    idx = np.asarray(idx) if isinstance(idx, np.ndarray) else np.array(idx, dtype=np.int64)
    return chain(lambda g, y: g.op("Gather", [y, g.init(idx, "idx")], name="gather", axis=axis),
                 cin=cin)


@pytest.mark.parametrize("case", list(GATHER_CASES))
def test_gather_constant_indices(case):
    model = gather_model(case)
    res = check_chain(model)
    if GATHER_CASES[case][0] == 1:  # indices rewritten to the kept positions
        idx = node_input_value(res.model, "gather", 1)
        assert len(idx) == const_shape(res.model, "c2.W")[1]
        assert idx.max() < const_shape(res.model, "c1.W")[0]


# ====================================================================== views


@builder()
def flatten_model():
    return chain(lambda g, y: g.op("Flatten", [y], name="flatten", axis=1), hw=3,
                 consumer="gemm", cin=8 * 9)


def test_flatten_into_gemm():
    model = flatten_model()
    res = check_chain(model, consumer="gemm")
    assert res.graph.group_for("c1.W", 0).n_units == 8  # one unit = a channel and its 9 features
    assert const_shape(res.model, "c2.W") == (4, 4 * 9)


RESHAPE_CASES = {  # name: (target shapes applied in turn, consumer, consumer channels)
    "merge_literal": ([[1, 72]], "gemm", 72),
    "merge_0_-1": ([[0, -1]], "gemm", 72),
    "identity_0_-1": ([[0, -1, 3, 3]], "conv", 8),
    "split_spatial_and_back": ([[0, 8, -1], [0, 0, 3, 3]], "conv", 8),
}


@builder(*RESHAPE_CASES)
def reshape_model(case):
    shapes, consumer, cin = RESHAPE_CASES[case]

    def mid(g, y):
        for i, s in enumerate(shapes):
            y = g.op("Reshape", [y, g.i64(s, f"shape{i}")], name=f"reshape{i}")
        return y
    return chain(mid, hw=3, consumer=consumer, cin=cin)


@pytest.mark.parametrize("case", list(RESHAPE_CASES))
def test_reshape(case):
    model = reshape_model(case)
    res = check_chain(model, consumer=RESHAPE_CASES[case][1])
    if case == "merge_literal":
        assert list(node_input_value(res.model, "reshape0", 1)) == [1, 36]
    if case == "split_spatial_and_back":
        assert list(node_input_value(res.model, "reshape0", 1)) == [0, 4, -1]


@builder()
def transpose_model():
    return chain(lambda g, y: g.op("Transpose", [y], name="t", perm=[0, 2, 3, 1]),
                 consumer="matmul")


def test_transpose_nhwc_matmul():
    check_chain(transpose_model(), consumer="matmul")


SQUEEZE_CASES = [(11, True), (13, True), (13, False)]  # (opset, explicit axes)


@builder(*SQUEEZE_CASES)
def squeeze_model(opset, explicit):
    """GAP → Squeeze → [1, C] (or [C]) → Unsqueeze → [1, C, 1, 1] → conv."""
    def mid(g, y):
        p = g.op("GlobalAveragePool", [y])
        sq_axes, unsq_axes = ([2, 3], [-1, 2]) if explicit else (None, [0, 2, 3])
        if opset < 13:
            s = g.op("Squeeze", [p], name="squeeze", axes=sq_axes)
            return g.op("Unsqueeze", [s], name="unsqueeze", axes=unsq_axes)
        s = g.op("Squeeze", [p] + ([g.i64(sq_axes)] if sq_axes else []), name="squeeze")
        return g.op("Unsqueeze", [s, g.i64(unsq_axes)], name="unsqueeze")
    return chain(mid, opset=opset)


@pytest.mark.parametrize("opset,explicit", SQUEEZE_CASES)
def test_squeeze_unsqueeze(opset, explicit):
    check_chain(squeeze_model(opset, explicit))


# ====================================================================== padding / resizing

PAD_CASES = {  # name: (opset, pads, axes, consumer channels, channel prunable?)
    "spatial_opset11": (11, [0, 0, 1, 2, 0, 0, 2, 1], None, 8, True),
    "spatial_opset18_axes": (18, [1, 1, 1, 1], [2, -1], 8, True),
    "spatial_opset2_attr": (2, [0, 0, 1, 1, 0, 0, 1, 1], None, 8, True),
    "channel": (13, [0, 1, 0, 0, 0, 1, 0, 0], None, 10, False),
    # the legacy exporter's ZeroPad2d: pads built from constants through a Transpose
    "spatial_transposed_pads": (13, [[0, 0], [0, 0], [1, 1], [1, 1]], None, 8, True),
}


@builder(*PAD_CASES)
def pad_model(case):
    opset, pads, axes, cin, _ = PAD_CASES[case]

    def mid(g, y):
        if opset < 11:
            return g.op("Pad", [y], name="pad", pads=pads, value=0.5)
        pad_in = g.i64(pads)
        if np.ndim(pads) == 2:
            pad_in = g.op("Reshape", [g.op("Transpose", [pad_in], perm=[1, 0]), g.i64([-1])])
        ins = [y, pad_in, g.f32(0.5)] + ([g.i64(axes)] if axes else [])
        return g.op("Pad", ins, name="pad")
    # Pad-2 is only in old opsets; run the rest of the chain there too
    return chain(mid, opset=opset if opset >= 11 else 7, cin=cin)


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_pad(case):
    model = pad_model(case)
    if PAD_CASES[case][-1]:
        check_chain(model)
    else:
        check_chain_frozen(model, "Pad")


RESIZE_CASES = {
    "scales_opset13": 13, "sizes_opset13": 13, "sizes_opset11": 11, "sizes_axes_opset18": 18,
    "upsample_opset9": 9, "upsample_attr_opset7": 7,
}


@builder(*RESIZE_CASES)
def resize_model(case):
    opset = RESIZE_CASES[case]

    def mid(g, y):
        if case == "scales_opset13":
            return g.op("Resize", [y, "", g.f32([1, 1, 2, 2])], name="resize")
        if case == "sizes_opset13":
            return g.op("Resize", [y, "", "", g.i64([1, 8, 10, 7])], name="resize",
                        mode="linear")
        if case == "sizes_opset11":
            return g.op("Resize", [y, g.f32([]), g.f32([]), g.i64([1, 8, 10, 10])],
                        name="resize")
        if case == "sizes_axes_opset18":
            return g.op("Resize", [y, "", "", g.i64([9, 10])], name="resize", axes=[2, 3])
        if case == "upsample_opset9":
            return g.op("Upsample", [y, g.f32([1, 1, 2, 2])], name="resize")
        return g.op("Upsample", [y], name="resize", scales=[1.0, 1.0, 2.0, 2.0])
    return chain(mid, opset=opset)


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize(case):
    model = resize_model(case)
    res = check_chain(model)
    if case in ("sizes_opset13", "sizes_opset11"):  # the channel entry of `sizes` is rewritten
        assert node_input_value(res.model, "resize", 3)[1] == 4


EXPAND_CASES = {"full_shape": [1, 8, 4, 4], "lower_rank": [4, 4], "ones_on_channel": [1, 1, 4, 4]}


@builder(*EXPAND_CASES)
def expand_model(case):
    def mid(g, y):
        p = g.op("GlobalAveragePool", [y])  # [1, C, 1, 1]
        return g.op("Expand", [p, g.i64(EXPAND_CASES[case], "shape")], name="expand")
    return chain(mid)


@pytest.mark.parametrize("case", list(EXPAND_CASES))
def test_expand(case):
    model = expand_model(case)
    res = check_chain(model)
    if case == "full_shape":
        assert list(node_input_value(res.model, "expand", 1)) == [1, 4, 4, 4]


TILE_CASES = {"spatial": ([1, 1, 2, 3], 8, True), "channel": ([1, 2, 1, 1], 16, False)}


@builder(*TILE_CASES)
def tile_model(case):
    reps, cin, _ = TILE_CASES[case]
    return chain(lambda g, y: g.op("Tile", [y, g.i64(reps)], name="tile"), cin=cin)


@pytest.mark.parametrize("case", list(TILE_CASES))
def test_tile(case):
    model = tile_model(case)
    if TILE_CASES[case][2]:
        check_chain(model)
    else:
        check_chain_frozen(model, "Tile")


# ====================================================================== shape readers


@builder()
def shape_size_model():
    """Shape and Size read pruned tensors but feed nothing prunable: their results only reach
    outputs through values pruning cannot change (the spatial size, the element count of an
    unpruned tensor)."""
    g = GB()
    x = g.op("Relu", [g.conv(g.input([1, 3, 5, 5]), 3, 6, k=3, name="c0")], name="c0_relu")
    y = g.conv(x, 6, 8, name="c1")
    shp = g.op("Shape", [y], name="shape")
    g.output(g.op("Gather", [shp, g.i64([2, 3])], name="hw"), T.INT64)
    out = g.conv(g.op("Relu", [y]), 8, 4, name="c2")
    g.output(out)
    g.output(g.op("Size", [out], name="size"), T.INT64)
    g.output(g.op("Shape", [g.op("Size", [y])], name="rank0"), T.INT64)
    return g.build()


def test_shape_and_size_feeding_nothing_prunable():
    model = shape_size_model()
    res = prune_checked(model)
    assert_pruned(model, res, ("c1.W", 0), ("c2.W", 1))


@builder()
def constant_of_shape_dynamic_model():
    def mid(g, y):
        ones = g.op("ConstantOfShape", [g.op("Shape", [y])], name="fill",
                    value=numpy_helper.from_array(np.array([0.5], dtype=np.float32)))
        return g.op("Add", [y, ones])
    return chain(mid, batch="N")  # symbolic batch: the fill shape is only known at run time


def test_constant_of_shape_with_dynamic_shape_freezes():
    # both the Shape that reads the run-time size and the fill block the group
    check_chain_frozen(constant_of_shape_dynamic_model(), "run time")


# ====================================================================== weight storage


@builder(("constant_nodes",), ("constant_nodes_consumer",), ("constant_of_shape",),
         ("initializers",))
def stored_weights_model(how):
    """c0 → Relu → c1 → Relu → c2 with c1's (and maybe c2's) weights stored in different ways."""
    g = GB()
    x = g.op("Relu", [g.conv(g.input([1, 3, 5, 5]), 3, 6, k=3, name="c0")], name="c0_relu")
    w1 = rand_weight(g.rng, [8, 6, 1, 1])
    b1 = rand_weight(g.rng, [8])
    w2 = rand_weight(g.rng, [4, 8, 1, 1], axis=1)
    if how == "constant_of_shape":  # a fill: every filter alike, only the bias tells them apart
        w1_name = g.op("ConstantOfShape", [g.i64([8, 6, 1, 1], "c1.W_shape")], name="c1.W",
                       value=numpy_helper.from_array(np.array([0.3], dtype=np.float32)))
        b1_name = g.init(b1, "c1.B")
    elif how.startswith("constant_nodes"):
        w1_name, b1_name = g.constant(w1, "c1.W"), g.constant(b1, "c1.B")
    else:
        w1_name, b1_name = g.init(w1, "c1.W"), g.init(b1, "c1.B")
    y = g.op("Relu", [g.op("Conv", [x, w1_name, b1_name], name="c1")])
    w2_name = g.constant(w2, "c2.W") if how == "constant_nodes_consumer" else g.init(w2, "c2.W")
    g.output(g.op("Conv", [y, w2_name], name="c2"))
    return g.build()


@pytest.mark.parametrize("how", ["constant_nodes", "constant_nodes_consumer",
                                 "constant_of_shape"])
def test_weights_stored_as_constants_are_pruned(how):
    model = stored_weights_model(how)
    # the oracle zeroes initializers only: give it the same model with initializers
    oracle = stored_weights_model("initializers") if how.startswith("constant_nodes") else None
    res = prune_checked(model, oracle=oracle)
    assert_pruned(model, res, ("c1.W", 0), ("c1.B", 0), ("c2.W", 1))
    kinds = {n.output[0]: n.op_type for n in res.model.graph.node}
    assert kinds["c1.W"] == ("ConstantOfShape" if how == "constant_of_shape" else "Constant")
    if how == "constant_of_shape":
        shape_name = next(n.input[0] for n in res.model.graph.node if n.output[0] == "c1.W")
        assert list(GraphView(res.model).const_value(shape_name)) == [4, 3, 1, 1]


@builder()
def ir3_model():
    return chain(lambda g, y: g.op("Relu", [y]), opset=8, ir_version=3)


def test_ir3_initializers_listed_as_graph_inputs():
    model = ir3_model()
    assert {t.name for t in model.graph.initializer} <= {i.name for i in model.graph.input}
    res = check_chain(model)
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in res.model.graph.input}
    for t in res.model.graph.initializer:  # still listed, with the new shape
        assert declared[t.name] == list(t.dims), t.name


# ====================================================================== ops that must freeze


@builder()
def if_model():
    """An If whose branches read y and a consumer weight from the enclosing graph."""
    def mid(g, y):
        w = g.weight([8, 8, 1, 1], "branch.W", axis=1)
        then_g = h.make_graph([h.make_node("Conv", [y, w], ["t_out"])], "then", [],
                              [h.make_tensor_value_info("t_out", T.FLOAT, [1, 8, 5, 5])])
        else_g = h.make_graph([h.make_node("Relu", [y], ["e_out"])], "else", [],
                              [h.make_tensor_value_info("e_out", T.FLOAT, [1, 8, 5, 5])])
        cond = g.init(np.array(True), "cond")
        return g.op("If", [cond], name="if", then_branch=then_g, else_branch=else_g)
    return chain(mid)


def test_if_reading_weights_freezes():
    model = if_model()
    res = check_chain_frozen(model, "If")
    assert "If" in res.report["summary"]["unsupported_ops"]


@builder()
def topk_model():
    return chain(lambda g, y: g.op("TopK", [y, g.i64([5])], n_out=2, name="topk", axis=3)[0])


@builder()
def custom_op_model():
    def mid(g, y):
        g.domains["com.microsoft"] = 1
        return g.declare(g.op("Inverse", [y], name="custom", domain="com.microsoft"),
                         [1, 8, 5, 5])
    return chain(mid)


@builder()
def max_roi_pool_model():
    def mid(g, y):
        rois = g.f32([[0, 0, 0, 3, 3], [0, 1, 1, 4, 4]])
        return g.op("MaxRoiPool", [y, rois], name="roi", pooled_shape=[2, 2])
    return chain(mid)


@pytest.mark.parametrize("build,word", [(topk_model, "TopK"),
                                        (custom_op_model, "com.microsoft::Inverse"),
                                        (max_roi_pool_model, "MaxRoiPool")],
                         ids=["TopK", "custom_domain", "MaxRoiPool"])
def test_unknown_or_unsupported_op_freezes(build, word):
    check_chain_frozen(build(), word)


# ====================================================================== regressions


@builder((4,), (5,))
def spatial_constant_model(rank):
    """y[1,8,5,5] + a constant that varies along W (a positional-embedding-like table)."""
    shape = [1, 1, 5, 5] if rank == 4 else [5]
    return chain(lambda g, y: g.op("Add", [y, g.weight(shape, "pos", axis=len(shape) - 1)],
                                   name="add"))


@pytest.mark.parametrize("rank", [4, 5])
def test_constant_varying_along_spatial_axis_is_not_pruned(rank):
    model = spatial_constant_model(rank)
    res = check_chain(model)
    assert const_shape(res.model, "pos") == const_shape(model, "pos")


EXTRA_OUTPUTS = ["MaxPool_Indices", "LayerNormalization_Mean"]


@builder(*EXTRA_OUTPUTS)
def extra_output_model(case):
    """An op whose second output keeps the input's channel axis is read as a graph output."""
    def mid(g, y):
        if case == "MaxPool_Indices":
            v, extra = g.op("MaxPool", [y], n_out=2, name="op", kernel_shape=[2, 2])
            g.output(extra, T.INT64)
        else:
            v, extra = g.op("LayerNormalization", [y, g.weight([5], "ln.scale"),
                                                   g.weight([5], "ln.bias")],
                            n_out=2, name="op", axis=-1)
            g.output(extra)
        return v
    return chain(mid)


@pytest.mark.parametrize("case", EXTRA_OUTPUTS)
def test_channel_carrying_extra_output_freezes_group(case):
    # the extra output is a graph output: the coupling must carry that block to the channels
    model = extra_output_model(case)
    check_chain_frozen(model, "graph output")


DYNAMIC_TARGETS = ["Reshape", "Expand", "Resize"]


@builder(*DYNAMIC_TARGETS)
def dynamic_target_model(op):
    """Symbolic batch, and a shape input computed from Shape(y): not foldable, so the node
    freezes its group, while the c0|c1 group elsewhere is pruned."""
    def mid(g, y):
        shp = g.op("Shape", [y])
        if op == "Reshape":  # a view that keeps the shape: [N, C, H, W] -> Shape(y)
            return g.op("Reshape", [g.op("Relu", [y]), shp], name="op")
        if op == "Expand":
            return g.op("Expand", [g.op("GlobalAveragePool", [y]), shp], name="op")
        nc = g.op("Slice", [shp, g.i64([0]), g.i64([2])])
        sizes = g.op("Concat", [nc, g.i64([10, 10])], axis=0)
        return g.op("Resize", [y, "", "", sizes], name="op")
    return chain(mid, batch="N")


@pytest.mark.parametrize("op", DYNAMIC_TARGETS)
def test_dynamic_shape_input_with_pruning_elsewhere(op):
    model = dynamic_target_model(op)
    if op == "Resize":
        check_chain_frozen(model, "run time")
    else:  # the pruned entry of the run-time target is known statically: patched, not frozen
        res = check_chain(model)
        assert any(n.op_type == "Where" for n in res.model.graph.node)


@builder()
def shape_output_model():
    def mid(g, y):
        g.output(g.op("Shape", [y], name="shape"), T.INT64)
        return y
    return chain(mid)


def test_shape_of_pruned_tensor_as_graph_output():
    model = shape_output_model()
    res = prune_checked(model)
    feeds = feeds_for(model)
    assert np.array_equal(run(model, feeds)["shape"], run(res.model, feeds)["shape"])


# ====================================================================== the oracle can fail


def test_oracle_detects_permuted_filters():
    model = conv_model("plain")
    res = check_chain(model)
    bad = onnx.ModelProto()
    bad.CopyFrom(res.model)
    for t in bad.graph.initializer:
        if t.name in ("c1.W", "c1.B"):
            v = numpy_helper.to_array(t).copy()
            v[[0, 1]] = v[[1, 0]]
            t.CopyFrom(numpy_helper.from_array(v, t.name))
    with pytest.raises(AssertionError):
        assert_equivalent(model, dataclasses.replace(res, model=bad))


# ====================================================================== coverage


def test_every_registered_rule_is_covered():
    # the op tests kept in their own modules register their builders here too
    import test_converters, test_quantized, test_rank_changing, test_recurrent  # noqa: F401

    ops: set[tuple[str, str]] = set()
    for fn, param_sets in BUILDERS:
        for params in param_sets:
            _collect_ops(fn(*params).graph, ops)
    missing = sorted(f"{d + '::' if d else ''}{op}" for d, op in RULES
                     if (d, op) not in ops and d != "com.microsoft"
                     and op not in ("SimplifiedLayerNormalization",
                                    "RotaryEmbedding"))  # see test_contrib_ops
    assert not missing, f"op rules without a test graph: {missing}"
