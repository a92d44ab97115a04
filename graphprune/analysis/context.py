"""What a rule sees while analyzing one node: facts about the node's tensors, and edits of the
dependency graph. Rules state facts (`couple`, `block`, `merge`, `split`, `approximate_norm`,
`mark_heads`); this context applies the analysis' `Policy` to the ones that need a decision.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import Dim, attr
from .graph import DependencyGraph, DimNode


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
        """The role of a constant's axis. A role stated on a tensor computed from constants
        only (a dequantized, cast, reshaped or transposed weight) reaches the constants it is
        computed from once the graph is built (`roles.propagate_roles`)."""
        if not name:
            return
        if self.view.is_const(name):
            self.dg.roles[(name, axis)] = role
        else:
            self.dg.pending_roles.append(((name, axis), role))

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

    # facts that the analysis' policy turns into couplings
    def split(self, x: str, i: int, y: str, jj: list[int], what: str) -> None:
        """Axis `i` of `x` is split row-major into axes `jj` of `y` ([C] → [d0, ..., dk]).

        One output axis carries the units, the others are blocked (see `Policy.split`): with
        "major" a unit is a whole head: position c of the input is head (c // stride) % d of
        the first part the graph does not block (a fused QKV's [3, H, D] picks H, since q, k
        and v are taken apart along the 3), resolved once every rule ran; with
        "minor" c ↔ c % dk, so a unit is "position j of every block" (a channel shuffle's
        channel j of each group); with "block" the split is frozen.
        """
        mode = self.dg.policy.split
        if mode == "block":
            why = f"{what} splits attention heads, which are not selected for pruning"
            for j in jj:
                self.block(y, j, why)
            self.block(x, i, why)
            return
        if mode == "major":  # which part enumerates the heads is decided once all rules ran
            self.dg.pending_splits.append((self.node, x, i, y, list(jj), what))
            self.touched.add((x, i))
            self.touched.update((y, j) for j in jj)
            return
        n = self.static_dim(x, i)
        dims = [self.static_dim(y, j) for j in jj]
        c = np.arange(n)
        self.couple(x, i, y, jj[-1], (c, c % dims[-1]))
        if self.dg.has_attention:  # [H·D] → [H, D]: position j of every head
            self.dg.head_dim_axes.add((y, jj[-1]))
        for j in jj[:-1]:
            self.block(y, j, f"{what} splits an axis; only one of its parts is pruned")

    def approximate_norm(self, x: str, approximate, exact) -> None:
        """The node normalizes `x` over its last axis. `approximate()` states the couplings
        under which that axis shrinks (statistics over the kept features), `exact()` the
        op's exact semantics (the axis mixes values, so it is blocked); the policy picks."""
        if self.dg.policy.approximate_norms:
            approximate()
            self.dg.hidden_axes.add((x, self.rank(x) - 1))
        else:
            exact()

    def quantization_blocks(self, name: str, axis: int, block: int, whole_blocks) -> None:
        """Positions of this axis share quantization parameters in blocks of `block`: removing
        some positions of a block means re-quantizing its other values (an approximation).
        `whole_blocks()` states the couplings under which only whole blocks go (exact); the
        policy picks."""
        if not self.dg.policy.requantize:
            whole_blocks()

    def mark_heads(self, name: str, axis: int) -> None:
        """This axis enumerates attention heads (a fused attention op's head axis)."""
        self.dg.head_axes.add((name, axis))

    def block_untouched(self) -> None:
        """Every axis of the node's tensors the rule did not speak about is blocked: an op that
        produces a spatial axis (Conv, pooling, Resize) decides its size itself."""
        for name in list(self.node.input) + list(self.node.output):
            if not name:
                continue
            for a in range(self.view.rank(name) or 0):
                if (name, a) not in self.touched:
                    self.block(name, a, "axis not carried through this op")
