"""Dependency analysis: which tensor axes must be pruned together.

Nodes of the dependency graph are `(tensor_name, axis)` pairs ("dim nodes"). An edge says the two
axes must be pruned with *corresponding* index sets; by default position i ↔ position i, or an
explicit index map given as pairs of positions (Concat offsets, Flatten blocks, grouped convs).

Connected components of dim nodes are **groups**. Inside a group, positions that are linked
(transitively) form **units**: the smallest things that can be removed. A unit of a plain conv
group is one channel; of a Concat consumer it is one channel of one concatenated input; of a
Flatten→Gemm head it is one channel together with its h·w features.

A group is frozen when any of its dim nodes is *blocked* (a graph input/output, an unknown op, an
op that mixes values along that axis, a size we cannot know statically). Frozen groups are never
touched and the first blocking reason is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .ir import Dim, GraphView, attr, subgraph_outer_names
from .ops.registry import lookup

DimNode = tuple[str, int]

ROLE_OUT = "out"  # a parameter of the producing op (conv filter rows, bias, BN scale/shift)
ROLE_IN = "in"  # a contraction axis of a consumer (conv input channels, Gemm/MatMul K)
ROLE_AUX = "aux"  # sliced but not scored (BN running stats, per-channel constants of unknown role)


@dataclass
class Member:
    """A constant tensor axis that shrinks when its group is pruned."""

    tensor: str
    axis: int
    role: str


@dataclass
class Group:
    id: int
    dims: list[DimNode]
    members: list[Member] = field(default_factory=list)
    frozen_reason: str | None = None
    kind: str = "channel"
    n_units: int = 0
    # for each dim node: the unit id of every position along that axis
    unit_of: dict[DimNode, np.ndarray] = field(default_factory=dict)

    @property
    def prunable(self) -> bool:
        return self.frozen_reason is None and self.n_units > 1

    def label(self) -> str:
        """A short human name: the first weight member, else the first dim node."""
        for m in self.members:
            if m.role == ROLE_OUT and "__use" not in m.tensor:
                return f"{m.tensor}[{m.axis}]"
        for m in self.members:
            if m.role == ROLE_OUT:
                return f"{m.tensor}[{m.axis}]"
        for m in self.members:
            return f"{m.tensor}[{m.axis}]"
        t, a = self.dims[0]
        return f"{t}[{a}]"


class DependencyGraph:
    """Result of analysis: the dim-node graph, groups and per-node facts."""

    def __init__(self, view: GraphView):
        self.view = view
        self.g = nx.Graph()
        self.sizes: dict[DimNode, Dim] = {}
        self.edges: list[tuple[DimNode, DimNode, np.ndarray | None, np.ndarray | None]] = []
        self.blocked: dict[DimNode, str] = {}
        self.roles: dict[DimNode, str] = {}
        self.groups: list[Group] = []
        self.group_of: dict[DimNode, int] = {}
        self.split_mode = "minor"  # how axis-splitting reshapes couple: major|minor|block
        self.head_axes: set[DimNode] = set()  # head axes created by splitting reshapes
        self.has_attention = False
        self.allow_hidden = False  # transformer residual stream may shrink (norms approximate)
        self.hidden_axes: set[DimNode] = set()  # axes normalized over by LayerNorm/RMSNorm
        self.unsupported_ops: dict[str, int] = {}

    # --------------------------------------------------------------- building blocks
    def add_dim(self, dn: DimNode) -> None:
        if dn not in self.sizes:
            self.sizes[dn] = self.view.dim(dn[0], dn[1])
            self.g.add_node(dn)

    def add_tensor(self, name: str) -> None:
        r = self.view.rank(name)
        for a in range(r or 0):
            self.add_dim((name, a))

    def couple(self, a: DimNode, b: DimNode, pa=None, pb=None) -> None:
        self.add_dim(a)
        self.add_dim(b)
        self.g.add_edge(a, b)
        self.edges.append((a, b, pa, pb))

    def block(self, dn: DimNode, reason: str) -> None:
        self.add_dim(dn)
        self.blocked.setdefault(dn, reason)

    def block_tensor(self, name: str, reason: str) -> None:
        for a in range(self.view.rank(name) or 0):
            self.block((name, a), reason)

    # --------------------------------------------------------------- groups
    def group_for(self, tensor: str, axis: int) -> Group | None:
        gid = self.group_of.get((tensor, axis))
        return None if gid is None else self.groups[gid]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]


class AnalyzeContext:
    """What a rule sees while analyzing one node."""

    def __init__(self, dg: DependencyGraph, node: onnx.NodeProto, merges: list):
        self.dg = dg
        self.view = dg.view
        self.node = node
        self._merges = merges
        self.touched: set[DimNode] = set()  # axes the rule coupled, blocked or declared free

    # facts
    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    def attr(self, name, default=None):
        return attr(self.node, name, default)

    def rank(self, name: str) -> int | None:
        return self.view.rank(name) if name else None

    def shape(self, name: str):
        return self.view.shape(name)

    def dim(self, name: str, axis: int) -> Dim:
        return self.view.dim(name, axis)

    def static_dim(self, name: str, axis: int) -> int | None:
        return self.view.static_dim(name, axis)

    def const(self, name: str) -> np.ndarray | None:
        """Value of a small constant input (shape vectors, axes...), else None."""
        return self.view.small_const(name) if name else None

    def partial(self, name: str) -> list | None:
        """A run-time shape vector with some entries known statically: a list with None for
        the entries only known at run time (e.g. [None, None, -1, 16] for [batch, seq, -1, 16]).
        Fully known vectors come back as plain lists too."""
        v = self.const(name)
        if v is not None:
            return v.reshape(-1).tolist()
        p = self.view.partial.get(name) if name else None
        if p is None or p[0].ndim != 1:
            return None
        return [int(x) if k else None for x, k in zip(p[0].tolist(), p[1].tolist())]

    def is_const(self, name: str) -> bool:
        return bool(name) and self.view.is_const(name)

    def opset(self) -> int:
        return self.view.opset.get("ai.onnx", 1)

    # edits
    def couple(self, a: str, a_axis: int, b: str, b_axis: int, pairs=None) -> None:
        """Couple axis `a_axis` of `a` with `b_axis` of `b`; `pairs` = (pos_in_a, pos_in_b)."""
        pa, pb = (None, None) if pairs is None else (np.asarray(pairs[0]), np.asarray(pairs[1]))
        self.dg.couple((a, a_axis), (b, b_axis), pa, pb)
        self.touched.update(((a, a_axis), (b, b_axis)))

    def couple_same(self, a: str, b: str, skip: tuple[int, ...] = ()) -> None:
        """Identity-couple every axis of two tensors of equal rank (except `skip`)."""
        ra, rb = self.rank(a), self.rank(b)
        if ra is None or ra != rb:
            self.block_node("ranks unknown or different")
            return
        for ax in range(ra):
            if ax in skip:
                continue
            self.couple(a, ax, b, ax)

    def block(self, name: str, axis: int | None, reason: str) -> None:
        if not name:
            return
        full = f"{self.node.op_type} '{self.node.name or self.node.output[0]}': {reason}"
        if axis is None:
            self.dg.block_tensor(name, full)
            self.touched.update((name, a) for a in range(self.view.rank(name) or 0))
        else:
            self.dg.block((name, axis), full)
            self.touched.add((name, axis))

    def free(self, name: str, axis: int | None = None) -> None:
        """Declare that pruning this axis needs nothing from this node (e.g. Shape reads sizes
        at run time). Axes a rule neither couples, blocks nor frees are blocked."""
        axes = range(self.view.rank(name) or 0) if axis is None else [axis]
        self.touched.update((name, a) for a in axes)

    def block_node(self, reason: str) -> None:
        for n in list(self.node.input) + list(self.node.output):
            self.block(n, None, reason)

    def role(self, name: str, axis: int, role: str) -> None:
        if name and self.view.is_const(name):
            self.dg.roles[(name, axis)] = role

    def virtual(self, suffix: str, size: int) -> str:
        """A virtual tensor (e.g. the `group` axis of a grouped conv) of shape [size]."""
        vname = f"{self.node.name or self.node.output[0]}::{suffix}"
        self.view.shapes[vname] = (size,)
        self.dg.add_dim((vname, 0))
        return vname

    def merge(self, out: str, out_axis: int, parts: list[tuple[str, int]]) -> None:
        """Output axis is the row-major merge of input axes `parts` (Flatten / Reshape).

        Resolved after all direct rules ran: see `_resolve_merge`.
        """
        self._merges.append((self.node, out, out_axis, parts))
        self.touched.add((out, out_axis))
        self.touched.update(parts)

    def block_untouched(self) -> None:
        """Every axis of the node's tensors the rule did not speak about is blocked: an op that
        produces a spatial axis (Conv, pooling, Resize) decides its size itself."""
        for name in list(self.node.input) + list(self.node.output):
            if not name:
                continue
            for a in range(self.view.rank(name) or 0):
                if (name, a) not in self.touched:
                    self.block(name, a, "axis not carried through this op")


def _is_unknown_rank(view: GraphView, names) -> bool:
    return any(n and view.rank(n) is None for n in names)


KINDS = ("channels", "heads", "mlp", "hidden")


ATTENTION_OPS = {"MultiHeadAttention", "Attention", "GroupQueryAttention", "PackedAttention"}


def has_attention(view: GraphView) -> bool:
    """A MatMul of two computed tensors (scores = Q·Kᵀ), or a fused attention op, marks a
    graph with attention."""
    return any((n.op_type in ("MatMul", "FusedMatMul") and not any(view.is_const(i) for i in n.input))
               or n.op_type in ATTENTION_OPS for n in view.graph.node)


def analyze(view: GraphView, progress=None, dims=KINDS) -> DependencyGraph:
    """Build the dependency graph of a model and split it into groups.

    `dims` selects the kinds of groups that may be pruned: channels (convolutions), heads
    (attention heads), mlp (transformer intermediate widths), hidden (the residual stream).
    """
    dg = DependencyGraph(view)
    dg.has_attention = has_attention(view)
    if dg.has_attention:
        dg.split_mode = "major" if "heads" in dims else "block"
        dg.allow_hidden = "hidden" in dims
    merges: list = []
    for name in view.graph_inputs:
        dg.add_tensor(name)
        dg.block_tensor(name, f"graph input '{name}'")
    for name in view.graph_outputs:
        dg.add_tensor(name)
        dg.block_tensor(name, f"graph output '{name}'")
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
    _build_groups(dg)
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
            grp.frozen_reason = f"{plural} not selected (--dims)"


# ------------------------------------------------------------------ merges
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


# ------------------------------------------------------------------ groups and units
def _build_groups(dg: DependencyGraph) -> None:
    view = dg.view
    comps = sorted(nx.connected_components(dg.g), key=lambda c: min(c))
    # edges grouped by component for unit computation
    for gid, comp in enumerate(comps):
        dims = sorted(comp)
        grp = Group(id=gid, dims=dims)
        for dn in dims:
            dg.group_of[dn] = gid
        for dn in dims:
            if dn[0] in view.consts:
                grp.members.append(Member(dn[0], dn[1], dg.roles.get(dn, ROLE_AUX)))
        reason = next((dg.blocked[dn] for dn in dims if dn in dg.blocked), None)
        has_weight = any(m.role in (ROLE_OUT, ROLE_IN) for m in grp.members)
        if not has_weight:  # batch, spatial, sequence axes: not prunable by nature
            reason = "no weights to shrink"
        if reason is None:
            unknown = [dn for dn in dims if not isinstance(dg.sizes.get(dn), int)]
            if unknown:
                reason = f"size of {unknown[0][0]}[{unknown[0][1]}] is not static"
        grp.frozen_reason = reason
        dg.groups.append(grp)
    by_group: dict[int, list] = {}
    for e in dg.edges:
        by_group.setdefault(dg.group_of[e[0]], []).append(e)
    for grp in dg.groups:
        if grp.frozen_reason is not None and grp.frozen_reason == "no weights to shrink":
            continue
        if any(not isinstance(dg.sizes.get(dn), int) for dn in grp.dims):
            continue
        _compute_units(dg, grp, by_group.get(grp.id, []))
        if grp.frozen_reason is None and grp.n_units <= 1:
            grp.frozen_reason = "only one unit"


def _compute_units(dg: DependencyGraph, grp: Group, edges) -> None:
    offsets: dict[DimNode, int] = {}
    total = 0
    for dn in grp.dims:
        offsets[dn] = total
        total += int(dg.sizes[dn])
    rows, cols = [], []
    for a, b, pa, pb in edges:
        na, nb = int(dg.sizes[a]), int(dg.sizes[b])
        if pa is None:
            if na != nb:
                grp.frozen_reason = grp.frozen_reason or (
                    f"coupled axes {a[0]}[{a[1]}] ({na}) and {b[0]}[{b[1]}] ({nb}) differ in size")
                n = min(na, nb)
                pa = pb = np.arange(n)
            else:
                pa = pb = np.arange(na)
        if len(pa) and (pa.max() >= na or pb.max() >= nb):
            grp.frozen_reason = grp.frozen_reason or f"index map out of range at {b[0]}[{b[1]}]"
            continue
        rows.append(pa + offsets[a])
        cols.append(pb + offsets[b])
    if rows:
        r = np.concatenate(rows)
        c = np.concatenate(cols)
    else:
        r = c = np.zeros(0, dtype=np.int64)
    mat = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    n, labels = connected_components(mat, directed=False)
    # renumber units in order of first appearance for stable, readable ids
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(n, dtype=np.int64)
    remap[order] = np.arange(n)
    labels = remap[labels]
    grp.n_units = int(n)
    for dn in grp.dims:
        o = offsets[dn]
        grp.unit_of[dn] = labels[o:o + int(dg.sizes[dn])]
