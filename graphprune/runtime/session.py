"""ONNX Runtime sessions: the one factory every run in graphprune goes through.

ONNX Runtime logs nothing: its own log lines would reach stderr before graphprune's one-line
message, so the severity is FATAL unless graphprune runs with --debug (`set_debug`), at every
level ORT has: the default (environment) logger, set when this module is imported, each
session's logger and each run's. Forked children inherit the setting; the fresh Python
processes of the benchmark are given it (`log_level`, `set_log_level`). `low_memory` (big
models) turns weight pre-packing off, so weights are used where they lie instead of being
copied into packed buffers.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from ..ir.inputs import InputSpec, random_feeds, with_shapes

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}
DEFAULT_PROVIDER = "CPUExecutionProvider"
ERROR, FATAL = 3, 4
_LOG = {"level": FATAL}


def set_log_level(level: int) -> None:
    """ONNX Runtime's severity for the default logger and every later session and run."""
    _LOG["level"] = int(level)
    ort.set_default_logger_severity(_LOG["level"])


def log_level() -> int:
    return _LOG["level"]


def set_debug(debug: bool) -> None:
    """Let ONNX Runtime's own error messages through (for --debug)."""
    set_log_level(ERROR if debug else FATAL)


set_log_level(FATAL)


def background_threads() -> int:
    """Intra-op threads for a run that overlaps the parent's own work: every core but one."""
    return max(1, (os.cpu_count() or 2) - 1)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider",
                    "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider"}


def resolve_provider(name: str | None) -> str:
    """The execution provider `name` (or its short form: cpu, cuda, tensorrt, openvino,
    coreml, ...) when the installed onnxruntime has it; else a UserError naming those it has."""
    if not name:
        return DEFAULT_PROVIDER
    full = PROVIDER_ALIASES.get(name.lower(), name)
    have = available_providers()
    if full not in have:
        from ..errors import UserError

        raise UserError(f"execution provider {name!r} is not available in this onnxruntime "
                        f"build; available: {', '.join(have)}")
    return full


def providers_for(provider: str) -> list[str]:
    """The provider list of a session: nodes the provider cannot run fall back to the CPU."""
    return [provider] if provider == DEFAULT_PROVIDER else [provider, DEFAULT_PROVIDER]


def session(model: onnx.ModelProto | str | bytes, threads: int = 0,
            provider: str = DEFAULT_PROVIDER, low_memory: bool = False) -> ort.InferenceSession:
    """A session from a ModelProto, serialized bytes or a path (external data beside it)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = _LOG["level"]
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if low_memory:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, sess_options=opts, providers=providers_for(provider))


def session_specs(sess: ort.InferenceSession) -> list[InputSpec]:
    """The inputs a session takes, as `graphprune.ir.inputs.InputSpec`s."""
    return [InputSpec(i.name, _ORT_TYPES.get(i.type, np.float32),
                      tuple(d if isinstance(d, (int, str)) else None for d in i.shape))
            for i in sess.get_inputs()]


def random_inputs(sess: ort.InferenceSession, seed: int = 0, dynamic: int = 1,
                  batch: int = 1, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Random feeds matching a session's inputs; symbolic dims get `batch` (axis 0) or
    `dynamic` (other axes), equal dim names one size, inputs named in `shapes` get those dims.
    Integer inputs get small non-negative values (safe as indices). The same values
    `graphprune.ir.inputs.random_feeds` makes from the model's graph inputs."""
    return random_feeds(with_shapes(session_specs(sess), shapes), seed=seed, dynamic=dynamic,
                        batch=batch)


def run_options() -> ort.RunOptions:
    """Options for `InferenceSession.run` at graphprune's log level."""
    opts = ort.RunOptions()
    opts.log_severity_level = _LOG["level"]
    return opts


def run(sess: ort.InferenceSession, feeds: dict, names: list[str] | None = None
        ) -> dict[str, np.ndarray]:
    names = names or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds, run_options())))
