"""Dependency analysis: build the graph of coupled axes from one rule per op, then groups.

Nodes of the dependency graph are `(tensor_name, axis)` pairs; each node of the model is handed
to its op's rule (`graphprune.ops`), which states how its axes correspond. Ops without a rule,
graph inputs and outputs block the axes they touch. Merged axes (Flatten, Reshape) are resolved
once every rule has spoken; then connected components become groups (`graphprune.analysis.units`)
and each group gets its kind (channel, head, mlp, hidden), which the `dims` option selects.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from ..ir import GraphView, subgraph_outer_names
from ..ir.cache import HEAD_AXIS, cache_tensors
from ..ops.registry import ROLE_IN, ROLE_OUT, lookup
from .context import AnalyzeContext
from .graph import DependencyGraph, DimNode, Policy
from .roles import propagate_roles
from .units import build_groups


def _is_unknown_rank(view: GraphView, names) -> bool:
    return any(n and view.rank(n) is None for n in names)


KINDS = ("channels", "heads", "mlp", "hidden")  # the default selection
# every kind `dims` may name: head_dims (the same positions of every head's features) excludes
# heads, since one split axis carries either whole heads or positions within each head
ALL_KINDS = KINDS + ("head_dims",)


ATTENTION_OPS = {"MultiHeadAttention", "Attention", "GroupQueryAttention", "PackedAttention"}


def has_attention(view: GraphView) -> bool:
    """A MatMul of two computed tensors (scores = Q·Kᵀ), or a fused attention op, marks a
    graph with attention."""
    return any((n.op_type in ("MatMul", "FusedMatMul") and not any(view.is_const(i) for i in n.input))
               or n.op_type in ATTENTION_OPS for n in view.graph.node)


def policy_for(attention: bool, dims, requantize: bool = True) -> Policy:
    """The policy for a graph: with attention, splitting reshapes make heads (frozen unless
    heads are selected), norms may shrink when the hidden size is selected and so does a KV
    cache's head axis with the heads; without attention a split axis is a channel shuffle
    (minor part) and norms never shrink. Block-quantized weights lose single positions of
    their contraction axis (re-quantized) unless `requantize` is False (whole blocks)."""
    if not attention:
        return Policy(requantize=requantize)
    split = "major" if "heads" in dims else "minor" if "head_dims" in dims else "block"
    return Policy(split=split,
                  approximate_norms="hidden" in dims, cache_heads="heads" in dims,
                  requantize=requantize)


def analyze(view: GraphView, progress=None, dims=KINDS, requantize: bool = True
            ) -> DependencyGraph:
    """Build the dependency graph of a model and split it into groups.

    `dims` selects the kinds of groups that may be pruned: channels (convolutions), heads
    (attention heads), mlp (transformer intermediate widths), hidden (the residual stream).
    `requantize`: block-quantized weights lose single positions of their contraction axis
    (re-quantizing the blocks); False: whole quantization blocks only (byte-exact).
    """
    dg = DependencyGraph(view)
    dg.has_attention = has_attention(view)
    dg.policy = policy_for(dg.has_attention, dims, requantize)
    merges: list = []
    cache = {t.name for t in cache_tensors(view.model)} if dg.policy.cache_heads else set()
    for names, what in ((view.graph_inputs, "graph input"), (view.graph_outputs, "graph output")):
        for name in names:
            dg.add_tensor(name)
            if name in cache:  # the exception: a KV cache's head axis follows the heads
                dg.cache_io[name] = HEAD_AXIS
                for a in range(view.rank(name) or 0):
                    if a != HEAD_AXIS:
                        dg.block((name, a), f"{what} '{name}'")
            else:
                dg.block_tensor(name, f"{what} '{name}'")
    for node in view.graph.node:
        for n in list(node.input) + list(node.output):
            if n:
                dg.add_tensor(n)
        if node.op_type in ("Constant",) and node.domain in ("", "ai.onnx"):
            continue
        if node.op_type == "ConstantOfShape" and node.output[0] in view.consts:
            continue
        ctx = AnalyzeContext(dg, node, merges)
        r = lookup(node.op_type, node.domain)
        label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if r is None:
            dg.unsupported_ops[label] = dg.unsupported_ops.get(label, 0) + 1
            ctx.block_node(f"op {label} has no pruning rule")
            for name in subgraph_outer_names(node):
                dg.add_tensor(name)
                dg.block_tensor(name, f"read inside a subgraph of {label} '{node.name}'")
            continue
        used_outputs = [o for o in node.output if o and (o in view.consumers or o in view.graph_outputs)]
        if _is_unknown_rank(view, list(node.input) + used_outputs):
            ctx.block_node("shape of an input/output is unknown")
            continue
        r.analyze(ctx)
        ctx.block_untouched()
        if progress:
            progress()
    resolve_head_splits(dg)
    propagate_roles(dg)  # the merges below ask which axes carry weights
    resolve_merges(dg, merges)
    propagate_roles(dg)  # constants reached through a merge
    build_groups(dg)
    _assign_kinds(dg, dims)
    return dg


def _assign_kinds(dg: DependencyGraph, dims) -> None:
    """Name each group's kind and freeze the kinds not selected."""
    conv_weights = {n.input[1] for n in dg.view.graph.node
                    if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1}
    for grp in dg.groups:
        if any(dn in dg.head_axes for dn in grp.dims):
            grp.kind = "head"
        elif any(dn in dg.head_dim_axes for dn in grp.dims):
            grp.kind = "head_dim"
        elif any(dn in dg.hidden_axes for dn in grp.dims):
            grp.kind = "hidden"
        elif dg.has_attention and not any(m.tensor in conv_weights for m in grp.members):
            grp.kind = "mlp"
        else:
            grp.kind = "channel"
        plural = {"head": "heads", "channel": "channels", "head_dim": "head_dims"}.get(grp.kind, grp.kind)
        if grp.frozen_reason is None and plural not in dims:
            grp.frozen_reason = f"{plural} not selected for pruning (dims)"


