"""Ops that move, cut, join or re-view data without arithmetic.

These carry index maps (Concat offsets, Split/Slice ranges, Gather tables, Flatten blocks) and
shape constants that must be rewritten when a coupled axis shrinks (Reshape targets, Split sizes,
Slice bounds, Expand shapes, Resize sizes).
"""
from __future__ import annotations

import numpy as np

from ..dependency import ROLE_OUT
from .registry import OpRule, rule


class ShapeOnly(OpRule):
    """Data movement costs no multiply-accumulates."""

    def macs(self, ctx):
        return 0


def _axis(ctx, name, default=0):
    return int(ctx.attr("axis", default)) % ctx.rank(name)


# ---------------------------------------------------------------------------- Concat
@rule("Concat")
class Concat(ShapeOnly):
    """Output axis = the inputs' axes laid end to end (input i at offset sum of earlier sizes)."""

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
        keep_in, keep_out = ctx.keep(data, axis), ctx.keep(y, axis)
        if keep_in is None and keep_out is None:
            return
        vals = ctx.const(idx)
        n = ctx.old_dim(data, axis)
        v = np.where(vals < 0, vals + n, vals).astype(np.int64)
        if keep_out is not None:
            v = v[keep_out]
        if keep_in is not None:
            v = np.searchsorted(keep_in, v)
        ctx.set_input(1, v.astype(vals.dtype))


# ---------------------------------------------------------------------------- views
@rule("Transpose")
class Transpose(ShapeOnly):
    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        perm = ctx.attr("perm", list(range(r))[::-1])
        for i, p in enumerate(perm):
            ctx.couple(x, int(p), y, i)


def _listed_axes(ctx, r):
    axes = ctx.attr("axes")
    if axes is None and len(ctx.inputs) > 1 and ctx.inputs[1]:
        v = ctx.const(ctx.inputs[1])
        if v is None:
            return None
        axes = v.reshape(-1).tolist()
    return None if axes is None else sorted(int(a) % r for a in axes)


@rule("Squeeze")
class Squeeze(ShapeOnly):
    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        axes = _listed_axes(ctx, r)
        if axes is None:
            if len(ctx.inputs) > 1 and ctx.inputs[1]:
                ctx.block_node("squeezed axes are computed at run time")
                return
            axes = [a for a in range(r) if ctx.dim(x, a) == 1]
        j = 0
        for a in range(r):
            if a in axes:
                continue
            ctx.couple(x, a, y, j)
            j += 1


@rule("Unsqueeze")
class Unsqueeze(ShapeOnly):
    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ry = ctx.rank(y)
        axes = _listed_axes(ctx, ry)
        if axes is None:
            ctx.block_node("unsqueezed axes are computed at run time")
            return
        src = 0
        for a in range(ry):
            if a in axes:
                continue
            ctx.couple(x, src, y, a)
            src += 1


def _match_forward(A, B):
    """Greedy row-major matching of (axis, size) lists from the left. Returns the segments
    found and how many entries of A and B they consumed (stops at an ambiguous symbolic size)."""
    segs, i, j = [], 0, 0
    while i < len(A) and j < len(B):
        (ia, da), (jb, db) = A[i], B[j]
        if da == db and da is not None:
            segs.append(([ia], [jb]))
            i, j = i + 1, j + 1
            continue
        if not isinstance(da, int) or not isinstance(db, int):
            break
        ii, jj, pa, pb, i2, j2 = [ia], [jb], da, db, i, j
        while pa != pb:
            if pa < pb:
                i2 += 1
                if i2 >= len(A) or not isinstance(A[i2][1], int):
                    break
                pa *= A[i2][1]
                ii.append(A[i2][0])
            else:
                j2 += 1
                if j2 >= len(B) or not isinstance(B[j2][1], int):
                    break
                pb *= B[j2][1]
                jj.append(B[j2][0])
        if pa != pb:
            break
        segs.append((ii, jj))
        i, j = i2 + 1, j2 + 1
    return segs, i, j


def _reshape_segments(a_dims, b_dims):
    """Match the axes of a row-major reshape into segments of equal element count.

    Returns (segments, complete): a list of (input_axes, output_axes) and whether every axis was
    matched. Size-1 axes are left out (they carry nothing to prune). Matching runs from the left
    and then from the right, so a symbolic merge in front ([B·S, 192] ↔ [B, S, 192]) still lets
    the trailing axes match.
    """
    A = [(i, d) for i, d in enumerate(a_dims) if d != 1]
    B = [(j, d) for j, d in enumerate(b_dims) if d != 1]
    segs, i, j = _match_forward(A, B)
    if i == len(A) and j == len(B):
        return segs, True
    back, bi, bj = _match_forward(A[i:][::-1], B[j:][::-1])
    segs += [(sorted(ii), sorted(jj)) for ii, jj in back]
    return segs, bi == len(A) - i and bj == len(B) - j


