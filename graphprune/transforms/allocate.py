"""Allocation: how many units every group keeps, from measured sensitivity, for a parameter
target.

Uniform widths (the same fraction of every group) treat a layer whose removed channels its
consumer can reconstruct from the others like one that cannot; ranking units of all groups by
normalized score (`--global`) compares numbers that do not share a scale. Here every group gets
an error curve and the widths minimize the total error for the parameter budget:

- the error of removing the m lowest-scored units P of group g is the Optimal-Brain-Surgeon cost
  with compensation at each of its consumers, tr(W_P ([H⁻¹]_PP)⁻¹ W_Pᵀ) (H: the consumer's
  bias-augmented input Hessian, calibrated or data-free, as `obspa` uses), i.e. the output
  error left after the least-squares refit of the kept columns, divided by the consumer's
  output energy tr(W Σ Wᵀ) (Σ: input covariance), so that layers of different scales compare;
  a group without consumer statistics uses the fraction of its score mass removed;
- m is evaluated on a grid of fractions (`GRID`), linearly interpolated between;
- a Lagrangian sweep (each group takes the m minimizing error − λ·parameters) brackets the
  budget, then single steps with the smallest error per parameter are taken until the budget
  is met: the parameters removed, counted exactly as the report counts them (every
  floating-point constant, each shrunk along all of its pruned axes at once), reach the budget
  and overshoot it by less than one step of one group.
"""
from __future__ import annotations

import math

import numpy as np

from ..analysis.graph import DependencyGraph, Group
from ..calibration.stats import CalibContext, Consumer, augmented_hessian, build_context
from ..ops.registry import ROLE_IN
from .correct import find_producers, producer_stages
from .masking import find_bias
from .select import Plan, _ensure_every_axis_keeps_one, _round_keep, _round_step, _top

GRID = tuple(np.round(np.arange(0.0, 0.951, 0.05), 3))
MAX_REMOVE = 0.95  # no group loses more than this fraction of its units


class ParamCount:
    """Parameters removed by removing the first m[g] units of `orders[g]` from each group,
    counted over every floating-point constant with a pruned axis."""

    def __init__(self, dg: DependencyGraph, groups: list[Group], orders: dict[int, np.ndarray],
                 added: list[tuple[str, int]] = ()):
        view = dg.view
        self.tensors: list[tuple[int, list[tuple[int, int, np.ndarray]], int]] = []
        self.by_group: dict[int, list[int]] = {g.id: [] for g in groups}
        axes: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        ids = {g.id for g in groups}
        # biases later passes create (weight, output axis): counted negative, at kept width
        self.added: list[tuple[int, int | None, np.ndarray | None]] = []
        for w, ax in added:
            n_out = int(view.consts[w].shape[ax])
            g = dg.group_for(w, ax)
            if g is not None and g.id in ids:
                counts = np.bincount(g.unit_of[(w, ax)], minlength=g.n_units)[:g.n_units]
                self.added.append((n_out, g.id, np.concatenate([[0], np.cumsum(counts[orders[g.id]])])))
            else:
                self.added.append((n_out, None, None))
        for g in groups:
            for (t, ax), units in g.unit_of.items():
                c = view.consts.get(t)
                if c is None or not c.shape or not np.issubdtype(np.dtype(c.dtype), np.floating):
                    continue
                # prefix[m]: positions along this axis owned by the first m removed units
                counts = np.bincount(units, minlength=g.n_units)[:g.n_units]
                prefix = np.concatenate([[0], np.cumsum(counts[orders[g.id]])])
                axes.setdefault(t, []).append((ax, g.id, prefix))
        for t, lst in axes.items():
            shape = list(view.consts[t].shape)
            pruned_axes = {ax for ax, _, _ in lst}
            rest = int(np.prod([d for i, d in enumerate(shape) if i not in pruned_axes]))
            self.tensors.append((int(np.prod(shape)), [(shape[ax], gid, pre)
                                                         for ax, gid, pre in lst], rest))
            for _, gid, _ in lst:
                self.by_group[gid].append(len(self.tensors) - 1)

    def _tensor_removed(self, i: int, m: dict[int, int]) -> int:
        numel, axes, rest = self.tensors[i]
        kept = rest
        for size, gid, prefix in axes:
            kept *= size - int(prefix[m.get(gid, 0)])
        return numel - kept

    def _added(self, m: dict[int, int], gid=None) -> int:
        return sum(n - (int(pre[m.get(g, 0)]) if g is not None else 0)
                   for n, g, pre in self.added if gid is None or g == gid)

    def removed(self, m: dict[int, int]) -> int:
        return sum(self._tensor_removed(i, m) for i in range(len(self.tensors))) - self._added(m)

    def delta(self, m: dict[int, int], gid: int, new: int) -> int:
        """Change of `removed(m)` when group gid goes to `new` removed units."""
        idx = sorted(set(self.by_group[gid]))
        m2 = dict(m)
        m2[gid] = new
        return (sum(self._tensor_removed(i, m2) for i in idx) - self._added(m2, gid)
                - sum(self._tensor_removed(i, m) for i in idx) + self._added(m, gid))


