"""Ops that cut and join along an axis: Concat, Split, Slice, Gather.

They carry index maps (Concat offsets, Split/Slice ranges, Gather tables) and shape constants
that must be rewritten when a coupled axis shrinks (Split sizes, Slice bounds, Gather indices).
"""
from __future__ import annotations

import numpy as np

from .registry import ROLE_OUT, ShapeOnly, axis_of as _axis, rule


# ---------------------------------------------------------------------------- Concat
@rule("Concat")
class Concat(ShapeOnly):
    """Output axis = the inputs' axes laid end to end (input i at offset sum of earlier sizes)."""

    couples = "the joined axis by offsets, other axes 1:1"
    shrinks = "—"
    frozen = "inputs of unknown size on the joined axis"

    def analyze(self, ctx):
        y = ctx.outputs[0]
        axis = _axis(ctx, y)
        sizes = [ctx.static_dim(x, axis) for x in ctx.inputs]
        known = all(s is not None for s in sizes)
        off = 0
        for x, n in zip(ctx.inputs, sizes):
            for a in range(ctx.rank(y)):
                if a != axis:
                    ctx.couple(x, a, y, a)
            if not known:
                ctx.block(x, axis, "concatenates inputs of unknown size")
                continue
            if n:
                p = np.arange(n)
                ctx.couple(x, axis, y, axis, (p, p + off))
            off += n
        if not known:
            ctx.block(y, axis, "concatenates inputs of unknown size")


