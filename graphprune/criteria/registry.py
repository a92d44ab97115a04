"""The criteria registry: one score per prunable unit of every group (higher = more important).

A criterion is a function `(dg, calib_ctx=None, seed=0, **options) -> {group_id:
np.ndarray[n_units]}` registered with `@criterion("name")`; `calib_ctx` (a
`graphprune.calibration.stats.CalibContext`) carries the calibration statistics, the samples
and a model runner for criteria that need them. Adding a criterion is one function in one module
of this package (imported by `graphprune.criteria`) and a test.
"""
from __future__ import annotations

from typing import Callable

CRITERIA: dict[str, Callable] = {}


def criterion(name: str):
    """Register a criterion function under `name`."""

    def deco(fn):
        CRITERIA[name] = fn
        return fn

    return deco
