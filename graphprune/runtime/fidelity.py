"""Fidelity of a pruned model to its original.

Both models run on the same inputs (calibration arrays from an .npz file, or seeded random
inputs) and their outputs are compared:

- `cosine`: cosine similarity of each output flattened over all samples, the minimum over
  outputs (the same number validation reports);
- `max_abs_diff`: largest absolute difference over all outputs;
- `top1_agreement`: for outputs that look like classifier logits (float, 2-D `[N, K]`, K > 1),
  the fraction of samples whose arg-max class is unchanged (minimum over such outputs).

`drop` is the one number the `--max-drop` gate compares: `1 - top1_agreement` on calibration
data when a logits output exists (what a classifier's user feels), else `1 - cosine`. Top-1
agreement on random inputs is not used for the gate: random inputs tend to land in one class for
both models, so it stays at 1.0 long after the outputs have drifted.

The two models run one after the other, each in its own session, so a big model and its pruned
version are never in memory together; a model file is run from its path (its external data
mapped by ONNX Runtime), a lazily loaded ModelProto from its store (see
`graphprune.runtime.session`).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx

from ..ir.inputs import (feed_batches, input_specs, random_feeds, sample_inputs, static_batch,
                         with_shapes)
from ..ir.load import graph_of
from ..ir.storage import WeightStore
from .session import DEFAULT_PROVIDER, run, session, trim_heap

log = logging.getLogger(__name__)

RANDOM_SAMPLES = 32
CHUNK = 64


def batches(model: onnx.ModelProto, calib: dict | None, samples: int = RANDOM_SAMPLES,
            seed: int = 0, shapes: dict | None = None, inputs=None) -> list[dict]:
    """Feeds to run: calibration arrays cut to the model's batch (a list of feeds is used as
    it is), or `samples` random samples.

    A model with a static batch of b gets chunks of b samples; a symbolic batch gets chunks of
    up to CHUNK samples.
    """
    if isinstance(calib, list):
        return calib
    specs = with_shapes(input_specs(model), shapes)
    static = static_batch(specs)
    if calib is None and inputs is not None:  # the prune's planned sizes and given values
        if static is None:
            return [inputs.feeds(specs, seed, inputs.shapes_at(batch=samples))]
        n = max(1, samples // static)
        return [inputs.feeds(specs, seed + k) for k in range(n)]
    if calib is None:
        if static is None:
            return [random_feeds(specs, seed=seed, batch=samples, dynamic=16)]
        n = max(1, samples // static)
        return [random_feeds(specs, seed=seed + k, batch=static, dynamic=16) for k in range(n)]
    n = len(next(iter(calib.values())))
    if static and n % static:
        log.debug("calibration: %d samples, dropping %d to fit batch %d", n, n % static, static)
    return feed_batches(specs, calib, CHUNK)


def run_all(sess, feeds_list: list[dict]) -> dict[str, np.ndarray]:
    """Outputs of every feed, concatenated along axis 0 (scalars and 0-D outputs stacked;
    sequence outputs, such as ZipMap's list of maps, joined as lists)."""
    parts: dict[str, list] = {}
    for feeds in feeds_list:
        for k, v in run(sess, feeds).items():
            parts.setdefault(k, []).append(v)
    return {k: _join(v) for k, v in parts.items()}


def _join(values: list):
    if len(values) == 1:
        return values[0]
    if any(isinstance(v, (list, tuple, dict)) for v in values):
        out: list = []
        for v in values:
            out.extend(v if isinstance(v, (list, tuple)) else [v])
        return out
    return np.concatenate([np.atleast_1d(x) for x in values], axis=0)


def comparable(value) -> np.ndarray | None:
    """An output as a numeric array: tensors as they are, a sequence of maps (ZipMap) as rows
    of its values in key order, a sequence of tensors stacked; None for anything else."""
    if isinstance(value, np.ndarray):
        return value if value.dtype != object else None
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)):
        try:
            if all(isinstance(v, dict) for v in value):
                return np.array([[v[k] for k in sorted(v)] for v in value], dtype=np.float64)
            return np.stack([np.asarray(v, dtype=np.float64) for v in value])
        except (TypeError, ValueError):
            return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened outputs. Outputs that agree to float32 precision
    read 1.0 even when they are (near) zero or constant, where the cosine of the rounding
    noise would say anything."""
    if a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6):
        return 1.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)


def is_logits(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating)


def cosine_fidelity(ref: dict, out: dict) -> dict:
    """What validation reports: the minimum cosine over outputs and the max abs difference,
    on random inputs."""
    res = compare_outputs(ref, out, use_top1=False)
    return {"metric": "cosine", "value": res["value"], "max_abs_diff": res["max_abs_diff"],
            "inputs": "random"}


def compare_outputs(ref: dict, out: dict, use_top1: bool = True) -> dict:
    diffs, cos, agree = [], [], []
    for name in ref:
        a, b = comparable(ref[name]), comparable(out[name])
        if a is None or b is None or a.shape != b.shape:
            continue  # nothing numeric to compare (validation checked the structure)
        if is_logits(a) and a.shape == b.shape:
            agree.append(float(np.mean(np.argmax(a, 1) == np.argmax(b, 1))))
        a = a.astype(np.float64).reshape(-1)
        b = b.astype(np.float64).reshape(-1)
        if not a.size:
            continue
        diffs.append(float(np.max(np.abs(a - b))))
        cos.append(cosine(a, b))
    worst = min(cos) if cos else 1.0
    top1 = min(agree) if agree else None
    by_top1 = use_top1 and top1 is not None
    return {"metric": "cosine", "value": worst, "max_abs_diff": max(diffs) if diffs else 0.0,
            "top1_agreement": top1,
            "drop": 1.0 - (top1 if by_top1 else worst),
            "drop_metric": "top1_agreement" if by_top1 else "cosine"}


def fidelity(original, pruned, calib: dict | None = None, samples: int = RANDOM_SAMPLES,
             seed: int = 0, calib_name: str | None = None, shapes: dict | None = None,
             provider: str = DEFAULT_PROVIDER, inputs=None, io=None,
             store: WeightStore | None = None) -> dict:
    """Fidelity of `pruned` to `original` (ModelProtos or paths; `store`: the weights of a
    lazily loaded `pruned`); see the module docstring. `shapes` fixes the dims of named inputs
    of the random samples; `inputs`: the prune's `InputPlan` (sizes and values random inputs
    take). `io` (a `graphprune.ir.cache.IoChanges`): how the pruned model's inputs and outputs
    differ (a KV cache's heads): both are compared on what the pruned model keeps."""
    graph = graph_of(original)
    feeds = batches(graph, calib, samples, seed, shapes, inputs)
    ref = _outputs(original, feeds, None, provider)
    if io:
        out = _outputs(pruned, [io.apply(f) for f in feeds], store, provider)
        ref = io.apply(ref)
    else:
        out = _outputs(pruned, feeds, store, provider)
    res = compare_outputs(ref, out, use_top1=calib is not None)
    sampled = sample_inputs(input_specs(graph))
    n = sum(min((len(v) for k, v in f.items() if k in sampled), default=1) for f in feeds)
    res["inputs"] = f"calib:{calib_name}" if calib is not None else "random"
    res["samples"] = int(n)
    return res


def _outputs(model, feeds: list[dict], store: WeightStore | None,
             provider: str) -> dict[str, np.ndarray]:
    """Outputs of one model on every feed; its session is gone when this returns."""
    src = model if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return run_all(session(src, store=store, provider=provider), feeds)
    finally:
        trim_heap()
