"""Selection: turn scores and a target into the units each group keeps."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np

from ..analysis.cost import unit_param_costs
from ..analysis.graph import DependencyGraph, Group


@dataclass
class Plan:
    """Kept unit ids (sorted) for every group that loses units."""

    keep: dict[int, np.ndarray] = field(default_factory=dict)

    def removed(self, grp: Group) -> int:
        return grp.n_units - len(self.keep[grp.id]) if grp.id in self.keep else 0


def apply_protect(dg: DependencyGraph, patterns: list[str]) -> None:
    """Freeze every group that touches a tensor or node whose name matches a pattern."""
    if not patterns:
        return
    node_names: dict[str, list[str]] = {}
    for node in dg.view.graph.node:
        for t in list(node.input) + list(node.output):
            if t and node.name:
                node_names.setdefault(t, []).append(node.name)
    for grp in dg.groups:
        if grp.frozen_reason is not None:
            continue
        names = {t for t, _ in grp.dims}
        names |= {n for t in list(names) for n in node_names.get(t, [])}
        for pat in patterns:
            if any(fnmatch.fnmatchcase(n, pat) for n in names):
                grp.frozen_reason = f"protected by --protect {pat!r}"
                break


def _round_keep(n_keep: int, n: int, round_to: int, min_keep: int) -> int:
    n_keep = max(n_keep, min_keep, 1)
    if round_to > 1 and n >= round_to:
        n_keep = min(n, int(math.ceil(n_keep / round_to)) * round_to)
    return min(n_keep, n)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties keep the lower index (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k])


def _uniform_n_keep(g: Group, ratio: float) -> int:
    """Units `g` keeps when the same fraction `ratio` of every group goes (rounded down)."""
    return g.n_units - int(math.floor(g.n_units * ratio + 1e-9))


def _round_step(g: Group, round_to: int) -> int:
    """--round-to applies to channel-like units (conv channels, MLP width, hidden size); a head
    is already a block of head_dim channels, so head counts are not rounded."""
    return 1 if g.kind == "head" else round_to


def _uniform_for_params(dg, groups, scores, budget: float, round_to: int,
                        min_keep: int) -> dict[int, int]:
    """The uniform ratio (the same fraction of every group, as without --global) whose
    removals come closest to `budget` parameters, found by bisection. Widths move in steps
    (a GQA layer has only a few head groups), so the closest step below the budget can be
    much nearer than the first one above it. Returns n_keep per group."""
    costs = [unit_param_costs(dg, g) for g in groups]
    orders = [np.lexsort((np.arange(g.n_units), scores[g.id])) for g in groups]

    def plan_for(r: float) -> tuple[dict[int, int], float]:
        keep, gone = {}, 0.0
        for g, c, order in zip(groups, costs, orders):
            k = _round_keep(_uniform_n_keep(g, r), g.n_units, _round_step(g, round_to), min_keep)
            keep[g.id] = k
            gone += float(c[order[:g.n_units - k]].sum())
        return keep, gone

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if plan_for(mid)[1] >= budget:
            hi = mid
        else:
            lo = mid
    (below, gone_below), (above, gone_above) = plan_for(lo), plan_for(hi)
    return below if budget - gone_below < gone_above - budget else above


def _global_n_keep(groups, scores, costs, budget: float, min_keep: int) -> dict[int, int]:
    """Units of all groups ranked together, lowest normalized score first (each group's
    scores ÷ their mean), removed until their costs reach `budget`: one unit each for
    --global with --ratio, the parameters a unit carries for --target-params. (Ranking by
    score ÷ parameters instead, a knapsack view, removes whole GQA head groups first, and raw
    scores compare badly across depth: both lose far more perplexity on a real LLM at the
    same size.) Returns n_keep per group."""
    norm = normalize_scores({g.id: scores[g.id] for g in groups})
    key = np.concatenate([norm[g.id] for g in groups])
    cost = np.concatenate(costs)
    owner = np.concatenate([np.full(g.n_units, i) for i, g in enumerate(groups)])
    removed = np.zeros(len(groups), dtype=np.int64)
    gone = 0.0
    for idx in np.lexsort((np.arange(len(key)), key)):
        if gone >= budget:
            break
        gi = owner[idx]
        if cost[idx] > 0 and groups[gi].n_units - removed[gi] > max(min_keep, 1):
            removed[gi] += 1
            gone += cost[idx]
    return {g.id: g.n_units - int(removed[gi]) for gi, g in enumerate(groups)}


def select(dg: DependencyGraph, scores: dict[int, np.ndarray], ratio: float,
           global_rank: bool = False, round_to: int = 1, min_keep: int = 1,
           params_budget: float | None = None) -> Plan:
    """Keep-sets per group. `ratio` is the fraction of prunable units to remove: per group
    (uniform) by default, or across all groups by normalized score with `global_rank`.
    `params_budget` (a parameter count) replaces `ratio`: uniform mode takes the per-group
    fraction whose removals come closest to it; with `global_rank` units of all groups are
    ranked together by normalized score until that many parameters are gone (rounding with
    `round_to` keeps a little more)."""
    plan = Plan()
    groups = [g for g in dg.prunable_groups() if g.id in scores]
    if (params_budget is None and ratio <= 0) or (params_budget is not None
                                                   and params_budget <= 0) or not groups:
        return plan
    if params_budget is not None and global_rank:
        costs = [unit_param_costs(dg, g) for g in groups]
        n_keep = _global_n_keep(groups, scores, costs, params_budget, min_keep)
    elif params_budget is not None:
        n_keep = _uniform_for_params(dg, groups, scores, params_budget, round_to, min_keep)
    elif global_rank:
        n_units = sum(g.n_units for g in groups)
        n_keep = _global_n_keep(groups, scores, [np.ones(g.n_units) for g in groups],
                                math.floor(n_units * ratio + 1e-9), min_keep)
    else:
        n_keep = {g.id: _uniform_n_keep(g, ratio) for g in groups}
    for g in groups:
        k = _round_keep(n_keep[g.id], g.n_units, _round_step(g, round_to), min_keep)
        if k >= g.n_units:
            continue
        keep = _top(scores[g.id], k)
        keep = _ensure_every_axis_keeps_one(g, keep, scores[g.id])
        if len(keep) < g.n_units:
            plan.keep[g.id] = keep
    return plan


def _ensure_every_axis_keeps_one(g: Group, keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """No tensor may lose every position of an axis (e.g. one input of a Concat, one Split
    output). Such an axis gets its best unit back in exchange for the weakest kept unit whose
    removal empties nothing, so the kept count (and --round-to) is preserved when possible."""
    kept_mask = np.zeros(g.n_units, dtype=bool)
    kept_mask[keep] = True
    axes = [np.unique(u) for u in g.unit_of.values() if len(u)]
    counts = np.array([int(kept_mask[u].sum()) for u in axes])
    if counts.min(initial=1) > 0:
        return keep
    axes_of: dict[int, list[int]] = {}
    for ai, units in enumerate(axes):
        for u in units.tolist():
            axes_of.setdefault(u, []).append(ai)
    for ai in np.flatnonzero(counts == 0):
        if counts[ai] > 0:
            continue  # fixed by an earlier swap
        units = axes[ai]
        best = int(units[np.argmax(scores[units])])
        kept_mask[best] = True
        counts[axes_of[best]] += 1
        for v in sorted(np.flatnonzero(kept_mask).tolist(), key=lambda k: (scores[k], k)):
            if v != best and all(counts[a] >= 2 for a in axes_of.get(v, [])):
                kept_mask[v] = False
                counts[axes_of.get(v, [])] -= 1
                break
    return np.flatnonzero(kept_mask)


def normalize_scores(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Scores of different groups made comparable for global ranking: each group divided by
    its mean (Torch-Pruning's group importance normalization)."""
    out = {}
    for gid, s in scores.items():
        m = float(np.mean(s)) if len(s) else 0.0
        out[gid] = s / m if m > 0 else s
    return out
