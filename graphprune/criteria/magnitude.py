"""Weight-only criteria: `magnitude` (group norm) and `random` (the ablation baseline)."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..analysis.graph import DependencyGraph
from ..ir import GraphView, attr
from ..ops.registry import ROLE_IN, ROLE_OUT
from .registry import criterion


def slice_power_sums(view: GraphView, name: str, axis: int, p: float) -> np.ndarray:
    """Σ|w|^p over every slice of a constant along `axis` (one number per position).

    Weights stored as ConstantOfShape fills are handled analytically so huge placeholder
    tensors are never materialized.
    """
    c = view.consts[name]
    if c.kind == "constant_of_shape":
        fill = attr(c.proto, "value")
        v = 0.0
        if fill is not None:
            v = float(abs(numpy_helper.to_array(fill).reshape(-1)[0]))
        per = (v ** p) * (c.numel // max(c.shape[axis], 1))
        return np.full(c.shape[axis], per, dtype=np.float64)
    w = np.asarray(view.const_value(name))
    if w.ndim == 0:
        return np.zeros(1)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32)
    powered = w * w if p == 2 else np.abs(w) ** p
    other = tuple(a for a in range(w.ndim) if a != axis)
    out = np.sum(powered, axis=other, dtype=np.float64) if other else powered
    return np.asarray(out, dtype=np.float64)


@criterion("magnitude")
def magnitude(dg: DependencyGraph, p: float = 2.0, **_) -> dict[int, np.ndarray]:
    """Group-norm magnitude: for every unit, Σ over all weight members of Σ|w|^p of its slices,
    each member first divided by its own mean so wide and narrow layers weigh alike."""
    out: dict[int, np.ndarray] = {}
    for grp in dg.prunable_groups():
        scores = np.zeros(grp.n_units)
        n = 0
        for m in grp.members:
            if m.role not in (ROLE_OUT, ROLE_IN):
                continue
            dt = dg.view.consts[m.tensor].dtype
            if not np.issubdtype(dt, np.floating) and "float" not in str(dt):
                continue
            local = slice_power_sums(dg.view, m.tensor, m.axis, p)
            mean = local.mean()
            if mean > 0:
                local = local / mean
            np.add.at(scores, grp.unit_of[(m.tensor, m.axis)], local)
            n += 1
        out[grp.id] = scores / max(n, 1)
    return out


@criterion("random")
def random_scores(dg: DependencyGraph, seed: int = 0, **_) -> dict[int, np.ndarray]:
    """Uniform random scores (seeded): the ablation baseline."""
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.n_units) for g in dg.prunable_groups()}
