"""Graph sanity: refuse graphs no tool can handle, with a message saying what is wrong.

Every name read is produced, nothing is produced twice, no cycle, every op's domain is imported,
graph inputs have sane sizes, constant fills are bounded, and the ONNX checker accepts the graph.
Anything else fails later with an unreadable message, or not at all. `check_model` is the strict
checker validation runs on a pruned model.
"""
from __future__ import annotations

import heapq
from typing import Iterator

import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UserError, ValidationError
from .graph import subgraph_outer_names
from .shapes import inference_copy
from .storage import TWO_GB, approx_bytes, numel, storage_nbytes

MAX_DIM = 2 ** 31 - 1  # largest size accepted on any declared axis
MAX_INPUT_BYTES = 1 << 30  # largest graph input (symbolic sizes as 1): validation allocates it
MAX_FILL_ELEMENTS = 1 << 31  # largest ConstantOfShape with a constant shape


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (one-line errors)."""
    s = str(e).strip().splitlines()
    return s[0][:limit] if s else type(e).__name__


def check_graph_sanity(model: onnx.ModelProto, where: str = "") -> None:
    """Refuse graphs no tool can handle, with a message saying what is wrong.

    Puts the nodes of an acyclic but unsorted graph in topological order (ONNX requires it and
    every pass relies on it). Everything else is refused with a `UserError`.
    """
    g = model.graph
    _check_text(model, where)
    if not g.output:
        raise UserError(f"{where}the graph has no outputs")
    domains = {o.domain or "ai.onnx" for o in model.opset_import}
    local = {f.domain or "ai.onnx" for f in model.functions}
    for node in _all_nodes(g):
        d = node.domain or "ai.onnx"
        if d not in domains and d not in local:
            raise UserError(f"{where}node '{node.name or node.op_type}' ({node.op_type}) uses "
                            f"domain '{d}', which the model does not import (no opset_import "
                            "entry)")
    _check_scope(g, set(), where)
    _toposort(g, where)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        _check_dims(vi, where)
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        n = numel(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        nbytes = n * (storage_nbytes(tt.elem_type, 1) or 1)
        if nbytes > MAX_INPUT_BYTES:
            raise UserError(f"{where}graph input '{vi.name}' declares {n:,} elements "
                            f"({nbytes:,} bytes); refusing inputs over {MAX_INPUT_BYTES:,} bytes")
    _check_fills(g, where)
    copy = inference_copy(model)
    mask_unregistered_ops(copy)
    try:
        onnx.checker.check_model(copy)
    except Exception as e:
        raise UserError(f"{where}not a valid ONNX model: {first_line(e)}") from e


UNCHECKED_DOMAIN = "graphprune.unchecked"


def has_unregistered_ops(model: onnx.ModelProto) -> bool:
    """Whether the default domain holds ops ONNX has no schema for (ONNX Runtime registers
    some of its own there, e.g. SimplifiedLayerNormalization)."""
    return any(n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, "")
               for n in _all_nodes(model.graph))


def mask_unregistered_ops(model: onnx.ModelProto) -> None:
    """Move default-domain ops without an ONNX schema to a private domain, in place, so the
    ONNX checker checks everything else instead of stopping at them (ONNX Runtime, which runs
    every model graphprune writes, is the judge of those ops)."""
    changed = False
    for n in _all_nodes(model.graph):
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, ""):
            n.domain = UNCHECKED_DOMAIN
            changed = True
    if changed and not any(o.domain == UNCHECKED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(UNCHECKED_DOMAIN, 1))


def _check_text(model: onnx.ModelProto, where: str) -> None:
    """Names, op types and domains must be text: protobuf hands back invalid UTF-8 as bytes,
    which no later step expects."""
    def bad(*values) -> bool:
        return any(isinstance(v, bytes) for v in values)

    def graph(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if bad(vi.name) or (vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField(
                    "shape") and bad(*(d.dim_param for d in vi.type.tensor_type.shape.dim))):
                raise UserError(f"{where}a graph value name is not valid UTF-8 text")
        for t in g.initializer:
            if bad(t.name):
                raise UserError(f"{where}an initializer name is not valid UTF-8 text")
        for n in g.node:
            if bad(n.op_type, n.domain, n.name, *n.input, *n.output,
                   *(a.name for a in n.attribute)):
                raise UserError(f"{where}a node's name, op type, domain or tensor name is not "
                                "valid UTF-8 text")
            for a in n.attribute:
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    if bad(*(o.domain for o in model.opset_import), *(f.name for f in model.functions),
           *(f.domain for f in model.functions)):
        raise UserError(f"{where}an opset or function name is not valid UTF-8 text")
    graph(model.graph)


def _all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.HasField("g"):
                yield from _all_nodes(a.g)
            for sub in a.graphs:
                yield from _all_nodes(sub)


def _check_scope(g: onnx.GraphProto, outer: set[str], where: str) -> None:
    """Every name read is defined exactly once, in this graph or an enclosing one."""
    defined: set[str] = set()
    for name in [i.name for i in g.input] + [t.name for t in g.initializer] + \
            [s.values.name for s in g.sparse_initializer]:
        defined.add(name)
    for n in g.node:
        for o in n.output:
            if not o:
                continue
            if o in defined:
                raise UserError(f"{where}tensor '{o}' is defined more than once (again by "
                                f"node '{n.name or n.op_type}')")
            defined.add(o)
    visible = defined | outer
    for n in g.node:
        for i in n.input:
            if i and i not in visible:
                raise UserError(f"{where}node '{n.name or n.op_type}' ({n.op_type}) reads "
                                f"'{i}', which no node, initializer or graph input produces")
        for a in n.attribute:
            subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
            for sub in subs:
                _check_scope(sub, visible, where)
    for o in g.output:
        if o.name not in visible:
            raise UserError(f"{where}graph output '{o.name}' is produced by nothing")


def _toposort(g: onnx.GraphProto, where: str) -> None:
    nodes = list(g.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    unsorted = False
    for k, n in enumerate(nodes):
        names = {i for i in n.input if i} | subgraph_outer_names(n)
        d = {producer[i] for i in names if i in producer}
        if k in d:
            raise UserError(f"{where}the graph has a cycle: node '{n.name or n.op_type}' reads "
                            "its own output")
        unsorted |= any(j > k for j in d)
        deps.append(d)
    if not unsorted:
        return
    users: list[list[int]] = [[] for _ in nodes]
    missing = [len(d) for d in deps]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        stuck = next(k for k, m in enumerate(missing) if m)
        n = nodes[stuck]
        raise UserError(f"{where}the graph has a cycle through node '{n.name or n.op_type}' "
                        f"({n.op_type})")
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies[k] for k in order)


def _check_dims(vi: onnx.ValueInfoProto, where: str) -> None:
    """Refuse absurd declared sizes. A negative size (some converters write -1 for "unknown",
    which ONNX Runtime reads as symbolic) becomes an unknown dimension."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value < 0:
            d.Clear()
        elif d.HasField("dim_value") and d.dim_value > MAX_DIM:
            raise UserError(f"{where}'{vi.name}' declares a dimension of {d.dim_value:,}; "
                            f"sizes must be in [0, {MAX_DIM:,}]")


