"""Elementwise ops: values at position i depend only on inputs at position i.

Every axis is coupled across inputs and output after aligning broadcast dims from the right; an
input axis of size 1 broadcast against a larger output axis is not coupled (it has no channels to
remove). When we cannot tell whether an axis broadcasts (unknown sizes), it is blocked.
"""
from __future__ import annotations

from .registry import ROLE_OUT, OpRule, rule


def couple_broadcast(ctx, inputs: list[str], output: str) -> None:
    """Couple each input axis to the output axis it feeds under numpy broadcasting."""
    ro = ctx.rank(output)
    for name in inputs:
        if not name:
            continue
        ri = ctx.rank(name)
        for k in range(ri):
            ko = k + ro - ri
            di, do = ctx.dim(name, k), ctx.dim(output, ko)
            if di == 1 and do != 1:
                continue  # broadcast: nothing to prune on this input axis
            if di is not None and di == do:
                ctx.couple(name, k, output, ko)
                if ctx.is_const(name) and di != 1:
                    ctx.role(name, k, ROLE_OUT)
            else:
                ctx.block(name, k, "cannot tell whether this axis broadcasts")
                ctx.block(output, ko, "cannot tell whether an input axis broadcasts")


BINARY_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Sum", "Max", "Min", "Mean", "Where",
    "And", "Or", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu",
)


@rule(*BINARY_OPS)
class Broadcasting(OpRule):
    """N-ary elementwise ops with multidirectional (or, PRelu, unidirectional) broadcasting."""

    couples = "every axis, aligned from the right under broadcasting"
    shrinks = "constant operands (biases, scales)"
    frozen = "axes whose broadcasting cannot be told"

    def analyze(self, ctx):
        couple_broadcast(ctx, ctx.inputs, ctx.outputs[0])


UNARY_OPS = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Erf", "Gelu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Exp", "Log",
    "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "IsNaN", "IsInf",
    "Identity", "Dropout", "Cast", "CastLike", "Clip", "BitwiseNot", "Swish",
)


@rule(*UNARY_OPS)
class Unary(OpRule):
    """One data input, same-shaped outputs (Dropout's mask too). Scalar extras (Clip bounds,
    Dropout ratio, CastLike's type donor) do not take part in coupling."""

    couples = "every axis of the input and outputs"
    shrinks = "—"
    frozen = "—"

    def analyze(self, ctx):
        x = ctx.inputs[0]
        for y in ctx.outputs:
            if y:
                ctx.couple_same(x, y)
        for extra in ctx.inputs[1:]:
            if extra:
                ctx.free(extra)  # Clip bounds, Dropout ratio, CastLike's type donor

    def macs(self, ctx):
        if ctx.node.op_type in ("Identity", "Dropout", "Cast", "CastLike"):
            return 0
        return ctx.numel(ctx.node.output[0])


@rule("Softmax", "LogSoftmax", "Hardmax")
class SoftmaxLike(OpRule):
    """Values along the normalized axis depend on each other: that axis is blocked.

    Before opset 13 the input is coerced to 2-D at `axis`, so every axis from `axis` on is mixed.
    """

    couples = "every axis but the normalized one"
    shrinks = "—"
    frozen = "the normalized axis (all from `axis` before opset 13)"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        if ctx.opset() >= 13:
            axis = ctx.attr("axis", -1) % r
            mixed = {axis}
        else:
            axis = ctx.attr("axis", 1) % r
            mixed = set(range(axis, r))
        ctx.couple_same(x, y, skip=tuple(mixed))
        for a in mixed:
            ctx.block(x, a, "normalizes along this axis")
            ctx.block(y, a, "normalizes along this axis")
