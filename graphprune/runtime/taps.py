"""Run a model with intermediate tensors exposed ("taps"), batch by batch.

Calibration statistics, LRP's forward pass, block scoring and shape probing all need the values
of tensors inside the graph. They are exposed by appending them to a copy of the model's graph
outputs; the model then runs on the samples in the batches it accepts (its static batch size,
else chunks), so only one batch of activations is alive at a time.

A model with a symbolic batch streams its samples: the first runs alone, and the batches that
follow hold as many samples as fit `tap_budget` (at most the caller's batch), so a multi-GB
model tapped at every layer holds one window's activations, not thirty-two, while small models
keep their large batches. A lazily loaded
model runs with its weights where they are (see `graphprune.runtime.session`); the session's
memory goes back to the system when the last batch is done.
"""
from __future__ import annotations

from typing import Iterator

import onnx
from onnx import helper

from ..ir.inputs import feed_batches, input_specs, symbolic_batch
from ..ir.storage import weight_bytes
from .session import run, run_options, session, trim_heap

# Tapped values of one batch (when the batch is symbolic). A model under SMALL_MODEL_BYTES of
# weights gets TAP_MAX_BYTES (its activations, not its weights, set its memory); a bigger one
# 1/TAP_FRACTION of its weights, within [TAP_MIN_BYTES, TAP_MAX_BYTES]: a batch's run holds
# about three times its taps (ONNX Runtime's buffers, their numpy copies, the intermediates), so
# a big model's peak stays near its own size.
SMALL_MODEL_BYTES = 256 << 20
TAP_FRACTION = 32
TAP_MIN_BYTES = 16 << 20
TAP_MAX_BYTES = 256 << 20


def tap_budget(model: onnx.ModelProto) -> int:
    w = weight_bytes(model)
    if w < SMALL_MODEL_BYTES:
        return TAP_MAX_BYTES
    return min(TAP_MAX_BYTES, max(TAP_MIN_BYTES, w // TAP_FRACTION))


def with_taps(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also list `names` (graph inputs and existing
    outputs are not repeated)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    for t in names:
        if t not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
            have.add(t)
    return probe


class TapRunner:
    """The `graphprune.calibration.stats.Runner` the pipeline hands to calibration, criteria
    and transforms: ONNX Runtime on the CPU (or `provider`)."""

    def __init__(self, threads: int = 0, provider: str | None = None):
        self.threads = threads
        self.provider = provider

    def _session(self, model):
        kw = {"threads": self.threads}
        if self.provider:
            kw["provider"] = self.provider
        return session(model, **kw)

    def taps(self, model: onnx.ModelProto, names: list[str], feeds: dict,
             batch: int | None = None) -> Iterator[tuple[dict, dict]]:
        """(feeds of one batch, {name: value} for `names` and the feeds) over every sample in
        `feeds` (arrays with samples on axis 0). A model with a symbolic batch runs at most
        `batch` samples at a time (when given), fewer when their tapped values would exceed
        `tap_budget` (see the module docstring)."""
        specs = input_specs(model)
        sess = self._session(with_taps(model, names))
        try:
            yield from self._batches(sess, specs, names, feeds, batch, tap_budget(model))
        finally:
            del sess
            trim_heap()

    @staticmethod
    def _batches(sess, specs, names, feeds, batch, budget):
        fetch = [n for n in names if n not in feeds]
        symbolic = symbolic_batch(specs)
        first, limit = symbolic, None  # the first sample runs alone and sizes the batches
        for chunk in feed_batches(specs, feeds):
            n = len(next(iter(chunk.values())))
            step = min(batch, n) if (symbolic and batch) else n
            s = 0
            while s < n:
                size = 1 if first else min(step, limit or step)
                whole = s == 0 and size >= n
                sub = chunk if whole else {k: v[s:s + size] for k, v in chunk.items()}
                outs = dict(zip(fetch, sess.run(fetch, sub, run_options()))) if fetch else {}
                if first:
                    per = sum(int(getattr(v, "nbytes", 0)) for v in outs.values())
                    limit, first = max(1, budget // max(per, 1)), False
                outs.update({k: v for k, v in sub.items() if k in names})
                yield sub, outs
                s += len(next(iter(sub.values())))

    def each(self, model: onnx.ModelProto, names: list[str], feeds_list: list[dict]):
        """{name: value} for every feeds dict of `feeds_list`, one session for all."""
        sess = self._session(with_taps(model, names))
        for feeds in feeds_list:
            outs = run(sess, feeds, [n for n in names if n not in feeds])
            outs.update({k: v for k, v in feeds.items() if k in names})
            yield outs

    def run(self, model: onnx.ModelProto, feeds: dict, names: list[str] | None = None) -> dict:
        sess = self._session(model if names is None else with_taps(model, names))
        return run(sess, feeds, names)

    def segments(self, model: onnx.ModelProto, feeds: dict, batch: int):
        """A stage-by-stage walk of `model` (`graphprune.runtime.segments.Segments`)."""
        from .segments import Segments

        return Segments(model, feeds, batch, threads=self.threads, provider=self.provider)

    def probe(self, model: onnx.ModelProto, weights: dict, feeds: dict):
        """Runs of `model` on `feeds` with some `weights` swapped, one session for all
        (`graphprune.runtime.weight_probe.WeightProbe`)."""
        from .weight_probe import WeightProbe

        return WeightProbe(model, weights, feeds, threads=self.threads, provider=self.provider)
