"""Name and op-type patterns of the per-layer options (protect, protect_op, ratio_for).

A pattern is an fnmatch pattern on node and tensor names (`layer4.*`, `*classifier*`) or an
op-type pattern `op:Conv` (fnmatch too: `op:Conv*`). Two ways a group answers to a pattern:

- it *touches* what the pattern names (protection): a tensor along one of its axes, or a node
  reading or writing such a tensor, matches; protecting a node's tensors keeps the node as it is;
- it is *owned* by what the pattern names (per-layer ratios, Torch-Pruning's
  `pruning_ratio_dict`): a node producing one of its tensors (the layer whose output width the
  group is) or a weight whose output axis is in it matches, so `layer4.*` is the width of
  layer4's layers, not of the layer3 output that layer4 reads.

A pattern that matches no group is an error naming near matches (difflib), unless allowed.
"""
from __future__ import annotations

import difflib
import fnmatch

from ..analysis.graph import DependencyGraph, Group
from ..errors import UserError
from ..ops.registry import ROLE_OUT

OP = "op:"


class Names:
    """The names and op types each group touches and is owned by."""

    def __init__(self, dg: DependencyGraph):
        readers: dict[str, list] = {}
        producer: dict[str, object] = {}
        for node in dg.view.graph.node:
            for t in node.input:
                if t:
                    readers.setdefault(t, []).append(node)
            for t in node.output:
                if t:
                    producer[t] = node
        self.touch: dict[int, tuple[set, set]] = {}
        self.own: dict[int, tuple[set, set]] = {}
        self.all_names: set[str] = set()
        self.own_names: set[str] = set()
        self.all_ops: set[str] = set()
        for g in dg.groups:
            if not g.members:
                continue
            tensors = {t for t, _ in g.dims}
            nodes = [n for t in tensors for n in readers.get(t, []) + [producer.get(t)] if n]
            self.touch[g.id] = (tensors | {n.name for n in nodes if n.name},
                                {n.op_type for n in nodes})
            made = [producer[t] for t in tensors if t in producer]
            owned = {m.tensor for m in g.members if m.role == ROLE_OUT}
            owned |= {t for t in tensors if t in producer}
            self.own[g.id] = (owned | {n.name for n in made if n.name},
                              {n.op_type for n in made} | {n.op_type for t in owned
                                                           for n in readers.get(t, [])
                                                           if t not in producer})
            self.all_names |= self.touch[g.id][0]
            self.own_names |= self.own[g.id][0]
            self.all_ops |= self.touch[g.id][1]

    def matches(self, g: Group, pattern: str, owned: bool) -> bool:
        names, ops = (self.own if owned else self.touch).get(g.id, (set(), set()))
        if pattern.startswith(OP):
            return any(fnmatch.fnmatchcase(o, pattern[len(OP):]) for o in ops)
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)

    def unmatched(self, dg: DependencyGraph, pattern: str, owned: bool, flag: str) -> str:
        """The error line for a pattern that matches no group."""
        if pattern.startswith(OP):
            pool, shown = sorted(self.all_ops), pattern[len(OP):]
            near = difflib.get_close_matches(shown, pool, n=5, cutoff=0.4)
            return (f"{flag} {pattern!r} matches no op type of the model; near matches: "
                    f"{', '.join(OP + n for n in near) or 'none'} (op types: {', '.join(pool)})")
        pool = sorted(self.own_names if owned else self.all_names)
        near = difflib.get_close_matches(pattern, pool, n=5, cutoff=0.4)
        return (f"{flag} {pattern!r} matches no node or tensor name of a group with weights; "
                f"near matches: {', '.join(near) or 'none'} (--allow-unmatched to accept)")


def protect(dg: DependencyGraph, patterns: list[str], names: Names, flag: str = "--protect",
            allow_unmatched: bool = False, ops: bool = False) -> None:
    """Freeze every group that touches what a pattern names (`ops`: the patterns are op
    types)."""
    for given in patterns:
        pat = OP + given if ops and not given.startswith(OP) else given
        hit = False
        for g in dg.groups:
            if g.id not in names.touch or not names.matches(g, pat, owned=False):
                continue
            hit = True
            if g.frozen_reason is None:
                g.frozen_reason = f"protected by {flag} {given!r}"
        if not hit and not allow_unmatched:
            raise UserError(names.unmatched(dg, pat, False, flag))


def ratios_for(dg: DependencyGraph, ratio_for: dict[str, float], names: Names,
               allow_unmatched: bool = False) -> dict[int, float]:
    """Group id -> ratio for the groups a `ratio_for` pattern owns (the last matching pattern
    wins)."""
    out: dict[int, float] = {}
    for pat, r in ratio_for.items():
        hit = False
        for g in dg.groups:
            if g.id in names.own and names.matches(g, pat, owned=True):
                hit = True
                if g.prunable:
                    out[g.id] = float(r)
        if not hit and not allow_unmatched:
            raise UserError(names.unmatched(dg, pat, True, "--ratio-for"))
    return out
