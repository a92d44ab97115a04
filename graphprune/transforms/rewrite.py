"""Rewrite: physically shrink the model according to a plan.

1. Every constant axis in a pruned group is sliced (`np.take` of the kept positions).
2. Every node's rule fixes what depends on sizes (Conv `group`, Reshape/Split/Slice/Expand/Resize
   constants, Gather indices).
3. Stale value_info of shrunk tensors is dropped; shapes are re-inferred by validation.
4. Graph inputs/outputs that shrank (only a KV cache's head axis can: see
   `graphprune.analysis.graph.Policy.cache_heads`) declare their new size.

Constant inputs rewritten by a rule are edited in place when only that node reads them and copied
under a fresh name otherwise, so a shared shape constant never changes under another node.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..analysis.graph import DependencyGraph
from ..ir import GraphView, attr, quant, subgraph_outer_names
from ..ir.shapes import inference_copy
from ..ops.registry import lookup
from .select import Plan


def keep_positions(dg: DependencyGraph, plan: Plan) -> dict[tuple[str, int], np.ndarray]:
    """Kept positions of every (tensor, axis) that shrinks."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for gid, kept_units in plan.keep.items():
        grp = dg.groups[gid]
        for dn, units in grp.unit_of.items():
            pos = np.flatnonzero(np.isin(units, kept_units))
            if len(pos) < len(units):
                out[dn] = pos
    return out


class RewriteContext:
    """What a rule sees while fixing one node after pruning."""

    def __init__(self, rw: "Rewriter", node: onnx.NodeProto):
        self.rw = rw
        self.view = rw.view
        self.node = node

    @property
    def inputs(self):
        return list(self.node.input)

    @property
    def outputs(self):
        return list(self.node.output)

    def attr(self, name, default=None):
        return attr(self.node, name, default)

    def opset(self) -> int:
        return self.view.opset.get("ai.onnx", 1)

    def rank(self, name):
        return self.view.rank(name)

    def keep(self, name: str, axis: int) -> np.ndarray | None:
        return self.rw.keep.get((name, axis))

    def old_dim(self, name: str, axis: int) -> int | None:
        return self.view.static_dim(name, axis)

    def last_axis_cut(self, name: str) -> tuple[np.ndarray, int] | None:
        """(kept positions, original size) of tensor `name`'s last axis where it shrank (the
        feature axis norms take their statistics over), else None."""
        last = (self.rank(name) or 0) - 1
        kept, old = self.keep(name, last), self.old_dim(name, last)
        return (kept, old) if kept is not None and old else None

    def new_dim(self, name: str, axis: int) -> int | None:
        k = self.keep(name, axis)
        return int(len(k)) if k is not None else self.old_dim(name, axis)

    def const(self, name: str) -> np.ndarray | None:
        """The *original* value of a constant input."""
        return self.rw.original_const(name)

    def virtual_name(self, suffix: str) -> str:
        return f"{self.node.name or self.node.output[0]}::{suffix}"

    def known(self, name: str) -> np.ndarray | None:
        """For a run-time shape vector: which entries are known statically (None if all are)."""
        p = self.view.partial.get(name)
        return None if p is None else p[1]

    def set_attr(self, name: str, value) -> None:
        for i, a in enumerate(self.node.attribute):
            if a.name == name:
                del self.node.attribute[i]
                break
        self.node.attribute.append(helper.make_attribute(name, value))

    def del_attr(self, name: str) -> None:
        for i, a in enumerate(self.node.attribute):
            if a.name == name:
                del self.node.attribute[i]
                return

    def set_input(self, idx: int, value: np.ndarray) -> None:
        self.rw.set_node_const(self.node, idx, value)

    def gather_input(self, idx: int, axis: int, positions: np.ndarray) -> None:
        """Read input `idx` through a Gather of `positions` along `axis`, inserted before the
        node (an input whose size the pruning does not change, read by a node that now takes
        fewer positions: a recurrent op's initial state fed from outside)."""
        name = self.node.input[idx]
        out = self.rw.fresh_name(f"{name}_kept")
        indices = self.rw.fresh_name(f"{out}_indices")
        self.rw.add_initializer(indices, np.asarray(positions, dtype=np.int64))
        self.rw.inserts.append((self.node, helper.make_node("Gather", [name, indices], [out],
                                                            name=out, axis=axis)))
        self.node.input[idx] = out

    def scale_input(self, idx: int, factor: float) -> None:
        """Read input `idx` multiplied by `factor`, through a Mul inserted before the node (in
        the input's own type: the factor goes through CastLike from opset 15 on, float32
        before)."""
        name = self.node.input[idx]
        out = self.rw.fresh_name(f"{name}_scaled")
        const = self.rw.fresh_name(f"{out}_factor")
        self.rw.add_initializer(const, np.asarray(factor, dtype=np.float32))
        if self.opset() >= 15:
            cast = self.rw.fresh_name(f"{const}_like")
            self.rw.inserts.append((self.node, helper.make_node(
                "CastLike", [const, name], [cast], name=cast)))
            const = cast
        self.rw.inserts.append((self.node, helper.make_node("Mul", [name, const], [out],
                                                            name=out)))
        self.node.input[idx] = out

    def add_input(self, value: np.ndarray, suffix: str) -> None:
        while len(self.node.input) < 1:
            self.node.input.append("")
        name = self.rw.fresh_name(f"{self.node.name or self.node.output[0]}_{suffix}")
        self.rw.add_initializer(name, value)
        self.node.input.append(name)