def _consumers_by_group(dg: DependencyGraph, ctx: CalibContext) -> dict[int, list[Consumer]]:
    out: dict[int, list[Consumer]] = {}
    for c in ctx.consumers:
        g = dg.group_for(c.w, c.w_axis)
        if (c.x, c.x_axis) in ctx.stats and g is not None and g.prunable \
                and (c.w, c.w_axis) in g.unit_of:
            out.setdefault(g.id, []).append(c)
    return out


def _matrix(dg: DependencyGraph, c: Consumer) -> np.ndarray:
    return c.matrix(np.asarray(dg.view.const_value(c.w), dtype=np.float64))


def error_curves(dg: DependencyGraph, groups: list[Group], orders: dict[int, np.ndarray],
                 cands: dict[int, np.ndarray], ctx: CalibContext, scores, norm: str = "energy"
                 ) -> dict[int, np.ndarray]:
    """Error of every candidate removal count of every group (see the module docstring)."""
    by_group = _consumers_by_group(dg, ctx)
    cache: dict = {}
    out = {}
    for g in groups:
        order, ms = orders[g.id], cands[g.id]
        cons = by_group.get(g.id)
        if not cons:
            s = np.maximum(np.asarray(scores[g.id], np.float64), 0.0)
            mass = np.concatenate([[0.0], np.cumsum(s[order])]) / max(float(s.sum()), 1e-300)
            out[g.id] = mass[ms]
            continue
        rank = np.empty(g.n_units, dtype=np.int64)
        rank[order] = np.arange(g.n_units)
        err = np.zeros(len(ms))
        for c in cons:
            key = (c.x, c.x_axis)
            st = ctx.stats[key]
            if key not in cache:
                cache[key] = (augmented_hessian(st), st.hessian() - np.outer(st.mean, st.mean))
            ha, cov = cache[key]
            w = _matrix(dg, c)
            energy = float(np.sum((w @ cov) * w)) if norm == "energy" else 1.0
            energy = energy if energy > 0 else 1.0
            col_rank = rank[g.unit_of[(c.w, c.w_axis)]]  # removal position of each column
            # Columns in reverse removal order after the bias input: removing the first m
            # units removes a trailing block P, whose error after the optimal refit of the
            # rest is tr(W_P S W_Pᵀ) with S the Schur complement = L_PP L_PPᵀ of the
            # Cholesky factor of the permuted Hessian: one factorization for every m.
            cols = np.argsort(-col_rank, kind="stable")
            perm = np.concatenate([[ha.shape[0] - 1], cols])
            low = _cholesky(ha[np.ix_(perm, perm)])
            wc = w[:, cols]
            n_cols = len(cols)
            sorted_rank = col_rank[cols]
            for i, m in enumerate(ms):
                t = int(np.sum(sorted_rank < m))
                if t == 0:
                    continue
                blk = low[-t:, -t:]
                err[i] += float(np.sum((wc[:, n_cols - t:] @ blk) ** 2)) / energy
        out[g.id] = err
    return out


