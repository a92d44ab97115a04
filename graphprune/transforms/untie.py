"""Untie shared constants before analysis, tie identical copies back after the rewrite.

Exporters deduplicate identical constants: every zero bias of a randomly initialized model, or
every `[-1, 16]` shape tail, becomes ONE initializer read by many nodes. Analysis would then
couple every axis those nodes touch (a shared bias would tie the query projection to the MLP),
freezing or merging unrelated groups. So each extra reader gets its own copy first; after the
rewrite, copies whose values are still identical to the original are folded back into it, so
the output model shares exactly what it can.

Very large shared tensors (tied embeddings) stay shared: coupling their readers is the correct,
conservative answer, and copying them would cost memory. So do the parts of a block-quantized
weight (`graphprune.ir.quant`): its readers (a tied int4 LM head and embedding) read one
logical weight, which must shrink as one.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import GraphView

MAX_COPY_ELEMENTS = 4_000_000


def untie_shared_constants(model: onnx.ModelProto, view: GraphView | None = None
                           ) -> dict[str, str]:
    """Give every extra reader of a shared constant its own copy. Returns copy -> original.
    `view`: the model's current view, when the caller has one (it is stale afterwards)."""
    view = view if view is not None else GraphView(model)
    copies: dict[str, str] = {}
    taken = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        taken.update(n.output)
    new_inits = []
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x in view.consts:
                uses.setdefault(x, []).append((node, i))
    for name, c in view.consts.items():
        if c.kind not in ("initializer", "constant_node") or c.numel <= 1:
            continue
        if c.numel > MAX_COPY_ELEMENTS or name in view.graph_outputs or name in view.quant_storage:
            continue
        readers = uses.get(name, [])
        if len(readers) < 2:
            continue
        value = view.const_value(name)
        for k, (node, i) in enumerate(readers[1:], start=1):
            new = f"{name}__use{k}"
            while new in taken:
                new += "_"
            taken.add(new)
            new_inits.append(numpy_helper.from_array(np.asarray(value), new))
            node.input[i] = new
            copies[new] = name
    model.graph.initializer.extend(new_inits)
    if model.ir_version < 4:
        model.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits)
    return copies


def retie_identical(model: onnx.ModelProto, copies: dict[str, str],
                    view: GraphView | None = None) -> int:
    """Point readers of copies that still equal their original back to it; drop the copies.
    `view`: a view whose constants still describe the copies (the rewrite's, which edits
    constants in place), when the caller has one."""
    if not copies:
        return 0
    view = view if view is not None else GraphView(model)
    back: dict[str, str] = {}
    for copy, orig in copies.items():
        if copy not in view.consts or orig not in view.consts:
            continue
        if view.consts[copy].kind != "initializer":
            continue
        a, b = view.const_value(copy), view.const_value(orig)
        if a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b):
            back[copy] = orig
    if not back:
        return 0
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x in back:
                node.input[i] = back[x]
    keep = [t for t in model.graph.initializer if t.name not in back]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    if model.ir_version < 4:
        inputs = [i for i in model.graph.input if i.name not in back]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return len(back)
