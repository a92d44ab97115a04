"""Convolutions: Conv and ConvTranspose, plain, depthwise and grouped.

Conv: X[N, C, ...], W[M, C/g, k...], B[M], Y[N, M, ...].
- g == 1: Y axis 1 ↔ W axis 0 ↔ B (the filters), and X axis 1 ↔ W axis 1 (input channels).
- g > 1: channels can only leave a grouped conv a whole group at a time, so X axis 1 and Y axis 1
  are both coupled to a virtual axis of size g (input channel c belongs to group c // (C/g),
  output channel m to m // (M/g)). Depthwise conv (C/g = 1) becomes a per-channel coupling
  X[1] ↔ Y[1] ↔ W[0]; the `group` attribute is rewritten to the number of groups kept.
"""
from __future__ import annotations

import numpy as np

from .registry import ROLE_IN, ROLE_OUT, OpRule, rule


def _couple_spatial_batch(ctx, x, y):
    ctx.couple(x, 0, y, 0)


def _couple_groups(ctx, x_axis_owner, c_total, c_per_group, m_owner, m_total, m_per_group, g):
    """Tie input channels and output channels to a virtual `group` axis of size g."""
    v = ctx.virtual("group", g)
    c = np.arange(c_total)
    ctx.couple(x_axis_owner[0], x_axis_owner[1], v, 0, (c, c // c_per_group))
    m = np.arange(m_total)
    for name, axis in m_owner:
        ctx.couple(name, axis, v, 0, (m, m // m_per_group))


def _invalid_group(ctx, x, y, g: int) -> None:
    """A `group` below 1 is not a valid convolution (ONNX Runtime refuses to run it): its
    channel axes are left alone."""
    ctx.block(x, 1, f"conv with group={g} (must be >= 1)")
    ctx.block(y, 1, f"conv with group={g} (must be >= 1)")


def couple_conv(ctx, x: str, w: str, b: str, y: str) -> None:
    """The couplings of a convolution Y = conv(X, W) + B (Conv, and the quantized ConvInteger
    and QLinearConv, whose operands sit in other input slots)."""
    g = int(ctx.attr("group", 1))
    _couple_spatial_batch(ctx, x, y)
    ctx.couple(y, 1, w, 0)
    ctx.role(w, 0, ROLE_OUT)
    if b:
        ctx.couple(y, 1, b, 0)
        ctx.role(b, 0, ROLE_OUT)
    if g == 1:
        ctx.couple(x, 1, w, 1)
        ctx.role(w, 1, ROLE_IN)
        return
    if g < 1:
        _invalid_group(ctx, x, y, g)
        return
    c, m = ctx.static_dim(x, 1), ctx.static_dim(w, 0)
    if c is None or m is None or c % g or m % g:
        ctx.block(x, 1, "grouped conv with unknown channel counts")
        ctx.block(y, 1, "grouped conv with unknown channel counts")
        return
    _couple_groups(ctx, (x, 1), c, c // g, [(y, 1)], m, m // g, g)


def conv_macs(ctx, w: str) -> int:
    shape = ctx.shape(w)
    return int(ctx.numel(ctx.node.output[0]) * int(np.prod(shape[1:], dtype=np.int64)))


@rule("Conv")
class Conv(OpRule):
    couples = "X channels ↔ W[1] (inputs); W[0], B ↔ Y channels; grouped convs: whole groups"
    shrinks = "W, B; `group`"
    frozen = "grouped convs of unknown channel counts"

    def analyze(self, ctx):
        b = ctx.inputs[2] if len(ctx.inputs) > 2 else ""
        couple_conv(ctx, ctx.inputs[0], ctx.inputs[1], b, ctx.outputs[0])

    def rewrite(self, ctx):
        g = int(ctx.attr("group", 1))
        if g > 1:
            vname = ctx.virtual_name("group")
            keep = ctx.keep(vname, 0)
            if keep is not None:
                ctx.set_attr("group", int(len(keep)))

    def macs(self, ctx):
        return conv_macs(ctx, ctx.node.input[1])


@rule("ConvTranspose")
class ConvTranspose(OpRule):
    """ConvTranspose: X[N, C, ...], W[C, M/g, k...], B[M], Y[N, M, ...]."""

    couples = "X channels ↔ W[0]; W[1], B ↔ Y channels; grouped: whole groups"
    shrinks = "W, B; `group`"
    frozen = "grouped convs of unknown channel counts"

    def analyze(self, ctx):
        x, w = ctx.inputs[0], ctx.inputs[1]
        b = ctx.inputs[2] if len(ctx.inputs) > 2 else ""
        y = ctx.outputs[0]
        g = int(ctx.attr("group", 1))
        _couple_spatial_batch(ctx, x, y)
        ctx.couple(x, 1, w, 0)
        ctx.role(w, 0, ROLE_IN)
        if b:
            ctx.couple(y, 1, b, 0)
            ctx.role(b, 0, ROLE_OUT)
        if g == 1:
            ctx.couple(y, 1, w, 1)
            ctx.role(w, 1, ROLE_OUT)
            return
        if g < 1:
            _invalid_group(ctx, x, y, g)
            return
        c, mg = ctx.static_dim(x, 1), ctx.static_dim(w, 1)
        if c is None or mg is None or c % g:
            ctx.block(x, 1, "grouped conv with unknown channel counts")
            ctx.block(y, 1, "grouped conv with unknown channel counts")
            return
        _couple_groups(ctx, (x, 1), c, c // g, [(y, 1)], mg * g, mg, g)

    rewrite = Conv.rewrite

    def macs(self, ctx):
        w = ctx.shape(ctx.node.input[1])
        x = ctx.numel(ctx.node.input[0])
        return int(x * int(np.prod(w[1:], dtype=np.int64)))
