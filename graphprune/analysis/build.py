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
from .units import build_groups


def _is_unknown_rank(view: GraphView, names) -> bool:
    return any(n and view.rank(n) is None for n in names)


KINDS = ("channels", "heads", "mlp", "hidden")


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
    return Policy(split="major" if "heads" in dims else "block",
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
    for m in merges:
        _resolve_merge(dg, *m)
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
        elif any(dn in dg.hidden_axes for dn in grp.dims):
            grp.kind = "hidden"
        elif dg.has_attention and not any(m.tensor in conv_weights for m in grp.members):
            grp.kind = "mlp"
        else:
            grp.kind = "channel"
        plural = {"head": "heads", "channel": "channels"}.get(grp.kind, grp.kind)
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


def _resolve_merge(dg: DependencyGraph, node, out: str, out_axis: int, parts) -> None:
    """Couple a merged output axis to the one input axis that carries prunable units.

    Output position q of a merge of axes (d0, d1, ..., dk) corresponds to input coordinate
    (q // stride_j) % d_j on axis j. Coupling more than one input axis this way would tie
    unrelated units together, so exactly one axis is chosen: the only one of size > 1, else the
    only one whose group carries weights (the channel axis of a Flatten before a Gemm). All other
    axes of the merge are blocked.
    """
    sizes = [dg.view.static_dim(t, a) for t, a in parts]
    where = f"{node.op_type} '{node.name or node.output[0]}'"
    out_size = dg.view.static_dim(out, out_axis)
    if any(s is None for s in sizes) or out_size is None:
        for t, a in parts:
            dg.block((t, a), f"{where}: merges axes of unknown size")
        dg.block((out, out_axis), f"{where}: merges axes of unknown size")
        return
    big = [i for i, s in enumerate(sizes) if s > 1]
    if len(big) == 1:
        chosen = big[0]
    else:
        carrying = [i for i in big if _component_has_weight(dg, parts[i])]
        chosen = carrying[0] if len(carrying) == 1 else None
    if chosen is None:
        for t, a in parts:
            dg.block((t, a), f"{where}: merges several prunable axes")
        dg.block((out, out_axis), f"{where}: merges several prunable axes")
        return
    stride = int(np.prod(sizes[chosen + 1:], dtype=np.int64))
    q = np.arange(out_size)
    src = (q // stride) % sizes[chosen]
    t, a = parts[chosen]
    dg.couple((t, a), (out, out_axis), src, q)
    for i, (t2, a2) in enumerate(parts):
        if i != chosen and sizes[i] > 1:
            dg.block((t2, a2), f"{where}: merged with another axis")
