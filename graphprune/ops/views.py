"""Ops that re-view data without moving values: Transpose, Squeeze, Unsqueeze, Reshape, Flatten.

Axes kept 1:1 are coupled; an axis merged from several (Flatten, `[B, S, H, D] → [B, S, H·D]`)
is a block map resolved by the analysis; an axis split into several (`[B, S, H·D] → [B, S, H, D]`)
is stated with `ctx.split`, and the analysis decides which part carries the units (heads, or
position j of every block); the target shape entries of every output axis that shrank are
rewritten.
"""
from __future__ import annotations

import numpy as np

from ..ir import attr
from .registry import ShapeOnly, rule


@rule("Transpose")
class Transpose(ShapeOnly):
    couples = "axes by `perm`"
    shrinks = "—"
    frozen = "—"

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
    couples = "kept axes"
    shrinks = "writes out the squeezed axes when none were listed"
    frozen = "axes computed at run time"

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
    couples = "the input's axes"
    shrinks = "—"
    frozen = "axes computed at run time"

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


# ------------------------------------------------------------- a transpose spelled as views
def _shape_slice(view, name: str):
    """(tensor, start, end) when `name` is Shape(tensor)[start:end] (a `Shape` with start/end
    or a `Slice` of a whole `Shape` along axis 0), bounds normalized to the tensor's rank."""
    node = view.producer.get(name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        r = view.rank(node.input[0])
        if r is None:
            return None
        start, end = int(attr(node, "start", 0)), attr(node, "end")
        return node.input[0], _bound(start, r), _bound(r if end is None else int(end), r)
    if node.op_type != "Slice" or len(node.input) < 3:
        return None
    src = _shape_slice(view, node.input[0])
    vals = [view.small_const(i) if i else None for i in (list(node.input) + ["", ""])[1:5]]
    if src is None or src[1:] != (0, view.rank(src[0])) or vals[0] is None or vals[1] is None:
        return None
    if (vals[2] is not None and vals[2].reshape(-1).tolist() != [0]) or (
            vals[3] is not None and vals[3].reshape(-1).tolist() != [1]):
        return None
    r = view.rank(src[0])
    return src[0], _bound(int(vals[0].reshape(-1)[0]), r), _bound(int(vals[1].reshape(-1)[0]), r)


def _bound(i: int, r: int) -> int:
    return min(max(i + r if i < 0 else i, 0), r)


def _concat_pieces(view, name: str):
    node = view.producer.get(name)
    if node is None or node.op_type != "Concat":
        return None
    return [view.small_const(i) if view.is_const(i) else _shape_slice(view, i)
            for i in node.input]


def swapped_last_two(view, node):
    """For `Reshape(x, [-1, d₋₂, d₋₁]) → Transpose(0, 2, 1) → Reshape(·, Concat(Shape(x)[:-2],
    d₋₁, d₋₂))` (onnxscript's decomposition of a key's transpose in scaled_dot_product_
    attention, with both targets read from x's shape): (x, transpose output, final output),
    found from either Reshape; None otherwise. The three ops are one transpose of x's last two
    axes, whatever the leading axes merge into."""
    found = _swap_from(view, node)
    if found is not None:
        return found
    prod = view.producer.get(node.input[0])
    if prod is not None and prod.op_type == "Transpose":
        first = view.producer.get(prod.input[0])
        if first is not None and first.op_type == "Reshape":
            found = _swap_from(view, first)
            if found is not None and found[2] == node.output[0]:
                return found
    return None


def _swap_from(view, first):
    x = first.input[0]
    r = view.rank(x)
    users = view.consumers.get(first.output[0], [])
    if r is None or r < 3 or len(users) != 1 or users[0].op_type != "Transpose":
        return None
    tr = users[0]
    if list(attr(tr, "perm", [])) != [0, 2, 1]:
        return None
    last = view.consumers.get(tr.output[0], [])
    if len(last) != 1 or last[0].op_type != "Reshape" or last[0].input[0] != tr.output[0]:
        return None
    t1, t2 = _concat_pieces(view, first.input[1]), _concat_pieces(view, last[0].input[1])
    want1 = ["-1", (x, r - 2, r - 1), (x, r - 1, r)]
    want2 = [(x, 0, r - 2), (x, r - 1, r), (x, r - 2, r - 1)]
    got1 = None if t1 is None else [str(int(p.reshape(-1)[0])) if isinstance(p, np.ndarray)
                                    and p.size == 1 else p for p in t1]
    if got1 != want1 or t2 != want2:
        return None
    return x, tr.output[0], last[0].output[0]


def couple_swap(ctx, found) -> None:
    """The couplings of a transpose of x's last two axes spelled as Reshape → Transpose →
    Reshape: x's leading axes to the result's, the last two crossed; the merged axis in
    between is free (both targets read x's sizes at run time)."""
    x, t, y = found
    r = ctx.rank(x)
    node = ctx.node
    if node.input[0] == x:  # the first Reshape
        for k in range(r - 2):
            ctx.couple(x, k, y, k)
        ctx.couple(x, r - 2, node.output[0], 1)
        ctx.couple(x, r - 1, node.output[0], 2)
        ctx.free(node.output[0], 0)
    else:  # the last Reshape reads the Transpose's output
        ctx.couple(t, 1, y, r - 2)
        ctx.couple(t, 2, y, r - 1)
        ctx.free(t, 0)
        for k in range(r - 2):
            ctx.free(y, k)


@rule("Reshape")
class Reshape(ShapeOnly):
    """Axes kept 1:1 are coupled; merges are block maps (see `_resolve_merge`); the target shape
    entries of every output axis that shrank are rewritten. Targets computed at run time work
    when the entries of the pruned axes are known statically ([batch, seq, 4, 16]). A
    Reshape → Transpose → Reshape that transposes the last two axes (`swapped_last_two`) is
    coupled as that transpose."""

    couples = ("axes kept 1:1; merges to one carrying axis (whole blocks of the others); "
               "splits into heads (the first unblocked part) or position j of every block; "
               "Reshape → Transpose → Reshape of the last two axes as that transpose")
    shrinks = "target entries (patched in run-time targets)"
    frozen = "sizes not known statically; run-time entries; regroupings of several axes"

    def analyze(self, ctx):
        x, shp, y = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
        found = swapped_last_two(ctx.view, ctx.node)
        if found is not None:
            couple_swap(ctx, found)
            return
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
    couples = "each merged axis to its one carrying input axis (a channel and its h·w features)"
    shrinks = "—"
    frozen = "merges of several carrying axes"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        axis = int(ctx.attr("axis", 1)) % (r + 1) if r else 0
        for out_axis, part in ((0, range(0, axis)), (1, range(axis, r))):
            part = list(part)
            if part:
                ctx.merge(y, out_axis, [(x, a) for a in part])