class Rewriter:
    def __init__(self, view: GraphView, keep: dict[tuple[str, int], np.ndarray]):
        self.view = view
        self.model = view.model
        self.keep = keep
        self._orig: dict[str, np.ndarray] = {}
        self.inserts: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
        self.written: set[str] = set()  # tensors given new values (their value_info is stale)
        self._names = {t.name for t in self.model.graph.initializer}
        for n in self.model.graph.node:
            self._names.update(n.output)
            self._names.update(n.input)
            self._names.add(n.name)  # new nodes get fresh names too (a later --steps round)

    # ----------------------------------------------------------------- helpers
    def original_const(self, name: str) -> np.ndarray | None:
        if name not in self._orig:
            if name in self.view.consts:
                v = self.view.const_value(name)
            elif name in self.view.partial:
                v = self.view.partial[name][0]
            else:
                v = self.view.folded.get(name)
            self._orig[name] = None if v is None else np.array(v)
        return self._orig[name]

    def fresh_name(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add_initializer(self, name: str, value: np.ndarray) -> None:
        t = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(t)
        if self.model.ir_version < 4:  # old IR: every initializer is also a graph input
            self.model.graph.input.append(
                helper.make_tensor_value_info(name, t.data_type, list(t.dims)))

    def set_node_const(self, node: onnx.NodeProto, idx: int, value: np.ndarray) -> None:
        """Give a node input a new value: in place for a private constant, as a new initializer
        for a shared or computed one, or — for a run-time shape vector whose known entries
        changed — as `Where(known, new, computed)` so its run-time entries still flow."""
        name = node.input[idx]
        users = self.view.consumers.get(name, [])
        if name in self.view.partial:
            old, known = self.view.partial[name]
            changed = known & (np.asarray(value) != old)
            if changed.any():  # every known entry: those the rule left are pinned to their
                # original value (a head size computed from a hidden size that shrank)
                self.patch_entries(node, idx, known, np.asarray(value))
            return
        if len(users) == 1 and name not in self.view.graph_outputs and name in self.view.consts:
            self.write_const(name, value)
        else:
            new = self.fresh_name(f"{name}_pruned")
            self.add_initializer(new, value)
            node.input[idx] = new

    def patch_entries(self, node: onnx.NodeProto, idx: int, where: np.ndarray,
                      value: np.ndarray) -> None:
        """Replace some entries of a computed 1-D input with constants, before `node`."""
        name = node.input[idx]
        base = self.fresh_name(f"{name}_patched")
        mask_name, val_name = self.fresh_name(base + "_mask"), self.fresh_name(base + "_value")
        self.add_initializer(mask_name, np.asarray(where, dtype=bool))
        self.add_initializer(val_name, np.asarray(value).astype(self.view.partial[name][0].dtype))
        patch = helper.make_node("Where", [mask_name, val_name, name], [base], name=base)
        self.view.shapes[base] = self.view.shapes.get(name)  # same vector, new entries
        self.inserts.append((node, patch))
        node.input[idx] = base

    def insert_pending(self) -> None:
        """Place patch nodes right before their consumers (keeps the graph sorted)."""
        if not self.inserts:
            return
        before: dict[int, list] = {}
        for consumer, new in self.inserts:
            before.setdefault(id(consumer), []).append(new)
        nodes = []
        for n in self.model.graph.node:
            nodes.extend(before.get(id(n), []))
            nodes.append(n)
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        self.inserts = []

    def write_const(self, name: str, value: np.ndarray) -> None:
        """Replace the value of a constant source, wherever it is stored (a block-quantized
        weight is quantized again: see `graphprune.ir.quant`)."""
        c = self.view.consts[name]
        value = np.asarray(value)
        self.written.add(name)
        if c.kind == "quantized":
            dtypes = {"scales": self.view.consts[c.proto.scales].dtype,
                      "zp": (self.view.consts[c.proto.zero_points].dtype
                             if c.proto.zero_points else None)}
            self.write_quantized(c.proto, quant.quantize(value.astype(np.float64), c.proto,
                                                         dtypes))
            return
        if c.kind == "initializer":
            store = self.view.store
            if store is not None and store.keeps(value):
                # a model whose weights stay on disk: the sliced weight is held once, as an
                # array, and streamed to the output's data file (the proto stays small)
                store.put(c.proto, value.astype(c.dtype, copy=False))
            else:
                c.proto.CopyFrom(numpy_helper.from_array(value.astype(c.dtype, copy=False), name))
            self._fix_ir3_input(name, c.proto)
        elif c.kind == "constant_node":
            node = c.proto
            for i in reversed(range(len(node.attribute))):
                if node.attribute[i].name.startswith("value"):
                    del node.attribute[i]
            node.attribute.append(helper.make_attribute(
                "value", numpy_helper.from_array(value.astype(c.dtype, copy=False))))
        else:
            raise AssertionError("ConstantOfShape fills are rewritten through their shape")
        self.view.forget_value(name)

    def write_quantized(self, qw: "quant.QuantWeight", parts: "quant.Parts") -> None:
        """Store a quantized weight's codes, scales and zero points (and reshape the views of
        its codes to the new size)."""
        ranks = {"codes": len(self.view.consts[qw.codes].shape),
                 "scales": len(self.view.consts[qw.scales].shape),
                 "zp": len(self.view.consts[qw.zero_points].shape) if qw.zero_points else 0}
        arrays = quant.stored(parts, ranks)
        for t, arr in arrays.items():
            self.write_const(t, arr)
        codes = arrays[qw.codes]
        for node, _ in qw.views:
            self.written.add(node.output[0])
            self.set_node_const(node, 1, np.array(
                [codes.shape[0], int(np.prod(codes.shape[1:]))], dtype=np.int64))
        self.view.forget_value(qw.name)

    def _fix_ir3_input(self, name: str, t: onnx.TensorProto) -> None:
        for vi in self.model.graph.input:
            if vi.name == name:
                vi.CopyFrom(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))

    # ----------------------------------------------------------------- passes
    def slice_constants(self) -> int:
        by_tensor: dict[str, list[tuple[int, np.ndarray]]] = {}
        for (name, axis), pos in self.keep.items():
            if name in self.view.consts:
                by_tensor.setdefault(name, []).append((axis, pos))
        for name, cuts in sorted(by_tensor.items()):
            c = self.view.consts[name]
            if c.kind == "quantized":  # rows and whole blocks exact, partial blocks re-quantized
                parts = quant.read_parts(c.proto, self.view.const_value)
                for axis, pos in sorted(cuts, key=lambda ap: ap[0]):
                    parts = quant.take(parts, axis, pos)
                self.write_quantized(c.proto, parts)
                continue
            if c.kind == "constant_of_shape":
                shape = list(c.shape)
                for axis, pos in cuts:
                    shape[axis] = len(pos)
                node = c.proto
                self.set_node_const(node, 0, np.array(shape, dtype=np.int64))
                continue
            val = self.view.const_value(name)
            for axis, pos in cuts:
                val = np.take(val, pos, axis=axis)
            self.write_const(name, val)
        return len(by_tensor)

    def fix_nodes(self) -> None:
        for node in list(self.model.graph.node):
            r = lookup(node.op_type, node.domain)
            if r is not None:
                r.rewrite(RewriteContext(self, node))

    def pin_shape_computations(self) -> int:
        """Inputs computed from the sizes of tensors that shrank get their original value as a
        constant (rules that needed a new value have already replaced them): run-time shape
        arithmetic must not see the pruned sizes where nothing accounted for them."""
        shrunk = {name for name, _ in self.keep}
        folded = self.view.folded
        pinned = 0
        for node in list(self.model.graph.node):
            if node.output and (node.output[0] in folded or node.output[0] in self.view.partial):
                continue  # part of the computation itself
            for idx, name in enumerate(node.input):
                if not self.view.folded_reads.get(name, set()) & shrunk:
                    continue
                if name in folded:
                    new = self.fresh_name(f"{name}_static")
                    self.add_initializer(new, folded[name])
                    node.input[idx] = new
                    pinned += 1
                elif name in self.view.partial:
                    old, known = self.view.partial[name]
                    self.patch_entries(node, idx, known, old)
                    pinned += 1
        for node in self.model.graph.node:
            # the shape of a weight is a constant: the weight (or the copy of it only this
            # node read) need not be kept for it
            if (node.op_type in ("Shape", "Size") and node.input and node.input[0] in
                    self.view.consts and node.output[0] in folded):
                const = helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                         value=numpy_helper.from_array(folded[node.output[0]]))
                node.CopyFrom(const)
                pinned += 1
        outputs = {o.name for o in self.model.graph.output}
        for node in self.model.graph.node:
            name = node.output[0] if node.output else ""
            if name in outputs and name in folded and self.view.folded_reads.get(name, set()) & shrunk:
                # a graph output computed from pruned sizes: it becomes its original value
                const = helper.make_node("Constant", [], [name], name=node.name,
                                         value=numpy_helper.from_array(folded[name]))
                node.CopyFrom(const)
                pinned += 1
        return pinned

    def drop_stale_value_info(self) -> None:
        """Shapes recorded for shrunk tensors are stale. Where the model carried them (dynamo
        exports do), fresh ones are inferred: ONNX Runtime's shape-dependent fusions (e.g.
        Slice→Split in rotary embeddings) need them."""
        shrunk = {name for name, _ in self.keep} | self.written
        stale = [vi.name for vi in self.model.graph.value_info if vi.name in shrunk]
        vis = [vi for vi in self.model.graph.value_info if vi.name not in shrunk]
        del self.model.graph.value_info[:]
        self.model.graph.value_info.extend(vis)
        if stale:
            try:
                inferred = onnx.shape_inference.infer_shapes(inference_copy(self.model),
                                                             data_prop=True)
            except Exception:
                return
            fresh = {vi.name: vi for vi in inferred.graph.value_info}
            self.model.graph.value_info.extend(fresh[n] for n in stale if n in fresh)


