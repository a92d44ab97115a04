"""Matrix products: Gemm and MatMul.

The contraction axis of the left operand is coupled to the contraction axis of the right one
(removing input feature k removes column k of A and row k of B); the right operand's last axis is
coupled to the output's last axis (removing output feature n removes column n of B and of C).
"""
from __future__ import annotations

import numpy as np

from .elementwise import couple_broadcast
from .registry import ROLE_IN, ROLE_OUT, OpRule, rule


def couple_gemm(ctx, a: str, b: str, c: str, y: str) -> None:
    """Y = alpha·op(A)·op(B) + beta·C (Gemm, and the quantized QGemm)."""
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    a_m, a_k = (1, 0) if ta else (0, 1)
    b_k, b_n = (1, 0) if tb else (0, 1)
    ctx.couple(a, a_m, y, 0)
    ctx.couple(a, a_k, b, b_k)
    ctx.couple(b, b_n, y, 1)
    ctx.role(b, b_k, ROLE_IN)
    ctx.role(b, b_n, ROLE_OUT)
    ctx.role(a, a_k, ROLE_IN)
    if c:
        couple_broadcast(ctx, [c], y)


def gemm_macs(ctx, a: str) -> int:
    shape = ctx.shape(a)
    k = shape[0] if int(ctx.attr("transA", 0)) else shape[1]
    return int(ctx.numel(ctx.node.output[0]) * k)


@rule("Gemm")
class Gemm(OpRule):
    """Y = alpha·op(A)·op(B) + beta·C with op = optional transpose; C broadcasts to [M, N]."""

    couples = "A's K ↔ B's K (inputs); B's N, C ↔ Y (outputs)"
    shrinks = "B, C"
    frozen = "—"

    def analyze(self, ctx):
        c = ctx.inputs[2] if len(ctx.inputs) > 2 else ""
        couple_gemm(ctx, ctx.inputs[0], ctx.inputs[1], c, ctx.outputs[0])

    def macs(self, ctx):
        return gemm_macs(ctx, ctx.node.input[0])


def couple_matmul(ctx, a: str, b: str, y: str) -> None:
    """numpy.matmul semantics, including 1-D operands and broadcast batch axes (MatMul, and
    the quantized MatMulInteger and QLinearMatMul)."""
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    a_k = ra - 1
    b_k = 0 if rb == 1 else rb - 2
    ctx.couple(a, a_k, b, b_k)
    ctx.role(b, b_k, ROLE_IN)
    ctx.role(a, a_k, ROLE_IN)
    if rb >= 2:
        ctx.couple(b, rb - 1, y, ry - 1)
        ctx.role(b, rb - 1, ROLE_OUT)
    if ra >= 2:
        ya = ry - 2 if rb >= 2 else ry - 1
        ctx.couple(a, ra - 2, y, ya)
        ctx.role(a, ra - 2, ROLE_OUT)
    # batch axes broadcast like elementwise ops
    nb_y = ry - (1 if ra >= 2 else 0) - (1 if rb >= 2 else 0)
    for name, r in ((a, ra), (b, rb)):
        nb = max(r - 2, 0)
        for k in range(nb):
            ko = k + nb_y - nb
            di, do = ctx.dim(name, k), ctx.dim(y, ko)
            if di == 1 and do != 1:
                continue
            if di is not None and di == do:
                ctx.couple(name, k, y, ko)
            else:
                ctx.block(name, k, "cannot tell whether this batch axis broadcasts")


def matmul_macs(ctx, a: str) -> int:
    return int(ctx.numel(ctx.node.output[0]) * ctx.shape(a)[-1])


@rule("MatMul")
class MatMul(OpRule):
    """numpy.matmul semantics, including 1-D operands and broadcast batch axes."""

    couples = "A's last ↔ B's K; B's last ↔ Y's last; batch axes as broadcasting"
    shrinks = "constant operands"
    frozen = "batch axes whose broadcasting cannot be told"

    def analyze(self, ctx):
        couple_matmul(ctx, ctx.inputs[0], ctx.inputs[1], ctx.outputs[0])

    def macs(self, ctx):
        return matmul_macs(ctx, ctx.node.input[0])


def einsum_letters(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The subscripts of every operand and of the output of an einsum equation, with an
    ellipsis spelled out as upper-case letters (the rightmost axes of each operand share them);
    None for what the rule does not handle (an ellipsis of unknown rank)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    ell_rank = 0
    for t, r in zip(terms, ranks):
        if "..." in t:
            ell_rank = max(ell_rank, r - (len(t) - 3))
    ell = "".join(chr(ord("A") + k) for k in range(ell_rank))
    out_terms = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            n = r - (len(t) - 3)
            if n < 0:
                return None
            t = t.replace("...", ell[ell_rank - n:])
        if len(t) != r:
            return None
        out_terms.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit output: the ellipsis, then letters used once, in alphabetical order
        letters = "".join(out_terms)
        once = sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1)
        out = ell + "".join(once)
    return out_terms, out


def _equation(ctx) -> str:
    eq = ctx.attr("equation", "")
    return eq.decode() if isinstance(eq, bytes) else str(eq)


@rule("Einsum")
class Einsum(OpRule):
    """Axes with the same subscript correspond: a subscript kept in the output couples the
    operands' axes to the output axis; one summed over in several operands is a contraction
    (a constant operand's weight input axis); one summed over in a single operand is reduced
    (blocked). A subscript repeated within one operand (a diagonal) blocks the node."""

    couples = "axes of equal subscripts: kept ones to the output, contracted ones across operands"
    shrinks = "constant operands"
    frozen = "subscripts summed in one operand; diagonals"

    def analyze(self, ctx):
        ins, y = ctx.inputs, ctx.outputs[0]
        parsed = einsum_letters(_equation(ctx), [ctx.rank(i) for i in ins])
        if parsed is None or any(len(set(t)) != len(t) for t in parsed[0]):
            ctx.block_node("einsum equation with a diagonal or an ellipsis of unknown rank")
            return
        terms, out = parsed
        for letter in sorted(set("".join(terms))):
            where = [(x, t.index(letter)) for x, t in zip(ins, terms) if letter in t]
            sizes = [ctx.dim(x, a) for x, a in where]
            big = [(x, a) for (x, a), d in zip(where, sizes) if d != 1]
            if letter in out:
                j = out.index(letter)
                for x, a in big:
                    ctx.couple(x, a, y, j)
                    ctx.role(x, a, ROLE_OUT)
                continue
            if len(where) == 1:
                ctx.block(where[0][0], where[0][1], "summed over by the einsum")
                continue
            for (x, a), (x2, a2) in zip(big, big[1:]):
                ctx.couple(x, a, x2, a2)
            for x, a in big:
                ctx.role(x, a, ROLE_IN)

    def macs(self, ctx):
        ins = list(ctx.node.input)
        parsed = einsum_letters(_equation(ctx), [len(ctx.shape(i)) for i in ins])
        if parsed is None:
            return ctx.numel_outputs()
        sizes: dict[str, int] = {}
        for x, t in zip(ins, parsed[0]):
            for letter, d in zip(t, ctx.shape(x)):
                sizes[letter] = max(sizes.get(letter, 1), d)
        return int(np.prod(list(sizes.values()), dtype=np.int64))
