"""Pooling and reductions: batch and channel axes pass through, pooled/reduced axes do not.

A reduced axis is blocked: pruning positions of it would change the reduced value (its spatial
axes carry no weights anyway). MaxPool's optional Indices output encodes flat positions that
include the channel index, so it is blocked when present.
"""
from __future__ import annotations

import numpy as np

from .registry import OpRule, rule


@rule("MaxPool", "AveragePool", "LpPool", "MaxRoiPool")
class Pool(OpRule):
    couples = "batch, channels"
    shrinks = "—"
    frozen = "pooled axes; the Indices output; MaxRoiPool"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        if len(ctx.outputs) > 1 and ctx.outputs[1]:
            # Indices has Y's shape and encodes flat positions including the channel index
            ctx.couple(x, 0, ctx.outputs[1], 0)
            ctx.couple(x, 1, ctx.outputs[1], 1)
            ctx.block(ctx.outputs[1], None, "indices output encodes channel positions")
        if ctx.node.op_type == "MaxRoiPool":
            ctx.block_node("region pooling is not supported")

    def macs(self, ctx):
        k = ctx.attr("kernel_shape", [1])
        return int(ctx.numel(ctx.node.output[0]) * int(np.prod(k)))


@rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
class GlobalPool(OpRule):
    couples = "batch, channels"
    shrinks = "—"
    frozen = "the pooled axes"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)

    def macs(self, ctx):
        return ctx.numel(ctx.node.input[0])


REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def reduce_axes(ctx) -> list[int] | None:
    """Normalized reduced axes; None when they are only known at run time."""
    r = ctx.rank(ctx.inputs[0])
    axes = ctx.attr("axes")
    if axes is None and len(ctx.inputs) > 1 and ctx.inputs[1]:
        val = ctx.const(ctx.inputs[1])
        if val is None:
            return None
        axes = [int(v) for v in val.reshape(-1)]
    if axes is None or len(axes) == 0:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return []
        return list(range(r))
    return sorted({int(a) % r for a in axes})


def couple_reduction(ctx, x, y, axes, keepdims):
    r = ctx.rank(x)
    j = 0
    for a in range(r):
        if a in axes:
            ctx.block(x, a, "reduces over this axis")
            if keepdims:
                j += 1
            continue
        ctx.couple(x, a, y, j)
        j += 1


@rule(*REDUCE_OPS)
class Reduce(OpRule):
    couples = ("kept axes (keepdims=0 shifts them); a decomposed RMSNorm's mean over the "
               "hidden axis with hidden-size pruning")
    shrinks = "—"
    frozen = "reduced axes"

    def analyze(self, ctx):
        x = ctx.inputs[0]
        axes = reduce_axes(ctx)
        if axes is None:
            ctx.block_node("reduction axes are computed at run time")
            return
        keepdims = int(ctx.attr("keepdims", 1))
        last = ctx.rank(x) - 1
        exact = lambda: couple_reduction(ctx, x, ctx.outputs[0], axes, keepdims)  # noqa: E731
        if axes == [last] and ctx.node.op_type == "ReduceMean" and keepdims:
            # the mean of a decomposed RMSNorm: over fewer hidden features once they shrink
            def approximate():
                for a in range(last):
                    ctx.couple(x, a, ctx.outputs[0], a)
                ctx.free(x, last)

            ctx.approximate_norm(x, approximate, exact)
            return
        exact()

    def rewrite(self, ctx):
        """A norm's mean over hidden features that shrank is taken as if the removed features
        were zeros (the sum over the kept ones ÷ the original count): what the model computed
        where they were zero, and what the masked model that allocation and reconstruction
        measure computes, instead of a statistic inflated by d/d'."""
        x = ctx.inputs[0]
        cut = ctx.last_axis_cut(x)
        if ctx.node.op_type != "ReduceMean" or cut is None \
                or reduce_axes(ctx) != [ctx.rank(x) - 1]:
            return
        kept, old = cut
        ctx.scale_input(0, len(kept) / old)

    def macs(self, ctx):
        return ctx.numel(ctx.node.input[0])


@rule("ArgMax", "ArgMin")
class ArgReduce(OpRule):
    couples = "kept axes"
    shrinks = "—"
    frozen = "the reduced axis"

    def analyze(self, ctx):
        r = ctx.rank(ctx.inputs[0])
        axis = int(ctx.attr("axis", 0)) % r
        couple_reduction(ctx, ctx.inputs[0], ctx.outputs[0], [axis], int(ctx.attr("keepdims", 1)))

    def macs(self, ctx):
        return ctx.numel(ctx.node.input[0])
