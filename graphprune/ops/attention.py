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

from .registry import OpRule, rule

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
