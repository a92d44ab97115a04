"""A thin, editable index over an `onnx.ModelProto` graph.

We keep the ModelProto itself as the source of truth (so metadata, doc strings, functions, opset
imports and graph I/O value_info survive untouched) and add the lookups the passes need:
producers, consumers, static shapes from shape inference, and *constant sources*.

A constant source is anything whose value is fixed at export time and that pruning may have to
slice: an initializer, the output of a `Constant` node, or the output of a `ConstantOfShape` whose
shape input is itself constant (some converters store weights that way). Treating all three alike
means no pass needs to know how a weight was stored. A block-quantized weight (MatMulNBits,
GatherBlockQuantized: `graphprune.ir.quant`) is one more: a logical constant
``<codes>::dequantized`` [N, K] whose value is dequantized from its stored parts.
"""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from . import quant

Dim = int | str | None  # a static size, a symbolic name, or None when unknown

# The weights of a model loaded lazily (see `storage.WeightStore`): external data files stay on
# disk and are read one tensor at a time. The pipeline sets this for the duration of a run, so
# every GraphView built on the way (by any pass) can read the weights without each pass having
# to pass a folder around.
WEIGHTS: ContextVar = ContextVar("graphprune_weights", default=None)

# External tensors up to this many elements are kept after their first read (shape vectors,
# norms, biases); larger ones are read again when needed so weights are never all in memory.
CACHE_EXTERNAL_ELEMENTS = 1 << 16


