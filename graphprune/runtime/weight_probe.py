"""Run one model many times with some of its weights swapped, in one session.

Allocation from measured sensitivity (`graphprune.transforms.sensitivity`) scores a candidate
width of a group by the model's outputs with that group's removed units cut (their consumer
slices zeroed), one run per candidate: a hundred or more runs of the whole model. Building a
session per run would cost more than the runs, so the weights that change become graph inputs
of one session, fed their original values except the ones a run swaps. Arrays are read in
place (ONNX Runtime does not copy contiguous CPU inputs), so a run costs a forward pass.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..ir.inputs import feed_batches, input_specs
from .session import initializers_as_inputs, run_options, session


class WeightProbe:
    """`run(swaps)`: the model's outputs on the samples `feeds` with the weights in `swaps`
    replaced, one dict of outputs per batch the model takes (`ir.inputs.feed_batches`).

    `weights`: every weight a run may swap, with its original value (initializers of
    `model`; same dtype and shape for their swaps)."""

    def __init__(self, model: onnx.ModelProto, weights: dict[str, np.ndarray],
                 feeds: dict[str, np.ndarray], threads: int = 0, provider: str | None = None):
        inits = {t.name for t in model.graph.initializer}
        missing = sorted(set(weights) - inits)
        if missing:
            raise ValueError(f"not initializers of the model: {missing[:3]}")
        kw = {"threads": threads}
        if provider:
            kw["provider"] = provider
        self._sess = session(initializers_as_inputs(model, set(weights)), **kw)
        self._weights = {k: np.ascontiguousarray(v) for k, v in weights.items()}
        own = {i.name for i in model.graph.input} - inits
        self._batches = feed_batches([s for s in input_specs(model) if s.name in own],
                                     {k: v for k, v in feeds.items() if k in own})
        self.outputs = [o.name for o in self._sess.get_outputs()]

    def run(self, swaps: dict[str, np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
        weights = dict(self._weights)
        for k, v in (swaps or {}).items():
            if k not in self._weights:
                raise KeyError(f"{k} is not a weight of this probe")
            weights[k] = np.ascontiguousarray(v, dtype=self._weights[k].dtype)
        return [dict(zip(self.outputs, self._sess.run(self.outputs, {**b, **weights},
                                                      run_options())))
                for b in self._batches]