def _node_key(node: onnx.NodeProto) -> tuple:
    return (node.op_type, node.name, tuple(node.output))


def dead_nodes(model: onnx.ModelProto) -> set[tuple]:
    """Keys of the nodes whose outputs nothing reads (transitively), and the initializers
    only they read (as ("", name, ()) keys)."""
    g = model.graph
    needed = {o.name for o in g.output}
    live = set()
    for node in reversed(g.node):
        if any(o in needed for o in node.output if o):
            live.add(_node_key(node))
            needed.update(i for i in node.input if i)
            needed.update(subgraph_outer_names(node))
    dead = {_node_key(n) for n in g.node} - live
    dead |= {("", t.name, ()) for t in g.initializer if t.name not in needed}
    return dead


def drop_newly_dead(model: onnx.ModelProto, dead_before: set[tuple]) -> int:
    """Remove what the rewrite left unused (a Shape of a weight whose value was pinned, a
    weight copy only it read); what the input model already carried unused stays."""
    new = dead_nodes(model) - dead_before
    if not new:
        return 0
    g = model.graph
    keep_nodes = [n for n in g.node if _node_key(n) not in new]
    keep_inits = [t for t in g.initializer if ("", t.name, ()) not in new]
    dropped = {t.name for t in g.initializer if ("", t.name, ()) in new}
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    if dropped:
        inputs = [i for i in g.input if i.name not in dropped]
        del g.input[:]
        g.input.extend(inputs)
    return len(new)
