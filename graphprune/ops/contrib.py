"""ONNX Runtime contrib ops (domain com.microsoft) that optimized transformer graphs carry.

Models saved after ORT's transformer optimizer fuse GELU, bias adds, skip + LayerNorm, MatMul
with transposes and multi-head attention into these ops. Their semantics are documented by ONNX
Runtime; each rule here restates them in coupling terms.
"""
from __future__ import annotations

import numpy as np

from .elementwise import couple_broadcast
from .norm import normalize_last_axis
from .registry import ROLE_IN, ROLE_OUT, OpRule, rule

MS = "com.microsoft"


@rule("FastGelu", "BiasGelu", "QuickGelu", "Gelu", domain=MS)
class ContribElementwise(OpRule):
    """GELU variants with an optional bias broadcast over the last axis: elementwise with
    broadcasting."""

    def analyze(self, ctx):
        couple_broadcast(ctx, [i for i in ctx.inputs if i], ctx.outputs[0])


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
class ContribLayerNorm(OpRule):
    """(input [+ skip + bias]) normalized over the last axis, scaled by gamma (+ beta).

    Its last axis can shrink only as an approximation, like LayerNormalization's (the analysis
    decides whether hidden-size pruning is allowed); extra outputs (mean, inverse std, the summed input) follow the input.
    """

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        r = ctx.rank(x)
        simplified = ctx.node.op_type == "SimplifiedLayerNormalization"
        data = [x] if simplified else [i for i in ctx.inputs[:2] if i]
        params = ctx.inputs[1:] if simplified else ctx.inputs[2:]
        summed = ctx.outputs[3] if len(ctx.outputs) > 3 and ctx.outputs[3] else ""
        stats = [o for o in ctx.outputs[1:3] if o] if not simplified else [
            o for o in ctx.outputs[1:] if o]
        for d in data[1:]:
            couple_broadcast(ctx, [d], x)
        if summed:
            ctx.couple_same(x, summed)

        def exact():
            why = "normalizes over this axis"
            ctx.couple_same(x, y, skip=(r - 1,))
            for t in [x, y] + data[1:] + ([summed] if summed else []):
                ctx.block(t, ctx.rank(t) - 1, why)
            for p in list(params) + stats:
                ctx.block(p, None, why)

        if stats:
            exact()
        else:
            ctx.approximate_norm(x, lambda: normalize_last_axis(ctx, x, y, params), exact)

    def rewrite(self, ctx):
        """An RMS norm over hidden features that shrank (d → d') is computed as if the removed
        features were zeros: gamma × √(d/d') and epsilon × d/d' make
        x·γ/√(Σx²/d' + ε) equal to x·γ/√(Σx²/d + ε) exactly (a mean-centred LayerNorm has no
        such identity and keeps the statistics of the kept features)."""
        rms = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}
        idx = rms.get(ctx.node.op_type)
        cut = ctx.last_axis_cut(ctx.inputs[0])
        if idx is None or cut is None or len(ctx.inputs) <= idx:
            return
        kept, old = cut
        gamma = ctx.const(ctx.inputs[idx])
        if gamma is None or gamma.shape[-1:] not in ((old,), (len(kept),)):
            return
        if gamma.shape[-1] == old:  # the original value (a large one may be read sliced)
            gamma = np.take(gamma, kept, axis=-1)
        ratio = old / len(kept)
        ctx.set_input(idx, (gamma * np.sqrt(ratio)).astype(gamma.dtype))
        ctx.set_attr("epsilon", float(ctx.attr("epsilon", 1e-5)) * ratio)


@rule("SimplifiedLayerNormalization")
class SimplifiedLayerNorm(ContribLayerNorm):
    """RMSNorm as ONNX Runtime registers it (in the default domain)."""


@rule("FusedMatMul", domain=MS)
class FusedMatMul(OpRule):
    """alpha · op(A) · op(B), op = optional transpose of the last two axes (transBatch* unset)."""

    def analyze(self, ctx):
        if int(ctx.attr("transBatchA", 0)) or int(ctx.attr("transBatchB", 0)):
            ctx.block_node("batch-transposing FusedMatMul")
            return
        a, b = ctx.inputs[:2]
        y = ctx.outputs[0]
        ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
        if ra < 2 or rb < 2:
            ctx.block_node("1-D operand")
            return
        a_m, a_k = (ra - 1, ra - 2) if int(ctx.attr("transA", 0)) else (ra - 2, ra - 1)
        b_k, b_n = (rb - 1, rb - 2) if int(ctx.attr("transB", 0)) else (rb - 2, rb - 1)
        ctx.couple(a, a_k, b, b_k)
        ctx.couple(a, a_m, y, ry - 2)
        ctx.couple(b, b_n, y, ry - 1)
        ctx.role(b, b_k, ROLE_IN)
        ctx.role(b, b_n, ROLE_OUT)
        ctx.role(a, a_k, ROLE_IN)
        for name, r in ((a, ra), (b, rb)):
            for k in range(r - 2):
                ko = k + (ry - 2) - (r - 2)
                if ctx.dim(name, k) == ctx.dim(y, ko) and ctx.dim(name, k) is not None:
                    ctx.couple(name, k, y, ko)

    def macs(self, ctx):
        a = ctx.shape(ctx.node.input[0])
        k = a[-2] if int(ctx.attr("transA", 0)) else a[-1]
        return int(ctx.numel(ctx.node.output[0]) * k)
