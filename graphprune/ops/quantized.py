"""Block-quantized weights of ONNX Runtime (com.microsoft): MatMulNBits and
GatherBlockQuantized.

Both read a weight the view presents as one logical constant W [N, K] (see
`graphprune.ir.quant`): its rows are the op's N outputs (MatMulNBits) or the gathered table's
rows (GatherBlockQuantized), its columns the contraction axis K (MatMulNBits) or the gathered
features. The rules couple those logical axes; the rewrite of the logical constant writes the
codes, scales and zero points (rows and whole blocks byte for byte; partial blocks
re-quantized), so the rules only fix the `K`/`N` attributes.
"""
from __future__ import annotations

import numpy as np

from .registry import ROLE_IN, ROLE_OUT, OpRule, rule

MS = "com.microsoft"


def _free_storage(ctx, qw) -> None:
    for t in qw.storage:
        ctx.free(t)
    for node, shape in qw.views:
        if node.output[0] in ctx.inputs:
            ctx.free(node.output[0])


def _blocks(ctx, w: str, block: int, k: int, suffix: str) -> None:
    """Positions of one quantization block of W's columns stay or go together."""
    blocks = ctx.virtual(suffix, -(-k // block))
    c = np.arange(k)
    ctx.couple(w, 1, blocks, 0, (c, c // block))


@rule("MatMulNBits", domain=MS)
class MatMulNBits(OpRule):
    """Y [..., N] = A [..., K] @ Wᵀ (+ bias [N]), W [N, K] block-quantized along K."""

    def analyze(self, ctx):
        qw = ctx.view.quantized(ctx.node)
        a, y = ctx.inputs[0], ctx.outputs[0]
        ra, ry = ctx.rank(a), ctx.rank(y)
        if qw is None or ra is None or ry != ra or ctx.static_dim(a, ra - 1) != qw.k:
            ctx.block_node("quantized weight in a layout graphprune does not read")
            return
        w = qw.name
        ctx.couple(a, ra - 1, w, 1)
        ctx.role(w, 1, ROLE_IN)
        ctx.couple(w, 0, y, ry - 1)
        ctx.role(w, 0, ROLE_OUT)
        for k in range(ra - 1):
            ctx.couple(a, k, y, k)
        bias = ctx.inputs[5] if len(ctx.inputs) > 5 else ""
        if bias:
            ctx.couple(bias, 0, y, ry - 1)
        _free_storage(ctx, qw)
        # removing part of a block re-quantizes the block's kept values (an approximation):
        # the analysis' policy decides whether K may lose single positions or whole blocks
        ctx.quantization_blocks(w, 1, qw.block, lambda: _blocks(ctx, w, qw.block, qw.k,
                                                               "k_blocks"))

    def rewrite(self, ctx):
        qw = ctx.view.quantized(ctx.node)
        if qw is None:
            return
        n, k = ctx.new_dim(qw.name, 0), ctx.new_dim(qw.name, 1)
        if n != qw.n:
            ctx.set_attr("N", int(n))
        if k != qw.k:
            ctx.set_attr("K", int(k))

    def macs(self, ctx):
        qw = ctx.view.quantized(ctx.node)
        return int(ctx.numel(ctx.node.output[0]) * (qw.k if qw is not None else 1))


@rule("GatherBlockQuantized", domain=MS)
class GatherBlockQuantized(OpRule):
    """Y [indices..., K] = rows `indices` of W [N, K] (gather_axis 0, quantize_axis 1): an int4
    embedding. Its features shrink in whole blocks: the stored data's width fixes K (and the
    data are often the tied LM head's codes seen through a Reshape). The gathered rows are
    chosen at run time, so N is never pruned."""

    def analyze(self, ctx):
        qw = ctx.view.quantized(ctx.node)
        idx, y = ctx.inputs[1], ctx.outputs[0]
        ri, ry = ctx.rank(idx), ctx.rank(y)
        if qw is None or ri is None or ry != ri + 1:
            ctx.block_node("quantized table in a layout graphprune does not read")
            return
        w = qw.name
        for k in range(ri):
            ctx.couple(idx, k, y, k)
        ctx.couple(w, 1, y, ri)
        ctx.role(w, 1, ROLE_OUT)  # an embedding table's feature axis
        ctx.block(w, 0, "gathers positions chosen at run time")
        _free_storage(ctx, qw)
        _blocks(ctx, w, qw.block, qw.k, "blocks")

    def macs(self, ctx):
        return 0
