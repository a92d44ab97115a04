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


BUILT_OPS: set[tuple[str, str]] = set()


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
    def build(self, opset=17, ir_version=None, inits_as_inputs=False) -> onnx.ModelProto:
        inputs = list(self.inputs)
        if inits_as_inputs:
            inputs += [h.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        graph = h.make_graph(self.nodes, "g", inputs, self.outputs, self.inits,
                             value_info=self.value_info)
        main = [h.make_opsetid("", opset)]
        model = h.make_model(graph, opset_imports=main + [
            h.make_opsetid(d, v) for d, v in self.domains.items()])
        model.ir_version = ir_version or h.find_min_ir_version_for(main)
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
        for o, io in zip(model.graph.output, inferred):
            if not o.type.tensor_type.HasField("shape"):
                o.CopyFrom(io)
        onnx.checker.check_model(model, full_check=True)
        _collect_ops(model.graph, BUILT_OPS)
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
          ir_version=None) -> onnx.ModelProto:
    """X[1,3,hw,hw] → c0 (Conv 3→6) → Relu → c1 (Conv 6→c) → mid → c2 (consumer cin→4) → out.

    Group c0|c1 is always prunable; group c1 → mid → c2 is the one under test. `mid(g, y)`
    returns the tensor the consumer reads (`consumer`: conv on NCHW, gemm (transB=1) on [N, K],
    matmul on [..., K]); `cin` is its channel count (default c).
    """
    g = GB(seed)
    x = g.input([1, 3, hw, hw])
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
    return lambda g, y: g.op("MeanVarianceNormalization", [y], name="mvn",
                             **({} if axes is None else {"axes": axes}))


def _layernorm(axis):
    def mid(g, y):
        shape = [8, 5, 5][axis - 1:] if axis > 0 else [5]
        return g.op("LayerNormalization", [y, g.weight(shape, "ln.scale"),
                                           g.weight(shape, "ln.bias")], name="ln", axis=axis)
    return mid


PRUNING_NORMS = {"BatchNormalization": _bn, "InstanceNormalization": _in,
                 "MeanVarianceNormalization": _mvn(None), "LayerNormalization": _layernorm(-1)}


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
    "GroupNormalization": lambda g, y: g.op(
        "GroupNormalization", [y, g.weight([8], "gn.scale"), g.weight([8], "gn.bias")],
        name="gn", num_groups=2),
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