def reshape_target_dims(xs, target, inferred=None):
    """Output dims of Reshape(x, target), keeping symbolic names where they can be traced.

    `0` copies the input dim; `None` (a run-time entry) takes the inferred output dim; a single
    `-1` takes the one symbolic input dim when all other sizes are static and the static
    products match (e.g. [N, C, h, w] → [-1, C·h·w]).
    """
    out = []
    for k, t in enumerate(target):
        if t is None:
            out.append(inferred[k] if inferred is not None and k < len(inferred) else None)
        elif t == 0 and k < len(xs):
            out.append(xs[k])
        else:
            out.append(int(t))
    if -1 not in out:
        return out
    sym_in = [d for d in xs if not isinstance(d, int)]
    static_in = int(np.prod([d for d in xs if isinstance(d, int)], dtype=np.int64))
    rest = [d for d in out if d != -1]
    if any(not isinstance(d, int) for d in rest):
        syms = [d for d in rest if not isinstance(d, int)]
        if len(sym_in) == len(syms) and sorted(map(str, sym_in)) == sorted(map(str, syms)):
            static_rest = int(np.prod([d for d in rest if isinstance(d, int)], dtype=np.int64))
            out[out.index(-1)] = static_in // static_rest if static_rest else None
        else:
            out[out.index(-1)] = None
        return out
    static_rest = int(np.prod(rest, dtype=np.int64)) if rest else 1
    if not sym_in:
        out[out.index(-1)] = static_in // static_rest if static_rest else None
    elif len(sym_in) == 1 and static_in == static_rest:
        out[out.index(-1)] = sym_in[0]
    else:
        out[out.index(-1)] = None
    return out


def split_axis(ctx, x, i, y, jj, what):
    """[C] → [d0, ..., dk]: couple C to ONE output axis, block the others.

    In graphs with attention (and heads selected) the major axis is kept: input position c is
    head c // (d1·...·dk), so a unit is a whole head. Otherwise the minor axis: c ↔ c % dk, so a
    unit is "position j of every block" (a channel shuffle's channel j of each group). With
    attention but heads not selected, the split is blocked.
    """
    mode = ctx.dg.split_mode
    if mode == "block":
        for j in jj:
            ctx.block(y, j, f"{what} splits attention heads (heads not selected)")
        ctx.block(x, i, f"{what} splits attention heads (heads not selected)")
        return
    n = ctx.static_dim(x, i)
    dims = [ctx.static_dim(y, j) for j in jj]
    c = np.arange(n)
    if mode == "major":
        chosen, src = jj[0], c // int(np.prod(dims[1:], dtype=np.int64))
        ctx.dg.head_axes.add((y, chosen))
    else:
        chosen, src = jj[-1], c % dims[-1]
    ctx.couple(x, i, y, chosen, (c, src))
    for j in jj:
        if j != chosen:
            ctx.block(y, j, f"{what} splits an axis; only one of its parts is pruned")


def couple_view(ctx, x, y, what, ys=None):
    """Couple the axes of a reshape-like view x → y (same data, row-major order)."""
    xs = ctx.shape(x)
    ys = ys if ys is not None else ctx.shape(y)
    segs, complete = _reshape_segments(list(xs), list(ys))
    covered_x, covered_y = set(), set()
    for ii, jj in segs:
        covered_x.update(ii)
        covered_y.update(jj)
        if len(ii) == 1 and len(jj) == 1:
            ctx.couple(x, ii[0], y, jj[0])
        elif len(jj) == 1:
            ctx.merge(y, jj[0], [(x, i) for i in ii])
        elif len(ii) == 1:
            split_axis(ctx, x, ii[0], y, jj, what)
        else:
            why = (f"{what} splits one axis into several" if len(ii) == 1
                   else f"{what} regroups several axes")
            for i in ii:
                ctx.block(x, i, why)
            for j in jj:
                ctx.block(y, j, why)
    if not complete:
        for i in range(len(xs)):
            if i not in covered_x:
                ctx.block(x, i, f"{what} with sizes not known statically")
        for j in range(len(ys)):
            if j not in covered_y:
                ctx.block(y, j, f"{what} with sizes not known statically")


@rule("Reshape")
class Reshape(ShapeOnly):
    """Axes kept 1:1 are coupled; merges are block maps (see `_resolve_merge`); the target shape
    entries of every output axis that shrank are rewritten. Targets computed at run time work
    when the entries of the pruned axes are known statically ([batch, seq, 4, 16])."""

    def analyze(self, ctx):
        x, shp, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        target = ctx.partial(shp)
        if target is None:
            ctx.block_node("target shape is computed at run time")
            return
        ys = ctx.shape(y)
        if ys is None or any(not isinstance(d, int) for d in ys):
            ys = reshape_target_dims(list(ctx.shape(x)), target, ys)
        couple_view(ctx, x, y, "reshape", ys)
        for j, t in enumerate(target):
            if t is None:  # a run-time entry: never rewritten, so never pruned
                ctx.block(y, j, "reshape target entry computed at run time")

    def rewrite(self, ctx):
        shp, y = ctx.inputs[1], ctx.outputs[0]
        if ctx.const(shp) is None:
            return  # frozen at analysis: target computed at run time
        target = ctx.const(shp).astype(np.int64).copy()
        known = ctx.known(shp)
        changed = False
        for j in range(len(target)):
            if target[j] in (0, -1) or (known is not None and not known[j]):
                continue
            if ctx.keep(y, j) is not None:
                target[j] = ctx.new_dim(y, j)
                changed = True
        if changed:
            ctx.set_input(1, target)


@rule("Flatten")
class Flatten(ShapeOnly):
    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        axis = int(ctx.attr("axis", 1)) % (r + 1) if r else 0
        for out_axis, part in ((0, range(0, axis)), (1, range(axis, r))):
            part = list(part)
            if part:
                ctx.merge(y, out_axis, [(x, a) for a in part])


# ---------------------------------------------------------------------------- padding/resizing
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

    def analyze(self, ctx):
        x, shp, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        target = ctx.partial(shp)
        if target is None:
            ctx.block_node("target shape is computed at run time")
            return
        from .elementwise import couple_broadcast

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

    def analyze(self, ctx):
        ctx.block(ctx.inputs[0], None, "shape vector")
        ctx.block(ctx.outputs[0], None, "filled to a shape computed at run time")