# ---------------------------------------------------------------------------- Split
def _split_sizes(ctx) -> list[int] | None:
    x = ctx.inputs[0]
    axis = _axis(ctx, x)
    if len(ctx.inputs) > 1 and ctx.inputs[1]:
        v = ctx.const(ctx.inputs[1])
        return None if v is None else [int(s) for s in v.reshape(-1)]
    if ctx.attr("split") is not None:
        return [int(s) for s in ctx.attr("split")]
    total = ctx.static_dim(x, axis)
    n = len(ctx.outputs)
    if total is None:
        return None
    chunk = -(-total // n)  # opset 18 num_outputs: last chunk may be smaller
    sizes = [chunk] * (n - 1) + [total - chunk * (n - 1)]
    return sizes if all(s >= 0 for s in sizes) else None


@rule("Split")
class Split(ShapeOnly):
    couples = "ranges of the split axis to each output"
    shrinks = "split sizes"
    frozen = "sizes computed at run time"

    def analyze(self, ctx):
        x = ctx.inputs[0]
        axis = _axis(ctx, x)
        sizes = _split_sizes(ctx)
        for y in ctx.outputs:
            for a in range(ctx.rank(x)):
                if a != axis:
                    ctx.couple(x, a, y, a)
        if sizes is None or len(sizes) != len(ctx.outputs):
            ctx.block(x, axis, "split sizes are computed at run time")
            for y in ctx.outputs:
                ctx.block(y, axis, "split sizes are computed at run time")
            return
        off = 0
        for y, n in zip(ctx.outputs, sizes):
            if n:
                p = np.arange(n)
                ctx.couple(x, axis, y, axis, (p + off, p))
            off += n

    def rewrite(self, ctx):
        x = ctx.inputs[0]
        axis = _axis(ctx, x)
        if ctx.keep(x, axis) is None:
            return
        new = [ctx.new_dim(y, axis) for y in ctx.outputs]
        if len(ctx.inputs) > 1 and ctx.inputs[1]:
            ctx.set_input(1, np.array(new, dtype=np.int64))
        elif ctx.attr("split") is not None or ctx.opset() < 13:
            ctx.set_attr("split", new)
        else:
            ctx.del_attr("num_outputs")
            ctx.add_input(np.array(new, dtype=np.int64), "split")


# ---------------------------------------------------------------------------- Slice
def _slice_params(ctx):
    """(starts, ends, axes, steps) as python lists, or None when not constant."""
    x = ctx.inputs[0]
    r = ctx.rank(x)
    if ctx.opset() < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        ins = ctx.inputs + [""] * (5 - len(ctx.inputs))
        vals = [ctx.const(n) if n else None for n in ins[1:5]]
        if vals[0] is None or vals[1] is None or (ins[3] and vals[2] is None) or (
                ins[4] and vals[3] is None):
            return None
        starts, ends = vals[0].reshape(-1).tolist(), vals[1].reshape(-1).tolist()
        axes = vals[2].reshape(-1).tolist() if ins[3] else list(range(len(starts)))
        steps = vals[3].reshape(-1).tolist() if ins[4] else [1] * len(starts)
    return starts, ends, [int(a) % r for a in axes], steps


def _norm_bounds(start, end, n):
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    return int(min(max(start, 0), n)), int(min(max(end, 0), n))


@rule("Slice")
class Slice(ShapeOnly):
    """Output position p on a sliced axis is input position start + p (step 1 only)."""

    couples = "the kept range of a sliced axis (step 1), other axes 1:1"
    shrinks = "starts, ends"
    frozen = "strided slices; bounds computed at run time"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        params = _slice_params(ctx)
        if params is None:
            ctx.block_node("slice bounds are computed at run time")
            return
        starts, ends, axes, steps = params
        sliced = dict(zip(axes, zip(starts, ends, steps)))
        for a in range(ctx.rank(x)):
            if a not in sliced:
                ctx.couple(x, a, y, a)
                continue
            start, end, step = sliced[a]
            n = ctx.static_dim(x, a)
            if n is None or step != 1:
                why = "slices an axis of unknown size" if n is None else "strided slice"
                ctx.block(x, a, why)
                ctx.block(y, a, why)
                continue
            s, e = _norm_bounds(start, end, n)
            if e > s:
                p = np.arange(e - s)
                ctx.couple(x, a, y, a, (p + s, p))

    def rewrite(self, ctx):
        x = ctx.inputs[0]
        params = _slice_params(ctx)
        if params is None:
            return
        starts, ends, axes, steps = params
        new_s, new_e, changed = list(starts), list(ends), False
        for i, a in enumerate(axes):
            keep = ctx.keep(x, a)
            if keep is None:
                continue
            s, e = _norm_bounds(starts[i], ends[i], ctx.old_dim(x, a))
            ns = int(np.searchsorted(keep, s))
            new_s[i], new_e[i] = ns, int(np.searchsorted(keep, e))
            changed = True
        if not changed:
            return
        if ctx.opset() < 10:
            ctx.set_attr("starts", new_s)
            ctx.set_attr("ends", new_e)
        else:
            ctx.set_input(1, np.array(new_s, dtype=ctx.const(ctx.inputs[1]).dtype))
            ctx.set_input(2, np.array(new_e, dtype=ctx.const(ctx.inputs[2]).dtype))


# ---------------------------------------------------------------------------- Gather
@rule("Gather")
class Gather(ShapeOnly):
    """Output = data[..., indices, ...]; a constant 1-D index list is an index map."""

    couples = ("constant 1-D indices as an index map; other axes 1:1 (scalar and k-D indices "
               "shift them)")
    shrinks = "indices"
    frozen = "the gathered axis for run-time or scalar indices"

    def analyze(self, ctx):
        data, idx, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        rd, ri = ctx.rank(data), ctx.rank(idx)
        axis = _axis(ctx, data)
        for a in range(axis):
            ctx.couple(data, a, y, a)
        for a in range(axis + 1, rd):
            ctx.couple(data, a, y, a + ri - 1)
            ctx.role(data, a, ROLE_OUT)  # an embedding table's feature axis
        for a in range(ri):
            ctx.couple(idx, a, y, axis + a)
        vals = ctx.const(idx)
        n = ctx.static_dim(data, axis)
        if vals is not None and ri == 1 and n is not None:
            v = vals.astype(np.int64)
            v = np.where(v < 0, v + n, v)
            ctx.couple(data, axis, y, axis, (v, np.arange(len(v))))
        else:
            ctx.block(data, axis, "gathers positions chosen at run time or a single position")
            if ri == 1:
                ctx.block(y, axis, "gathers positions chosen at run time")

    def rewrite(self, ctx):
        data, idx, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        axis = _axis(ctx, data)
        # output axis `axis` is the gathered one only for a 1-D index (a scalar index drops it,
        # so output axis `axis` is then data axis `axis + 1`; k-D indices were blocked)
        keep_in = ctx.keep(data, axis)
        keep_out = ctx.keep(y, axis) if ctx.rank(idx) == 1 else None
        vals = ctx.const(idx)
        if (keep_in is None and keep_out is None) or vals is None:
            return
        n = ctx.old_dim(data, axis)
        v = np.where(vals < 0, vals + n, vals).astype(np.int64)
        if keep_out is not None:
            v = v[keep_out]
        if keep_in is not None:
            v = np.searchsorted(keep_in, v)
        ctx.set_input(1, v.astype(vals.dtype))
