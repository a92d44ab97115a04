"""The dependency graph: which tensor axes must be pruned together.

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

from ..ir import Dim, GraphView
from ..ops.registry import ROLE_OUT

DimNode = tuple[str, int]



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


@dataclass
class Policy:
    """What the analysis does with the facts rules state (never decided by a rule).

    `split`: how an axis that a reshape splits into several is coupled — "major" (the first
    part carries the units: attention heads), "minor" (the last part: position j of every
    block, a channel shuffle) or "block" (frozen: heads exist but are not to be pruned).
    `approximate_norms`: whether an axis a norm normalizes over may shrink (hidden-size pruning
    of a transformer: the norm's statistics are then taken over the kept features).
    `cache_heads`: whether the head axis of a decoder's KV-cache inputs and outputs
    (`graphprune.ir.cache`) shrinks with the key/value heads: the one exception to "a graph
    input or output freezes its axes" (the model's I/O signature then changes, and the report
    says how).
    `requantize`: whether the contraction axis of a block-quantized weight may lose single
    positions (its blocks are then re-quantized with the same bits and block size) or only
    whole quantization blocks (byte-exact).
    """

    split: str = "minor"
    approximate_norms: bool = False
    cache_heads: bool = False
    requantize: bool = True


class DependencyGraph:
    """Result of analysis: the dim-node graph, groups and per-node facts."""

    def __init__(self, view: GraphView):
        self.view = view
        self.g = nx.Graph()
        self.sizes: dict[DimNode, Dim] = {}
        self.edges: list[tuple[DimNode, DimNode, np.ndarray | None, np.ndarray | None]] = []
        self.blocked: dict[DimNode, str] = {}
        self.roles: dict[DimNode, str] = {}
        self.pending_roles: list[tuple[DimNode, str]] = []  # roles stated on computed tensors
        self.pending_splits: list[tuple] = []  # head splits, resolved after all rules
        self.groups: list[Group] = []
        self.group_of: dict[DimNode, int] = {}
        self.policy = Policy()
        self.head_axes: set[DimNode] = set()  # axes that enumerate attention heads
        self.has_attention = False
        self.head_dim_axes: set[DimNode] = set()  # feature axes of heads split off [H·D]
        self.hidden_axes: set[DimNode] = set()  # axes normalized over by LayerNorm/RMSNorm
        self.unsupported_ops: dict[str, int] = {}
        self.cache_io: dict[str, int] = {}  # KV-cache graph inputs/outputs -> their head axis

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