@dataclass
class ConstSource:
    """Where a constant tensor lives and how to read/replace it."""

    name: str
    kind: str  # "initializer" | "constant_node" | "constant_of_shape" | "quantized"
    proto: object  # TensorProto (initializer), NodeProto (Constant / ConstantOfShape), QuantWeight
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def tensor_dtype(tp: onnx.TensorProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(tp.data_type)


class GraphView:
    """Lookups over the main graph of a model; rebuilt after every structural edit."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[Dim, ...]] | None = None,
                 store=None):
        self.model = model
        self.store = store if store is not None else WEIGHTS.get()
        self.graph = model.graph
        self.opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
            for name in subgraph_outer_names(node):
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in self.graph.output]
        self.consts: dict[str, ConstSource] = {}
        self._value_cache: dict[str, np.ndarray] = {}
        self.folded: dict[str, np.ndarray] = {}  # statically computable values (see fold.py)
        self.folded_reads: dict[str, set[str]] = {}  # folded value -> tensors whose sizes it read
        self.partial: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # (value, known mask)
        self.same_shape: dict[str, str] = {}  # tensor added by a pass -> one of its shape
        self._collect_consts()
        # block-quantized weights: logical name -> QuantWeight, reading node output -> name
        self.quant, self.quant_of = quant.find(self)
        self.quant_storage = {t for q in self.quant.values() for t in q.storage}
        for name, q in self.quant.items():
            self.consts[name] = ConstSource(name, "quantized", q, (q.n, q.k),
                                            np.dtype(self.consts[q.scales].dtype))
        self.shapes: dict[str, tuple[Dim, ...]] = dict(shapes or {})
        for name, c in self.consts.items():
            self.shapes[name] = tuple(c.shape)

    # ------------------------------------------------------------------ constants
    def _collect_consts(self) -> None:
        for t in self.graph.initializer:
            self.consts[t.name] = ConstSource(t.name, "initializer", t, tuple(t.dims), tensor_dtype(t))
        for node in self.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                t = _attr(node, "value")
                if isinstance(t, onnx.TensorProto):
                    self.consts[node.output[0]] = ConstSource(
                        node.output[0], "constant_node", node, tuple(t.dims), tensor_dtype(t))
                else:  # value_float(s)/value_int(s)/... : small scalars or vectors
                    val = self._constant_attr_value(node)
                    if val is not None:
                        self.consts[node.output[0]] = ConstSource(
                            node.output[0], "constant_node", node, val.shape, val.dtype)
        for node in self.graph.node:
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
                shp = self.const_value(node.input[0]) if node.input[0] in self.consts else None
                if shp is None:
                    continue
                fill = _attr(node, "value")
                dtype = tensor_dtype(fill) if fill is not None else np.dtype(np.float32)
                self.consts[node.output[0]] = ConstSource(
                    node.output[0], "constant_of_shape", node, tuple(int(d) for d in shp), dtype)

    @staticmethod
    def _constant_attr_value(node: onnx.NodeProto) -> np.ndarray | None:
        for a in node.attribute:
            v = onnx.helper.get_attribute_value(a)
            if a.name == "value":
                return numpy_helper.to_array(v)
            if a.name == "value_float":
                return np.array(v, dtype=np.float32)
            if a.name == "value_floats":
                return np.array(list(v), dtype=np.float32)
            if a.name == "value_int":
                return np.array(v, dtype=np.int64)
            if a.name == "value_ints":
                return np.array(list(v), dtype=np.int64)
        return None

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of a constant source (materialized; cached). None if not constant."""
        if name in self._value_cache:
            return self._value_cache[name]
        c = self.consts.get(name)
        if c is None:
            return None
        if c.kind == "initializer" and c.proto.data_location == onnx.TensorProto.EXTERNAL:
            from .storage import read_external_tensor

            val = read_external_tensor(c.proto, self.store)
            if c.numel > CACHE_EXTERNAL_ELEMENTS:
                return val
        elif c.kind == "quantized":
            val = quant.dequantize(quant.read_parts(c.proto, self.const_value))
            if c.numel > CACHE_EXTERNAL_ELEMENTS:
                return val
        elif c.kind == "initializer":
            val = numpy_helper.to_array(c.proto)
        elif c.kind == "constant_node":
            val = self._constant_attr_value(c.proto)
        else:
            fill = _attr(c.proto, "value")
            fill_v = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
            val = np.full(c.shape, fill_v, dtype=c.dtype)
        self._value_cache[name] = val
        return val

    def small_const(self, name: str, limit: int = 4096) -> np.ndarray | None:
        """Value of a small constant (shape vectors, axes, split sizes), including values
        computed from static sizes at analysis time; None otherwise."""
        c = self.consts.get(name)
        if c is None:
            return self.folded.get(name)
        if c.numel > limit:
            return None
        return self.const_value(name)

    def forget_value(self, name: str) -> None:
        self._value_cache.pop(name, None)
        for q in self.quant.values():
            if name in q.storage:
                self._value_cache.pop(q.name, None)

    def quantized(self, node: onnx.NodeProto) -> "quant.QuantWeight | None":
        """The block-quantized weight a MatMulNBits / GatherBlockQuantized node reads."""
        name = self.quant_of.get(node.output[0]) if node.output else None
        return self.quant.get(name) if name else None

    # ------------------------------------------------------------------ shapes
    def set_shapes(self, shapes: dict[str, tuple[Dim, ...]]) -> None:
        """Replace the known shapes (constants keep their own): what shape inference learns
        after folding changes no structure, so the view is kept."""
        self.shapes = dict(shapes)
        for name, c in self.consts.items():
            self.shapes[name] = tuple(c.shape)

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name: str, axis: int) -> Dim:
        s = self.shapes.get(name)
        if s is None or not 0 <= axis < len(s):  # a negative axis is a caller's bug, not -1
            return None
        return s[axis]

    def static_dim(self, name: str, axis: int) -> int | None:
        d = self.dim(name, axis)
        return d if isinstance(d, int) else None


def subgraph_outer_names(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for a in node.attribute:
        graphs: Iterable[onnx.GraphProto] = ()
        if a.type == onnx.AttributeProto.GRAPH:
            graphs = [a.g]
        elif a.type == onnx.AttributeProto.GRAPHS:
            graphs = list(a.graphs)
        for g in graphs:
            names |= _outer_names(g)
    return names


def _outer_names(g: onnx.GraphProto) -> set[str]:
    local = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        local |= set(n.output)
    used: set[str] = set()
    for n in g.node:
        used |= {i for i in n.input if i}
        used |= subgraph_outer_names(n)
    used |= {o.name for o in g.output}
    return used - local


def shapes_from_model(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Static shapes of every value the (already inferred) model declares."""
    out: dict[str, tuple[Dim, ...]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            continue
        dims: list[Dim] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out[vi.name] = tuple(dims)
    return out


def attr(node: onnx.NodeProto, name: str, default=None):
    """Attribute value of a node by name (python types), or `default`."""
    return _attr(node, name, default)