def planned_biases(dg: DependencyGraph, ctx: CalibContext | None, compensate: str | None,
                   reconstruct: bool, correct: bool) -> list[tuple[str, int]]:
    """(weight, output axis) of every layer that compensation, reconstruction or statistics
    correction will give a new bias (their parameters count towards the report's total)."""
    view = dg.view
    out: dict[str, int] = {}
    consumers = ctx.consumers if ctx is not None else []
    shared = {c.w for c in consumers if sum(d.w == c.w for d in consumers) > 1}
    for c in consumers:
        if c.w in shared:
            continue
        n_out = int(view.consts[c.w].shape[c.out_axis])
        if reconstruct and find_bias(view, c, n_out)[0] == "new":
            out[c.w] = c.out_axis
        elif compensate and not reconstruct and not c.bias:
            out[c.w] = c.out_axis
    if correct:
        prods = {p.y: p for p in find_producers(view)}
        zeroed = {m.tensor for g in dg.prunable_groups() for m in g.members if m.role == ROLE_IN}
        dirty = producer_stages(view, prods, zeroed)
        for p in prods.values():
            if p.y in dirty and p.bias_kind == "new":
                out[p.w] = p.out_axis
    return sorted(out.items())


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, with growing jitter if `a` is not numerically positive."""
    jitter = 0.0
    for _ in range(8):
        try:
            return np.linalg.cholesky(a + jitter * np.eye(len(a)))
        except np.linalg.LinAlgError:
            jitter = max(jitter * 10, 1e-10 * float(np.mean(np.diag(a))) or 1e-10)
    w, v = np.linalg.eigh(a)
    return np.linalg.cholesky(v @ np.diag(np.maximum(w, 1e-12 * max(w.max(), 1e-300))) @ v.T)


def reach(counter: ParamCount, groups: list[Group], steps: dict[int, np.ndarray],
          budget: float) -> dict[int, int]:
    """The fewest units of each group whose removal alone meets the budget (its largest
    allowed removal where none does): no allocation takes more from it than about that."""
    out = {}
    for g in groups:
        ms = steps[g.id]
        lo, hi = 0, len(ms) - 1
        if counter.delta({}, g.id, int(ms[hi])) < budget:
            out[g.id] = int(ms[hi])
            continue
        while lo < hi:  # removed parameters grow with m
            mid = (lo + hi) // 2
            if counter.delta({}, g.id, int(ms[mid])) >= budget:
                hi = mid
            else:
                lo = mid + 1
        out[g.id] = int(ms[lo])
    return out


def allocate(dg: DependencyGraph, scores: dict[int, np.ndarray], ctx: CalibContext | None,
             budget: float, round_to: int = 1, min_keep: int = 1, norm: str = "energy",
             added: list[tuple[str, int]] = (), max_remove: float = MAX_REMOVE,
             measure=None) -> tuple[Plan, str]:
    """Keep-sets removing at least `budget` parameters with the least total error. `added`:
    (weight, output axis) of the layers later passes will give a bias (see
    `planned_biases`); their parameters count against the budget. No group loses more than
    `max_remove` of its units. `measure(groups, orders, cands, reach)`: error curves measured
    some other way (`transforms.sensitivity`; `reach` as `reach` gives it), or None where they
    cannot be; the layer-wise curves of `error_curves` otherwise. Returns the plan and the
    curves used ("measured" or "obs")."""
    plan = Plan()
    groups = [g for g in dg.prunable_groups() if g.id in scores]
    if budget <= 0 or not groups:
        return plan, "obs"
    if ctx is None or not ctx.stats:
        ctx = build_context(dg, None, data_free=True)
    orders, cands, steps = {}, {}, {}
    for g in groups:
        s = np.asarray(scores[g.id], np.float64)
        orders[g.id] = np.lexsort((np.arange(g.n_units), -s))[::-1]  # removal order
        step = _round_step(g, round_to)
        ok = [m for m in range(int(math.floor(max_remove * g.n_units + 1e-9)) + 1)
              if m < g.n_units
              and _round_keep(g.n_units - m, g.n_units, step, min_keep) == g.n_units - m]
        grid = sorted({min(ok, key=lambda m: abs(m - f * g.n_units)) for f in GRID
                       if f <= max_remove})
        cands[g.id] = np.array(grid)
        steps[g.id] = np.array(ok)
    counter = ParamCount(dg, groups, orders, added)
    curves = None
    if measure is not None:
        curves = measure(groups, orders, cands, reach(counter, groups, steps, budget))
    method = "obs" if curves is None else "measured"
    if curves is None:
        curves = error_curves(dg, groups, orders, cands, ctx, scores, norm)

    def err(gid: int, m: int) -> float:
        return float(np.interp(m, cands[gid], curves[gid]))

    # Lagrangian bracket: each group's best grid point for error − λ·(its parameters)
    solo = {g.id: np.array([counter.delta({}, g.id, int(m)) for m in cands[g.id]]) for g in groups}

    def at(lam: float) -> dict[int, int]:
        return {g.id: int(cands[g.id][np.argmin(curves[g.id] - lam * solo[g.id])])
                for g in groups}

    if counter.removed({g.id: int(cands[g.id][-1]) for g in groups}) < budget:
        m = {g.id: int(steps[g.id][-1]) for g in groups}  # cannot reach it: remove the most
    else:
        lo, hi = 0.0, 1.0
        while counter.removed(at(hi)) < budget and hi < 1e30:
            hi *= 4.0
        for _ in range(60):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6
            if counter.removed(at(mid)) >= budget:
                hi = mid
            else:
                lo = mid
            if hi / max(lo, 1e-300) < 1.0001:
                break
        m = at(lo)
        # single steps, the least error per parameter first, until the budget is met
        gone = counter.removed(m)
        while gone < budget:
            best = None
            for g in groups:
                nxt = steps[g.id][steps[g.id] > m[g.id]]
                if not len(nxt):
                    continue
                d_p = counter.delta(m, g.id, int(nxt[0]))
                if d_p <= 0:
                    continue
                d_e = err(g.id, int(nxt[0])) - err(g.id, m[g.id])
                key = (max(d_e, 0.0) / d_p, g.id)
                if best is None or key < best[0]:
                    best = (key, g.id, int(nxt[0]), d_p)
            if best is None:
                break
            _, gid, new, d_p = best
            m[gid] = new
            gone += d_p
    for g in groups:
        k = g.n_units - m[g.id]
        if k >= g.n_units:
            continue
        keep = _ensure_every_axis_keeps_one(g, _top(scores[g.id], k), scores[g.id])
        if len(keep) < g.n_units:
            plan.keep[g.id] = keep
    return plan, method
