"""Selection: turn scores and a target into the units each group keeps."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..analysis.cost import unit_param_costs
from ..analysis.graph import DependencyGraph, Group
from . import match
from .match import Names


@dataclass
class Plan:
    """Kept unit ids (sorted) for every group that loses units."""

    keep: dict[int, np.ndarray] = field(default_factory=dict)

    def removed(self, grp: Group) -> int:
        return grp.n_units - len(self.keep[grp.id]) if grp.id in self.keep else 0


def apply_protect(dg: DependencyGraph, patterns: list[str], protect_ops: list[str] = (),
                  allow_unmatched: bool = False) -> None:
    """Freeze every group that touches a tensor or node whose name matches a pattern (or, for
    `op:TYPE` patterns and `protect_ops`, a node of that op type); see `transforms.match`."""
    if not patterns and not protect_ops:
        return
    names = Names(dg)
    match.protect(dg, list(patterns), names, "--protect", allow_unmatched)
    match.protect(dg, list(protect_ops), names, "--protect-op", allow_unmatched, ops=True)


def group_ratios(dg: DependencyGraph, ratio_for: dict[str, float],
                 allow_unmatched: bool = False) -> dict[int, float]:
    """Group id -> ratio for the groups owned by a `ratio_for` pattern (see `transforms.match`)."""
    return match.ratios_for(dg, ratio_for, Names(dg), allow_unmatched) if ratio_for else {}


@dataclass
class Target:
    """What a selection aims at.

    `ratio`: the fraction of every group's units removed (uniform), or with `global_rank` of
    all units ranked together. `budget` (a parameter or MAC count, with `measure`/`costs`)
    replaces `ratio`. `ratio_for` fixes the ratio of some groups (they stay out of the global
    ranking and the budget search, and what they remove counts towards the budget);
    `max_ratio` caps what any group loses. `origin` (group id -> its units in the model
    before earlier steps) and `fraction` (the share of the ratios reached by this step) serve
    iterative pruning: ratios are reached on the original widths.
    """

    ratio: float = 0.0
    global_rank: bool = False
    round_to: int = 1
    min_keep: int = 1
    max_ratio: float | None = None
    ratio_for: dict[int, float] = field(default_factory=dict)
    budget: float | None = None
    costs: Callable[[Group], np.ndarray] | None = None  # per unit, for the global ranking
    measure: Callable[[dict[int, np.ndarray]], float] | None = None  # removed by keep-sets
    origin: dict[int, int] = field(default_factory=dict)
    fraction: float = 1.0
    refine: bool = False  # unit costs are first-order (MACs): correct the ranking's budget

    def n0(self, g: Group) -> int:
        return self.origin.get(g.id, g.n_units)

    def floor_keep(self, g: Group) -> int:
        """The fewest units `g` may keep (min_keep, max_ratio of its original width)."""
        k = max(self.min_keep, 1)
        if self.max_ratio is not None:
            n0 = self.n0(g)
            k = max(k, n0 - int(math.floor(n0 * self.max_ratio + 1e-9)))
        return min(k, g.n_units)

    def uniform_keep(self, g: Group, ratio: float) -> int:
        """Units `g` keeps when `ratio` of its original width goes (this step's share)."""
        n0 = self.n0(g)
        return min(g.n_units, n0 - int(math.floor(n0 * ratio * self.fraction + 1e-9)))


def _round_keep(n_keep: int, n: int, round_to: int, min_keep: int) -> int:
    n_keep = max(n_keep, min_keep, 1)
    if round_to > 1 and n >= round_to:
        n_keep = min(n, int(math.ceil(n_keep / round_to)) * round_to)
    return min(n_keep, n)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties keep the lower index (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k])


def _round_step(g: Group, round_to: int) -> int:
    """--round-to applies to channel-like units (conv channels, MLP width, hidden size); a head
    is already a block of head_dim channels, so head counts are not rounded."""
    return 1 if g.kind == "head" else round_to


def _keep_sets(groups, scores, n_keep: dict[int, int], t: Target) -> dict[int, np.ndarray]:
    out = {}
    for g in groups:
        k = _round_keep(n_keep[g.id], g.n_units, _round_step(g, t.round_to), t.floor_keep(g))
        out[g.id] = _top(scores[g.id], k)
    return out


def _uniform_for_budget(groups, fixed: dict[int, int], scores, t: Target) -> dict[int, int]:
    """The uniform ratio (the same fraction of every free group, as without --global-rank)
    whose removals come closest to the budget, found by bisection. Widths move in steps (a
    GQA layer has only a few head groups), so the closest step below the budget can be much
    nearer than the first one above it. Returns n_keep per group."""
    def plan_for(r: float) -> tuple[dict[int, int], float]:
        keep = dict(fixed)
        for g in groups:
            if g.id not in fixed:
                keep[g.id] = g.n_units - int(math.floor(g.n_units * r + 1e-9))
        return keep, t.measure(_keep_sets(groups, scores, keep, t))

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if plan_for(mid)[1] >= t.budget:
            hi = mid
        else:
            lo = mid
    (below, gone_below), (above, gone_above) = plan_for(lo), plan_for(hi)
    return below if t.budget - gone_below < gone_above - t.budget else above


