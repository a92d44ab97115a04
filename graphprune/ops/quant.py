"""Quantized graphs: QDQ (`QuantizeLinear` / `DequantizeLinear`), QOperator (`QLinearConv`,
`QLinearMatMul`, ORT's `QLinearAdd`, `QGemm`, ...), dynamic quantization
(`DynamicQuantizeLinear` → `MatMulInteger` / `ConvInteger`).

Quantization is elementwise: q = round(x / scale) + zero_point with one scale (and zero point)
per tensor, per channel along `axis`, or per block of `block_size` positions along `axis`
(opset 21). A per-tensor scale is a passthrough; a per-channel scale and zero point shrink with
their channel; a block of a blocked scale is removed only as a whole (its positions are one
unit). The quantized matrix products and convolutions couple like their float forms, and their
per-channel weight scales and zero points shrink with the output channels. Scales and zero
points are auxiliary members (sliced, never scored).
"""
from __future__ import annotations

import numpy as np

from .conv import Conv, conv_macs, couple_conv
from .elementwise import couple_broadcast
from .linear import couple_gemm, couple_matmul, gemm_macs, matmul_macs
from .registry import ROLE_AUX, OpRule, ShapeOnly, rule

MS = "com.microsoft"


def _per_tensor(ctx, name: str) -> bool:
    shape = ctx.shape(name) if name else ()
    return not shape or int(np.prod([d if isinstance(d, int) else 2 for d in shape])) == 1


