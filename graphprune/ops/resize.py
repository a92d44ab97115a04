"""Ops that pad, resize, broadcast or read shapes: Pad, Resize/Upsample, Expand, Tile, Shape,
Size, ConstantOfShape.

Padded, resized and tiled axes are independent of the input's (their positions move); axes the
op leaves alone pass through. Expand and Resize targets are rewritten when a passing axis
shrinks. Shape readers are safe to prune through only when the sizes they read are static.
"""
from __future__ import annotations

import numpy as np

from .elementwise import couple_broadcast
from .registry import OpRule, ShapeOnly, rule


def _pads(ctx):
    r = ctx.rank(ctx.inputs[0])
    if ctx.opset() < 11:
        pads = ctx.attr("pads", ctx.attr("paddings"))
        axes = list(range(r))
    else:
        pads = ctx.const(ctx.inputs[1]) if len(ctx.inputs) > 1 else None
        if pads is None:
            return None
        pads = pads.reshape(-1).tolist()
        if len(ctx.inputs) > 3 and ctx.inputs[3]:
            v = ctx.const(ctx.inputs[3])
            if v is None:
                return None
            axes = [int(a) % r for a in v.reshape(-1)]
        else:
            axes = list(range(r))
    n = len(axes)
    return {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}


@rule("Pad")
class Pad(ShapeOnly):
    """Unpadded axes pass through; padded axes are blocked (padding sizes are positional)."""

    couples = "unpadded axes"
    shrinks = "—"
    frozen = "padded axes; pads computed at run time"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        pads = _pads(ctx)
        if pads is None:
            ctx.block_node("pads are computed at run time")
            return
        for a in range(ctx.rank(x)):
            if pads.get(a, (0, 0)) == (0, 0):
                ctx.couple(x, a, y, a)
            else:
                ctx.block(x, a, "padded axis")
                ctx.block(y, a, "padded axis")


def _resize_factors(ctx):
    """Per-axis ('scale', value) or ('size', value) of Resize/Upsample, or None if dynamic."""
    x = ctx.inputs[0]
    r = ctx.rank(x)
    if ctx.node.op_type == "Upsample" and ctx.attr("scales") is not None:
        return [("scale", float(s)) for s in ctx.attr("scales")]
    ins = ctx.inputs
    if ctx.node.op_type == "Upsample" or ctx.opset() < 11:
        v = ctx.const(ins[1]) if len(ins) > 1 else None
        return None if v is None else [("scale", float(s)) for s in v.reshape(-1)]
    scales = ctx.const(ins[2]) if len(ins) > 2 and ins[2] else None
    sizes = ctx.const(ins[3]) if len(ins) > 3 and ins[3] else None
    axes = ctx.attr("axes")
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    out = [("scale", 1.0)] * r
    if scales is not None and scales.size:
        for a, s in zip(axes, scales.reshape(-1)):
            out[a] = ("scale", float(s))
        return out
    if sizes is not None and sizes.size:
        for a, s in zip(axes, sizes.reshape(-1)):
            out[a] = ("size", int(s))
        return out
    return None


@rule("Resize", "Upsample")
class Resize(OpRule):
    """Axes with scale 1 (or an unchanged size) pass through; resized axes are independent."""

    couples = "axes with scale 1 or an unchanged size"
    shrinks = "`sizes`"
    frozen = "resized axes; scales computed at run time"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        f = _resize_factors(ctx)
        if f is None:
            ctx.block_node("scales/sizes are computed at run time")
            return
        for a, (kind, v) in enumerate(f):
            if (kind == "scale" and v == 1.0) or (kind == "size" and v == ctx.dim(x, a)):
                ctx.couple(x, a, y, a)

    def rewrite(self, ctx):
        x = ctx.inputs[0]
        f = _resize_factors(ctx)
        if f is None or not any(k == "size" for k, _ in f):
            return
        sizes = ctx.const(ctx.inputs[3]).astype(np.int64).copy()
        r = ctx.rank(x)
        axes = ctx.attr("axes")
        axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
        for i, a in enumerate(axes):
            if ctx.keep(x, a) is not None:
                sizes[i] = ctx.new_dim(x, a)
        ctx.set_input(3, sizes)


@rule("Expand")
class Expand(ShapeOnly):
    """Broadcast to a target shape: input axes equal to the output axis are coupled. The target
    may be computed at run time as long as the entries of pruned axes are known statically."""

    couples = "axes equal to the target's"
    shrinks = "target entries (patched in run-time targets)"
    frozen = "axes expanded to a size computed at run time"

    def analyze(self, ctx):
        x, shp, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        target = ctx.partial(shp)
        if target is None:
            ctx.block_node("target shape is computed at run time")
            return
        couple_broadcast(ctx, [x], y)
        ry, rx = ctx.rank(y), ctx.rank(x)
        for k, t in enumerate(target):
            a = k + ry - len(target)
            ax = a - (ry - rx)  # the input axis under output axis a, if the input has one
            if t is None and (ax < 0 or ctx.dim(y, a) != ctx.dim(x, ax)):
                ctx.block(y, a, "expanded to a size computed at run time")

    def rewrite(self, ctx):
        shp, y = ctx.inputs[1], ctx.outputs[0]
        if ctx.const(shp) is None:
            return  # frozen at analysis: target computed at run time
        target = ctx.const(shp).astype(np.int64).copy()
        known = ctx.known(shp)
        ry = ctx.rank(y)
        changed = False
        for k in range(len(target)):
            a = k + ry - len(target)
            if known is not None and not known[k]:
                continue
            if target[k] != 1 and ctx.keep(y, a) is not None:
                target[k] = ctx.new_dim(y, a)
                changed = True
        if changed:
            ctx.set_input(1, target)


@rule("Tile")
class Tile(ShapeOnly):
    couples = "axes repeated once"
    shrinks = "—"
    frozen = "tiled axes; repeats computed at run time"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        reps = ctx.const(ctx.inputs[1])
        if reps is None:
            ctx.block_node("repeats are computed at run time")
            return
        for a, rep in enumerate(reps.reshape(-1)):
            if int(rep) == 1:
                ctx.couple(x, a, y, a)
            else:
                ctx.block(x, a, "tiled axis")
                ctx.block(y, a, "tiled axis")


# ---------------------------------------------------------------------------- shape readers
@rule("Shape", "Size")
class ShapeOf(ShapeOnly):
    """Reads sizes at run time. When the sizes it reads are static, its value is folded and
    every use of it is pinned to the original value at rewrite (or rewritten by the consuming
    rule), so pruning the input is safe. Sizes read at run time could flow anywhere: the input
    axes are blocked then. The result vector itself is never pruned."""

    couples = "— (the input may shrink when the sizes read are static: the value is pinned)"
    shrinks = "—"
    frozen = "inputs whose sizes are read at run time"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ctx.block(y, None, "shape vector")
        if (y in ctx.view.folded or y in ctx.view.partial) and y not in ctx.view.graph_outputs:
            ctx.free(x)
        else:
            ctx.block(x, None, "its sizes are read at run time")


@rule("ConstantOfShape")
class ConstantOfShapeDynamic(ShapeOnly):
    """A fill of a run-time shape. Its size would not follow a pruned axis unless the shape came
    from that very tensor, which we do not trace: both sides are blocked."""

    couples = "—"
    shrinks = "—"
    frozen = "a fill of a shape computed at run time"

    def analyze(self, ctx):
        ctx.block(ctx.inputs[0], None, "shape vector")
        ctx.block(ctx.outputs[0], None, "filled to a shape computed at run time")