def resize_graph_io(model: onnx.ModelProto, keep: dict[tuple[str, int], np.ndarray]
                    ) -> dict[str, tuple[int, np.ndarray]]:
    """Declare the new size of every graph input/output axis that shrank; returns them as
    name -> (axis, kept positions)."""
    changed = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        for (name, axis), pos in keep.items():
            if name != vi.name:
                continue
            changed[name] = (axis, pos)
            d = vi.type.tensor_type.shape.dim[axis]
            if d.HasField("dim_value"):
                d.dim_value = int(len(pos))
    return changed


def shapes_after(view: GraphView, keep: dict[tuple[str, int], np.ndarray]) -> dict:
    """The pruned model's shapes: every shape the analysis knew, with each shrunk axis at its
    kept size (no second round of shape inference or ONNX Runtime probing)."""
    shapes = dict(view.shapes)
    for (name, axis), pos in keep.items():
        s = shapes.get(name)
        if s is not None and axis < len(s):
            shapes[name] = s[:axis] + (int(len(pos)),) + s[axis + 1:]
    for name, like in view.same_shape.items():  # tensors added after the analysis
        if like in shapes:
            shapes[name] = shapes[like]
    return shapes


def rewrite(view: GraphView, dg: DependencyGraph, plan: Plan) -> tuple[dict, dict, dict]:
    """Apply a plan to `view.model` in place. Returns counts for the report, the shapes of
    the pruned model (see `shapes_after`) and the graph inputs/outputs that shrank
    (`resize_graph_io`)."""
    keep = keep_positions(dg, plan)
    rw = Rewriter(view, keep)
    # read original small constants before anything is overwritten
    for node in view.graph.node:
        for name in node.input:
            if name and ((name in view.consts and view.consts[name].numel <= 4096)
                         or name in view.folded or name in view.partial):
                rw.original_const(name)
    n_sliced = rw.slice_constants()
    rw.fix_nodes()
    pinned = rw.pin_shape_computations()
    rw.insert_pending()
    io = resize_graph_io(view.model, keep)
    rw.drop_stale_value_info()
    counts = {"tensors_sliced": n_sliced, "axes_shrunk": len(keep), "shape_values_pinned": pinned}
    return counts, shapes_after(view, keep), io
