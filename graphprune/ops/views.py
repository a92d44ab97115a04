"""Ops that re-view data without moving values: Transpose, Squeeze, Unsqueeze, Reshape, Flatten.

Axes kept 1:1 are coupled; an axis merged from several (Flatten, `[B, S, H, D] → [B, S, H·D]`)
is a block map resolved by the analysis; an axis split into several (`[B, S, H·D] → [B, S, H, D]`)
is stated with `ctx.split`, and the analysis decides which part carries the units (heads, or
position j of every block); the target shape entries of every output axis that shrank are
rewritten.
"""
from __future__ import annotations

import numpy as np

from .registry import ShapeOnly, rule


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

    def rewrite(self, ctx):
        """Without listed axes every size-1 axis is squeezed at run time, so a pruned axis
        that shrank to 1 would vanish too: the axes squeezed before pruning are written out."""
        x = ctx.inputs[0]
        r = ctx.rank(x)
        if _listed_axes(ctx, r) is not None or (len(ctx.inputs) > 1 and ctx.inputs[1]):
            return
        if not any(ctx.keep(x, a) is not None for a in range(r)):
            return
        axes = [a for a in range(r) if ctx.old_dim(x, a) == 1]
        if ctx.opset() < 13:
            ctx.set_attr("axes", axes)
        else:
            ctx.add_input(np.array(axes, dtype=np.int64), "axes")


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
            ctx.split(x, ii[0], y, jj, what)
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
