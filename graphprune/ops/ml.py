"""Classical-ML ops of the `ai.onnx.ml` domain that skl2onnx and onnxmltools write next to
neural layers: `Scaler` (per-feature offset and scale), `Normalizer` (mixes the features of a
row), `ZipMap` (class probabilities to a sequence of maps: the end of the graph)."""
from __future__ import annotations

import numpy as np

from .registry import OpRule, rule

ML = "ai.onnx.ml"


@rule("Scaler", domain=ML)
class Scaler(OpRule):
    """Y = (X - offset) · scale per feature (the last axis); the `offset` and `scale`
    attributes (one value per feature, or one for all) shrink with the features."""

    couples = "features 1:1"
    shrinks = "`offset`, `scale`"
    frozen = "—"

    def analyze(self, ctx):
        ctx.couple_same(ctx.inputs[0], ctx.outputs[0])

    def rewrite(self, ctx):
        x = ctx.inputs[0]
        last = ctx.rank(x) - 1
        keep = ctx.keep(x, last)
        if keep is None:
            return
        for name in ("offset", "scale"):
            vals = ctx.attr(name)
            if vals is not None and len(vals) == ctx.old_dim(x, last):
                ctx.set_attr(name, [float(v) for v in np.asarray(vals, dtype=np.float64)[keep]])


@rule("Normalizer", domain=ML)
class Normalizer(OpRule):
    """Each row divided by its max, L1 or L2 norm: the feature axis mixes (blocked)."""

    couples = "the batch axis"
    shrinks = "—"
    frozen = "the features (a row's norm)"

    def analyze(self, ctx):
        x, y = ctx.inputs[0], ctx.outputs[0]
        last = ctx.rank(x) - 1
        ctx.couple_same(x, y, skip=(last,))
        ctx.block(x, last, "normalizes over this axis")
        ctx.block(y, last, "normalizes over this axis")


@rule("ZipMap", domain=ML)
class ZipMap(OpRule):
    """Class probabilities [N, C] to a sequence of maps keyed by class label: the classes are
    the model's output (blocked)."""

    couples = "—"
    shrinks = "—"
    frozen = "its input (classes become map keys)"

    def analyze(self, ctx):
        ctx.block(ctx.inputs[0], None, "classes become the keys of a map output")

    def macs(self, ctx):
        return 0
