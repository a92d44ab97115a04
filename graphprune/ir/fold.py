"""Static evaluation of small shape computations.

Exporters often compute split points, slice bounds or reshape targets at run time from `Shape`
(Shape → Gather → Div → Slice). When every size those computations read is static, their values
are known before running the model. Folding them lets the op rules treat such inputs like
constants; if pruning changes them, the rewrite replaces the computed input with a new constant
(valid for every input, because it only ever depended on static sizes).

Only small integer/float tensors are evaluated, with numpy, for the ops below.
"""
from __future__ import annotations

import numpy as np
import onnx

from .graph import GraphView, attr
from .shapes import infer_shapes, inference_copy

LIMIT = 4096


def _ints(v):
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _shape_dims(view, node) -> tuple | None:
    """The dims a Shape node reads (its `start`/`end` window), static or symbolic."""
    s = view.shape(node.input[0])
    if s is None:
        return None
    r = len(s)
    start = int(attr(node, "start", 0))
    end = attr(node, "end")
    start = start + r if start < 0 else start
    end = r if end is None else (int(end) + r if int(end) < 0 else int(end))
    return s[max(start, 0):min(end, r)]


def _shape(view, node, vals):
    dims = _shape_dims(view, node)
    if dims is None:
        return None
    return np.array([d if isinstance(d, int) else 1 for d in dims], dtype=np.int64)


def _shape_mask(view, node):
    return np.array([isinstance(d, int) for d in _shape_dims(view, node)], dtype=bool)


def _size(view, node, vals):
    s = view.shape(node.input[0])
    if s is None or any(not isinstance(d, int) for d in s):
        return None
    return np.array(int(np.prod(s, dtype=np.int64)), dtype=np.int64)


def _gather(view, node, vals):
    return np.take(vals[0], vals[1], axis=int(attr(node, "axis", 0)))


def _concat(view, node, vals):
    return np.concatenate([np.atleast_1d(v) for v in vals], axis=int(attr(node, "axis", 0)))


def _axes(node, vals, i):
    a = attr(node, "axes")
    if a is None and len(vals) > i:
        a = _ints(vals[i])
    return a


def _unsqueeze(view, node, vals):
    x = vals[0]
    axes = sorted(int(a) % (x.ndim + len(_axes(node, vals, 1))) for a in _axes(node, vals, 1))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


def _squeeze(view, node, vals):
    axes = _axes(node, vals, 1)
    return np.squeeze(vals[0], axis=None if axes is None else tuple(int(a) for a in axes))


def _slice(view, node, vals):
    x = vals[0]
    if len(vals) >= 3:
        starts, ends = _ints(vals[1]), _ints(vals[2])
        axes = _ints(vals[3]) if len(vals) > 3 else list(range(len(starts)))
        steps = _ints(vals[4]) if len(vals) > 4 else [1] * len(starts)
    else:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[int(a)] = slice(s, e, st)
    return x[tuple(idx)]