def _global_n_keep(groups, scores, costs, budget: float, t: Target) -> dict[int, int]:
    """Units of all groups ranked together, lowest normalized score first (each group's
    scores ÷ their mean), removed until their costs reach `budget`: one unit each for
    --global-rank with --ratio, the parameters (or MACs) a unit carries for --target-params
    (--target-macs). (Ranking by score ÷ parameters instead, a knapsack view, removes whole
    GQA head groups first, and raw scores compare badly across depth: both lose far more
    perplexity on a real LLM at the same size.) Returns n_keep per group."""
    if not groups:
        return {}
    norm = normalize_scores({g.id: scores[g.id] for g in groups})
    key = np.concatenate([norm[g.id] for g in groups])
    cost = np.concatenate(costs)
    owner = np.concatenate([np.full(g.n_units, i) for i, g in enumerate(groups)])
    floor = [t.floor_keep(g) for g in groups]
    removed = np.zeros(len(groups), dtype=np.int64)
    gone = 0.0
    for idx in np.lexsort((np.arange(len(key)), key)):
        if gone >= budget:
            break
        gi = owner[idx]
        if cost[idx] > 0 and groups[gi].n_units - removed[gi] > floor[gi]:
            removed[gi] += 1
            gone += cost[idx]
    return {g.id: g.n_units - int(removed[gi]) for gi, g in enumerate(groups)}


def _global_for_budget(groups, free, fixed: dict[int, int], scores, t: Target) -> dict[int, int]:
    """Global ranking until `t.budget` is removed. Unit costs are first-order (MACs of a
    layer between two pruned groups shrink with both), so the ranking's own budget is
    corrected a few times (secant on what `t.measure` says is removed) and the closest is
    taken."""
    costs = [t.costs(g) for g in free]
    base = t.measure(_keep_sets(groups, scores, fixed, t)) if fixed else 0.0
    want = t.budget - base
    best, best_err, b = None, math.inf, want
    for _ in range(8 if t.refine else 1):
        keep = {**fixed, **_global_n_keep(free, scores, costs, b, t)}
        got = t.measure(_keep_sets(groups, scores, keep, t))
        err = abs(got - t.budget)
        if err < best_err:
            best, best_err = keep, err
        if got - base <= 0 or err <= 1e-6 * max(t.budget, 1.0):
            break
        b = b * want / (got - base)
    return best


def select(dg: DependencyGraph, scores: dict[int, np.ndarray], ratio: float | Target,
           global_rank: bool = False, round_to: int = 1, min_keep: int = 1,
           params_budget: float | None = None) -> Plan:
    """Keep-sets per group for a `Target` (or, the short form, a ratio and the flags of one).

    `ratio` is the fraction of prunable units to remove: per group (uniform) by default, or
    across all groups by normalized score with `global_rank`. A budget (parameters or MACs)
    replaces it: uniform mode takes the per-group fraction whose removals come closest to it;
    with `global_rank` units of all groups are ranked together by normalized score until that
    much is gone (rounding with `round_to` keeps a little more)."""
    if isinstance(ratio, Target):
        t = ratio
    else:
        t = Target(ratio=ratio, global_rank=global_rank, round_to=round_to, min_keep=min_keep)
        if params_budget is not None:
            t.budget = params_budget
            t.costs = lambda g: unit_param_costs(dg, g)
            t.measure = params_measure(dg, t.costs)
    plan = Plan()
    groups = [g for g in dg.prunable_groups() if g.id in scores]
    free = [g for g in groups if g.id not in t.ratio_for]
    fixed = {g.id: t.uniform_keep(g, t.ratio_for[g.id]) for g in groups if g.id in t.ratio_for}
    if not groups:
        return plan
    if t.budget is not None:
        if t.budget <= 0 and not fixed:
            return plan
        n_keep = (_global_for_budget(groups, free, fixed, scores, t) if t.global_rank
                  else _uniform_for_budget(groups, fixed, scores, t))
    elif t.global_rank:
        n0 = sum(t.n0(g) for g in free)
        gone = sum(t.n0(g) - g.n_units for g in free)
        units = math.floor(n0 * t.ratio * t.fraction + 1e-9) - gone
        n_keep = {**fixed, **_global_n_keep(free, scores, [np.ones(g.n_units) for g in free],
                                            units, t)}
    else:
        n_keep = {**fixed, **{g.id: t.uniform_keep(g, t.ratio) for g in free}}
    for g in groups:
        k = _round_keep(n_keep[g.id], g.n_units, _round_step(g, t.round_to), t.floor_keep(g))
        if k >= g.n_units:
            continue
        keep = _top(scores[g.id], k)
        keep = _ensure_every_axis_keeps_one(g, keep, scores[g.id])
        if len(keep) < g.n_units:
            plan.keep[g.id] = keep
    return plan


def params_measure(dg: DependencyGraph, costs: Callable[[Group], np.ndarray]):
    """Parameters removed by keep-sets (unit costs are exact for parameters)."""
    cache: dict[int, np.ndarray] = {}

    def measure(keep: dict[int, np.ndarray]) -> float:
        gone = 0.0
        for gid, kept in keep.items():
            g = dg.groups[gid]
            if gid not in cache:
                cache[gid] = costs(g)
            c = cache[gid]
            gone += float(c.sum() - c[kept].sum())
        return gone

    return measure


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
