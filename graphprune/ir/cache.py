"""The key/value cache of a decoder LLM as graph inputs and outputs.

Exporters that keep a KV cache (ONNX Runtime GenAI's builder, Hugging Face Optimum's
``text-generation-with-past``, a torch export with a flat cache) give the graph one input per
layer and key/value, ``past_key_values.{i}.key`` ``[batch, kv_heads, past, head_dim]``, and
one output ``present.{i}.key`` ``[batch, kv_heads, past + current, head_dim]`` (BNSH layout).
These are recognized by name and rank here: their head axis (1) shrinks with the key/value
heads, unlike every other graph input or output (see `graphprune.analysis`), and the inputs a
run needs follow the cache's contract (see `graphprune.ir.inputs`).

The head size is sometimes a symbol (the GenAI builder writes ``kv_cache_dim``): it is then
read from the attention op the cache feeds (the packed QKV width of GroupQueryAttention).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import attr

PAST = re.compile(r"^(past_key_values|past_key_value|past)([._])(\d+)([._])(key|value)$")
PRESENT = re.compile(r"^(present|present_key_values)([._])(\d+)([._])(key|value)$")
HEAD_AXIS = 1  # BNSH: [batch, heads, sequence, head_dim]
SEQ_AXIS = 2


@dataclass(frozen=True)
class CacheTensor:
    """One recognized cache input (``io="input"``, a past) or output (a present)."""

    name: str
    io: str
    layer: int
    kind: str  # "key" | "value"

    def renamed(self, layer: int) -> str:
        """The same name for another layer index (``past_key_values.3.key`` -> ``.1.key``)."""
        m = (PAST if self.io == "input" else PRESENT).match(self.name)
        return f"{m.group(1)}{m.group(2)}{layer}{m.group(4)}{m.group(5)}"


def _rank(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def cache_tensors(model: onnx.ModelProto) -> list[CacheTensor]:
    """The graph inputs and outputs that are a layer's past or present key/value (rank 4)."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    out = []
    for vis, io, pat in ((g.input, "input", PAST), (g.output, "output", PRESENT)):
        for vi in vis:
            m = pat.match(vi.name)
            if m and vi.name not in inits and _rank(vi) == 4:
                out.append(CacheTensor(vi.name, io, int(m.group(3)), m.group(5)))
    return out


def is_cache_name(name: str) -> bool:
    return bool(PAST.match(name) or PRESENT.match(name))


def past_layer(name: str) -> int | None:
    m = PAST.match(name)
    return int(m.group(3)) if m else None


def _width(model: onnx.ModelProto, name: str, declared: dict) -> int | None:
    """Static size of the last axis of `name`: declared, or read from its producer's weight."""
    s = declared.get(name)
    if s and isinstance(s[-1], int):
        return s[-1]
    prod = next((n for n in model.graph.node if name in n.output), None)
    if prod is None:
        return None
    if prod.op_type == "MatMulNBits":
        return int(attr(prod, "N", 0)) or None
    if prod.op_type in ("MatMul", "Add") and len(prod.input) == 2:
        inits = {t.name: t for t in model.graph.initializer}
        for i in prod.input[::-1]:
            if i in inits and inits[i].dims:
                return int(inits[i].dims[-1])
    return None


def cache_head_dims(model: onnx.ModelProto) -> dict[str, tuple[int | None, int | None]]:
    """(key/value heads, head size) of every past input whose declared shape leaves one of them
    symbolic, from the attention op that reads it (GroupQueryAttention, MultiHeadAttention)."""
    from .graph import shapes_from_model

    declared = None
    out: dict[str, tuple[int | None, int | None]] = {}
    for ct in cache_tensors(model):
        if ct.io != "input":
            continue
        vi = next(v for v in model.graph.input if v.name == ct.name)
        dims = vi.type.tensor_type.shape.dim
        kv = dims[1].dim_value if dims[1].HasField("dim_value") else None
        d = dims[3].dim_value if dims[3].HasField("dim_value") else None
        if kv is not None and d is not None:
            continue
        if declared is None:
            declared = shapes_from_model(model)
        for node in model.graph.node:
            if ct.name not in node.input:
                continue
            h = int(attr(node, "num_heads", 0))
            if node.op_type == "GroupQueryAttention":
                kvh = int(attr(node, "kv_num_heads", 0))
                kv = kv or kvh or None
                packed = len(node.input) < 3 or not node.input[1]
                w = _width(model, node.input[0], declared)
                if d is None and w and h and kvh:
                    d = w // (h + 2 * kvh) if packed else w // h
            elif node.op_type == "MultiHeadAttention":
                kv = kv or h or None
                w = _width(model, node.input[0], declared)
                if d is None and w and h:
                    d = w // h
        out[ct.name] = (kv, d)
    return out


@dataclass
class IoChanges:
    """How pruning changed the graph's inputs and outputs (only cache tensors ever change):
    tensors removed (the cache pair of a dropped attention block; original names), renamed
    (layers renumbered after a drop: original name -> new name) and axes shrunk (new name ->
    (axis, kept positions))."""

    kept: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.kept or self.removed or self.renamed)

    def apply(self, arrays: dict) -> dict:
        """Arrays keyed by original graph input/output names, as the pruned model takes or
        gives them (sliced, dropped, renamed; order kept)."""
        out = {}
        for k, v in arrays.items():
            if k in self.removed:
                continue
            k = self.renamed.get(k, k)
            if k in self.kept:
                axis, pos = self.kept[k]
                v = np.take(v, pos, axis=axis)
            out[k] = v
        return out
