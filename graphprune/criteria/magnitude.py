"""Weight-only criteria: `magnitude` (group norm) and `random` (the ablation baseline)."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..analysis.cost import is_param
from ..analysis.graph import DependencyGraph
from ..ir import GraphView, attr
from ..ir.dequant import float_value
from ..ops.registry import ROLE_IN, ROLE_OUT
from .registry import criterion


def slice_power_sums(view: GraphView, name: str, axes, p: float) -> dict[int, np.ndarray]:
    """Σ|w|^p over every slice of a constant along each of `axes` (one number per position),
    computing |w|^p once for all of them.

    Weights stored as ConstantOfShape fills are handled analytically so huge placeholder
    tensors are never materialized.
    """
    c = view.consts[name]
    if c.kind == "constant_of_shape":
        fill = attr(c.proto, "value")
        v = 0.0
        if fill is not None:
            v = float(abs(numpy_helper.to_array(fill).reshape(-1)[0]))
        return {a: np.full(c.shape[a], (v ** p) * (c.numel // max(c.shape[a], 1)),
                           dtype=np.float64) for a in axes}
    w = np.asarray(view.const_value(name))
    if w.ndim == 0:
        return {a: np.zeros(1) for a in axes}
    if not np.issubdtype(w.dtype, np.floating):
        w = float_value(view, name)  # quantized: its real values (per-channel scales)
    elif w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32)
    out = {}
    if p == 2:  # Σw² straight from the weights: no |w|^p copy (einsum sums in one pass)
        w = np.ascontiguousarray(w)
        for a in axes:
            v = w.reshape(int(np.prod(w.shape[:a], dtype=np.int64)), w.shape[a], -1)
            out[a] = np.einsum("inj,inj->n", v, v).astype(np.float64)
        return out
    powered = np.abs(w) ** p
    for a in axes:
        n = w.shape[a]
        pre = int(np.prod(w.shape[:a], dtype=np.int64))
        # (pre, n, post) is a view: the sums need no transposed copy
        out[a] = powered.reshape(pre, n, -1).sum(axis=(0, 2), dtype=np.float64)
    return out


def _weight_members(dg: DependencyGraph) -> dict[str, list[int]]:
    """Weight members (parameters of any dtype, see `is_param`) of the prunable groups:
    tensor -> axes."""
    out: dict[str, list[int]] = {}
    for grp in dg.prunable_groups():
        for m in grp.members:
            if m.role not in (ROLE_OUT, ROLE_IN):
                continue
            if not is_param(dg.view, m.tensor):
                continue
            out.setdefault(m.tensor, []).append(m.axis)
    return out


@criterion("magnitude")
def magnitude(dg: DependencyGraph, p: float = 2.0, **_) -> dict[int, np.ndarray]:
    """Group-norm magnitude: for every unit, Σ over all weight members of Σ|w|^p of its slices,
    each member first divided by its own mean so wide and narrow layers weigh alike. Each
    weight is read once (one tensor in memory at a time) for all the axes its groups need."""
    sums: dict[tuple[str, int], np.ndarray] = {}
    for name, axes in _weight_members(dg).items():
        for a, local in slice_power_sums(dg.view, name, sorted(set(axes)), p).items():
            mean = local.mean()
            sums[(name, a)] = local / mean if mean > 0 else local
    out: dict[int, np.ndarray] = {}
    for grp in dg.prunable_groups():
        scores = np.zeros(grp.n_units)
        n = 0
        for m in grp.members:
            local = sums.get((m.tensor, m.axis))
            if local is None or m.role not in (ROLE_OUT, ROLE_IN):
                continue
            np.add.at(scores, grp.unit_of[(m.tensor, m.axis)], local)
            n += 1
        out[grp.id] = scores / max(n, 1)
    return out


@criterion("random")
def random_scores(dg: DependencyGraph, seed: int = 0, **_) -> dict[int, np.ndarray]:
    """Uniform random scores (seeded): the ablation baseline."""
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.n_units) for g in dg.prunable_groups()}
