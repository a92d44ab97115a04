"""Error curves measured at the model's outputs, for allocation (`transforms.allocate`).

The layer-wise curves of `allocate.error_curves` (the error left after the least-squares refit
of one consumer, relative to that consumer's output energy) compare layers well in CNNs but
mislead in decoders: a layer whose output energy sits in a few massive-activation features
looks nearly free to prune at 95 %, while the model downstream reads the small features it
loses. Here a group's error at a width is what the whole model says: its removed units are cut
as in the masked model (`masking.masked_overrides`) and the model's
outputs on a few calibration samples are compared with the original's:

- language models (text calibration): the mean KL divergence of the next-token distribution,
  KL(p_original ‖ p_pruned) per position, averaged;
- anything else: the squared error of every floating-point output relative to its variance,
  summed over the outputs.

Each group is measured at a few fractions (`FRACTIONS`) of the units the budget could take from
it (`reach`: the removal that alone meets the budget; all its units for most groups, a small
part of a group that owns most of the parameters, such as a transformer's hidden size), every
count for groups of at most `SMALL` units; linearly interpolated onto the allocation grid,
extended beyond the last measured point along its last slope, made non-decreasing. One run of the model per point in
one session (`Runner.probe`): 3 runs per group, plus one reference run.
"""
from __future__ import annotations

import numpy as np

from ..analysis.graph import DependencyGraph, Group
from ..calibration.stats import Runner
from .masking import cuts, masked_overrides
from .select import Plan

FRACTIONS = (0.25, 0.5, 0.75)
SMALL = 4  # groups of at most this many units are measured at every count
MAX_SAMPLES = 8  # calibration samples the model's outputs are compared on


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float32) - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_error(ref: list[dict], out: list[dict], names: list[str]) -> float:
    """Mean KL(p_ref ‖ p_out) over every position of the first output (next-token logits)."""
    total, count = 0.0, 0
    for r, o in zip(ref, out):
        lr, lo = _log_softmax(r[names[0]]), _log_softmax(o[names[0]])
        kl = np.sum(np.exp(lr) * (lr - lo), axis=-1)
        total += float(kl.sum())
        count += kl.size
    return total / max(count, 1)


def relative_error(ref: list[dict], out: list[dict], names: list[str]) -> float:
    """Σ over the outputs of ‖y − y_ref‖² / ‖y_ref − mean‖²."""
    err = 0.0
    for n in names:
        num = sum(float(np.sum((o[n].astype(np.float64) - r[n]) ** 2)) for r, o in zip(ref, out))
        den = sum(float(np.sum((r[n].astype(np.float64) - np.mean(r[n])) ** 2)) for r in ref)
        err += num / den if den > 0 else num
    return err


def _swapped(dg: DependencyGraph, groups: list[Group], orders: dict[int, np.ndarray],
             reach: dict[int, int]) -> set[str] | None:
    """Every constant a measurement cuts (`masking.cuts` at each group's widest cut), or None
    if one is not a floating-point initializer (a Constant node, a quantized weight): a run
    cannot swap it."""
    view = dg.view
    names: set[str] = set()
    for g in groups:
        kept = np.setdiff1d(np.arange(g.n_units), orders[g.id][:max(_points(g, reach))])
        mine = {m.tensor for m, _ in cuts(g, kept)}
        for n in mine:
            c = view.consts.get(n)
            if c is None or c.kind != "initializer" \
                    or not np.issubdtype(np.dtype(c.dtype), np.floating):
                return None
        if not mine:
            return None
        names |= mine
    return names


def _points(g: Group, reach: dict[int, int] | None = None) -> list[int]:
    """Removal counts a group is measured at: fractions of the units the budget can reach."""
    top = min(g.n_units, (reach or {}).get(g.id, g.n_units))
    if top <= SMALL:
        return list(range(1, min(top + 1, g.n_units)))
    return sorted({min(g.n_units - 1, max(1, int(round(f * top)))) for f in FRACTIONS})


def measured_curves(dg: DependencyGraph, groups: list[Group], orders: dict[int, np.ndarray],
                    cands: dict[int, np.ndarray], runner: Runner, feeds: dict,
                    language_model: bool, reach: dict[int, int] | None = None
                    ) -> dict[int, np.ndarray] | None:
    """Error of every candidate removal count `cands[g]` (the first m units of `orders[g]`
    removed) of every group, measured at the outputs (see the module docstring); None when a
    group's consumers cannot be swapped in a run. `reach[g]`: the most units the budget can
    take from g (all of them where absent)."""
    reach = reach or {}
    names = _swapped(dg, groups, orders, reach)
    if names is None:
        return None
    view = dg.view
    original = {n: np.asarray(view.const_value(n)) for n in sorted(names)}
    sub = {k: v[:MAX_SAMPLES] if getattr(v, "ndim", 0) else v for k, v in feeds.items()}
    probe = runner.probe(view.model, original, sub)
    ref = probe.run()
    floats = [n for n in probe.outputs if np.issubdtype(ref[0][n].dtype, np.floating)]
    error = kl_error if language_model else relative_error
    out = {}
    for g in groups:
        xs, ys = [0], [0.0]
        for p in _points(g, reach):
            kept = np.setdiff1d(np.arange(g.n_units), orders[g.id][:p])
            xs.append(p)
            ys.append(error(ref, probe.run(masked_overrides(view, dg, Plan({g.id: kept}))),
                            floats))
        ms = np.asarray(cands[g.id], dtype=np.float64)
        curve = np.interp(ms, xs, ys)
        if len(xs) > 1:
            slope = max((ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1), 0.0)
            beyond = ms > xs[-1]
            curve[beyond] = ys[-1] + slope * (ms[beyond] - xs[-1])
        out[g.id] = np.maximum.accumulate(np.maximum(curve, 0.0))
    return out


def probe_runs(groups: list[Group], reach: dict[int, int] | None = None) -> int:
    """Model runs `measured_curves` makes (for progress bars)."""
    return sum(len(_points(g, reach)) for g in groups)