def _component_has_weight(dg: DependencyGraph, dn: DimNode) -> bool:
    """Whether the axis's current component holds a weight and nothing blocks it."""
    comp = nx.node_connected_component(dg.g, dn)
    if any(other in dg.blocked for other in comp):
        return False
    for other in comp:
        if other[0] in dg.view.consts and dg.roles.get(other) in (ROLE_OUT, ROLE_IN):
            return True
    return False


def resolve_head_splits(dg: DependencyGraph) -> None:
    """Couple each axis split into heads to the first of its parts that nothing blocks (a
    fused QKV [.., 3·H·D] → [.., 3, H, D] is taken apart along the 3 by a Gather or Split, so
    H carries the heads), the first part when all are blocked. Input position c belongs to
    head (c // stride) % d of that part; the other parts are blocked."""
    for node, x, i, y, jj, what in dg.pending_splits:
        n = dg.view.static_dim(x, i)
        dims = [dg.view.static_dim(y, j) for j in jj]
        chosen = jj[0]
        for j in jj:
            comp = nx.node_connected_component(dg.g, (y, j)) if (y, j) in dg.g else {(y, j)}
            if not any(dn in dg.blocked for dn in comp):
                chosen = j
                break
        k = jj.index(chosen)
        stride = int(np.prod(dims[k + 1:], dtype=np.int64))
        c = np.arange(n)
        dg.couple((x, i), (y, chosen), c, (c // stride) % dims[k])
        dg.head_axes.add((y, chosen))
        where = f"{node.op_type} '{node.name or node.output[0]}'"
        for j in jj:
            if j != chosen:
                dg.block((y, j), f"{where}: {what} splits an axis; only one of its parts is "
                                 "pruned")


def resolve_merges(dg: DependencyGraph, merges: list) -> None:
    """Couple every merged output axis to the one input axis that carries prunable units.

    Output position q of a merge of axes (d0, d1, ..., dk) corresponds to input coordinate
    (q // stride_j) % d_j on axis j. Coupling more than one input axis this way would tie
    unrelated units together, so exactly one axis is chosen: the only one of size > 1, else the
    only one whose group carries weights (the channel axis of a Flatten before a Gemm). A merge
    where that does not decide (several axes carry weights, or none yet) waits for the others;
    then it takes the choice of a merge of the same sizes whose output is coupled to its own (a
    weight reshaped like the activation it multiplies: tf2onnx's einsum rewrite), else its
    outermost axis, so whole blocks of the inner ones go together (a head and its features, as
    a channel and its h·w features under Flatten). All other axes of the merge are blocked.
    """
    resolved: list[tuple] = []  # (output dim node, sizes of the big parts, chosen big index)
    pending = []
    for m in merges:
        if _merge_sizes(dg, *m) is None:
            _block_merge(dg, *m, "merges axes of unknown size")
        else:
            pending.append(m)
    rule = "forced"
    while pending:
        for m in list(pending):  # one pass in graph order
            chosen = _choose(dg, m, rule, resolved)
            if chosen is None:
                continue
            _couple_merge(dg, *m, chosen, resolved)
            pending.remove(m)
            if rule != "forced":
                break  # its couplings may decide the others: forced choices first again
        else:
            if rule == "outermost":
                break
            rule = "match" if rule == "forced" else "outermost"
            continue
        rule = "forced"
    for m in pending:
        _block_merge(dg, *m, "merges several prunable axes")


def _merge_sizes(dg, node, out, out_axis, parts):
    sizes = [dg.view.static_dim(t, a) for t, a in parts]
    if any(s is None for s in sizes) or dg.view.static_dim(out, out_axis) is None:
        return None
    return sizes


def _choose(dg, m, rule, resolved) -> int | None:
    node, out, out_axis, parts = m
    sizes = _merge_sizes(dg, *m)
    big = [i for i, n in enumerate(sizes) if n > 1]
    if not big:
        return None if rule != "outermost" else 0
    if rule == "forced":
        if len(big) == 1:
            return big[0]
        carrying = [i for i in big if _component_has_weight(dg, parts[i])]
        return carrying[0] if len(carrying) == 1 else None
    if rule == "match":
        key = tuple(sizes[i] for i in big)
        comp = None
        for dn, other, k in resolved:
            if other != key:
                continue
            if comp is None:
                comp = nx.node_connected_component(dg.g, (out, out_axis))
            if dn in comp:
                return big[k]
        return None
    return big[0]


def _block_merge(dg, node, out, out_axis, parts, why) -> None:
    where = f"{node.op_type} '{node.name or node.output[0]}'"
    for t, a in parts:
        dg.block((t, a), f"{where}: {why}")
    dg.block((out, out_axis), f"{where}: {why}")


def _couple_merge(dg, node, out, out_axis, parts, chosen, resolved) -> None:
    sizes = _merge_sizes(dg, node, out, out_axis, parts)
    big = [i for i, n in enumerate(sizes) if n > 1]
    if chosen in big:
        resolved.append(((out, out_axis), tuple(sizes[i] for i in big), big.index(chosen)))
    where = f"{node.op_type} '{node.name or node.output[0]}'"
    stride = int(np.prod(sizes[chosen + 1:], dtype=np.int64))
    q = np.arange(dg.view.static_dim(out, out_axis))
    src = (q // stride) % sizes[chosen]
    t, a = parts[chosen]
    dg.couple((t, a), (out, out_axis), src, q)
    for i, (t2, a2) in enumerate(parts):
        if i != chosen and sizes[i] > 1:
            dg.block((t2, a2), f"{where}: merged with another axis")
