"""Activation-aware criteria: wanda, flap, amp.

Weight magnitude alone cannot tell a channel that carries large activations from one that is
almost always zero; these criteria look at what flows into the *consumers* of each unit (the
layers whose contraction axis loses the unit: next Conv's input channels, a Gemm/MatMul's K).

- ``wanda`` (Wanda-sp): Σ_consumers Σ_i |W_ij| · ‖X_j‖₂ (Conv: |W| summed over output channels
  and kernel offsets). ‖X_j‖₂ is the root mean square over calibration positions.
- ``flap``: Σ_consumers Var(X_j) · ‖W_{:,j}‖², z-scored per group so that groups compare under
  ``--global``; the compensation pass then folds the removed channels' mean contribution into
  the consumer's bias (b ← b + W_{:,P}·E[X_P]).
- ``amp`` (attention heads + MLP units, projection energy): E‖W_{:,P} x_P‖² over consumers, the
  energy of what unit P writes through its consumer (for a head: its whole o_proj slice, for an
  MLP unit: its down_proj column) on the calibration inputs. Single columns reduce to
  ‖W_{:,j}‖²·E[x_j²]; multi-column units (heads) use their block of E[x xᵀ], so correlated
  channels inside a head count together.

``obspa`` (`graphprune.criteria.obspa`) builds on the same consumers and statistics.

A group none of whose consumers has statistics (no calibration given, or its consumers are not
Conv/Gemm/MatMul with a constant weight) is scored by `magnitude`; the context's `notes` list
says which groups fell back.

Every criterion takes ``calib_ctx`` (a `graphprune.calibration.stats.CalibContext`) from the
pipeline; called without one, wanda, flap and amp fall back to magnitude everywhere.
"""
from __future__ import annotations

import numpy as np

from ..analysis.graph import DependencyGraph
from ..calibration.stats import CalibContext, Consumer
from .magnitude import magnitude
from .registry import criterion

Z_SHIFT = 10.0  # z-scores are shifted positive so global ranking (÷ mean) keeps their order


def _consumers_by_group(dg: DependencyGraph, ctx: CalibContext) -> dict[int, list[Consumer]]:
    out: dict[int, list[Consumer]] = {}
    for c in ctx.consumers:
        if (c.x, c.x_axis) not in ctx.stats:
            continue
        g = dg.group_for(c.w, c.w_axis)
        if g is not None and g.prunable and (c.w, c.w_axis) in g.unit_of:
            out.setdefault(g.id, []).append(c)
    return out


def consumer_matrix(dg: DependencyGraph, c: Consumer) -> np.ndarray:
    return c.matrix(np.asarray(dg.view.const_value(c.w), dtype=np.float64))


def score_groups(dg, ctx, name, per_consumer) -> dict[int, np.ndarray]:
    """Scores of every prunable group: Σ over its consumers of per_consumer(group, consumer)
    (one number per unit); magnitude where no consumer has statistics, noted in `ctx`."""
    by_group = _consumers_by_group(dg, ctx)
    fallback = None
    out = {}
    for g in dg.prunable_groups():
        cons = by_group.get(g.id)
        if not cons:
            if fallback is None:
                fallback = magnitude(dg)
            out[g.id] = fallback[g.id]
            ctx.notes.append(f"{name}: group {g.id} ({g.label()}) has no consumer statistics; "
                             "scored by magnitude")
            continue
        s = np.zeros(g.n_units)
        for c in cons:
            s += per_consumer(g, c)
        out[g.id] = s
    return out


def per_position(dg, ctx, name, fn) -> dict[int, np.ndarray]:
    """`score_groups` where fn(W_matrix, stats) scores each consumer input position, summed
    into the position's unit."""
    ctx = ctx or CalibContext()

    def per_consumer(g, c):
        s = np.zeros(g.n_units)
        np.add.at(s, g.unit_of[(c.w, c.w_axis)],
                  fn(consumer_matrix(dg, c), ctx.stats[(c.x, c.x_axis)]))
        return s

    return score_groups(dg, ctx, name, per_consumer)


@criterion("wanda")
def wanda(dg: DependencyGraph, calib_ctx: CalibContext | None = None, **_) -> dict[int, np.ndarray]:
    """Wanda-sp: Σ_i |W_ij| · ‖X_j‖₂ over the unit's consumers."""
    return per_position(dg, calib_ctx if calib_ctx and calib_ctx.calibrated else None, "wanda",
                         lambda w, st: np.abs(w).sum(0) * st.rms)


@criterion("flap")
def flap(dg: DependencyGraph, calib_ctx: CalibContext | None = None, **_) -> dict[int, np.ndarray]:
    """FLAP fluctuation: Var(X_j)·‖W_{:,j}‖² over consumers, standardized per group."""
    raw = per_position(dg, calib_ctx if calib_ctx and calib_ctx.calibrated else None, "flap",
                        lambda w, st: st.var * (w * w).sum(0))
    return {gid: _zscore(s) for gid, s in raw.items()}


@criterion("amp")
def amp(dg: DependencyGraph, calib_ctx: CalibContext | None = None, **_) -> dict[int, np.ndarray]:
    """Projection energy E‖W_P x_P‖² of every unit through its consumers (see the docstring)."""
    ctx = calib_ctx if calib_ctx and calib_ctx.calibrated else CalibContext()

    def per_consumer(g, c):
        w = consumer_matrix(dg, c)
        h = ctx.stats[(c.x, c.x_axis)].hessian()
        return unit_energy(w, h, g.unit_of[(c.w, c.w_axis)], g.n_units)

    return score_groups(dg, ctx, "amp", per_consumer)


def unit_energy(w: np.ndarray, h: np.ndarray, units: np.ndarray, n_units: int) -> np.ndarray:
    """tr(W_P H_PP W_Pᵀ) per unit P: the mean squared output its columns produce, ‖W_j‖²·H_jj
    for a single column."""
    return sum_per_unit(units, n_units, lambda c: (w[:, c] ** 2).sum(0) * np.diag(h)[c],
                         lambda p: float(np.sum((w[:, p] @ h[np.ix_(p, p)]) * w[:, p])))


def _zscore(s: np.ndarray) -> np.ndarray:
    sd = float(np.std(s))
    z = (s - np.mean(s)) / sd if sd > 0 else np.zeros_like(s)
    return z + Z_SHIFT


def sum_per_unit(units: np.ndarray, n_units: int, single, block) -> np.ndarray:
    """One number per unit from its input columns (`units[j]` is column j's unit): units
    owning one column get `single(columns)` (vectorized over all of them), wider units (a
    head's columns) `block(their columns)`."""
    out = np.zeros(n_units)
    counts = np.bincount(units, minlength=n_units)
    cols = np.flatnonzero(counts[units] == 1)
    if len(cols):
        out[units[cols]] += single(cols)
    for u in np.flatnonzero(counts > 1):
        out[u] += block(np.flatnonzero(units == u))
    return out
