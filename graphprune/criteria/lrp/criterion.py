"""The ``lrp`` criterion: Σ|relevance| of each unit's activations (see
`graphprune.criteria.lrp.explainer` for how relevance is computed)."""
from __future__ import annotations

import numpy as np

from ...analysis.graph import DependencyGraph
from ...calibration.data import Calibration, random_feeds
from ...calibration.stats import CalibContext
from ...errors import UserError
from ...ops.registry import ROLE_IN, ROLE_OUT
from ..magnitude import magnitude
from ..registry import criterion
from .explainer import BATCH, EPS, Explainer, LRPConfig
from .layers import LAYER_OPS

RANDOM_SAMPLES = 16


def score_targets(dg: DependencyGraph) -> dict[int, list[tuple[str, int]]]:
    """Per prunable group, the activation axes whose relevance scores its units: the outputs of
    the layers that produce the units (ROLE_OUT weights), else the inputs of the layers that
    consume them (ROLE_IN weights)."""
    view = dg.view
    out = {}
    for g in dg.prunable_groups():
        outs = {m.tensor for m in g.members if m.role == ROLE_OUT}
        ins = {m.tensor for m in g.members if m.role == ROLE_IN}
        acts = [dn for dn in g.unit_of if dn[0] not in view.consts]
        produced = [(t, a) for t, a in acts
                    if (p := view.producer.get(t)) is not None and p.op_type in LAYER_OPS
                    and outs.intersection(p.input)]
        consumed = [(t, a) for t, a in acts
                    if any(n.op_type in LAYER_OPS and n.input[0] == t
                           and ins.intersection(n.input[1:]) for n in view.consumers.get(t, []))]
        out[g.id] = produced or consumed
    return out


class _ChannelSums:
    """Σ|R| per position of the wanted axes, over samples and every other axis."""

    def __init__(self, targets: dict[int, list[tuple[str, int]]]):
        self.axes: dict[str, set[int]] = {}
        for dns in targets.values():
            for t, a in dns:
                self.axes.setdefault(t, set()).add(a)
        self.sums: dict[tuple[str, int], np.ndarray] = {}

    def __call__(self, name: str, r: np.ndarray) -> None:
        for a in self.axes.get(name, ()):
            if a >= r.ndim:
                continue
            other = tuple(k for k in range(r.ndim) if k != a)
            v = np.abs(r).sum(axis=other)
            key = (name, a)
            self.sums[key] = self.sums[key] + v if key in self.sums else v


def unit_scores(dg: DependencyGraph, targets, sums: dict, ctx: CalibContext) -> dict:
    """L1-normalized Σ|R| per unit; magnitude (noted) for groups that got no relevance."""
    fallback = None
    out = {}
    for g in dg.prunable_groups():
        s = np.zeros(g.n_units)
        for dn in targets.get(g.id, []):
            v = sums.get(dn)
            if v is not None and len(v) == len(g.unit_of[dn]):
                np.add.at(s, g.unit_of[dn], v)
        total = float(s.sum())
        if total > 0 and np.isfinite(total):
            out[g.id] = s / total
            continue
        if fallback is None:
            fallback = magnitude(dg)
        m = fallback[g.id]
        out[g.id] = m / m.sum() if m.sum() > 0 else m
        ctx.notes.append(f"lrp: group {g.id} ({g.label()}) receives no relevance; scored by "
                         "magnitude")
    return out


@criterion("lrp")
def lrp(dg: DependencyGraph, calib_ctx: CalibContext | None = None, seed: int = 0,
        batch: int = BATCH, samples: int = RANDOM_SAMPLES, eps: float = EPS,
        conv_rule: str = "zplus", first_rule: str = "zplus", fold_bn: bool = True,
        **_) -> dict[int, np.ndarray]:
    """Σ|relevance| of each unit's activations over the calibration samples (see module doc).

    The samples are `calib_ctx.calibration` (set by the pipeline from --calib/--calib-random),
    else `samples` seeded random inputs."""
    ctx = calib_ctx if calib_ctx is not None else CalibContext()
    if ctx.runner is None:
        raise UserError("lrp runs the model: it needs a calibration context with a runner "
                        "(graphprune.pipeline.calibrate.build_context)")
    cfg = LRPConfig(eps=eps, conv_rule=conv_rule, first_rule=first_rule, fold_bn=fold_bn)
    ex = Explainer(dg.view, ctx.runner, cfg=cfg, attention=dg.has_attention,
                   input_relevance=False)
    cal = ctx.calibration
    if cal is None:
        cal = Calibration(random_feeds(ex.model, samples, seed), source=f"random:{samples}")
        ctx.notes.append(f"lrp: no calibration data; relevance measured on {cal.n} seeded random "
                         "inputs (give --calib with a few real samples per class)")
        if ctx.source in ("", "none"):
            ctx.source, ctx.samples = f"{cal.source} (lrp)", cal.n
    targets = score_targets(dg)
    sums = _ChannelSums(targets)
    ex.run(cal, sums, batch)
    ctx.notes.extend(ex.notes())
    return unit_scores(dg, targets, sums.sums, ctx)
