"""Walk a model stage by stage in ONNX Runtime, about one forward pass in all ("segments").

Sequential reconstruction and statistics correction (`graphprune.transforms.reconstruct`,
`graphprune.transforms.correct`) need, stage after stage in graph order, the values of a few
intermediate tensors on the calibration samples, both in the original model and in a variant
whose weights were edited by the stages before (the *masked* model). `Segments` runs only the
nodes the next taps need that no earlier call ran, fed with the tensors earlier calls kept;
`tap_model` builds the piece — those nodes, constants replaced by new values, optional bias
additions after a node. Reached by the transforms only through the `Segments` protocol of
`graphprune.calibration.stats` (`Runner.segments`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import subgraph_outer_names
from ..ir.inputs import feed_batches, input_specs, symbolic_batch
from .session import run_options, session

BATCH = 16


def _needed_nodes(graph: onnx.GraphProto, taps: list[str]) -> list[onnx.NodeProto]:
    """Nodes the taps depend on, in graph order."""
    producer = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            if o:
                producer[o] = i
    need: set[int] = set()
    stack = [producer[t] for t in taps if t in producer]
    while stack:
        i = stack.pop()
        if i in need:
            continue
        need.add(i)
        n = graph.node[i]
        for t in list(n.input) + sorted(subgraph_outer_names(n)):
            j = producer.get(t)
            if j is not None and j not in need:
                stack.append(j)
    return [graph.node[i] for i in sorted(need)]


def tap_model(model: onnx.ModelProto, taps: list[str],
              overrides: dict[str, np.ndarray] | None = None,
              adds: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A model computing only `taps` (as its outputs) from the graph inputs of `model`.

    `overrides`: new values of constants (initializers or `Constant` node outputs), same
    dtype as the original. `adds`: tensor name -> a constant added to it right after the node
    that produces it (a bias the original layer does not have; broadcastable to the tensor).
    `model` itself is not modified."""
    overrides = overrides or {}
    adds = adds or {}
    g = model.graph
    nodes = []
    for n in _needed_nodes(g, list(taps)):
        if n.op_type == "Constant" and n.output and n.output[0] in overrides:
            n = helper.make_node("Constant", [], [n.output[0]], name=n.name,
                                 value=numpy_helper.from_array(overrides[n.output[0]]))
        nodes.append(n)
    extra_nodes: list[tuple[int, onnx.NodeProto]] = []
    extra_inits = []
    for k, n in enumerate(nodes):
        for oi, o in enumerate(n.output):
            if o in adds:
                n2 = onnx.NodeProto()
                n2.CopyFrom(n)
                mid = f"{o}__taps_nobias"
                n2.output[oi] = mid
                nodes[k] = n2
                bname = f"{o}__taps_bias"
                extra_inits.append(numpy_helper.from_array(np.asarray(adds[o]), bname))
                extra_nodes.append((k, helper.make_node("Add", [mid, bname], [o],
                                                        name=f"{o}__taps_add")))
                n = n2
    for k, add in reversed(extra_nodes):
        nodes.insert(k + 1, add)
    used = set()
    for n in nodes:
        used.update(n.input)
        used.update(subgraph_outer_names(n))
    inits = []
    for t in g.initializer:
        if t.name not in used:
            continue
        if t.name in overrides:
            inits.append(numpy_helper.from_array(
                np.asarray(overrides[t.name]).astype(
                    helper.tensor_dtype_to_np_dtype(t.data_type), copy=False), t.name))
        else:
            inits.append(t)
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    if model.ir_version < 4:  # old IR: initializers must also be graph inputs
        inputs = [i for i in g.input if i.name not in init_names or i.name in used]
    present = {o for n in nodes for o in n.output} | {i.name for i in g.input}
    outputs = [helper.make_empty_tensor_value_info(t) for t in taps if t in present]
    vis = [v for v in g.value_info if v.name in present and v.name not in adds]
    graph = helper.make_graph(nodes, g.name or "taps", inputs, outputs, inits + extra_inits,
                              value_info=vis)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out


