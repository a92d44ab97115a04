"""Validation: the pruned model must pass the ONNX checker, run in ONNX Runtime and produce
outputs with the same names, dtypes and shapes as the original on the same inputs."""
from __future__ import annotations

import numpy as np
import onnx

from ..backends import ort as ortb
from ..errors import ValidationError


def _feeds_for(original_sess, seed: int):
    """Random inputs the original model accepts (tries a few sizes for symbolic dims)."""
    last = None
    for dyn in (16, 1, 224, 64):
        feeds = ortb.random_inputs(original_sess, seed=seed, dynamic=dyn)
        try:
            return feeds, ortb.run(original_sess, feeds)
        except Exception as e:  # the original rejects these sizes; try others
            last = e
    raise ValidationError(f"the original model does not run on random inputs: {last}")


def check(model: onnx.ModelProto) -> None:
    try:
        if model.ByteSize() < 2 ** 31 - 1:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(model)
    except Exception as e:
        raise ValidationError(f"onnx checker: {str(e).splitlines()[0]}") from e


def validate(original: onnx.ModelProto, pruned: onnx.ModelProto, seed: int = 0,
             original_sess=None) -> dict:
    """Run all checks; returns fidelity numbers on the random inputs used.

    A checker failure counts only if the original passes the checker: graphs that use ONNX
    Runtime-only ops (SimplifiedLayerNormalization in the default domain) never pass it, and
    for them the ONNX Runtime run below is the check."""
    try:
        check(pruned)
    except ValidationError:
        try:
            check(original)
        except ValidationError:
            pass
        else:
            raise
    osess = original_sess or ortb.session(original)
    feeds, ref = _feeds_for(osess, seed)
    try:
        psess = ortb.session(pruned)
        out = ortb.run(psess, feeds)
    except Exception as e:
        raise ValidationError(f"onnxruntime cannot run the pruned model: {str(e).splitlines()[0]}") from e
    if list(out) != list(ref):
        raise ValidationError(f"output names changed: {list(ref)} -> {list(out)}")
    for name in ref:
        a, b = ref[name], out[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            raise ValidationError(
                f"output '{name}' changed from {a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}")
    return fidelity(ref, out)


def fidelity(ref: dict, out: dict) -> dict:
    """Max abs difference and cosine similarity over all float outputs (flattened)."""
    diffs, cos = [], []
    for name in ref:
        a = np.asarray(ref[name], dtype=np.float64).reshape(-1)
        b = np.asarray(out[name], dtype=np.float64).reshape(-1)
        if not a.size:
            continue
        diffs.append(float(np.max(np.abs(a - b))))
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb))
    return {"metric": "cosine", "value": min(cos) if cos else 1.0,
            "max_abs_diff": max(diffs) if diffs else 0.0, "inputs": "random"}
