"""ONNX Runtime helpers: sessions from in-memory models and random inputs for a graph."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}


def session(model: onnx.ModelProto | str, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def random_inputs(sess: ort.InferenceSession, seed: int = 0, dynamic: int = 1,
                  batch: int = 1) -> dict[str, np.ndarray]:
    """Random feeds matching the session's inputs; symbolic dims get `batch` (axis 0) or
    `dynamic` (other axes). Integer inputs get small non-negative values (safe as indices)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if k == 0 else dynamic)
                 for k, d in enumerate(i.shape)]
        dt = _ORT_TYPES.get(i.type, np.float32)
        if dt == np.bool_:
            feeds[i.name] = rng.random(shape) > 0.5
        elif np.issubdtype(dt, np.integer):
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def run(sess: ort.InferenceSession, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))