def couple_params(ctx, x: str, axis: int | None, params, block: int = 0) -> None:
    """Scales / zero points of `x`: per tensor (free), 1-D along `axis` of `x`, or (block > 0)
    blocked: the rank of `x`, axis `axis` holding one entry per `block` positions."""
    for p in params:
        if not p:
            continue
        if _per_tensor(ctx, p):
            ctx.free(p)
            continue
        rp, rx = ctx.rank(p), ctx.rank(x)
        if block and rp == rx and axis is not None:
            for k in range(rx):
                if k != axis:
                    ctx.couple(x, k, p, k)
            n = ctx.static_dim(x, axis)
            if n is None:
                ctx.block(p, axis, "blocked quantization of an axis of unknown size")
            else:
                pos = np.arange(n)
                ctx.couple(x, axis, p, axis, (pos, pos // block))
        elif rp == 1 and axis is not None:
            ctx.couple(x, axis, p, 0)
        else:
            ctx.block(p, None, "quantization parameters of an unsupported shape")
            continue
        for k in range(rp):
            ctx.role(p, k, ROLE_AUX)


@rule("QuantizeLinear", "DequantizeLinear")
@rule("QuantizeLinear", "DequantizeLinear", domain=MS)
class QuantDequant(OpRule):
    """y = (x - zero_point) · scale (DequantizeLinear) or its inverse: elementwise; a per-axis
    or blocked scale and zero point shrink with their axis (see the module docstring)."""

    couples = "every axis; a per-axis scale and zero point to their axis, a blocked one by blocks"
    shrinks = "per-axis and blocked scales and zero points"
    frozen = "parameters of other shapes"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.couple_same(x, y)
        r = ctx.rank(x)
        axis = int(ctx.attr("axis", 1)) % r if r else None
        couple_params(ctx, x, axis, ctx.inputs[1:3], int(ctx.attr("block_size", 0) or 0))


@rule("DynamicQuantizeLinear")
class DynamicQuantizeLinear(OpRule):
    """y = saturate(round(x / scale) + zero_point) with a per-tensor scale computed at run
    time: elementwise (the scale and zero point outputs are scalars)."""

    couples = "every axis (its scale is per tensor)"
    shrinks = "—"
    frozen = "—"

    def analyze(self, ctx):
        ctx.couple_same(ctx.inputs[0], ctx.outputs[0])


def _free_all(ctx, names) -> None:
    for n in names:
        if n and _per_tensor(ctx, n):
            ctx.free(n)


@rule("ConvInteger")
class ConvInteger(Conv):
    """Conv of integer tensors with zero points (x_zero_point per tensor, w_zero_point per
    tensor or per output channel)."""

    couples = "as Conv"
    shrinks = "W, a per-channel w_zero_point; `group`"
    frozen = "as Conv"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (4 - len(ctx.inputs))
        x, w, y = ins[0], ins[1], ctx.outputs[0]
        couple_conv(ctx, x, w, "", y)
        _free_all(ctx, [ins[2]])
        couple_params(ctx, y, 1, [ins[3]])

    def macs(self, ctx):
        return conv_macs(ctx, ctx.node.input[1])


@rule("QLinearConv")
class QLinearConv(Conv):
    """Conv on quantized x, w and int32 bias B; w_scale / w_zero_point per tensor or per
    output channel; input and output scales are per tensor."""

    couples = "as Conv on x, w, B"
    shrinks = "w, B, per-channel w_scale and w_zero_point; `group`"
    frozen = "per-channel activation quantization"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (9 - len(ctx.inputs))
        x, w, b, y = ins[0], ins[3], ins[8], ctx.outputs[0]
        couple_conv(ctx, x, w, b, y)
        _free_all(ctx, [ins[1], ins[2], ins[6], ins[7]])
        couple_params(ctx, y, 1, [ins[4], ins[5]])
        for p in (ins[1], ins[2], ins[6], ins[7]):
            if p and not _per_tensor(ctx, p):
                ctx.block_node("per-channel activation quantization")
                return

    def macs(self, ctx):
        return conv_macs(ctx, ctx.node.input[3])


def _b_axis(ctx, b: str) -> int:
    return ctx.rank(b) - 1


@rule("MatMulInteger")
class MatMulInteger(OpRule):
    """MatMul of integer tensors with zero points: a_zero_point per tensor or per row of A,
    b_zero_point per tensor or per column of B."""

    couples = "as MatMul"
    shrinks = "B, a per-column b_zero_point (per-row a_zero_point)"
    frozen = "as MatMul"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (4 - len(ctx.inputs))
        a, b, y = ins[0], ins[1], ctx.outputs[0]
        couple_matmul(ctx, a, b, y)
        couple_params(ctx, a, ctx.rank(a) - 2 if ctx.rank(a) >= 2 else None, [ins[2]])
        couple_params(ctx, b, _b_axis(ctx, b), [ins[3]])

    def macs(self, ctx):
        return matmul_macs(ctx, ctx.node.input[0])


@rule("QLinearMatMul")
class QLinearMatMul(OpRule):
    """MatMul of quantized a and b: b's scale / zero point per tensor or per column, a's and
    the output's per tensor (or per row of a)."""

    couples = "as MatMul on a, b"
    shrinks = "b, per-column scales and zero points"
    frozen = "as MatMul"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (8 - len(ctx.inputs))
        a, b, y = ins[0], ins[3], ctx.outputs[0]
        couple_matmul(ctx, a, b, y)
        couple_params(ctx, a, ctx.rank(a) - 2 if ctx.rank(a) >= 2 else None, ins[1:3])
        couple_params(ctx, b, _b_axis(ctx, b), ins[4:6])
        couple_params(ctx, y, ctx.rank(y) - 2 if ctx.rank(y) >= 2 else None, ins[6:8])

    def macs(self, ctx):
        return matmul_macs(ctx, ctx.node.input[0])


@rule("QGemm", domain=MS)
class QGemm(OpRule):
    """ORT's quantized Gemm (A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): Gemm's
    couplings, b's scale / zero point per tensor or per output column."""

    couples = "as Gemm on A, B, C"
    shrinks = "B, C, per-column b_scale and b_zero_point"
    frozen = "—"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (9 - len(ctx.inputs))
        a, b, c, y = ins[0], ins[3], ins[6], ctx.outputs[0]
        couple_gemm(ctx, a, b, c, y)
        b_n = 0 if int(ctx.attr("transB", 0)) else 1
        _free_all(ctx, [ins[1], ins[2], ins[7], ins[8]])
        couple_params(ctx, b, b_n, ins[4:6])

    def macs(self, ctx):
        return gemm_macs(ctx, ctx.node.input[0])


@rule("QLinearAdd", "QLinearMul", domain=MS)
class QLinearBinary(OpRule):
    """(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp): elementwise with broadcasting,
    per-tensor scales."""

    couples = "as Add / Mul"
    shrinks = "constant operands"
    frozen = "as Add / Mul"

    def analyze(self, ctx):
        ins = ctx.inputs + [""] * (8 - len(ctx.inputs))
        couple_broadcast(ctx, [ins[0], ins[3]], ctx.outputs[0])
        _free_all(ctx, [ins[1], ins[2], ins[4], ins[5], ins[6], ins[7]])


@rule("QLinearSigmoid", "QLinearLeakyRelu", domain=MS)
class QLinearUnary(OpRule):
    """(X, X_scale, X_zp, Y_scale, Y_zp): elementwise, per-tensor scales."""

    couples = "every axis"
    shrinks = "—"
    frozen = "—"

    def analyze(self, ctx):
        ctx.couple_same(ctx.inputs[0], ctx.outputs[0])
        _free_all(ctx, ctx.inputs[1:])


@rule("QLinearGlobalAveragePool", "QLinearAveragePool", domain=MS)
class QLinearPool(OpRule):
    """Average pooling of a quantized tensor: batch and channel axes pass (channels last with
    `channels_last=1`), per-tensor scales."""

    couples = "batch, channels (last with `channels_last`)"
    shrinks = "—"
    frozen = "the pooled axes"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        c = ctx.rank(x) - 1 if int(ctx.attr("channels_last", 0)) else 1
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, c, y, c)
        _free_all(ctx, ctx.inputs[1:])

    def macs(self, ctx):
        if ctx.node.op_type == "QLinearGlobalAveragePool":
            return ctx.numel(ctx.node.input[0])
        k = ctx.attr("kernel_shape", [1])
        return int(ctx.numel(ctx.node.output[0]) * int(np.prod(k)))


@rule("QLinearConcat", domain=MS)
class QLinearConcat(ShapeOnly):
    """(Y_scale, Y_zp, X1, X1_scale, X1_zp, ...): Concat of the X inputs along `axis`."""

    couples = "as Concat"
    shrinks = "—"
    frozen = "inputs of unknown size on the joined axis"

    def analyze(self, ctx):
        y = ctx.outputs[0]
        ins = ctx.inputs
        xs = ins[2::3]
        _free_all(ctx, ins[:2] + ins[3::3] + ins[4::3])
        r = ctx.rank(y)
        axis = int(ctx.attr("axis", 0)) % r
        sizes = [ctx.static_dim(x, axis) for x in xs]
        off = 0
        for x, n in zip(xs, sizes):
            for a in range(r):
                if a != axis:
                    ctx.couple(x, a, y, a)
            if n is None:
                ctx.block(x, axis, "concatenates inputs of unknown size")
                ctx.block(y, axis, "concatenates inputs of unknown size")
                continue
            p = np.arange(n)
            ctx.couple(x, axis, y, axis, (p, p + off))
            off += n
