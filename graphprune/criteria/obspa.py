"""``obspa``: Optimal-Brain-Surgeon scoring of whole units (OBS for structured pruning).

For every consumer of a unit (the layer whose contraction axis loses it) with input Hessian
H = E[x xᵀ] (+ λ·mean diag), augmented with the constant input of the bias so the cost already
accounts for the mean being re-absorbed, removing input columns P costs
tr(W_P ([H⁻¹]_PP)⁻¹ W_Pᵀ); a unit's score sums this over its consumers. The compensation pass
(`graphprune.transforms.compensate`) then applies the optimal update of the kept columns and
bias. Without calibration data, H comes from a preceding BatchNorm (or identity), see
`graphprune.calibration.stats.data_free_stats`.
"""
from __future__ import annotations

import numpy as np

from ..analysis.graph import DependencyGraph
from ..calibration.stats import CalibContext, augmented_hessian, data_free_context
from .activation import consumer_matrix, score_groups, sum_per_unit
from .registry import criterion


def _inv_spd(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via Cholesky (adds jitter if needed)."""
    import scipy.linalg  # only criteria that invert Hessians pay its import time

    jitter = 0.0
    for _ in range(6):
        try:
            cf = scipy.linalg.cho_factor(a + jitter * np.eye(len(a)), lower=True)
            return scipy.linalg.cho_solve(cf, np.eye(len(a)))
        except np.linalg.LinAlgError:
            jitter = max(jitter * 10, 1e-8 * float(np.mean(np.diag(a))) or 1e-8)
    return np.linalg.pinv(a)


def obs_unit_costs(w: np.ndarray, hinv: np.ndarray, units: np.ndarray, n_units: int) -> np.ndarray:
    """OBS cost of removing each unit's input columns alone: tr(W_P ([H⁻¹]_PP)⁻¹ W_Pᵀ), in
    closed form Σ_rows W_j² / [H⁻¹]_jj for a single column."""
    diag = np.maximum(np.diag(hinv)[:len(units)], 1e-300)
    return sum_per_unit(
        units, n_units, lambda c: (w[:, c] ** 2).sum(0) / diag[c],
        lambda p: float(np.sum(w[:, p] * np.linalg.solve(hinv[np.ix_(p, p)], w[:, p].T).T)))


@criterion("obspa")
def obspa(dg: DependencyGraph, calib_ctx: CalibContext | None = None, **_) -> dict[int, np.ndarray]:
    """OBS group cost with the consumers' input Hessians (calibrated or data-free)."""
    ctx = calib_ctx
    if ctx is None or not ctx.stats:
        ctx = data_free_context(dg)
        if calib_ctx is not None:
            calib_ctx.consumers, calib_ctx.stats = ctx.consumers, ctx.stats
            ctx = calib_ctx
    hinv_cache: dict[tuple[str, int], np.ndarray] = {}

    def per_consumer(g, c):
        key = (c.x, c.x_axis)
        if key not in hinv_cache:
            hinv_cache[key] = _inv_spd(augmented_hessian(ctx.stats[key]))
        return obs_unit_costs(consumer_matrix(dg, c), hinv_cache[key], g.unit_of[(c.w, c.w_axis)],
                              g.n_units)

    return score_groups(dg, ctx, "obspa", per_consumer)
