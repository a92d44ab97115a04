"""Run a model with intermediate tensors exposed ("taps"), batch by batch.

Calibration statistics, LRP's forward pass, block scoring and shape probing all need the values
of tensors inside the graph. They are exposed by appending them to a copy of the model's graph
outputs; the model then runs on the samples in the batches it accepts (its static batch size,
else chunks), so only one batch of activations is alive at a time.
"""
from __future__ import annotations

from typing import Iterator

import onnx
from onnx import helper

from ..ir.inputs import feed_batches, input_specs, symbolic_batch
from .session import run, run_options, session


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
        `feeds` (arrays with samples on axis 0). A model with a symbolic batch runs `batch`
        samples at a time (when given)."""
        specs = input_specs(model)
        sess = self._session(with_taps(model, names))
        fetch = [n for n in names if n not in feeds]
        symbolic = symbolic_batch(specs)
        for chunk in feed_batches(specs, feeds):
            n = len(next(iter(chunk.values())))
            step = batch if (symbolic and batch) else n
            for s in range(0, n, step):
                sub = {k: v[s:s + step] for k, v in chunk.items()} if step < n else chunk
                outs = dict(zip(fetch, sess.run(fetch, sub, run_options()))) if fetch else {}
                outs.update({k: v for k, v in sub.items() if k in names})
                yield sub, outs

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
