"""Calibration wired to ONNX Runtime, for callers outside the pipeline (tests, notebooks,
benchmarks): the same contexts the stages build, with the runtime's runner supplied."""
from __future__ import annotations

import numpy as np

from ..analysis.graph import DependencyGraph
from ..calibration import stats as calib_stats
from ..calibration.data import Calibration
from ..criteria.lrp import explainer
from ..runtime.taps import TapRunner
from .stages import model_view


def build_context(dg: DependencyGraph, cal: Calibration | None, data_free: bool = False,
                  stats: bool = True) -> calib_stats.CalibContext:
    """Consumers and statistics of `dg` measured on `cal` in ONNX Runtime (or data-free), with
    a runner for the criteria that run the model themselves (lrp)."""
    return calib_stats.build_context(dg, cal, TapRunner(), data_free=data_free, stats=stats)


def relevance_sums(model, feeds: dict, labels=None, batch: int = explainer.BATCH,
                   **cfg) -> dict[str, float]:
    """Σ of the LRP relevance of every tensor of `model` on `feeds` (see
    `graphprune.criteria.lrp.explainer.relevance_sums`)."""
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    return explainer.relevance_sums(model_view(model), TapRunner(), feeds, labels, batch, **cfg)