def _div(view, node, vals):
    a, b = vals
    if np.issubdtype(a.dtype, np.integer):
        return (a // b).astype(a.dtype)  # ONNX integer Div truncates; sizes are non-negative
    return a / b


def _cast(view, node, vals):
    return vals[0].astype(onnx.helper.tensor_dtype_to_np_dtype(int(attr(node, "to"))))


def _reshape(view, node, vals):
    return vals[0].reshape([d if d != 0 else vals[0].shape[i] for i, d in enumerate(_ints(vals[1]))])


def _range(view, node, vals):
    return np.arange(vals[0], vals[1], vals[2])


def _const_of_shape(view, node, vals):
    fill = attr(node, "value")
    v = onnx.numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
    shape = _ints(vals[0])
    if int(np.prod(shape, dtype=np.int64)) > LIMIT:
        return None
    return np.full(shape, v)


def _reduce(fn):
    def fold(view, node, vals):
        x = np.asarray(vals[0])
        axes = attr(node, "axes")
        if axes is None and len(vals) > 1 and vals[1] is not None:
            axes = _ints(vals[1])
        if not axes:
            if int(attr(node, "noop_with_empty_axes", 0)):
                return x
            axes = list(range(x.ndim))
        keep = bool(int(attr(node, "keepdims", 1)))
        return fn(x, axis=tuple(int(a) % max(x.ndim, 1) for a in axes), keepdims=keep)
    return fold


FOLDERS = {
    "Shape": _shape, "Size": _size, "Gather": _gather, "Concat": _concat,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Slice": _slice, "Cast": _cast,
    "Reshape": _reshape, "Range": _range, "ConstantOfShape": _const_of_shape,
    "Identity": lambda v, n, x: x[0],
    "Transpose": lambda v, n, x: np.transpose(x[0], attr(n, "perm")),
    "Add": lambda v, n, x: x[0] + x[1], "Sub": lambda v, n, x: x[0] - x[1],
    "Mul": lambda v, n, x: x[0] * x[1], "Div": _div, "Mod": lambda v, n, x: np.mod(x[0], x[1]),
    "Neg": lambda v, n, x: -x[0], "Abs": lambda v, n, x: np.abs(x[0]),
    "Max": lambda v, n, x: np.maximum.reduce(x), "Min": lambda v, n, x: np.minimum.reduce(x),
    "Equal": lambda v, n, x: np.equal(x[0], x[1]), "Where": lambda v, n, x: np.where(*x),
    "Floor": lambda v, n, x: np.floor(x[0]), "Ceil": lambda v, n, x: np.ceil(x[0]),
    # tf2onnx's Tensordot and flatten targets: ReduceProd over a slice of a shape vector
    "ReduceProd": _reduce(np.prod), "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max), "ReduceMin": _reduce(np.min),
}
NEEDS_NO_VALUES = {"Shape", "Size"}


# Ops whose output entries are a rearrangement of their first input's (all inputs' for Concat):
# an entry is known exactly when the entry it came from is known.
MOVE_OPS = {"Gather", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast"}
# Elementwise ops: an entry is known when every input entry it combines is known.
POINTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Equal", "Where",
                 "Floor", "Ceil"}


def fold_static_values(view: GraphView) -> dict[str, np.ndarray]:
    """Values of node outputs computable now from constants and static sizes.

    Shape vectors of tensors with symbolic sizes are *partially* known ([batch, seq, 4, 16] with
    batch and seq unknown); partial values are kept in `view.partial` as (value, known-mask)
    pairs so rules can read the known entries. Fully known values are returned (and kept in
    `view.folded`). `view.folded_reads` records which tensors' sizes each value was computed
    from, so the rewrite can pin values whose source tensors shrink.
    """
    vals: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    reads: dict[str, set[str]] = {}

    def value(name):
        if name in vals:
            return vals[name], masks[name]
        if name in view.consts:
            v = view.small_const(name, LIMIT)
            if v is not None:
                return v, np.ones(np.shape(v), dtype=bool)
        return None

    for node in view.graph.node:
        fn = FOLDERS.get(node.op_type)
        if fn is None or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.output[0] in view.consts:
            continue
        if node.op_type in NEEDS_NO_VALUES:
            ins, ms = [], []
            if view.shape(node.input[0]) is None:
                continue
        else:
            got = [value(i) if i else None for i in node.input]
            if not got or any(g is None for g, i in zip(got, node.input) if i):
                continue
            ins = [g[0] if g is not None else None for g in got]
            ms = [g[1] if g is not None else None for g in got]
            if any(np.asarray(v).size > LIMIT for v in ins if v is not None):
                continue
        try:
            out = fn(view, node, ins)
            mask = _out_mask(view, node, fn, ins, ms, out)
        except Exception:  # anything unusual: leave it dynamic
            continue
        if out is None or mask is None or np.asarray(out).size > LIMIT:
            continue
        vals[node.output[0]] = np.asarray(out)
        masks[node.output[0]] = np.broadcast_to(mask, np.shape(out)).copy()
        src = {node.input[0]} if node.op_type in NEEDS_NO_VALUES else set()
        for i in node.input:
            src |= reads.get(i, set())
        reads[node.output[0]] = src
    view.folded_reads = reads
    view.partial = {k: (v, masks[k]) for k, v in vals.items() if not masks[k].all()}
    return {k: v for k, v in vals.items() if masks[k].all()}


def _out_mask(view, node, fn, ins, ms, out):
    """Known-mask of an op's output, or None when a partially known input makes it unknowable."""
    op = node.op_type
    if op == "Shape":
        return _shape_mask(view, node)
    if all(m is None or m.all() for m in ms):
        return np.ones(np.shape(out), dtype=bool)
    if op == "Concat":
        return np.concatenate([np.atleast_1d(m) for m in ms], axis=int(attr(node, "axis", 0)))
    if op.startswith("Reduce"):  # an entry is known when every entry it reduces is
        return _reduce(np.all)(view, node, [ms[0]] + ins[1:])
    if op in MOVE_OPS:
        if any(m is not None and not m.all() for m in ms[1:]):
            return None  # indices/params themselves partly unknown
        if op == "Cast":
            return ms[0]
        return np.asarray(fn(view, node, [ms[0]] + ins[1:])).astype(bool)
    if op in POINTWISE_OPS:
        return np.logical_and.reduce(np.broadcast_arrays(*[m for m in ms if m is not None]))
    return None


def static_view(model: onnx.ModelProto, shapes: dict, probe=None) -> GraphView:
    """A GraphView whose shapes also use folded values.

    ONNX shape inference cannot see through run-time shape computations; once their values are
    folded, inference is re-run on a scratch copy in which they are plain initializers. Sizes
    still unknown after that can be observed by running the model: `probe(model, shapes)`
    (supplied by the caller, e.g. `graphprune.runtime.probe.probe_shapes`) returns them.
    """
    view = GraphView(model, shapes)
    view.folded = fold_static_values(view)
    merged = refine_shapes(model, shapes, view.folded) if view.folded else shapes
    probed = probe(model, merged) if probe is not None else {}
    if not view.folded and not probed:
        return view
    if probed:
        merged = merge_probed(merged, probed)
    view.set_shapes(merged)
    view.folded = fold_static_values(view)
    return view


def refine_shapes(model: onnx.ModelProto, shapes: dict, folded: dict) -> dict:
    """Shapes re-inferred with the folded values as initializers (never losing what the first
    inference knew)."""
    scratch = inference_copy(model)
    folded_names = set(folded)
    keep_nodes = [n for n in scratch.graph.node if not (n.output and n.output[0] in folded_names)]
    produced = {o for n in keep_nodes for o in n.output}
    used = {i for n in keep_nodes for i in n.input}
    del scratch.graph.node[:]
    scratch.graph.node.extend(keep_nodes)
    for name in sorted(folded_names & used - produced):
        scratch.graph.initializer.append(onnx.numpy_helper.from_array(folded[name], name))
    merged = dict(infer_shapes(scratch))
    for k, v in shapes.items():
        if k not in merged or (merged[k] is not None and len(merged[k]) != len(v)):
            merged[k] = v
    return merged


def merge_probed(shapes: dict, probed: dict) -> dict:
    """Take the probe's sizes wherever inference had none or only a symbolic name (so every
    run-time size follows one naming scheme); static sizes from inference are kept."""
    merged = dict(shapes)
    for name, ps in probed.items():
        cur = merged.get(name)
        if cur is None or len(cur) != len(ps):
            merged[name] = ps
        else:
            merged[name] = tuple(c if isinstance(c, int) else p for c, p in zip(cur, ps))
    return merged


def view_at(model: onnx.ModelProto, input_shapes: dict[str, list[int]],
            fallback: GraphView | None = None) -> GraphView:
    """A view of `model` whose shapes are those at concrete input sizes: shape inference and
    folding on a weightless copy whose graph inputs have `input_shapes`. Sizes still unknown
    there are taken from `fallback` where it knows them statically."""
    scratch = inference_copy(model)
    for vi in scratch.graph.input:
        sizes = input_shapes.get(vi.name)
        if sizes is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(sizes):
            continue
        for d, n in zip(dims, sizes):
            d.Clear()
            d.dim_value = int(n)
    shapes = infer_shapes(scratch)
    view = GraphView(model, shapes)
    for _ in range(4):  # each round of folding can let inference see further
        view.folded = fold_static_values(view)
        if not view.folded:
            break
        before = len([v for v in view.shapes.values() if v is not None])
        view.set_shapes(refine_shapes(scratch, view.shapes, view.folded))
        if len([v for v in view.shapes.values() if v is not None]) == before:
            break
    if fallback is not None:
        merged = dict(view.shapes)
        for name, fs in fallback.shapes.items():
            cur = merged.get(name)
            if cur is None or len(cur) != len(fs):
                merged[name] = fs
            else:
                merged[name] = tuple(c if isinstance(c, int) else f for c, f in zip(cur, fs))
        view.set_shapes(merged)
    return view
