"""Normalizations.

Per-channel normalizations (BatchNormalization, InstanceNormalization) keep channels independent:
the channel axis couples to their scale/bias/statistics. Normalizations that mix values across an
axis (LRN across channels, LayerNormalization over its trailing axes, GroupNormalization over
channel groups, MeanVarianceNormalization over its axes) block that axis: removing a channel
there would change every other channel's value.
"""
from __future__ import annotations

from .registry import ROLE_AUX, ROLE_OUT, OpRule, rule


@rule("BatchNormalization")
class BatchNorm(OpRule):
    couples = "channels ↔ scale, bias, mean, var"
    shrinks = "the four parameters"
    frozen = "—"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.couple_same(x, y)
        for i, role in ((1, ROLE_OUT), (2, ROLE_OUT), (3, ROLE_AUX), (4, ROLE_AUX)):
            p = ctx.inputs[i]
            ctx.couple(x, 1, p, 0)
            ctx.role(p, 0, role)
        for extra in ctx.outputs[1:]:  # training-mode running statistics
            if extra:
                ctx.couple(x, 1, extra, 0)


@rule("InstanceNormalization")
class InstanceNorm(OpRule):
    couples = "channels ↔ scale, bias"
    shrinks = "scale, bias"
    frozen = "—"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.couple_same(x, y)
        for p in ctx.inputs[1:3]:
            ctx.couple(x, 1, p, 0)
            ctx.role(p, 0, ROLE_OUT)


def _block_mixed(ctx, axes, why):
    x, y = ctx.inputs[0], ctx.outputs[0]
    ctx.couple_same(x, y, skip=tuple(axes))
    for a in axes:
        ctx.block(x, a, why)
        ctx.block(y, a, why)
    for p in ctx.inputs[1:]:
        ctx.block(p, None, why)
    for extra in ctx.outputs[1:]:  # e.g. LayerNormalization's Mean / InvStdDev
        if extra and ctx.rank(extra) == ctx.rank(x):
            ctx.couple_same(x, extra, skip=tuple(axes))
        ctx.block(extra, None, why)


@rule("LRN")
class LRN(OpRule):
    couples = "all axes but channels"
    shrinks = "—"
    frozen = "channels (normalized across neighbours)"

    def analyze(self, ctx):
        _block_mixed(ctx, [1], "normalizes across neighbouring channels")


@rule("GroupNormalization")
class GroupNorm(OpRule):
    couples = "all axes but channels"
    shrinks = "—"
    frozen = "channels (normalized per group)"

    def analyze(self, ctx):
        _block_mixed(ctx, [1], "normalizes across channel groups")


def normalize_last_axis(ctx, x, y, params):
    """The coupling of a norm over the last axis if that axis shrinks: the norm keeps working
    on fewer features (its statistics are then taken over the kept ones, an approximation).
    Scale and bias shrink with the axis. Rules hand this to `ctx.approximate_norm`, which the
    analysis applies only when hidden-size pruning is allowed."""
    last = ctx.rank(x) - 1
    ctx.couple_same(x, y)
    for p in params:
        if p and ctx.rank(p) >= 1:
            ctx.couple(x, last, p, ctx.rank(p) - 1)
            ctx.role(p, ctx.rank(p) - 1, ROLE_OUT)
            for a in range(ctx.rank(p) - 1):
                ctx.free(p, a)


@rule("LayerNormalization")
class LayerNorm(OpRule):
    couples = ("all axes; with hidden-size pruning selected the normalized last axis with "
               "scale and bias (an approximation)")
    shrinks = "scale, bias"
    frozen = "the normalized axes otherwise"

    def analyze(self, ctx):
        x = ctx.inputs[0]
        r = ctx.rank(x)
        axis = int(ctx.attr("axis", -1)) % r
        used_extra = [o for o in ctx.outputs[1:] if o]
        exact = lambda: _block_mixed(ctx, list(range(axis, r)),  # noqa: E731
                                     "normalizes over this axis")
        if axis == r - 1 and not used_extra:
            ctx.approximate_norm(x, lambda: normalize_last_axis(ctx, x, ctx.outputs[0],
                                                                ctx.inputs[1:3]), exact)
            return
        exact()


@rule("MeanVarianceNormalization")
class MVN(OpRule):
    couples = "the axes not normalized"
    shrinks = "—"
    frozen = "the normalized axes"

    def analyze(self, ctx):
        r = ctx.rank(ctx.inputs[0])
        axes = [int(a) % r for a in ctx.attr("axes", [0, 2, 3])]
        _block_mixed(ctx, axes, "normalizes over this axis")