class Segments:
    """Runs a model piece by piece over fixed calibration batches: each `advance(taps)` runs
    only the nodes the taps need that no earlier call ran, fed with the tensors earlier calls
    kept (every computed tensor a node not yet run still reads). Walking a graph stage by
    stage this way costs about one forward pass in all, instead of one per stage.

    Constants (`overrides`, `adds`, see `tap_model`) apply to the nodes each call runs; a
    value computed by an earlier call is never recomputed, so a caller must only change
    weights of nodes no earlier call ran. Constant nodes are rerun wherever they are read."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                 batch: int = BATCH, threads: int = 0, provider: str | None = None):
        self.model = model
        self.threads = threads
        self.provider = provider
        g = model.graph
        init_names = {t.name for t in g.initializer}
        self.inputs = {i.name: i for i in g.input if i.name not in init_names}
        specs = [s for s in input_specs(model) if s.name in self.inputs]
        symbolic = symbolic_batch(specs)
        self.batches: list[dict[str, np.ndarray]] = []
        for chunk in feed_batches(specs, {k: v for k, v in feeds.items() if k in self.inputs}):
            n = len(next(iter(chunk.values())))
            for s in range(0, n, batch) if symbolic else [0]:
                self.batches.append({k: v[s:s + batch] for k, v in chunk.items()}
                                    if symbolic else chunk)
        self.done: set[int] = set()  # indices of nodes already run
        self.kept: dict[str, list[np.ndarray]] = {}  # tensor -> one array per batch
        self.producer = {}
        for i, n in enumerate(g.node):
            for o in n.output:
                if o:
                    self.producer[o] = i

    def _reads(self, n: onnx.NodeProto) -> list[str]:
        return [t for t in list(n.input) + sorted(subgraph_outer_names(n)) if t]

    def advance(self, taps: list[str], overrides: dict | None = None,
                adds: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Values of `taps`, batch by batch (a generator: consume it to the end)."""
        g = self.model.graph
        need: set[int] = set()
        stack = [self.producer[t] for t in taps if t in self.producer]
        while stack:
            i = stack.pop()
            if i in need or (i in self.done and g.node[i].input):
                continue
            need.add(i)
            for t in self._reads(g.node[i]):
                j = self.producer.get(t)
                if j is not None and t not in self.kept:
                    stack.append(j)
        order = sorted(need)
        produced = {o for i in order for o in g.node[i].output if o}
        fed = sorted({t for i in order for t in self._reads(g.node[i])
                      if t not in produced and (t in self.kept or t in self.inputs)})
        self.done |= {i for i in order if g.node[i].input}
        later = set()
        for i, n in enumerate(g.node):
            if i not in self.done:
                later.update(self._reads(n))
        free = {o for i in order if not g.node[i].input for o in g.node[i].output}
        keep_out = sorted((produced & later) - set(self.kept) - free)
        outs = list(dict.fromkeys([t for t in taps if t in produced] + keep_out))
        direct = [t for t in taps if t not in produced]
        sub = _segment_model(self.model, [g.node[i] for i in order], fed, outs, self,
                             overrides or {}, adds or {})
        sess = self._session(sub) if outs else None
        for b, feeds in enumerate(self.batches):
            vals = {}
            if sess is not None:
                inp = {t: (feeds[t] if t in self.inputs else self.kept[t][b]) for t in fed}
                vals = dict(zip(outs, sess.run(outs, inp, run_options())))
            for t in keep_out:
                self.kept.setdefault(t, []).append(vals[t])
            for t in direct:
                vals[t] = feeds[t] if t in self.inputs else self.kept[t][b]
            yield {t: vals[t] for t in taps}
        for t in list(self.kept):
            if t not in later:
                del self.kept[t]

    def _session(self, model: onnx.ModelProto):
        kw = {"threads": self.threads}
        if self.provider:
            kw["provider"] = self.provider
        return session(model, **kw)

    def update(self, name: str, fn) -> None:
        """Replace every kept batch value of `name` by `fn(value)` (a tensor later nodes read,
        corrected in place: the next calls feed the new values)."""
        if name in self.kept:
            self.kept[name] = [fn(v) for v in self.kept[name]]

    def dtype(self, name: str) -> int:
        if name in self.inputs:
            return self.inputs[name].type.tensor_type.elem_type
        return helper.np_dtype_to_tensor_dtype(self.kept[name][0].dtype)


def _segment_model(model: onnx.ModelProto, nodes: list, fed: list[str], outs: list[str],
                   seg: Segments, overrides: dict, adds: dict) -> onnx.ModelProto:
    """The nodes of one `Segments.advance` as a model: `fed` tensors become graph inputs."""
    full = onnx.ModelProto()
    full.ir_version = model.ir_version
    full.opset_import.extend(model.opset_import)
    full.functions.extend(model.functions)
    g = onnx.GraphProto()
    g.node.extend(nodes)
    reads = {t for n in nodes for t in list(n.input) + sorted(subgraph_outer_names(n))}
    g.initializer.extend(t for t in model.graph.initializer if t.name in reads)
    g.input.extend(helper.make_tensor_value_info(t, seg.dtype(t), None) for t in fed)
    g.output.extend(helper.make_empty_tensor_value_info(t) for t in outs)
    full.graph.CopyFrom(g)
    return tap_model(full, outs, overrides, adds) if outs else full
