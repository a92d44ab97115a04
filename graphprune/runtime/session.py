"""ONNX Runtime sessions: the one factory every run in graphprune goes through.

ONNX Runtime logs nothing: its own log lines would reach stderr before graphprune's one-line
message, so the severity is FATAL unless graphprune runs with --debug (`set_debug`), at every
level ORT has: the default (environment) logger, set when this module is imported, each
session's logger and each run's. Forked children inherit the setting; the fresh Python
processes of the benchmark are given it (`log_level`, `set_log_level`). `low_memory` (big
models) turns weight pre-packing off, so weights are used where they lie instead of being
copied into packed buffers.

A ModelProto whose weights stay on disk (a lazily loaded model, see
`graphprune.ir.storage.WeightStore`) runs without its weights ever entering Python: ONNX
Runtime gets the graph (a few kB to MB) as bytes and reads the external data itself, from the
store's folder (`session.model_external_initializers_file_folder_path`; it memory-maps aligned
tensors). Tensors a pass rewrote live as arrays in the store; the session's graph takes them as
extra inputs, fed with those arrays on every run, which ONNX Runtime reads in place (its
in-memory initializers, `SessionOptions.add_external_initializers`, would be copied: the
rewritten weights held twice). `HeldSession` hides those inputs from callers.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import UserError
from ..ir import WEIGHTS
from ..ir.storage import WeightStore, copy_fields, ext_info, has_external_tensors

from ..ir.inputs import InputSpec, random_feeds, with_shapes

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}
DEFAULT_PROVIDER = "CPUExecutionProvider"
EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"
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
            provider: str = DEFAULT_PROVIDER, low_memory: bool = False,
            store: WeightStore | None = None):
    """A session from a ModelProto, serialized bytes or a path (external data beside it). A
    ModelProto whose weights stay on disk reads them through `store` (default: the weights of
    the running prune, `graphprune.ir.WEIGHTS`); see the module docstring."""
    opts = ort.SessionOptions()
    opts.log_severity_level = _LOG["level"]
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if low_memory:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    held: dict[str, np.ndarray] = {}
    if isinstance(model, onnx.ModelProto):
        if has_external_tensors(model):
            src, held = external_source(model, store if store is not None else WEIGHTS.get(),
                                        opts)
        else:
            src = model.SerializeToString()
    else:
        src = model
    sess = ort.InferenceSession(src, sess_options=opts, providers=providers_for(provider))
    return HeldSession(sess, held) if held else sess


def external_source(model: onnx.ModelProto, store: WeightStore | None,
                    opts: ort.SessionOptions) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialized graph of a lazily loaded `model` for ONNX Runtime, with `opts` pointed at
    the folder of its data files; the tensors it holds as store arrays become graph inputs.
    Returns the bytes and those arrays by name."""
    held, on_disk = {}, False
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        slot = ext_info(t).slot
        if slot is None:
            on_disk = True
        elif store is None or slot not in store.arrays:
            raise UserError(f"tensor '{t.name}': its rewritten value is no longer available")
        else:
            held[t.name] = store.arrays[slot]
    if on_disk:
        if store is None or store.folder is None:
            raise UserError("the model keeps weights in an external data file, but the "
                            "model's folder is unknown: load the model from its path")
        opts.add_session_config_entry(EXTERNAL_FOLDER, store.folder)
    if not held:
        return model.SerializeToString(), held
    return initializers_as_inputs(model, set(held)).SerializeToString(), held


def initializers_as_inputs(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """`model` with the initializers `names` turned into graph inputs that every run feeds;
    the held tensors are not copied (the other initializers are, as they are: a tensor kept
    on disk stays a reference to its file)."""
    graph = onnx.ModelProto()
    copy_fields(graph, model, skip="graph")
    copy_fields(graph.graph, model.graph, skip="initializer")
    listed = {i.name for i in graph.graph.input}
    for t in model.graph.initializer:
        if t.name not in names:
            graph.graph.initializer.add().CopyFrom(t)
        elif t.name not in listed:
            graph.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type,
                                                                   list(t.dims)))
    return graph


class HeldSession:
    """A session whose rewritten weights are graph inputs: every run feeds them (read in place),
    and `get_inputs` lists only the model's own inputs. Anything else is the session's."""

    def __init__(self, sess: ort.InferenceSession, held: dict[str, np.ndarray]):
        self._sess, self.held = sess, held

    def run(self, output_names, input_feed, run_options=None):
        return self._sess.run(output_names, {**input_feed, **self.held}, run_options)

    def get_inputs(self):
        return [i for i in self._sess.get_inputs() if i.name not in self.held]

    def __getattr__(self, name):
        return getattr(self._sess, name)


def trim_heap() -> None:
    """Hand memory freed by a finished session (or released arrays) back to the system.

    glibc keeps freed blocks below its (adaptive, up to 32 MB) mmap threshold in the heap, so
    a session's packed weights, freed, would stay resident for the rest of the run, and every
    forked child would start with them mapped. `malloc_trim` returns them; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
