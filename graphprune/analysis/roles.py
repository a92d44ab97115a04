"""Roles of weights that are computed from constants.

Quantized and converted models rarely feed a weight straight from an initializer: QDQ models
dequantize an int8 tensor (`DequantizeLinear`), weight-only models cast and scale it
(`Cast → Mul`), converters reshape, transpose, slice and concatenate stored tensors at run time
(tf2onnx, paddle2onnx's recurrent weights). The op that reads such a weight states its role
(the filters of a Conv, the K axis of a MatMul) on the computed tensor; the role belongs to the
constants it is computed from, along the axes coupled to it.

`propagate_roles` walks the dependency graph from every such statement, through axes of tensors
computed from constants only, and gives the role to each constant axis it reaches that no rule
gave a role to (a rule marks scales and zero points as auxiliary, so they stay so).
"""
from __future__ import annotations

from ..ir import GraphView, subgraph_outer_names
from .graph import DependencyGraph

_NOT_FROM_VALUES = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}


def constant_derived(view: GraphView) -> set[str]:
    """Tensors whose values depend on constants only (constants, and shape computations that
    read static sizes, included)."""
    derived = set(view.consts) | set(view.folded)
    for node in view.graph.node:
        ins = [i for i in node.input if i]
        if (not ins or node.op_type in _NOT_FROM_VALUES or subgraph_outer_names(node)
                or node.domain not in ("", "ai.onnx", "com.microsoft")):
            continue
        if all(i in derived for i in ins):
            derived.update(o for o in node.output if o)
    return derived


def propagate_roles(dg: DependencyGraph) -> None:
    if not dg.pending_roles:
        return
    view = dg.view
    derived = constant_derived(view)
    for start, role in dg.pending_roles:
        if start[0] not in derived or start not in dg.g:
            continue
        seen, todo = {start}, [start]
        while todo:
            dn = todo.pop()
            if dn[0] in view.consts and dn not in dg.roles:
                dg.roles[dn] = role
            for nb in dg.g.neighbors(dn):
                if nb not in seen and nb[0] in derived:
                    seen.add(nb)
                    todo.append(nb)
