"""Fused attention ops of ONNX Runtime (domain com.microsoft) and the rotary embedding.

Each states where the heads are: a query/key/value axis of width H·D holds head c // D at
position c, a cache tensor ``[batch, heads, seq, head_dim]`` (BNSH) has them on axis 1. Units
are whole heads (head_dim is never pruned: every head shares one size, the rotary tables and
the attention scale depend on it), and with grouped-query attention a unit is one key/value
head together with the query heads that read it (query head h reads key/value head
h // (H / KV)), so H / KV stays integral. The rewrite sets the head-count attributes to the
heads kept.
"""
from __future__ import annotations

import numpy as np

from .registry import ROLE_IN, ROLE_OUT, OpRule, rule

MS = "com.microsoft"


def _pad(names: list[str], n: int) -> list[str]:
    return list(names) + [""] * (n - len(names))


def couple_heads(ctx, name: str, axis: int, heads: str, head_size: int, start: int = 0,
                 count: int | None = None) -> None:
    """Positions start .. start + count·head_size of axis `axis` belong to the heads of the
    virtual tensor `heads` (position start + c belongs to head c // head_size)."""
    n = count if count is not None else ctx.static_dim(heads, 0)
    c = np.arange(n * head_size)
    ctx.couple(name, axis, heads, 0, (start + c, c // head_size))


def free_all(ctx, names) -> None:
    for n in names:
        if n:
            ctx.free(n)


@rule("GroupQueryAttention", domain=MS)
class GroupQueryAttention(OpRule):
    """query [B, S, H·D] (or packed QKV [B, S, (H + 2·KV)·D] with key/value empty), key/value
    [B, S, KV·D], past/present key/value [B, KV, T, D], output [B, S, H·D]; `num_heads` = H,
    `kv_num_heads` = KV, head size D = packed width / (H + 2·KV). Packed columns: query head h
    at h·D, key head g at H·D + g·D, value head g at H·D + KV·D + g·D. The rotary tables
    (cos/sin caches [positions, D/2]), sequence lengths and positions do not depend on the
    number of heads."""

    def analyze(self, ctx):
        ins, outs = _pad(ctx.inputs, 17), _pad(ctx.outputs, 4)
        q, k, v, pk, pv = ins[:5]
        y, yk, yv, qk = outs
        h, kvh = int(ctx.attr("num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
        width = ctx.static_dim(q, 2) if ctx.rank(q) == 3 else None
        if h < 1 or kvh < 1 or h % kvh or width is None or (bool(k) != bool(v)):
            ctx.block_node("head counts or query width unknown")
            return
        packed = not k
        d = width // (h + 2 * kvh) if packed else width // h
        if d < 1 or (packed and d * (h + 2 * kvh) != width) or (not packed and d * h != width) \
                or any(ins[i] for i in (12, 13)):
            ctx.block_node("query width does not split into the heads, or a quantized cache")
            return
        heads, kv = ctx.virtual("heads", h), ctx.virtual("kv_heads", kvh)
        j = np.arange(h)
        ctx.couple(heads, 0, kv, 0, (j, j // (h // kvh)))  # query head j reads kv head j//rep
        ctx.mark_heads(heads, 0)
        ctx.mark_heads(kv, 0)
        if packed:
            couple_heads(ctx, q, 2, heads, d)
            couple_heads(ctx, q, 2, kv, d, start=h * d)
            couple_heads(ctx, q, 2, kv, d, start=(h + kvh) * d)
        else:
            couple_heads(ctx, q, 2, heads, d)
            for t in (k, v):
                if ctx.rank(t) != 3 or ctx.static_dim(t, 2) != kvh * d:
                    ctx.block_node("key/value width is not kv_num_heads × head size")
                    return
                couple_heads(ctx, t, 2, kv, d)
                ctx.couple(t, 0, q, 0)
            ctx.couple(k, 1, v, 1)
        couple_heads(ctx, y, 2, heads, d)
        ctx.couple(q, 0, y, 0)
        ctx.couple(q, 1, y, 1)
        for t in (pk, pv, yk, yv):
            if t and ctx.rank(t) == 4:
                ctx.couple(t, 1, kv, 0)
                ctx.couple(t, 0, q, 0)
                ctx.free(t, 2)
                ctx.free(t, 3)
        bias, sink = ins[10], ins[11]
        if bias and ctx.rank(bias) == 4 and ctx.static_dim(bias, 1) == h:
            ctx.couple(bias, 1, heads, 0)
        if sink:
            ctx.couple(sink, 0, heads, 0)
        if qk and ctx.rank(qk) == 4:
            ctx.couple(qk, 1, heads, 0)
        free_all(ctx, [ins[i] for i in (5, 6, 7, 8, 9, 14, 15, 16)] + [bias, qk])

    def rewrite(self, ctx):
        heads = ctx.keep(ctx.virtual_name("heads"), 0)
        kv = ctx.keep(ctx.virtual_name("kv_heads"), 0)
        if heads is not None:
            ctx.set_attr("num_heads", int(len(heads)))
        if kv is not None:
            ctx.set_attr("kv_num_heads", int(len(kv)))

    def macs(self, ctx):
        """Q·Kᵀ and P·V: 2 · B·S·H·D · total length (symbolic sizes count as 1)."""
        outs = _pad(list(ctx.node.output), 3)
        total = ctx.shape(outs[1])[2] if outs[1] and ctx.view.rank(outs[1]) == 4 else 1
        return int(2 * ctx.numel(outs[0]) * total)


def _couple_cache(ctx, names, heads: str, q: str) -> None:
    """Past/present tensors [B, H, T, D] (BNSH): heads on axis 1, batch with the query's."""
    for t in names:
        if t and ctx.rank(t) == 4:
            ctx.couple(t, 1, heads, 0)
            ctx.couple(t, 0, q, 0)
            ctx.free(t, 2)
            ctx.free(t, 3)


@rule("MultiHeadAttention", domain=MS)
class MultiHeadAttention(OpRule):
    """query [B, S, H·D] with key/value [B, L, H·D] (or key/value already BNSH [B, H, L, D],
    or packed QKV query [B, S, H, 3, D] with key/value empty), optional bias [3·H·D] (q | k |
    v), masks, attention bias [B|1, H|1, S, T], past/present key/value [B, H, T, D]; output
    [B, S, H·Dv]; `num_heads` = H."""

    def analyze(self, ctx):
        ins, outs = _pad(ctx.inputs, 10), _pad(ctx.outputs, 4)
        q, k, v, bias, mask, abias, pk, pv = ins[:8]
        y, yk, yv, qk = outs
        h = int(ctx.attr("num_heads", 0))
        ry = ctx.rank(y)
        if h < 1 or ry != 3 or ins[9]:
            ctx.block_node("head count unknown, or a beam-search cache indirection")
            return
        heads = ctx.virtual("heads", h)
        ctx.mark_heads(heads, 0)
        dv = (ctx.static_dim(y, 2) or 0) // h
        if ctx.rank(q) == 5 and not k and not v:  # packed QKV [B, S, H, 3, D]
            if ctx.static_dim(q, 2) != h or ctx.static_dim(q, 3) != 3:
                ctx.block_node("packed QKV is not [B, S, num_heads, 3, D]")
                return
            ctx.couple(q, 2, heads, 0)
            ctx.couple(q, 0, y, 0)
            ctx.couple(q, 1, y, 1)
            ctx.free(q, 3)
            ctx.block(q, 4, "head size is not pruned")
            widths = []
        else:
            dq = (ctx.static_dim(q, 2) or 0) // h
            if ctx.rank(q) != 3 or not dq or dq * h != ctx.static_dim(q, 2):
                ctx.block_node("query width does not split into num_heads")
                return
            couple_heads(ctx, q, 2, heads, dq)
            ctx.couple(q, 0, y, 0)
            ctx.couple(q, 1, y, 1)
            widths = [dq * h]
            for t in (k, v):
                if t and ctx.rank(t) == 3 and ctx.static_dim(t, 2) and \
                        ctx.static_dim(t, 2) % h == 0:
                    couple_heads(ctx, t, 2, heads, ctx.static_dim(t, 2) // h)
                    ctx.couple(t, 0, q, 0)
                    widths.append(ctx.static_dim(t, 2))
                elif t and ctx.rank(t) == 4 and ctx.static_dim(t, 1) == h:  # BNSH cache
                    _couple_cache(ctx, [t], heads, q)
                elif t:
                    ctx.block_node("key/value layout not understood")
                    return
            if k and v and ctx.rank(k) == 3 and ctx.rank(v) == 3:
                ctx.couple(k, 1, v, 1)
        if not dv or dv * h != ctx.static_dim(y, 2):
            ctx.block_node("output width does not split into num_heads")
            return
        couple_heads(ctx, y, 2, heads, dv)
        if bias:
            if len(widths) != 3 or ctx.static_dim(bias, 0) != sum(widths):
                ctx.block_node("bias is not q | k | v of the projections")
                return
            start = 0
            for w in widths:
                couple_heads(ctx, bias, 0, heads, w // h, start=start)
                start += w
        _couple_cache(ctx, [pk, pv, yk, yv], heads, q)
        if abias and ctx.rank(abias) == 4 and ctx.static_dim(abias, 1) == h:
            ctx.couple(abias, 1, heads, 0)
        if qk and ctx.rank(qk) == 4:
            ctx.couple(qk, 1, heads, 0)
        free_all(ctx, [mask, abias, ins[8], qk])

    def rewrite(self, ctx):
        keep = ctx.keep(ctx.virtual_name("heads"), 0)
        if keep is not None:
            ctx.set_attr("num_heads", int(len(keep)))


@rule("Attention", domain=MS)
class Attention(OpRule):
    """input [B, S, C] @ weights [C, Hq + Hk + Hv] (packed: query, key and value projections,
    widths `qkv_hidden_sizes`, else three equal thirds) + bias; output [B, S, Hv]; past /
    present [2, B, H, T, D]; `num_heads` = H. The packed weight's columns are heads of the
    three parts; its rows are the input features (a consumer axis, like a MatMul's K)."""

    def analyze(self, ctx):
        ins, outs = _pad(ctx.inputs, 7), _pad(ctx.outputs, 2)
        x, w, bias, mask, past, abias = ins[:6]
        y, present = outs
        h = int(ctx.attr("num_heads", 0))
        n = ctx.static_dim(w, 1) if ctx.rank(w) == 2 else None
        sizes = list(ctx.attr("qkv_hidden_sizes", []) or ([n // 3] * 3 if n else []))
        if h < 1 or not n or sum(sizes) != n or any(s % h for s in sizes) or \
                int(ctx.attr("do_rotary", 0)) or int(ctx.attr("past_present_share_buffer", 0)) \
                or ctx.rank(x) != 3 or ins[6]:
            ctx.block_node("packed weights, rotary or cache sharing graphprune does not read")
            return
        heads = ctx.virtual("heads", h)
        ctx.mark_heads(heads, 0)
        ctx.couple(x, 2, w, 0)
        ctx.role(w, 0, ROLE_IN)
        ctx.role(w, 1, ROLE_OUT)
        start = 0
        for s in sizes:
            couple_heads(ctx, w, 1, heads, s // h, start=start)
            if bias:
                couple_heads(ctx, bias, 0, heads, s // h, start=start)
            start += s
        couple_heads(ctx, y, 2, heads, sizes[2] // h)
        ctx.couple(x, 0, y, 0)
        ctx.couple(x, 1, y, 1)
        for t in (past, present):
            if t and ctx.rank(t) == 5:
                ctx.couple(t, 2, heads, 0)
                ctx.couple(t, 1, x, 0)
                for a in (0, 3, 4):
                    ctx.free(t, a)
        if abias and ctx.rank(abias) == 4 and ctx.static_dim(abias, 1) == h:
            ctx.couple(abias, 1, heads, 0)
        free_all(ctx, [mask, abias])

    def rewrite(self, ctx):
        keep = ctx.keep(ctx.virtual_name("heads"), 0)
        if keep is None:
            return
        h = int(ctx.attr("num_heads", 0))
        ctx.set_attr("num_heads", int(len(keep)))
        sizes = ctx.attr("qkv_hidden_sizes")
        if sizes:
            ctx.set_attr("qkv_hidden_sizes", [int(s) // h * int(len(keep)) for s in sizes])

    def macs(self, ctx):
        x = ctx.shape(ctx.node.input[0])
        return int(ctx.numel(ctx.node.output[0]) * 3 * x[-1])


@rule("RotaryEmbedding", domain=MS)
@rule("RotaryEmbedding")
class RotaryEmbedding(OpRule):
    """Rotates pairs of positions inside each head (i with i + D/2, or neighbours when
    interleaved) by angles from cos/sin caches [positions, D/2]: heads are independent, the
    head size is not pruned. Input and output [B, S, H·D] (D = 2 × the caches' width, or
    hidden / num_heads) or [B, H, S, D]. com.microsoft takes (input, position_ids, cos, sin),
    ai.onnx (opset 23) (input, cos, sin, position_ids)."""

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        ms = ctx.node.domain == MS
        cos = ctx.inputs[2] if ms else (ctx.inputs[1] if len(ctx.inputs) > 1 else "")
        h = int(ctx.attr("num_heads", 0))
        part = int(ctx.attr("rotary_embedding_dim", 0))
        r = ctx.rank(x)
        if r == 4:
            ctx.couple_same(x, y, skip=(3,))
            ctx.block(x, 3, "head size is not pruned")
            ctx.block(y, 3, "head size is not pruned")
        elif r == 3:
            width = ctx.static_dim(x, 2)
            d = width // h if h else (2 * (ctx.static_dim(cos, 1) or 0) if cos and not part
                                      else 0)
            if not width or not d or width % d:
                ctx.block_node("head size unknown")
                return
            heads = ctx.virtual("heads", width // d)
            ctx.mark_heads(heads, 0)
            ctx.couple_same(x, y)
            couple_heads(ctx, x, 2, heads, d)
        else:
            ctx.block_node("input is neither [B, S, H·D] nor [B, H, S, D]")
            return
        free_all(ctx, [i for i in ctx.inputs[1:] if i])

    def rewrite(self, ctx):
        keep = ctx.keep(ctx.virtual_name("heads"), 0)
        if keep is not None and int(ctx.attr("num_heads", 0)):
            ctx.set_attr("num_heads", int(len(keep)))
