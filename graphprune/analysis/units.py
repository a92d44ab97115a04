"""Groups and units: connected components of the dependency graph, and inside each group the
positions linked through index maps (the units removed together).

A group is frozen when any of its dim nodes is *blocked*, when it holds no weight, or when a size
is not static; the first reason is kept for the report.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from ..ops.registry import ROLE_AUX, ROLE_IN, ROLE_OUT
from .graph import DependencyGraph, DimNode, Group, Member


def build_groups(dg: DependencyGraph) -> None:
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
    labels = components(total, r, c)
    # renumber units in order of first appearance for stable, readable ids
    roots, first = np.unique(labels, return_index=True)
    n = len(roots)
    order = np.argsort(first)
    remap = np.empty(n, dtype=np.int64)
    remap[order] = np.arange(n)
    labels = remap[np.searchsorted(roots, labels)]
    grp.n_units = int(n)
    for dn in grp.dims:
        o = offsets[dn]
        grp.unit_of[dn] = labels[o:o + int(dg.sizes[dn])]


def components(total: int, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Connected components of the graph on `total` positions with edges (r[k], c[k]): for
    every position, the smallest position of its component. Labels move to the smaller label
    of each edge, then follow their chains to the end (pointer jumping), until no edge joins
    two labels; a few vectorized rounds for the short chains index maps make."""
    labels = np.arange(total, dtype=np.int64)
    r, c = np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)
    while len(r):
        m = np.minimum(labels[r], labels[c])
        new = labels.copy()
        np.minimum.at(new, r, m)
        np.minimum.at(new, c, m)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            break
        labels = new
    return labels
