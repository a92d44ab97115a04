"""Inputs that change the rank between an op's input and output: scalar indices, keepdims=0
reductions, Squeeze without axes, 1-D matmul operands, Flatten at axis 0.

Each graph carries a prunable hidden width (x → MatMul → Relu → op → MatMul) through the op,
is pruned at 0.5 and checked like the op tests: checker, ORT, output signature and the
consumer-zeroing equivalence. Where the op must freeze the width, the reason is checked.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T

from test_ops import GB, assert_frozen, assert_pruned, builder, prune_checked


def _mlp(g: GB, x: str, k: int, n: int, name: str) -> str:
    return g.op("Relu", [g.op("Add", [g.matmul(x, k, n, name=name), g.weight([n], f"{name}.B")])])


CASES = ("gather_scalar_const", "gather_scalar_runtime", "gather_2d_const",
         "reduce_keepdims0", "reduce_axes_input_keepdims0", "flatten_axis0", "matmul_1d")


@builder(*CASES)
def rank_model(case):
    g = GB()
    if case == "matmul_1d":
        h = _mlp(g, g.input([8]), 8, 16, "m1")
        g.output(g.matmul(h, 16, 4, name="m2"))
        return g.build()
    h = _mlp(g, g.input([2, 5, 8]), 8, 16, "m1")
    if case == "gather_scalar_const":  # a ViT's x[:, 0]
        z = g.op("Gather", [h, g.i64(0, "idx")], name="gather", axis=1)
    elif case == "gather_scalar_runtime":
        z = g.op("Gather", [h, g.input([], "pos", T.INT64)], name="gather", axis=1)
    elif case == "gather_2d_const":
        z = g.op("Gather", [h, g.i64([[0, 1], [2, 3]], "idx")], name="gather", axis=1)
    elif case == "reduce_keepdims0":
        z = g.op("ReduceMean", [h], name="reduce", axes=[1], keepdims=0)
        g.output(g.matmul(z, 16, 4, name="m2"))
        return g.build(opset=17)
    elif case == "reduce_axes_input_keepdims0":
        g2 = g.op("ReduceSum", [h, g.i64([1])], name="reduce", keepdims=0)
        z = g.op("Mul", [g2, g.f32(0.2)])
    else:  # flatten_axis0: [2, 5, 16] -> [1, 160]: the hidden axis carries blocks of 1
        z = g.op("Flatten", [h], name="flatten", axis=0)
        g.output(g.gemm(z, 160, 4, name="m2"))
        return g.build(opset=18)
    g.output(g.matmul(z, 16, 4, name="m2"))
    return g.build(opset=18)


@pytest.mark.parametrize("case", CASES)
def test_rank_changing_input_prunes_through(case):
    model = rank_model(case)
    res = prune_checked(model)
    assert_pruned(model, res, ("m1.W", 1), ("m1.B", 0), ("m2.W", 1 if case == "flatten_axis0" else 0))
    if case.startswith("gather"):  # the indices address the token axis: never rewritten
        idx = [i for i in res.model.graph.initializer if i.name == "idx"]
        orig = [i for i in model.graph.initializer if i.name == "idx"]
        assert [i.SerializeToString() for i in idx] == [i.SerializeToString() for i in orig]


@builder(("ArgMax",), ("Gather",))
def reduce_hidden_model(op):
    """The op takes away the hidden axis itself: the width must freeze."""
    g = GB()
    h = _mlp(g, g.input([2, 5, 8]), 8, 16, "m1")
    if op == "ArgMax":
        z = g.op("ArgMax", [h], name="op", axis=2, keepdims=0)
        g.output(g.op("Cast", [z], to=T.FLOAT))
    else:  # one hidden position, scalar index
        z = g.op("Gather", [h, g.i64(3, "idx")], name="op", axis=2)
        g.output(g.op("Mul", [z, g.f32(2.0)]))
    return g.build()


@pytest.mark.parametrize("op", ["ArgMax", "Gather"])
def test_rank_changing_op_on_the_pruned_axis_freezes(op):
    model = reduce_hidden_model(op)
    res = prune_checked(model)
    assert_frozen(model, res, "m1.W", 1, op)


@builder((11,), (13,))
def squeeze_all_model(opset):
    """Squeeze without axes of [1, C, 1] with C = 2: pruned to one channel, C would be squeezed
    as well unless the axes are written out."""
    g = GB()
    y = g.op("Relu", [g.gemm(g.input([1, 8]), 8, 2, name="m1")])
    if opset < 13:
        u = g.op("Unsqueeze", [y], axes=[2])
    else:
        u = g.op("Unsqueeze", [y, g.i64([2])])
    s = g.op("Squeeze", [u], name="squeeze")
    g.output(g.matmul(s, 2, 4, name="m2"))
    return g.build(opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_without_axes_keeps_a_pruned_axis_of_size_one(opset):
    model = squeeze_all_model(opset)
    res = prune_checked(model, ratio=0.5)
    assert_pruned(model, res, ("m1.W", 0), ("m2.W", 0))
    sq = next(n for n in res.model.graph.node if n.name == "squeeze")
    assert len(sq.input) == (2 if opset >= 13 else 1)
    if opset < 13:
        assert [list(a.ints) for a in sq.attribute if a.name == "axes"] == [[0, 2]]
    else:
        init = {i.name: i for i in res.model.graph.initializer}
        from onnx import numpy_helper
        assert list(numpy_helper.to_array(init[sq.input[1]])) == [0, 2]
    assert np.prod([d.dim_value for d in res.model.graph.output[0].type.tensor_type.shape.dim]) == 4
