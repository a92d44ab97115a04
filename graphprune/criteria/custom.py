"""A criterion given as a plain function (the Python API's `criterion=fn`).

    def fn(group, stats) -> scores      # one number per unit of `group`, higher is kept

`group` is a `GroupInfo`: its `name`, `kind` ("channel", "head", "mlp", "hidden"), `n_units`,
`weights` (every constant tensor axis that shrinks with it: `Weight(tensor, axis, role, value,
units)`, `units[i]` being the unit of position i along `axis`) and `per_unit(values, weight)`,
which sums values given per position of a weight's axis into one value per unit. `stats` is
`{weight name: ChannelStats}` for the layers that read the group's units with a constant weight
(a Conv's input channels, a Linear's inputs), measured on the calibration samples (`mean`,
`var`, `rms`, `hessian()`), or `{}` without calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..analysis.graph import DependencyGraph, Group
from ..errors import UserError


@dataclass
class Weight:
    tensor: str
    axis: int
    role: str  # "out" (the unit is an output of this weight's layer) or "in"
    value: np.ndarray
    units: np.ndarray


class GroupInfo:
    """What a criterion function sees of one group (see the module docstring)."""

    def __init__(self, dg: DependencyGraph, g: Group):
        self._dg, self._g = dg, g
        self.id, self.name, self.kind, self.n_units = g.id, g.label(), g.kind, g.n_units

    @property
    def weights(self) -> list[Weight]:
        out = []
        for m in self._g.members:
            value = self._dg.view.const_value(m.tensor)
            units = self._g.unit_of.get((m.tensor, m.axis))
            if value is None or units is None:
                continue
            out.append(Weight(m.tensor, m.axis, m.role, np.asarray(value), units))
        return out

    def per_unit(self, values: np.ndarray, weight: Weight) -> np.ndarray:
        """Values per position along `weight.axis` summed into one value per unit."""
        s = np.zeros(self.n_units)
        np.add.at(s, weight.units, np.asarray(values, dtype=np.float64))
        return s


def from_callable(fn: Callable) -> Callable:
    """A registry-style criterion `(dg, calib_ctx=None, seed=0) -> {group id: scores}` that
    calls `fn(group, stats)` for every prunable group."""

    def criterion(dg: DependencyGraph, calib_ctx=None, seed: int = 0, **_):
        consumers = calib_ctx.consumers if calib_ctx is not None else []
        stats = calib_ctx.stats if calib_ctx is not None else {}
        out = {}
        for g in dg.prunable_groups():
            members = {(m.tensor, m.axis) for m in g.members}
            mine = {c.w: stats[(c.x, c.x_axis)] for c in consumers
                    if (c.w, c.w_axis) in members and (c.x, c.x_axis) in stats}
            s = np.asarray(fn(GroupInfo(dg, g), mine), dtype=np.float64).reshape(-1)
            if s.shape != (g.n_units,) or not np.all(np.isfinite(s)):
                raise UserError(f"criterion {name_of(fn)} returned {s.shape[0]} scores for "
                                f"group {g.label()}, which has {g.n_units} units (finite "
                                "numbers, one per unit)")
            out[g.id] = s
        return out

    return criterion


def name_of(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
