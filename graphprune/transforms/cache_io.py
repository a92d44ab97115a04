"""The KV-cache inputs and outputs of a decoder after attention blocks were dropped.

A dropped attention block leaves its layer's past/present pair behind: the present outputs are
still computed (they are graph outputs) and the past inputs still declared. `drop_dead_cache`
removes both, then renumbers the remaining layers ``0 .. L'-1`` (runtimes such as ONNX
Runtime GenAI name the cache ``past_key_values.%d.key`` for d < num_hidden_layers). A past
input that only lends its size to a `Shape` (the dynamo exporter reads the batch size and the
past length from one layer's cache for all layers) is first replaced there by a kept input
with the same symbolic sizes.
"""
from __future__ import annotations

import onnx

from ..ir import attr, subgraph_outer_names
from ..ir.cache import IoChanges, cache_tensors
from .depth import remove_dead_code


def _live_nodes(model: onnx.ModelProto, roots: set[str]) -> set[int]:
    producer = {o: k for k, n in enumerate(model.graph.node) for o in n.output if o}
    live, stack = set(), [producer[r] for r in roots if r in producer]
    while stack:
        k = stack.pop()
        if k in live:
            continue
        live.add(k)
        node = model.graph.node[k]
        for i in list(node.input) + sorted(subgraph_outer_names(node)):
            if i in producer:
                stack.append(producer[i])
    return live


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _substitute(model, name: str, window: tuple[int, int], keep: set[str]) -> str | None:
    """A kept graph input whose declared sizes over `window` equal those of input `name`."""
    ins = {vi.name: vi for vi in model.graph.input}
    want = _dims(ins[name])[window[0]:window[1]]
    if not want or any(d is None for d in want):
        return None
    for cand in sorted(keep, key=lambda n: (not n.startswith("past"), n)):
        dims = _dims(ins[cand])[window[0]:window[1]] if cand in ins else []
        if dims == want:
            return cand
    return None


def _rewire_shapes(model, dead: set[str], keep: set[str]) -> None:
    for node in model.graph.node:
        if node.op_type != "Shape" or node.input[0] not in dead:
            continue
        r = len(_dims(next(v for v in model.graph.input if v.name == node.input[0])))
        start, end = int(attr(node, "start", 0)), attr(node, "end", None)
        start = start + r if start < 0 else start
        end = r if end is None else (int(end) + r if int(end) < 0 else min(int(end), r))
        sub = _substitute(model, node.input[0], (start, end), keep)
        if sub is not None:
            node.input[0] = sub


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = names.get(vi.name, vi.name)
    for node in g.node:
        for i, x in enumerate(node.input):
            node.input[i] = names.get(x, x)
        for i, x in enumerate(node.output):
            node.output[i] = names.get(x, x)


def drop_dead_cache(model: onnx.ModelProto) -> IoChanges:
    """Remove the cache pairs of layers whose attention is gone and renumber the others."""
    g = model.graph
    cache = cache_tensors(model)
    presents = {c.name for c in cache if c.io == "output"}
    if not presents:
        return IoChanges()
    live = _live_nodes(model, {o.name for o in g.output if o.name not in presents})
    produced_live = {o for k in live for o in g.node[k].output}
    dead_out = {n for n in presents if n not in produced_live}
    if not dead_out:
        return IoChanges()
    dead_layers = {c.layer for c in cache if c.name in dead_out}
    outs = [o for o in g.output if o.name not in dead_out]
    del g.output[:]
    g.output.extend(outs)
    remove_dead_code(model)
    pasts = [c for c in cache if c.io == "input"]
    dead_in = {c.name for c in pasts if c.layer in dead_layers}
    _rewire_shapes(model, dead_in, {c.name for c in pasts} - dead_in)
    used = {i for n in g.node for i in n.input} | {
        x for n in g.node for x in subgraph_outer_names(n)}
    removed = set(dead_out) | {n for n in dead_in if n not in used}
    ins = [i for i in g.input if i.name not in removed]
    del g.input[:]
    g.input.extend(ins)
    kept_layers = sorted({c.layer for c in cache if c.name not in removed})
    number = {old: new for new, old in enumerate(kept_layers)}
    names = {c.name: c.renamed(number[c.layer]) for c in cache
             if c.name not in removed and number[c.layer] != c.layer}
    _rename(model, names)
    return IoChanges(removed=removed, renamed=names)