def _check_fills(g: onnx.GraphProto, where: str) -> None:
    """ConstantOfShape with a constant shape: refuse absurd sizes before anything fills them."""
    small = {t.name: t for t in g.initializer if t.data_location != TensorProto.EXTERNAL}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    small[n.output[0]] = a.t
    for n in g.node:
        if n.op_type != "ConstantOfShape" or not n.input or n.input[0] not in small:
            continue
        try:
            shape = numpy_helper.to_array(small[n.input[0]]).reshape(-1)
        except Exception:
            continue
        if len(shape) > 64 or numel(int(s) for s in shape) > MAX_FILL_ELEMENTS or \
                any(int(s) < 0 for s in shape):
            raise UserError(f"{where}ConstantOfShape '{n.name or n.output[0]}' fills a tensor of "
                            f"shape {shape.tolist()}; refusing sizes over {MAX_FILL_ELEMENTS:,}")


def check_model(model: onnx.ModelProto | str) -> None:
    """The ONNX checker (full check: strict shape inference too), on a ModelProto or a written
    file. Ops ONNX has no schema for but ONNX Runtime registers in the default domain are left
    to the ONNX Runtime run (see `mask_unregistered_ops`)."""
    try:
        proto = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
        if has_unregistered_ops(proto):
            # the files are checked by the ONNX Runtime run; here the graph, without weight bytes
            masked = inference_copy(proto)
            mask_unregistered_ops(masked)
            onnx.checker.check_model(masked, full_check=True)
        elif isinstance(model, str) or approx_bytes(model) < TWO_GB:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(model)
    except Exception as e:
        raise ValidationError(f"onnx checker: {first_line(e, 300)}") from e


def _fault_lines(e: BaseException) -> list[str]:
    """The individual faults of a checker error (shape inference lists one per node)."""
    cause = e.__cause__ if e.__cause__ is not None else e
    text = str(cause).strip().replace("[ShapeInferenceError] Inference error(s): ", "")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _fault_key(line: str) -> str:
    """Faults of one node compare by the node (`(op_type:X, node name: Y)`), others by text."""
    return line.split("):", 1)[0] if line.startswith("(op_type:") else line


def check_model_relative(pruned: onnx.ModelProto | str,
                         original: onnx.ModelProto | str | None = None) -> list[str]:
    """`check_model` on the pruned model, judged against the original: faults the original
    already has (a converter's wrong value_info, say) are returned as notes, not raised; any
    other fault raises `ValidationError`."""
    try:
        check_model(pruned)
        return []
    except ValidationError as e:
        if original is None:
            raise
        found = _fault_lines(e)
    src = original
    if isinstance(src, str):
        src = onnx.load(src, load_external_data=False)
    try:
        check_model(inference_copy(src))
        raise ValidationError(f"onnx checker: {found[0][:300] if found else 'failed'}")
    except ValidationError as e:
        if not e.__cause__:
            raise
        known = _fault_lines(e)
    keys = {_fault_key(k) for k in known}
    new = [f for f in found if _fault_key(f) not in keys]
    if new or not found:
        raise ValidationError(f"onnx checker: {(new or ['failed'])[0][:300]}")
    return known
